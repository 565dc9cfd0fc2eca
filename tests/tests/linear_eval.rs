//! byol-linear-eval's library half: SGD against PyTorch, the feature cache and its staleness
//! check, the four modes end to end on a generated MNIST-layout dataset, metrics on
//! hand-computed values, and the errors users see.

use std::path::Path;

use byol_core::data::{DatasetKind, DatasetSource};
use byol_core::distributed::DataParallel;
use byol_core::eval::cache::{cached_features, load_features, CacheKey, CacheStatus};
use byol_core::eval::features::LabelledFeatures;
use byol_core::eval::knn::KnnOptions;
use byol_core::eval::linear_eval::EvalSetup;
use byol_core::eval::linear_protocol::LinearProtocolOptions;
use byol_core::eval::logistic::lambda_grid;
use byol_core::eval::matrix::OwnedFeatures;
use byol_core::eval::report::{ClassificationMetrics, ClassificationReport};
use byol_core::eval::sgd_probe::SgdProbeOptions;
use byol_core::nn::{ResNetConfig, VarStore};
use byol_core::optim::{Sgd, SgdConfig};
use byol_core::weights::Weights;
use byol_core::Error;
use byol_tests::{save_tiny_encoder, write_mnist_like};
use candle_core::{Device, Tensor};

pub(crate) fn setup(dir: &Path, weights: Weights) -> EvalSetup {
    setup_arch(dir, weights, None)
}

fn setup_arch(dir: &Path, weights: Weights, arch: Option<ResNetConfig>) -> EvalSetup {
    EvalSetup {
        data: DatasetSource::new(DatasetKind::Mnist, Some(dir.join("data"))),
        weights,
        arch,
        part: Default::default(),
        image_size: None,
        train_subset: None,
        test_subset: None,
        labels: None,
        seed: 0,
        batch_size: 64,
        workers: 2,
        cache_dir: dir.join("features"),
        device: Device::Cpu,
        precision: Default::default(),
        parallel: DataParallel::single(),
    }
}

fn short_logistic() -> LinearProtocolOptions {
    LinearProtocolOptions {
        grid: lambda_grid(5, 1e-4, 1e0).unwrap(),
        ..LinearProtocolOptions::default()
    }
}

