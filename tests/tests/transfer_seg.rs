//! `byol-transfer --task voc-seg` end to end on the miniature VOC2012: FCN fine-tuning runs on
//! CPU at a tiny input size, the report has 21 IoUs and mIoU in [0, 1], and dataset errors name
//! the file.

use byol_core::transfer::segmentation::{run_segmentation, SegOptions};
use byol_core::transfer::CommonOptions;
use byol_core::weights::Weights;
use byol_tests::fixtures::{png_bytes, voc_palette, write, MiniVoc};
use byol_tests::{tiny_byol_config, write_tiny_encoder};

type R = anyhow::Result<()>;

fn options(weights: Weights, steps: usize) -> SegOptions {
    let mut common = CommonOptions::new(weights, 16);
    common.batch_size = 4;
    // `Weights::None` starts from a random init of this architecture.
    common.arch = Some(tiny_byol_config().encoder);
    let mut o = SegOptions::new(common);
    o.steps = steps;
    o.lr = 0.05;
    o
}

#[test]
fn segmentation_fine_tunes_and_reports_miou() -> R {
    let dir = tempfile::tempdir()?;
    let devkit = MiniVoc::default().write(dir.path());
    let weights = write_tiny_encoder(dir.path(), 5);
    let report = run_segmentation(&devkit, &options(Weights::File(weights), 8))?;
    assert_eq!(report.task, "voc-seg");
    assert_eq!(report.metric, "mIoU");
    assert!(
        report.value.is_finite() && (0.0..=1.0).contains(&report.value),
        "{}",
        report.value
    );
    assert_eq!(report.per_class.len(), 21);
    assert_eq!(report.per_class[0].class, "background");
    for c in report.per_class.iter().filter_map(|c| c.value) {
        assert!((0.0..=1.0).contains(&c));
    }
    let acc = report.extra["pixel_accuracy"];
    assert!((0.0..=1.0).contains(&acc));
    assert!(report.extra["final_loss"].is_finite());
    // The loss starts near log 21 and training lowers it.
    assert!(
        report.extra["final_loss"] < report.extra["first_loss"],
        "{:?}",
        report.extra
    );
    assert_eq!((report.splits["train"], report.splits["val"]), (10, 5));
    for key in [
        "steps",
        "lr",
        "lr_schedule",
        "scale_range",
        "crop_size",
        "head",
        "seed",
    ] {
        assert!(report.hyperparameters.contains_key(key), "{key}");
    }
    assert_eq!(
        report.hyperparameters["scale_range"],
        serde_json::json!([0.5, 2.0])
    );
    let path = dir.path().join("seg.json");
    report.write(&path)?;
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    assert_eq!(json["per_class"].as_array().map(Vec::len), Some(21));
    Ok(())
}

#[test]
fn segmentation_mask_of_wrong_size_and_absent_image_are_named() -> R {
    let dir = tempfile::tempdir()?;
    let devkit = MiniVoc::default().write(dir.path());
    let voc = devkit.join("VOC2012");
    let val = std::fs::read_to_string(voc.join("ImageSets/Segmentation/val.txt"))?;
    let id = val.lines().next().unwrap().to_string();
    write(
        &voc.join(format!("SegmentationClass/{id}.png")),
        &png_bytes(5, 5, png::ColorType::Indexed, Some(voc_palette()), &[0; 25]),
    );
    let msg = run_segmentation(&devkit, &options(Weights::None, 1))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&format!("{id}.png")) && msg.contains("5x5"),
        "{msg}"
    );

    let dir = tempfile::tempdir()?;
    let devkit = MiniVoc::default().write(dir.path());
    let voc = devkit.join("VOC2012");
    std::fs::remove_file(voc.join(format!("JPEGImages/{id}.jpg")))?;
    let msg = run_segmentation(&devkit, &options(Weights::None, 1))
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&format!("{id}.jpg")), "{msg}");

    // A mask value that is no class (30) stops training, naming the mask.
    let dir = tempfile::tempdir()?;
    let devkit = MiniVoc::default().write(dir.path());
    let voc = devkit.join("VOC2012");
    let train = std::fs::read_to_string(voc.join("ImageSets/Segmentation/train.txt"))?;
    for id in train.lines() {
        let mut mask = vec![0u8; 24 * 20];
        mask[7] = 30;
        write(
            &voc.join(format!("SegmentationClass/{id}.png")),
            &png_bytes(24, 20, png::ColorType::Indexed, Some(voc_palette()), &mask),
        );
    }
    let msg = run_segmentation(&devkit, &options(Weights::None, 1))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(".png") && msg.contains("mask value 30"),
        "{msg}"
    );

    // One bad mask among the training masks is found before step 1, whichever steps would draw
    // it (a 1-step run draws 4 of 10 images): before, only the step that drew it stopped the run.
    let dir = tempfile::tempdir()?;
    let devkit = MiniVoc::default().write(dir.path());
    let voc = devkit.join("VOC2012");
    let train = std::fs::read_to_string(voc.join("ImageSets/Segmentation/train.txt"))?;
    for (i, id) in train.lines().enumerate() {
        let mut mask = vec![0u8; 24 * 20];
        if i == 0 {
            mask[7] = 42;
        }
        write(
            &voc.join(format!("SegmentationClass/{id}.png")),
            &png_bytes(24, 20, png::ColorType::Indexed, Some(voc_palette()), &mask),
        );
    }
    let first = train.lines().next().unwrap_or_default();
    for seed in 0..4 {
        let mut o = options(Weights::None, 1);
        o.common.seed = seed;
        let msg = run_segmentation(&devkit, &o).unwrap_err().to_string();
        assert!(
            msg.contains(&format!("{first}.png")) && msg.contains("mask value 42"),
            "seed {seed}: {msg}"
        );
    }
    Ok(())
}
