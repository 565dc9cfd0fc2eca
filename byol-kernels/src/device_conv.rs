//! The convolution of non-CPU devices: candle's forward, our backward.
//!
//! candle differentiates a convolution with `conv_transpose2d` (input gradient) and a `conv2d`
//! whose kernel is the transposed output gradient (weight gradient). On CUDA the first is a naive
//! kernel (one thread per input element, no tiling), and in a `cudnn` build the second, its kernel
//! not contiguous, falls back to candle's naive direct convolution with a filter the size of the
//! feature map: a BYOL step would spend nearly all its time there. [`device_conv2d`] keeps the
//! forward (cuDNN, or im2col + cuBLAS) and computes the gradients with contiguous operands only:
//! - input: a stride-1 forward convolution of the (stride-dilated) output gradient with the
//!   flipped, transposed kernel — cuDNN's or im2col's fast path;
//! - weight: one matrix product `g [Cout, N·Ho·Wo] × colsᵀ`, the columns gathered from the k²
//!   shifted (strided) views of the padded input — cuBLAS, the long N·Ho·Wo dimension inside.
//!
//! Only stock tensor ops, so the same code runs (and is tested against candle's own gradients) on
//! the CPU. The forward is a copy of candle's output through a `CustomOp3` whose `bwd` is the
//! above: candle lets a custom op, not a stock one, define its backward.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// Bias-free convolution of `x [N, Cin, H, W]` with `w [Cout, Cin, kh, kw]` (any float dtype, any
/// device), differentiable in both, its backward made of forward convolutions and one matrix
/// product (module docs). Padding must not exceed `kernel − 1` (every ResNet convolution).
pub fn device_conv2d(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let (_, _, kh, kw) = w.dims4()?;
    if !(x.track_op() || w.track_op()) || padding >= kh.min(kw) || stride == 0 {
        // Nothing to differentiate (the target network, evaluation), or outside what the
        // backward below handles (never the case in a ResNet): candle's own.
        return x.conv2d(w, padding, stride, 1, 1);
    }
    let y = x.detach().conv2d(&w.detach(), padding, stride, 1, 1)?;
    // The op node holds `y` until the backward pass, beside the copy it returns: a convolution's
    // output is kept twice (candle's convolution parameters are private to it, so the op cannot
    // run the convolution itself).
    x.apply_op3(w, &y, ConvGrad { padding, stride })
}

/// The identity on the forward output (third argument), the convolution's gradients backward.
struct ConvGrad {
    padding: usize,
    stride: usize,
}

/// A copy of the whole, contiguous storage of the forward output.
fn copy_output<S: BackendStorage>(s: &S, l: &Layout) -> candle_core::Result<(S, Shape)> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("device_conv2d: the forward output must be a fresh contiguous tensor")
    }
    Ok((s.try_clone(l)?, l.shape().clone()))
}

impl CustomOp3 for ConvGrad {
    fn name(&self) -> &'static str {
        "byol-device-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        copy_output(y, l)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        copy_output(y, l)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The images of the first layer need no gradient.
        let gx = if x.track_op() {
            Some(input_grad(grad, w, x.dims4()?, self.padding, self.stride)?)
        } else {
            None
        };
        let gw = if w.track_op() {
            Some(weight_grad(x, grad, w.dims4()?, self.padding, self.stride)?)
        } else {
            None
        };
        Ok((gx, gw, None))
    }
}

/// `t` reversed along `dim`.
fn flip(t: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let n = t.dim(dim)?;
    if n == 1 {
        return Ok(t.clone());
    }
    let idx = Tensor::from_vec((0..n as u32).rev().collect::<Vec<_>>(), n, t.device())?;
    t.index_select(&idx, dim)
}

/// `g [N, C, H, W]` with `s − 1` zero rows after every row and zero columns after every column,
/// cut to `rows × cols` (≤ `H·s × W·s`).
fn dilate(g: &Tensor, s: usize, rows: usize, cols: usize) -> candle_core::Result<Tensor> {
    if s == 1 {
        return Ok(g.clone());
    }
    let (n, c, h, w) = g.dims4()?;
    let zeros = g.zeros_like()?;
    let mut parts = vec![g.clone()];
    parts.extend(std::iter::repeat_n(zeros, s - 1));
    let spread_rows = Tensor::stack(&parts, 3)?.reshape((n, c, h * s, w))?;
    let zeros = spread_rows.zeros_like()?;
    let mut parts = vec![spread_rows];
    parts.extend(std::iter::repeat_n(zeros, s - 1));
    Tensor::stack(&parts, 4)?
        .reshape((n, c, h * s, w * s))?
        .narrow(2, 0, rows)?
        .narrow(3, 0, cols)
}

