//! L2-regularised logistic regression (the solver of the linear-transfer protocol) and the L2
//! path that chooses its strength on validation data.
//!
//! Objective (multinomial, `C` classes, `n` samples):
//!
//! ```text
//! F(W, b) = (1/n) Σᵢ [ logΣⱼ exp(xᵢ·wⱼ + bⱼ) − (xᵢ·w_yᵢ + b_yᵢ) ] + (λ/2)·‖W‖²      (b unpenalised)
//! ```
//!
//! This is scikit-learn's `LogisticRegression(C=…)` objective divided by `C·n`, so the two
//! conventions meet at **`C = 1 / (n · λ)`** with `n` the number of training rows of that fit.
//! The binary variant (one-vs-rest, used per class for VOC) is the same with a sigmoid.
//!
//! One evaluation of `F` and `∇F` is a single parallel pass over row chunks: `Z = X_c·W` (GEMM),
//! softmax and loss in f64 per row, then `X_cᵀ·R` accumulated into an f64 gradient, so the data
//! matrix is read once per L-BFGS trial while each chunk is still in cache.

use crate::eval::lbfgs::{self, LbfgsOptions, LbfgsReport};
use crate::eval::matrix::{check_labels, matmul, matmul_tn, Features, OwnedFeatures, Standardizer};
use crate::eval::metrics;
use crate::{Error, Result};
use rayon::prelude::*;

/// Rows per work item: one chunk of X (256 × d f32) stays in L2 between its two GEMMs.
const CHUNK: usize = 256;

/// Options of a single fit.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticOptions {
    pub lbfgs: LbfgsOptions,
    /// Standardise features with the training mean/std before fitting (folded into the returned
    /// weights, so the model is applied to raw features).
    pub standardize: bool,
    /// On an L2 path (strong to weak penalty), stop once this many consecutive λ have not
    /// improved the validation score: the weak-penalty tail costs the most iterations and, past
    /// the optimum, only overfits. `None` walks the whole grid (the paper's protocol).
    pub path_patience: Option<usize>,
}

impl Default for LogisticOptions {
    fn default() -> Self {
        Self {
            // A probe should be converged, not stopped at sklearn's 100 iterations.
            lbfgs: LbfgsOptions {
                max_iter: 1000,
                ..Default::default()
            },
            standardize: false,
            path_patience: None,
        }
    }
}

/// A fitted linear classifier. `outputs` is the number of classes (multinomial) or 1 (binary:
/// the score is the logit of the positive class).
#[derive(Debug, Clone)]
pub struct LogisticModel {
    pub dim: usize,
    pub outputs: usize,
    /// `dim × outputs`, row-major, applied to raw (unstandardised) features.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    pub lambda: f64,
    pub standardizer: Option<Standardizer>,
    pub report: LbfgsReport,
    /// Solver parameters in the (possibly standardised) training space, for warm starts.
    theta: Vec<f64>,
}

impl LogisticModel {
    /// Raw scores (logits) `n × outputs`.
    pub fn predict_scores(&self, x: Features<'_>) -> Result<Vec<f32>> {
        x.expect_cols(self.dim, "logistic model")?;
        Ok(linear_scores(x, &self.weights, &self.bias, self.outputs))
    }

    /// Arg-max class per row (multinomial models).
    pub fn predict(&self, x: Features<'_>) -> Result<Vec<usize>> {
        metrics::predictions(&self.predict_scores(x)?, self.outputs)
    }

    /// Top-k accuracy on labelled data (multinomial models).
    pub fn accuracy(&self, x: Features<'_>, y: &[usize], k: usize) -> Result<f64> {
        check_labels(y, x.rows(), self.outputs, "accuracy")?;
        metrics::top_k_accuracy(&self.predict_scores(x)?, y, self.outputs, k)
    }
}

/// `X·W + b` in parallel row chunks.
pub(crate) fn linear_scores(x: Features<'_>, w: &[f32], b: &[f32], k: usize) -> Vec<f32> {
    let d = x.cols();
    let mut out = vec![0f32; x.rows() * k];
    out.par_chunks_mut(CHUNK * k)
        .zip(x.data().par_chunks(CHUNK * d))
        .for_each(|(o, xc)| {
            let rows = xc.len() / d;
            matmul(rows, k, d, xc, w, o, false);
            for row in o.chunks_mut(k) {
                row.iter_mut().zip(b).for_each(|(v, bj)| *v += bj);
            }
        });
    out
}