#[test]
fn sgd_steps_match_pytorch() {
    // scripts/make_sgd_fixture.py: torch.optim.SGD(nesterov, momentum 0.9, weight_decay 0.01).
    let expected: [[f64; 6]; 3] = [
        [
            0.480049998,
            -1.03610003,
            2.053200006,
            -0.075999998,
            0.344525009,
            -0.862574995,
        ],
        [
            0.494341463,
            -1.052310705,
            2.062589407,
            -0.120627798,
            0.335846454,
            -0.876251817,
        ],
        [
            0.493884951,
            -1.054233193,
            2.046555519,
            -0.11606165,
            0.330456555,
            -0.890397727,
        ],
    ];
    let grads: [[f32; 6]; 3] = [
        [0.1, 0.2, -0.3, 0.4, -0.5, 0.6],
        [-0.2, 0.1, 0.0, 0.3, 0.3, -0.1],
        [0.05, -0.05, 0.5, -0.4, 0.2, 0.2],
    ];
    let mut store = VarStore::new(&Device::Cpu, 0);
    let w = store
        .root()
        .constant("w", &[2, 3], 0.0, byol_core::nn::Role::Weight)
        .unwrap();
    w.set(&Tensor::new(&[[0.5f32, -1.0, 2.0], [0.0, 0.25, -0.75]], &Device::Cpu).unwrap())
        .unwrap();
    let mut sgd = Sgd::new(SgdConfig {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 0.01,
    })
    .unwrap();
    for ((lr, g), want) in [0.1, 0.05, 0.02].iter().zip(&grads).zip(&expected) {
        // A loss whose gradient is exactly g: sum(w * g).
        let g = Tensor::from_slice(g, (2, 3), &Device::Cpu).unwrap();
        let loss = (w.as_tensor() * &g).unwrap().sum_all().unwrap();
        let grad_store = loss.backward().unwrap();
        sgd.step(&store, &grad_store, *lr).unwrap();
        let got: Vec<f32> = w.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in got.iter().zip(want) {
            assert!((f64::from(*a) - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
    assert!(Sgd::new(SgdConfig {
        momentum: 0.0,
        nesterov: true,
        weight_decay: 0.0
    })
    .is_err());
}

#[test]
fn feature_cache_is_reused_and_stale_caches_are_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist_like(&dir.path().join("data"), 40, 20, 3, 1);
    let weights = dir.path().join("encoder.safetensors");
    save_tiny_encoder(&weights, 1);
    let s = setup(dir.path(), Weights::File(weights.clone()));
    let first = s.features().unwrap();
    assert_eq!(first.status, [CacheStatus::Missing, CacheStatus::Missing]);
    assert_eq!(first.train.labels.len(), 40);
    assert_eq!(first.test.labels.len(), 20);
    let again = s.features().unwrap();
    assert_eq!(again.status, [CacheStatus::Hit, CacheStatus::Hit]);
    assert_eq!(
        again.train.features.view().data(),
        first.train.features.view().data()
    );

    // New weights at the same path: the hash differs, the cache is stale.
    save_tiny_encoder(&weights, 2);
    let retrained = s.features().unwrap();
    assert_eq!(retrained.status, [CacheStatus::Stale, CacheStatus::Stale]);
    assert_ne!(
        retrained.train.features.view().data(),
        first.train.features.view().data()
    );

    // Another transform (crop size) is stale too; fewer samples as well.
    let resized = EvalSetup {
        image_size: Some(20),
        ..s.clone()
    };
    assert_eq!(resized.features().unwrap().status[0], CacheStatus::Stale);
    let fewer = EvalSetup {
        train_subset: Some(10),
        ..s.clone()
    };
    let f = fewer.features().unwrap();
    assert_eq!(f.status[0], CacheStatus::Stale);
    assert_eq!(f.train.labels.len(), 10);

    // A cache file whose tensors do not agree is an error naming the file, and is replaced.
    let (_, key) = load_features(&f.paths[0]).unwrap();
    let broken = LabelledFeatures {
        features: OwnedFeatures::new(vec![0.0; 6], 3).unwrap(),
        labels: vec![0, 1],
    };
    let bad_key = CacheKey {
        samples: 5,
        ..key.clone()
    };
    byol_core::eval::cache::save_features(&f.paths[0], &broken, &bad_key).unwrap();
    let err = load_features(&f.paths[0]).err().unwrap().to_string();
    assert!(err.contains("train") && err.contains("5 samples"), "{err}");
    let (_, status) = cached_features(&f.paths[0], &key, || Ok(broken)).unwrap();
    assert_eq!(status, CacheStatus::Stale);
}

#[test]
fn the_four_modes_run_and_report() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist_like(&dir.path().join("data"), 120, 60, 3, 7);
    let weights = dir.path().join("encoder.safetensors");
    save_tiny_encoder(&weights, 3);

    // Raw pixels separate the generated classes: the probe must find that.
    let pixels = setup(dir.path(), Weights::None);
    let logistic = pixels.logistic(&short_logistic()).unwrap();
    assert_eq!(logistic.protocol, "logistic");
    assert_eq!(logistic.feature_dim, 28 * 28);
    assert!(
        logistic.top1 > 0.98,
        "pixels logistic top-1 {}",
        logistic.top1
    );
    assert_eq!(logistic.splits.test, 60);
    assert_eq!(logistic.splits.val, 12);
    assert!(logistic.hyperparameters.contains_key("lambda"));
    let knn = pixels
        .knn(&KnnOptions {
            k: 5,
            ..KnnOptions::default()
        })
        .unwrap();
    assert!(knn.top1 > 0.98, "pixels kNN top-1 {}", knn.top1);

    // The encoder: features, logistic, kNN and the SGD head all run and report consistently.
    let encoder = setup(dir.path(), Weights::File(weights.clone()));
    let features = encoder.features().unwrap();
    assert_eq!(features.train.features.view().cols(), 32);
    let mut epochs = Vec::new();
    let sgd = encoder
        .sgd(
            &SgdProbeOptions {
                learning_rates: vec![0.5, 0.05],
                epochs: 3,
                batch_size: 32,
                workers: 2,
                ..SgdProbeOptions::default()
            },
            &mut |epoch, loss| epochs.push((epoch, loss)),
        )
        .unwrap();
    assert_eq!(epochs.len(), 3);
    assert!(epochs.iter().all(|(_, l)| l.is_finite()));
    assert_eq!(sgd.protocol, "sgd");
    assert_eq!(
        sgd.hyperparameters["lr_grid"],
        serde_json::json!([0.5, 0.05])
    );
    assert!(
        sgd.top1 > 1.0 / 3.0,
        "sgd head top-1 {} is at chance",
        sgd.top1
    );
    for report in [&logistic, &knn, &sgd] {
        let total: u64 = report.confusion_matrix.iter().flatten().sum();
        assert_eq!(total, 60);
        assert!(report.top5 >= report.top1);
        assert_eq!(report.class_names.len(), 10);
        // Classes 3..9 never occur in test: no per-class accuracy for them.
        assert!(report.per_class_accuracy[3..].iter().all(Option::is_none));
    }
    assert_eq!(
        sgd.weights.sha256.as_deref().map(str::len),
        Some(64),
        "the report names the weights by hash"
    );

    // The JSON report round-trips.
    let path = dir.path().join("report.json");
    sgd.write_json(&path).unwrap();
    assert_eq!(ClassificationReport::read_json(&path).unwrap(), sgd);
    assert!(sgd.table().contains("top-1"));
}

#[test]
fn metrics_match_hand_computed_values() {
    // 4 samples, 3 classes. Predictions: 0, 2, 1, 1 for truths 0, 1, 1, 2.
    let scores = [
        0.9, 0.05, 0.05, //
        0.1, 0.3, 0.6, //
        0.2, 0.7, 0.1, //
        0.3, 0.5, 0.2,
    ];
    let labels = [0, 1, 1, 2];
    let m = ClassificationMetrics::from_scores(&scores, &labels, 3).unwrap();
    assert_eq!(m.top1, 0.5);
    // Top-2 within top-5 = all 3 classes: 1.0.
    assert_eq!(m.top5, 1.0);
    // Recall per class: 1, 1/2, 0 → mean 0.5.
    assert_eq!(m.per_class_accuracy, vec![Some(1.0), Some(0.5), Some(0.0)]);
    assert!((m.mean_per_class_accuracy - 0.5).abs() < 1e-12);
    assert_eq!(
        m.confusion_matrix,
        vec![vec![1, 0, 0], vec![0, 1, 1], vec![0, 1, 0]]
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist_like(&dir.path().join("data"), 30, 10, 3, 2);
    let weights = dir.path().join("encoder.safetensors");
    save_tiny_encoder(&weights, 1);

    // Weights of another architecture than the one asked for.
    let other = setup_arch(
        dir.path(),
        Weights::File(weights.clone()),
        Some(ResNetConfig::new(50)),
    );
    let err = other.features().err().unwrap();
    assert!(
        matches!(&err, Error::Config { field, .. } if field == "arch"),
        "{err}"
    );
    assert!(err.to_string().contains("resnet18"), "{err}");

    // A plain state dict with no metadata needs the architecture: the error says so.
    let file = byol_core::io::SafetensorsFile::read(&weights, &Device::Cpu).unwrap();
    let plain = dir.path().join("plain.safetensors");
    byol_core::io::write_safetensors(
        &plain,
        file.tensors.into_iter().collect(),
        Default::default(),
    )
    .unwrap();
    let err = setup(dir.path(), Weights::File(plain.clone()))
        .features()
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("plain.safetensors") && err.contains("architecture"),
        "{err}"
    );
    // ... and with a wrong one, the first tensor that does not fit is named.
    let err = setup_arch(
        dir.path(),
        Weights::File(plain),
        Some(ResNetConfig::new(18)),
    )
    .features()
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("conv1.weight") || err.contains("shape"),
        "{err}"
    );

    // Missing dataset directory names it.
    let mut missing = setup(dir.path(), Weights::None);
    missing.data.dir = Some(dir.path().join("nowhere"));
    let err = missing.features().err().unwrap().to_string();
    assert!(err.contains("nowhere"), "{err}");

    // The SGD protocol needs an encoder.
    let err = setup(dir.path(), Weights::None)
        .sgd(&SgdProbeOptions::default(), &mut |_, _| {})
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::Config { field, .. } if field == "weights"),
        "{err}"
    );

    // Wrong feature dimension and labels out of range reach the protocols as errors.
    let train = OwnedFeatures::new(vec![0.0; 8], 2).unwrap();
    let test = OwnedFeatures::new(vec![0.0; 6], 3).unwrap();
    let err = byol_core::eval::linear_protocol::linear_protocol(
        train.view(),
        &[0, 1, 0, 1],
        test.view(),
        &[0, 1],
        2,
        &short_logistic(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains('3') && err.contains('2'), "{err}");
    let err = byol_core::eval::linear_protocol::linear_protocol(
        train.view(),
        &[0, 1, 0, 5],
        train.view(),
        &[0, 1, 0, 1],
        2,
        &short_logistic(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains('5'), "{err}");
}
