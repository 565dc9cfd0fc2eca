//! `byol-transfer --task classify` (linear and fine-tuned) and `--suite paper` on generated
//! image-folder datasets.

use std::path::Path;

use byol_core::data::splits::open_splits;
use byol_core::transfer::classify::{run_classify, ClassifyOptions};
use byol_core::transfer::finetune::FinetuneOptions;
use byol_core::transfer::paper::Metric;
use byol_core::transfer::suite::run_suite;
use byol_core::transfer::CommonOptions;
use byol_core::weights::Weights;
use byol_tests::fixtures::{class_colour, write, write_jpeg, MiniVoc};
use byol_tests::write_tiny_encoder;

type R = anyhow::Result<()>;

const CLASSES: [&str; 3] = ["ant", "bee", "cat"];

/// `root/{train,val,test}/<class>/<n>.jpg`, one colour per class, `per` images each.
fn folder_dataset(root: &Path, per: usize, with_val: bool) {
    let splits: &[&str] = if with_val {
        &["train", "val", "test"]
    } else {
        &["train", "test"]
    };
    for split in splits {
        for (c, class) in CLASSES.iter().enumerate() {
            for k in 0..per {
                let rgb = class_colour(c * 6 + 1).map(|v| v.saturating_add((k * 5) as u8));
                write_jpeg(&root.join(format!("{split}/{class}/{k}.jpg")), 12, 10, rgb);
            }
        }
    }
}

fn options(weights: Weights) -> ClassifyOptions {
    let mut common = CommonOptions::new(weights, 8);
    common.batch_size = 8;
    let mut o = ClassifyOptions::new(common);
    o.lambda_grid = byol_core::eval::logistic::lambda_grid(5, 1e-4, 1e0).unwrap();
    o
}

#[test]
fn linear_on_raw_pixels_separates_coloured_classes() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("mine");
    folder_dataset(&root, 4, true);
    let report = run_classify(&root, &options(Weights::None))?;
    assert_eq!(report.task, "classify");
    assert_eq!(report.metric, "top-1");
    assert_eq!(
        (
            report.splits["train"],
            report.splits["val"],
            report.splits["test"]
        ),
        (12, 12, 12)
    );
    assert!(report.value > 0.9, "top-1 {}", report.value);
    assert_eq!(report.per_class.len(), 3);
    assert!(report.hyperparameters.contains_key("lambda"));
    Ok(())
}

