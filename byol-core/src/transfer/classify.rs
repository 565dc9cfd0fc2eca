//! Classification transfer on image-folder datasets (the paper's 12-dataset suite): the linear
//! protocol on frozen features (App. D.2) and fine-tuning (App. D.3), with each dataset's metric,
//! and `--suite paper`, which runs every dataset found under a root next to the paper's numbers.
//!
//! Layouts accepted for one dataset directory:
//! - `train/<class>/…`, `test/<class>/…` and optionally `val/<class>/…`;
//! - `<class>/…` with split files `train.txt`, `test.txt` and optionally `val.txt` listing image
//!   paths relative to the directory (`<class>/<file>`), one per line;
//! - for `cifar10` / `cifar100`, the binary version (`data_batch_1.bin`…, `train.bin`…).
//!
//! Without a validation split, one is carved out of train (seeded, `val_fraction`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Module, ModuleT, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::augment::{TwoViewAugmenter, ViewConfig};
use crate::data::dataset::Subset;
use crate::data::image_folder::ImageFolder;
use crate::data::{Dataset, DatasetKind, DatasetSource, Sample, Split};
use crate::eval::logistic::{
    default_lambda_grid, l2_path_select, linear_protocol, train_val_split, LinearProtocolOptions,
    LogisticOptions, LogisticRegression,
};
use crate::eval::matrix::OwnedFeatures;
use crate::eval::metrics;
use crate::nn::layers::Linear;
use crate::nn::VarStore;
use crate::optim::{LrSchedule, Sgd, SgdConfig};
use crate::transfer::report::{hp, ClassScore, SuiteReport, SuiteRow, TransferReport};
use crate::transfer::voc::{run_voc_classification, VocOptions, VocProtocol};
use crate::transfer::{eval_augment, frozen_features, CommonOptions};
use crate::{Error, Result};

/// A dataset's transfer metric (App. D.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Top1,
    MeanPerClass,
    /// VOC2007's 11-point mAP (multi-label; the VOC task computes it).
    Map11,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Top1 => "top-1",
            Metric::MeanPerClass => "mean per-class accuracy",
            Metric::Map11 => "mAP (11-point)",
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "top1" | "top-1" => Ok(Metric::Top1),
            "mean-per-class" => Ok(Metric::MeanPerClass),
            _ => Err(Error::config(
                "metric",
                format!("`{s}`: use top1 or mean-per-class"),
            )),
        }
    }
}

/// One dataset of the paper's transfer table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperEntry {
    /// Folder name under the suite root.
    pub name: &'static str,
    pub metric: Metric,
    /// Linear evaluation, ResNet-50, as a fraction.
    pub linear: f64,
    /// Fine-tuned, where the recipe lists it.
    pub finetune: Option<f64>,
}

const fn entry(name: &'static str, metric: Metric, linear: f64, ft: Option<f64>) -> PaperEntry {
    PaperEntry {
        name,
        metric,
        linear,
        finetune: ft,
    }
}

/// The paper's ResNet-50 transfer numbers, copied from `shared/BYOL-RECIPE.md` ("Reported
/// numbers": linear transfer and fine-tuned transfer; metrics from "Evaluation protocols").
pub const PAPER_TRANSFER: [PaperEntry; 12] = [
    entry("food101", Metric::Top1, 0.753, Some(0.885)),
    entry("cifar10", Metric::Top1, 0.913, Some(0.978)),
    entry("cifar100", Metric::Top1, 0.784, Some(0.861)),
    entry("birdsnap", Metric::Top1, 0.572, None),
    entry("sun397", Metric::Top1, 0.622, None),
    entry("cars", Metric::Top1, 0.678, None),
    entry("aircraft", Metric::MeanPerClass, 0.606, None),
    entry("voc2007", Metric::Map11, 0.825, Some(0.854)),
    entry("dtd", Metric::Top1, 0.755, None),
    entry("pets", Metric::MeanPerClass, 0.904, None),
    entry("caltech101", Metric::MeanPerClass, 0.942, None),
    entry("flowers", Metric::MeanPerClass, 0.961, Some(0.970)),
];

