//! Train-mode BatchNorm as fused ops for `[N, C]` and `[N, C, H, W]` f32 inputs, and for
//! activations in the channel-blocked layout `[N, C/B, H, W, B]` (`blocked.rs`).
//!
//! Forward: two passes for the per-channel statistics (the sums, then the centred squares;
//! f32 lanes within blocks, f64 across them, `lanes.rs`), one pass writing `y = x·a + b`.
//! Backward: one pass for `Σdy` and `Σdy·x̂`, one pass writing `dx`. Stock candle needs ~35
//! full-size passes. The passes run in the AVX2 copy where the CPU has it (`simd.rs`).

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cross_replica::{channel_sum, ChannelSum};
use crate::lanes::{sum_of, sums_of2, sums_of3};
use crate::simd::with_avx2;
use crate::storage::{filled_par, slice};

/// The batch statistics of one train-mode forward, for the running-average update.
#[derive(Debug, Clone)]
pub struct BnStats {
    /// Per-channel batch mean, `[C]`.
    pub mean: Tensor,
    /// Per-channel biased batch variance, `[C]`.
    pub var: Tensor,
    /// Values per channel (`N·H·W`; over every process when the statistics are synchronised).
    pub count: usize,
}

/// (N, C, H·W) of a rank-2, rank-4 or blocked rank-5 input.
fn ncs(dims: &[usize]) -> candle_core::Result<(usize, usize, usize)> {
    match *dims {
        [n, c] => Ok((n, c, 1)),
        [n, c, h, w] => Ok((n, c, h * w)),
        [n, cb, h, w, b] if b == 8 || b == 16 => Ok((n, cb * b, h * w)),
        _ => candle_core::bail!(
            "BatchNorm expects a [N, C], [N, C, H, W] or blocked [N, C/B, H, W, B] (B 8 or 16) \
             input, got {dims:?}"
        ),
    }
}

/// Fails unless `block` is a layout the kernels have: 0 (plain), 8 or 16.
fn check_block(block: usize) -> candle_core::Result<()> {
    if ![0, 8, 16].contains(&block) {
        candle_core::bail!("BatchNorm: no blocked layout with blocks of {block}")
    }
    Ok(())
}

/// Calls `$f::<B>($args)` for the run-time block `$block` (8 or 16), else fails.
macro_rules! per_block {
    ($block:expr, $f:ident($($arg:expr),*)) => {
        match $block {
            8 => $f::<8>($($arg),*),
            16 => $f::<16>($($arg),*),
            b => candle_core::bail!("BatchNorm: no blocked layout with blocks of {b}"),
        }
    };
}

/// Mean and inverse std of each channel, saved by the forward for the backward.
#[derive(Debug, Default)]
struct Saved {
    mean: Vec<f32>,
    var: Vec<f32>,
    inv_std: Vec<f32>,
    /// Values per channel the statistics were taken over (all processes when synchronised).
    count: usize,
}

/// What the fused op applies after `x·a + b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Epilogue {
    /// Plain BatchNorm.
    None,
    /// `relu(bn(x))`.
    Relu,
    /// `relu(bn(x) + r)`: the end of a residual block.
    AddRelu,
}

/// ReLU that keeps NaN (as PyTorch does): `f32::max(v, 0)` would turn a NaN into 0 and hide a
/// divergence. Written as one compare and select so the loops stay vectorised.
#[inline(always)]
fn relu(v: f32) -> f32 {
    if v <= 0.0 {
        0.0
    } else {
        v
    }
}

/// ReLU's backward from its output: the gradient passes where the output is positive (PyTorch's
/// `threshold_backward`; a NaN output passes nothing).
#[inline(always)]
fn relu_mask(y: f32, d: f32) -> f32 {
    if y > 0.0 {
        d
    } else {
        0.0
    }
}

struct BnTrain {
    eps: f64,
    epilogue: Epilogue,
    /// The input's channel block (0: plain NCHW or [N, C]).
    block: usize,
    saved: Arc<Mutex<Saved>>,
    /// Synchronised BatchNorm: statistics and gradient sums reduced over the processes.
    sync: Option<Arc<dyn ChannelSum>>,
}

