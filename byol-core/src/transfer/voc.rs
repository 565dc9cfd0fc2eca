//! VOC2007 multi-label classification on frozen features, two protocols that must not be mixed:
//!
//! - [`VocProtocol::Logistic`], the paper's (App. D.2): one L2-regularised logistic regression per
//!   class, L2 strength chosen on a validation split by 11-point AP, refit on trainval, 11-point
//!   AP on test. The validation split is VOC's own `train` / `val` when their lists are there,
//!   otherwise a seeded carve-out of trainval;
//! - [`VocProtocol::Svm`], VISSL/mmselfsup's: one linear SVM per class on L2-normalised
//!   features, squared hinge, cost by 3-fold cross-validated AP, all-point AP on test.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::data::voc::{find_voc_dir, VocClassification, VocSource, VOC_CLASSES};
use crate::data::{Dataset, Subset};
use crate::eval::linear_protocol::LinearProtocolOptions;
use crate::eval::logistic::{
    binary_l2_path_select, default_lambda_grid, LogisticOptions, LogisticRegression,
};
use crate::eval::matrix::Features;
use crate::eval::metrics::per_class_ap;
use crate::eval::metrics::voc07_ap_11point;
use crate::eval::split::train_val_split;
use crate::eval::svm::{voc07_svm, Voc07SvmOptions};
use crate::eval::voc_logistic::voc_logistic_protocol;
use crate::transfer::finetune::{finetune_once, grid_search, FinetuneOptions};
use crate::transfer::paper::paper_numbers;
use crate::transfer::report::{record, ClassScore, TransferReport, VocLinearChoice};
use crate::transfer::{frozen_features, CommonOptions};
use crate::{Error, Result};

/// Which VOC07 classification protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocProtocol {
    Logistic,
    Svm,
}

impl VocProtocol {
    pub fn task(self) -> &'static str {
        match self {
            VocProtocol::Logistic => "voc",
            VocProtocol::Svm => "voc-svm",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            VocProtocol::Logistic => {
                "BYOL paper (App. D.2): per-class L2 logistic regression, L2 strength from a log-spaced sweep \
                 on a validation split, refit on trainval, 11-point mAP on test"
            }
            VocProtocol::Svm => {
                "VISSL/mmselfsup VOC07 SVM: per-class linear SVM on L2-normalised features, \
                 squared hinge, cost by 3-fold CV AP, all-point mAP on test (not comparable with \
                 the paper's 11-point logistic number)"
            }
        }
    }

    fn metric(self) -> &'static str {
        match self {
            VocProtocol::Logistic => "mAP (11-point)",
            VocProtocol::Svm => "mAP (all-point)",
        }
    }
}

/// Settings of [`run_voc_classification`].
#[derive(Debug, Clone)]
pub struct VocOptions {
    pub common: CommonOptions,
    pub protocol: VocProtocol,
    /// Targets from `ImageSets/Main/<class>_<split>.txt` or from the XML annotations.
    pub source: VocSource,
    /// L2 strengths of the logistic sweep.
    pub lambda_grid: Vec<f64>,
    /// Fraction of trainval carved out for validation when VOC's train/val lists are absent.
    pub val_fraction: f64,
    pub svm: Voc07SvmOptions,
    /// Fine-tune encoder + linear head instead of frozen features (App. D.3; logistic only).
    pub finetune: Option<FinetuneOptions>,
}

impl VocOptions {
    pub fn new(common: CommonOptions, protocol: VocProtocol) -> Self {
        Self {
            common,
            protocol,
            source: VocSource::ImageSets,
            lambda_grid: default_lambda_grid(),
            val_fraction: 0.1,
            svm: Voc07SvmOptions::default(),
            finetune: None,
        }
    }
}

/// Row-major `n × 20` targets (1 / -1 / 0 = difficult) of a split.
fn target_matrix(ds: &VocClassification) -> Vec<i8> {
    (0..crate::data::Dataset::len(ds))
        .flat_map(|i| ds.targets(i).copied().unwrap_or([-1; 20]))
        .collect()
}

