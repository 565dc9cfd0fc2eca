//! Numerical parity with PyTorch/torchvision on committed fixtures written by
//! `scripts/make_parity_fixtures.py` (references computed in float64 from the same float32
//! weights). Tolerance: 1e-4 relative to the scale of the reference.
//!
//! Device-parametrised: the networks run on `BYOL_TEST_DEVICE` (`byol_tests::test_device`, CPU by
//! default), with the same tolerance on a GPU when TF32 is off (`NVIDIA_TF32_OVERRIDE=0`).

use byol_core::byol::Byol;
use byol_core::io::SafetensorsFile;
use byol_core::nn::{Padding, ResNet, ResNetConfig, VarStore};
use byol_core::weights::{infer_architecture, ShapeHints};
use byol_core::Error;
use byol_tests::{
    device_tolerance, fixture, relative_error, strip_prefix, test_device, tiny_byol_config,
};
use candle_core::{DType, Device, ModuleT};

const TOLERANCE: f64 = 1e-4;

fn read(name: &str) -> SafetensorsFile {
    SafetensorsFile::read(
        &fixture(&format!("parity/{name}.safetensors")),
        test_device(),
    )
    .expect("fixture present: run scripts/make_parity_fixtures.py")
}

fn check_encoder(name: &str) {
    let file = read(name);
    let meta = |k: &str| file.metadata[k].clone();
    let config = ResNetConfig {
        depth: meta("depth").parse().unwrap(),
        width: 1,
        stem: meta("stem").parse().unwrap(),
        in_channels: meta("in_channels").parse().unwrap(),
        base_channels: meta("base_channels").parse().unwrap(),
        zero_init_residual: false,
        padding: Default::default(),
    };
    // The architecture read back from the torchvision state dict's shapes is the one built.
    let weights = strip_prefix(&file.tensors, "model.");
    let shapes = weights
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    let hints = ShapeHints {
        small_stem: Some(config.stem),
        padding: Padding::Torch,
    };
    assert_eq!(
        infer_architecture(&shapes, hints),
        Ok(config.clone()),
        "{name}"
    );

    let mut store = VarStore::new(test_device(), 0);
    let encoder = ResNet::new(&mut store.root(), &config).unwrap();
    store.load_under("", &weights, false).unwrap();
    let input = &file.tensors["input"];

    let eval = encoder.forward_t(input, false).unwrap();
    let err_eval = relative_error(&eval, &file.tensors["expected.eval_features"]);
    let train = encoder.forward_t(input, true).unwrap();
    let err_train = relative_error(&train, &file.tensors["expected.train_features"]);
    eprintln!("{name}: eval features rel. error {err_eval:.2e}, train features {err_train:.2e}");
    let tolerance = device_tolerance(TOLERANCE);
    assert!(err_eval < tolerance, "{name} eval: {err_eval}");
    assert!(err_train < tolerance, "{name} train: {err_train}");

    // The training-mode pass updated the running statistics as PyTorch does (unbiased variance).
    for (key, t) in strip_prefix(&file.tensors, "expected.after.") {
        let got = store.get(&key).unwrap().var.as_tensor().clone();
        let err = relative_error(&got, &t);
        assert!(err < tolerance, "{name} running statistic {key}: {err}");
    }
    let tracked = store
        .get("bn1.num_batches_tracked")
        .unwrap()
        .var
        .as_tensor();
    assert_eq!(tracked.dtype(), DType::I64);
    assert_eq!(
        tracked.to_scalar::<i64>().unwrap(),
        4,
        "3 from the file + 1"
    );
}

#[test]
fn resnet18_imagenet_stem_matches_torchvision() {
    check_encoder("resnet18_imagenet_stem");
}

#[test]
fn resnet18_small_stem_greyscale_matches_torchvision() {
    check_encoder("resnet18_small_stem_grey");
}

#[test]
fn resnet18_small_strided_stem_greyscale_matches_torchvision() {
    check_encoder("resnet18_small_strided_stem_grey");
}

#[test]
fn resnet10_small_stem_greyscale_matches_torchvision() {
    // The `fashion-mnist` preset's depth: torchvision's ResNet with one basic block a stage.
    check_encoder("resnet10_small_stem_grey");
}

#[test]
fn resnet50_bottleneck_matches_torchvision() {
    check_encoder("resnet50_imagenet_stem");
}

#[test]
fn byol_loss_and_gradients_match_pytorch() {
    let file = read("byol_tiny");
    let model = Byol::new(&tiny_byol_config(), test_device(), 0).unwrap();
    let online = strip_prefix(&file.tensors, "online.");
    model.online_store().load_under("", &online, false).unwrap();
    // The reference target is a copy of the online network (no predictor).
    model
        .target_store()
        .unwrap()
        .load_under("", &online, true)
        .unwrap();
    let (loss, _) = model
        .loss(&file.tensors["view1"], &file.tensors["view2"])
        .unwrap();
    let err_loss = relative_error(&loss.reshape(1).unwrap(), &file.tensors["expected.loss"]);
    let grads = loss.backward().unwrap();
    let names: Vec<String> = serde_json::from_str(&file.metadata["names"]).unwrap();
    let tolerance = device_tolerance(TOLERANCE);
    let mut worst = 0f64;
    for name in &names {
        let var = model.online_store().get(name).unwrap().var.clone();
        let grad = grads.get(var.as_tensor()).unwrap();
        let err = relative_error(grad, &file.tensors[&format!("expected.grad.{name}")]);
        assert!(err < tolerance, "gradient of {name}: {err}");
        worst = worst.max(err);
    }
    eprintln!("byol_tiny: loss rel. error {err_loss:.2e}, worst gradient rel. error {worst:.2e}");
    assert!(err_loss < tolerance, "loss: {err_loss}");
    // Stop-gradient: no target tensor receives a gradient.
    for entry in model.target_store().unwrap().entries() {
        assert!(grads.get(entry.var.as_tensor()).is_none(), "{}", entry.name);
    }
}

