//! Hostile and broken input (issue 13): files crafted to make a reader allocate, recurse or spin
//! without bound must be refused early with an error naming the file and what is wrong. Every
//! hostile file is generated here; none is committed.

use std::collections::BTreeMap;
use std::path::Path;

use byol_core::checkpoint::{load_training_state, save_training_state};
use byol_core::io::{write_safetensors, SafetensorsFile, ENCODER_CONFIG_KEY, MODEL_CONFIG_KEY};
use byol_core::optim::{Lars, LarsConfig};
use byol_core::weights::load_encoder;
use byol_tests::{save_tiny_encoder, tiny_byol};
use candle_core::Device;

/// Rewrites the safetensors file at `path` with metadata `key` passed through `edit` (JSON).
fn edit_metadata(path: &Path, key: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let file = SafetensorsFile::read(path, &Device::Cpu).unwrap();
    let mut meta: BTreeMap<String, String> = file.metadata.clone().into_iter().collect();
    let mut value: serde_json::Value = serde_json::from_str(&meta[key]).unwrap();
    edit(&mut value);
    meta.insert(key.into(), value.to_string());
    write_safetensors(path, file.tensors.into_iter().collect(), meta).unwrap();
}

#[test]
fn encoder_metadata_cannot_drive_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.safetensors");
    save_tiny_encoder(&path, 0);
    // Before the check this reserved ~352 GB for a file of a few hundred kilobytes.
    edit_metadata(&path, ENCODER_CONFIG_KEY, |v| v["width"] = 100_000.into());
    let message = load_encoder(&path, &Device::Cpu, None)
        .err()
        .expect("refused")
        .to_string();
    assert!(message.contains("huge.safetensors"), "{message}");
    assert!(message.contains("conv1.weight"), "{message}");

    // An overflowing product is a clean error, not a panic.
    edit_metadata(&path, ENCODER_CONFIG_KEY, |v| {
        v["base_channels"] = serde_json::json!(u64::MAX)
    });
    let message = load_encoder(&path, &Device::Cpu, None)
        .err()
        .expect("refused")
        .to_string();
    assert!(message.contains("huge.safetensors"), "{message}");
}

#[test]
fn training_state_metadata_cannot_drive_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    let model = tiny_byol(0);
    save_training_state(
        &path,
        &model,
        &Lars::new(LarsConfig::default()),
        3,
        Default::default(),
    )
    .unwrap();
    assert!(load_training_state(&path, &Device::Cpu).is_ok());
    edit_metadata(&path, MODEL_CONFIG_KEY, |v| {
        v["projector"]["hidden_dim"] = 10_000_000.into()
    });
    let message = load_training_state(&path, &Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(message.contains("state.safetensors"), "{message}");
    assert!(message.contains("online.projector.0.weight"), "{message}");
}
