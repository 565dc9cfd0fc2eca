//! Fused parameter updates: LARS's whole per-tensor step in two passes over the values (the two
//! norms, then decay + trust ratio + momentum + step) and the target's EMA in one, on both cores.
//! The candle-op versions (`optim/lars.rs`, `byol/ema.rs`) make ~10 and 3 passes, several of them
//! single-threaded; on ResNet-50's 35 M parameters that was a visible part of the step.
//! Element arithmetic is f32 in the same order as those versions; the norms accumulate as
//! `lanes.rs` does (f32 lanes per block, blocks in f64).

use candle_core::{Storage, Tensor};
use rayon::prelude::*;

use crate::lanes::sums_of2;
use crate::simd::with_avx2;
use crate::storage::filled_par;

/// Elements per parallel chunk: large enough to amortise rayon, small enough to split a layer.
const CHUNK: usize = 1 << 15;

/// One tensor's LARS hyper-parameters for this step.
#[derive(Debug, Clone, Copy)]
pub struct LarsStep {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// The trust coefficient η for tensors that take decay and the trust ratio; `None` for biases
    /// and BatchNorm parameters (plain momentum SGD).
    pub eta: Option<f64>,
}

/// Runs `f` on the contiguous f32 values of a CPU tensor.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("fused update: a CPU tensor is required")
    };
    let data = cpu.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(f(&data[a..b])),
        None => candle_core::bail!("fused update: the tensor must be contiguous"),
    }
}

fn same_shape(a: &Tensor, b: &Tensor, what: &str) -> candle_core::Result<()> {
    if a.dims() != b.dims() {
        candle_core::bail!("fused update: {what} {:?} vs {:?}", a.dims(), b.dims())
    }
    Ok(())
}

/// `(w', m')` of one LARS step from the weights `w`, the gradient `g` and the momentum `m` (none
/// on the first step, where `m'` is the scaled gradient). See `optim/lars.rs` for the formulas.
pub fn lars_update(
    w: &Tensor,
    g: &Tensor,
    m: Option<&Tensor>,
    step: LarsStep,
) -> candle_core::Result<(Tensor, Tensor)> {
    same_shape(w, g, "weight and gradient")?;
    if let Some(m) = m {
        same_shape(w, m, "weight and momentum")?;
    }
    let (w, g) = (w.contiguous()?, g.contiguous()?);
    let m = m.map(Tensor::contiguous).transpose()?;
    let n = w.elem_count();
    let (mut w_new, mut m_new) = (vec![0f32; n], vec![0f32; n]);
    with_values(&w, |wv| {
        with_values(&g, |gv| -> candle_core::Result<()> {
            let decay = if step.eta.is_some() {
                step.weight_decay as f32
            } else {
                0.0
            };
            let trust = match step.eta {
                Some(eta) => {
                    let (ww, gg) = wv
                        .par_chunks(CHUNK)
                        .zip(gv.par_chunks(CHUNK))
                        .map(|(wc, gc)| {
                            with_avx2(|| {
                                sums_of2((wc, gc), |w, g| {
                                    let gd = g + decay * w;
                                    (w * w, gd * gd)
                                })
                            })
                        })
                        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
                    let (w_norm, g_norm) = (ww.sqrt(), gg.sqrt());
                    if w_norm > 0.0 && g_norm > 0.0 {
                        (eta * w_norm / g_norm) as f32
                    } else {
                        1.0
                    }
                }
                None => 1.0,
            };
            let (mu, lr) = (step.momentum as f32, step.lr as f32);
            let mut write = |mv: Option<&[f32]>| {
                w_new
                    .par_chunks_mut(CHUNK)
                    .zip(m_new.par_chunks_mut(CHUNK))
                    .enumerate()
                    .for_each(|(i, (wo, mo))| {
                        with_avx2(|| {
                            let at = i * CHUNK;
                            for j in 0..wo.len() {
                                let (w, g) = (wv[at + j], gv[at + j]);
                                let u = (g + decay * w) * trust;
                                let m = match mv {
                                    Some(mv) => mv[at + j] * mu + u,
                                    None => u,
                                };
                                mo[j] = m;
                                wo[j] = w - m * lr;
                            }
                        })
                    });
            };
            match &m {
                Some(m) => with_values(m, |mv| write(Some(mv)))?,
                None => write(None),
            }
            Ok(())
        })?
    })??;
    let shape = w.shape().clone();
    Ok((
        Tensor::from_vec(w_new, shape.clone(), w.device())?,
        Tensor::from_vec(m_new, shape, w.device())?,
    ))
}

/// `τ·target + (1 − τ)·online`, elementwise.
pub fn ema(target: &Tensor, online: &Tensor, tau: f64) -> candle_core::Result<Tensor> {
    same_shape(target, online, "target and online")?;
    let (t, o) = (target.contiguous()?, online.contiguous()?);
    let (a, b) = (tau as f32, (1.0 - tau) as f32);
    let out = with_values(&t, |tv| {
        with_values(&o, |ov| {
            // SAFETY: chunk i of the output pairs with chunk i of both inputs (same length, the
            // shapes were checked), and every value of it is written.
            unsafe {
                filled_par(tv.len(), CHUNK, |i, dst| {
                    let (tc, oc) = (&tv[i * CHUNK..][..dst.len()], &ov[i * CHUNK..][..dst.len()]);
                    with_avx2(|| {
                        for ((d, &t), &o) in dst.iter_mut().zip(tc).zip(oc) {
                            d.write(t * a + o * b);
                        }
                    })
                })
            }
        })
    })??;
    Tensor::from_vec(out, t.shape().clone(), t.device())
}
