//! 2-D convolution (bias-free, dilation 1, groups 1) forward, input-grad and weight-grad as
//! im2col/col2im + `gemm`, f32, contiguous NCHW; the op itself also takes activations in the
//! channel-blocked layout (`blocked.rs`), which oneDNN reads as they are.
//!
//! Work is split over samples (or groups of samples) with rayon and each gemm then runs on one
//! thread; when there are too few groups to feed every thread (tiny maps deep in the network),
//! groups run one after the other and the gemm itself is multithreaded. Small maps are batched
//! into one gemm per group of samples because a gemm with 4–16 columns runs far below peak.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::blocked::{dims_in, nchw, reblock, unblock};
use crate::geometry::Conv2dGeometry;
use crate::onednn::{self, Pass};
use crate::scratch::with_scratch;
use crate::storage::slice;
use crate::Backend;

/// Columns per gemm below which samples are grouped into one gemm.
const TARGET_COLS: usize = 256;

/// (samples per gemm, whether to parallelise over groups rather than inside the gemm).
fn plan(g: &Conv2dGeometry) -> (usize, bool) {
    let group = TARGET_COLS.div_ceil(g.hw_out().max(1)).clamp(1, g.n.max(1));
    let groups = g.n.div_ceil(group);
    (group, groups >= 2 * rayon::current_num_threads())
}

