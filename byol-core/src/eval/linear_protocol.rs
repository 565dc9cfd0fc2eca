//! The linear-transfer protocol (App. D.2): a seeded validation carve-out of train, λ chosen on
//! the L2 path by validation top-1, a warm-started refit on all of train, test top-1 / top-5.

use crate::eval::logistic::{
    default_lambda_grid, l2_path_select, LogisticModel, LogisticOptions, LogisticRegression,
    PathPoint,
};
use crate::eval::matrix::{check_labels, Features};
use crate::eval::metrics;
use crate::eval::split::train_val_split;
use crate::Result;

/// Options of the full protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearProtocolOptions {
    pub grid: Vec<f64>,
    pub val_fraction: f64,
    pub seed: u64,
    pub logistic: LogisticOptions,
}

impl Default for LinearProtocolOptions {
    fn default() -> Self {
        Self {
            grid: default_lambda_grid(),
            val_fraction: 0.1,
            seed: 0,
            logistic: LogisticOptions::default(),
        }
    }
}

/// Outcome of [`linear_protocol`].
#[derive(Debug, Clone)]
pub struct LinearProtocolResult {
    pub best_lambda: f64,
    pub path: Vec<PathPoint>,
    /// Refit on train+val at `best_lambda`.
    pub model: LogisticModel,
    pub test_top1: f64,
    pub test_top5: f64,
}

/// The linear-transfer protocol: carve a validation split out of `train`, select λ on the L2 path,
/// refit on all of `train` with it (warm-started) and report test accuracy.
pub fn linear_protocol(
    train: Features<'_>,
    train_y: &[usize],
    test: Features<'_>,
    test_y: &[usize],
    classes: usize,
    opts: &LinearProtocolOptions,
) -> Result<LinearProtocolResult> {
    check_labels(train_y, train.rows(), classes, "train")?;
    check_labels(test_y, test.rows(), classes, "test")?;
    test.expect_cols(train.cols(), "test split")?;
    let (tr, va) = train_val_split(train.rows(), opts.val_fraction, opts.seed)?;
    let (xtr, xva) = (train.gather(&tr)?, train.gather(&va)?);
    let ytr: Vec<usize> = tr.iter().map(|&i| train_y[i]).collect();
    let yva: Vec<usize> = va.iter().map(|&i| train_y[i]).collect();
    let sel = l2_path_select(
        xtr.view(),
        &ytr,
        xva.view(),
        &yva,
        classes,
        &opts.grid,
        &opts.logistic,
    )?;
    drop((xtr, xva));
    let model = LogisticRegression::fit_warm(
        train,
        train_y,
        classes,
        sel.best_lambda,
        &opts.logistic,
        Some(&sel.model),
    )?;
    let scores = model.predict_scores(test)?;
    Ok(LinearProtocolResult {
        best_lambda: sel.best_lambda,
        path: sel.points,
        test_top1: metrics::top_k_accuracy(&scores, test_y, classes, 1)?,
        test_top5: metrics::top_k_accuracy(&scores, test_y, classes, 5.min(classes))?,
        model,
    })
}