/// The paper's entry for a dataset folder name.
pub fn paper_numbers(name: &str) -> Option<PaperEntry> {
    PAPER_TRANSFER.iter().copied().find(|e| e.name == name)
}

/// Fine-tuning settings (App. D.3: SGD Nesterov, lr × weight-decay grid chosen on val).
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneOptions {
    pub steps: usize,
    pub lrs: Vec<f64>,
    pub weight_decays: Vec<f64>,
    pub momentum: f64,
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        Self {
            steps: 20_000,
            lrs: vec![0.01, 0.03, 0.1],
            weight_decays: vec![0.0, 1e-5, 1e-4],
            momentum: 0.9,
        }
    }
}

/// Settings of [`run_classify`] and [`run_suite`].
#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    pub common: CommonOptions,
    /// Overrides the paper's metric for the dataset (top-1 for names not in the paper's list).
    pub metric: Option<Metric>,
    pub lambda_grid: Vec<f64>,
    pub val_fraction: f64,
    /// Fine-tune instead of the linear protocol (the suite runs both).
    pub finetune: Option<FinetuneOptions>,
}

impl ClassifyOptions {
    pub fn new(common: CommonOptions) -> Self {
        Self {
            common,
            metric: None,
            lambda_grid: default_lambda_grid(),
            val_fraction: 0.1,
            finetune: None,
        }
    }
}

/// The splits of one dataset.
pub struct Splits {
    pub train: Arc<dyn Dataset>,
    pub val: Option<Arc<dyn Dataset>>,
    pub test: Arc<dyn Dataset>,
    /// How they were found, for the report.
    pub layout: String,
}

/// Opens `dir` in one of the layouts of the module docs.
pub fn open_splits(dir: &Path) -> Result<Splits> {
    if dir.join("train").is_dir() {
        let open = |name: &str| -> Result<Option<Arc<dyn Dataset>>> {
            let d = dir.join(name);
            Ok(if d.is_dir() {
                Some(Arc::new(ImageFolder::open(&d)?))
            } else {
                None
            })
        };
        let train = open("train")?.ok_or_else(|| Error::format(dir, "no train/"))?;
        let test = open("test")?.ok_or_else(|| {
            Error::format(
                dir,
                "train/ but no test/ sub-folder: the test split is missing",
            )
        })?;
        let val = open("val")?;
        for (name, d) in [("test", Some(&test)), ("val", val.as_ref())] {
            if let Some(d) = d {
                if d.class_names() != train.class_names() {
                    return Err(Error::format(
                        dir.join(name),
                        "its class folders differ from train/'s",
                    ));
                }
            }
        }
        return Ok(Splits {
            train,
            val,
            test,
            layout: "train/ val/ test/ class folders".into(),
        });
    }
    if dir.join("train.txt").is_file() {
        let classes: Vec<String> = crate::data::image_folder::ImageFolder::open(dir)?
            .class_names()
            .to_vec();
        let list = |name: &str| -> Result<Option<Arc<dyn Dataset>>> {
            let path = dir.join(format!("{name}.txt"));
            if !path.is_file() {
                return Ok(None);
            }
            Ok(Some(Arc::new(split_file(dir, &path, &classes)?)))
        };
        let train = list("train")?.ok_or_else(|| Error::format(dir, "no train.txt"))?;
        let test = list("test")?
            .ok_or_else(|| Error::format(dir.join("test.txt"), "missing: no test split"))?;
        return Ok(Splits {
            train,
            val: list("val")?,
            test,
            layout: "class folders with train/val/test.txt split files".into(),
        });
    }
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let kind = match name {
        "cifar10" => Some(DatasetKind::Cifar10),
        "cifar100" => Some(DatasetKind::Cifar100),
        _ => None,
    };
    if let Some(kind) = kind {
        let source = DatasetSource::new(kind, Some(dir.to_path_buf()));
        return Ok(Splits {
            train: source.open(Split::Train)?,
            val: None,
            test: source.open(Split::Test)?,
            layout: format!("{kind} binary files"),
        });
    }
    Err(Error::format(
        dir,
        "no train/ sub-folder and no train.txt split file: not an image-folder dataset",
    ))
}