/// The loss head: how a row of logits turns into a loss and its derivative.
#[derive(Clone, Copy)]
enum Head<'a> {
    /// Softmax cross-entropy; class index per row.
    Multinomial(&'a [usize]),
    /// Logistic loss; target ±1 per row.
    Binary(&'a [f32]),
}

impl Head<'_> {
    /// Adds the bias to one row of logits, returns its loss and overwrites the logits with
    /// dLoss/dz (f64 inside, so log-sum-exp does not lose the small terms).
    fn row(&self, i: usize, z: &mut [f32], bias: &[f64]) -> f64 {
        match *self {
            Head::Multinomial(y) => {
                let mut zz = [0f64; 64];
                let mut heap;
                let zs: &mut [f64] = if z.len() <= 64 {
                    &mut zz[..z.len()]
                } else {
                    heap = vec![0f64; z.len()];
                    &mut heap
                };
                let mut m = f64::NEG_INFINITY;
                for ((o, &v), &b) in zs.iter_mut().zip(z.iter()).zip(bias) {
                    *o = v as f64 + b;
                    m = m.max(*o);
                }
                let s: f64 = zs.iter().map(|v| (v - m).exp()).sum();
                let lse = m + s.ln();
                let yi = y[i];
                for (j, (o, &v)) in z.iter_mut().zip(zs.iter()).enumerate() {
                    let p = (v - lse).exp();
                    *o = (p - if j == yi { 1.0 } else { 0.0 }) as f32;
                }
                lse - zs[yi]
            }
            Head::Binary(t) => {
                let m = t[i] as f64 * (z[0] as f64 + bias[0]);
                // log(1 + e^{-m}) and its derivative −t·σ(−m), both stable for large |m|.
                let loss = (-m).max(0.0) + (-m.abs()).exp().ln_1p();
                let sig = if m >= 0.0 {
                    let e = (-m).exp();
                    e / (1.0 + e)
                } else {
                    1.0 / (1.0 + m.exp())
                };
                z[0] = (-(t[i] as f64) * sig) as f32;
                loss
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Head::Multinomial(y) => y.len(),
            Head::Binary(t) => t.len(),
        }
    }
}

/// Objective value and gradient at `theta = [W (d×k); b (k)]`.
fn objective(
    x: Features<'_>,
    head: Head<'_>,
    k: usize,
    lambda: f64,
    theta: &[f64],
    grad: &mut [f64],
) -> Result<f64> {
    let d = x.cols();
    let n = x.rows();
    let w32: Vec<f32> = theta[..d * k].iter().map(|&v| v as f32).collect();
    let bias = &theta[d * k..];
    let nchunks = n.div_ceil(CHUNK);
    let (loss, g) = (0..nchunks)
        .into_par_iter()
        .fold(
            || {
                (
                    0f64,
                    vec![0f64; d * k + k],
                    vec![0f32; CHUNK * k],
                    vec![0f32; d * k],
                )
            },
            |(mut loss, mut g, mut z, mut part), ci| {
                let r0 = ci * CHUNK;
                let rows = CHUNK.min(n - r0);
                let xc = &x.data()[r0 * d..(r0 + rows) * d];
                let zc = &mut z[..rows * k];
                matmul(rows, k, d, xc, &w32, zc, false);
                for (r, row) in zc.chunks_mut(k).enumerate() {
                    loss += head.row(r0 + r, row, bias);
                    for (gb, &v) in g[d * k..].iter_mut().zip(row.iter()) {
                        *gb += v as f64;
                    }
                }
                matmul_tn(rows, k, d, xc, zc, &mut part);
                g[..d * k]
                    .iter_mut()
                    .zip(&part)
                    .for_each(|(a, &p)| *a += p as f64);
                (loss, g, z, part)
            },
        )
        .map(|(l, g, _, _)| (l, g))
        .reduce_with(|(la, mut ga), (lb, gb)| {
            ga.iter_mut().zip(&gb).for_each(|(a, b)| *a += b);
            (la + lb, ga)
        })
        .expect("at least one chunk");
    let inv_n = 1.0 / n as f64;
    let mut penalty = 0.0;
    for i in 0..d * k {
        penalty += theta[i] * theta[i];
        grad[i] = g[i] * inv_n + lambda * theta[i];
    }
    for j in 0..k {
        grad[d * k + j] = g[d * k + j] * inv_n;
    }
    let f = loss * inv_n + 0.5 * lambda * penalty;
    if !f.is_finite() {
        return Err(Error::Diverged(format!(
            "logistic objective is {f} (lambda {lambda}); non-finite features?"
        )));
    }
    Ok(f)
}

fn check_lambda(lambda: f64) -> Result<()> {
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(Error::config(
            "lambda",
            format!("L2 strength must be finite and >= 0, got {lambda}"),
        ));
    }
    Ok(())
}

