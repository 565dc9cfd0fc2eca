//! Linear SVMs for the VOC07 transfer protocol of VISSL / mmselfsup (Goyal et al. 2019).
//!
//! Per class, a linear SVM with squared hinge (L2) loss and L2 penalty,
//!
//! ```text
//! min_w ½‖w‖² + Σᵢ Cᵢ·max(0, 1 − yᵢ·wᵀx̃ᵢ)²,   x̃ = [x, bias_scale],   Cᵢ = C·weight(yᵢ)
//! ```
//!
//! solved in the dual by coordinate descent with shrinking (Hsieh et al. 2008; liblinear solver
//! 1, which scikit-learn's `LinearSVC(loss='squared_hinge', dual=True)` wraps), so the bias is
//! regularised like liblinear's `intercept_scaling` feature. The protocol L2-normalises features,
//! weights positives 2:1 (`class_weight={1: 2, -1: 1}`), picks the cost per class by 3-fold
//! cross-validated AP (folds as scikit-learn's unshuffled `StratifiedKFold`), refits on all
//! training rows and reports all-point AP on the test set.

use crate::eval::matrix::{check_multilabel, l2_normalized, Features, OwnedFeatures};
use crate::eval::metrics;
use crate::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

/// Settings of one SVM fit.
#[derive(Debug, Clone, PartialEq)]
pub struct SvmOptions {
    /// The cost `C` (ignored by [`voc07_svm`], which takes a list).
    pub cost: f64,
    /// Cost multiplier of positive samples (VISSL: 2).
    pub pos_weight: f64,
    /// Cost multiplier of negative samples (VISSL: 1).
    pub neg_weight: f64,
    /// Value of the constant feature that carries the bias (liblinear `intercept_scaling`); 0
    /// fits no bias.
    pub bias_scale: f64,
    /// Stop when the projected-gradient spread falls below this (liblinear `eps`, sklearn `tol`).
    pub tol: f64,
    /// Maximum passes over the data (sklearn `max_iter`; VISSL uses 2000).
    pub max_iter: usize,
    /// Seed of the coordinate order.
    pub seed: u64,
}

impl Default for SvmOptions {
    fn default() -> Self {
        Self {
            cost: 1.0,
            pos_weight: 2.0,
            neg_weight: 1.0,
            bias_scale: 1.0,
            tol: 1e-4,
            max_iter: 2000,
            seed: 0,
        }
    }
}

/// A trained binary linear SVM.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearSvm {
    pub weights: Vec<f64>,
    /// The intercept (`bias_scale` × the weight of the constant feature), as sklearn's.
    pub bias: f64,
    pub iterations: usize,
    pub converged: bool,
}

impl LinearSvm {
    /// `wᵀx + b` per row.
    pub fn decision_function(&self, x: Features<'_>) -> Result<Vec<f32>> {
        x.expect_cols(self.weights.len(), "linear SVM")?;
        Ok((0..x.rows())
            .into_par_iter()
            .map(|i| (dot(&self.weights, x.row(i)) + self.bias) as f32)
            .collect())
    }
}

fn dot(w: &[f64], x: &[f32]) -> f64 {
    w.iter().zip(x).map(|(a, &b)| a * b as f64).sum()
}

