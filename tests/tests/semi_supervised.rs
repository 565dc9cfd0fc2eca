//! Semi-supervised fine-tuning (`byol-linear-eval finetune`, BYOL Table 2): the recipe against
//! the paper's text, label subsets (the built-in ImageNet lists, class-balanced fractions, file
//! lists and their errors), the protocol end to end on a miniature ImageNet with a subset file,
//! and a run interrupted twice and resumed giving the uninterrupted report.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use byol_core::data::label_subset::{balanced_fraction, resolve_labels};
use byol_core::data::{DatasetKind, DatasetSource, LabelSpec, Split};
use byol_core::eval::linear_eval::EvalSetup;
use byol_core::eval::report::ClassificationReport;
use byol_core::eval::semi_supervised::{
    SemiSupervisedOptions, SemiSupervisedOutcome, SemiSupervisedRun, SilentFinetune,
    PAPER_RESNET50, PAPER_SEMI_SUPERVISED, PROGRESS_FILE, STATE_FILE,
};
use byol_core::optim::SgdConfig;
use byol_core::weights::Weights;
use byol_tests::fixtures::{write, write_mini_imagenet};
use byol_tests::{save_tiny_encoder, write_mnist_like};
use candle_core::Device;

type R = anyhow::Result<()>;

/// BYOL (Grill et al. 2020, arXiv 2006.07733v3), appendix C.1, paragraph "Semi-supervised
/// learning on ImageNet", word for word:
const PAPER_TEXT: &str = "We follow the semi-supervised learning protocol of [8, 77]. We first \
initialize the network with the parameters of the pretrained representation, and fine-tune it \
with a subset of ImageNet labels. At training time, we apply spatial augmentations, i.e., random \
crops with resize to 224 × 224 pixels and random flips. At test time, images are resized to 256 \
pixels along the shorter side using bicubic resampling, after which a 224 × 224 center crop is \
applied. In both cases, we normalize the color channels by subtracting the average color and \
dividing by the standard deviation (computed on ImageNet), after applying the augmentations. We \
optimize the cross-entropy loss using SGD with Nesterov momentum. We used a batch size of 1024, a \
momentum of 0.9. We do not use any regularization methods such as weight decay, gradient clipping \
[86], tclip [34], or logits rescaling. We sweep over the learning rate {0.01, 0.02, 0.05, 0.1, \
0.005} and the number of epochs {30, 50} and select the hyperparameters achieving the best \
performance on our local validation set to report test performance.";

/// Appendix B of the same paper, the random crop every protocol's "random crops" are:
const PAPER_CROP: &str = "random cropping: a random patch of the image is selected, with an area \
uniformly sampled between 8% and 100% of that of the original image";

/// Table 2(a) of the same paper, ResNet-50 row of BYOL: "53.2 68.8 78.4 89.0" (top-1 at 1 % and
/// 10 % of the labels, then top-5).
const PAPER_TABLE_2: &str = "BYOL (ours) 53.2 68.8 78.4 89.0";

/// What the paper leaves open, from the official code (deepmind-research/byol):
/// `configs/eval.py`: `lr_schedule_config=dict(base_learning_rate=0.2, warmup_steps=0)`,
/// `freeze_backbone=True` (False fine-tunes, with `is_training=not freeze_backbone`);
/// `utils/schedules.py`: `scaled_lr = base_learning_rate * batch_size / 256.` and a cosine decay.
const OFFICIAL_CODE: &str = "warmup_steps=0 scaled_lr = base_learning_rate * batch_size / 256.";