/// Fits on prepared (already standardised) features and packages the model.
fn solve(
    xs: Features<'_>,
    head: Head<'_>,
    k: usize,
    lambda: f64,
    lbfgs_opts: &LbfgsOptions,
    init: Option<&[f64]>,
    standardizer: Option<&Standardizer>,
) -> Result<LogisticModel> {
    check_lambda(lambda)?;
    let d = xs.cols();
    let mut theta = match init {
        Some(t) if t.len() == d * k + k => t.to_vec(),
        Some(t) => {
            return Err(Error::Input(format!(
                "warm start has {} parameters, this problem {}",
                t.len(),
                d * k + k
            )))
        }
        None => vec![0.0; d * k + k],
    };
    debug_assert_eq!(head.len(), xs.rows());
    let report = lbfgs::minimize(
        &mut theta,
        |t, g| objective(xs, head, k, lambda, t, g),
        lbfgs_opts,
    )?;
    // Fold the standardisation into the weights: w' = w·s, b' = b − Σ μ·s·w.
    let mut weights: Vec<f32> = theta[..d * k].iter().map(|&v| v as f32).collect();
    let mut bias: Vec<f64> = theta[d * k..].to_vec();
    if let Some(st) = standardizer {
        for j in 0..d {
            for c in 0..k {
                let w = theta[j * k + c] * st.inv_std[j] as f64;
                weights[j * k + c] = w as f32;
                bias[c] -= st.mean[j] as f64 * w;
            }
        }
    }
    Ok(LogisticModel {
        dim: d,
        outputs: k,
        weights,
        bias: bias.iter().map(|&b| b as f32).collect(),
        lambda,
        standardizer: standardizer.cloned(),
        report,
        theta,
    })
}

/// Standardises when asked; returns the matrix to fit on and the statistics.
fn prepare(
    x: Features<'_>,
    standardize: bool,
) -> Result<(Option<OwnedFeatures>, Option<Standardizer>)> {
    if standardize {
        let st = Standardizer::fit(x);
        Ok((Some(st.apply(x)?), Some(st)))
    } else {
        Ok((None, None))
    }
}

/// Keeps the rows with a ±1 target (0 = difficult/unknown is left out) as f32 targets.
fn binary_rows(x: Features<'_>, targets: &[i8]) -> Result<(OwnedFeatures, Vec<f32>)> {
    if targets.len() != x.rows() {
        return Err(Error::Input(format!(
            "{} binary targets for {} feature rows",
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
            "binary target {t} at row {i}: expected 1, -1 or 0 (ignored)"
        )));
    }
    let idx: Vec<usize> = (0..targets.len()).filter(|&i| targets[i] != 0).collect();
    if idx.is_empty() {
        return Err(Error::Input("no labelled (±1) rows to fit".into()));
    }
    let t = idx.iter().map(|&i| targets[i] as f32).collect();
    Ok((x.gather(&idx)?, t))
}

/// Entry points of the logistic probe.
pub struct LogisticRegression;

impl LogisticRegression {
    /// Multinomial fit at L2 strength `lambda` (see the module docs for the objective).
    pub fn fit(
        x: Features<'_>,
        y: &[usize],
        classes: usize,
        lambda: f64,
        opts: &LogisticOptions,
    ) -> Result<LogisticModel> {
        Self::fit_warm(x, y, classes, lambda, opts, None)
    }

    /// As [`fit`](Self::fit), starting from a previous solution of the same shape.
    pub fn fit_warm(
        x: Features<'_>,
        y: &[usize],
        classes: usize,
        lambda: f64,
        opts: &LogisticOptions,
        warm: Option<&LogisticModel>,
    ) -> Result<LogisticModel> {
        check_labels(y, x.rows(), classes, "logistic fit")?;
        if classes < 2 {
            return Err(Error::config(
                "classes",
                "multinomial regression needs >= 2 classes",
            ));
        }
        let (owned, st) = prepare(x, opts.standardize)?;
        let xs = owned.as_ref().map_or(x, |o| o.view());
        solve(
            xs,
            Head::Multinomial(y),
            classes,
            lambda,
            &opts.lbfgs,
            warm.map(|m| m.theta.as_slice()),
            st.as_ref(),
        )
    }

