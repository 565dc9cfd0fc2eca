//! The BYOL projector and predictor: Linear(with bias) → BatchNorm1d → ReLU → Linear(no bias).
//!
//! Tensor names follow a PyTorch `nn.Sequential` of those four modules (`0.weight`, `0.bias`,
//! `1.*` for the BatchNorm, `3.weight`), so the heads load into such a module directly.

use candle_core::{Module, ModuleT, Tensor};
use serde::{Deserialize, Serialize};

use super::layers::Linear;
use super::norm::BatchNorm;
use super::var_store::VarPath;
use crate::Result;

/// Sizes of a projector or predictor (paper: 4096 hidden, 256 out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    pub hidden_dim: usize,
    pub output_dim: usize,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            hidden_dim: 4096,
            output_dim: 256,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    bn: BatchNorm,
    fc2: Linear,
}

impl Mlp {
    pub fn new(vs: &mut VarPath, input_dim: usize, config: &MlpConfig) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(&mut vs.pp(0), input_dim, config.hidden_dim, true)?,
            bn: BatchNorm::new(&mut vs.pp(1), config.hidden_dim, false)?,
            fc2: Linear::new(&mut vs.pp(3), config.hidden_dim, config.output_dim, false)?,
        })
    }
}

impl ModuleT for Mlp {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let hidden = self.bn.forward_relu(&self.fc1.forward(xs)?, train)?;
        self.fc2.forward(&hidden)
    }
}