/// Trains on rows with target 1 or -1 (rows with 0 are left out).
pub fn train_linear_svm(x: Features<'_>, targets: &[i8], opts: &SvmOptions) -> Result<LinearSvm> {
    if targets.len() != x.rows() {
        return Err(Error::Input(format!(
            "{} SVM targets for {} feature rows",
            targets.len(),
            x.rows()
        )));
    }
    if let Some((i, &t)) = targets
        .iter()
        .enumerate()
        .find(|(_, &t)| !matches!(t, -1..=1))
    {
        return Err(Error::Input(format!(
            "SVM target {t} at row {i}: expected 1, -1 or 0 (ignored)"
        )));
    }
    for (name, v) in [
        ("svm.cost", opts.cost),
        ("svm.pos_weight", opts.pos_weight),
        ("svm.neg_weight", opts.neg_weight),
        ("svm.tol", opts.tol),
    ] {
        if !(v > 0.0 && v.is_finite()) {
            return Err(Error::config(name, format!("must be > 0, got {v}")));
        }
    }
    if !(opts.bias_scale >= 0.0 && opts.bias_scale.is_finite()) {
        return Err(Error::config("svm.bias_scale", "must be >= 0"));
    }
    let rows: Vec<usize> = (0..targets.len()).filter(|&i| targets[i] != 0).collect();
    if rows.is_empty() {
        return Err(Error::Input(
            "no labelled (±1) rows to train the SVM on".into(),
        ));
    }
    let d = x.cols();
    let bs = opts.bias_scale;
    let y: Vec<f64> = rows.iter().map(|&i| targets[i] as f64).collect();
    // D_ii of the L2-loss dual: 1 / (2 C_i).
    let diag: Vec<f64> = y
        .iter()
        .map(|&t| {
            0.5 / (opts.cost
                * if t > 0.0 {
                    opts.pos_weight
                } else {
                    opts.neg_weight
                })
        })
        .collect();
    let qd: Vec<f64> = rows
        .iter()
        .zip(&diag)
        .map(|(&i, dg)| {
            dg + bs * bs
                + x.row(i)
                    .iter()
                    .map(|&v| (v as f64) * (v as f64))
                    .sum::<f64>()
        })
        .collect();
    let l = rows.len();
    let mut w = vec![0f64; d];
    let mut wb = 0f64;
    let mut alpha = vec![0f64; l];
    let mut index: Vec<usize> = (0..l).collect();
    let mut active = l;
    // Only the upper shrinking threshold exists: the L2-loss dual has no upper bound on alpha.
    let mut pgmax_old = f64::INFINITY;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let mut iter = 0;
    let mut converged = false;
    while iter < opts.max_iter {
        let (mut pgmax_new, mut pgmin_new) = (f64::NEG_INFINITY, f64::INFINITY);
        index[..active].shuffle(&mut rng);
        let mut s = 0;
        while s < active {
            let i = index[s];
            let xi = x.row(rows[i]);
            let g = y[i] * (dot(&w, xi) + wb * bs) - 1.0 + alpha[i] * diag[i];
            let mut pg = 0.0;
            if alpha[i] == 0.0 {
                if g > pgmax_old {
                    // Shrinking: a bound variable that wants to stay at 0 leaves the active set.
                    active -= 1;
                    index.swap(s, active);
                    continue;
                } else if g < 0.0 {
                    pg = g;
                }
            } else {
                pg = g;
            }
            pgmax_new = pgmax_new.max(pg);
            pgmin_new = pgmin_new.min(pg);
            if pg.abs() > 1e-12 {
                let old = alpha[i];
                alpha[i] = (old - g / qd[i]).max(0.0);
                let step = (alpha[i] - old) * y[i];
                w.iter_mut()
                    .zip(xi)
                    .for_each(|(wj, &v)| *wj += step * v as f64);
                wb += step * bs;
            }
            s += 1;
        }
        iter += 1;
        if pgmax_new - pgmin_new <= opts.tol {
            if active == l {
                converged = true;
                break;
            }
            // Converged on the shrunk problem: re-check every variable once more.
            active = l;
            pgmax_old = f64::INFINITY;
            continue;
        }
        pgmax_old = if pgmax_new <= 0.0 {
            f64::INFINITY
        } else {
            pgmax_new
        };
    }
    Ok(LinearSvm {
        weights: w,
        bias: wb * bs,
        iterations: iter,
        converged,
    })
}

