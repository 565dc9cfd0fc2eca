//! SGD with (Nesterov) momentum and decoupled-from-nothing L2 weight decay, as PyTorch's
//! `torch.optim.SGD`: `g = grad + wd·w; b = μ·b + g; step = g + μ·b (Nesterov) or b; w -= lr·step`.
//! The linear-evaluation head and fine-tuning use it (BYOL's evaluation protocols). As in
//! [`crate::optim::Lars`], each tensor's [`Role`](crate::nn::Role) decides the decay:
//! convolution and linear weights only, never biases or BatchNorm parameters.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::nn::VarStore;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    pub momentum: f64,
    pub nesterov: bool,
    /// L2 penalty added to the gradient of the tensors whose
    /// [`Role::is_decayed`](crate::nn::Role::is_decayed).
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    /// The paper's linear-evaluation optimiser: Nesterov momentum 0.9, no weight decay.
    fn default() -> Self {
        Self {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sgd {
    config: SgdConfig,
    momentum: HashMap<String, Tensor>,
}

impl Sgd {
    pub fn new(config: SgdConfig) -> Result<Self> {
        if !(0.0..1.0).contains(&config.momentum) {
            return Err(Error::config(
                "momentum",
                format!("{} is not in [0, 1)", config.momentum),
            ));
        }
        if !(config.weight_decay.is_finite() && config.weight_decay >= 0.0) {
            return Err(Error::config(
                "weight_decay",
                format!("{} must be a finite number ≥ 0", config.weight_decay),
            ));
        }
        if config.nesterov && config.momentum == 0.0 {
            return Err(Error::config("nesterov", "Nesterov needs a momentum > 0"));
        }
        Ok(Self {
            config,
            momentum: HashMap::new(),
        })
    }

    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// The momentum buffers by tensor name (for checkpoints of fine-tuning runs).
    pub fn momentum_buffers(&self) -> &HashMap<String, Tensor> {
        &self.momentum
    }

    /// Restores momentum buffers, checking each against the tensor of `store` it belongs to.
    pub fn set_momentum_buffers(
        &mut self,
        store: &VarStore,
        buffers: HashMap<String, Tensor>,
    ) -> Result<()> {
        super::check_momentum_buffers(store, &buffers)?;
        self.momentum = buffers;
        Ok(())
    }

    /// One step over the trainable tensors of `store` that have a gradient; the weight decay
    /// goes to the [`Role::Weight`](crate::nn::Role::Weight) tensors only.
    pub fn step(&mut self, store: &VarStore, grads: &GradStore, lr: f64) -> Result<()> {
        let SgdConfig {
            momentum,
            nesterov,
            weight_decay,
        } = self.config;
        for (entry, grad) in store.with_grads(grads) {
            // Detached, as in `Lars::update`: no autograd history may reach the momentum buffers.
            let w = &entry.var.as_tensor().detach();
            let mut g = grad.detach();
            if weight_decay > 0.0 && entry.role.is_decayed() {
                g = (g + w.affine(weight_decay, 0.0)?)?;
            }
            let update = if momentum > 0.0 {
                // PyTorch's convention: the first buffer is the gradient itself.
                let b = match self.momentum.get(&entry.name) {
                    Some(b) => (b.affine(momentum, 0.0)? + &g)?,
                    None => g.clone(),
                };
                let update = if nesterov {
                    (&g + b.affine(momentum, 0.0)?)?
                } else {
                    b.clone()
                };
                self.momentum.insert(entry.name.clone(), b.detach());
                update
            } else {
                g
            };
            entry.var.set(&(w - update.affine(lr, 0.0)?)?)?;
        }
        Ok(())
    }
}
