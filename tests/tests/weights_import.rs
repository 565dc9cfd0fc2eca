//! Weights from other frameworks: torchvision/timm `.pth` state dicts and the official DeepMind
//! BYOL pickles through our restricted pickle readers, on committed
//! fixtures of `scripts/make_import_fixtures.py` (references computed by torch in float64).

use byol_core::import::{deepmind, pickle};
use byol_core::io::ENCODER_CONFIG_KEY;
use byol_core::nn::{Padding, ResNet, ResNetConfig, Stem, VarStore};
use byol_core::weights::{detect_format, load_encoder, read_weights, WeightsFormat};
use byol_core::Error;
use byol_hub::{HubRef, WeightsRef};
use byol_tests::{fixture, relative_error};
use candle_core::{Device, ModuleT};

const TOLERANCE: f64 = 1e-4;

fn tiny18() -> ResNetConfig {
    ResNetConfig {
        base_channels: 4,
        ..ResNetConfig::new(18)
    }
}

fn reference(name: &str) -> byol_core::io::SafetensorsFile {
    byol_core::io::SafetensorsFile::read(&fixture(name), &Device::Cpu)
        .expect("fixture present: run scripts/make_import_fixtures.py")
}

#[test]
fn torchvision_pth_state_dict_loads_with_arch_and_matches_torch_features() {
    let reference = reference("import/resnet18-tiny-features.safetensors");
    for file in [
        "import/resnet18-tiny.pth",
        "import/resnet18-tiny-nested.pth",
    ] {
        let path = fixture(file);
        assert_eq!(detect_format(&path).unwrap(), WeightsFormat::TorchZip);
        // No config inside: the shapes say it (a 7×7 stem is torchvision's ImageNet stem) ...
        let inferred = load_encoder(&path, &Device::Cpu, None).unwrap();
        assert_eq!(inferred.encoder.config(), &tiny18());
        // ... and a given architecture is used.
        let loaded = load_encoder(&path, &Device::Cpu, Some(&tiny18())).unwrap();
        let feats = loaded
            .encoder
            .forward_t(&reference.tensors["input"], false)
            .unwrap();
        let err = relative_error(&feats, &reference.tensors["features"]);
        eprintln!("{file}: features rel. error {err:.2e}");
        assert!(err < TOLERANCE, "{file}: {err}");
    }
    // The wrong architecture is named by its first mismatching tensor.
    let err = load_encoder(
        &fixture("import/resnet18-tiny.pth"),
        &Device::Cpu,
        Some(&ResNetConfig::new(18)),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("conv1.weight") && err.contains("resnet18-tiny.pth"),
        "{err}"
    );
}

#[test]
fn official_byol_pickle_imports_with_tf_same_padding_and_matches_reference() {
    let path = fixture("import/byol-tiny-res50.pkl");
    assert_eq!(detect_format(&path).unwrap(), WeightsFormat::Pickle);
    let file = read_weights(&path, &Device::Cpu).unwrap();
    assert_eq!(
        file.metadata.get("byol.step").map(String::as_str),
        Some("10")
    );
    assert!(file
        .tensors
        .keys()
        .all(|k| !k.contains("projector") && !k.contains("predictor")));
    assert_eq!(file.tensors["conv1.weight"].dims(), &[2, 3, 7, 7]);
    assert_eq!(
        file.tensors["layer1.0.downsample.0.weight"].dims(),
        &[8, 2, 1, 1]
    );
    assert_eq!(file.tensors["layer4.2.bn3.running_var"].dims(), &[64]);

    let loaded = load_encoder(&path, &Device::Cpu, None).unwrap();
    let config = loaded.encoder.config().clone();
    assert_eq!(
        config,
        ResNetConfig {
            depth: 50,
            width: 1,
            stem: Stem::Imagenet,
            in_channels: 3,
            base_channels: 2,
            zero_init_residual: false,
            padding: Padding::TfSame,
        }
    );
    assert!(loaded.metadata.contains_key(ENCODER_CONFIG_KEY));
    let reference = reference("import/byol-tiny-res50-features.safetensors");
    let input = &reference.tensors["input"];
    let feats = loaded.encoder.forward_t(input, false).unwrap();
    let err = relative_error(&feats, &reference.tensors["features"]);
    eprintln!("official-format import: features rel. error {err:.2e}");
    assert!(err < TOLERANCE, "{err}");

    // The same weights with PyTorch's symmetric padding give other features: SAME matters.
    let torch_cfg = ResNetConfig {
        padding: Padding::Torch,
        ..config
    };
    let mut store = VarStore::new(&Device::Cpu, 0);
    let encoder = ResNet::new(&mut store.root(), &torch_cfg).unwrap();
    store.load_under("", &file.tensors, false).unwrap();
    let torch_err = relative_error(
        &encoder.forward_t(input, false).unwrap(),
        &reference.tensors["features"],
    );
    assert!(
        torch_err > 1e-2,
        "symmetric padding should differ: {torch_err}"
    );
    // A --arch check against the declared shape still passes (padding is not a shape).
    let arch = ResNetConfig {
        base_channels: 2,
        ..ResNetConfig::new(50)
    };
    load_encoder(&path, &Device::Cpu, Some(&arch)).unwrap();
}