/// ∂L/∂x: the output gradient, dilated by the stride, convolved (stride 1) with the flipped
/// kernel whose input and output channels are swapped; `kernel − 1 − padding` zeros around it,
/// plus the rows and columns the forward's stride skipped at the end.
fn input_grad(
    grad: &Tensor,
    w: &Tensor,
    (_, _, h, wd): (usize, usize, usize, usize),
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let (_, _, kh, kw) = w.dims4()?;
    let (_, _, ho, wo) = grad.dims4()?;
    let flipped = flip(&flip(&w.transpose(0, 1)?.contiguous()?, 2)?, 3)?.contiguous()?;
    let (top, left) = (kh - 1 - padding, kw - 1 - padding);
    // Rows of the dilated gradient the stride-1 convolution needs below its top padding: the
    // output is rows + top + bottom − kh + 1 = h with bottom = top (+ the forward's remainder,
    // which the trailing zeros of the dilation provide, up to stride − 1 of them).
    let (rows, cols) = (h + kh - 1 - 2 * top, wd + kw - 1 - 2 * left);
    let (dense_rows, dense_cols) = ((ho - 1) * stride + 1, (wo - 1) * stride + 1);
    if !(dense_rows..=ho * stride).contains(&rows) || !(dense_cols..=wo * stride).contains(&cols) {
        candle_core::bail!("device_conv2d: input-gradient geometry {h}x{wd} from {ho}x{wo}")
    }
    let g = dilate(grad, stride, rows, cols)?.contiguous()?;
    if top == left {
        g.conv2d(&flipped, top, 1, 1, 1)
    } else {
        g.pad_with_zeros(2, top, top)?
            .pad_with_zeros(3, left, left)?
            .conv2d(&flipped, 0, 1, 1, 1)
    }
}

/// `[N, C, ho, wo]`: rows `i, i + s, …` and columns `j, j + s, …` of `xp`.
fn strided_view(
    xp: &Tensor,
    i: usize,
    j: usize,
    s: usize,
    ho: usize,
    wo: usize,
) -> candle_core::Result<Tensor> {
    let (n, c, _, _) = xp.dims4()?;
    let v = xp.narrow(2, i, ho * s)?.narrow(3, j, wo * s)?;
    if s == 1 {
        return Ok(v);
    }
    v.reshape((n, c, ho, s, wo, s))?
        .narrow(3, 0, 1)?
        .narrow(5, 0, 1)?
        .reshape((n, c, ho, wo))
}

/// ∂L/∂w = g [Cout, N·Ho·Wo] × cols [Cin·kh·kw, N·Ho·Wo]ᵀ, the columns being the kh·kw shifted
/// (strided) views of the zero-padded input, channel-major.
fn weight_grad(
    x: &Tensor,
    grad: &Tensor,
    (cout, cin, kh, kw): (usize, usize, usize, usize),
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let (n, _, h, wd) = x.dims4()?;
    let (_, _, ho, wo) = grad.dims4()?;
    let k = n * ho * wo;
    let g = grad.transpose(0, 1)?.contiguous()?.reshape((cout, k))?;
    // [Cin, N, H, W]: the channel leads, so the stacked views are already the column matrix.
    let xt = x.detach().transpose(0, 1)?.contiguous()?;
    let cols = if kh == 1 && kw == 1 && padding == 0 && stride == 1 {
        xt.reshape((cin, k))?
    } else {
        // Enough rows and columns after the padding for every view's ho·s (wo·s) span.
        let (bottom, right) = (
            (kh - 1 + ho * stride).saturating_sub(h + padding),
            (kw - 1 + wo * stride).saturating_sub(wd + padding),
        );
        let xp = xt
            .pad_with_zeros(2, padding, bottom.max(padding))?
            .pad_with_zeros(3, padding, right.max(padding))?;
        let mut views = Vec::with_capacity(kh * kw);
        for i in 0..kh {
            for j in 0..kw {
                views.push(strided_view(&xp, i, j, stride, ho, wo)?);
            }
        }
        // [Cin, kh·kw, N, ho, wo] → rows (ci, i, j), as w's [Cin, kh, kw] order.
        Tensor::stack(&views, 1)?.reshape((cin * kh * kw, k))?
    };
    g.matmul(&cols.t()?)?.reshape((cout, cin, kh, kw))
}
