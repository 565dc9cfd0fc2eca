//! The shapes of one 2-D convolution (bias-free, dilation 1, groups 1), shared by the Rust
//! kernels (`conv.rs`) and the oneDNN shim (`onednn.rs`).

/// Shapes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Conv2dGeometry {
    /// Checks the input `[n, cin, h, w]` against the weight `[cout, cin, kh, kw]`.
    pub fn new(x: &[usize], wt: &[usize], stride: usize, pad: usize) -> candle_core::Result<Self> {
        let (&[n, cin, h, w], &[cout, cin_w, kh, kw]) = (x, wt) else {
            candle_core::bail!("conv2d expects 4-D input and weight, got {x:?} and {wt:?}")
        };
        if cin != cin_w {
            candle_core::bail!("conv2d: input has {cin} channels, the weight expects {cin_w}")
        }
        if stride == 0 {
            candle_core::bail!("conv2d: stride must be ≥ 1")
        }
        if h + 2 * pad < kh || w + 2 * pad < kw {
            candle_core::bail!("conv2d: kernel {kh}×{kw} larger than the padded input {h}×{w}")
        }
        Ok(Self {
            n,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            stride,
            pad,
            ho: (h + 2 * pad - kh) / stride + 1,
            wo: (w + 2 * pad - kw) / stride + 1,
        })
    }

    pub(crate) fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    pub(crate) fn hw_out(&self) -> usize {
        self.ho * self.wo
    }
    pub(crate) fn x_len(&self) -> usize {
        self.cin * self.h * self.w
    }
    pub(crate) fn y_len(&self) -> usize {
        self.cout * self.hw_out()
    }
    /// A 1×1 stride-1 unpadded convolution: the input already is its im2col matrix.
    pub(crate) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
}