    /// Multinomial fit on an `n × d` tensor.
    pub fn fit_tensor(
        x: &candle_core::Tensor,
        y: &[usize],
        classes: usize,
        lambda: f64,
        opts: &LogisticOptions,
    ) -> Result<LogisticModel> {
        let owned = OwnedFeatures::from_tensor(x)?;
        Self::fit(owned.view(), y, classes, lambda, opts)
    }

    /// Binary (one class vs the rest) fit; targets are 1, -1, or 0 for rows to leave out.
    pub fn fit_binary(
        x: Features<'_>,
        targets: &[i8],
        lambda: f64,
        opts: &LogisticOptions,
        warm: Option<&LogisticModel>,
    ) -> Result<LogisticModel> {
        let (rows, t) = binary_rows(x, targets)?;
        let (owned, st) = prepare(rows.view(), opts.standardize)?;
        let xs = owned.as_ref().map_or(rows.view(), |o| o.view());
        solve(
            xs,
            Head::Binary(&t),
            1,
            lambda,
            &opts.lbfgs,
            warm.map(|m| m.theta.as_slice()),
            st.as_ref(),
        )
    }
}

/// `count` log-spaced values from `min` to `max` inclusive, ascending.
pub fn lambda_grid(count: usize, min: f64, max: f64) -> Result<Vec<f64>> {
    if count == 0 || !(min > 0.0 && max >= min && max.is_finite()) {
        return Err(Error::config(
            "lambda_grid",
            format!("need count >= 1 and 0 < min <= max, got {count} values in [{min}, {max}]"),
        ));
    }
    if count == 1 {
        return Ok(vec![min]);
    }
    let (a, b) = (min.log10(), max.log10());
    Ok((0..count)
        .map(|i| 10f64.powf(a + (b - a) * i as f64 / (count - 1) as f64))
        .collect())
}

/// The protocol's grid: 45 log-spaced L2 strengths in [1e-6, 1e5].
pub fn default_lambda_grid() -> Vec<f64> {
    lambda_grid(45, 1e-6, 1e5).expect("valid constant grid")
}

/// One point of an L2 path.
#[derive(Debug, Clone, PartialEq)]
pub struct PathPoint {
    pub lambda: f64,
    /// Validation top-1 accuracy (multinomial) or 11-point AP (binary).
    pub val_score: f64,
    pub iterations: usize,
    /// Objective+gradient evaluations (data passes) the fit used.
    pub evaluations: usize,
    pub converged: bool,
}

/// Result of a path search.
#[derive(Debug, Clone)]
pub struct PathSelection {
    pub best_lambda: f64,
    /// Every grid value, ascending in lambda.
    pub points: Vec<PathPoint>,
    /// The model at `best_lambda`, fitted on the training part only.
    pub model: LogisticModel,
}

fn sorted_grid(grid: &[f64]) -> Result<Vec<f64>> {
    if grid.is_empty() {
        return Err(Error::config("lambda_grid", "empty grid"));
    }
    for &l in grid {
        check_lambda(l)?;
    }
    let mut g = grid.to_vec();
    // Strongest penalty first: each solution warm-starts the next, slightly harder one.
    g.sort_by(|a, b| b.total_cmp(a));
    g.dedup();
    Ok(g)
}

/// Walks the path from strong to weak penalty; `score` rates a model on the validation data.
fn walk_path<S>(
    xs: Features<'_>,
    head: Head<'_>,
    k: usize,
    grid: &[f64],
    opts: &LogisticOptions,
    st: Option<&Standardizer>,
    score: S,
) -> Result<PathSelection>
where
    S: Fn(&LogisticModel) -> Result<f64>,
{
    let grid = sorted_grid(grid)?;
    let mut points = Vec::with_capacity(grid.len());
    let mut best: Option<(f64, LogisticModel)> = None;
    let mut prev: Option<Vec<f64>> = None;
    let mut since_best = 0;
    let mut first: Option<f64> = None;
    for &lambda in &grid {
        let model = solve(xs, head, k, lambda, &opts.lbfgs, prev.as_deref(), st)?;
        let s = score(&model)?;
        tracing::debug!(lambda, val = s, iters = model.report.iterations, "l2 path");
        points.push(PathPoint {
            lambda,
            val_score: s,
            iterations: model.report.iterations,
            evaluations: model.report.evaluations,
            converged: model.report.converged(),
        });
        prev = Some(model.theta.clone());
        let first_score = *first.get_or_insert(s);
        // Strict improvement: on ties the stronger (earlier) penalty is kept.
        if best.as_ref().is_none_or(|(b, _)| s > *b) {
            best = Some((s, model));
            since_best = 0;
        } else if best.as_ref().is_some_and(|(b, _)| *b > first_score) {
            // Patience counts only once the path has improved on its first point: the strongest
            // penalties give the same trivial model (one class everywhere) for decades of λ.
            since_best += 1;
            if opts.path_patience.is_some_and(|p| since_best >= p) {
                break;
            }
        }
    }
    points.reverse();
    let (_, model) = best.expect("non-empty grid");
    Ok(PathSelection {
        best_lambda: model.lambda,
        points,
        model,
    })
}

