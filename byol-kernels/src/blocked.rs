//! Activations kept in oneDNN's channel-blocked layout between the layers of a training step.
//!
//! oneDNN's f32 convolution kernels read and write nChw8c (AVX2) or nChw16c (AVX-512): channels
//! in blocks of B, the B channels of one position side by side. A plain NCHW tensor costs a
//! reorder into that layout before every convolution pass and one back after it (six per
//! convolution over forward and backward; scripts/PERF.md, session 20: ~11 % of a ResNet-50
//! step). A blocked activation is a 5-D tensor `[N, C/B, H, W, B]`: the convolutions
//! ([`crate::conv2d`]) and the fused BatchNorms take and return it as it is, element-wise ops
//! (ReLU, the residual add, gradient sums) do not care, and the network converts once at each
//! end ([`to_blocked`], [`from_blocked`]).

use std::cell::Cell;

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use crate::storage::{filled_par, slice};
use crate::{backend, onednn, Backend};

/// The logical `[N, C, H, W]` of a plain or blocked activation's dims, and its block (0: plain).
pub(crate) fn nchw(dims: &[usize]) -> candle_core::Result<([usize; 4], usize)> {
    match *dims {
        [n, c, h, w] => Ok(([n, c, h, w], 0)),
        [n, cb, h, w, b] if b > 0 => Ok(([n, cb * b, h, w], b)),
        _ => candle_core::bail!(
            "expected an [N, C, H, W] activation or a blocked [N, C/B, H, W, B] one, got {dims:?}"
        ),
    }
}

/// The dims of an activation of logical shape `[n, c, h, w]` in layout `block` (0: plain).
pub(crate) fn dims_in(block: usize, [n, c, h, w]: [usize; 4]) -> Vec<usize> {
    match c.checked_div(block) {
        Some(blocks) => vec![n, blocks, h, w, block],
        None => vec![n, c, h, w],
    }
}

thread_local! {
    // Tests and benchmarks compare both layouts in one process.
    static OVERRIDE: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether training keeps activations blocked where it can: on unless `with_blocked_activations`
/// says otherwise on this thread, or `BYOL_BLOCKED_ACTIVATIONS=0` in the environment.
fn enabled() -> bool {
    static FROM_ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    OVERRIDE.with(|o| o.get()).unwrap_or_else(|| {
        *FROM_ENV
            .get_or_init(|| std::env::var("BYOL_BLOCKED_ACTIVATIONS").map_or(true, |v| v != "0"))
    })
}

/// Runs `f` with blocked training activations allowed (`on`) or not on the calling thread only.
pub fn with_blocked_activations<R>(on: bool, f: impl FnOnce() -> R) -> R {
    crate::backend::with_override(&OVERRIDE, on, f)
}

/// The block a training forward of `xs` through layers of `channels` should keep its
/// activations in, or None to keep them plain: only on the f32 oneDNN backends (`onednn`,
/// `onednn-direct`; bf16 converts at every call anyway), on CPU, where oneDNN's kernels pick a
/// blocked layout and every count is a whole number of blocks and wide enough for oneDNN (narrow
/// layers run on the Rust kernels, `conv.rs`).
pub fn training_block(xs: &Tensor, channels: &[usize]) -> Option<usize> {
    if !enabled()
        || !matches!(backend(), Backend::OneDnn | Backend::OneDnnDirect)
        || !xs.device().is_cpu()
        || xs.dtype() != DType::F32
    {
        return None;
    }
    let block = onednn::activation_block()?;
    channels
        .iter()
        .all(|&c| c >= 16 && c.is_multiple_of(block))
        .then_some(block)
}

/// `[N, C, H, W]` → `[N, C/B, H, W, B]` (differentiable; C a multiple of `block`).
pub fn to_blocked(xs: &Tensor, block: usize) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    if block == 0 || !c.is_multiple_of(block) {
        candle_core::bail!("to_blocked: {c} channels are not whole blocks of {block}")
    }
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        return xs.contiguous()?.apply_op1(Reorder {
            dims: [n, c, h, w],
            block,
            to_blocked: true,
        });
    }
    xs.reshape((n, c / block, block, h, w))?
        .permute((0, 1, 3, 4, 2))?
        .contiguous()
}

/// `[N, C/B, H, W, B]` → `[N, C, H, W]` (differentiable); a plain tensor is returned as it is.
pub fn from_blocked(xs: &Tensor) -> candle_core::Result<Tensor> {
    let (dims, block) = nchw(xs.dims())?;
    if block == 0 {
        return Ok(xs.clone());
    }
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        return xs.contiguous()?.apply_op1(Reorder {
            dims,
            block,
            to_blocked: false,
        });
    }
    xs.permute((0, 1, 4, 2, 3))?
        .contiguous()?
        .reshape(&dims[..])
}

