//! The VOC07 logistic protocol on multi-label data: one-vs-rest binary L2 logistic regressions,
//! λ per class chosen on a seeded validation carve-out by 11-point AP, refit, test 11-point AP.

use crate::eval::linear_protocol::LinearProtocolOptions;
use crate::eval::logistic::{binary_l2_path_select, LogisticRegression};
use crate::eval::matrix::{check_multilabel, Features};
use crate::eval::metrics;
use crate::eval::split::train_val_split;
use crate::{Error, Result};

/// Outcome of [`voc_logistic_protocol`].
#[derive(Debug, Clone, PartialEq)]
pub struct VocLogisticResult {
    /// Test 11-point AP per class.
    pub per_class_ap: Vec<f64>,
    pub map: f64,
    pub best_lambdas: Vec<f64>,
}

/// One-vs-rest logistic probes for multi-label VOC data (`labels` row-major `n × classes`,
/// 1 / -1 / 0 = difficult): per class an L2 path scored by validation 11-point AP, a refit on all
/// of `train`, and the test 11-point AP.
pub fn voc_logistic_protocol(
    train: Features<'_>,
    train_labels: &[i8],
    test: Features<'_>,
    test_labels: &[i8],
    classes: usize,
    opts: &LinearProtocolOptions,
) -> Result<VocLogisticResult> {
    check_multilabel(train, train_labels, test, test_labels, classes)?;
    let (tr, va) = train_val_split(train.rows(), opts.val_fraction, opts.seed)?;
    let (xtr, xva) = (train.gather(&tr)?, train.gather(&va)?);
    let mut per_class_ap = Vec::with_capacity(classes);
    let mut best_lambdas = Vec::with_capacity(classes);
    for c in 0..classes {
        let col = |labels: &[i8], idx: Option<&[usize]>, rows: usize| -> Vec<i8> {
            match idx {
                Some(idx) => idx.iter().map(|&i| labels[i * classes + c]).collect(),
                None => (0..rows).map(|i| labels[i * classes + c]).collect(),
            }
        };
        let with_class = |e: Error| Error::Input(format!("VOC class {c}: {e}"));
        let sel = binary_l2_path_select(
            xtr.view(),
            &col(train_labels, Some(&tr), 0),
            xva.view(),
            &col(train_labels, Some(&va), 0),
            &opts.grid,
            &opts.logistic,
        )
        .map_err(with_class)?;
        let model = LogisticRegression::fit_binary(
            train,
            &col(train_labels, None, train.rows()),
            sel.best_lambda,
            &opts.logistic,
            Some(&sel.model),
        )
        .map_err(with_class)?;
        let ap = metrics::voc07_ap_11point(
            &model.predict_scores(test)?,
            &col(test_labels, None, test.rows()),
        )
        .map_err(with_class)?;
        per_class_ap.push(ap);
        best_lambdas.push(sel.best_lambda);
    }
    Ok(VocLogisticResult {
        map: per_class_ap.iter().sum::<f64>() / classes as f64,
        per_class_ap,
        best_lambdas,
    })
}