fn check_vec(s: &CpuStorage, l: &Layout, c: usize, what: &str) -> candle_core::Result<Vec<f32>> {
    let v = slice(s, l, what)?;
    if v.len() != c {
        candle_core::bail!("BatchNorm: {what} has {} values for {c} channels", v.len())
    }
    Ok(v.to_vec())
}

/// `Σ plane_sum(plane)` over the `n` planes of channel `ch` of `x` `[n, c, s]`.
#[inline(always)]
fn over_planes(
    x: &[f32],
    (n, c, s): (usize, usize, usize),
    ch: usize,
    plane_sum: impl Fn(&[f32]) -> f64,
) -> f64 {
    (0..n).map(|i| plane_sum(&x[(i * c + ch) * s..][..s])).sum()
}

/// The sum of a plane's values.
#[inline(always)]
fn plane_sum(p: &[f32]) -> f64 {
    sum_of(p, |v| v)
}

/// The sum of a plane's squared deviations from `mean` (each centred in f64 then rounded:
/// exact enough even where |mean| ≫ the spread).
#[inline(always)]
fn plane_squares(p: &[f32], mean: f64) -> f64 {
    let centred = |v: f32| (v as f64 - mean) as f32;
    sum_of(p, |v| centred(v) * centred(v))
}

/// Per-channel (mean, biased variance) of `x` (`[n, c, s]`, or blocked with `block`), and the
/// values per channel they were taken over: the sums, then the centred squares around the mean,
/// in f64 then rounded. Alone, each channel's (or channel block's) two passes run back to back
/// while its values are in cache; with `sync` the sums, then the squares, are reduced over the
/// processes (synchronised BatchNorm).
fn channel_stats(
    x: &[f32],
    dims: (usize, usize, usize),
    block: usize,
    sync: Option<&dyn ChannelSum>,
) -> candle_core::Result<(Vec<f32>, Vec<f32>, usize)> {
    let (n, c, s) = dims;
    let count = (n * s) as f64;
    if sync.is_none() {
        let stats: Vec<(f32, f32)> = if block > 0 {
            per_block!(block, blocked_stats(x, dims))
        } else {
            (0..c)
                .into_par_iter()
                .map(|ch| {
                    with_avx2(|| {
                        let mean = over_planes(x, dims, ch, plane_sum) / count;
                        let var = over_planes(x, dims, ch, |p| plane_squares(p, mean)) / count;
                        (mean as f32, var as f32)
                    })
                })
                .collect()
        };
        let (mean, var) = stats.into_iter().unzip();
        return Ok((mean, var, n * s));
    }
    // Per-channel `Σx` (no mean) or `Σ(x − mean)²`, in the data's layout.
    let moment = |mean: Option<&[f64]>| -> candle_core::Result<Vec<f64>> {
        if block > 0 {
            return Ok(per_block!(block, blocked_moment(x, dims, mean)));
        }
        Ok((0..c)
            .into_par_iter()
            .map(|ch| {
                with_avx2(
                    #[inline(always)]
                    || match mean {
                        None => over_planes(x, dims, ch, plane_sum),
                        Some(mean) => over_planes(x, dims, ch, |p| plane_squares(p, mean[ch])),
                    },
                )
            })
            .collect())
    };
    let mut sums = moment(None)?;
    let mut count = count;
    if let Some(sync) = sync {
        sums.push(count);
        sync.sum(&mut sums)?;
        count = sums[c];
        sums.truncate(c);
        if count < 2.0 {
            candle_core::bail!("synchronised BatchNorm needs more than one value per channel")
        }
    }
    let mean: Vec<f64> = sums.iter().map(|v| v / count).collect();
    let mut squares = moment(Some(&mean))?;
    if let Some(sync) = sync {
        sync.sum(&mut squares)?;
    }
    Ok((
        mean.iter().map(|&m| m as f32).collect(),
        squares.iter().map(|&q| (q / count) as f32).collect(),
        count as usize,
    ))
}

/// Positions whose per-lane terms add up in f32 before they join the f64 total (as `lanes.rs`:
/// a lane adds at most 64 values in f32).
const RUN: usize = 64;