/// The numbers of `text` between `open` and the next `close`, after the first `after`.
fn numbers_after(text: &str, after: &str, open: char, close: char) -> Vec<f64> {
    let rest = &text[text
        .find(after)
        .unwrap_or_else(|| panic!("{after:?} not quoted"))..];
    let start = rest.find(open).unwrap() + open.len_utf8();
    let end = start + rest[start..].find(close).unwrap();
    rest[start..end]
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

/// The first number after `after`.
fn number_after(text: &str, after: &str) -> f64 {
    let rest = &text[text
        .find(after)
        .unwrap_or_else(|| panic!("{after:?} not quoted"))..];
    rest[after.len()..]
        .split(|c: char| c.is_whitespace() || c == ',' || c == '×')
        .find(|s| !s.is_empty())
        .unwrap()
        .trim_end_matches('.')
        .parse()
        .unwrap()
}

#[test]
fn the_recipe_is_the_papers_text() {
    let r = PAPER_SEMI_SUPERVISED;
    let lrs = numbers_after(PAPER_TEXT, "the learning rate", '{', '}');
    assert_eq!(r.learning_rates, lrs.as_slice());
    let epochs = numbers_after(PAPER_TEXT, "number of epochs", '{', '}');
    let ours: Vec<f64> = r.epochs.iter().map(|&e| e as f64).collect();
    assert_eq!(ours, epochs);
    assert_eq!(
        r.batch_size as f64,
        number_after(PAPER_TEXT, "batch size of")
    );
    assert_eq!(r.momentum, number_after(PAPER_TEXT, "momentum of"));
    assert!(PAPER_TEXT.contains("SGD with Nesterov momentum") && r.nesterov);
    assert!(PAPER_TEXT.contains("do not use any regularization methods such as weight decay"));
    assert_eq!(r.weight_decay, 0.0);
    assert_eq!(r.crop as f64, number_after(PAPER_TEXT, "resize to"));
    assert_eq!(r.eval_resize as f64, number_after(PAPER_TEXT, "resized to"));
    let between = PAPER_CROP.split("between ").nth(1).unwrap();
    let low: f64 = between.split('%').next().unwrap().parse().unwrap();
    let high: f64 = between
        .split("and ")
        .nth(1)
        .unwrap()
        .split('%')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r.crop_area, [low / 100.0, high / 100.0]);
    assert_eq!(
        r.warmup_steps as f64,
        number_after(OFFICIAL_CODE, "warmup_steps=")
    );
    assert_eq!(
        r.lr_reference_batch as f64,
        number_after(OFFICIAL_CODE, "batch_size /")
    );
    // The defaults of the options are the recipe.
    let d = SemiSupervisedOptions::default();
    assert_eq!(d.learning_rates, r.learning_rates);
    assert_eq!(d.epochs, r.epochs);
    assert_eq!(d.crop_min_scale, r.crop_area[0]);
    assert_eq!(
        (d.batch_size, d.sgd),
        (
            r.batch_size,
            SgdConfig {
                momentum: r.momentum,
                nesterov: r.nesterov,
                weight_decay: r.weight_decay
            }
        )
    );
    let table: Vec<f64> = PAPER_TABLE_2
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let ours: Vec<f64> = [PAPER_RESNET50[0].top1, PAPER_RESNET50[1].top1]
        .into_iter()
        .chain([PAPER_RESNET50[0].top5, PAPER_RESNET50[1].top5])
        .collect();
    assert_eq!(ours, table);
    assert_eq!(
        (
            PAPER_RESNET50[0].labels_percent,
            PAPER_RESNET50[1].labels_percent
        ),
        (1.0, 10.0)
    );
}

const WNIDS: [&str; 3] = ["n01440764", "n01443537", "n01484850"];

fn mini_imagenet(root: &Path, train_per_class: usize, val_per_class: usize) {
    write_mini_imagenet(root, &WNIDS, train_per_class, val_per_class, 16);
}

