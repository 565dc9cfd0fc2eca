//! LARS (You et al. 2017) as BYOL uses it.
//!
//! Per tensor, in this order: `g ← g + λ·w` (weight decay); `g ← g·η·‖w‖/‖g‖` (trust ratio on
//! the decayed gradient, 1 where either norm is 0); `m ← μ·m + g`; `w ← w − lr·m`. Biases and every
//! BatchNorm parameter skip both the decay and the trust ratio ([`Role::is_lars_adapted`]).
//! No gradient clipping. On CPU (any backend but `Stock`) one fused kernel does the whole
//! per-tensor update (`byol_kernels::lars_update`); the candle-op path below is the reference
//! and what a GPU runs: there the trust ratio stays a device tensor, so a step never waits for
//! the norms (reading them on the host cost two device synchronisations per tensor and step).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::nn::var_store::Entry;
use crate::nn::VarStore;
use crate::Result;
use byol_kernels::LarsStep;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LarsConfig {
    pub momentum: f64,
    /// Trust coefficient η.
    pub eta: f64,
    pub weight_decay: f64,
}

impl Default for LarsConfig {
    fn default() -> Self {
        Self {
            momentum: 0.9,
            eta: 1e-3,
            weight_decay: 1.5e-6,
        }
    }
}

/// LARS with one momentum buffer per trainable tensor, keyed by tensor name.
#[derive(Debug, Clone)]
pub struct Lars {
    config: LarsConfig,
    momentum: HashMap<String, Tensor>,
}

impl Lars {
    pub fn new(config: LarsConfig) -> Self {
        Self {
            config,
            momentum: HashMap::new(),
        }
    }

    pub fn config(&self) -> &LarsConfig {
        &self.config
    }

    /// One update of every trainable tensor of `store` that has a gradient, at learning rate
    /// `lr × lr_scale(name)` (the scale serves per-group multipliers such as the predictor's).
    pub fn step(
        &mut self,
        store: &VarStore,
        grads: &GradStore,
        lr: f64,
        lr_scale: &dyn Fn(&str) -> f64,
    ) -> Result<()> {
        for (entry, grad) in store.with_grads(grads) {
            self.update(entry, grad, lr * lr_scale(&entry.name))?;
        }
        Ok(())
    }

    fn update(&mut self, entry: &Entry, grad: &Tensor, lr: f64) -> Result<()> {
        // Detached: arithmetic on the Var itself would record autograd ops, and the momentum
        // buffer would then hold every earlier step's buffers alive through that history
        // (memory grew ~0.9 GB per ResNet-50 step before this).
        let w = &entry.var.as_tensor().detach();
        let adapted = entry.role.is_lars_adapted();
        if byol_kernels::use_fast(w) {
            let step = LarsStep {
                lr,
                momentum: self.config.momentum,
                weight_decay: self.config.weight_decay,
                eta: adapted.then_some(self.config.eta),
            };
            let previous = self.momentum.get(&entry.name);
            let (w_new, m) = byol_kernels::lars_update(w, &grad.detach(), previous, step)?;
            entry.var.set(&w_new)?;
            self.momentum.insert(entry.name.clone(), m);
            return Ok(());
        }
        let mut g = grad.detach();
        if adapted {
            g = (g + w.affine(self.config.weight_decay, 0.0)?)?;
            let trust = trust_ratio(w, &g, self.config.eta)?;
            g = g.broadcast_mul(&trust)?;
        }
        let m = match self.momentum.get(&entry.name) {
            Some(m) => (m.affine(self.config.momentum, 0.0)? + g)?,
            None => g,
        };
        entry.var.set(&(w - m.affine(lr, 0.0)?)?)?;
        self.momentum.insert(entry.name.clone(), m.detach());
        Ok(())
    }

    /// The momentum buffers by tensor name (for checkpoints).
    pub fn momentum_buffers(&self) -> &HashMap<String, Tensor> {
        &self.momentum
    }

    /// Restores momentum buffers, checking each against the tensor it belongs to.
    pub fn set_momentum_buffers(
        &mut self,
        store: &VarStore,
        buffers: HashMap<String, Tensor>,
    ) -> Result<()> {
        super::check_momentum_buffers(store, &buffers)?;
        self.momentum = buffers;
        Ok(())
    }
}

/// `η·‖w‖/‖g‖`, or 1 where either norm is 0, as a one-element tensor on the tensors' device
/// (norms summed in f32, as candle sums).
fn trust_ratio(w: &Tensor, g: &Tensor, eta: f64) -> Result<Tensor> {
    let w_norm = w.sqr()?.sum_all()?.sqrt()?;
    let g_norm = g.sqr()?.sum_all()?.sqrt()?;
    let ratio = (w_norm.affine(eta, 0.0)? / &g_norm)?;
    let both_positive = w_norm.minimum(&g_norm)?.gt(&w_norm.zeros_like()?)?;
    Ok(both_positive.where_cond(&ratio, &ratio.ones_like()?)?)
}
