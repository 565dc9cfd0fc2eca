//! Classification transfer on one image-folder dataset (the paper's 12-dataset suite): the linear
//! protocol on frozen features (App. D.2) or fine-tuning (App. D.3), with each dataset's metric.
//! The accepted layouts are [`crate::data::splits`]'; without a validation split, one is carved
//! out of train (seeded, `val_fraction`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::data::splits::{open_splits, Splits};
use crate::data::{Concat, Dataset, Subset};
use crate::eval::linear_protocol::{linear_protocol, LinearProtocolOptions};
use crate::eval::logistic::{
    default_lambda_grid, l2_path_select, LogisticOptions, LogisticRegression,
};
use crate::eval::matrix::OwnedFeatures;
use crate::eval::metrics;
use crate::eval::split::train_val_split;
use crate::transfer::finetune::{finetune_once, grid_search, FinetuneOptions};
use crate::transfer::paper::{paper_numbers, Metric};
use crate::transfer::report::{record, ClassScore, LayoutChoice, LinearChoice, TransferReport};
use crate::transfer::{frozen_features, CommonOptions};
use crate::{Error, Result};

/// Settings of [`run_classify`] and [`crate::transfer::suite::run_suite`].
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
    record(
        &mut hyper,
        &LayoutChoice {
            layout: &splits.layout,
        },
    )?;
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
    record(
        &mut report.hyperparameters,
        &LinearChoice {
            lambda: best_lambda,
            lambda_grid_size: opts.lambda_grid.len(),
            validation: &validation,
        },
    )?;
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

fn finetune(
    dir: &Path,
    splits: &Splits,
    opts: &ClassifyOptions,
    ft: &FinetuneOptions,
) -> Result<TransferReport> {
    let start = Instant::now();
    ft.validate()?;
    let mut report = base_report(dir, splits, opts)?;
    let metric = metric_of(&report);
    let classes = splits.train.num_classes();
    let (sel_train, sel_val, has_val) =
        selection_split(splits, opts.val_fraction, opts.common.seed)?;
    let choice = grid_search(ft, |lr, wd| {
        let (scores, labels, _) =
            finetune_once(&sel_train, &sel_val, None, lr, wd, &opts.common, ft)?;
        Ok(score(&scores, &labels, classes, metric)?.0)
    })?;
    // Final run on train + val (the whole train split when val was carved out of it).
    let final_train: Arc<dyn Dataset> = match &splits.val {
        Some(v) => Arc::new(Concat::new(vec![Arc::clone(&splits.train), Arc::clone(v)])?),
        None => Arc::clone(&splits.train),
    };
    let (scores, labels, loss) = finetune_once(
        &final_train,
        &splits.test,
        None,
        choice.lr,
        choice.weight_decay,
        &opts.common,
        ft,
    )?;
    let (value, per_class) = score(&scores, &labels, classes, metric)?;
    report.protocol = "fine-tuned (App. D.3): encoder + linear head, SGD Nesterov, cosine lr, \
                       random crop + flip, lr × weight decay chosen on val, retrained on \
                       train+val"
        .into();
    let validation = if has_val {
        "val split"
    } else {
        "seeded carve-out of train"
    };
    record(
        &mut report.hyperparameters,
        &choice.report(ft, opts.common.batch_size, validation),
    )?;
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
