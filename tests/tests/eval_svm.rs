//! Linear SVM (dual coordinate descent) against scikit-learn's LinearSVC, and the VOC07 protocol.

use byol_tests::eval_common as common;

use byol_core::eval::matrix::Features;
use byol_core::eval::svm::{
    stratified_folds, train_linear_svm, voc07_svm, SvmOptions, Voc07SvmOptions,
};
use common::*;

#[test]
fn decision_values_match_linear_svc() {
    let f = fixture("svm.json");
    let d = f["dim"].as_u64().unwrap() as usize;
    let x = f32s(&f["x"]);
    let y = i8s(&f["y"]);
    let xt = f32s(&f["x_test"]);
    let mut worst: f64 = 0.0;
    for case in f["cases"].as_array().unwrap() {
        let opts = SvmOptions {
            cost: case["cost"].as_f64().unwrap(),
            pos_weight: case["pos_weight"].as_f64().unwrap(),
            tol: 1e-10,
            max_iter: 1_000_000,
            ..Default::default()
        };
        let m = train_linear_svm(Features::new(&x, d).unwrap(), &y, &opts).unwrap();
        assert!(m.converged);
        let s = m.decision_function(Features::new(&xt, d).unwrap()).unwrap();
        let r = f64s(&case["decision"]);
        let scale = r.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for (a, b) in s.iter().zip(&r) {
            worst = worst.max((*a as f64 - b).abs() / scale);
        }
        let coef = f64s(&case["coef"]);
        let wn = coef.iter().map(|v| v * v).sum::<f64>().sqrt();
        for (a, b) in m.weights.iter().zip(&coef) {
            worst = worst.max((a - b).abs() / wn);
        }
        worst = worst.max((m.bias - case["intercept"].as_f64().unwrap()).abs() / wn);
    }
    eprintln!("LinearSVC parity: worst relative error {worst:.2e}");
    assert!(worst < 1e-4, "worst relative error vs LinearSVC {worst}");
}

#[test]
fn folds_match_stratified_kfold() {
    let f = fixture("svm.json");
    let labels = i8s(&f["fold_labels"]);
    assert_eq!(stratified_folds(&labels, 3).unwrap(), usizes(&f["folds"]));
}

#[test]
fn voc07_protocol_on_synthetic_multilabel() {
    let mut rng = Rng::new(21);
    let (d, k) = (32, 4);
    let c = centres(&mut rng, d, k, 3.0);
    let make = |rng: &mut Rng, n: usize| {
        let mut x = vec![0f32; n * d];
        let mut l = vec![-1i8; n * k];
        for i in 0..n {
            let a = rng.below(k);
            for j in 0..d {
                x[i * d + j] = (c[a][j] + 0.7 * rng.normal()) as f32;
            }
            l[i * k + a] = if rng.uniform() < 0.1 { 0 } else { 1 };
        }
        (x, l)
    };
    let (x, l) = make(&mut rng, 400);
    let (xt, lt) = make(&mut rng, 200);
    let opts = Voc07SvmOptions::default();
    let r = voc07_svm(
        Features::new(&x, d).unwrap(),
        &l,
        Features::new(&xt, d).unwrap(),
        &lt,
        k,
        &opts,
    )
    .unwrap();
    assert!(r.map > 0.97, "{r:?}");
    assert!(r.chosen_costs.iter().all(|c| opts.costs.contains(c)));
    assert_eq!(r.cv_ap.len(), k);
    assert!(r.cv_ap.iter().all(|v| v.len() == opts.costs.len()));
    // Wrong label layout and empty cost list are errors.
    assert!(voc07_svm(
        Features::new(&x, d).unwrap(),
        &l[1..],
        Features::new(&xt, d).unwrap(),
        &lt,
        k,
        &opts
    )
    .is_err());
    let no_costs = Voc07SvmOptions {
        costs: vec![],
        ..Default::default()
    };
    assert!(voc07_svm(
        Features::new(&x, d).unwrap(),
        &l,
        Features::new(&xt, d).unwrap(),
        &lt,
        k,
        &no_costs
    )
    .is_err());
}

#[test]
fn svm_rejects_bad_input() {
    let x = [1.0f32, 0.0, 0.0, 1.0];
    let f = Features::new(&x, 2).unwrap();
    let o = SvmOptions::default();
    assert!(train_linear_svm(f, &[1], &o).is_err());
    assert!(train_linear_svm(f, &[0, 0], &o).is_err());
    assert!(train_linear_svm(f, &[1, 3], &o).is_err());
    assert!(train_linear_svm(
        f,
        &[1, -1],
        &SvmOptions {
            cost: 0.0,
            ..Default::default()
        }
    )
    .is_err());
    let m = train_linear_svm(f, &[1, -1], &o).unwrap();
    assert!(m.decision_function(Features::new(&x, 1).unwrap()).is_err());
}
