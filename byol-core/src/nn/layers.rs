//! Convolution and linear layers, initialised as torchvision initialises ResNet and `nn.Linear`.

use candle_core::{Module, Tensor, Var};

use super::var_store::{Role, VarPath};
use crate::Result;

/// A bias-free 2-D convolution (ResNet convolutions are always followed by BatchNorm).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Var,
    stride: usize,
    padding: usize,
    /// TensorFlow `SAME` padding (see [`super::resnet::Padding`]) instead of `padding`.
    tf_same: bool,
}

impl Conv2d {
    /// Kaiming-normal initialisation with fan-out and ReLU gain, as torchvision's ResNet.
    pub fn new(
        vs: &mut VarPath,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let fan_out = (out_channels * kernel * kernel) as f64;
        let weight = vs.normal(
            "weight",
            &[out_channels, in_channels, kernel, kernel],
            (2.0 / fan_out).sqrt(),
            Role::Weight,
        )?;
        Ok(Self {
            weight,
            stride,
            padding,
            tf_same: false,
        })
    }

    /// Pads as TensorFlow's `SAME` when `on`: output `⌈n / stride⌉`, padding split with the
    /// extra row/column at the end.
    pub fn with_tf_same(mut self, on: bool) -> Self {
        self.tf_same = on;
        self
    }

    /// The weights `[out, in, k, k]`, stride, symmetric padding and whether TensorFlow `SAME`
    /// replaces it: what an inference engine needs to run this layer elsewhere.
    pub(crate) fn parts(&self) -> (&Tensor, usize, usize, bool) {
        (
            self.weight.as_tensor(),
            self.stride,
            self.padding,
            self.tf_same,
        )
    }

    fn conv(&self, xs: &Tensor, padding: usize) -> candle_core::Result<Tensor> {
        if byol_kernels::use_fast(xs) {
            byol_kernels::conv2d(xs, &self.weight, padding, self.stride)
        } else if byol_kernels::use_device_conv(xs) {
            byol_kernels::device_conv2d(xs, &self.weight, padding, self.stride)
        } else {
            xs.conv2d(&self.weight, padding, self.stride, 1, 1)
        }
    }
}

/// TensorFlow `SAME` padding (before, after) of one spatial dimension.
pub fn tf_same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out.max(1) - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if !self.tf_same {
            return self.conv(xs, self.padding);
        }
        let (_, _, kh, kw) = self.weight.dims4()?;
        let (_, _, h, w) = xs.dims4()?;
        let (top, bottom) = tf_same_padding(h, kh, self.stride);
        let (left, right) = tf_same_padding(w, kw, self.stride);
        if top == bottom && left == right && top == left {
            return self.conv(xs, top);
        }
        let padded = xs
            .pad_with_zeros(2, top, bottom)?
            .pad_with_zeros(3, left, right)?;
        self.conv(&padded, 0)
    }
}

/// `y = x Wᵀ + b` on `[batch, features]` inputs.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Var,
    bias: Option<Var>,
}

impl Linear {
    /// PyTorch's default: weight and bias uniform in ±1/√fan_in.
    pub fn new(vs: &mut VarPath, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let weight = vs.uniform("weight", &[out_dim, in_dim], bound, Role::Weight)?;
        let bias = if bias {
            Some(vs.uniform("bias", &[out_dim], bound, Role::Bias)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let ys = xs.matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => ys.broadcast_add(b),
            None => Ok(ys),
        }
    }
}