/// Column `c` of a row-major `n × 20` target matrix, at `rows`.
fn column(targets: &[i8], rows: &[usize], c: usize) -> Vec<i8> {
    rows.iter().map(|&r| targets[r * 20 + c]).collect()
}

/// Whether VOC's own train and val lists exist for `source`.
fn has_train_val(dir: &Path, source: VocSource) -> bool {
    let main = dir.join("ImageSets").join("Main");
    let file = |split: &str| match source {
        VocSource::ImageSets => main.join(format!("{}_{split}.txt", VOC_CLASSES[0])),
        VocSource::Annotations => main.join(format!("{split}.txt")),
    };
    file("train").is_file() && file("val").is_file()
}

/// Rows of trainval holding the images of `split`.
fn rows_of(
    trainval: &VocClassification,
    dir: &Path,
    split: &str,
    source: VocSource,
) -> Result<Vec<usize>> {
    let row: HashMap<&str, usize> = (0..crate::data::Dataset::len(trainval))
        .filter_map(|i| trainval.image_id(i).map(|id| (id, i)))
        .collect();
    let ds = VocClassification::open(dir, split, source)?;
    (0..crate::data::Dataset::len(&ds))
        .map(|i| {
            let id = ds.image_id(i).unwrap_or_default();
            row.get(id).copied().ok_or_else(|| {
                Error::format(
                    dir.join("ImageSets").join("Main"),
                    format!("image `{id}` of the {split} split is not in trainval"),
                )
            })
        })
        .collect()
}

