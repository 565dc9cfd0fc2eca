//! Checkpoints: encoder and training-state round trips, exact resume, torchvision-style files,
//! and the error paths (wrong shape, missing tensor, truncated or foreign file, failed write).

use std::collections::BTreeMap;

use byol_core::checkpoint::{load_training_state, save_training_state};
use byol_core::io::{write_safetensors, SafetensorsFile, ENCODER_CONFIG_KEY};
use byol_core::nn::ResNetConfig;
use byol_core::optim::{Lars, LarsConfig};
use byol_core::weights::{load_encoder, save_encoder};
use byol_tests::{fixture, relative_error, strip_prefix, tiny_byol, views};
use candle_core::{Device, ModuleT};

fn lars() -> Lars {
    Lars::new(LarsConfig {
        weight_decay: 1e-4,
        ..LarsConfig::default()
    })
}

#[test]
fn encoder_round_trip_keeps_every_tensor_and_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("encoder.safetensors");
    let model = tiny_byol(3);
    let mut extra = BTreeMap::new();
    extra.insert("byol.step".to_string(), "7".to_string());
    save_encoder(&path, &model, extra).unwrap();

    let file = SafetensorsFile::read(&path, &Device::Cpu).unwrap();
    assert_eq!(file.metadata["format"], "pt");
    assert_eq!(file.metadata["byol.step"], "7");
    assert!(file
        .tensors
        .contains_key("layer4.1.bn2.num_batches_tracked"));
    assert!(!file.tensors.keys().any(|k| k.starts_with("encoder.")));

    let loaded = load_encoder(&path, &Device::Cpu, None).unwrap();
    assert_eq!(loaded.encoder.config(), &model.config().encoder);
    let (x, _) = views(2, 16, 1);
    let a = model.encoder().forward_t(&x, false).unwrap();
    let b = loaded.encoder.forward_t(&x, false).unwrap();
    assert_eq!(relative_error(&b, &a), 0.0);
}

#[test]
fn a_torchvision_state_dict_loads_with_an_explicit_config_and_fc_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = SafetensorsFile::read(
        &fixture("parity/resnet18_imagenet_stem.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut tensors: Vec<_> = strip_prefix(&fixture.tensors, "model.")
        .into_iter()
        .collect();
    let fc = candle_core::Tensor::zeros((10, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    tensors.push(("fc.weight".to_string(), fc));
    let path = dir.path().join("tv.safetensors");
    write_safetensors(&path, tensors, BTreeMap::new()).unwrap();

    let config = ResNetConfig {
        base_channels: 8,
        ..ResNetConfig::new(18)
    };
    // No config inside: the shapes give it (a 7×7 stem of 8 channels, basic blocks 2-2-2-2).
    let inferred = load_encoder(&path, &Device::Cpu, None).unwrap();
    assert_eq!(inferred.encoder.config(), &config);
    load_encoder(&path, &Device::Cpu, Some(&config)).unwrap();

    // The same file into a wider network: the first mismatch is named.
    let err = load_encoder(&path, &Device::Cpu, Some(&ResNetConfig::new(18)))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("conv1.weight") && err.contains("shape"),
        "{err}"
    );

    // A missing tensor is named too.
    let mut partial: Vec<_> = strip_prefix(&fixture.tensors, "model.")
        .into_iter()
        .filter(|(k, _)| k != "layer3.1.conv2.weight")
        .collect();
    partial.sort_by(|a, b| a.0.cmp(&b.0));
    write_safetensors(&path, partial, BTreeMap::new()).unwrap();
    let err = load_encoder(&path, &Device::Cpu, Some(&config))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("layer3.1.conv2.weight") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn truncated_and_foreign_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    save_encoder(&good, &tiny_byol(0), BTreeMap::new()).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_encoder(&truncated, &Device::Cpu, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("truncated.safetensors") && err.contains("safetensors"),
        "{err}"
    );

    // Read once: with an explicit architecture the first error is still the one reported (the
    // file is not re-read as a plain state dict).
    let arch = tiny_byol(0).config().encoder.clone();
    let err = load_encoder(&truncated, &Device::Cpu, Some(&arch))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("truncated.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
    let file = SafetensorsFile::read(&good, &Device::Cpu).unwrap();
    let malformed = dir.path().join("malformed.safetensors");
    let meta = BTreeMap::from([(ENCODER_CONFIG_KEY.to_string(), "{not json".to_string())]);
    write_safetensors(&malformed, file.tensors.into_iter().collect(), meta).unwrap();
    let err = load_encoder(&malformed, &Device::Cpu, Some(&arch))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(ENCODER_CONFIG_KEY) && err.contains("malformed"),
        "{err}"
    );

    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, "not a checkpoint").unwrap();
    let err = load_encoder(&foreign, &Device::Cpu, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("notes.txt"), "{err}");

    let missing = dir.path().join("absent.safetensors");
    let err = load_training_state(&missing, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("absent.safetensors"), "{err}");

    // An encoder file is not a training state: the missing key is named.
    let err = load_training_state(&good, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("byol.model"), "{err}");
}

#[test]
fn a_failed_write_leaves_the_previous_checkpoint_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("encoder.safetensors");
    save_encoder(&path, &tiny_byol(0), BTreeMap::new()).unwrap();
    let before = std::fs::read(&path).unwrap();
    save_encoder(&path, &tiny_byol(1), BTreeMap::new()).unwrap();
    assert_ne!(std::fs::read(&path).unwrap(), before, "rewritten in place");
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // Writing where a directory stands fails cleanly and names the path.
    let blocked = dir.path().join("blocked");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("keep"), b"x").unwrap();
    let err = save_encoder(&blocked, &tiny_byol(0), BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("blocked"), "{err}");
    assert_eq!(std::fs::read(blocked.join("keep")).unwrap(), b"x");
}