/// The `B` values of one position of a blocked activation, from offset `off`.
#[inline(always)]
fn at<const B: usize>(x: &[f32], off: usize) -> &[f32; B] {
    x[off..off + B].try_into().expect("B values")
}

/// Per-lane sums over channel block `cb` of blocked data `[n, c/B, s, B]`: `add(off, acc)` adds
/// the terms of the position at offset `off` into `O` rows of `B` lanes (f32 over runs of [`RUN`]
/// positions, f64 across them).
#[inline(always)]
fn lane_sums<const B: usize, const O: usize>(
    (n, c, s): (usize, usize, usize),
    cb: usize,
    add: impl Fn(usize, &mut [[f32; B]; O]),
) -> [[f64; B]; O] {
    let mut total = [[0f64; B]; O];
    for i in 0..n {
        let base = (i * c + cb * B) * s;
        let mut p = 0;
        while p < s {
            let end = (p + RUN).min(s);
            let mut acc = [[0f32; B]; O];
            for q in p..end {
                add(base + q * B, &mut acc);
            }
            for (t, a) in total.iter_mut().zip(&acc) {
                for (t, &a) in t.iter_mut().zip(a) {
                    *t += a as f64;
                }
            }
            p = end;
        }
    }
    total
}

/// Per-lane `Σx` over channel block `cb` of blocked data.
#[inline(always)]
fn block_sums<const B: usize>(x: &[f32], dims: (usize, usize, usize), cb: usize) -> [f64; B] {
    let [t] = lane_sums::<B, 1>(dims, cb, |off, [acc]| {
        for (a, &v) in acc.iter_mut().zip(at::<B>(x, off)) {
            *a += v;
        }
    });
    t
}

/// Per-lane `Σ(x − m)²` over channel block `cb` of blocked data (each deviation in f64 then
/// rounded, as `plane_squares`).
#[inline(always)]
fn block_squares<const B: usize>(
    x: &[f32],
    dims: (usize, usize, usize),
    cb: usize,
    m: &[f64; B],
) -> [f64; B] {
    let [t] = lane_sums::<B, 1>(dims, cb, |off, [acc]| {
        for ((a, &v), &m) in acc.iter_mut().zip(at::<B>(x, off)).zip(m) {
            let d = (v as f64 - m) as f32;
            *a += d * d;
        }
    });
    t
}

/// Per-channel `Σx` (no `mean`) or `Σ(x − mean)²` of blocked data, channel blocks in parallel.
fn blocked_moment<const B: usize>(
    x: &[f32],
    dims: (usize, usize, usize),
    mean: Option<&[f64]>,
) -> Vec<f64> {
    let blocks: Vec<[f64; B]> = (0..dims.1 / B)
        .into_par_iter()
        .map(|cb| {
            with_avx2(
                #[inline(always)]
                || match mean {
                    None => block_sums::<B>(x, dims, cb),
                    Some(mean) => {
                        let m: &[f64; B] = mean[cb * B..][..B].try_into().expect("B means");
                        block_squares::<B>(x, dims, cb, m)
                    }
                },
            )
        })
        .collect();
    blocks.into_iter().flatten().collect()
}

/// Per-channel (mean, biased variance) of blocked data, one process: each channel block's two
/// passes back to back while its values are in cache.
fn blocked_stats<const B: usize>(x: &[f32], dims: (usize, usize, usize)) -> Vec<(f32, f32)> {
    let count = (dims.0 * dims.2) as f64;
    let blocks: Vec<[(f32, f32); B]> = (0..dims.1 / B)
        .into_par_iter()
        .map(|cb| {
            with_avx2(
                #[inline(always)]
                || {
                    let mean = block_sums::<B>(x, dims, cb).map(|t| t / count);
                    let squares = block_squares::<B>(x, dims, cb, &mean);
                    std::array::from_fn(|l| (mean[l] as f32, (squares[l] / count) as f32))
                },
            )
        })
        .collect();
    blocks.into_iter().flatten().collect()
}

