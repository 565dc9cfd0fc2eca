//! `byol-transfer --task voc / voc-svm` end to end on a generated miniature VOCdevkit: the
//! report's shape, an above-chance score on an easy setting, and errors that name the file.

use byol_core::transfer::finetune::FinetuneOptions;
use byol_core::transfer::voc::{run_voc_classification, VocOptions, VocProtocol};
use byol_core::transfer::{CommonOptions, TransferReport};
use byol_core::weights::Weights;
use byol_tests::fixtures::MiniVoc;
use byol_tests::write_tiny_encoder;

type R = anyhow::Result<()>;

fn options(weights: Weights, protocol: VocProtocol) -> VocOptions {
    let mut common = CommonOptions::new(weights, 16);
    common.batch_size = 32;
    let mut o = VocOptions::new(common, protocol);
    // A short L2 sweep keeps the test in seconds; the protocol is the same.
    o.lambda_grid = byol_core::eval::logistic::lambda_grid(5, 1e-4, 1e0).unwrap();
    o.svm.costs = vec![0.1, 1.0];
    o
}

#[test]
fn voc_logistic_with_an_encoder_file_reports_20_aps() -> R {
    let dir = tempfile::tempdir()?;
    let devkit = MiniVoc::default().write(dir.path());
    let weights = write_tiny_encoder(dir.path(), 3);
    let report = run_voc_classification(
        &devkit,
        &options(Weights::File(weights), VocProtocol::Logistic),
    )?;
    assert_eq!(report.task, "voc");
    assert!(report.protocol.contains("11-point"), "{}", report.protocol);
    assert_eq!(report.per_class.len(), 20);
    for c in &report.per_class {
        let v = c.value.expect("every class has an AP");
        // 11 × (1/11) sums to 1 + 1 ulp: allow rounding above 1.
        assert!((0.0..=1.0 + 1e-12).contains(&v), "{}: {v}", c.class);
    }
    assert!((0.0..=1.0 + 1e-12).contains(&report.value));
    assert_eq!(report.splits["trainval"], 80);
    assert_eq!(report.splits["test"], 40);
    assert_eq!(report.splits["val"], 40);
    assert_eq!(report.paper, Some(0.825));
    assert_eq!(report.weights.sha256.as_ref().map(String::len), Some(64));
    // The JSON round-trips and the table names the metric.
    let path = dir.path().join("out/transfer-voc.json");
    report.write(&path)?;
    let back: TransferReport = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    assert_eq!(back, report);
    assert!(report.table().contains("mAP (11-point)"));
    Ok(())
}

#[test]
fn voc_raw_pixels_on_coloured_classes_are_far_above_chance() -> R {
    let dir = tempfile::tempdir()?;
    let devkit = MiniVoc::default().write(dir.path());
    // The VOC2007 directory itself is accepted as --data too.
    let report = run_voc_classification(
        &devkit.join("VOC2007"),
        &options(Weights::None, VocProtocol::Logistic),
    )?;
    // Chance is the positive rate, 2 of 40 test images per class.
    assert!(report.value > 0.6, "mAP {}", report.value);
    Ok(())
}

#[test]
fn voc_svm_is_labelled_as_the_vissl_protocol() -> R {
    let dir = tempfile::tempdir()?;
    let devkit = MiniVoc::default().write(dir.path());
    let report = run_voc_classification(&devkit, &options(Weights::None, VocProtocol::Svm))?;
    assert_eq!(report.task, "voc-svm");
    assert!(
        report.protocol.contains("VISSL") && report.protocol.contains("not comparable"),
        "{}",
        report.protocol
    );
    assert_eq!(report.metric, "mAP (all-point)");
    assert_eq!(report.paper, None);
    assert_eq!(report.per_class.len(), 20);
    assert!(report.value > 0.6, "mAP {}", report.value);
    assert!(report.hyperparameters.contains_key("cost_per_class"));
    Ok(())
}

#[test]
fn voc_fine_tuning_reports_the_chosen_grid_point() -> R {
    let dir = tempfile::tempdir()?;
    let devkit = MiniVoc::default().write(dir.path());
    let weights = write_tiny_encoder(dir.path(), 4);
    let mut o = options(Weights::File(weights), VocProtocol::Logistic);
    o.common.batch_size = 8;
    o.finetune = Some(FinetuneOptions {
        steps: 3,
        lrs: vec![0.01, 0.1],
        weight_decays: vec![1e-4],
        momentum: 0.9,
    });
    let report = run_voc_classification(&devkit, &o)?;
    assert!(
        report.protocol.contains("fine-tuned"),
        "{}",
        report.protocol
    );
    assert_eq!(report.paper, Some(0.854));
    assert_eq!(report.per_class.len(), 20);
    assert!((0.0..=1.0 + 1e-12).contains(&report.value));
    assert_eq!(
        report.hyperparameters["grid"].as_array().map(Vec::len),
        Some(2)
    );
    assert!(report.extra["final_loss"].is_finite());
    o.protocol = VocProtocol::Svm;
    assert!(run_voc_classification(&devkit, &o).is_err());
    Ok(())
}

#[test]
fn voc_missing_class_file_and_absent_image_are_named() -> R {
    let dir = tempfile::tempdir()?;
    let devkit = MiniVoc::default().write(dir.path());
    let voc = devkit.join("VOC2007");
    let opts = options(Weights::None, VocProtocol::Logistic);

    std::fs::remove_file(voc.join("ImageSets/Main/cat_test.txt"))?;
    let msg = run_voc_classification(&devkit, &opts)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("cat_test.txt"), "{msg}");

    let dir = tempfile::tempdir()?;
    let devkit = MiniVoc::default().write(dir.path());
    let voc = devkit.join("VOC2007");
    let listed = std::fs::read_to_string(voc.join("ImageSets/Main/test.txt"))?;
    let id = listed.lines().nth(3).unwrap().to_string();
    std::fs::remove_file(voc.join(format!("JPEGImages/{id}.jpg")))?;
    let msg = run_voc_classification(&devkit, &opts)
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&format!("{id}.jpg")), "{msg}");

    let msg = run_voc_classification(dir.path().join("nowhere").as_path(), &opts)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("nowhere") && msg.contains("VOC2007"), "{msg}");
    Ok(())
}

/// Writes the miniature VOCdevkit (and a tiny encoder) under `$BYOL_MINI_VOC` to try the
/// `byol-transfer` command line on: `BYOL_MINI_VOC=/tmp/mini cargo test -p byol-tests --test
/// integration -- --ignored write_mini_vocdevkit`.
#[test]
#[ignore]
fn write_mini_vocdevkit() {
    let root = std::path::PathBuf::from(std::env::var("BYOL_MINI_VOC").expect("set BYOL_MINI_VOC"));
    MiniVoc {
        seg: [40, 20],
        ..MiniVoc::default()
    }
    .write(&root);
    write_tiny_encoder(&root, 0);
}
