//! Train-mode BatchNorm as fused ops for `[N, C]` and `[N, C, H, W]` f32 inputs.
//!
//! Forward: one pass for the per-channel statistics (mean, then centred variance while the
//! channel is cache-hot, accumulated in f64), one pass writing `y = x·a + b`. Backward: one pass
//! for `Σdy` and `Σdy·x̂`, one pass writing `dx`. Stock candle needs ~35 full-size passes.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::slice;

/// The batch statistics of one train-mode forward, for the running-average update.
#[derive(Debug, Clone)]
pub struct BnStats {
    /// Per-channel batch mean, `[C]`.
    pub mean: Tensor,
    /// Per-channel biased batch variance, `[C]`.
    pub var: Tensor,
    /// Values per channel (`N·H·W`).
    pub count: usize,
}

/// (N, C, H·W) of a rank-2 or rank-4 input.
fn ncs(dims: &[usize]) -> candle_core::Result<(usize, usize, usize)> {
    match *dims {
        [n, c] => Ok((n, c, 1)),
        [n, c, h, w] => Ok((n, c, h * w)),
        _ => candle_core::bail!("BatchNorm expects a [N, C] or [N, C, H, W] input, got {dims:?}"),
    }
}

/// Mean and inverse std of each channel, saved by the forward for the backward.
#[derive(Debug, Default)]
struct Saved {
    mean: Vec<f32>,
    var: Vec<f32>,
    inv_std: Vec<f32>,
}

struct BnTrain {
    eps: f64,
    saved: Arc<Mutex<Saved>>,
}

fn check_vec(s: &CpuStorage, l: &Layout, c: usize, what: &str) -> candle_core::Result<Vec<f32>> {
    let v = slice(s, l, what)?;
    if v.len() != c {
        candle_core::bail!("BatchNorm: {what} has {} values for {c} channels", v.len())
    }
    Ok(v.to_vec())
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "byol-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, s) = ncs(l1.dims())?;
        let x = slice(s1, l1, "BatchNorm input")?;
        let gamma = check_vec(s2, l2, c, "weight")?;
        let beta = check_vec(s3, l3, c, "bias")?;
        let count = (n * s) as f64;
        let stats: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let planes = (0..n).map(|i| &x[(i * c + ch) * s..][..s]);
                let sum: f64 = planes
                    .clone()
                    .map(|p| p.iter().map(|&v| v as f64).sum::<f64>())
                    .sum();
                let mean = sum / count;
                let sq: f64 = planes
                    .map(|p| {
                        p.iter()
                            .map(|&v| {
                                let d = v as f64 - mean;
                                d * d
                            })
                            .sum::<f64>()
                    })
                    .sum();
                (mean as f32, (sq / count) as f32)
            })
            .collect();
        let mean: Vec<f32> = stats.iter().map(|s| s.0).collect();
        let var: Vec<f32> = stats.iter().map(|s| s.1).collect();
        let inv_std: Vec<f32> = var
            .iter()
            .map(|&v| (1.0 / (v as f64 + self.eps).sqrt()) as f32)
            .collect();
        // y = x·a + b with a = γ/σ, b = β − μ·a.
        let a: Vec<f32> = gamma.iter().zip(&inv_std).map(|(g, i)| g * i).collect();
        let b: Vec<f32> = (0..c).map(|ch| beta[ch] - mean[ch] * a[ch]).collect();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(c * s)
            .zip(x.par_chunks(c * s))
            .for_each(|(yr, xr)| {
                for ch in 0..c {
                    let (a, b) = (a[ch], b[ch]);
                    for (o, &v) in yr[ch * s..][..s].iter_mut().zip(&xr[ch * s..][..s]) {
                        *o = v * a + b;
                    }
                }
            });
        *self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("BatchNorm state poisoned".into()))? =
            Saved { mean, var, inv_std };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (mean, inv_std) = {
            let saved = self
                .saved
                .lock()
                .map_err(|_| candle_core::Error::Msg("BatchNorm state poisoned".into()))?;
            (saved.mean.clone(), saved.inv_std.clone())
        };
        let dy = dy.contiguous()?;
        let sums = x.apply_op2_no_bwd(
            &dy,
            &BnBwdReduce {
                mean: mean.clone(),
                inv_std: inv_std.clone(),
            },
        )?;
        let dx = x.apply_op3_no_bwd(
            &dy,
            &sums,
            &BnBwdDx {
                mean,
                inv_std,
                gamma: gamma.to_vec1::<f32>()?,
            },
        )?;
        Ok((Some(dx), Some(sums.get(1)?), Some(sums.get(0)?)))
    }
}