/// [`normalise_sample`] of one sample of blocked data (`[c/B, s, B]`).
#[inline(always)]
fn normalise_sample_blocked<const B: usize>(
    yr: &mut [MaybeUninit<f32>],
    xr: &[f32],
    rr: Option<&[f32]>,
    (a, b): (&[f32], &[f32]),
    s: usize,
    epilogue: Epilogue,
) {
    for (cb, (a, b)) in a.chunks_exact(B).zip(b.chunks_exact(B)).enumerate() {
        let (a, b): (&[f32; B], &[f32; B]) = (a.try_into().expect("B"), b.try_into().expect("B"));
        let r = cb * s * B..(cb + 1) * s * B;
        let (yp, xp) = (&mut yr[r.clone()], &xr[r.clone()]);
        match (epilogue, rr) {
            (Epilogue::AddRelu, Some(rr)) => {
                for ((o, v), q) in yp
                    .chunks_exact_mut(B)
                    .zip(xp.chunks_exact(B))
                    .zip(rr[r].chunks_exact(B))
                {
                    for l in 0..B {
                        o[l].write(relu(v[l] * a[l] + b[l] + q[l]));
                    }
                }
            }
            (Epilogue::Relu, _) => {
                for (o, v) in yp.chunks_exact_mut(B).zip(xp.chunks_exact(B)) {
                    for l in 0..B {
                        o[l].write(relu(v[l] * a[l] + b[l]));
                    }
                }
            }
            _ => {
                for (o, v) in yp.chunks_exact_mut(B).zip(xp.chunks_exact(B)) {
                    for l in 0..B {
                        o[l].write(v[l] * a[l] + b[l]);
                    }
                }
            }
        }
    }
}

/// [`plane_grad_sums`] of blocked data.
fn blocked_grad_sums<const B: usize>(
    x: &[f32],
    dy: &[f32],
    mask_by: Option<&[f32]>,
    dims: (usize, usize, usize),
    mean: &[f32],
    inv_std: &[f32],
) -> Vec<(f64, f64)> {
    let blocks: Vec<[[f64; B]; 2]> = (0..dims.1 / B)
        .into_par_iter()
        .map(|cb| {
            let m: &[f32; B] = mean[cb * B..][..B].try_into().expect("B means");
            with_avx2(
                #[inline(always)]
                || {
                    lane_sums::<B, 2>(dims, cb, |off, [sd, sdx]| {
                        let (xv, dv) = (at::<B>(x, off), at::<B>(dy, off));
                        let yv = mask_by.map(|y| at::<B>(y, off));
                        for l in 0..B {
                            let d = match yv {
                                Some(yv) => relu_mask(yv[l], dv[l]),
                                None => dv[l],
                            };
                            sd[l] += d;
                            sdx[l] += d * (xv[l] - m[l]);
                        }
                    })
                },
            )
        })
        .collect();
    blocks
        .iter()
        .flat_map(|[sd, sdx]| sd.iter().zip(sdx).map(|(&a, &b)| (a, b)))
        .zip(inv_std)
        .map(|((sd, sdx), &is)| (sd, sdx * is as f64))
        .collect()
}

/// One sample's `dx = k·g + p·x + q` per channel (planes of `s` values), `g` the gradient
/// masked by the ReLU output `yr` when given; writes every value of `o`.
#[inline(always)]
fn grad_sample(
    o: &mut [MaybeUninit<f32>],
    (xr, dr, yr): (&[f32], &[f32], Option<&[f32]>),
    coef: &[(f32, f32, f32)],
    s: usize,
) {
    for (ch, &(k, p, q)) in coef.iter().enumerate() {
        let r = ch * s..(ch + 1) * s;
        match yr {
            Some(yr) => {
                for (((o, &xv), &d), &yv) in o[r.clone()]
                    .iter_mut()
                    .zip(&xr[r.clone()])
                    .zip(&dr[r.clone()])
                    .zip(&yr[r])
                {
                    o.write(k * relu_mask(yv, d) + p * xv + q);
                }
            }
            None => {
                for ((o, &xv), &d) in o[r.clone()].iter_mut().zip(&xr[r.clone()]).zip(&dr[r]) {
                    o.write(k * d + p * xv + q);
                }
            }
        }
    }
}