#[test]
fn malicious_pickles_are_refused_without_running_anything() {
    for (file, global) in [
        ("import/malicious-os-system.pkl", "posix.system"),
        ("import/malicious-eval.pkl", "__builtin__.eval"),
    ] {
        let path = fixture(file);
        let err = read_weights(&path, &Device::Cpu).err().unwrap();
        assert!(matches!(err, Error::Format { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(global)
                && msg.contains("refused")
                && msg.contains(file.rsplit('/').next().unwrap()),
            "{msg}"
        );
    }
    assert!(!std::path::Path::new("/tmp/byol-pwned").exists());
    // Opcodes outside the allowed set are refused by name: INST (`i`) and PERSID (`P`).
    let inst = b"\x80\x02ios\nsystem\n(S'true'\ntR.";
    assert!(pickle::read(inst).unwrap_err().0.contains("refused opcode"));
    assert!(pickle::read(b"\x80\x02P0\n.")
        .unwrap_err()
        .0
        .contains("refused opcode"));
    // STACK_GLOBAL (protocol 4) goes through the same allow-list.
    let stack_global = b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93)R.";
    assert!(pickle::read(stack_global)
        .unwrap_err()
        .0
        .contains("builtins.exec"));
    // Truncated input is an error, not a panic.
    let good = std::fs::read(fixture("import/byol-tiny-res50.pkl")).unwrap();
    assert!(pickle::read(&good[..good.len() / 2]).is_err());
}

#[test]
fn haiku_names_map_to_torchvision_names() {
    let cases = [
        ("res_net50/~/initial_conv", Some("conv1")),
        ("res_net50/~/initial_batchnorm", Some("bn1")),
        (
            "res_net50/~/block_group_0/~/block_0/~/conv_2",
            Some("layer1.0.conv3"),
        ),
        (
            "res_net50/~/block_group_3/~/block_2/~/batchnorm_1",
            Some("layer4.2.bn2"),
        ),
        (
            "res_net50/~/block_group_1/~/block_0/~/shortcut_conv",
            Some("layer2.0.downsample.0"),
        ),
        (
            "res_net50/~/block_group_1/~/block_0/~/shortcut_batchnorm",
            Some("layer2.0.downsample.1"),
        ),
        ("projector/~/linear", None),
        ("predictor/~/batch_norm", None),
    ];
    for (haiku, tv) in cases {
        assert_eq!(
            deepmind::torchvision_prefix(haiku).as_deref(),
            tv,
            "{haiku}"
        );
    }
}

#[test]
fn weights_references_parse() {
    let hub = |s: &str| match s.parse::<WeightsRef>().unwrap() {
        WeightsRef::Hub(h) => h,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        hub("hf://me/byol-r50"),
        HubRef {
            repo: "me/byol-r50".into(),
            revision: None,
            file: None
        }
    );
    let h = hub("hf://me/byol-r50@v1.0/weights/encoder.safetensors");
    assert_eq!(
        (h.repo.as_str(), h.revision(), h.file()),
        ("me/byol-r50", "v1.0", "weights/encoder.safetensors")
    );
    assert_eq!(
        h.to_string(),
        "hf://me/byol-r50@v1.0/weights/encoder.safetensors"
    );
    assert_eq!(hub("hf://me/r").file(), "model.safetensors");
    assert_eq!(
        "runs/x/encoder.safetensors".parse::<WeightsRef>().unwrap(),
        WeightsRef::Local("runs/x/encoder.safetensors".into())
    );
    for bad in [
        "hf://",
        "hf://me",
        "hf://me/",
        "hf://me/r@",
        "hf://me/r/../x",
        "hf://m e/r",
        "",
    ] {
        let err = bad.parse::<WeightsRef>().unwrap_err().to_string();
        assert!(err.contains("weights"), "{bad}: {err}");
    }
}
