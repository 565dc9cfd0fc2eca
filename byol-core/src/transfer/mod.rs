//! Transfer evaluation of a pretrained encoder (the paper's section 4 / appendix D):
//!
//! - [`voc`]: VOC2007 multi-label classification on frozen features, either the paper's per-class
//!   logistic regression with 11-point mAP or the VISSL/mmselfsup SVM protocol with all-point AP;
//! - [`segmentation`]: VOC2012 semantic segmentation with an FCN head, encoder fine-tuned;
//! - [`classify`]: one image-folder dataset, linear or fine-tuned;
//! - [`suite`]: `--suite paper`, every dataset of the paper's table found under a root;
//! - [`finetune`]: the fine-tuning setup the tasks share (encoder + head, SGD, lr × wd grid);
//! - [`paper`]: the paper's ResNet-50 transfer numbers and each dataset's metric;
//! - [`report`]: the JSON report every task writes and the table it prints.
//!
//! This file holds what the tasks share: the options (which [`Weights`] to start from), the
//! evaluation transform and frozen-feature extraction.

pub mod classify;
pub mod finetune;
pub mod paper;
pub mod report;
pub mod segmentation;
pub mod suite;
pub mod voc;

use std::sync::Arc;

use candle_core::Device;

use crate::data::augment::{AugmentConfig, EvalTransform};
use crate::data::loader::Transform;
use crate::data::Dataset;
use crate::eval::features::{extract, FeaturePass, LabelledFeatures};
use crate::io::sha256_file;
use crate::nn::{Precision, ResNet, ResNetConfig, VarStore};
use crate::weights::{load_encoder_part, Part, Weights};
use crate::{Error, Result};

pub use report::{ClassScore, TransferReport, WeightsInfo};

/// Settings every task shares.
#[derive(Debug, Clone)]
pub struct CommonOptions {
    pub weights: Weights,
    /// Architecture of a weights file without config metadata, or of the random encoder that
    /// fine-tuning starts from with [`Weights::None`] (default: ResNet-50, ImageNet stem).
    pub arch: Option<ResNetConfig>,
    /// Which encoder of the weights file: the online one (default) or the target one.
    pub part: Part,
    /// Side of the square network input.
    pub image_size: usize,
    pub batch_size: usize,
    /// Loader threads.
    pub workers: usize,
    pub seed: u64,
    pub device: Device,
    /// Arithmetic of the frozen encoder's forward in the linear protocols (fine-tuning trains
    /// in fp32).
    pub precision: Precision,
}

impl CommonOptions {
    pub fn new(weights: Weights, image_size: usize) -> Self {
        Self {
            weights,
            arch: None,
            part: Part::Online,
            image_size,
            batch_size: 64,
            workers: 2,
            seed: 0,
            device: Device::Cpu,
            precision: Precision::F32,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.image_size < 8 {
            return Err(Error::config(
                "image-size",
                format!("{} px is too small (≥ 8)", self.image_size),
            ));
        }
        if self.batch_size == 0 {
            return Err(Error::config("batch-size", "must be at least 1"));
        }
        Ok(())
    }

    /// The report's description of the weights (path and SHA-256 of the file).
    pub fn weights_info(&self) -> Result<WeightsInfo> {
        Ok(match &self.weights {
            Weights::None => WeightsInfo {
                extractor: "none (raw pixels for frozen features, random init for fine-tuning)"
                    .into(),
                path: None,
                sha256: None,
                architecture: None,
                part: None,
            },
            Weights::File(p) => WeightsInfo {
                extractor: "encoder".into(),
                path: Some(p.display().to_string()),
                sha256: Some(sha256_file(p)?),
                architecture: None,
                part: Some(self.part.to_string()),
            },
        })
    }

    /// The frozen encoder, or `None` for the raw-pixel baseline.
    pub fn frozen_encoder(&self) -> Result<Option<ResNet>> {
        match &self.weights {
            Weights::None => Ok(None),
            Weights::File(p) => Ok(Some(
                load_encoder_part(p, &self.device, self.arch.as_ref(), self.part)?.encoder,
            )),
        }
    }

    /// An encoder to fine-tune and its store: the weights file, or a seeded random init.
    pub fn trainable_encoder(&self) -> Result<(ResNet, VarStore)> {
        match &self.weights {
            Weights::File(p) => {
                let loaded = load_encoder_part(p, &self.device, self.arch.as_ref(), self.part)?;
                Ok((loaded.encoder, loaded.store))
            }
            Weights::None => {
                let arch = self.arch.clone().unwrap_or_else(|| ResNetConfig::new(50));
                let mut store = VarStore::new(&self.device, self.seed);
                let encoder = ResNet::new(&mut store.root(), &arch)?;
                Ok((encoder, store))
            }
        }
    }

    /// The evaluation transform of the transfer protocol: shorter side resized to the input size,
    /// centre crop, ImageNet normalisation; `channels` as the encoder expects.
    pub fn eval_transform(&self, channels: usize) -> Result<EvalTransform> {
        EvalTransform::new(eval_augment(self.image_size, channels))
    }
}

/// [`AugmentConfig`] of the transfer protocol at `size` (no 256/224 margin: App. D.2 resizes the
/// shorter side to 224 and centre-crops).
pub fn eval_augment(size: usize, channels: usize) -> AugmentConfig {
    let mut a = AugmentConfig::byol_imagenet(size);
    a.eval_resize_ratio = 1.0;
    if channels == 1 {
        a.out_channels = 1;
        a.mean.truncate(1);
        a.std.truncate(1);
    }
    a
}

/// Frozen features (or raw pixels with `encoder` = `None`) of every sample of `dataset`, rows in
/// dataset order, through the transfer evaluation transform. A file skipped as corrupt would
/// shift every later row against its targets, so a short result is an error.
pub fn frozen_features(
    encoder: Option<&ResNet>,
    dataset: Arc<dyn Dataset>,
    opts: &CommonOptions,
    what: &str,
) -> Result<LabelledFeatures> {
    let channels = encoder.map_or(3, |e| e.config().in_channels);
    let transform = Arc::new(opts.eval_transform(channels)?);
    features_of_all(encoder, dataset, transform, opts, what)
}

/// [`frozen_features`] through any one-view `transform` (views of the encoder's channels, or 3
/// for raw pixels, at `opts.image_size`): every sample must be read.
pub fn features_of_all(
    encoder: Option<&ResNet>,
    dataset: Arc<dyn Dataset>,
    transform: Arc<dyn Transform>,
    opts: &CommonOptions,
    what: &str,
) -> Result<LabelledFeatures> {
    let channels = encoder.map_or(3, |e| e.config().in_channels);
    let n = dataset.len();
    let s = opts.image_size;
    let out = extract(&FeaturePass {
        encoder,
        dataset,
        transform,
        view_shape: (channels, s, s),
        batch_size: opts.batch_size,
        workers: opts.workers.max(1),
        device: &opts.device,
        precision: opts.precision,
    })?;
    if out.labels.len() != n {
        return Err(Error::Dataset(format!(
            "{what}: {} of {n} images were read; the others were skipped as corrupt (see the warnings)",
            out.labels.len()
        )));
    }
    Ok(out)
}