/// `(x, dy) → [[Σdy], [Σdy·x̂]]`, shape `[2, C]`.
struct BnBwdReduce {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

impl CustomOp2 for BnBwdReduce {
    fn name(&self) -> &'static str {
        "byol-batch-norm-bwd-reduce"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, s) = ncs(l1.dims())?;
        if l1.dims() != l2.dims() || self.mean.len() != c {
            candle_core::bail!("BatchNorm backward: shapes {:?} {:?}", l1.dims(), l2.dims())
        }
        let x = slice(s1, l1, "BatchNorm input")?;
        let dy = slice(s2, l2, "BatchNorm gradient")?;
        let sums: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (m, is) = (self.mean[ch], self.inv_std[ch]);
                let (mut sd, mut sdx) = (0f64, 0f64);
                for i in 0..n {
                    let off = (i * c + ch) * s;
                    let (xp, dp) = (&x[off..][..s], &dy[off..][..s]);
                    // f32 partial sums per plane keep the loop vectorised; planes add in f64.
                    let (mut a, mut b) = (0f32, 0f32);
                    for (&xv, &d) in xp.iter().zip(dp) {
                        a += d;
                        b += d * (xv - m);
                    }
                    sd += a as f64;
                    sdx += b as f64;
                }
                (sd as f32, (sdx * is as f64) as f32)
            })
            .collect();
        let mut out = Vec::with_capacity(2 * c);
        out.extend(sums.iter().map(|s| s.0));
        out.extend(sums.iter().map(|s| s.1));
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// `(x, dy, sums) → dx = γ·σ⁻¹·(dy − Σdy/m − x̂·Σdy·x̂/m)`.
struct BnBwdDx {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    gamma: Vec<f32>,
}

impl CustomOp3 for BnBwdDx {
    fn name(&self) -> &'static str {
        "byol-batch-norm-bwd-dx"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, s) = ncs(l1.dims())?;
        if l1.dims() != l2.dims() || l3.dims() != [2, c] || self.gamma.len() != c {
            candle_core::bail!("BatchNorm backward: shapes {:?} {:?}", l1.dims(), l2.dims())
        }
        let x = slice(s1, l1, "BatchNorm input")?;
        let dy = slice(s2, l2, "BatchNorm gradient")?;
        let sums = slice(s3, l3, "BatchNorm sums")?;
        let m = (n * s) as f32;
        // dx = k·dy + p·x + q per channel, folding every constant.
        let coef: Vec<(f32, f32, f32)> = (0..c)
            .map(|ch| {
                let is = self.inv_std[ch];
                let k = self.gamma[ch] * is;
                let mean_dy = sums[ch] / m;
                let mean_dyxh = sums[c + ch] / m;
                // x̂ = (x − μ)·σ⁻¹, so −k·x̂·mean_dyxh = p·x − p·μ.
                let p = -k * is * mean_dyxh;
                let q = -k * mean_dy - p * self.mean[ch];
                (k, p, q)
            })
            .collect();
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(c * s)
            .zip(x.par_chunks(c * s).zip(dy.par_chunks(c * s)))
            .for_each(|(o, (xr, dr))| {
                for (ch, &(k, p, q)) in coef.iter().enumerate() {
                    let r = ch * s..(ch + 1) * s;
                    for ((o, &xv), &d) in o[r.clone()].iter_mut().zip(&xr[r.clone()]).zip(&dr[r]) {
                        *o = k * d + p * xv + q;
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Train-mode BatchNorm of an f32 CPU tensor with scale `gamma` and shift `beta` (`[C]` each),
/// differentiable in all three; also returns the batch statistics (detached).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, BnStats)> {
    let (n, c, s) = ncs(x.dims())?;
    if n * s < 2 {
        candle_core::bail!(
            "BatchNorm in training mode needs more than one value per channel, got {x:?}"
        )
    }
    let saved = Arc::new(Mutex::new(Saved::default()));
    let op = BnTrain {
        eps,
        saved: saved.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let guard = saved
        .lock()
        .map_err(|_| candle_core::Error::Msg("BatchNorm state poisoned".into()))?;
    let stats = BnStats {
        mean: Tensor::from_slice(&guard.mean, c, x.device())?,
        var: Tensor::from_slice(&guard.var, c, x.device())?,
        count: n * s,
    };
    Ok((y, stats))
}
