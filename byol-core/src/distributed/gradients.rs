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
/// counts as zeros, so every rank sends the same layout.
pub fn all_reduce_gradients(
    store: &VarStore,
    grads: &mut GradStore,
    collective: &dyn Collective,
) -> Result<()> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    let entries: Vec<_> = store.trainable().collect();
    let mut bucket: Vec<f32> = Vec::with_capacity(BUCKET_FLOATS);
    let mut members = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let var = entry.var.as_tensor();
        match grads.get(var) {
            Some(g) => bucket.extend(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => bucket.resize(bucket.len() + var.elem_count(), 0.0),
        }
        members.push(i);
        let last = i + 1 == entries.len();
        if bucket.len() >= BUCKET_FLOATS || last {
            collective.all_reduce_f32(&mut bucket)?;
            let mut offset = 0;
            for &m in &members {
                let var = entries[m].var.as_tensor();
                let n = var.elem_count();
                let summed =
                    Tensor::from_slice(&bucket[offset..offset + n], var.shape(), var.device())?
                        .to_dtype(var.dtype())?;
                grads.insert(var, summed);
                offset += n;
            }
            bucket.clear();
            members.clear();
        }
    }
    Ok(())
}
