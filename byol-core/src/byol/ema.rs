//! The target network's exponential moving average of the online parameters.

use crate::nn::VarStore;
use crate::{Error, Result};

/// `τ_k = 1 − (1 − τ_base)·(cos(π·k/K) + 1)/2`: from τ_base at step 0 to 1 at the last step.
pub fn tau_schedule(tau_base: f64, step: u64, total_steps: u64) -> f64 {
    let progress = if total_steps == 0 {
        1.0
    } else {
        (step.min(total_steps)) as f64 / total_steps as f64
    };
    tau_at(tau_base, progress)
}

/// τ at `progress` ∈ [0, 1] through the run (a time-indexed run's share of its budget).
pub fn tau_at(tau_base: f64, progress: f64) -> f64 {
    let progress = progress.clamp(0.0, 1.0);
    1.0 - (1.0 - tau_base) * ((std::f64::consts::PI * progress).cos() + 1.0) / 2.0
}

/// `ξ ← τ·ξ + (1 − τ)·θ` for every trainable target tensor, matched to the online tensor of the
/// same name. BatchNorm running statistics are not averaged: the target keeps its own, from its
/// own forward passes.
pub fn ema_update(target: &VarStore, online: &VarStore, tau: f64) -> Result<()> {
    for t in target.trainable() {
        let o = online.get(&t.name).ok_or_else(|| {
            Error::tensor(&t.name, "the target has it but the online network does not")
        })?;
        // Detached: the update is not part of any graph.
        let (target, online) = (t.var.as_tensor().detach(), o.var.as_tensor().detach());
        let mixed = if byol_kernels::use_fast(&target) {
            byol_kernels::ema(&target, &online, tau)?
        } else {
            (target.affine(tau, 0.0)? + online.affine(1.0 - tau, 0.0)?)?
        };
        t.var.set(&mixed)?;
    }
    Ok(())
}