#[test]
fn linear_with_split_files_and_the_papers_metric() -> R {
    let dir = tempfile::tempdir()?;
    // "flowers" takes mean per-class accuracy in the paper.
    let root = dir.path().join("flowers");
    let mut lists = [String::new(), String::new(), String::new()];
    for (c, class) in CLASSES.iter().enumerate() {
        for k in 0..9 {
            let rel = format!("{class}/{k}.jpg");
            write_jpeg(&root.join(&rel), 12, 10, class_colour(c * 6 + 1));
            lists[k % 3].push_str(&format!("{rel}\n"));
        }
    }
    for (name, text) in ["train", "val", "test"].iter().zip(&lists) {
        write(&root.join(format!("{name}.txt")), text.as_bytes());
    }
    let weights = write_tiny_encoder(dir.path(), 1);
    let report = run_classify(&root, &options(Weights::File(weights)))?;
    assert_eq!(report.metric, Metric::MeanPerClass.name());
    assert_eq!(report.paper, Some(0.961));
    assert!((0.0..=1.0).contains(&report.value));

    // A listed image that is absent is named with the split file.
    write(&root.join("test.txt"), b"ant/0.jpg\nbee/missing.jpg\n");
    let msg = open_splits(&root).err().unwrap().to_string();
    assert!(
        msg.contains("test.txt") && msg.contains("missing.jpg"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn linear_on_an_encoder_in_bf16_where_onednn_runs() -> R {
    if !byol_tests::onednn_loads() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("mine");
    folder_dataset(&root, 4, true);
    let mut o = options(Weights::File(write_tiny_encoder(dir.path(), 3)));
    o.common.image_size = 16;
    let fp32 = run_classify(&root, &o)?;
    o.common.precision = byol_core::nn::Precision::Bf16;
    if !byol_core::nn::precision::bf16_convolutions() {
        // AVX2-only CPUs: refused before any feature pass, naming what is missing.
        let Err(err) = run_classify(&root, &o) else {
            panic!("bf16 ran on a CPU without AVX-512");
        };
        assert!(format!("{err:#}").contains("AVX-512"), "{err:#}");
        return Ok(());
    }
    let bf16 = run_classify(&root, &o)?;
    // The same protocol on features ~1e-2 apart: both solve the coloured classes.
    assert!(fp32.value > 0.9, "fp32 top-1 {}", fp32.value);
    assert!(bf16.value > 0.9, "bf16 top-1 {}", bf16.value);
    Ok(())
}

#[test]
fn finetune_runs_its_grid_and_reports_the_choice() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("cifar10");
    folder_dataset(&root, 3, false);
    let mut o = options(Weights::File(write_tiny_encoder(dir.path(), 2)));
    o.common.image_size = 16;
    o.val_fraction = 0.3;
    o.finetune = Some(FinetuneOptions {
        steps: 3,
        lrs: vec![0.01],
        weight_decays: vec![0.0, 1e-4],
        momentum: 0.9,
    });
    let report = run_classify(&root, &o)?;
    assert!(
        report.protocol.starts_with("fine-tuned"),
        "{}",
        report.protocol
    );
    assert_eq!(
        report.hyperparameters["grid"].as_array().map(Vec::len),
        Some(2)
    );
    assert!((0.0..=1.0).contains(&report.value));
    assert_eq!(report.paper, Some(0.978));
    assert!(report.extra["final_loss"].is_finite());
    Ok(())
}

#[test]
fn suite_runs_what_it_finds_next_to_the_papers_numbers() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("suite");
    folder_dataset(&root.join("dtd"), 3, true);
    let devkit = MiniVoc {
        seg: [0, 0],
        ..MiniVoc::default()
    }
    .write(&dir.path().join("voc"));
    std::fs::rename(devkit.join("VOC2007"), root.join("voc2007"))?;
    // A dataset folder that is not a dataset is reported, not fatal.
    std::fs::create_dir_all(root.join("cars/junk"))?;
    let suite = run_suite(&root, &options(Weights::None))?;
    assert!(suite.failed["cars"].contains("cars"), "{:?}", suite.failed);
    let names: Vec<&str> = suite.rows.iter().map(|r| r.dataset.as_str()).collect();
    assert_eq!(names, ["voc2007", "dtd"]);
    assert_eq!(suite.missing.len(), 9);
    assert_eq!(suite.rows[0].paper_linear, Some(0.825));
    assert_eq!(suite.rows[0].metric, "mAP (11-point)");
    let table = suite.table();
    assert!(table.contains("75.5") && table.contains("82.5"), "{table}");
    let path = dir.path().join("suite.json");
    suite.write(&path)?;
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    assert_eq!(json["reports"].as_array().map(Vec::len), Some(2));
    Ok(())
}

#[test]
fn finetune_skips_a_corrupt_image_like_every_other_tool() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("cifar10");
    // A val split of its own: evaluation sets stay strict (every image must be read).
    folder_dataset(&root, 4, true);
    write(
        &root.join("train/bee/zz-corrupt.jpg"),
        b"a text file named .jpg",
    );
    let mut o = options(Weights::File(write_tiny_encoder(dir.path(), 2)));
    o.common.image_size = 16;
    o.finetune = Some(FinetuneOptions {
        steps: 6,
        lrs: vec![0.01],
        weight_decays: vec![0.0],
        momentum: 0.9,
    });
    let report = run_classify(&root, &o)?;
    assert!((0.0..=1.0).contains(&report.value));
    assert!(report.extra["final_loss"].is_finite());
    Ok(())
}
