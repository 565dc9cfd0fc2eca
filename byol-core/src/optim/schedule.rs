//! Learning rate: `base_lr × batch/256`, linear warm-up from 0, then cosine decay to 0; and the
//! paper's four ImageNet presets.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Linear warm-up then cosine decay, as in the official BYOL code.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// `base_lr × batch_size / 256`.
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// Scales `base_lr` by `batch_size / 256`.
    pub fn new(base_lr: f64, batch_size: usize, warmup_steps: u64, total_steps: u64) -> Self {
        Self {
            peak_lr: base_lr * batch_size as f64 / 256.0,
            warmup_steps,
            total_steps,
        }
    }

    /// The learning rate at `step` (0-based): [`Self::lr_at`] at `step / total_steps`, except
    /// while a warm-up longer than the whole schedule is still running.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps as f64;
        }
        self.lr_at(step as f64 / self.total_steps.max(1) as f64)
    }

    /// The learning rate at `progress` ∈ [0, 1] through the schedule (a time-indexed run's share
    /// of its budget): the same warm-up share and cosine as [`Self::lr`], continuous in progress.
    pub fn lr_at(&self, progress: f64) -> f64 {
        let progress = progress.clamp(0.0, 1.0);
        if self.total_steps == 0 {
            return 0.0;
        }
        let warmup = self.warmup_steps.min(self.total_steps) as f64 / self.total_steps as f64;
        if progress < warmup {
            return self.peak_lr * progress / warmup;
        }
        if warmup >= 1.0 {
            return 0.0;
        }
        let decayed = (progress - warmup) / (1.0 - warmup);
        self.peak_lr * 0.5 * (1.0 + (std::f64::consts::PI * decayed).cos())
    }
}

/// The paper's ImageNet settings by training length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Preset {
    Imagenet40,
    Imagenet100,
    Imagenet300,
    Imagenet1000,
}

/// What a preset fixes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PresetValues {
    pub epochs: u64,
    pub base_lr: f64,
    pub weight_decay: f64,
    pub tau_base: f64,
    pub warmup_epochs: u64,
    pub batch_size: usize,
}

impl Preset {
    pub fn values(self) -> PresetValues {
        let (epochs, base_lr, weight_decay, tau_base) = match self {
            Preset::Imagenet40 => (40, 0.45, 1e-6, 0.97),
            Preset::Imagenet100 => (100, 0.45, 1e-6, 0.99),
            Preset::Imagenet300 => (300, 0.3, 1e-6, 0.99),
            Preset::Imagenet1000 => (1000, 0.2, 1.5e-6, 0.996),
        };
        PresetValues {
            epochs,
            base_lr,
            weight_decay,
            tau_base,
            warmup_epochs: 10,
            batch_size: 4096,
        }
    }
}

impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "imagenet-40ep" => Ok(Preset::Imagenet40),
            "imagenet-100ep" => Ok(Preset::Imagenet100),
            "imagenet-300ep" => Ok(Preset::Imagenet300),
            "imagenet-1000ep" => Ok(Preset::Imagenet1000),
            _ => Err(Error::config(
                "preset",
                format!(
                    "`{s}`: use imagenet-40ep, imagenet-100ep, imagenet-300ep or imagenet-1000ep"
                ),
            )),
        }
    }
}