#[test]
fn balanced_fractions_take_a_share_of_every_class() -> R {
    let dir = tempfile::tempdir()?;
    write_mnist_like(dir.path(), 300, 10, 3, 2);
    let train =
        DatasetSource::new(DatasetKind::Mnist, Some(dir.path().into())).open(Split::Train)?;
    let picked = balanced_fraction(train.as_ref(), 0.1, 7)?;
    let per_class = |idx: &[usize]| {
        let mut n = [0usize; 3];
        for &i in idx {
            n[train.label_at(i).unwrap()] += 1;
        }
        n
    };
    assert_eq!(per_class(&picked), [10, 10, 10]);
    assert!(picked.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
    assert_eq!(balanced_fraction(train.as_ref(), 0.1, 7)?, picked);
    assert_ne!(balanced_fraction(train.as_ref(), 0.1, 8)?, picked);
    // At least one image of every class; 100 % is everything.
    assert_eq!(
        per_class(&balanced_fraction(train.as_ref(), 0.001, 0)?),
        [1, 1, 1]
    );
    assert_eq!(balanced_fraction(train.as_ref(), 1.0, 0)?.len(), 300);
    // `1%` of a dataset that is not ImageNet is such a fraction, named by its seed.
    let s = resolve_labels(&"10%".parse()?, DatasetKind::Mnist, train.as_ref(), 7)?;
    assert_eq!((s.indices, s.name.as_str()), (picked, "10%"));
    assert!(s.source.contains("class-balanced") && s.source.contains("seed 7"));
    // A file list needs image files.
    let list = dir.path().join("list.txt");
    write(&list, b"a.png\n");
    let err = resolve_labels(
        &LabelSpec::File(list),
        DatasetKind::Mnist,
        train.as_ref(),
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("list.txt") && err.contains("percentage"),
        "{err}"
    );
    Ok(())
}

#[test]
fn subset_files_select_their_images_and_name_the_first_missing_one() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("imagenet");
    mini_imagenet(&root, 4, 0);
    let source = DatasetSource::new(DatasetKind::Imagenet, Some(root.clone()));
    let train = source.open(Split::Train)?;
    let list = dir.path().join("subset.txt");
    write(
        &list,
        b"n01443537_2.JPEG\n\nn01440764_0.JPEG\r\nn01484850/n01484850_3.JPEG\n",
    );
    let s = resolve_labels(
        &LabelSpec::File(list.clone()),
        DatasetKind::Imagenet,
        train.as_ref(),
        0,
    )?;
    assert_eq!(s.indices, [0, 6, 11]);
    assert_eq!(s.name, "subset.txt");
    let names: Vec<String> = s
        .indices
        .iter()
        .map(|&i| {
            train
                .file_path(i)
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into()
        })
        .collect();
    assert_eq!(
        names,
        ["n01440764_0.JPEG", "n01443537_2.JPEG", "n01484850_3.JPEG"]
    );

    let cases: [(&[u8], &[&str]); 4] = [
        (
            b"n01440764_0.JPEG\nn01440764_9.JPEG\nn02000000_1.JPEG\n",
            &["2 of its 3 entries", "line 2 `n01440764_9.JPEG`"],
        ),
        (
            b"n01440764_0.JPEG\nn01440764_0.JPEG\n",
            &["line 2", "first on line 1"],
        ),
        (b"\n\n", &["lists no image"]),
        (
            b"n01443537/n01440764_0.JPEG\n",
            &["line 1 `n01443537/n01440764_0.JPEG`"],
        ),
    ];
    for (text, needles) in cases {
        write(&list, text);
        let err = resolve_labels(
            &LabelSpec::File(list.clone()),
            DatasetKind::Imagenet,
            train.as_ref(),
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("subset.txt"), "{err}");
        for n in needles {
            assert!(err.contains(n), "{n:?} not in: {err}");
        }
    }
    // The standard lists name images this miniature does not have: the built-in file and its
    // first entry are named.
    let err = resolve_labels(&"1%".parse()?, DatasetKind::Imagenet, train.as_ref(), 0)
        .unwrap_err()
        .to_string();
    for n in [
        "1percent.txt",
        "12811 of its 12811 entries",
        "line 1 `n04235860_14959.JPEG`",
    ] {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    let err = resolve_labels(&"10%".parse()?, DatasetKind::Imagenet, train.as_ref(), 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("10percent.txt") && err.contains("128116"),
        "{err}"
    );
    Ok(())
}

/// An evaluation of the tiny encoder on the miniature ImageNet, labels from `subset`.
fn setup(dir: &Path, subset: &Path) -> EvalSetup {
    EvalSetup {
        data: DatasetSource::new(DatasetKind::Imagenet, Some(dir.join("imagenet"))),
        weights: Weights::File(dir.join("encoder.safetensors")),
        arch: None,
        image_size: Some(16),
        train_subset: None,
        test_subset: None,
        labels: Some(LabelSpec::File(subset.to_path_buf())),
        seed: 0,
        batch_size: 16,
        workers: 2,
        cache_dir: dir.join("features"),
        device: Device::Cpu,
        part: Default::default(),
        precision: Default::default(),
        parallel: byol_core::distributed::DataParallel::single(),
    }
}

/// Two learning rates × two epoch counts, batch 4, a quarter held out.
fn short_options() -> SemiSupervisedOptions {
    SemiSupervisedOptions {
        learning_rates: vec![0.5, 2.0],
        epochs: vec![1, 2],
        batch_size: 4,
        val_fraction: 0.25,
        checkpoint_every: 2,
        ..SemiSupervisedOptions::default()
    }
}

/// The miniature (3 classes, 8 training images each, 4 test images each), the tiny encoder and a
/// subset file naming 5 training images of each class.
fn fixture(dir: &Path) -> std::path::PathBuf {
    mini_imagenet(&dir.join("imagenet"), 8, 4);
    save_tiny_encoder(&dir.join("encoder.safetensors"), 3);
    let list: String = WNIDS
        .iter()
        .flat_map(|w| [0, 2, 3, 5, 7].map(|k| format!("{w}_{k}.JPEG\n")))
        .collect();
    let subset = dir.join("subset-5.txt");
    write(&subset, list.as_bytes());
    subset
}

fn run<'a>(
    out: &'a Path,
    report: &'a Path,
    resume: bool,
    stop: &'a AtomicBool,
    after: Option<u64>,
) -> SemiSupervisedRun<'a> {
    SemiSupervisedRun {
        out_dir: out,
        report_path: report,
        resume,
        stop,
        stop_after_steps: after,
    }
}

