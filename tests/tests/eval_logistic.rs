//! Logistic probes: separable data, the L2 path's choice, sklearn parity, errors.

use byol_tests::eval_common as common;

use byol_core::eval::lbfgs::LbfgsOptions;
use byol_core::eval::linear_protocol::{linear_protocol, LinearProtocolOptions};
use byol_core::eval::logistic::{
    default_lambda_grid, l2_path_select, lambda_grid, LogisticOptions, LogisticRegression,
};
use byol_core::eval::matrix::Features;
use byol_core::eval::voc_logistic::voc_logistic_protocol;
use common::*;

fn tight() -> LogisticOptions {
    LogisticOptions {
        lbfgs: LbfgsOptions {
            max_iter: 5000,
            gtol: 1e-9,
            ftol: 0.0,
            ..Default::default()
        },
        standardize: false,
        path_patience: None,
    }
}

#[test]
fn separable_blobs_are_classified_perfectly() {
    let mut rng = Rng::new(3);
    let c = centres(&mut rng, 20, 4, 12.0);
    let (x, y) = blobs(&mut rng, 800, &c);
    let (xt, yt) = blobs(&mut rng, 400, &c);
    for standardize in [false, true] {
        let opts = LogisticOptions {
            standardize,
            ..Default::default()
        };
        let m =
            LogisticRegression::fit(Features::new(&x, 20).unwrap(), &y, 4, 1e-4, &opts).unwrap();
        assert!(m.report.converged(), "{:?}", m.report);
        assert_eq!(
            m.accuracy(Features::new(&xt, 20).unwrap(), &yt, 1).unwrap(),
            1.0
        );
    }
    let r = linear_protocol(
        Features::new(&x, 20).unwrap(),
        &y,
        Features::new(&xt, 20).unwrap(),
        &yt,
        4,
        &LinearProtocolOptions {
            grid: lambda_grid(12, 1e-6, 1e5).unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.test_top1, 1.0);
    assert_eq!(r.test_top5, 1.0);
    assert_eq!(r.path.len(), 12);
}

/// Two informative coordinates hidden behind a large shared nuisance: x0 = s + u, x1 = u.
/// Only a weakly penalised model learns to cancel u; heavy shrinkage falls back to x0 alone.
fn nuisance_set(rng: &mut Rng, n: usize, d: usize, flip: f64) -> (Vec<f32>, Vec<usize>) {
    let mut x = Vec::with_capacity(n * d);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % 2;
        let s = if c == 1 { 1.0 } else { -1.0 } + 0.3 * rng.normal();
        let u = 8.0 * rng.normal();
        x.push((s + u) as f32);
        x.push(u as f32);
        for _ in 2..d {
            x.push(rng.normal() as f32);
        }
        y.push(if rng.uniform() < flip { 1 - c } else { c });
    }
    (x, y)
}

#[test]
fn l2_path_prefers_stronger_penalty_on_small_noisy_data() {
    let grid = default_lambda_grid();
    let opts = LogisticOptions::default();
    let mut rng = Rng::new(11);
    let d = 60;
    // Large and clean: the weakly penalised solution is the right one.
    let (x, y) = nuisance_set(&mut rng, 3000, d, 0.0);
    let (xv, yv) = nuisance_set(&mut rng, 1000, d, 0.0);
    let clean = l2_path_select(
        Features::new(&x, d).unwrap(),
        &y,
        Features::new(&xv, d).unwrap(),
        &yv,
        2,
        &grid,
        &opts,
    )
    .unwrap();
    // Small, isotropic and noisy (30% flipped labels, 60 dims for 40 rows): overfitting dominates.
    let c = centres(&mut rng, d, 2, 1.5);
    let (mut xs, mut ys) = blobs(&mut rng, 40, &c);
    for v in ys.iter_mut() {
        if rng.uniform() < 0.3 {
            *v = 1 - *v;
        }
    }
    let (xsv, ysv) = blobs(&mut rng, 1000, &c);
    xs.truncate(40 * d);
    let noisy = l2_path_select(
        Features::new(&xs, d).unwrap(),
        &ys,
        Features::new(&xsv, d).unwrap(),
        &ysv,
        2,
        &grid,
        &opts,
    )
    .unwrap();
    let acc = |p: &byol_core::eval::logistic::PathSelection| {
        p.points.iter().map(|q| q.val_score).fold(0.0, f64::max)
    };
    assert!(acc(&clean) > 0.98, "clean path best {}", acc(&clean));
    assert!(
        noisy.best_lambda > 10.0 * clean.best_lambda,
        "noisy picks {} vs clean {}",
        noisy.best_lambda,
        clean.best_lambda
    );
    assert_eq!(clean.points.len(), 45);
    assert!(clean.points.windows(2).all(|w| w[0].lambda < w[1].lambda));
}

