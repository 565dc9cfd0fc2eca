//! The ImageNet stem's 3×3 stride-2 max-pool as one op with its backward, f32 contiguous NCHW.
//!
//! candle's `max_pool2d` has no backward pass when kernel ≠ stride, and composing the pool from
//! nine shifted views costs the backward four zero-padded copies per view plus eight masked
//! passes (~10 % of a ResNet-50 step at 64 px, `scripts/PERF.md`). Here the forward is one pass
//! and the backward one pass that recomputes each window's maximum and routes the gradient to it.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::storage::slice;

/// Window geometry: input `[n, c, h, w]`, output `[n, c, ho, wo]` with `ho = ⌈h / 2⌉`, and the
/// rows / columns of padding before the input.
#[derive(Debug, Clone, Copy)]
struct Pool {
    planes: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    top: usize,
    left: usize,
}

impl Pool {
    fn new(dims: &[usize], top: usize, left: usize) -> candle_core::Result<Self> {
        let &[n, c, h, w] = dims else {
            candle_core::bail!("max-pool: input of shape {dims:?}, want [N, C, H, W]")
        };
        if h == 0 || w == 0 || top > 2 || left > 2 {
            candle_core::bail!("max-pool: {h}×{w} input with padding {top}/{left}")
        }
        Ok(Self {
            planes: n * c,
            h,
            w,
            ho: (h - 1) / 2 + 1,
            wo: (w - 1) / 2 + 1,
            top,
            left,
        })
    }

    /// Input rows (or columns) of output row `o`: `2o − before + {0, 1, 2}` clipped to the input.
    fn span(o: usize, before: usize, size: usize) -> std::ops::Range<usize> {
        let start = (2 * o).saturating_sub(before);
        let end = (2 * o + 3).saturating_sub(before).min(size);
        start..end.max(start)
    }

    /// Flat index in `plane` of the first maximum of output `(i, j)`'s window (a NaN wins, as in
    /// PyTorch). Padding is never chosen: it counts as −∞.
    fn argmax(&self, plane: &[f32], i: usize, j: usize) -> Option<usize> {
        let mut best: Option<(usize, f32)> = None;
        for r in Self::span(i, self.top, self.h) {
            for c in Self::span(j, self.left, self.w) {
                let v = plane[r * self.w + c];
                match best {
                    Some((_, m)) if !(v > m || (v.is_nan() && !m.is_nan())) => {}
                    _ => best = Some((r * self.w + c, v)),
                }
            }
        }
        best.map(|(k, _)| k)
    }
}

struct MaxPool(Pool);

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "byol-max-pool-3x3-s2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = self.0;
        let x = slice(s, l, "max-pool")?;
        let (hw, how) = (p.h * p.w, p.ho * p.wo);
        let mut y = vec![0f32; p.planes * how];
        y.par_chunks_mut(how)
            .zip(x.par_chunks(hw))
            .for_each(|(out, plane)| {
                for i in 0..p.ho {
                    for j in 0..p.wo {
                        out[i * p.wo + j] = p.argmax(plane, i, j).map_or(0.0, |k| plane[k]);
                    }
                }
            });
        let dims = l.dims();
        Ok((
            CpuStorage::F32(y),
            Shape::from((dims[0], dims[1], p.ho, p.wo)),
        ))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = x.apply_op2_no_bwd(&dy.contiguous()?, &MaxPoolGrad(self.0))?;
        Ok(Some(dx))
    }
}

/// `(x, dy) → dx`: each output's gradient added at its window's first maximum.
struct MaxPoolGrad(Pool);

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "byol-max-pool-3x3-s2-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = self.0;
        let (x, dy) = (slice(s1, l1, "max-pool")?, slice(s2, l2, "max-pool")?);
        let (hw, how) = (p.h * p.w, p.ho * p.wo);
        if dy.len() != p.planes * how {
            candle_core::bail!("max-pool backward: gradient of shape {:?}", l2.dims())
        }
        let mut dx = vec![0f32; p.planes * hw];
        dx.par_chunks_mut(hw)
            .zip(x.par_chunks(hw).zip(dy.par_chunks(how)))
            .for_each(|(grad, (plane, dplane))| {
                for i in 0..p.ho {
                    for j in 0..p.wo {
                        if let Some(k) = p.argmax(plane, i, j) {
                            grad[k] += dplane[i * p.wo + j];
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// 3×3 stride-2 max-pool of an f32 CPU tensor `[N, C, H, W]` with `top` rows and `left`
/// columns of padding before the input (as many after as the windows need): `⌈H/2⌉ × ⌈W/2⌉`
/// outputs. Padding never wins a window (PyTorch's −∞); ties go to the first maximum in
/// row-major order, as in PyTorch. Differentiable in `xs`.
pub fn max_pool_3x3_s2(xs: &Tensor, top: usize, left: usize) -> candle_core::Result<Tensor> {
    let pool = Pool::new(xs.dims(), top, left)?;
    xs.contiguous()?.apply_op1(MaxPool(pool))
}