fn finished(o: SemiSupervisedOutcome) -> ClassificationReport {
    match o {
        SemiSupervisedOutcome::Finished(r) => *r,
        other => panic!("not finished: {other:?}"),
    }
}

#[test]
fn fine_tunes_on_a_subset_file_of_a_miniature_imagenet() -> R {
    let dir = tempfile::tempdir()?;
    let subset = fixture(dir.path());
    let out = dir.path().join("out");
    let report_path = out.join("semi-supervised.json");
    let stop = AtomicBool::new(false);
    let opts = short_options();
    let r = finished(setup(dir.path(), &subset).semi_supervised(
        &opts,
        &run(&out, &report_path, false, &stop, None),
        &mut SilentFinetune,
    )?);
    assert_eq!(r.protocol, "semi-supervised");
    assert_eq!(r.dataset, "imagenet");
    // 15 labelled images: 4 held out (a quarter), the final run on all 15; 12 test images.
    assert_eq!((r.splits.train, r.splits.val, r.splits.test), (15, 4, 12));
    let h = &r.hyperparameters;
    assert_eq!(h["labels"], "subset-5.txt");
    assert_eq!(h["labelled_images"], 15);
    assert!(h["labels_source"]
        .as_str()
        .unwrap()
        .contains("subset-5.txt"));
    let grid = h["grid"].as_array().unwrap();
    let points: Vec<(f64, u64)> = grid
        .iter()
        .map(|p| (p["lr"].as_f64().unwrap(), p["epochs"].as_u64().unwrap()))
        .collect();
    assert_eq!(points, [(0.5, 1), (0.5, 2), (2.0, 1), (2.0, 2)]);
    // The chosen point is the first of the best held-out scores.
    let best = grid
        .iter()
        .map(|p| p["val_top1"].as_f64().unwrap())
        .fold(f64::NEG_INFINITY, f64::max);
    let first = grid
        .iter()
        .find(|p| p["val_top1"].as_f64().unwrap() == best)
        .unwrap();
    assert_eq!((&h["lr"], &h["epochs"]), (&first["lr"], &first["epochs"]));
    assert_eq!(
        h["peak_lr"].as_f64().unwrap(),
        h["lr"].as_f64().unwrap() * 4.0 / 256.0
    );
    assert_eq!(
        (h["momentum"].as_f64(), h["nesterov"].as_bool()),
        (Some(0.9), Some(true))
    );
    assert_eq!(h["weight_decay"], 0.0);
    assert!((0.0..=1.0).contains(&r.top1) && r.top5 >= r.top1);
    assert_eq!(r.top5, 1.0, "3 classes: every label is in the top 5");
    assert_eq!(r.per_class_accuracy.len(), 3);
    assert_eq!(r.confusion_matrix.iter().flatten().sum::<u64>(), 12);
    assert_eq!(ClassificationReport::read_json(&report_path)?, r);
    // Nothing of the run is left but the report (and the lock).
    assert!(!out.join(PROGRESS_FILE).exists() && !out.join(STATE_FILE).exists());
    // Deterministic: a second evaluation into another directory gives the same numbers.
    let out2 = dir.path().join("out2");
    let again = finished(setup(dir.path(), &subset).semi_supervised(
        &opts,
        &run(&out2, &out2.join("r.json"), false, &stop, None),
        &mut SilentFinetune,
    )?);
    assert_eq!(without_seconds(again), without_seconds(r));
    Ok(())
}

