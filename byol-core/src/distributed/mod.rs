//! Data parallelism: one process per device, each training on its slice of every global batch.
//!
//! The library knows collectives only through the [`Collective`] trait; the engines live
//! elsewhere (`byol-mpi` for MPI, a thread group in the tests). A run of N processes is the
//! single-process run with the work split: the loader gives each rank a contiguous slice of
//! every global batch ([`shard::rank_range`]), the gradients are summed over the ranks in flat
//! buckets ([`gradients`]), BatchNorm statistics are reduced across ranks when synchronised
//! ([`sync_bn`]), and every rank then applies the same LARS and EMA updates.

pub mod collective;
pub mod gather;
pub mod gradients;
pub mod shard;
pub mod sync_bn;

pub use collective::{all_reduce_via_host, Collective, DataParallel, SingleProcess};
