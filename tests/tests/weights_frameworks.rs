//! Checkpoints of other BYOL frameworks (issue 19): solo-learn, mmselfsup 0.x and 1.x /
//! mmpretrain, lightly, VISSL, PyTorch Lightning, torch.save's pre-1.6 format and a pickled
//! module, each in the
//! framework's exact layout (committed fixtures of `scripts/make_framework_fixtures.py`, with
//! torch's float64 features of their online and target encoders), read without running anything;
//! hostile checkpoints that would run a shell command under `torch.load` are refused.

use std::collections::BTreeMap;
use std::path::Path;

use byol_core::checkpoint::save_training_state;
use byol_core::import::pickle::{self, Value};
use byol_core::io::{write_safetensors, SafetensorsFile};
use byol_core::nn::{Padding, ResNetConfig, Stem};
use byol_core::optim::{Lars, LarsConfig};
use byol_core::weights::{
    detect_format, inspect_weights, load_encoder, load_encoder_part, read_encoder_weights,
    read_weights, Framework, Part, PartKind, WeightsFormat,
};
use byol_core::Error;
use byol_tests::{fixture, relative_error, save_tiny_encoder, tiny_byol};
use candle_core::{Device, ModuleT, Tensor};

/// The bound: features within 1e-5 of torch's, relative to their scale.
const TOLERANCE: f64 = 1e-5;

/// Where a shell command of the hostile fixtures would leave its mark.
const MARKER: &str = "/tmp/byol-rs-pwned-by-checkpoint";

fn references() -> SafetensorsFile {
    SafetensorsFile::read(&fixture("frameworks/features.safetensors"), &Device::Cpu)
        .expect("fixture present: run scripts/make_framework_fixtures.py")
}

/// A narrow torchvision ResNet as the fixtures hold it (stem 2 channels).
fn narrow(depth: usize, stem: Stem) -> ResNetConfig {
    ResNetConfig {
        depth,
        width: 1,
        stem,
        in_channels: 3,
        base_channels: 2,
        zero_init_residual: false,
        padding: Padding::Torch,
    }
}

struct Case {
    file: &'static str,
    format: WeightsFormat,
    framework: Framework,
    config: ResNetConfig,
    target: bool,
}

fn cases() -> Vec<Case> {
    let case = |file, format, framework, config, target| Case {
        file,
        format,
        framework,
        config,
        target,
    };
    let zip = WeightsFormat::TorchZip;
    let r18 = narrow(18, Stem::Imagenet);
    vec![
        case(
            "solo-learn.ckpt",
            zip,
            Framework::SoloLearn,
            r18.clone(),
            true,
        ),
        // solo-learn's CIFAR stem: 3×3, stride 1, padding 2, no max-pool.
        case(
            "solo-learn-cifar-2021.ckpt",
            zip,
            Framework::SoloLearn,
            narrow(18, Stem::SmallPadded),
            true,
        ),
        case(
            "mmselfsup-0.x.pth",
            zip,
            Framework::MmSelfSup0,
            r18.clone(),
            true,
        ),
        case(
            "mmselfsup-1.x.pth",
            zip,
            Framework::MmSelfSup1,
            r18.clone(),
            true,
        ),
        case("lightly.ckpt", zip, Framework::Lightly, r18.clone(), true),
        // VISSL's "resnet" of DEPTH 18: bottleneck blocks 2-2-2-2.
        case(
            "vissl.torch",
            zip,
            Framework::Vissl,
            narrow(26, Stem::Imagenet),
            true,
        ),
        case(
            "lightning.ckpt",
            zip,
            Framework::Lightning,
            r18.clone(),
            false,
        ),
        case(
            "torchvision-legacy.pth",
            WeightsFormat::TorchLegacy,
            Framework::Torchvision,
            r18.clone(),
            false,
        ),
        // `torch.save(model)`: the parameters of the pickled module objects.
        case("torch-module.pt", zip, Framework::Torchvision, r18, false),
    ]
}