/// An image-folder split from a list of relative paths; the class is the first path component.
fn split_file(dir: &Path, list: &Path, classes: &[String]) -> Result<ImageFolder> {
    let text = std::fs::read_to_string(list).map_err(|e| Error::io(list, e))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |m: String| Error::format(list, format!("line {}: {m}", i + 1));
        let rel = PathBuf::from(line);
        let class = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .ok_or_else(|| bad(format!("`{line}` has no class folder")))?;
        let label = classes
            .iter()
            .position(|c| c == class)
            .ok_or_else(|| bad(format!("class folder `{class}` does not exist")))?;
        let path = dir.join(&rel);
        if !path.is_file() {
            return Err(bad(format!("image {} does not exist", path.display())));
        }
        items.push((path, label));
    }
    if items.is_empty() {
        return Err(Error::format(list, "lists no image"));
    }
    Ok(ImageFolder::from_items(classes.to_vec(), items))
}

/// Two datasets with the same classes, one after the other (train + val for the final fit).
struct Concat {
    parts: Vec<Arc<dyn Dataset>>,
}

impl Dataset for Concat {
    fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    fn class_names(&self) -> &[String] {
        self.parts[0].class_names()
    }

    fn get(&self, mut index: usize) -> Result<Sample> {
        for p in &self.parts {
            if index < p.len() {
                return p.get(index);
            }
            index -= p.len();
        }
        Err(Error::Input(format!(
            "index past the {} samples of train+val",
            self.len()
        )))
    }
}

type SharedDataset = Arc<dyn Dataset>;

/// Train and validation sets for model selection: the val split, or a carve-out of train.
fn selection_split(
    splits: &Splits,
    val_fraction: f64,
    seed: u64,
) -> Result<(SharedDataset, SharedDataset, bool)> {
    match &splits.val {
        Some(v) => Ok((Arc::clone(&splits.train), Arc::clone(v), true)),
        None => {
            let (tr, va) = train_val_split(splits.train.len(), val_fraction, seed)?;
            Ok((
                Arc::new(Subset::new(Arc::clone(&splits.train), tr)?),
                Arc::new(Subset::new(Arc::clone(&splits.train), va)?),
                false,
            ))
        }
    }
}

/// The metric of `scores` (row-major `n × classes`) and per-class accuracies.
fn score(
    scores: &[f32],
    labels: &[usize],
    classes: usize,
    metric: Metric,
) -> Result<(f64, Vec<Option<f64>>)> {
    let pred = metrics::predictions(scores, classes)?;
    let value = match metric {
        Metric::Top1 => metrics::top1_accuracy(scores, labels, classes)?,
        Metric::MeanPerClass => metrics::mean_per_class_accuracy(labels, &pred, classes)?,
        Metric::Map11 => {
            return Err(Error::config(
                "metric",
                "11-point mAP is VOC2007's: use --task voc",
            ))
        }
    };
    let cm = metrics::confusion_matrix(labels, &pred, classes)?;
    let per_class = (0..classes)
        .map(|c| {
            let row: u64 = cm[c * classes..(c + 1) * classes].iter().sum();
            (row > 0).then(|| cm[c * classes + c] as f64 / row as f64)
        })
        .collect();
    Ok((value, per_class))
}

fn dataset_name(dir: &Path) -> String {
    dir.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("dataset")
        .to_string()
}

/// One dataset: the linear protocol, or fine-tuning when `opts.finetune` is set.
pub fn run_classify(dir: &Path, opts: &ClassifyOptions) -> Result<TransferReport> {
    opts.common.validate()?;
    let splits = open_splits(dir)?;
    match &opts.finetune {
        None => linear(dir, &splits, opts),
        Some(ft) => finetune(dir, &splits, opts, ft),
    }
}

