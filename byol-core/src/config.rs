//! Pretraining configuration (serde + TOML) and its presets: the paper's four ImageNet settings
//! and small-scale ones for CIFAR-10 and Fashion-MNIST.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::byol::{ByolConfig, TargetInit};
use crate::data::augment::AugmentSet;
use crate::nn::{MlpConfig, ResNetConfig, Stem};
use crate::optim::Preset;
use crate::{Error, Result};

/// Everything a pretraining run needs besides its data. Every field has a flag in
/// `byol-pretrain` and a key in the TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ByolConfig,
    /// Side of the square views fed to the encoder.
    pub image_size: usize,
    pub batch_size: usize,
    pub epochs: usize,
    pub warmup_epochs: f64,
    /// Learning rate at batch 256 (scaled by batch/256).
    pub base_lr: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    /// LARS trust coefficient η.
    pub eta: f64,
    pub tau_base: f64,
    /// Learning-rate multiplier of the predictor (an ablation of the paper; 1 is the recipe).
    pub predictor_lr_multiplier: f64,
    pub seed: u64,
    /// Loader threads decoding and augmenting.
    pub workers: usize,
    /// Save the training state every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Stop after this many steps in total (the schedules still span `schedule_steps`); for
    /// interruptions and tests.
    pub max_steps: Option<u64>,
    /// Steps the learning-rate and τ schedules span, when fewer than all epochs' steps: the run
    /// ends there and the warm-up shrinks in proportion. A time budget fixes it after measuring
    /// the step rate; `byol-pretrain --max-steps` sets it; a resumed run keeps its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_steps: Option<u64>,
    /// Seconds of wall clock the learning-rate and τ schedules span (`byol-pretrain
    /// --time-limit`): they follow the share of this budget spent training
    /// ([`crate::time_budget`]), or of `schedule_steps`/all epochs when that share is larger.
    /// Set by a fresh run's time budget; a resumed run keeps its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_seconds: Option<f64>,
    /// Run the kNN monitor every this many epochs (0: never).
    pub knn_every: usize,
    pub knn_k: usize,
    pub knn_temperature: f64,
    /// Warn when the projection spread (× √d, 1 when healthy) falls below this.
    pub collapse_threshold: f64,
    /// Smallest area fraction of the random resized crop of both views (0.08 in the paper).
    #[serde(default = "paper_crop_min_scale")]
    pub crop_min_scale: f64,
    /// The operations of the two-view augmentation the run keeps (`full` is the recipe).
    #[serde(default)]
    pub augmentations: AugmentSet,
}

fn paper_crop_min_scale() -> f64 {
    0.08
}

impl TrainConfig {
    /// The paper's ImageNet recipe for ResNet-50 at 224 px.
    pub fn imagenet(preset: Preset) -> Self {
        let v = preset.values();
        Self {
            model: ByolConfig::new(ResNetConfig::new(50)),
            image_size: 224,
            batch_size: v.batch_size,
            epochs: v.epochs as usize,
            warmup_epochs: v.warmup_epochs as f64,
            base_lr: v.base_lr,
            weight_decay: v.weight_decay,
            momentum: 0.9,
            eta: 1e-3,
            tau_base: v.tau_base,
            predictor_lr_multiplier: 1.0,
            seed: 0,
            workers: 8,
            checkpoint_every: 5000,
            max_steps: None,
            schedule_steps: None,
            schedule_seconds: None,
            knn_every: 10,
            knn_k: 20,
            knn_temperature: 0.07,
            collapse_threshold: 0.1,
            crop_min_scale: paper_crop_min_scale(),
            augmentations: AugmentSet::Full,
        }
    }

    /// ResNet-18 with the small stem on 32 px CIFAR-10, as solo-learn's CIFAR recipe
    /// (batch 256, base lr 1.0, τ 0.99, weight decay 1e-5, 1000 epochs).
    pub fn cifar10() -> Self {
        let mut encoder = ResNetConfig::new(18);
        encoder.stem = Stem::Small;
        Self {
            model: ByolConfig {
                projector: MlpConfig {
                    hidden_dim: 4096,
                    output_dim: 256,
                },
                ..ByolConfig::new(encoder)
            },
            image_size: 32,
            batch_size: 256,
            epochs: 1000,
            warmup_epochs: 10.0,
            base_lr: 1.0,
            weight_decay: 1e-5,
            tau_base: 0.99,
            workers: 2,
            checkpoint_every: 1000,
            knn_every: 10,
            ..Self::imagenet(Preset::Imagenet1000)
        }
    }

