//! The augmentations as loader transforms, and the dataset-specific augmentation presets.

use super::augment::{AugmentConfig, EvalTransform, TwoViewAugmenter};
use super::loader::{SampleCtx, Transform};
use super::Sample;
use crate::{Error, Result};

/// Fashion-MNIST's pixel statistics (train split, on [0, 1] values).
pub const FASHION_MNIST_MEAN: f32 = 0.2860;
pub const FASHION_MNIST_STD: f32 = 0.3530;

/// The small-image BYOL views for 28 px greyscale Fashion-MNIST: one output channel with the
/// dataset's own statistics, and no resize before the evaluation crop.
pub fn fashion_mnist_augment() -> AugmentConfig {
    AugmentConfig {
        out_channels: 1,
        mean: vec![FASHION_MNIST_MEAN],
        std: vec![FASHION_MNIST_STD],
        eval_resize_ratio: 1.0,
        ..AugmentConfig::small_image(28)
    }
}

/// Two views per sample, seeded by (seed, epoch, index).
impl Transform for TwoViewAugmenter {
    fn apply(&self, sample: &Sample, ctx: &SampleCtx, views: &mut [&mut [f32]]) -> Result<()> {
        let [v1, v2] = views else {
            return Err(Error::Input(format!(
                "the two-view augmentation fills 2 views, the loader asked for {}",
                views.len()
            )));
        };
        self.apply_pair(
            &sample.image,
            ctx.seed,
            ctx.epoch as u64,
            ctx.index as u64,
            v1,
            v2,
        )
    }
}

/// One deterministic evaluation view per sample.
impl Transform for EvalTransform {
    fn apply(&self, sample: &Sample, _ctx: &SampleCtx, views: &mut [&mut [f32]]) -> Result<()> {
        let [view] = views else {
            return Err(Error::Input(format!(
                "the evaluation transform fills 1 view, the loader asked for {}",
                views.len()
            )));
        };
        EvalTransform::apply(self, &sample.image, view)
    }
}

/// One augmented view per sample (the first view of the config): the training transform of the
/// linear-evaluation head (random resized crop and flip).
#[derive(Debug, Clone)]
pub struct OneViewAugmenter(TwoViewAugmenter);

impl OneViewAugmenter {
    pub fn new(cfg: AugmentConfig) -> Result<Self> {
        Ok(Self(TwoViewAugmenter::new(cfg)?))
    }

    /// The paper's linear-evaluation augmentation on top of `base`'s size and normalisation:
    /// random resized crop (area 0.08–1) and horizontal flip, no colour operations.
    pub fn crop_and_flip(base: &AugmentConfig) -> Result<Self> {
        Self::crop_and_flip_scaled(base, super::augment::ViewConfig::byol(0.0, 0.0).crop_scale)
    }

    /// [`OneViewAugmenter::crop_and_flip`] with crops of area `crop_scale` (fractions of the
    /// image).
    pub fn crop_and_flip_scaled(base: &AugmentConfig, crop_scale: [f64; 2]) -> Result<Self> {
        let mut view = super::augment::ViewConfig::byol(0.0, 0.0);
        view.jitter_prob = 0.0;
        view.grayscale_prob = 0.0;
        view.crop_scale = crop_scale;
        Self::new(AugmentConfig {
            view1: view.clone(),
            view2: view,
            ..base.clone()
        })
    }
}

impl Transform for OneViewAugmenter {
    fn apply(&self, sample: &Sample, ctx: &SampleCtx, views: &mut [&mut [f32]]) -> Result<()> {
        let [view] = views else {
            return Err(Error::Input(format!(
                "the one-view augmentation fills 1 view, the loader asked for {}",
                views.len()
            )));
        };
        self.0.apply(
            &sample.image,
            ctx.seed,
            ctx.epoch as u64,
            ctx.index as u64,
            0,
            view,
        )
    }
}