/// [`grad_sample`] of one sample of blocked data (`[c/B, s, B]`).
#[inline(always)]
fn grad_sample_blocked<const B: usize>(
    o: &mut [MaybeUninit<f32>],
    (xr, dr, yr): (&[f32], &[f32], Option<&[f32]>),
    coef: &[(f32, f32, f32)],
    s: usize,
) {
    for (cb, coef) in coef.chunks_exact(B).enumerate() {
        let k: [f32; B] = std::array::from_fn(|l| coef[l].0);
        let p: [f32; B] = std::array::from_fn(|l| coef[l].1);
        let q: [f32; B] = std::array::from_fn(|l| coef[l].2);
        let r = cb * s * B..(cb + 1) * s * B;
        match yr {
            Some(yr) => {
                for (((o, xv), d), yv) in o[r.clone()]
                    .chunks_exact_mut(B)
                    .zip(xr[r.clone()].chunks_exact(B))
                    .zip(dr[r.clone()].chunks_exact(B))
                    .zip(yr[r].chunks_exact(B))
                {
                    for l in 0..B {
                        o[l].write(k[l] * relu_mask(yv[l], d[l]) + p[l] * xv[l] + q[l]);
                    }
                }
            }
            None => {
                for ((o, xv), d) in o[r.clone()]
                    .chunks_exact_mut(B)
                    .zip(xr[r.clone()].chunks_exact(B))
                    .zip(dr[r].chunks_exact(B))
                {
                    for l in 0..B {
                        o[l].write(k[l] * d[l] + p[l] * xv[l] + q[l]);
                    }
                }
            }
        }
    }
}

/// One sample's `y = x·a + b` per channel (planes of `s` values), then the epilogue; writes
/// every value of `yr`.
#[inline(always)]
fn normalise_sample(
    yr: &mut [MaybeUninit<f32>],
    xr: &[f32],
    rr: Option<&[f32]>,
    (a, b): (&[f32], &[f32]),
    s: usize,
    epilogue: Epilogue,
) {
    for (ch, (&a, &b)) in a.iter().zip(b).enumerate() {
        let r = ch * s..(ch + 1) * s;
        let (yp, xp) = (&mut yr[r.clone()], &xr[r.clone()]);
        match (epilogue, rr) {
            (Epilogue::AddRelu, Some(rr)) => {
                for ((o, &v), &q) in yp.iter_mut().zip(xp).zip(&rr[r]) {
                    o.write(relu(v * a + b + q));
                }
            }
            (Epilogue::Relu, _) => {
                for (o, &v) in yp.iter_mut().zip(xp) {
                    o.write(relu(v * a + b));
                }
            }
            _ => {
                for (o, &v) in yp.iter_mut().zip(xp) {
                    o.write(v * a + b);
                }
            }
        }
    }
}