    /// A CPU-sized run on 28 px greyscale Fashion-MNIST: a narrow ResNet-10 (32 base channels,
    /// 256-d features), small stem, smaller heads. The quick start trains it for five minutes
    /// (`--time-limit 5`: the schedules are fitted to the budget). Values chosen by the sweeps in
    /// README "The Fashion-MNIST recipe" (linear probe on 60k/10k): ResNet-10 at 32 channels
    /// +2.0 points over ResNet-18 at 16 in five minutes' steps; (ResNet-18) 16 base channels +5.7
    /// points over 8; LARS η 0.01 (lr 2.0 at batch 256, so 1.0 at 128)
    /// +1.4 over the paper's η 1e-3 (lr 3.0); a warm-up of a quarter of the run +1.7 over a tenth;
    /// the predictor's learning rate ×10 (the paper's appendix ablation) +1.3 at 250 steps, ahead
    /// in each of 3 seeds; crops of area 0.35–1 rather than 0.2–1, +0.34 on
    /// average over four screens.
    pub fn fashion_mnist() -> Self {
        let encoder = ResNetConfig {
            // ResNet-10 (one basic block a stage) at 32 base channels (256-d features): in a
            // five-minute budget it probes 2-3 points above ResNet-18 at 16 (README, fourth
            // sweep): at this scale width pays more than depth.
            depth: 10,
            width: 1,
            stem: Stem::Small,
            in_channels: 1,
            base_channels: 32,
            zero_init_residual: false,
            padding: Default::default(),
        };
        let heads = MlpConfig {
            hidden_dim: 512,
            output_dim: 128,
        };
        Self {
            model: ByolConfig {
                projector: heads,
                predictor: heads,
                target_init: TargetInit::CopyOnline,
                ..ByolConfig::new(encoder)
            },
            image_size: 28,
            batch_size: 128,
            // A full run without a budget: 20 epochs (9360 steps); budgets shorten it.
            epochs: 20,
            warmup_epochs: 5.0,
            base_lr: 2.0,
            eta: 0.01,
            weight_decay: 1e-5,
            tau_base: 0.99,
            // A predictor that adapts faster gives the online network a better regression
            // target early: what a run of a few hundred steps needs (README, third sweep).
            predictor_lr_multiplier: 10.0,
            workers: 2,
            checkpoint_every: 500,
            knn_every: 1,
            // 28 px images: the paper's 0.08 leaves crops of ~8 px; 0.2 measured +6.7 points
            // of linear probe on the quick start's budget (scripts/PERF.md, quick start); 0.35
            // against 0.2 in same-machine screens since: +0.56, +0.51 (0.5), +0.32, -0.03
            // (README, fifth sweep): never behind beyond noise, ahead on average.
            crop_min_scale: 0.35,
            ..Self::imagenet(Preset::Imagenet1000)
        }
    }

    /// A preset by name: `imagenet-{40,100,300,1000}ep`, `cifar10`, `fashion-mnist`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "cifar10" => Ok(Self::cifar10()),
            "fashion-mnist" => Ok(Self::fashion_mnist()),
            other => other
                .parse::<Preset>()
                .map(Self::imagenet)
                .map_err(|_| {
                    Error::config(
                        "preset",
                        format!("`{other}`: use imagenet-40ep, imagenet-100ep, imagenet-300ep, imagenet-1000ep, cifar10 or fashion-mnist"),
                    )
                }),
        }
    }

    /// Reads a TOML file; unknown keys are errors naming the file.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: Self = toml::from_str(&text).map_err(|e| Error::format(path, e.to_string()))?;
        // The field at fault and the file it is in.
        config
            .validate()
            .map_err(|e| Error::format(path, e.to_string()))?;
        Ok(config)
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::encode("the config", e))
    }

    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        self.model.encoder.validate()?;
        for (head, mlp) in [
            ("model.projector", &self.model.projector),
            ("model.predictor", &self.model.predictor),
        ] {
            for (field, v) in [
                ("hidden_dim", mlp.hidden_dim),
                ("output_dim", mlp.output_dim),
            ] {
                if v == 0 {
                    return Err(Error::config(
                        format!("{head}.{field}"),
                        "must be at least 1",
                    ));
                }
            }
        }
        if self.knn_every > 0 && self.knn_k == 0 {
            return Err(Error::config("knn_k", "must be at least 1"));
        }
        if !(self.knn_temperature.is_finite() && self.knn_temperature > 0.0) {
            return Err(Error::config(
                "knn_temperature",
                format!("{} must be a finite number > 0", self.knn_temperature),
            ));
        }
        let positive = [
            ("image_size", self.image_size as f64),
            ("batch_size", self.batch_size as f64),
            ("epochs", self.epochs as f64),
            ("workers", self.workers as f64),
        ];
        for (field, v) in positive {
            if v < 1.0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        if self.batch_size < 2 {
            return Err(Error::config(
                "batch_size",
                "BatchNorm needs at least 2 samples per batch",
            ));
        }
        if !(0.0..=1.0).contains(&self.tau_base) {
            return Err(Error::config(
                "tau_base",
                format!("{} is not in [0, 1]", self.tau_base),
            ));
        }
        for (field, v) in [
            ("base_lr", self.base_lr),
            ("weight_decay", self.weight_decay),
            ("warmup_epochs", self.warmup_epochs),
            ("predictor_lr_multiplier", self.predictor_lr_multiplier),
            ("eta", self.eta),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::config(
                    field,
                    format!("{v} must be a finite number ≥ 0"),
                ));
            }
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::config(
                "momentum",
                format!("{} is not in [0, 1)", self.momentum),
            ));
        }
        if self.schedule_steps == Some(0) {
            return Err(Error::config("schedule_steps", "must be at least 1"));
        }
        if let Some(seconds) = self.schedule_seconds {
            if !(seconds.is_finite() && seconds > 0.0) {
                return Err(Error::config(
                    "schedule_seconds",
                    format!("{seconds} is not a positive number of seconds"),
                ));
            }
        }
        if !(self.crop_min_scale > 0.0 && self.crop_min_scale <= 1.0) {
            return Err(Error::config(
                "crop_min_scale",
                format!("{} is not in (0, 1]", self.crop_min_scale),
            ));
        }
        Ok(())
    }
}