fn without_seconds(mut r: ClassificationReport) -> ClassificationReport {
    r.seconds = 0.0;
    r
}

#[test]
fn an_interrupted_evaluation_resumes_to_the_uninterrupted_result() -> R {
    let dir = tempfile::tempdir()?;
    let subset = fixture(dir.path());
    let opts = short_options();
    let setup = setup(dir.path(), &subset);
    let stop = AtomicBool::new(false);
    let whole = dir.path().join("whole");
    let expected = finished(setup.semi_supervised(
        &opts,
        &run(&whole, &whole.join("r.json"), false, &stop, None),
        &mut SilentFinetune,
    )?);

    // Grid runs take 2 steps an epoch (11 images, batch 4): 2, 4, 2, 4 steps; the final run 3 an
    // epoch. Stop after 3 steps (step 1 of the second run), then after 6 more (step 1 of the
    // fourth: the second run's 3, the third's 2, one), then finish.
    let out = dir.path().join("resumed");
    let report = out.join("r.json");
    let o = setup.semi_supervised(
        &opts,
        &run(&out, &report, false, &stop, Some(3)),
        &mut SilentFinetune,
    )?;
    let SemiSupervisedOutcome::Interrupted {
        run: name,
        step,
        total_steps,
        checkpoint,
    } = o
    else {
        panic!("not interrupted: {o:?}");
    };
    assert_eq!(
        (name.as_str(), step, total_steps),
        ("selection lr 0.5, 2 epochs", 1, 4)
    );
    assert_eq!(checkpoint.as_deref(), Some(out.join(STATE_FILE).as_path()));
    assert!(out.join(PROGRESS_FILE).exists() && !report.exists());

    // A fresh call into that directory is refused; so is a resume with other settings.
    let err = setup
        .semi_supervised(
            &opts,
            &run(&out, &report, false, &stop, None),
            &mut SilentFinetune,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("--resume"), "{err}");
    let other = SemiSupervisedOptions {
        learning_rates: vec![0.5, 3.0],
        ..short_options()
    };
    let err = setup
        .semi_supervised(
            &other,
            &run(&out, &report, true, &stop, None),
            &mut SilentFinetune,
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("learning_rates") && err.contains("3.0"),
        "{err}"
    );
    // Resuming where nothing was started is an error too.
    let empty = dir.path().join("empty");
    let err = setup
        .semi_supervised(
            &opts,
            &run(&empty, &report, true, &stop, None),
            &mut SilentFinetune,
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no semi-supervised evaluation to resume"),
        "{err}"
    );

    let o = setup.semi_supervised(
        &opts,
        &run(&out, &report, true, &stop, Some(6)),
        &mut SilentFinetune,
    )?;
    let SemiSupervisedOutcome::Interrupted {
        run: name, step, ..
    } = o
    else {
        panic!("not interrupted: {o:?}");
    };
    assert_eq!((name.as_str(), step), ("selection lr 2, 2 epochs", 1));
    // A stop requested before the call's first step leaves the run where it was.
    let stopped = AtomicBool::new(true);
    let o = setup.semi_supervised(
        &opts,
        &run(&out, &report, true, &stopped, None),
        &mut SilentFinetune,
    )?;
    assert!(
        matches!(o, SemiSupervisedOutcome::Interrupted { step: 1, .. }),
        "{o:?}"
    );

    let resumed = finished(setup.semi_supervised(
        &opts,
        &run(&out, &report, true, &stop, None),
        &mut SilentFinetune,
    )?);
    assert_eq!(without_seconds(resumed), without_seconds(expected));
    assert!(!out.join(PROGRESS_FILE).exists() && !out.join(STATE_FILE).exists());
    Ok(())
}