fn parallelism(par_groups: bool) -> Parallelism {
    if par_groups {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    }
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]`; `dst` rows are `ldd` apart, lhs/rhs strides are
/// (row, column). Bounds are checked here so the unsafe gemm call only sees valid extents.
#[allow(clippy::too_many_arguments)]
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    accumulate: bool,
    lhs: &[f32],
    (lrs, lcs): (usize, usize),
    rhs: &[f32],
    (rrs, rcs): (usize, usize),
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(last(ldd, 1, m, n) < dst.len(), "gemm dst out of bounds");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * ldd..r * ldd + n].fill(0.0);
            }
        }
        return;
    }
    assert!(last(lrs, lcs, m, k) < lhs.len(), "gemm lhs out of bounds");
    assert!(last(rrs, rcs, k, n) < rhs.len(), "gemm rhs out of bounds");
    // SAFETY: every index the gemm touches was bounds-checked above; dst does not alias lhs/rhs
    // (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldd as isize,
            accumulate,
            lhs.as_ptr(),
            lcs as isize,
            lrs as isize,
            rhs.as_ptr(),
            rcs as isize,
            rrs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Output positions `o < out` whose input index `o·s + k − p` lies in `0..size`.
fn valid(out: usize, size: usize, s: usize, k: usize, p: usize) -> (usize, usize) {
    let lo = if p > k { (p - k).div_ceil(s) } else { 0 };
    let hi = if size + p > k {
        ((size - 1 + p - k) / s + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// For a stride-1 "same" convolution (output map = input map), the im2col row of kernel tap
/// `(ki, kj)` is the input plane shifted by `(ki − p)·w + (kj − p)` in flat order, except the
/// `|kj − p|` columns of each row that wrap around to the neighbouring row (and the rows off
/// the top or bottom). This gives (flat valid range `[a, b)` of the row, flat shift, column
/// offset), so im2col/col2im move one long block per tap instead of one short copy per row.
fn same_tap(g: &Conv2dGeometry, ki: usize, kj: usize) -> Option<(usize, usize, isize, isize)> {
    let (h, w, p) = (g.h as isize, g.w as isize, g.pad as isize);
    let (dy, dx) = (ki as isize - p, kj as isize - p);
    if dx.abs() >= w || dy.abs() >= h {
        return None;
    }
    let (ylo, yhi) = ((-dy).max(0), (h - dy).min(h));
    // Flat destination range whose source index `i + dy·w + dx` lies inside the plane; what it
    // drops at the ends are wrap-around columns, which are zero anyway.
    let shift = dy * w + dx;
    let a = (ylo * w).max(-shift);
    let b = (yhi * w).min(h * w - shift);
    Some((a as usize, b.max(a) as usize, shift, dx))
}

/// Whether [`same_tap`] applies: stride 1 and an output map the size of the input.
fn same_conv(g: &Conv2dGeometry) -> bool {
    g.stride == 1 && g.ho == g.h && g.wo == g.w && g.kh == 2 * g.pad + 1 && g.kw == g.kh
}

/// The columns of each output row that wrap around for column offset `dx`.
fn wrap_cols(w: usize, dx: isize) -> std::ops::Range<usize> {
    if dx < 0 {
        0..(-dx) as usize
    } else {
        w - dx as usize..w
    }
}

/// [`im2col`] of a stride-1 same-size convolution, one block copy per kernel tap.
fn im2col_same(x: &[f32], g: &Conv2dGeometry, col: &mut [f32], ld: usize, off: usize) {
    let (h, w, hw) = (g.h, g.w, g.h * g.w);
    for ci in 0..g.cin {
        let plane = &x[ci * hw..][..hw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (ci * g.kh + ki) * g.kw + kj;
                let dst = &mut col[row * ld + off..][..hw];
                let Some((a, b, shift, dx)) = same_tap(g, ki, kj) else {
                    dst.fill(0.0);
                    continue;
                };
                dst[..a].fill(0.0);
                dst[b..].fill(0.0);
                let src0 = (a as isize + shift) as usize;
                dst[a..b].copy_from_slice(&plane[src0..src0 + (b - a)]);
                if dx != 0 {
                    let cols = wrap_cols(w, dx);
                    for oy in 0..h {
                        dst[oy * w..][cols.clone()].fill(0.0);
                    }
                }
            }
        }
    }
}

/// [`col2im`] of a stride-1 same-size convolution: zeroes the wrap-around columns of `col`, then
/// adds one shifted block per kernel tap.
fn col2im_same(col: &mut [f32], ld: usize, off: usize, g: &Conv2dGeometry, dx_out: &mut [f32]) {
    let (h, w, hw) = (g.h, g.w, g.h * g.w);
    for ci in 0..g.cin {
        let plane = &mut dx_out[ci * hw..][..hw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let Some((a, b, shift, dx)) = same_tap(g, ki, kj) else {
                    continue;
                };
                let row = (ci * g.kh + ki) * g.kw + kj;
                let src = &mut col[row * ld + off..][..hw];
                if dx != 0 {
                    let cols = wrap_cols(w, dx);
                    for oy in 0..h {
                        src[oy * w..][cols.clone()].fill(0.0);
                    }
                }
                let dst0 = (a as isize + shift) as usize;
                for (d, v) in plane[dst0..dst0 + (b - a)].iter_mut().zip(&src[a..b]) {
                    *d += v;
                }
            }
        }
    }
}

/// Writes sample `x` (`[cin, h, w]`) as im2col rows into `col` (row stride `ld`), starting at
/// column `off`. Every element of the sample's block is written (padding as zeros).
fn im2col(x: &[f32], g: &Conv2dGeometry, col: &mut [f32], ld: usize, off: usize) {
    if same_conv(g) {
        return im2col_same(x, g, col, ld, off);
    }
    let (wo, s, p) = (g.wo, g.stride, g.pad);
    let hw = g.hw_out();
    for ci in 0..g.cin {
        for ki in 0..g.kh {
            let (ylo, yhi) = valid(g.ho, g.h, s, ki, p);
            for kj in 0..g.kw {
                let (xlo, xhi) = valid(wo, g.w, s, kj, p);
                let row = (ci * g.kh + ki) * g.kw + kj;
                let dst = &mut col[row * ld + off..][..hw];
                dst[..ylo * wo].fill(0.0);
                dst[yhi * wo..].fill(0.0);
                for oy in ylo..yhi {
                    let d = &mut dst[oy * wo..][..wo];
                    d[..xlo].fill(0.0);
                    d[xhi..].fill(0.0);
                    if xlo == xhi {
                        continue;
                    }
                    let iy = oy * s + ki - p;
                    let xrow = &x[(ci * g.h + iy) * g.w..][..g.w];
                    let ix0 = xlo * s + kj - p;
                    if s == 1 {
                        d[xlo..xhi].copy_from_slice(&xrow[ix0..ix0 + (xhi - xlo)]);
                    } else {
                        for (o, v) in d[xlo..xhi].iter_mut().enumerate() {
                            *v = xrow[ix0 + o * s];
                        }
                    }
                }
            }
        }
    }
}

/// Adds the im2col-shaped gradient `col` (row stride `ld`, from column `off`) into sample `dx`.
/// May overwrite the entries of `col` that fall on padding.
fn col2im(col: &mut [f32], ld: usize, off: usize, g: &Conv2dGeometry, dx: &mut [f32]) {
    if same_conv(g) {
        return col2im_same(col, ld, off, g, dx);
    }
    let (wo, s, p) = (g.wo, g.stride, g.pad);
    let hw = g.hw_out();
    for ci in 0..g.cin {
        for ki in 0..g.kh {
            let (ylo, yhi) = valid(g.ho, g.h, s, ki, p);
            for kj in 0..g.kw {
                let (xlo, xhi) = valid(wo, g.w, s, kj, p);
                if xlo == xhi {
                    continue;
                }
                let row = (ci * g.kh + ki) * g.kw + kj;
                let src = &col[row * ld + off..][..hw];
                let ix0 = xlo * s + kj - p;
                for oy in ylo..yhi {
                    let iy = oy * s + ki - p;
                    let xrow = &mut dx[(ci * g.h + iy) * g.w..][..g.w];
                    let srow = &src[oy * wo + xlo..oy * wo + xhi];
                    if s == 1 {
                        for (d, v) in xrow[ix0..ix0 + srow.len()].iter_mut().zip(srow) {
                            *d += v;
                        }
                    } else {
                        for (o, v) in srow.iter().enumerate() {
                            xrow[ix0 + o * s] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Copies `gn` samples' `[rows, hw]` maps from `src` into one `[rows, gn·hw]` matrix.
fn gather(src: &[f32], rows: usize, hw: usize, gn: usize, dst: &mut [f32]) {
    let ld = gn * hw;
    for j in 0..gn {
        for r in 0..rows {
            dst[r * ld + j * hw..][..hw].copy_from_slice(&src[(j * rows + r) * hw..][..hw]);
        }
    }
}

/// The inverse of [`gather`].
fn scatter(src: &[f32], rows: usize, hw: usize, gn: usize, dst: &mut [f32]) {
    let ld = gn * hw;
    for j in 0..gn {
        for r in 0..rows {
            dst[(j * rows + r) * hw..][..hw].copy_from_slice(&src[r * ld + j * hw..][..hw]);
        }
    }
}

/// `y = conv(x, w)`: `[n, cout, ho, wo]`.
pub(crate) fn forward(x: &[f32], wt: &[f32], g: &Conv2dGeometry) -> Vec<f32> {
    let (k, hw, ylen, xlen) = (g.k(), g.hw_out(), g.y_len(), g.x_len());
    let mut y = vec![0f32; g.n * ylen];
    let (group, par) = plan(g);
    let body = |(gi, ychunk): (usize, &mut [f32]), par: Parallelism| {
        let n0 = gi * group;
        let gn = ychunk.len() / ylen;
        let cols = gn * hw;
        let xs = &x[n0 * xlen..(n0 + gn) * xlen];
        let lhs = (wt, (k, 1));
        if g.pointwise() && gn == 1 {
            matmul(
                (g.cout, hw, k),
                ychunk,
                hw,
                false,
                lhs.0,
                lhs.1,
                xs,
                (hw, 1),
                par,
            );
            return;
        }
        let tmp_len = if gn > 1 { g.cout * cols } else { 0 };
        with_scratch(k * cols + tmp_len, |buf| {
            let (col, tmp) = buf.split_at_mut(k * cols);
            if g.pointwise() {
                gather(xs, k, hw, gn, col);
            } else {
                for j in 0..gn {
                    im2col(&xs[j * xlen..][..xlen], g, col, cols, j * hw);
                }
            }
            if gn == 1 {
                matmul(
                    (g.cout, cols, k),
                    ychunk,
                    cols,
                    false,
                    lhs.0,
                    lhs.1,
                    col,
                    (cols, 1),
                    par,
                );
            } else {
                matmul(
                    (g.cout, cols, k),
                    tmp,
                    cols,
                    false,
                    lhs.0,
                    lhs.1,
                    col,
                    (cols, 1),
                    par,
                );
                scatter(tmp, g.cout, hw, gn, ychunk);
            }
        })
    };
    if par {
        y.par_chunks_mut(group * ylen)
            .enumerate()
            .for_each(|c| body(c, Parallelism::None));
    } else {
        y.chunks_mut(group * ylen)
            .enumerate()
            .for_each(|c| body(c, parallelism(false)));
    }
    y
}

/// `dx = convᵀ(dy, w)`: `[n, cin, h, w]`, as `Wᵀ·dy` per group then col2im.
pub(crate) fn input_grad(dy: &[f32], wt: &[f32], g: &Conv2dGeometry) -> Vec<f32> {
    let (k, hw, ylen, xlen) = (g.k(), g.hw_out(), g.y_len(), g.x_len());
    let mut dx = vec![0f32; g.n * xlen];
    let (group, par) = plan(g);
    // Wᵀ as a [k, cout] matrix: element (i, c) is w[c·k + i].
    let wt_t = (1, k);
    let body = |(gi, dxchunk): (usize, &mut [f32]), par: Parallelism| {
        let n0 = gi * group;
        let gn = dxchunk.len() / xlen;
        let cols = gn * hw;
        let dys = &dy[n0 * ylen..(n0 + gn) * ylen];
        if g.pointwise() && gn == 1 {
            matmul(
                (k, hw, g.cout),
                dxchunk,
                hw,
                false,
                wt,
                wt_t,
                dys,
                (hw, 1),
                par,
            );
            return;
        }
        let dyg_len = if gn > 1 { g.cout * cols } else { 0 };
        with_scratch(k * cols + dyg_len, |buf| {
            let (dcol, dyg) = buf.split_at_mut(k * cols);
            let dyg: &[f32] = if gn > 1 {
                gather(dys, g.cout, hw, gn, dyg);
                dyg
            } else {
                dys
            };
            matmul(
                (k, cols, g.cout),
                dcol,
                cols,
                false,
                wt,
                wt_t,
                dyg,
                (cols, 1),
                par,
            );
            if g.pointwise() {
                scatter(dcol, k, hw, gn, dxchunk);
            } else {
                for j in 0..gn {
                    col2im(dcol, cols, j * hw, g, &mut dxchunk[j * xlen..][..xlen]);
                }
            }
        })
    };
    if par {
        dx.par_chunks_mut(group * xlen)
            .enumerate()
            .for_each(|c| body(c, Parallelism::None));
    } else {
        dx.chunks_mut(group * xlen)
            .enumerate()
            .for_each(|c| body(c, parallelism(false)));
    }
    dx
}

/// `dw = Σ_groups dy_g · col_gᵀ`: `[cout, cin, kh, kw]`, one accumulator per thread.
pub(crate) fn weight_grad(x: &[f32], dy: &[f32], g: &Conv2dGeometry) -> Vec<f32> {
    let (k, hw, ylen, xlen) = (g.k(), g.hw_out(), g.y_len(), g.x_len());
    let (group, par) = plan(g);
    let groups = g.n.div_ceil(group);
    let accumulate_range = |range: std::ops::Range<usize>, par: Parallelism| {
        let mut dw = vec![0f32; g.cout * k];
        for (step, gi) in range.enumerate() {
            let n0 = gi * group;
            let gn = group.min(g.n - n0);
            let cols = gn * hw;
            let xs = &x[n0 * xlen..(n0 + gn) * xlen];
            let dys = &dy[n0 * ylen..(n0 + gn) * ylen];
            let acc = step > 0;
            if g.pointwise() && gn == 1 {
                // colᵀ is xᵀ: element (l, i) = x[i·hw + l].
                matmul(
                    (g.cout, k, hw),
                    &mut dw,
                    k,
                    acc,
                    dys,
                    (hw, 1),
                    xs,
                    (1, hw),
                    par,
                );
                continue;
            }
            let dyg_len = if gn > 1 { g.cout * cols } else { 0 };
            with_scratch(k * cols + dyg_len, |buf| {
                let (col, dyg) = buf.split_at_mut(k * cols);
                if g.pointwise() {
                    gather(xs, k, hw, gn, col);
                } else {
                    for j in 0..gn {
                        im2col(&xs[j * xlen..][..xlen], g, col, cols, j * hw);
                    }
                }
                let dyg: &[f32] = if gn > 1 {
                    gather(dys, g.cout, hw, gn, dyg);
                    dyg
                } else {
                    dys
                };
                matmul(
                    (g.cout, k, cols),
                    &mut dw,
                    k,
                    acc,
                    dyg,
                    (cols, 1),
                    col,
                    (1, cols),
                    par,
                );
            });
        }
        dw
    };
    if !par {
        return accumulate_range(0..groups, parallelism(false));
    }
    let threads = rayon::current_num_threads().min(groups);
    let parts: Vec<Vec<f32>> = (0..threads)
        .into_par_iter()
        .map(|t| {
            accumulate_range(
                t * groups / threads..(t + 1) * groups / threads,
                Parallelism::None,
            )
        })
        .collect();
    let mut parts = parts.into_iter();
    let mut dw = parts.next().unwrap_or_else(|| vec![0f32; g.cout * k]);
    for p in parts {
        for (a, b) in dw.iter_mut().zip(&p) {
            *a += b;
        }
    }
    dw
}

fn storage(v: Vec<f32>, shape: impl Into<Shape>) -> (CpuStorage, Shape) {
    (CpuStorage::F32(v), shape.into())
}

/// Which implementation runs the three convolution passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConvEngine {
    /// im2col/col2im + `gemm` (this file).
    Rust,
    /// oneDNN's JIT kernels (`onednn.rs`), Winograd where it suits if `winograd`, the inputs
    /// rounded to bf16 if `bf16`.
    OneDnn { winograd: bool, bf16: bool },
}

impl ConvEngine {
    /// The engine of the backend in effect on this thread.
    fn current() -> Self {
        match crate::backend() {
            Backend::OneDnn => Self::OneDnn {
                winograd: true,
                bf16: false,
            },
            Backend::OneDnnDirect => Self::OneDnn {
                winograd: false,
                bf16: false,
            },
            Backend::OneDnnBf16 => Self::OneDnn {
                winograd: false,
                bf16: true,
            },
            Backend::Fast | Backend::Stock => Self::Rust,
        }
    }

    /// Runs `pass` on inputs `(a, b)` (see [`Pass`]), activations plain (`block` 0) or blocked. A
    /// oneDNN failure (a shape its kernels refuse, say) is reported once and that call runs on
    /// the Rust kernels.
    fn run(self, pass: Pass, a: &[f32], b: &[f32], g: &Conv2dGeometry, block: usize) -> Vec<f32> {
        // Narrow layers stay on the Rust kernels: oneDNN pads channels to blocks of 16 and adds
        // two reorders per call (the 8-channel quick-start model trained 35 % slower on it).
        let wide = g.cin >= 16 && g.cout >= 16;
        if let (Self::OneDnn { winograd, bf16 }, true) = (self, wide) {
            // Where bf16 weight gradients are slower than f32 ones, they stay f32 (Winograd
            // where it suits, as the f32 backend).
            let (winograd, bf16) = match pass {
                Pass::WeightGrad if bf16 && !onednn::bf16_weight_grads_pay() => (true, false),
                _ => (winograd, bf16),
            };
            match onednn::run(pass, g, (winograd, bf16), block, a, b) {
                Ok(out) => return out,
                Err(e) => {
                    static WARNED: std::sync::Once = std::sync::Once::new();
                    WARNED.call_once(|| tracing::warn!("{e}; using the Rust kernels instead"));
                }
            }
        }
        // The Rust kernels read and write NCHW.
        let x_dims = [g.n, g.cin, g.h, g.w];
        let y_dims = [g.n, g.cout, g.ho, g.wo];
        fn plain(v: &[f32], block: usize, dims: [usize; 4]) -> std::borrow::Cow<'_, [f32]> {
            match block {
                0 => std::borrow::Cow::Borrowed(v),
                b => std::borrow::Cow::Owned(unblock(v, dims, b)),
            }
        }
        let laid_out = |v: Vec<f32>, dims| match block {
            0 => v,
            b => reblock(&v, dims, b),
        };
        match pass {
            Pass::Forward => laid_out(forward(&plain(a, block, x_dims), b, g), y_dims),
            Pass::InputGrad => laid_out(input_grad(&plain(a, block, y_dims), b, g), x_dims),
            Pass::WeightGrad => weight_grad(&plain(a, block, x_dims), &plain(b, block, y_dims), g),
        }
    }
}

/// The geometry of a convolution of `x` (plain or blocked) by `w`, and the block of its
/// activations (0: plain): the output in the input's layout (its channels whole blocks).
fn geometry(
    x: &[usize],
    w: &[usize],
    stride: usize,
    pad: usize,
) -> candle_core::Result<(Conv2dGeometry, usize)> {
    let (x4, block) = nchw(x)?;
    let g = Conv2dGeometry::new(&x4, w, stride, pad)?;
    if block > 0 && !g.cout.is_multiple_of(block) {
        candle_core::bail!(
            "conv2d: a blocked input (blocks of {block}) needs output channels in whole blocks, \
             got {}",
            g.cout
        )
    }
    Ok((g, block))
}

/// The forward op; its backward uses [`ConvPass`] for both gradients.
struct Conv2dOp {
    stride: usize,
    pad: usize,
    engine: ConvEngine,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "byol-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, block) = geometry(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let y = self.engine.run(
            Pass::Forward,
            slice(s1, l1, "conv2d")?,
            slice(s2, l2, "conv2d")?,
            &g,
            block,
        );
        Ok(storage(y, dims_in(block, [g.n, g.cout, g.ho, g.wo])))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, block) = geometry(x.dims(), w.dims(), self.stride, self.pad)?;
        let dy = dy.contiguous()?;
        let engine = self.engine;
        // The images entering the first layer need no gradient: skip that input grad.
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(
                w,
                &ConvPass {
                    g,
                    block,
                    pass: Pass::InputGrad,
                    engine,
                },
            )?)
        } else {
            None
        };
        let dw = x.apply_op2_no_bwd(
            &dy,
            &ConvPass {
                g,
                block,
                pass: Pass::WeightGrad,
                engine,
            },
        )?;
        Ok((dx, Some(dw)))
    }
}

/// A gradient pass: `(dy, w) → dx` or `(x, dy) → dw`.
struct ConvPass {
    g: Conv2dGeometry,
    /// The activations' channel block (0: plain).
    block: usize,
    pass: Pass,
    engine: ConvEngine,
}

impl CustomOp2 for ConvPass {
    fn name(&self) -> &'static str {
        match self.pass {
            Pass::InputGrad => "byol-conv2d-input-grad",
            _ => "byol-conv2d-weight-grad",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let dy_dims = if self.pass == Pass::InputGrad {
            l1.dims()
        } else {
            l2.dims()
        };
        if dy_dims != dims_in(self.block, [g.n, g.cout, g.ho, g.wo]) {
            candle_core::bail!("{}: gradient shape {dy_dims:?}", self.name())
        }
        let out = self.engine.run(
            self.pass,
            slice(s1, l1, "conv2d")?,
            slice(s2, l2, "conv2d")?,
            g,
            self.block,
        );
        Ok(match self.pass {
            Pass::InputGrad => storage(out, dims_in(self.block, [g.n, g.cin, g.h, g.w])),
            _ => storage(out, (g.cout, g.cin, g.kh, g.kw)),
        })
    }
}

/// Bias-free convolution of contiguous-able f32 CPU tensors `x [N, Cin, H, W]` and
/// `w [Cout, Cin, kh, kw]`, differentiable in both; oneDNN or the Rust kernels run it
/// according to the [`Backend`] in effect. A blocked `x` (`[N, Cin/B, H, W, B]`, see
/// [`crate::to_blocked`]) gives a blocked output.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    geometry(x.dims(), w.dims(), stride, padding)?;
    x.contiguous()?.apply_op2(
        &w.contiguous()?,
        Conv2dOp {
            stride,
            pad: padding,
            engine: ConvEngine::current(),
        },
    )
}
