//! The gradient all-reduce of a data-parallel step: every trainable tensor's gradient summed
//! over the ranks through flat buckets (a few large collective calls, not one per tensor).

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

use super::collective::Collective;
use crate::nn::VarStore;
use crate::Result;

/// Floats per all-reduce call (16 MiB): large enough that per-call latency vanishes, small
/// enough that the staging buffer stays modest for the widest networks.
pub const BUCKET_FLOATS: usize = 1 << 22;

/// Replaces the gradient of every trainable tensor of `store` in `grads` by its sum over the
/// ranks. When each rank back-propagated its share of the global batch's mean loss, that is
/// the single-process gradient, the same on every rank. A tensor without a gradient here
/// counts as zeros, so every rank sends the same layout. Buckets stay on the gradients'
/// device: an engine that reduces device memory (NCCL) never copies them to the host.
pub fn all_reduce_gradients(
    store: &VarStore,
    grads: &mut GradStore,
    collective: &dyn Collective,
) -> Result<()> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    let entries: Vec<_> = store.trainable().collect();
    let mut parts: Vec<Tensor> = Vec::new();
    let mut members = Vec::new();
    let mut bucket_len = 0;
    for (i, entry) in entries.iter().enumerate() {
        let var = entry.var.as_tensor();
        let flat = match grads.get(var) {
            Some(g) => g.to_dtype(DType::F32)?.flatten_all()?,
            None => Tensor::zeros(var.elem_count(), DType::F32, var.device())?,
        };
        bucket_len += flat.elem_count();
        parts.push(flat);
        members.push(i);
        let last = i + 1 == entries.len();
        if bucket_len >= BUCKET_FLOATS || last {
            let summed = collective.all_reduce_tensor(&Tensor::cat(&parts, 0)?)?;
            let mut offset = 0;
            for &m in &members {
                let var = entries[m].var.as_tensor();
                let n = var.elem_count();
                let g = summed
                    .narrow(0, offset, n)?
                    .reshape(var.shape())?
                    .to_dtype(var.dtype())?;
                grads.insert(var, g);
                offset += n;
            }
            parts.clear();
            members.clear();
            bucket_len = 0;
        }
    }
    Ok(())
}
