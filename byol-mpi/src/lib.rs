//! # byol-mpi
//!
//! MPI as the collective engine of a data-parallel run: `mpirun -np N byol-pretrain ...` or
//! `srun byol-pretrain ...` start N processes; [`MpiCollective`] gives each its rank and carries
//! the sums and gathers of `byol_core::distributed`. A process started without a launcher runs
//! alone and never initialises MPI ([`launched_by_mpi`]).
//!
//! The engine is the `mpi` feature (rsmpi); without it a process started by a launcher is
//! refused with a clear error instead of training alone N times into one directory.
//!
//! Failures are MPI's: its default error handler aborts the whole job, and `mpirun` ends every
//! rank when one dies, so a lost rank never leaves the others waiting.

#[cfg(feature = "mpi")]
mod engine;
#[cfg(feature = "nccl")]
mod nccl;
#[cfg(feature = "mpi")]
use std::sync::Arc;

#[cfg(feature = "mpi")]
use byol_core::distributed::Collective;
use byol_core::distributed::DataParallel;
#[cfg(not(feature = "mpi"))]
use byol_core::Error;
use byol_core::Result;
#[cfg(feature = "mpi")]
pub use engine::MpiCollective;
#[cfg(feature = "nccl")]
pub use nccl::NcclCollective;

/// Environment variables the launchers set in each process they start (OpenMPI's mpirun,
/// MPICH/Hydra and Slurm's PMI/PMIx).
const LAUNCHER_VARIABLES: [&str; 5] = [
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "PMIX_RANK",
    "MPI_LOCALNRANKS",
    "SLURM_STEP_NUM_TASKS",
];

/// Whether this process was started by an MPI launcher (mpirun, mpiexec, srun).
pub fn launched_by_mpi() -> bool {
    LAUNCHER_VARIABLES
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// The number of processes the launcher started, when it says.
fn launched_world_size() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "SLURM_STEP_NUM_TASKS",
        "SLURM_NTASKS",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// The data-parallel group this process belongs to.
pub struct Group {
    pub parallel: DataParallel,
    #[cfg(feature = "mpi")]
    mpi: Option<Arc<MpiCollective>>,
}

impl Group {
    /// Joins the job's group: MPI's world when a launcher started more than one process
    /// (BatchNorm statistics synchronised unless `sync_batch_norm` is false), else this
    /// process alone. A launched job in a build without the `mpi` feature is an error.
    pub fn join(sync_batch_norm: bool) -> Result<Self> {
        let alone = || Group {
            parallel: DataParallel::single(),
            #[cfg(feature = "mpi")]
            mpi: None,
        };
        if !launched_by_mpi() || launched_world_size() == Some(1) {
            return Ok(alone());
        }
        #[cfg(feature = "mpi")]
        {
            let mpi = Arc::new(MpiCollective::init()?);
            let collective: Arc<dyn Collective> = mpi.clone();
            Ok(Group {
                parallel: DataParallel {
                    collective,
                    sync_batch_norm,
                },
                mpi: Some(mpi),
            })
        }
        #[cfg(not(feature = "mpi"))]
        {
            let _ = sync_batch_norm;
            Err(Error::Distributed(format!(
                "started by an MPI launcher ({} processes) but built without MPI: rebuild with \
                 `--features mpi` (Debian: libopenmpi-dev, libclang-dev)",
                launched_world_size().map_or("several".into(), |n| n.to_string())
            )))
        }
    }

    /// The rank's device is chosen: on a GPU of a build with the `nccl` feature, the tensors'
    /// all-reduces (the gradient buckets) move to NCCL on that device, with MPI still carrying
    /// the rest. Alone, on the CPU or without NCCL, nothing changes (device tensors then travel
    /// through host memory to MPI).
    pub fn use_device(&mut self, device: &candle_core::Device) -> Result<()> {
        #[cfg(feature = "nccl")]
        if let (Some(mpi), true) = (&self.mpi, device.is_cuda()) {
            let nccl = NcclCollective::init(Arc::clone(mpi), device)?;
            self.parallel.collective = Arc::new(nccl);
            tracing::info!(
                "rank {}: gradients all-reduced by NCCL on {device:?}",
                self.parallel.rank()
            );
        }
        let _ = device;
        Ok(())
    }

    /// After an error on this rank: ends the whole job now (the other ranks would otherwise
    /// wait in their next collective). Alone, returns.
    pub fn abort_job(&self, code: i32) {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            mpi.abort(code);
        }
        let _ = code;
    }
}

/// This process's rank among those of its node (a GPU rank takes the device of that index).
pub fn local_rank() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
    .unwrap_or(0)
}