fn base_report(dir: &Path, splits: &Splits, opts: &ClassifyOptions) -> Result<TransferReport> {
    let name = dataset_name(dir);
    let metric = opts
        .metric
        .or(paper_numbers(&name).map(|p| p.metric))
        .unwrap_or(Metric::Top1);
    let mut sizes = BTreeMap::new();
    sizes.insert("train".to_string(), splits.train.len());
    if let Some(v) = &splits.val {
        sizes.insert("val".to_string(), v.len());
    }
    sizes.insert("test".to_string(), splits.test.len());
    let mut hyper = BTreeMap::new();
    hp(&mut hyper, "layout", &splits.layout);
    Ok(TransferReport {
        task: "classify".into(),
        protocol: String::new(),
        dataset: name,
        dataset_root: dir.to_path_buf(),
        splits: sizes,
        weights: opts.common.weights_info()?,
        image_size: opts.common.image_size,
        hyperparameters: hyper,
        metric: metric.name().into(),
        value: 0.0,
        paper: None,
        per_class: Vec::new(),
        extra: BTreeMap::new(),
        seconds: 0.0,
    })
}

fn metric_of(report: &TransferReport) -> Metric {
    if report.metric == Metric::MeanPerClass.name() {
        Metric::MeanPerClass
    } else {
        Metric::Top1
    }
}

fn per_class_scores(names: &[String], values: Vec<Option<f64>>) -> Vec<ClassScore> {
    names
        .iter()
        .zip(values)
        .map(|(c, v)| ClassScore {
            class: c.clone(),
            value: v,
        })
        .collect()
}