#[test]
fn training_resumes_exactly_from_a_saved_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    let mut model = tiny_byol(5);
    let mut opt = lars();
    let scale = |name: &str| {
        if name.starts_with("predictor.") {
            10.0
        } else {
            1.0
        }
    };
    for step in 0..2u64 {
        let (v1, v2) = views(4, 12, step);
        model
            .train_step(&v1, &v2, &mut opt, 0.05, 0.9, &scale)
            .unwrap();
    }
    let mut extra = BTreeMap::new();
    extra.insert("byol.rng".to_string(), "seed=5".to_string());
    save_training_state(&path, &model, &opt, 2, extra).unwrap();

    let mut resumed = load_training_state(&path, &Device::Cpu).unwrap();
    assert_eq!(resumed.step, 2);
    assert_eq!(resumed.metadata["byol.rng"], "seed=5");
    assert_eq!(resumed.model.config(), model.config());
    for step in 2..4u64 {
        let (v1, v2) = views(4, 12, step);
        let a = model
            .train_step(&v1, &v2, &mut opt, 0.05, 0.9, &scale)
            .unwrap();
        let b = resumed
            .model
            .train_step(&v1, &v2, &mut resumed.optimizer, 0.05, 0.9, &scale)
            .unwrap();
        assert_eq!(a.loss, b.loss, "step {step}");
    }
    // Every online and target tensor, buffers included, is identical.
    for (store_a, store_b) in [
        (model.online_store(), resumed.model.online_store()),
        (
            model.target_store().unwrap(),
            resumed.model.target_store().unwrap(),
        ),
    ] {
        for e in store_a.entries() {
            let f32 = |t: &candle_core::Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
            let other = f32(store_b.get(&e.name).unwrap().var.as_tensor());
            assert_eq!(
                relative_error(&other, &f32(e.var.as_tensor())),
                0.0,
                "{}",
                e.name
            );
        }
    }
}

#[test]
fn training_changes_online_and_target_and_reports_a_finite_loss() {
    let mut model = tiny_byol(9);
    let mut opt = lars();
    let before = model
        .online_store()
        .get("encoder.conv1.weight")
        .unwrap()
        .var
        .as_tensor()
        .copy()
        .unwrap();
    let target_before = model
        .target_store()
        .unwrap()
        .get("encoder.conv1.weight")
        .unwrap()
        .var
        .as_tensor()
        .copy()
        .unwrap();
    assert_eq!(
        relative_error(&target_before, &before),
        0.0,
        "target copied from online"
    );
    let (v1, v2) = views(4, 12, 0);
    let out = model
        .train_step(&v1, &v2, &mut opt, 0.1, 0.5, &|_| 1.0)
        .unwrap();
    assert!(
        out.loss.is_finite() && out.loss > 0.0 && out.loss <= 8.0,
        "{out:?}"
    );
    assert!(out.projection_std > 0.0);
    let after = model
        .online_store()
        .get("encoder.conv1.weight")
        .unwrap()
        .var
        .as_tensor()
        .clone();
    let target_after = model
        .target_store()
        .unwrap()
        .get("encoder.conv1.weight")
        .unwrap()
        .var
        .as_tensor()
        .clone();
    assert!(relative_error(&after, &before) > 0.0);
    // τ = 0.5: the target is half-way between its old value and the new online weights.
    let expected = ((target_before * 0.5).unwrap() + (after * 0.5).unwrap()).unwrap();
    assert!(relative_error(&target_after, &expected) < 1e-6);
}

#[test]
fn identical_tensors_and_metadata_give_byte_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = || {
        vec![
            (
                "b.weight".to_string(),
                candle_core::Tensor::arange(0f32, 6., &Device::Cpu).unwrap(),
            ),
            (
                "a.count".to_string(),
                candle_core::Tensor::new(&[3i64], &Device::Cpu).unwrap(),
            ),
        ]
    };
    let metadata: BTreeMap<String, String> = (0..12)
        .map(|i| (format!("key.{i}"), format!("value {i}")))
        .collect();
    let mut files = Vec::new();
    for n in 0..4 {
        let path = dir.path().join(format!("{n}.safetensors"));
        write_safetensors(&path, tensors(), metadata.clone()).unwrap();
        files.push(std::fs::read(&path).unwrap());
        // Still an ordinary safetensors file.
        let back = SafetensorsFile::read(&path, &Device::Cpu).unwrap();
        assert_eq!(back.metadata["key.7"], "value 7");
        assert_eq!(back.metadata["format"], "pt");
        assert_eq!(back.tensors["b.weight"].dims(), [6]);
    }
    assert!(files.windows(2).all(|w| w[0] == w[1]), "files differ");
    // Encoders too: the same model saved twice.
    let model = tiny_byol(3);
    let [a, b] = ["e1", "e2"].map(|n| dir.path().join(format!("{n}.safetensors")));
    for p in [&a, &b] {
        save_encoder(p, &model, BTreeMap::new()).unwrap();
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}