#[test]
fn path_patience_stops_past_the_optimum_and_keeps_its_choice() {
    let grid = default_lambda_grid();
    let mut rng = Rng::new(12);
    let d = 60;
    // Small and noisy: the best λ lies inside the grid, the weak-penalty tail only overfits.
    let c = centres(&mut rng, d, 2, 1.5);
    let (x, mut y) = blobs(&mut rng, 60, &c);
    for v in y.iter_mut() {
        if rng.uniform() < 0.3 {
            *v = 1 - *v;
        }
    }
    let (xv, yv) = blobs(&mut rng, 1000, &c);
    let select = |patience| {
        let opts = LogisticOptions {
            path_patience: patience,
            ..LogisticOptions::default()
        };
        let f = Features::new(&x, d).unwrap();
        l2_path_select(f, &y, Features::new(&xv, d).unwrap(), &yv, 2, &grid, &opts).unwrap()
    };
    let full = select(None);
    let early = select(Some(8));
    assert_eq!(full.points.len(), 45);
    assert!(
        early.points.len() < 45,
        "stopped after {}",
        early.points.len()
    );
    // The walk is strong → weak: the points kept are the strongest ones, and past the best one
    // exactly `patience` points were tried without improving it.
    let best_at = early
        .points
        .iter()
        .position(|p| p.lambda == early.best_lambda)
        .unwrap();
    assert_eq!(best_at, 8);
    assert_eq!(early.best_lambda, full.best_lambda);
}

#[test]
fn multinomial_and_binary_match_sklearn() {
    let f = fixture("logistic.json");
    let m = &f["multinomial"];
    let d = m["dim"].as_u64().unwrap() as usize;
    let k = m["classes"].as_u64().unwrap() as usize;
    let x = f32s(&m["x"]);
    let y = usizes(&m["y"]);
    let xt = f32s(&m["x_test"]);
    let mut worst_w: f64 = 0.0;
    let mut worst_p: f64 = 0.0;
    for case in m["cases"].as_array().unwrap() {
        let lambda = case["lambda"].as_f64().unwrap();
        let model = LogisticRegression::fit(Features::new(&x, d).unwrap(), &y, k, lambda, &tight())
            .unwrap();
        let coef = f64s(&case["coef"]);
        let num: f64 = model
            .weights
            .iter()
            .zip(&coef)
            .map(|(a, b)| (*a as f64 - b).powi(2))
            .sum();
        let den: f64 = coef.iter().map(|b| b * b).sum();
        worst_w = worst_w.max((num / den).sqrt());
        for (a, b) in model.bias.iter().zip(f64s(&case["intercept"])) {
            worst_w = worst_w.max((*a as f64 - b).abs() / den.sqrt());
        }
        let scores = model
            .predict_scores(Features::new(&xt, d).unwrap())
            .unwrap();
        for (row, prow) in scores.chunks(k).zip(f64s(&case["proba"]).chunks(k)) {
            let mx = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let z: f64 = row.iter().map(|&v| (v as f64 - mx).exp()).sum();
            for (v, p) in row.iter().zip(prow) {
                worst_p = worst_p.max(((*v as f64 - mx).exp() / z - p).abs());
            }
        }
    }
    // The logits are f32 GEMMs, so the optimum is resolved to about 1e-6 in gradient; with
    // lambda = 1e-3 that leaves ~1e-4 in the weights (sklearn works in f64 here).
    eprintln!("multinomial: coefficient rel. error {worst_w:.2e}, probability error {worst_p:.2e}");
    assert!(
        worst_w < 2e-4,
        "multinomial coefficient rel. error {worst_w}"
    );
    assert!(worst_p < 5e-4, "multinomial probability error {worst_p}");

    let b = &f["binary"];
    let t = i8s(&b["targets"]);
    let mut worst_b: f64 = 0.0;
    for case in b["cases"].as_array().unwrap() {
        let lambda = case["lambda"].as_f64().unwrap();
        let model = LogisticRegression::fit_binary(
            Features::new(&x, d).unwrap(),
            &t,
            lambda,
            &tight(),
            None,
        )
        .unwrap();
        let s = model
            .predict_scores(Features::new(&xt, d).unwrap())
            .unwrap();
        for (a, r) in s.iter().zip(f64s(&case["decision"])) {
            worst_b = worst_b.max((*a as f64 - r).abs() / r.abs().max(1.0));
        }
    }
    eprintln!("binary: decision-value error {worst_b:.2e}");
    assert!(worst_b < 2e-4, "binary decision error {worst_b}");
}