/// Fold of every sample as scikit-learn's `StratifiedKFold(n_splits, shuffle=False)` assigns it
/// (per class, samples in input order fill fold 0, then fold 1, …).
pub fn stratified_folds(labels: &[i8], folds: usize) -> Result<Vec<usize>> {
    let mut classes: Vec<i8> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    for &c in &classes {
        let count = labels.iter().filter(|&&l| l == c).count();
        if count < folds {
            return Err(Error::Input(format!(
                "class {c} has {count} samples, fewer than the {folds} folds"
            )));
        }
    }
    // Allocation of class k to fold f: count of k in sorted_labels[f::folds].
    let mut sorted = labels.to_vec();
    sorted.sort_unstable();
    let mut out = vec![0usize; labels.len()];
    for &c in &classes {
        let alloc: Vec<usize> = (0..folds)
            .map(|f| {
                sorted
                    .iter()
                    .skip(f)
                    .step_by(folds)
                    .filter(|&&l| l == c)
                    .count()
            })
            .collect();
        let fold_of: Vec<usize> = alloc
            .iter()
            .enumerate()
            .flat_map(|(f, &n)| std::iter::repeat_n(f, n))
            .collect();
        for (slot, i) in (0..labels.len()).filter(|&i| labels[i] == c).enumerate() {
            out[i] = fold_of[slot];
        }
    }
    Ok(out)
}

/// Options of the VOC07 SVM protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct Voc07SvmOptions {
    /// Costs tried per class.
    pub costs: Vec<f64>,
    /// Cross-validation folds.
    pub folds: usize,
    pub svm: SvmOptions,
    /// L2-normalise features first (the protocol does).
    pub normalize: bool,
    /// Train with difficult (0) samples as negatives, as VISSL's trainer does; otherwise they are
    /// left out of training. They never count in the reported AP.
    pub difficult_as_negative: bool,
}

impl Default for Voc07SvmOptions {
    fn default() -> Self {
        Self {
            costs: vec![0.01, 0.1, 1.0, 10.0, 100.0],
            folds: 3,
            svm: SvmOptions::default(),
            normalize: true,
            difficult_as_negative: true,
        }
    }
}

/// Outcome of [`voc07_svm`].
#[derive(Debug, Clone, PartialEq)]
pub struct Voc07SvmResult {
    /// Test all-point AP per class (difficult samples excluded).
    pub per_class_ap: Vec<f64>,
    pub map: f64,
    pub chosen_costs: Vec<f64>,
    /// Mean cross-validated AP, `[class][cost]`.
    pub cv_ap: Vec<Vec<f64>>,
}

/// Mean k-fold AP of one class at one cost.
fn cv_ap(
    x: Features<'_>,
    t: &[i8],
    fold: &[usize],
    folds: usize,
    opts: &SvmOptions,
) -> Result<f64> {
    let mut sum = 0.0;
    for f in 0..folds {
        let fit_t: Vec<i8> = t
            .iter()
            .zip(fold)
            .map(|(&l, &k)| if k == f { 0 } else { l })
            .collect();
        let model = train_linear_svm(x, &fit_t, opts)?;
        let held: Vec<usize> = (0..t.len())
            .filter(|&i| fold[i] == f && t[i] != 0)
            .collect();
        let xs = x.gather(&held)?;
        let scores = model.decision_function(xs.view())?;
        let labels: Vec<i8> = held.iter().map(|&i| t[i]).collect();
        sum += metrics::average_precision(&scores, &labels)?;
    }
    Ok(sum / folds as f64)
}

