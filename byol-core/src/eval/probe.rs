//! A side-by-side linear probe of several feature extractors on the same split (the quick
//! start's table: raw pixels, a random-init encoder, the BYOL encoder).

use std::sync::Arc;

use candle_core::Device;
use serde::Serialize;

use crate::data::loader::Transform;
use crate::data::Dataset;
use crate::eval::features::{extract, FeaturePass, LabelledFeatures};
use crate::eval::knn::{knn_classify, KnnOptions};
use crate::eval::linear_protocol::{linear_protocol, LinearProtocolOptions};
use crate::nn::{Precision, ResNet};
use crate::Result;

/// One row of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeRow {
    pub name: String,
    pub feature_dim: usize,
    pub best_lambda: f64,
    pub test_top1: f64,
    pub test_top5: f64,
    pub seconds: f64,
}

/// Where the probe's data comes from.
pub struct ProbeData {
    pub train: Arc<dyn Dataset>,
    pub test: Arc<dyn Dataset>,
    pub transform: Arc<dyn Transform>,
    /// (channels, height, width) of a transformed image.
    pub view_shape: (usize, usize, usize),
    pub workers: usize,
}

impl ProbeData {
    fn features(
        &self,
        encoder: Option<&ResNet>,
        dataset: &Arc<dyn Dataset>,
        device: &Device,
    ) -> Result<LabelledFeatures> {
        extract(&FeaturePass {
            encoder,
            dataset: Arc::clone(dataset),
            transform: Arc::clone(&self.transform),
            view_shape: self.view_shape,
            batch_size: 256,
            workers: self.workers,
            device,
            precision: Precision::F32,
        })
    }
}

/// The kNN monitor: top-1 accuracy of a weighted kNN classifier on the frozen encoder's
/// features (train split as memory bank, test split as queries).
pub fn knn_top1(
    encoder: &ResNet,
    data: &ProbeData,
    options: &KnnOptions,
    device: &Device,
) -> Result<f64> {
    let train = data.features(Some(encoder), &data.train, device)?;
    let test = data.features(Some(encoder), &data.test, device)?;
    let result = knn_classify(
        train.features.view(),
        &train.labels,
        test.features.view(),
        &test.labels,
        data.train.num_classes(),
        options,
    )?;
    Ok(result.top1)
}

/// Fits the logistic protocol (λ chosen on a validation split of train) on the features of each
/// named encoder (`None`: raw pixels) and reports test accuracy.
pub fn compare_linear(
    extractors: &[(&str, Option<&ResNet>)],
    data: &ProbeData,
    options: &LinearProtocolOptions,
    device: &Device,
) -> Result<Vec<ProbeRow>> {
    let classes = data.train.num_classes();
    let mut rows = Vec::with_capacity(extractors.len());
    for (name, extractor) in extractors {
        let start = std::time::Instant::now();
        let train = data.features(*extractor, &data.train, device)?;
        let test = data.features(*extractor, &data.test, device)?;
        let result = linear_protocol(
            train.features.view(),
            &train.labels,
            test.features.view(),
            &test.labels,
            classes,
            options,
        )?;
        rows.push(ProbeRow {
            name: name.to_string(),
            feature_dim: train.features.view().cols(),
            best_lambda: result.best_lambda,
            test_top1: result.test_top1,
            test_top5: result.test_top5,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    Ok(rows)
}
