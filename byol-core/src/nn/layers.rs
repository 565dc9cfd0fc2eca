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
        })
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if crate::kernels::use_fast(xs) {
            crate::kernels::conv2d(xs, &self.weight, self.padding, self.stride)
        } else {
            xs.conv2d(&self.weight, self.padding, self.stride, 1, 1)
        }
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
