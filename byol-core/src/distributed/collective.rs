//! The collective operations a data-parallel run needs, whatever carries them.

use std::fmt;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Tensor};

use crate::Result;

/// The processes of one data-parallel job. Every process calls every method, in the same order
/// and with as many values (what collective engines require); rank 0 writes the run's files.
pub trait Collective: Send + Sync {
    /// This process, `0..world_size()`.
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Element-wise sum over every process, in place.
    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()>;
    /// Element-wise sum over every process, in place.
    fn all_reduce_f32(&self, values: &mut [f32]) -> Result<()>;
    /// Rank 0 receives every process's `values` (lengths may differ), in rank order; the
    /// other ranks receive `None`.
    fn gather_f32(&self, values: &[f32]) -> Result<Option<Vec<Vec<f32>>>>;
    /// Element-wise sum over every process of a tensor on any device: a new f32 tensor of the
    /// same shape on the same device. Engines that reduce device memory directly (NCCL)
    /// override it; by default the values travel through host memory ([`all_reduce_via_host`]).
    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor> {
        all_reduce_via_host(self, t)
    }
    /// The engine, for logs ("single", "mpi", ...).
    fn engine(&self) -> &str;
}

impl fmt::Debug for dyn Collective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rank {} of {}",
            self.engine(),
            self.rank(),
            self.world_size()
        )
    }
}

/// [`Collective::all_reduce_tensor`] through host memory and [`Collective::all_reduce_f32`].
pub fn all_reduce_via_host<C: Collective + ?Sized>(collective: &C, t: &Tensor) -> Result<Tensor> {
    let mut host = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    collective.all_reduce_f32(&mut host)?;
    Ok(Tensor::from_vec(host, t.shape(), t.device())?)
}

/// One process alone: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn gather_f32(&self, values: &[f32]) -> Result<Option<Vec<Vec<f32>>>> {
        Ok(Some(vec![values.to_vec()]))
    }
    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.to_dtype(DType::F32)?)
    }
    fn engine(&self) -> &str {
        "single"
    }
}

/// How a run spreads over processes: the group, and whether BatchNorm statistics are reduced
/// across it (the paper's cross-replica BatchNorm, on by default).
#[derive(Clone)]
pub struct DataParallel {
    pub collective: Arc<dyn Collective>,
    pub sync_batch_norm: bool,
}

impl fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataParallel")
            .field("collective", &&*self.collective)
            .field("sync_batch_norm", &self.sync_batch_norm)
            .finish()
    }
}

impl Default for DataParallel {
    fn default() -> Self {
        Self::single()
    }
}

impl DataParallel {
    /// One process: nothing is reduced.
    pub fn single() -> Self {
        Self {
            collective: Arc::new(SingleProcess),
            sync_batch_norm: true,
        }
    }

    /// [`DataParallel::single`] with a `'static` lifetime, for callers that lend a reference.
    pub fn single_process() -> &'static Self {
        static ONE: OnceLock<DataParallel> = OnceLock::new();
        ONE.get_or_init(Self::single)
    }

    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    pub fn world_size(&self) -> usize {
        self.collective.world_size()
    }

    /// Whether this process writes the run's files (checkpoints, metrics, plots, encoder).
    pub fn is_writer(&self) -> bool {
        self.rank() == 0
    }
}