fn linear(dir: &Path, splits: &Splits, opts: &ClassifyOptions) -> Result<TransferReport> {
    let start = Instant::now();
    let mut report = base_report(dir, splits, opts)?;
    let metric = metric_of(&report);
    let classes = splits.train.num_classes();
    let encoder = opts.common.frozen_encoder()?;
    let feats = |ds: &Arc<dyn Dataset>, what: &str| {
        frozen_features(encoder.as_ref(), Arc::clone(ds), &opts.common, what)
    };
    let train = feats(&splits.train, "train")?;
    let test = feats(&splits.test, "test")?;
    let logistic = LogisticOptions::default();
    let (model, best_lambda, validation) = match &splits.val {
        Some(v) => {
            let val = feats(v, "val")?;
            let sel = l2_path_select(
                train.features.view(),
                &train.labels,
                val.features.view(),
                &val.labels,
                classes,
                &opts.lambda_grid,
                &logistic,
            )?;
            // Refit on train + val at the chosen strength, as the paper does.
            let cols = train.features.view().cols();
            let mut data = train.features.into_vec();
            data.extend_from_slice(val.features.view().data());
            let all = OwnedFeatures::new(data, cols)?;
            let labels = [train.labels.clone(), val.labels.clone()].concat();
            let model = LogisticRegression::fit_warm(
                all.view(),
                &labels,
                classes,
                sel.best_lambda,
                &logistic,
                Some(&sel.model),
            )?;
            (
                model,
                sel.best_lambda,
                "val split, refit on train+val".to_string(),
            )
        }
        None => {
            let r = linear_protocol(
                train.features.view(),
                &train.labels,
                test.features.view(),
                &test.labels,
                classes,
                &LinearProtocolOptions {
                    grid: opts.lambda_grid.clone(),
                    val_fraction: opts.val_fraction,
                    seed: opts.common.seed,
                    logistic,
                },
            )?;
            (
                r.model,
                r.best_lambda,
                format!(
                    "seeded {} carve-out of train, refit on train",
                    opts.val_fraction
                ),
            )
        }
    };
    let scores = model.predict_scores(test.features.view())?;
    let (value, per_class) = score(&scores, &test.labels, classes, metric)?;
    report.protocol = "linear (App. D.2): frozen features, multinomial L2 logistic regression \
                       (L-BFGS), L2 strength from the sweep chosen by validation top-1"
        .into();
    hp(&mut report.hyperparameters, "lambda", best_lambda);
    hp(
        &mut report.hyperparameters,
        "lambda_grid_size",
        opts.lambda_grid.len(),
    );
    hp(&mut report.hyperparameters, "validation", validation);
    report.value = value;
    report.paper = paper_numbers(&report.dataset).map(|p| p.linear);
    report.extra.insert(
        "top1".into(),
        metrics::top1_accuracy(&scores, &test.labels, classes)?,
    );
    report.per_class = per_class_scores(splits.train.class_names(), per_class);
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Mean over the kept entries (`keep` = 1) of the sigmoid cross-entropy of `logits` against `y`
/// in {0, 1}, in the stable form `max(x, 0) − x·y + log(1 + e^−|x|)`.
fn sigmoid_cross_entropy(logits: &Tensor, y: &Tensor, keep: &Tensor) -> Result<Tensor> {
    let x = logits;
    let per = ((x.relu()? - (x * y)?)? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let n = keep.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((per * keep)?.sum_all()?.affine(1.0 / n.max(1.0), 0.0)?)
}

/// Fine-tunes a fresh copy of the encoder plus a linear head on `train` for `steps`, returning
/// the test scores on `eval` (row-major `n × classes`) and its labels.
///
/// With `multi_label` (row-major `train.len() × classes` targets 1 / -1 / 0 = difficult) the loss
/// is a per-class sigmoid cross-entropy with difficult entries left out (VOC); otherwise softmax
/// cross-entropy on the dataset's labels.
pub(crate) fn finetune_once(
    train: &Arc<dyn Dataset>,
    eval: &Arc<dyn Dataset>,
    multi_label: Option<&[i8]>,
    lr: f64,
    weight_decay: f64,
    common: &CommonOptions,
    ft: &FinetuneOptions,
) -> Result<(Vec<f32>, Vec<usize>, f64)> {
    let classes = train.num_classes();
    if let Some(t) = multi_label {
        if t.len() != train.len() * classes {
            return Err(Error::Input(format!(
                "{} multi-label targets for {} images × {classes} classes",
                t.len(),
                train.len()
            )));
        }
    }
    let (encoder, enc_store) = common.trainable_encoder()?;
    let channels = encoder.config().in_channels;
    let dim = encoder.config().feature_dim()?;
    let mut head_store = VarStore::new(&common.device, common.seed.wrapping_add(1));
    let head = Linear::new(&mut head_store.root().pp("fc"), dim, classes, true)?;
    // Fine-tuning augmentation: random resized crop and flip only.
    let mut aug = eval_augment(common.image_size, channels);
    let view = ViewConfig {
        jitter_prob: 0.0,
        grayscale_prob: 0.0,
        ..ViewConfig::byol(0.0, 0.0)
    };
    aug.view1 = view.clone();
    aug.view2 = view;
    let augmenter = TwoViewAugmenter::new(aug)?;
    let sgd = SgdConfig {
        momentum: ft.momentum,
        nesterov: ft.momentum > 0.0,
        weight_decay,
    };
    let (mut opt_enc, mut opt_head) = (Sgd::new(sgd)?, Sgd::new(sgd)?);
    let schedule = LrSchedule {
        peak_lr: lr,
        warmup_steps: 0,
        total_steps: ft.steps as u64,
    };
    let (s, bs) = (common.image_size, common.batch_size);
    let view_len = augmenter.view_len();
    let mut rng = ChaCha8Rng::seed_from_u64(common.seed);
    let mut last_loss = f64::NAN;
    for step in 0..ft.steps {
        let picks: Vec<usize> = (0..bs).map(|_| rng.random_range(0..train.len())).collect();
        let batch = picks
            .par_iter()
            .map(|&i| {
                let sample = train.get(i)?;
                let mut out = vec![0f32; view_len];
                augmenter.apply(
                    &sample.image,
                    common.seed,
                    step as u64,
                    i as u64,
                    0,
                    &mut out,
                )?;
                Ok((out, (i, sample.label as u32)))
            })
            .collect::<Result<Vec<_>>>()?;
        let (pixels, meta): (Vec<Vec<f32>>, Vec<(usize, u32)>) = batch.into_iter().unzip();
        let x = Tensor::from_vec(pixels.concat(), (bs, channels, s, s), &common.device)?;
        let logits = head.forward(&encoder.forward_t(&x, true)?)?;
        let loss = match multi_label {
            None => {
                let labels: Vec<u32> = meta.iter().map(|m| m.1).collect();
                let y = Tensor::from_vec(labels, bs, &common.device)?;
                candle_nn::loss::cross_entropy(&logits, &y)?
            }
            Some(t) => {
                let pick = |f: fn(i8) -> f32| -> Vec<f32> {
                    meta.iter()
                        .flat_map(|&(i, _)| t[i * classes..(i + 1) * classes].iter().map(|&v| f(v)))
                        .collect()
                };
                let y =
                    Tensor::from_vec(pick(|v| f32::from(v == 1)), (bs, classes), &common.device)?;
                let keep =
                    Tensor::from_vec(pick(|v| f32::from(v != 0)), (bs, classes), &common.device)?;
                sigmoid_cross_entropy(&logits, &y, &keep)?
            }
        };
        last_loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !last_loss.is_finite() {
            return Err(Error::Diverged(format!(
                "fine-tuning loss {last_loss} at step {step} (lr {lr}, wd {weight_decay})"
            )));
        }
        let grads = loss.backward()?;
        let lr_now = schedule.lr(step as u64);
        opt_enc.step(&enc_store, &grads, lr_now)?;
        opt_head.step(&head_store, &grads, lr_now)?;
    }
    let feats = frozen_features(Some(&encoder), Arc::clone(eval), common, "evaluation")?;
    let cols = feats.features.view().cols();
    let x = Tensor::from_vec(
        feats.features.into_vec(),
        (feats.labels.len(), cols),
        &common.device,
    )?;
    let scores: Vec<f32> = head.forward(&x)?.flatten_all()?.to_vec1()?;
    Ok((scores, feats.labels, last_loss))
}

fn finetune(
    dir: &Path,
    splits: &Splits,
    opts: &ClassifyOptions,
    ft: &FinetuneOptions,
) -> Result<TransferReport> {
    let start = Instant::now();
    if ft.steps == 0 || ft.lrs.is_empty() || ft.weight_decays.is_empty() {
        return Err(Error::config(
            "finetune",
            "needs steps ≥ 1 and non-empty lr and weight-decay grids",
        ));
    }
    let mut report = base_report(dir, splits, opts)?;
    let metric = metric_of(&report);
    let classes = splits.train.num_classes();
    let (sel_train, sel_val, has_val) =
        selection_split(splits, opts.val_fraction, opts.common.seed)?;
    let mut grid = Vec::new();
    let mut best: Option<(f64, f64, f64)> = None;
    for &lr in &ft.lrs {
        for &wd in &ft.weight_decays {
            let (scores, labels, _) =
                finetune_once(&sel_train, &sel_val, None, lr, wd, &opts.common, ft)?;
            let (v, _) = score(&scores, &labels, classes, metric)?;
            tracing::info!(lr, wd, val = v, "fine-tuning grid point");
            grid.push(serde_json::json!({"lr": lr, "weight_decay": wd, "val": v}));
            if best.is_none_or(|(b, _, _)| v > b) {
                best = Some((v, lr, wd));
            }
        }
    }
    let (_, lr, wd) = best.ok_or_else(|| Error::config("finetune", "empty grid"))?;
    // Final run on train + val (the whole train split when val was carved out of it).
    let final_train: Arc<dyn Dataset> = match &splits.val {
        Some(v) => Arc::new(Concat {
            parts: vec![Arc::clone(&splits.train), Arc::clone(v)],
        }),
        None => Arc::clone(&splits.train),
    };
    let (scores, labels, loss) =
        finetune_once(&final_train, &splits.test, None, lr, wd, &opts.common, ft)?;
    let (value, per_class) = score(&scores, &labels, classes, metric)?;
    report.protocol = "fine-tuned (App. D.3): encoder + linear head, SGD Nesterov, cosine lr, \
                       random crop + flip, lr × weight decay chosen on val, retrained on \
                       train+val"
        .into();
    let h = &mut report.hyperparameters;
    hp(h, "steps", ft.steps);
    hp(h, "batch_size", opts.common.batch_size);
    hp(h, "momentum", ft.momentum);
    hp(h, "lr", lr);
    hp(h, "weight_decay", wd);
    hp(h, "grid", grid);
    hp(
        h,
        "validation",
        if has_val {
            "val split"
        } else {
            "seeded carve-out of train"
        },
    );
    report.value = value;
    report.paper = paper_numbers(&report.dataset).and_then(|p| p.finetune);
    report.extra.insert(
        "top1".into(),
        metrics::top1_accuracy(&scores, &labels, classes)?,
    );
    report.extra.insert("final_loss".into(), loss);
    report.per_class = per_class_scores(splits.train.class_names(), per_class);
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Every dataset of [`PAPER_TRANSFER`] found as a folder of `root`: linear (and fine-tuned when
/// `opts.finetune` is set), one row each next to the paper's numbers.
pub fn run_suite(root: &Path, opts: &ClassifyOptions) -> Result<SuiteReport> {
    let mut rows = Vec::new();
    let mut reports = Vec::new();
    let mut missing = Vec::new();
    let mut failed = BTreeMap::new();
    for entry in PAPER_TRANSFER {
        let dir = root.join(entry.name);
        if !dir.is_dir() {
            missing.push(entry.name.to_string());
            continue;
        }
        tracing::info!(dataset = entry.name, "transfer suite");
        let run = || -> Result<(TransferReport, Option<TransferReport>)> {
            if entry.metric == Metric::Map11 {
                let mut v = VocOptions::new(opts.common.clone(), VocProtocol::Logistic);
                v.lambda_grid = opts.lambda_grid.clone();
                v.val_fraction = opts.val_fraction;
                let lin = run_voc_classification(&dir, &v)?;
                v.finetune = opts.finetune.clone();
                let ft = match &opts.finetune {
                    Some(_) => Some(run_voc_classification(&dir, &v)?),
                    None => None,
                };
                return Ok((lin, ft));
            }
            let lin = run_classify(
                &dir,
                &ClassifyOptions {
                    finetune: None,
                    ..opts.clone()
                },
            )?;
            let ft = match &opts.finetune {
                Some(_) => Some(run_classify(&dir, opts)?),
                None => None,
            };
            Ok((lin, ft))
        };
        // One broken dataset must not throw away hours of the others: record it and go on.
        let (linear, finetuned) = match run() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(dataset = entry.name, "{e}");
                failed.insert(entry.name.to_string(), e.to_string());
                continue;
            }
        };
        rows.push(SuiteRow {
            dataset: entry.name.into(),
            metric: linear.metric.clone(),
            linear: Some(linear.value),
            paper_linear: Some(entry.linear),
            finetune: finetuned.as_ref().map(|r| r.value),
            paper_finetune: entry.finetune,
        });
        reports.push(linear);
        reports.extend(finetuned);
    }
    if rows.is_empty() && failed.is_empty() {
        return Err(Error::format(
            root,
            format!(
                "none of the paper's datasets is here (expected folders named {})",
                PAPER_TRANSFER.map(|e| e.name).join(", ")
            ),
        ));
    }
    Ok(SuiteReport {
        root: root.to_path_buf(),
        missing,
        failed,
        rows,
        reports,
    })
}
