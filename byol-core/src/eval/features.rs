//! Frozen-encoder features: the encoder in inference mode (BatchNorm running statistics) over a
//! dataset through the evaluation transform, and raw pixels as the baseline extractor.

use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;

use crate::data::loader::{Loader, LoaderConfig, Transform};
use crate::data::Dataset;
use crate::distributed::gather::gather_all;
use crate::distributed::{Collective, SingleProcess};
use crate::eval::matrix::OwnedFeatures;
use crate::nn::{FrozenEncoder, Precision, ResNet};
use crate::{Error, Result};

/// Features and labels of a whole dataset, rows in dataset order.
pub struct LabelledFeatures {
    pub features: OwnedFeatures,
    pub labels: Vec<usize>,
}

/// Runs `pass.encoder` (pooled features of the frozen encoder; `None`: the transformed pixels
/// themselves, the raw-pixel baseline) over every sample of `pass.dataset`, in one process.
pub fn extract(pass: &FeaturePass) -> Result<LabelledFeatures> {
    let all = extract_shard(pass, &SingleProcess)?;
    Ok(LabelledFeatures {
        features: OwnedFeatures::new(all.data, all.cols)?,
        labels: all.labels,
    })
}

/// One pass of a frozen extractor over a dataset: each sample through `transform` (one view of
/// `view_shape` = (channels, height, width)), in batches of `batch_size`, with `workers` loader
/// threads, the encoder in `precision`.
pub struct FeaturePass<'a> {
    pub encoder: Option<&'a ResNet>,
    pub dataset: Arc<dyn Dataset>,
    pub transform: Arc<dyn Transform>,
    pub view_shape: (usize, usize, usize),
    pub batch_size: usize,
    pub workers: usize,
    pub device: &'a Device,
    pub precision: Precision,
}

/// The rows one rank extracted (row-major, `cols` wide; none when its slices were empty), with
/// the label and dataset index of each.
pub struct ShardRows {
    pub data: Vec<f32>,
    pub cols: usize,
    pub labels: Vec<usize>,
    pub indices: Vec<usize>,
}

/// The rank's share of `pass`: its slice of every batch. Rows keep dataset order.
pub fn extract_shard(pass: &FeaturePass, group: &dyn Collective) -> Result<ShardRows> {
    let (c, h, w) = pass.view_shape;
    let view_len = c * h * w;
    let loader = Loader::new(
        Arc::clone(&pass.dataset),
        Arc::clone(&pass.transform),
        LoaderConfig {
            shuffle: false,
            drop_last: false,
            workers: pass.workers,
            rank: group.rank(),
            world_size: group.world_size(),
            ..LoaderConfig::new(pass.batch_size, 1, view_len)
        },
    )?;
    let mut data = Vec::new();
    let mut labels = Vec::new();
    let mut indices = Vec::new();
    let mut cols = 0;
    let frozen = match pass.encoder {
        Some(encoder) => Some(FrozenEncoder::new(encoder, pass.precision, pass.device)?),
        None => None,
    };
    // Where the time goes: waiting for the loader (decode, resize) vs the encoder's forward.
    let started = Instant::now();
    let mut forward_seconds = 0.0;
    for batch in loader.epoch(0)? {
        let batch = batch?;
        let n = batch.len();
        if n == 0 {
            continue;
        }
        let pixels = &batch.view(0)[..n * view_len];
        match &frozen {
            None => {
                data.extend_from_slice(pixels);
                cols = view_len;
            }
            Some(encoder) => {
                let forward = Instant::now();
                data.extend(encoder.forward(pixels, (n, c, h, w))?);
                forward_seconds += forward.elapsed().as_secs_f64();
                cols = encoder.features();
            }
        }
        labels.extend_from_slice(batch.labels());
        indices.extend_from_slice(batch.indices());
    }
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "features of {} images in {seconds:.2} s ({:.1} images/s; encoder forward {forward_seconds:.2} s{}, \
         the rest waiting for decoded batches)",
        labels.len(),
        labels.len() as f64 / seconds.max(1e-9),
        match &frozen {
            Some(e) if e.on_onednn() => " on the oneDNN frozen network",
            Some(_) => " on the candle module",
            None => ", none: raw pixels",
        }
    );
    Ok(ShardRows {
        data,
        cols,
        labels,
        indices,
    })
}

/// Every rank's [`extract_shard`] of `pass`, gathered on rank 0 in dataset order: the rows one
/// process would extract (`None` on the other ranks).
pub fn extract_across(
    pass: &FeaturePass,
    group: &dyn Collective,
) -> Result<Option<LabelledFeatures>> {
    let mine = extract_shard(pass, group)?;
    if group.world_size() == 1 {
        return Ok(Some(LabelledFeatures {
            features: OwnedFeatures::new(mine.data, mine.cols)?,
            labels: mine.labels,
        }));
    }
    if pass.dataset.len() > MAX_GATHERED_INDEX {
        return Err(Error::Input(format!(
            "{} images: sharded extraction carries indices as f32, exact up to {MAX_GATHERED_INDEX}",
            pass.dataset.len()
        )));
    }
    let cols = mine.cols;
    // Per row: index, label, then the features (f32 is exact for both below 2^24).
    let mut packed = Vec::with_capacity(mine.indices.len() * (cols + 2));
    for (r, (&index, &label)) in mine.indices.iter().zip(&mine.labels).enumerate() {
        packed.push(index as f32);
        packed.push(label as f32);
        packed.extend_from_slice(&mine.data[r * cols..(r + 1) * cols]);
    }
    let mut widths = vec![0f64; group.world_size()];
    widths[group.rank()] = cols as f64;
    group.all_reduce_f64(&mut widths)?;
    let width = widths.iter().fold(0f64, |a, &b| a.max(b)) as usize;
    if widths.iter().any(|&w| w != 0.0 && w as usize != width) {
        return Err(Error::Input(format!(
            "ranks extracted features of different widths: {widths:?}"
        )));
    }
    let Some(parts) = gather_all(group, &packed)? else {
        return Ok(None);
    };
    let mut rows: Vec<&[f32]> = parts
        .iter()
        .flat_map(|p| p.chunks_exact(width + 2))
        .collect();
    rows.sort_by_key(|row| row[0] as usize);
    let mut data = Vec::with_capacity(rows.len() * width);
    let mut labels = Vec::with_capacity(rows.len());
    for row in rows {
        labels.push(row[1] as usize);
        data.extend_from_slice(&row[2..]);
    }
    Ok(Some(LabelledFeatures {
        features: OwnedFeatures::new(data, width)?,
        labels,
    }))
}

/// The largest dataset index an f32 carries exactly (2^24).
const MAX_GATHERED_INDEX: usize = 1 << 24;