#[test]
fn voc_style_one_vs_rest_recovers_labels() {
    let mut rng = Rng::new(5);
    let (d, k, n) = (16, 3, 600);
    let c = centres(&mut rng, d, k, 6.0);
    let make = |rng: &mut Rng, n: usize| {
        let mut x = vec![0f32; n * d];
        let mut l = vec![-1i8; n * k];
        for i in 0..n {
            // One or two present classes per image; features are the sum of their centres.
            let a = rng.below(k);
            let b = rng.below(k);
            for j in 0..d {
                x[i * d + j] = (c[a][j] + if b != a { c[b][j] } else { 0.0 } + rng.normal()) as f32;
            }
            l[i * k + a] = 1;
            l[i * k + b] = if rng.uniform() < 0.1 { 0 } else { 1 };
        }
        (x, l)
    };
    let (x, l) = make(&mut rng, n);
    let (xt, lt) = make(&mut rng, 300);
    let r = voc_logistic_protocol(
        Features::new(&x, d).unwrap(),
        &l,
        Features::new(&xt, d).unwrap(),
        &lt,
        k,
        &LinearProtocolOptions {
            grid: lambda_grid(8, 1e-5, 1e2).unwrap(),
            val_fraction: 0.2,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.map > 0.95, "{r:?}");
    assert_eq!(r.best_lambdas.len(), k);
}

#[test]
fn bad_inputs_are_errors() {
    let x = [0.0f32, 1.0, 1.0, 0.0, 0.5, 0.5];
    let f = Features::new(&x, 2).unwrap();
    let o = LogisticOptions::default();
    assert!(LogisticRegression::fit(f, &[0, 1, 2], 2, 0.1, &o).is_err()); // label out of range
    assert!(LogisticRegression::fit(f, &[0, 1], 2, 0.1, &o).is_err()); // label count
    assert!(LogisticRegression::fit(f, &[0, 1, 0], 2, -1.0, &o).is_err()); // lambda
    assert!(LogisticRegression::fit(f, &[0, 1, 0], 2, f64::NAN, &o).is_err());
    assert!(Features::new(&[], 2).is_err()); // empty
    let m = LogisticRegression::fit(f, &[0, 1, 0], 2, 0.1, &o).unwrap();
    let wrong = Features::new(&x, 3).unwrap();
    assert!(m.predict_scores(wrong).is_err()); // feature dim
    assert!(LogisticRegression::fit_binary(f, &[0, 0, 0], 0.1, &o, None).is_err());
    assert!(LogisticRegression::fit_binary(f, &[1, 2, -1], 0.1, &o, None).is_err());
    assert!(lambda_grid(0, 1e-6, 1.0).is_err());
    assert!(l2_path_select(f, &[0, 1, 0], f, &[0, 1, 0], 2, &[], &o).is_err());
}

#[test]
fn tensor_input_matches_slice_input() {
    let mut rng = Rng::new(9);
    let c = centres(&mut rng, 5, 3, 4.0);
    let (x, y) = blobs(&mut rng, 90, &c);
    let t = candle_core::Tensor::from_vec(x.clone(), (90, 5), &candle_core::Device::Cpu).unwrap();
    let o = LogisticOptions::default();
    let a = LogisticRegression::fit_tensor(&t, &y, 3, 0.01, &o).unwrap();
    let b = LogisticRegression::fit(Features::new(&x, 5).unwrap(), &y, 3, 0.01, &o).unwrap();
    assert_eq!(a.weights, b.weights);
    let bad =
        candle_core::Tensor::zeros(90, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    assert!(LogisticRegression::fit_tensor(&bad, &y, 3, 0.01, &o).is_err());
}
