//! Weighted kNN: separable data, brute-force parity of the votes, errors.

use byol_tests::eval_common as common;

use byol_core::eval::knn::{knn_classify, knn_scores, KnnOptions};
use byol_core::eval::matrix::Features;
use common::*;

#[test]
fn separable_blobs_reach_full_accuracy() {
    let mut rng = Rng::new(2);
    let c = centres(&mut rng, 24, 10, 8.0);
    let (x, y) = blobs(&mut rng, 1000, &c);
    let (xt, yt) = blobs(&mut rng, 300, &c);
    let r = knn_classify(
        Features::new(&x, 24).unwrap(),
        &y,
        Features::new(&xt, 24).unwrap(),
        &yt,
        10,
        &KnnOptions::default(),
    )
    .unwrap();
    assert_eq!(r.top1, 1.0);
    assert_eq!(r.top5, 1.0);
    assert_eq!(r.predictions, yt);
}

#[test]
fn votes_match_brute_force() {
    let mut rng = Rng::new(4);
    let (n, q, d, k, classes) = (257, 70, 9, 7, 5);
    let x: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
    let y: Vec<usize> = (0..n).map(|_| rng.below(classes)).collect();
    let xq: Vec<f32> = (0..q * d).map(|_| rng.normal() as f32).collect();
    let opts = KnnOptions {
        k,
        temperature: 0.1,
        batch: 16,
    };
    let s = knn_scores(
        Features::new(&x, d).unwrap(),
        &y,
        classes,
        Features::new(&xq, d).unwrap(),
        &opts,
    )
    .unwrap();
    let unit = |v: &[f32]| {
        let n = v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        v.iter().map(|a| *a as f64 / n).collect::<Vec<_>>()
    };
    for i in 0..q {
        let qi = unit(&xq[i * d..(i + 1) * d]);
        let mut sims: Vec<(f64, usize)> = (0..n)
            .map(|j| {
                let xj = unit(&x[j * d..(j + 1) * d]);
                (qi.iter().zip(&xj).map(|(a, b)| a * b).sum(), y[j])
            })
            .collect();
        sims.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut votes = vec![0f64; classes];
        for &(sv, c) in &sims[..k] {
            votes[c] += (sv / 0.1).exp();
        }
        for c in 0..classes {
            let got = s[i * classes + c] as f64;
            assert!(
                (got - votes[c]).abs() <= 1e-4 * votes[c].max(1.0),
                "query {i} class {c}: {got} vs {}",
                votes[c]
            );
        }
    }
}

#[test]
fn knn_rejects_bad_input() {
    let x = [1.0f32, 0.0, 0.0, 1.0];
    let f = Features::new(&x, 2).unwrap();
    assert!(knn_scores(
        f,
        &[0, 1],
        2,
        f,
        &KnnOptions {
            k: 0,
            ..Default::default()
        }
    )
    .is_err());
    assert!(knn_scores(
        f,
        &[0, 1],
        2,
        f,
        &KnnOptions {
            k: 3,
            ..Default::default()
        }
    )
    .is_err());
    assert!(knn_scores(
        f,
        &[0, 2],
        2,
        f,
        &KnnOptions {
            k: 1,
            ..Default::default()
        }
    )
    .is_err());
    assert!(knn_scores(
        f,
        &[0, 1],
        2,
        Features::new(&x, 1).unwrap(),
        &KnnOptions {
            k: 1,
            ..Default::default()
        }
    )
    .is_err());
    assert!(knn_scores(
        f,
        &[0, 1],
        2,
        f,
        &KnnOptions {
            k: 1,
            temperature: 0.0,
            batch: 4
        }
    )
    .is_err());
}