/// Multinomial L2 path on `train`, scored by top-1 accuracy on `val`.
pub fn l2_path_select(
    train: Features<'_>,
    train_y: &[usize],
    val: Features<'_>,
    val_y: &[usize],
    classes: usize,
    grid: &[f64],
    opts: &LogisticOptions,
) -> Result<PathSelection> {
    check_labels(train_y, train.rows(), classes, "path train split")?;
    check_labels(val_y, val.rows(), classes, "path validation split")?;
    val.expect_cols(train.cols(), "validation split")?;
    if classes < 2 {
        return Err(Error::config(
            "classes",
            "multinomial regression needs >= 2 classes",
        ));
    }
    let (owned, st) = prepare(train, opts.standardize)?;
    let xs = owned.as_ref().map_or(train, |o| o.view());
    walk_path(
        xs,
        Head::Multinomial(train_y),
        classes,
        grid,
        opts,
        st.as_ref(),
        |m| m.accuracy(val, val_y, 1),
    )
}

/// Binary L2 path (targets 1 / -1 / 0 = ignored) scored by 11-point AP on `val`.
pub fn binary_l2_path_select(
    train: Features<'_>,
    train_t: &[i8],
    val: Features<'_>,
    val_t: &[i8],
    grid: &[f64],
    opts: &LogisticOptions,
) -> Result<PathSelection> {
    val.expect_cols(train.cols(), "validation split")?;
    if val_t.len() != val.rows() {
        return Err(Error::Input(format!(
            "{} validation targets for {} rows",
            val_t.len(),
            val.rows()
        )));
    }
    let (rows, t) = binary_rows(train, train_t)?;
    let (owned, st) = prepare(rows.view(), opts.standardize)?;
    let xs = owned.as_ref().map_or(rows.view(), |o| o.view());
    walk_path(xs, Head::Binary(&t), 1, grid, opts, st.as_ref(), |m| {
        metrics::voc07_ap_11point(&m.predict_scores(val)?, val_t)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        let (n, d, k) = (300, 5, 3);
        let x: Vec<f32> = (0..n * d)
            .map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let y: Vec<usize> = (0..n).map(|i| i % k).collect();
        let t: Vec<f32> = (0..n)
            .map(|i| if i % 3 == 0 { 1.0 } else { -1.0 })
            .collect();
        let xf = Features::new(&x, d).unwrap();
        for (head, kk) in [(Head::Multinomial(&y), k), (Head::Binary(&t), 1)] {
            let theta: Vec<f64> = (0..d * kk + kk)
                .map(|i| (i as f64 * 0.3).sin() * 0.5)
                .collect();
            let mut g = vec![0.0; theta.len()];
            objective(xf, head, kk, 0.1, &theta, &mut g).unwrap();
            for i in 0..theta.len() {
                let h = 1e-3;
                let (mut tp, mut tm) = (theta.clone(), theta.clone());
                tp[i] += h;
                tm[i] -= h;
                let mut scratch = vec![0.0; theta.len()];
                // f32 weights inside: compare loosely.
                let fd = (objective(xf, head, kk, 0.1, &tp, &mut scratch).unwrap()
                    - objective(xf, head, kk, 0.1, &tm, &mut scratch).unwrap())
                    / (2.0 * h);
                assert!((fd - g[i]).abs() < 2e-3, "param {i}: fd {fd} vs {}", g[i]);
            }
        }
    }

    #[test]
    fn grid_has_45_values() {
        let g = default_lambda_grid();
        assert_eq!(g.len(), 45);
        assert!((g[0] - 1e-6).abs() < 1e-18 && (g[44] - 1e5).abs() < 1e-6);
        assert!((g[4] / g[0] - 10.0).abs() < 1e-9);
    }
}