/// VOC2007 classification: trainval → test, per-class scores and the mean.
pub fn run_voc_classification(root: &Path, opts: &VocOptions) -> Result<TransferReport> {
    let start = Instant::now();
    opts.common.validate()?;
    let dir = find_voc_dir(root, "2007")?;
    let trainval = VocClassification::open(&dir, "trainval", opts.source)?;
    let test = VocClassification::open(&dir, "test", opts.source)?;
    if let Some(ft) = &opts.finetune {
        if opts.protocol == VocProtocol::Svm {
            return Err(Error::config(
                "finetune",
                "the VOC07 SVM protocol is frozen-feature only",
            ));
        }
        return finetune_voc(dir, trainval, test, opts, ft, start);
    }
    let encoder = opts.common.frozen_encoder()?;
    let ftv = frozen_features(
        encoder.as_ref(),
        Arc::new(trainval.clone()),
        &opts.common,
        "trainval",
    )?;
    let fte = frozen_features(
        encoder.as_ref(),
        Arc::new(test.clone()),
        &opts.common,
        "test",
    )?;
    let (ytv, yte) = (target_matrix(&trainval), target_matrix(&test));
    let (xtv, xte) = (ftv.features.view(), fte.features.view());
    let mut choice = VocLinearChoice {
        feature_dim: xtv.cols(),
        ..Default::default()
    };
    let mut splits = BTreeMap::new();
    splits.insert("trainval".to_string(), ytv.len() / 20);
    splits.insert("test".to_string(), yte.len() / 20);
    let logistic = LogisticOptions::default();
    let (per_class, chosen): (Vec<f64>, Vec<f64>) = match opts.protocol {
        VocProtocol::Logistic if has_train_val(&dir, opts.source) => {
            let tr = rows_of(&trainval, &dir, "train", opts.source)?;
            let va = rows_of(&trainval, &dir, "val", opts.source)?;
            splits.insert("train".to_string(), tr.len());
            splits.insert("val".to_string(), va.len());
            choice.validation = Some("VOC2007 train → val lists".into());
            let (xtr, xva) = (xtv.gather(&tr)?, xtv.gather(&va)?);
            let all: Vec<usize> = (0..xtv.rows()).collect();
            let mut aps = Vec::with_capacity(20);
            let mut lambdas = Vec::with_capacity(20);
            for (c, name) in VOC_CLASSES.iter().enumerate() {
                let with_class = |e: Error| Error::Input(format!("VOC class `{name}`: {e}"));
                let (ap, lambda) = logistic_class(
                    (xtr.view(), &column(&ytv, &tr, c)),
                    (xva.view(), &column(&ytv, &va, c)),
                    (xtv, &column(&ytv, &all, c)),
                    (xte, &column(&yte, &(0..xte.rows()).collect::<Vec<_>>(), c)),
                    &opts.lambda_grid,
                    &logistic,
                )
                .map_err(with_class)?;
                aps.push(ap);
                lambdas.push(lambda);
            }
            (aps, lambdas)
        }
        VocProtocol::Logistic => {
            choice.validation = Some(format!(
                "seeded {} carve-out of trainval",
                opts.val_fraction
            ));
            choice.val_fraction = Some(opts.val_fraction);
            let r = voc_logistic_protocol(
                xtv,
                &ytv,
                xte,
                &yte,
                20,
                &LinearProtocolOptions {
                    grid: opts.lambda_grid.clone(),
                    val_fraction: opts.val_fraction,
                    seed: opts.common.seed,
                    logistic,
                },
            )?;
            (r.per_class_ap, r.best_lambdas)
        }
        VocProtocol::Svm => {
            choice.costs = Some(&opts.svm.costs);
            choice.folds = Some(opts.svm.folds);
            let r = voc07_svm(xtv, &ytv, xte, &yte, 20, &opts.svm)?;
            (r.per_class_ap, r.chosen_costs)
        }
    };
    let named: BTreeMap<&str, f64> = VOC_CLASSES.iter().copied().zip(chosen).collect();
    match opts.protocol {
        VocProtocol::Logistic => {
            choice.lambda_grid_size = Some(opts.lambda_grid.len());
            choice.lambda_per_class = Some(named);
        }
        VocProtocol::Svm => choice.cost_per_class = Some(named),
    }
    let mut hyper = BTreeMap::new();
    record(&mut hyper, &choice)?;
    let map = per_class.iter().sum::<f64>() / per_class.len() as f64;
    Ok(TransferReport {
        task: opts.protocol.task().into(),
        protocol: opts.protocol.description().into(),
        dataset: "voc2007".into(),
        dataset_root: dir,
        splits,
        weights: opts.common.weights_info()?,
        image_size: opts.common.image_size,
        hyperparameters: hyper,
        metric: opts.protocol.metric().into(),
        value: map,
        // The paper has no SVM number: only the logistic protocol is compared with it.
        paper: match opts.protocol {
            VocProtocol::Logistic => paper_numbers("voc2007").map(|p| p.linear),
            VocProtocol::Svm => None,
        },
        per_class: VOC_CLASSES
            .iter()
            .zip(per_class)
            .map(|(c, v)| ClassScore {
                class: c.to_string(),
                value: Some(v),
            })
            .collect(),
        extra: BTreeMap::new(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One class of the logistic protocol: λ by validation 11-point AP, refit on trainval
/// (warm-started from the validation-selected model), test 11-point AP.
fn logistic_class(
    train: (Features<'_>, &[i8]),
    val: (Features<'_>, &[i8]),
    trainval: (Features<'_>, &[i8]),
    test: (Features<'_>, &[i8]),
    grid: &[f64],
    opts: &LogisticOptions,
) -> Result<(f64, f64)> {
    let sel = binary_l2_path_select(train.0, train.1, val.0, val.1, grid, opts)?;
    let model = LogisticRegression::fit_binary(
        trainval.0,
        trainval.1,
        sel.best_lambda,
        opts,
        Some(&sel.model),
    )?;
    let ap = voc07_ap_11point(&model.predict_scores(test.0)?, test.1)?;
    Ok((ap, sel.best_lambda))
}

/// Rows `rows` of a row-major `n × 20` target matrix.
fn rows_of_targets(targets: &[i8], rows: &[usize]) -> Vec<i8> {
    rows.iter()
        .flat_map(|&r| targets[r * 20..(r + 1) * 20].iter().copied())
        .collect()
}

/// VOC2007 fine-tuned (App. D.3): lr × weight decay chosen by validation 11-point mAP (VOC's
/// train → val, or a carve-out of trainval), retrained on trainval, 11-point AP on test.
fn finetune_voc(
    dir: PathBuf,
    trainval: VocClassification,
    test: VocClassification,
    opts: &VocOptions,
    ft: &FinetuneOptions,
    start: Instant,
) -> Result<TransferReport> {
    ft.validate()?;
    let (ytv, yte) = (target_matrix(&trainval), target_matrix(&test));
    let mut splits = BTreeMap::new();
    splits.insert("trainval".to_string(), trainval.len());
    splits.insert("test".to_string(), test.len());
    let (validation, (tr, va)) = if has_train_val(&dir, opts.source) {
        let lists = (
            rows_of(&trainval, &dir, "train", opts.source)?,
            rows_of(&trainval, &dir, "val", opts.source)?,
        );
        ("VOC2007 train → val lists", lists)
    } else {
        let carved = train_val_split(trainval.len(), opts.val_fraction, opts.common.seed)?;
        ("seeded carve-out of trainval", carved)
    };
    splits.insert("train".to_string(), tr.len());
    splits.insert("val".to_string(), va.len());
    let tv: Arc<dyn Dataset> = Arc::new(trainval);
    let sel_train: Arc<dyn Dataset> = Arc::new(Subset::new(Arc::clone(&tv), tr.clone())?);
    let sel_val: Arc<dyn Dataset> = Arc::new(Subset::new(Arc::clone(&tv), va.clone())?);
    let (ytr, yva) = (rows_of_targets(&ytv, &tr), rows_of_targets(&ytv, &va));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let choice = grid_search(ft, |lr, wd| {
        let (scores, _, _) =
            finetune_once(&sel_train, &sel_val, Some(&ytr), lr, wd, &opts.common, ft)?;
        Ok(mean(&per_class_ap(&scores, &yva, 20, true)?))
    })?;
    let test: Arc<dyn Dataset> = Arc::new(test);
    let (scores, _, loss) = finetune_once(
        &tv,
        &test,
        Some(&ytv),
        choice.lr,
        choice.weight_decay,
        &opts.common,
        ft,
    )?;
    let aps = per_class_ap(&scores, &yte, 20, true)?;
    let mut hyper = BTreeMap::new();
    record(
        &mut hyper,
        &choice.report(ft, opts.common.batch_size, validation),
    )?;
    let mut extra = BTreeMap::new();
    extra.insert("final_loss".to_string(), loss);
    Ok(TransferReport {
        task: "voc".into(),
        protocol: "BYOL paper (App. D.3), fine-tuned: encoder + linear head, per-class sigmoid \
                   cross-entropy (difficult ignored), SGD Nesterov, cosine lr, crop + flip, \
                   lr × weight decay chosen by val 11-point mAP, retrained on trainval, \
                   11-point mAP on test"
            .into(),
        dataset: "voc2007".into(),
        dataset_root: dir,
        splits,
        weights: opts.common.weights_info()?,
        image_size: opts.common.image_size,
        hyperparameters: hyper,
        metric: VocProtocol::Logistic.metric().into(),
        value: mean(&aps),
        paper: paper_numbers("voc2007").and_then(|p| p.finetune),
        per_class: VOC_CLASSES
            .iter()
            .zip(aps)
            .map(|(c, v)| ClassScore {
                class: c.to_string(),
                value: Some(v),
            })
            .collect(),
        extra,
        seconds: start.elapsed().as_secs_f64(),
    })
}
