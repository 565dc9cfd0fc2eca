//! [`NcclCollective`]: NCCL (cudarc's bindings, which candle's CUDA backend builds on) for the
//! all-reduces of GPU tensors — the gradient buckets of every step — and MPI for the rest
//! (process start, ranks, the NCCL unique id, host-side sums and gathers).

use std::sync::{Arc, Mutex};

use byol_core::distributed::{all_reduce_via_host, Collective};
use byol_core::{Error, Result};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use crate::MpiCollective;

/// NCCL's communicator: a handle the library lets any thread use, one call at a time (the
/// mutex of [`NcclCollective`]).
struct Communicator(Comm);

// SAFETY: an NCCL communicator may be used from any thread as long as calls do not overlap;
// every use goes through `NcclCollective::comm`'s mutex.
unsafe impl Send for Communicator {}

/// One GPU per rank: tensors on it are summed by NCCL on the device's stream (ordered with
/// candle's kernels, no host round trip), everything else goes through MPI.
pub struct NcclCollective {
    mpi: Arc<MpiCollective>,
    comm: Mutex<Communicator>,
}

impl NcclCollective {
    /// Creates the NCCL communicator of MPI's world on `device` (this rank's GPU): rank 0 makes
    /// the unique id, MPI broadcasts it, every rank joins.
    pub fn init(mpi: Arc<MpiCollective>, device: &Device) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            return Err(Error::Distributed(format!(
                "NCCL needs a CUDA device, this rank runs on {device:?}"
            )));
        };
        let nccl = |what: &str, e: &dyn std::fmt::Debug| {
            Error::Distributed(format!("NCCL {what} on rank {}: {e:?}", mpi.rank()))
        };
        let mut id = [0u8; 128];
        if mpi.rank() == 0 {
            let made = Id::new().map_err(|e| nccl("unique id", &e))?;
            for (byte, &c) in id.iter_mut().zip(made.internal()) {
                *byte = c as u8;
            }
        }
        mpi.broadcast_bytes(&mut id)?;
        let id = Id::uninit(id.map(|b| b as std::ffi::c_char));
        let comm = Comm::from_rank(cuda.cuda_stream(), mpi.rank(), mpi.world_size(), id)
            .map_err(|e| nccl("communicator", &e))?;
        tracing::debug!("NCCL rank {} of {}", mpi.rank(), mpi.world_size());
        Ok(Self {
            mpi,
            comm: Mutex::new(Communicator(comm)),
        })
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }

    fn world_size(&self) -> usize {
        self.mpi.world_size()
    }

    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        self.mpi.all_reduce_f64(values)
    }

    fn all_reduce_f32(&self, values: &mut [f32]) -> Result<()> {
        self.mpi.all_reduce_f32(values)
    }

    fn gather_f32(&self, values: &[f32]) -> Result<Option<Vec<Vec<f32>>>> {
        self.mpi.gather_f32(values)
    }

    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor> {
        if !t.device().is_cuda() {
            return all_reduce_via_host(self, t);
        }
        let flat = t.to_dtype(DType::F32)?.flatten_all()?.contiguous()?;
        let summed = flat.apply_op1_no_bwd(&NcclSum(self))?;
        Ok(summed.reshape(t.shape())?)
    }

    fn engine(&self) -> &str {
        "nccl"
    }
}

/// The NCCL sum of a contiguous f32 tensor, as a candle op (its output is a new device buffer).
struct NcclSum<'a>(&'a NcclCollective);

impl CustomOp1 for NcclSum<'_> {
    fn name(&self) -> &'static str {
        "byol-nccl-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL sum runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("NCCL sum: the input is not contiguous")
        };
        let input = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let mut output = storage.device.alloc_zeros::<f32>(end - start)?;
        let comm = self.0.comm.lock().map_err(|_| {
            candle_core::Error::Msg("the NCCL communicator lock is poisoned".into())
        })?;
        comm.0
            .all_reduce(&input, &mut output, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
        Ok((
            CudaStorage::wrap_cuda_slice(output, storage.device.clone()),
            layout.shape().clone(),
        ))
    }
}