#[test]
fn the_linear_modes_take_the_same_label_subsets() -> R {
    let dir = tempfile::tempdir()?;
    let subset = fixture(dir.path());
    let mut setup = setup(dir.path(), &subset);
    let opts = byol_core::eval::linear_protocol::LinearProtocolOptions {
        grid: byol_core::eval::logistic::lambda_grid(4, 1e-4, 1e0)?,
        ..Default::default()
    };
    let r = setup.logistic(&opts)?;
    assert_eq!(r.splits.train, 15);
    assert_eq!(r.hyperparameters["labels"], "subset-5.txt");
    // The subset's features are cached apart from the whole split's.
    setup.labels = None;
    let all = setup.logistic(&opts)?;
    assert_eq!(all.splits.train, 24);
    assert!(!all.hyperparameters.contains_key("labels"));
    let cached: Vec<String> = std::fs::read_dir(dir.path().join("features"))?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("-train"))
        .collect();
    assert_eq!(cached.len(), 2, "{cached:?}");
    // --labels and --train-subset both choose training images.
    setup.labels = Some("50%".parse()?);
    setup.train_subset = Some(10);
    let err = setup.logistic(&opts).unwrap_err().to_string();
    assert!(err.contains("--train-subset"), "{err}");
    Ok(())
}

/// Fine-tuning trains the whole network: after a few steps every convolution of the encoder has
/// moved and the BatchNorm running statistics were updated (training mode), and the state the
/// tuner checkpoints reads back into a fresh tuner.
#[test]
fn the_encoder_itself_is_fine_tuned_with_batchnorm_in_training_mode() -> R {
    use byol_core::transfer::finetune::FineTuner;
    use byol_core::transfer::CommonOptions;
    let dir = tempfile::tempdir()?;
    let weights = dir.path().join("encoder.safetensors");
    save_tiny_encoder(&weights, 5);
    let common = CommonOptions::new(Weights::File(weights), 16);
    let sgd = SgdConfig::default();
    let mut tuner = FineTuner::classifier(&common, sgd, 3)?;
    // Copies: the state's tensors share the storage the optimiser writes into.
    let before: std::collections::HashMap<String, candle_core::Tensor> = tuner
        .state_tensors()
        .into_iter()
        .map(|(k, t)| (k, t.copy().unwrap()))
        .collect();
    let (x, _) = byol_tests::views(6, 16, 1);
    for _ in 0..3 {
        tuner.cross_entropy_step(&x, &[0, 1, 2, 0, 1, 2], 0.1, &|| "test".into())?;
    }
    let after: std::collections::HashMap<String, candle_core::Tensor> =
        tuner.state_tensors().into_iter().collect();
    let moved = |name: &str| {
        let difference = (after[name].to_dtype(candle_core::DType::F64).unwrap()
            - before[name].to_dtype(candle_core::DType::F64).unwrap())
        .unwrap();
        byol_tests::abs_sum(&difference) > 0.0
    };
    let convs: Vec<&String> = before
        .keys()
        .filter(|k| k.starts_with("encoder.") && k.contains("conv") && k.ends_with(".weight"))
        .collect();
    assert!(convs.len() >= 17, "{convs:?}");
    for name in convs {
        assert!(moved(name), "{name} did not move");
    }
    for name in [
        "encoder.bn1.running_mean",
        "encoder.layer4.1.bn2.running_var",
        "head.fc.weight",
    ] {
        assert!(moved(name), "{name} did not move");
    }
    assert!(after.keys().any(|k| k.starts_with("sgd.encoder.")));
    assert!(after.keys().any(|k| k.starts_with("sgd.head.")));
    let mut fresh = FineTuner::classifier(&common, sgd, 3)?;
    fresh.load_state(&after)?;
    let reloaded: std::collections::HashMap<String, candle_core::Tensor> =
        fresh.state_tensors().into_iter().collect();
    assert_eq!(reloaded.len(), after.len());
    Ok(())
}