fn features(path: &Path, part: Part, input: &Tensor) -> (Tensor, ResNetConfig, Framework) {
    let loaded = load_encoder_part(path, &Device::Cpu, None, part)
        .unwrap_or_else(|e| panic!("{}: {part}: {e}", path.display()));
    let feats = loaded.encoder.forward_t(input, false).unwrap();
    (
        feats,
        loaded.encoder.config().clone(),
        loaded.source.framework,
    )
}

#[test]
fn every_framework_layout_loads_both_encoders_with_torch_features() {
    let refs = references();
    let input = &refs.tensors["input"];
    for case in cases() {
        let path = fixture(&format!("frameworks/{}", case.file));
        let name = case.file.rsplit_once('.').unwrap().0;
        assert_eq!(detect_format(&path).unwrap(), case.format, "{}", case.file);

        // No --arch: the architecture comes from the shapes and the framework's stem.
        let (online, config, framework) = features(&path, Part::Online, input);
        assert_eq!(framework, case.framework, "{}", case.file);
        assert_eq!(config, case.config, "{}", case.file);
        let err = relative_error(&online, &refs.tensors[&format!("{name}.online")]);
        eprintln!("{}: online features rel. error {err:.2e}", case.file);
        assert!(err <= TOLERANCE, "{}: online {err}", case.file);

        if case.target {
            let (target, _, _) = features(&path, Part::Target, input);
            let expected = &refs.tensors[&format!("{name}.target")];
            let err = relative_error(&target, expected);
            eprintln!("{}: target features rel. error {err:.2e}", case.file);
            assert!(err <= TOLERANCE, "{}: target {err}", case.file);
            // The two parts really are different networks.
            assert!(relative_error(&online, expected) > 1e-2, "{}", case.file);
        } else {
            let err = load_encoder_part(&path, &Device::Cpu, None, Part::Target)
                .err()
                .expect("no target encoder");
            assert!(matches!(err, Error::Format { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains(case.file) && msg.contains("no target") && msg.contains("--part"),
                "{msg}"
            );
        }

        // The encoder in torchvision names, whatever the file called it.
        let file = read_weights(&path, &Device::Cpu).unwrap();
        assert!(
            file.tensors.contains_key("conv1.weight")
                && file.tensors.contains_key("layer4.1.bn2.running_var")
                || file.tensors.contains_key("layer4.1.bn3.running_var"),
            "{}: {:?}",
            case.file,
            file.tensors.keys().take(5).collect::<Vec<_>>()
        );
        assert!(
            file.metadata["byol.import"].contains(case.framework.describe()),
            "{:?}",
            file.metadata
        );
    }
}

#[test]
fn a_given_arch_is_used_and_checked_against_the_tensors() {
    let path = fixture("frameworks/solo-learn-cifar-2021.ckpt");
    // The same shapes with another stem are the user's call (and give other features) ...
    let arch = narrow(18, Stem::Small);
    let loaded = load_encoder_part(&path, &Device::Cpu, Some(&arch), Part::Target).unwrap();
    assert_eq!(loaded.encoder.config(), &arch);
    // ... other shapes are refused naming the file and the tensor.
    let err = load_encoder(&path, &Device::Cpu, Some(&ResNetConfig::new(18)))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("solo-learn-cifar-2021.ckpt") && err.contains("conv1.weight"),
        "{err}"
    );
}

#[test]
fn inspect_names_format_framework_parts_architecture_and_shapes() {
    let path = fixture("frameworks/solo-learn.ckpt");
    let i = inspect_weights(&path, Part::Online).unwrap();
    assert_eq!(i.format, WeightsFormat::TorchZip);
    assert_eq!(i.framework, Framework::SoloLearn);
    let count = |kind: PartKind| {
        i.parts
            .iter()
            .filter(|p| p.kind == kind)
            .map(|p| p.tensors)
            .sum::<usize>()
    };
    // ResNet-18 without fc: 20 convolutions and 20 BatchNorms of 5 tensors each.
    assert_eq!(count(PartKind::Online), 120);
    assert_eq!(count(PartKind::Target), 120);
    // Linear (weight, bias), BatchNorm (5), Linear (weight, bias).
    assert_eq!(count(PartKind::Projector), 9);
    assert_eq!(count(PartKind::TargetProjector), 9);
    assert_eq!(count(PartKind::Predictor), 9);
    assert_eq!(count(PartKind::Classifier), 2);
    assert_eq!(count(PartKind::TargetClassifier), 2);
    assert!(i.other.contains_key("optimizer_states"), "{:?}", i.other);
    let top: BTreeMap<_, _> = i.top_level.iter().cloned().collect();
    assert!(
        top["hyper_parameters"].contains("omegaconf.dictconfig.DictConfig")
            && top["hyper_parameters"].contains("never constructed"),
        "{top:?}"
    );
    assert!(top["hparams_type"].contains("not resolved"), "{top:?}");
    let e = i.encoder.as_ref().unwrap();
    assert_eq!(e.prefix, "state_dict.backbone.");
    assert_eq!(
        e.architecture.as_ref().unwrap().0,
        narrow(18, Stem::Imagenet)
    );
    assert_eq!(e.tensors.len(), 120);
    assert!(e
        .tensors
        .iter()
        .any(|(n, s)| n == "conv1.weight" && s == &[2, 3, 7, 7]));
    let text = i.to_string();
    for expected in [
        "solo-learn",
        "online encoder",
        "state_dict.momentum_backbone.",
        "predictor",
        "inferred from the shapes",
        "layer4.1.bn2.running_var",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }

    // mmselfsup 0.x keeps the online backbone twice: one encoder, its alias named.
    let i = inspect_weights(&fixture("frameworks/mmselfsup-0.x.pth"), Part::Target).unwrap();
    assert_eq!(i.framework, Framework::MmSelfSup0);
    assert_eq!(
        i.encoder.as_ref().unwrap().prefix,
        "state_dict.target_net.0."
    );
    assert!(
        i.parts
            .iter()
            .all(|p| p.kind != PartKind::Online || p.prefix == "state_dict.online_net.0."),
        "{:?}",
        i.parts
    );
    assert!(
        i.other.is_empty() || !i.other.contains_key("state_dict"),
        "{:?}",
        i.other
    );

    // The official DeepMind pickle: both encoders, the heads, the architecture.
    let i = inspect_weights(&fixture("import/byol-tiny-res50.pkl"), Part::Target).unwrap();
    assert_eq!(i.framework, Framework::DeepMind);
    assert!(i.parts.iter().any(|p| p.kind == PartKind::Target));
    assert_eq!(
        i.encoder
            .as_ref()
            .unwrap()
            .architecture
            .as_ref()
            .unwrap()
            .0
            .depth,
        50
    );

    // A file with no target encoder: the part says why, naming the file.
    let i = inspect_weights(&fixture("frameworks/lightning.ckpt"), Part::Target).unwrap();
    let why = i.encoder.unwrap_err();
    assert!(
        why.contains("lightning.ckpt") && why.contains("no target"),
        "{why}"
    );
}

#[test]
fn hostile_checkpoints_are_refused_and_nothing_runs() {
    let _ = std::fs::remove_file(MARKER);
    for (file, global) in [
        ("hostile-posix-system.ckpt", "posix.system"),
        ("hostile-os-system.ckpt", "os.system"),
        // Protocol 2 names Python 3's builtins `__builtin__`.
        ("hostile-eval.ckpt", "__builtin__.eval"),
        ("hostile-protocol4.ckpt", "posix.system"),
    ] {
        let path = fixture(&format!("frameworks/{file}"));
        for part in [Part::Online, Part::Target] {
            let err = read_encoder_weights(&path, &Device::Cpu, part)
                .err()
                .expect("refused");
            assert!(matches!(err, Error::Format { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains(file) && msg.contains(global) && msg.contains("refused"),
                "{msg}"
            );
        }
        let msg = inspect_weights(&path, Part::Online)
            .expect_err("refused")
            .to_string();
        assert!(msg.contains(global), "{msg}");
    }
    assert!(
        !Path::new(MARKER).exists(),
        "a hostile checkpoint ran its command"
    );
}

#[test]
fn the_inert_reader_keeps_unknown_objects_as_data_and_refuses_code() {
    // NEWOBJ of a class of a module that is not installed, BUILD with its state: a record.
    let p =
        b"\x80\x02cargparse\nNamespace\n)\x81}X\x02\x00\x00\x00lrG?\xb9\x99\x99\x99\x99\x99\x9asb.";
    match pickle::read_inert(p).unwrap() {
        Value::Record { class, state, .. } => {
            assert_eq!(class, "argparse.Namespace");
            assert!(state.is_some());
        }
        other => panic!("{other:?}"),
    }
    // The allow-list reader (official pickles) refuses the same name.
    assert!(pickle::read(p)
        .unwrap_err()
        .0
        .contains("argparse.Namespace"));
    // A REDUCE of a shell command is refused by name, in either reader and any protocol.
    for evil in [
        &b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R."[..],
        b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.",
        b"\x80\x02c__builtin__\neval\nX\x01\x00\x00\x001\x85R.",
        b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x0asubprocess\x8c\x05Popen\x93)R.",
    ] {
        let inert = pickle::read_inert(evil).unwrap_err().0;
        assert!(inert.contains("refused global"), "{inert}");
        assert!(pickle::read(evil).is_err());
    }
    assert!(pickle::is_code_global("os", "system"));
    assert!(pickle::is_code_global("builtins", "getattr"));
    assert!(!pickle::is_code_global(
        "omegaconf.dictconfig",
        "DictConfig"
    ));
    assert!(!pickle::is_code_global("builtins", "set"));
}

#[test]
fn our_training_state_gives_either_encoder_and_ambiguity_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // A training state whose target differs from its online encoder.
    let model = tiny_byol(0);
    let other: std::collections::HashMap<String, Tensor> = tiny_byol(1)
        .online_store()
        .tensors_under("encoder.")
        .into_iter()
        .collect();
    model
        .target_store()
        .unwrap()
        .load_under("encoder.", &other, false)
        .unwrap();
    let state = dir.path().join("state.safetensors");
    save_training_state(
        &state,
        &model,
        &Lars::new(LarsConfig::default()),
        3,
        Default::default(),
    )
    .unwrap();
    let raw = SafetensorsFile::read(&state, &Device::Cpu).unwrap();
    for part in [Part::Online, Part::Target] {
        let loaded = load_encoder_part(&state, &Device::Cpu, None, part).unwrap();
        assert_eq!(loaded.source.framework, Framework::ByolRsState);
        assert_eq!(loaded.encoder.config(), &model.config().encoder);
        let name = "layer1.0.conv1.weight";
        let got = loaded.store.get(name).unwrap().var.as_tensor().clone();
        let expected = &raw.tensors[&format!("{part}.encoder.{name}")];
        assert_eq!(relative_error(&got, expected), 0.0, "{part}");
    }

    // Our encoder file has only the online encoder: --part target says so.
    let encoder = dir.path().join("encoder.safetensors");
    save_tiny_encoder(&encoder, 0);
    let msg = load_encoder_part(&encoder, &Device::Cpu, None, Part::Target)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("encoder.safetensors") && msg.contains("no target"),
        "{msg}"
    );

    // Two online-looking ResNets: which one is meant cannot be guessed.
    let file = SafetensorsFile::read(&encoder, &Device::Cpu).unwrap();
    let mut twice: Vec<(String, Tensor)> = Vec::new();
    for (k, t) in &file.tensors {
        twice.push((format!("student.{k}"), t.clone()));
        twice.push((format!("backbone.{k}"), t.clone()));
    }
    let ambiguous = dir.path().join("two.safetensors");
    write_safetensors(&ambiguous, twice, BTreeMap::new()).unwrap();
    let msg = load_encoder(&ambiguous, &Device::Cpu, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("two.safetensors")
            && msg.contains("ambiguous")
            && msg.contains("`student.`")
            && msg.contains("`backbone.`"),
        "{msg}"
    );

    // A 3×3 stem outside a framework that fixes its meaning: the architecture is asked for.
    let plain = dir.path().join("plain.safetensors");
    write_safetensors(
        &plain,
        file.tensors.clone().into_iter().collect(),
        BTreeMap::new(),
    )
    .unwrap();
    let msg = load_encoder(&plain, &Device::Cpu, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("plain.safetensors") && msg.contains("--stem small"),
        "{msg}"
    );
}
