//! Cached frozen features: one safetensors file per (weights, transform, dataset, split), with
//! what produced it in the metadata, so a cache made by other weights or another transform is
//! detected as stale and recomputed instead of silently reused.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::eval::features::LabelledFeatures;
use crate::eval::matrix::OwnedFeatures;
use crate::io::{write_safetensors, SafetensorsFile};
use crate::{Error, Result};

/// Metadata key holding the [`CacheKey`] as JSON.
pub const CACHE_KEY: &str = "byol.features";

/// Everything that determines the cached rows. Two caches are interchangeable iff their keys
/// are equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// SHA-256 of the encoder file, or `pixels` for the raw-pixel extractor.
    pub weights: String,
    /// The evaluation transform, as JSON (size, resize ratio, normalisation, channels).
    pub transform: String,
    /// Dataset kind and directory.
    pub dataset: String,
    pub split: String,
    pub samples: usize,
}

/// Whether [`cached_features`] read the cache or (re)computed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheStatus {
    Hit,
    Missing,
    Stale,
}

/// Writes features (`features`, f32 [n, d]) and labels (`labels`, i64 [n]) atomically.
pub fn save_features(path: &Path, data: &LabelledFeatures, key: &CacheKey) -> Result<()> {
    let rows = data.features.view().rows();
    let cols = data.features.view().cols();
    if data.labels.len() != rows {
        return Err(Error::Input(format!(
            "{} labels for {rows} feature rows",
            data.labels.len()
        )));
    }
    let features = Tensor::from_slice(data.features.view().data(), (rows, cols), &Device::Cpu)?;
    let labels: Vec<i64> = data.labels.iter().map(|&l| l as i64).collect();
    let labels = Tensor::from_vec(labels, rows, &Device::Cpu)?;
    let key_json = serde_json::to_string(key).map_err(|e| Error::encode("the cache key", e))?;
    let metadata = BTreeMap::from([(CACHE_KEY.to_owned(), key_json)]);
    write_safetensors(
        path,
        vec![("features".into(), features), ("labels".into(), labels)],
        metadata,
    )
}

/// Reads a cache file whatever its key; errors name the file or tensor at fault.
pub fn load_features(path: &Path) -> Result<(LabelledFeatures, CacheKey)> {
    let file = SafetensorsFile::read(path, &Device::Cpu)?;
    let key: CacheKey = file.metadata_json(path, CACHE_KEY)?;
    let tensor = |name: &str| {
        file.tensors
            .get(name)
            .ok_or_else(|| Error::format(path, format!("no `{name}` tensor")))
    };
    let features = tensor("features")?;
    let labels = tensor("labels")?;
    let (rows, cols) = features
        .dims2()
        .map_err(|_| Error::tensor("features", format!("{path:?}: expected [rows, dim]")))?;
    let labels: Vec<i64> = labels
        .to_vec1()
        .map_err(|_| Error::tensor("labels", format!("{path:?}: expected i64 [rows]")))?;
    if labels.len() != rows || rows != key.samples {
        return Err(Error::format(
            path,
            format!(
                "{rows} feature rows, {} labels, {} samples in the metadata",
                labels.len(),
                key.samples
            ),
        ));
    }
    let labels = labels
        .into_iter()
        .map(|l| {
            usize::try_from(l)
                .map_err(|_| Error::tensor("labels", format!("{path:?}: negative label {l}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let data = features.flatten_all()?.to_vec1::<f32>()?;
    Ok((
        LabelledFeatures {
            features: OwnedFeatures::new(data, cols)?,
            labels,
        },
        key,
    ))
}

/// The features for `key`: read from `path` when it holds exactly them, otherwise computed by
/// `compute` and written there (a stale or unreadable cache is replaced, with a warning).
pub fn cached_features(
    path: &Path,
    key: &CacheKey,
    compute: impl FnOnce() -> Result<LabelledFeatures>,
) -> Result<(LabelledFeatures, CacheStatus)> {
    let status = if path.exists() {
        match load_features(path) {
            Ok((data, found)) if &found == key => return Ok((data, CacheStatus::Hit)),
            Ok((_, found)) => {
                tracing::warn!(
                    "{}: stale feature cache (made for weights {} / {} samples), recomputing",
                    path.display(),
                    short(&found.weights),
                    found.samples
                );
                CacheStatus::Stale
            }
            Err(e) => {
                tracing::warn!("{e}: recomputing the feature cache");
                CacheStatus::Stale
            }
        }
    } else {
        CacheStatus::Missing
    };
    let data = compute()?;
    save_features(path, &data, key)?;
    Ok((data, status))
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
