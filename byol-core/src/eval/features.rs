//! Frozen-encoder features: the encoder in inference mode (BatchNorm running statistics) over a
//! dataset through the evaluation transform, and raw pixels as the baseline extractor.

use std::sync::Arc;

use candle_core::{Device, ModuleT, Tensor};

use crate::data::loader::{Loader, LoaderConfig, Transform};
use crate::data::Dataset;
use crate::eval::matrix::OwnedFeatures;
use crate::nn::ResNet;
use crate::Result;

/// Features and labels of a whole dataset, rows in dataset order.
pub struct LabelledFeatures {
    pub features: OwnedFeatures,
    pub labels: Vec<usize>,
}

/// Runs `encoder` (pooled features of the frozen encoder; `None`: the transformed pixels
/// themselves, the raw-pixel baseline) over every sample of `dataset` through `transform` (one view, `view_shape`
/// = (channels, height, width)), in batches of `batch_size`, with `workers` loader threads.
pub fn extract(
    encoder: Option<&ResNet>,
    dataset: Arc<dyn Dataset>,
    transform: Arc<dyn Transform>,
    view_shape: (usize, usize, usize),
    batch_size: usize,
    workers: usize,
    device: &Device,
) -> Result<LabelledFeatures> {
    let (c, h, w) = view_shape;
    let view_len = c * h * w;
    let loader = Loader::new(
        dataset,
        transform,
        LoaderConfig {
            shuffle: false,
            drop_last: false,
            workers,
            ..LoaderConfig::new(batch_size, 1, view_len)
        },
    )?;
    let mut data = Vec::new();
    let mut labels = Vec::new();
    let mut cols = 0;
    for batch in loader.epoch(0)? {
        let batch = batch?;
        let n = batch.len();
        let pixels = &batch.view(0)[..n * view_len];
        match encoder {
            None => {
                data.extend_from_slice(pixels);
                cols = view_len;
            }
            Some(encoder) => {
                let x = Tensor::from_slice(pixels, (n, c, h, w), device)?;
                let f = encoder.forward_t(&x, false)?;
                cols = f.dim(1)?;
                data.extend(f.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        labels.extend_from_slice(batch.labels());
    }
    Ok(LabelledFeatures {
        features: OwnedFeatures::new(data, cols)?,
        labels,
    })
}
