//! Helpers shared by the workspace-level integration tests in `tests/`.

pub mod fixtures;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use byol_core::byol::{Byol, ByolConfig};
use byol_core::nn::{MlpConfig, ResNetConfig, Stem};
use candle_core::{Device, Tensor};

/// A committed fixture file under `tests/fixtures/`.
pub fn fixture(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(relative)
}

/// The tensors of `map` whose names start with `prefix`, prefix stripped.
pub fn strip_prefix(map: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    map.iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
        .collect()
}

/// max |a − b| / max |b|: the error relative to the scale of the reference.
pub fn relative_error(actual: &Tensor, expected: &Tensor) -> f64 {
    let a: Vec<f32> = actual.flatten_all().unwrap().to_vec1().unwrap();
    let e: Vec<f32> = expected.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), e.len(), "compared tensors differ in size");
    let scale = e.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-12);
    let diff = a
        .iter()
        .zip(&e)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    diff / scale
}

/// A BYOL model small enough for tests: ResNet-18 small stem with 4 base channels.
pub fn tiny_byol_config() -> ByolConfig {
    let mut config = ByolConfig::new(ResNetConfig {
        depth: 18,
        width: 1,
        stem: Stem::Small,
        in_channels: 3,
        base_channels: 4,
        zero_init_residual: false,
    });
    config.projector = MlpConfig {
        hidden_dim: 32,
        output_dim: 16,
    };
    config.predictor = config.projector;
    config
}

pub fn tiny_byol(seed: u64) -> Byol {
    Byol::new(&tiny_byol_config(), &Device::Cpu, seed).expect("the tiny model builds")
}

/// Deterministic pseudo-random views `[n, 3, size, size]`.
pub fn views(n: usize, size: usize, seed: u64) -> (Tensor, Tensor) {
    let make = |s: u64| {
        let mut state = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let data: Vec<f32> = (0..n * 3 * size * size)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(data, (n, 3, size, size), &Device::Cpu).unwrap()
    };
    (make(seed * 2 + 1), make(seed * 2 + 2))
}

/// Writes the online encoder of [`tiny_byol`]`(seed)` as an encoder file (torchvision names,
/// config in the metadata) and returns its path.
pub fn write_tiny_encoder(dir: &Path, seed: u64) -> PathBuf {
    let path = dir.join(format!("tiny-encoder-{seed}.safetensors"));
    byol_core::checkpoint::save_encoder(&path, &tiny_byol(seed), BTreeMap::new())
        .expect("the tiny encoder is written");
    path
}