/// The VOC07 SVM protocol: `labels` are row-major `n × classes` in {1, -1, 0 = difficult}.
pub fn voc07_svm(
    train: Features<'_>,
    train_labels: &[i8],
    test: Features<'_>,
    test_labels: &[i8],
    classes: usize,
    opts: &Voc07SvmOptions,
) -> Result<Voc07SvmResult> {
    check_multilabel(train, train_labels, test, test_labels, classes)?;
    if opts.costs.is_empty() {
        return Err(Error::config("svm.costs", "empty cost list"));
    }
    if opts.folds < 2 {
        return Err(Error::config("svm.folds", "need at least 2 folds"));
    }
    let norm =
        |x: Features<'_>| -> Option<OwnedFeatures> { opts.normalize.then(|| l2_normalized(x)) };
    let (ntr, nte) = (norm(train), norm(test));
    let xtr = ntr.as_ref().map_or(train, |o| o.view());
    let xte = nte.as_ref().map_or(test, |o| o.view());
    let per_class: Vec<(f64, f64, Vec<f64>)> = (0..classes)
        .into_par_iter()
        .map(|c| -> Result<(f64, f64, Vec<f64>)> {
            let with_class = |e: Error| Error::Input(format!("VOC class {c}: {e}"));
            let t: Vec<i8> = (0..train.rows())
                .map(|i| match train_labels[i * classes + c] {
                    0 if opts.difficult_as_negative => -1,
                    l => l,
                })
                .collect();
            let fit_rows: Vec<usize> = (0..t.len()).filter(|&i| t[i] != 0).collect();
            let fit_labels: Vec<i8> = fit_rows.iter().map(|&i| t[i]).collect();
            let sub = xtr.gather(&fit_rows)?;
            let fold = stratified_folds(&fit_labels, opts.folds).map_err(with_class)?;
            let mut aps = Vec::with_capacity(opts.costs.len());
            let (mut best, mut best_cost) = (f64::NEG_INFINITY, opts.costs[0]);
            for &cost in &opts.costs {
                let o = SvmOptions {
                    cost,
                    ..opts.svm.clone()
                };
                let ap =
                    cv_ap(sub.view(), &fit_labels, &fold, opts.folds, &o).map_err(with_class)?;
                // Strictly better only: on ties the earlier cost in the list wins.
                if ap > best {
                    best = ap;
                    best_cost = cost;
                }
                aps.push(ap);
            }
            let o = SvmOptions {
                cost: best_cost,
                ..opts.svm.clone()
            };
            let model = train_linear_svm(sub.view(), &fit_labels, &o).map_err(with_class)?;
            let test_t: Vec<i8> = (0..test.rows())
                .map(|i| test_labels[i * classes + c])
                .collect();
            let ap = metrics::average_precision(&model.decision_function(xte)?, &test_t)
                .map_err(with_class)?;
            Ok((ap, best_cost, aps))
        })
        .collect::<Result<_>>()?;
    let per_class_ap: Vec<f64> = per_class.iter().map(|p| p.0).collect();
    Ok(Voc07SvmResult {
        map: per_class_ap.iter().sum::<f64>() / classes as f64,
        per_class_ap,
        chosen_costs: per_class.iter().map(|p| p.1).collect(),
        cv_ap: per_class.into_iter().map(|p| p.2).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_match_sklearn_stratified_kfold() {
        // sklearn: StratifiedKFold(3).split(X, y) for y below gives test folds
        // [0, 0, 1, 0, 1, 2, 1, 2, 2]  (checked by hand from its allocation rule).
        let y = [1, -1, 1, -1, -1, 1, -1, -1, -1];
        let f = stratified_folds(&y, 3).unwrap();
        let pos: Vec<usize> = (0..9).filter(|&i| y[i] == 1).map(|i| f[i]).collect();
        let neg: Vec<usize> = (0..9).filter(|&i| y[i] == -1).map(|i| f[i]).collect();
        assert_eq!(pos, vec![0, 1, 2]);
        assert_eq!(neg, vec![0, 0, 1, 1, 2, 2]);
        assert!(stratified_folds(&[1, -1, -1, -1], 3).is_err());
    }

    #[test]
    fn separable_points_are_separated() {
        let x = [2.0, 0.0, 1.5, 0.5, -2.0, 0.1, -1.0, -0.5];
        let f = Features::new(&x, 2).unwrap();
        let m = train_linear_svm(f, &[1, 1, -1, -1], &SvmOptions::default()).unwrap();
        assert!(m.converged);
        let s = m.decision_function(f).unwrap();
        assert!(
            s[0] > 0.0 && s[1] > 0.0 && s[2] < 0.0 && s[3] < 0.0,
            "{s:?}"
        );
    }
}
