//! [`MpiCollective`]: the world communicator of rsmpi behind byol-core's `Collective`.

use std::sync::Mutex;

use byol_core::distributed::Collective;
use byol_core::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;

/// The world communicator of an initialised MPI; MPI is finalised when it is dropped.
pub struct MpiCollective {
    rank: usize,
    size: usize,
    /// Initialised with `MPI_THREAD_SERIALIZED`: calls may come from any thread, one at a time,
    /// which this lock guarantees.
    world: Mutex<SimpleCommunicator>,
    _universe: Universe,
}

// SAFETY: the communicator is a handle into the MPI library, which was initialised for
// serialised use from any thread (checked in `init`); every call goes through the mutex.
unsafe impl Send for MpiCollective {}
unsafe impl Sync for MpiCollective {}

impl MpiCollective {
    /// Initialises MPI (once per process) and joins its world.
    pub fn init() -> Result<Self> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| Error::Distributed("MPI was already initialised".into()))?;
        if threading < Threading::Serialized {
            return Err(Error::Distributed(format!(
                "the MPI library offers thread level {threading:?}, below Serialized"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        tracing::debug!("MPI rank {rank} of {size}");
        Ok(Self {
            rank,
            size,
            world: Mutex::new(world),
            _universe: universe,
        })
    }

    fn world(&self) -> Result<std::sync::MutexGuard<'_, SimpleCommunicator>> {
        self.world
            .lock()
            .map_err(|_| Error::Distributed("the MPI communicator lock is poisoned".into()))
    }

    /// Rank 0's `bytes` on every rank (NCCL's unique id travels this way).
    pub fn broadcast_bytes(&self, bytes: &mut [u8]) -> Result<()> {
        self.world()?.process_at_rank(0).broadcast_into(bytes);
        Ok(())
    }

    /// Ends every process of the job at once (after an error on this one: the others would
    /// otherwise wait in their next collective).
    pub fn abort(&self, code: i32) -> ! {
        match self.world.lock() {
            Ok(world) => world.abort(code),
            Err(poisoned) => poisoned.into_inner().abort(code),
        }
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        let send = values.to_vec();
        self.world()?
            .all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_f32(&self, values: &mut [f32]) -> Result<()> {
        let send = values.to_vec();
        self.world()?
            .all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn gather_f32(&self, values: &[f32]) -> Result<Option<Vec<Vec<f32>>>> {
        let world = self.world()?;
        let root = world.process_at_rank(0);
        let count = i32::try_from(values.len()).map_err(|_| {
            Error::Distributed(format!("{} values are too many to gather", values.len()))
        })?;
        if self.rank != 0 {
            root.gather_into(&count);
            root.gather_varcount_into(values);
            return Ok(None);
        }
        let mut counts = vec![0i32; self.size];
        root.gather_into_root(&count, &mut counts[..]);
        let displs: Vec<i32> = counts
            .iter()
            .scan(0i32, |at, &c| {
                let d = *at;
                *at += c;
                Some(d)
            })
            .collect();
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut all = vec![0f32; total];
        {
            let mut partition = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            root.gather_varcount_into_root(values, &mut partition);
        }
        let mut parts = Vec::with_capacity(self.size);
        for (&c, &d) in counts.iter().zip(&displs) {
            parts.push(all[d as usize..(d + c) as usize].to_vec());
        }
        Ok(Some(parts))
    }

    fn engine(&self) -> &str {
        "mpi"
    }
}