impl BnTrain {
    /// The forward of every epilogue: statistics, then one pass writing the output.
    fn run(
        &self,
        x: &[f32],
        dims: (usize, usize, usize),
        gamma: &[f32],
        beta: &[f32],
        residual: Option<&[f32]>,
    ) -> candle_core::Result<Vec<f32>> {
        let (_, c, s) = dims;
        let (mean, var, count) = channel_stats(x, dims, self.block, self.sync.as_deref())?;
        let inv_std: Vec<f32> = var
            .iter()
            .map(|&v| (1.0 / (v as f64 + self.eps).sqrt()) as f32)
            .collect();
        // y = x·a + b with a = γ/σ, b = β − μ·a.
        let a: Vec<f32> = gamma.iter().zip(&inv_std).map(|(g, i)| g * i).collect();
        let b: Vec<f32> = (0..c).map(|ch| beta[ch] - mean[ch] * a[ch]).collect();
        let cs = c * s;
        check_block(self.block)?;
        let ab = (&a[..], &b[..]);
        // SAFETY: each chunk is one sample, the normalisation writes all its c·s values.
        let y = unsafe {
            filled_par(x.len(), cs, |i, yr| {
                let (xr, rr) = (&x[i * cs..][..cs], residual.map(|r| &r[i * cs..][..cs]));
                // Called (not through a pointer) inside the AVX2 copy, so they inline into it.
                with_avx2(
                    #[inline(always)]
                    || match self.block {
                        8 => normalise_sample_blocked::<8>(yr, xr, rr, ab, s, self.epilogue),
                        16 => normalise_sample_blocked::<16>(yr, xr, rr, ab, s, self.epilogue),
                        _ => normalise_sample(yr, xr, rr, ab, s, self.epilogue),
                    },
                )
            })
        };
        *self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("BatchNorm state poisoned".into()))? = Saved {
            mean,
            var,
            inv_std,
            count,
        };
        Ok(y)
    }

    fn saved(&self) -> candle_core::Result<(Vec<f32>, Vec<f32>, usize)> {
        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("BatchNorm state poisoned".into()))?;
        Ok((saved.mean.clone(), saved.inv_std.clone(), saved.count))
    }

    /// `(dx, [Σg·x̂, Σg])` of the normalisation for the gradient `g`; with `mask_by` (the
    /// op's ReLU output) `g = dy` where the output is positive and 0 elsewhere.
    fn backward(
        &self,
        x: &Tensor,
        gamma: &[f32],
        dy: &Tensor,
        mask_by: Option<&Tensor>,
    ) -> candle_core::Result<(Tensor, Vec<f32>, Vec<f32>)> {
        let (mean, inv_std, count) = self.saved()?;
        let dims = ncs(x.dims())?;
        let c = dims.1;
        if dy.dims() != x.dims() || mean.len() != c || gamma.len() != c {
            candle_core::bail!("BatchNorm backward: shapes {:?} {:?}", x.dims(), dy.dims())
        }
        let dy = dy.contiguous()?;
        let saved = SavedStats {
            mean: &mean,
            inv_std: &inv_std,
            count,
        };
        let sync = self.sync.as_deref();
        let layout = (dims, self.block);
        let (dx, dgamma, dbeta) = with_f32(x, |x| {
            with_f32(&dy, |dy| match mask_by {
                Some(y) => with_f32(y, |y| {
                    bn_backward(x, dy, Some(y), layout, &saved, gamma, sync)
                }),
                None => bn_backward(x, dy, None, layout, &saved, gamma, sync),
            })
        })?;
        Ok((Tensor::from_vec(dx, x.shape(), x.device())?, dgamma, dbeta))
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor.
fn with_f32<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => f(slice(cpu, layout, "fused BatchNorm")?),
        _ => candle_core::bail!("the fused BatchNorm runs on CPU tensors only"),
    }
}

/// The forward's statistics the backward needs.
struct SavedStats<'a> {
    mean: &'a [f32],
    inv_std: &'a [f32],
    /// Values per channel they were taken over (`m` below).
    count: usize,
}

/// Per-channel `(Σg, Σg·(x − μ)·σ⁻¹)` of plain data, `g` the gradient masked by `mask_by`.
fn plane_grad_sums(
    x: &[f32],
    dy: &[f32],
    mask_by: Option<&[f32]>,
    (n, c, s): (usize, usize, usize),
    mean: &[f32],
    inv_std: &[f32],
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            with_avx2(|| {
                let m = mean[ch];
                let (mut sd, mut sdx) = (0f64, 0f64);
                for i in 0..n {
                    let off = (i * c + ch) * s;
                    let (xp, dp) = (&x[off..][..s], &dy[off..][..s]);
                    let (a, b) = match mask_by {
                        Some(y) => sums_of3((xp, dp, &y[off..][..s]), |xv, d, yv| {
                            let d = relu_mask(yv, d);
                            (d, d * (xv - m))
                        }),
                        None => sums_of2((xp, dp), |xv, d| (d, d * (xv - m))),
                    };
                    sd += a;
                    sdx += b;
                }
                (sd, sdx * inv_std[ch] as f64)
            })
        })
        .collect()
}