#[test]
fn resnet50_names_shapes_and_dtypes_are_torchvisions() {
    let rows: Vec<(String, Vec<usize>, String)> = serde_json::from_str(
        &std::fs::read_to_string(fixture("parity/torchvision_resnet50_names.json")).unwrap(),
    )
    .unwrap();
    let mut store = VarStore::new(&Device::Cpu, 0);
    ResNet::new(&mut store.root(), &ResNetConfig::new(50)).unwrap();
    let ours: Vec<(String, Vec<usize>, String)> = store
        .entries()
        .iter()
        .map(|e| {
            let dtype = match e.var.dtype() {
                DType::I64 => "int64",
                DType::F32 => "float32",
                other => panic!("unexpected dtype {other:?}"),
            };
            (e.name.clone(), e.var.dims().to_vec(), dtype.to_string())
        })
        .collect();
    assert_eq!(ours.len(), rows.len());
    for (a, b) in ours.iter().zip(&rows) {
        assert_eq!(a, b);
    }
    assert_eq!(ResNetConfig::new(50).feature_dim().unwrap(), 2048);
}

#[test]
fn invalid_architectures_name_the_field() {
    let mut store = VarStore::new(&Device::Cpu, 0);
    let mut cfg = ResNetConfig::new(42);
    let err = ResNet::new(&mut store.root(), &cfg).unwrap_err();
    assert!(
        matches!(err, Error::Config { ref field, .. } if field == "depth"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("ResNet-42 does not exist: use 10, 18, 26, 34, 50, 101, 152 or 200"),
        "{err}"
    );
    cfg.depth = 18;
    cfg.in_channels = 2;
    let err = ResNet::new(&mut store.root(), &cfg).unwrap_err();
    assert!(err.to_string().contains("in_channels"), "{err}");
}

#[test]
fn zero_init_touches_only_the_last_bn_of_each_block() {
    let ones = |store: &VarStore, name: &str| {
        let v: Vec<f32> = store.get(name).unwrap().var.as_tensor().to_vec1().unwrap();
        v.iter().all(|&x| x == 1.0)
    };
    let zeros = |store: &VarStore, name: &str| {
        let v: Vec<f32> = store.get(name).unwrap().var.as_tensor().to_vec1().unwrap();
        v.iter().all(|&x| x == 0.0)
    };
    for (depth, last) in [(18, "bn2"), (50, "bn3")] {
        let mut store = VarStore::new(&Device::Cpu, 0);
        let cfg = ResNetConfig {
            zero_init_residual: true,
            padding: Default::default(),
            base_channels: 4,
            ..ResNetConfig::new(depth)
        };
        ResNet::new(&mut store.root(), &cfg).unwrap();
        assert!(zeros(&store, &format!("layer1.0.{last}.weight")));
        assert!(zeros(&store, &format!("layer4.1.{last}.weight")));
        assert!(ones(&store, "layer1.0.bn1.weight") && ones(&store, "bn1.weight"));
        assert!(ones(&store, "layer2.0.downsample.1.weight"));
        // Off by default, as the paper's numbers were obtained.
        let mut plain = VarStore::new(&Device::Cpu, 0);
        ResNet::new(
            &mut plain.root(),
            &ResNetConfig {
                zero_init_residual: false,
                padding: Default::default(),
                ..cfg
            },
        )
        .unwrap();
        assert!(ones(&plain, &format!("layer1.0.{last}.weight")));
    }
}

#[test]
fn the_target_is_a_copy_or_its_own_seed() {
    use byol_core::byol::TargetInit;
    let weight = |s: &VarStore| {
        s.get("encoder.conv1.weight")
            .unwrap()
            .var
            .as_tensor()
            .clone()
    };
    let copied = Byol::new(&tiny_byol_config(), &Device::Cpu, 1).unwrap();
    assert_eq!(
        relative_error(
            &weight(copied.target_store().unwrap()),
            &weight(copied.online_store())
        ),
        0.0
    );
    let mut cfg = tiny_byol_config();
    cfg.target_init = TargetInit::Seed(2);
    let seeded = Byol::new(&cfg, &Device::Cpu, 1).unwrap();
    assert!(
        relative_error(
            &weight(seeded.target_store().unwrap()),
            &weight(seeded.online_store())
        ) > 0.1
    );
    // The same seed gives the same online network.
    assert_eq!(
        relative_error(
            &weight(seeded.online_store()),
            &weight(copied.online_store())
        ),
        0.0
    );
    assert!(seeded
        .target_store()
        .unwrap()
        .get("predictor.0.weight")
        .is_none());
}
