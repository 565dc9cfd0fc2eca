//! Synchronised (cross-replica) BatchNorm: the per-channel statistics of every train-mode
//! BatchNorm summed over the ranks, forward and backward.
//!
//! The fused CPU kernels reduce their sums through `byol_kernels::ChannelSum`; the stock candle
//! path (CUDA, the stock backend) through [`cross_replica_sum`], an op whose backward is the same
//! sum of the gradients. Both read the reduction installed on the calling thread, which
//! [`with_sync_batch_norm`] sets for the span of a training step.

use std::sync::Arc;

use byol_kernels::ChannelSum;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};

use super::collective::{Collective, DataParallel};

/// A [`Collective`] as the kernels' [`ChannelSum`].
struct OverCollective(Arc<dyn Collective>);

impl ChannelSum for OverCollective {
    fn sum(&self, values: &mut [f64]) -> candle_core::Result<()> {
        self.0
            .all_reduce_f64(values)
            .map_err(|e| candle_core::Error::Msg(format!("synchronised BatchNorm: {e}")))
    }
}

/// Runs `f` (a forward and its backward) with BatchNorm statistics reduced over `parallel`'s
/// ranks when it synchronises them and has more than one.
pub fn with_sync_batch_norm<R>(parallel: &DataParallel, f: impl FnOnce() -> R) -> R {
    let sum: Option<Arc<dyn ChannelSum>> = (parallel.sync_batch_norm && parallel.world_size() > 1)
        .then(|| Arc::new(OverCollective(Arc::clone(&parallel.collective))) as Arc<dyn ChannelSum>);
    byol_kernels::with_channel_sum(sum, f)
}

/// The element-wise sum of `t` over the ranks of `sum`, differentiable (its backward sums the
/// gradients the same way). Off the CPU the values travel through host memory.
pub fn cross_replica_sum(t: &Tensor, sum: &Arc<dyn ChannelSum>) -> candle_core::Result<Tensor> {
    let op = CrossReplicaSum(Arc::clone(sum));
    match t.device() {
        Device::Cpu => t.contiguous()?.apply_op1(op),
        device => t
            .to_device(&Device::Cpu)?
            .contiguous()?
            .apply_op1(op)?
            .to_device(device),
    }
}

/// The number of values per channel over every rank, for `local` values here.
pub fn cross_replica_count(local: usize, sum: &Arc<dyn ChannelSum>) -> candle_core::Result<usize> {
    let mut n = [local as f64];
    sum.sum(&mut n)?;
    Ok(n[0] as usize)
}

struct CrossReplicaSum(Arc<dyn ChannelSum>);

impl CustomOp1 for CrossReplicaSum {
    fn name(&self) -> &'static str {
        "byol-cross-replica-sum"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("cross-replica sum: the input is not contiguous")
        };
        let out = match storage {
            CpuStorage::F32(v) => {
                let mut wide: Vec<f64> = v[start..end].iter().map(|&x| x as f64).collect();
                self.0.sum(&mut wide)?;
                CpuStorage::F32(wide.into_iter().map(|x| x as f32).collect())
            }
            CpuStorage::F64(v) => {
                let mut wide = v[start..end].to_vec();
                self.0.sum(&mut wide)?;
                CpuStorage::F64(wide)
            }
            other => candle_core::bail!("cross-replica sum of {:?} values", other.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        cross_replica_sum(grad, &self.0).map(Some)
    }
}