/// BatchNorm backward in two passes: per-channel `Σg` and `Σg·(x − μ)`, then
/// `dx = γ·σ⁻¹·(g − Σg/m − x̂·Σg·x̂/m)`. Returns `(dx, dγ = Σg·x̂, dβ = Σg)`. With `sync` the
/// two sums of the `dx` formula are reduced over the processes (synchronised BatchNorm); `dγ`
/// and `dβ` stay this process's, as every parameter gradient before the gradient all-reduce.
fn bn_backward(
    x: &[f32],
    dy: &[f32],
    mask_by: Option<&[f32]>,
    ((n, c, s), block): ((usize, usize, usize), usize),
    saved: &SavedStats,
    gamma: &[f32],
    sync: Option<&dyn ChannelSum>,
) -> candle_core::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (mean, inv_std) = (saved.mean, saved.inv_std);
    let sums64: Vec<(f64, f64)> = if block > 0 {
        per_block!(
            block,
            blocked_grad_sums(x, dy, mask_by, (n, c, s), mean, inv_std)
        )
    } else {
        plane_grad_sums(x, dy, mask_by, (n, c, s), mean, inv_std)
    };
    let local: Vec<(f32, f32)> = sums64.iter().map(|&(a, b)| (a as f32, b as f32)).collect();
    let sums = match sync {
        Some(sync) => {
            let mut flat: Vec<f64> = sums64.iter().flat_map(|&(a, b)| [a, b]).collect();
            sync.sum(&mut flat)?;
            flat.chunks(2).map(|p| (p[0] as f32, p[1] as f32)).collect()
        }
        None => local.clone(),
    };
    let cnt = saved.count as f32;
    // dx = k·g + p·x + q per channel, folding every constant.
    let coef: Vec<(f32, f32, f32)> = (0..c)
        .map(|ch| {
            let is = inv_std[ch];
            let k = gamma[ch] * is;
            let mean_dy = sums[ch].0 / cnt;
            let mean_dyxh = sums[ch].1 / cnt;
            // x̂ = (x − μ)·σ⁻¹, so −k·x̂·mean_dyxh = p·x − p·μ.
            let p = -k * is * mean_dyxh;
            let q = -k * mean_dy - p * mean[ch];
            (k, p, q)
        })
        .collect();
    let cs = c * s;
    check_block(block)?;
    // SAFETY: each chunk is one sample, all of whose values the pass writes.
    let dx = unsafe {
        filled_par(x.len(), cs, |i, o| {
            let r = i * cs..(i + 1) * cs;
            let rows = (&x[r.clone()], &dy[r.clone()], mask_by.map(|y| &y[r]));
            with_avx2(
                #[inline(always)]
                || match block {
                    8 => grad_sample_blocked::<8>(o, rows, &coef, s),
                    16 => grad_sample_blocked::<16>(o, rows, &coef, s),
                    _ => grad_sample(o, rows, &coef, s),
                },
            )
        })
    };
    let dgamma = local.iter().map(|s| s.1).collect();
    let dbeta = local.iter().map(|s| s.0).collect();
    Ok((dx, dgamma, dbeta))
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        match self.epilogue {
            Epilogue::None => "byol-batch-norm-train",
            Epilogue::Relu => "byol-batch-norm-relu-train",
            Epilogue::AddRelu => "byol-batch-norm-add-relu-train",
        }
    }

    /// Inputs: `(x, γ, β)`, or `(x, [γ; β], r)` for [`Epilogue::AddRelu`].
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = ncs(l1.dims())?;
        let c = dims.1;
        let x = slice(s1, l1, "BatchNorm input")?;
        let y = if self.epilogue == Epilogue::AddRelu {
            let gb = check_vec(s2, l2, 2 * c, "weight and bias")?;
            if l3.dims() != l1.dims() {
                candle_core::bail!(
                    "BatchNorm: residual {:?} differs from the input {:?}",
                    l3.dims(),
                    l1.dims()
                )
            }
            let res = slice(s3, l3, "residual")?;
            self.run(x, dims, &gb[..c], &gb[c..], Some(res))?
        } else {
            let gamma = check_vec(s2, l2, c, "weight")?;
            let beta = check_vec(s3, l3, c, "bias")?;
            self.run(x, dims, &gamma, &beta, None)?
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p2: &Tensor,
        _p3: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = ncs(x.dims())?.1;
        let dev = x.device();
        match self.epilogue {
            Epilogue::None | Epilogue::Relu => {
                let gamma = p2.to_vec1::<f32>()?;
                let mask = (self.epilogue == Epilogue::Relu).then_some(res);
                let (dx, dgamma, dbeta) = self.backward(x, &gamma, dy, mask)?;
                Ok((
                    Some(dx),
                    Some(Tensor::from_vec(dgamma, c, dev)?),
                    Some(Tensor::from_vec(dbeta, c, dev)?),
                ))
            }
            Epilogue::AddRelu => {
                let gb = p2.flatten_all()?.to_vec1::<f32>()?;
                // The residual's gradient is the masked dy, which is also the gradient of the
                // normalisation: materialise it once and reuse it for both.
                let dy = dy.contiguous()?;
                let g = with_f32(&dy, |d| {
                    with_f32(res, |y| {
                        let mut g = vec![0f32; d.len()];
                        g.par_chunks_mut(1 << 14)
                            .zip(d.par_chunks(1 << 14).zip(y.par_chunks(1 << 14)))
                            .for_each(|(o, (d, y))| {
                                for ((o, &d), &y) in o.iter_mut().zip(d).zip(y) {
                                    *o = relu_mask(y, d);
                                }
                            });
                        Ok(g)
                    })
                })?;
                let g = Tensor::from_vec(g, x.shape(), dev)?;
                let (dx, dgamma, dbeta) = self.backward(x, &gb[..c], &g, None)?;
                let mut dgb = dgamma;
                dgb.extend(dbeta);
                Ok((Some(dx), Some(Tensor::from_vec(dgb, (2, c), dev)?), Some(g)))
            }
        }
    }
}