/// The conversion between the two layouts on the CPU, samples in parallel (candle's copy of a
/// permuted tensor runs on one thread), its backward the opposite conversion.
struct Reorder {
    /// The logical `[N, C, H, W]`.
    dims: [usize; 4],
    block: usize,
    to_blocked: bool,
}

impl CustomOp1 for Reorder {
    fn name(&self) -> &'static str {
        if self.to_blocked {
            "byol-to-blocked"
        } else {
            "byol-from-blocked"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let (out, block) = if self.to_blocked {
            (reblock(x, self.dims, self.block), self.block)
        } else {
            (unblock(x, self.dims, self.block), 0)
        };
        Ok((CpuStorage::F32(out), Shape::from(dims_in(block, self.dims))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = Reorder {
            to_blocked: !self.to_blocked,
            ..*self
        };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// The mean over the spatial positions of a plain or blocked activation: `[N, C]`, channels in
/// order.
pub fn spatial_mean(xs: &Tensor) -> candle_core::Result<Tensor> {
    // Blocked: [N, C/B, B] holds channel cb·B + l at (cb, l), so flattening keeps the order;
    // plain: [N, C] already.
    xs.mean((2, 3))?.flatten_from(1)
}

/// A blocked activation's data `[n, c/b, s, b]` rearranged to plain `[n, c, s]` (`s` = H·W),
/// samples in parallel.
pub(crate) fn unblock(x: &[f32], [_, c, h, w]: [usize; 4], b: usize) -> Vec<f32> {
    let s = h * w;
    // SAFETY: each chunk is one sample, all of whose c·s values the loop writes.
    unsafe {
        filled_par(x.len(), c * s, |i, out: &mut [MaybeUninit<f32>]| {
            let src = &x[i * c * s..][..c * s];
            for (cb, block) in src.chunks_exact(s * b).enumerate() {
                for l in 0..b {
                    let plane = &mut out[(cb * b + l) * s..][..s];
                    for (p, o) in plane.iter_mut().enumerate() {
                        o.write(block[p * b + l]);
                    }
                }
            }
        })
    }
}

/// Plain `[n, c, s]` data rearranged to blocked `[n, c/b, s, b]`, samples in parallel.
pub(crate) fn reblock(x: &[f32], [_, c, h, w]: [usize; 4], b: usize) -> Vec<f32> {
    let s = h * w;
    // SAFETY: each chunk is one sample, all of whose c·s values the loop writes.
    unsafe {
        filled_par(x.len(), c * s, |i, out: &mut [MaybeUninit<f32>]| {
            let src = &x[i * c * s..][..c * s];
            for (cb, block) in out.chunks_exact_mut(s * b).enumerate() {
                for (p, position) in block.chunks_exact_mut(b).enumerate() {
                    for (l, o) in position.iter_mut().enumerate() {
                        o.write(src[(cb * b + l) * s + p]);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_tensors_agree_on_the_blocked_layout() {
        let dims = [2, 16, 3, 5];
        let x: Vec<f32> = (0..2 * 16 * 15).map(|v| v as f32).collect();
        let t = Tensor::from_slice(&x, &dims[..], &candle_core::Device::Cpu).unwrap();
        let blocked = to_blocked(&t, 8).unwrap();
        assert_eq!(blocked.dims(), &[2, 2, 3, 5, 8]);
        let flat = blocked.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat, reblock(&x, dims, 8));
        // Channel 9 (block 1, lane 1) of sample 1 at position (2, 4).
        let v = blocked
            .get(1)
            .and_then(|t| t.get(1))
            .and_then(|t| t.get(2))
            .and_then(|t| t.get(4))
            .and_then(|t| t.get(1))
            .and_then(|t| t.to_scalar::<f32>())
            .unwrap();
        assert_eq!(v, x[(16 + 9) * 15 + 2 * 5 + 4]);
        assert_eq!(unblock(&flat, dims, 8), x);
        let back = from_blocked(&blocked).unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), x);
        // candle's own permutes give the same layout.
        let permuted = t
            .reshape((2, 2, 8, 3, 5))
            .and_then(|t| t.permute((0, 1, 3, 4, 2)))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap();
        assert_eq!(permuted, flat);
        // The gradient of a weighted sum through both conversions is the weight itself.
        let var = candle_core::Var::from_tensor(&t).unwrap();
        let weights = Tensor::arange(0f32, x.len() as f32, &candle_core::Device::Cpu)
            .and_then(|t| t.reshape(&dims[..]))
            .unwrap();
        let through = from_blocked(&to_blocked(&var, 8).unwrap()).unwrap();
        let grads = (through * &weights)
            .and_then(|t| t.sum_all())
            .and_then(|t| t.backward())
            .unwrap();
        let dx = grads.get(var.as_tensor()).unwrap();
        assert_eq!(
            dx.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            weights.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let means = spatial_mean(&blocked).unwrap();
        let plain = t.mean((2, 3)).unwrap();
        assert_eq!(
            means.to_vec2::<f32>().unwrap(),
            plain.to_vec2::<f32>().unwrap()
        );
    }
}