/// Shared entry of the fused train-mode ops: checks, runs, collects the batch statistics.
fn fused(
    x: &Tensor,
    p2: &Tensor,
    p3: &Tensor,
    eps: f64,
    epilogue: Epilogue,
) -> candle_core::Result<(Tensor, BnStats)> {
    let (n, c, s) = ncs(x.dims())?;
    let sync = channel_sum();
    // Synchronised statistics are checked over all processes (synced_channel_stats).
    if n * s < 2 && sync.is_none() {
        candle_core::bail!(
            "BatchNorm in training mode needs more than one value per channel, got {x:?}"
        )
    }
    let saved = Arc::new(Mutex::new(Saved::default()));
    let op = BnTrain {
        eps,
        epilogue,
        block: crate::blocked::nchw(x.dims()).map_or(0, |(_, block)| block),
        saved: saved.clone(),
        sync,
    };
    let y = x
        .contiguous()?
        .apply_op3(&p2.contiguous()?, &p3.contiguous()?, op)?;
    let guard = saved
        .lock()
        .map_err(|_| candle_core::Error::Msg("BatchNorm state poisoned".into()))?;
    let stats = BnStats {
        mean: Tensor::from_slice(&guard.mean, c, x.device())?,
        var: Tensor::from_slice(&guard.var, c, x.device())?,
        count: guard.count,
    };
    Ok((y, stats))
}

/// Train-mode BatchNorm of an f32 CPU tensor with scale `gamma` and shift `beta` (`[C]` each),
/// differentiable in all three; also returns the batch statistics (detached).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, BnStats)> {
    fused(x, gamma, beta, eps, Epilogue::None)
}

/// `relu(batch_norm_train(x))` in one op (NaN stays NaN, as in PyTorch).
pub fn batch_norm_relu_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, BnStats)> {
    fused(x, gamma, beta, eps, Epilogue::Relu)
}

/// `relu(batch_norm_train(x) + residual)` in one op: the end of a residual block.
pub fn batch_norm_add_relu_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    residual: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, BnStats)> {
    if residual.dims() != x.dims() {
        candle_core::bail!(
            "BatchNorm: residual {:?} differs from the input {:?}",
            residual.dims(),
            x.dims()
        )
    }
    // γ and β travel as one [2, C] tensor so the op keeps three inputs; `stack`'s backward
    // splits the gradient back.
    let gb = Tensor::stack(&[gamma, beta], 0)?;
    fused(x, &gb, residual, eps, Epilogue::AddRelu)
}
