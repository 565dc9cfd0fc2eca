//! Weighted k-nearest-neighbour classifier on frozen features (the solo-learn / DINO monitor):
//! cosine similarity between L2-normalised features, the `k` most similar training samples vote
//! for their class with weight `exp(sim / T)`.

use crate::eval::matrix::{check_labels, l2_normalized, matmul_nt, Features};
use crate::eval::metrics;
use crate::{Error, Result};
use rayon::prelude::*;

/// kNN settings.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnOptions {
    /// Neighbours that vote (solo-learn/DINO use 20 or 200).
    pub k: usize,
    /// Vote temperature: weight `exp(sim / T)`.
    pub temperature: f32,
    /// Query rows per similarity GEMM (the `batch × n_train` buffer is further capped at 16 MiB).
    pub batch: usize,
}

impl Default for KnnOptions {
    fn default() -> Self {
        Self {
            k: 20,
            temperature: 0.07,
            batch: 256,
        }
    }
}

/// kNN evaluation outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnResult {
    pub top1: f64,
    pub top5: f64,
    pub predictions: Vec<usize>,
}

/// Vote scores `n_query × classes` for every query row.
pub fn knn_scores(
    train: Features<'_>,
    train_y: &[usize],
    classes: usize,
    query: Features<'_>,
    opts: &KnnOptions,
) -> Result<Vec<f32>> {
    check_labels(train_y, train.rows(), classes, "kNN train set")?;
    query.expect_cols(train.cols(), "kNN query")?;
    if opts.k == 0 || opts.k > train.rows() {
        return Err(Error::config(
            "knn.k",
            format!(
                "must be in 1..={} (training rows), got {}",
                train.rows(),
                opts.k
            ),
        ));
    }
    if !(opts.temperature > 0.0 && opts.temperature.is_finite()) {
        return Err(Error::config(
            "knn.temperature",
            format!("must be > 0, got {}", opts.temperature),
        ));
    }
    if opts.batch == 0 {
        return Err(Error::config("knn.batch", "must be at least 1"));
    }
    let tr = l2_normalized(train);
    let q = l2_normalized(query);
    let (d, nt) = (train.cols(), train.rows());
    // Cap the per-batch similarity buffer at 2^22 floats (16 MiB) per worker so that large
    // training sets (ImageNet: 1.28M rows) do not allocate gigabytes per batch.
    let batch = opts.batch.min((1usize << 22) / nt).max(1);
    let mut out = vec![0f32; query.rows() * classes];
    out.par_chunks_mut(batch * classes)
        .zip(q.view().data().par_chunks(batch * d))
        .for_each(|(o, qc)| {
            let rows = qc.len() / d;
            let mut sim = vec![0f32; rows * nt];
            matmul_nt(rows, nt, d, qc, tr.view().data(), &mut sim);
            let mut order: Vec<usize> = Vec::with_capacity(nt);
            for (r, srow) in sim.chunks(nt).enumerate() {
                order.clear();
                order.extend(0..nt);
                // Partial selection: the k largest similarities, in any order.
                order.select_nth_unstable_by(opts.k - 1, |&a, &b| srow[b].total_cmp(&srow[a]));
                let votes = &mut o[r * classes..(r + 1) * classes];
                for &j in &order[..opts.k] {
                    votes[train_y[j]] += (srow[j] / opts.temperature).exp();
                }
            }
        });
    Ok(out)
}

/// Classifies `test` by kNN against `train` and reports top-1 / top-5 accuracy.
pub fn knn_classify(
    train: Features<'_>,
    train_y: &[usize],
    test: Features<'_>,
    test_y: &[usize],
    classes: usize,
    opts: &KnnOptions,
) -> Result<KnnResult> {
    check_labels(test_y, test.rows(), classes, "kNN test set")?;
    let scores = knn_scores(train, train_y, classes, test, opts)?;
    Ok(KnnResult {
        top1: metrics::top_k_accuracy(&scores, test_y, classes, 1)?,
        top5: metrics::top_k_accuracy(&scores, test_y, classes, 5.min(classes))?,
        predictions: metrics::predictions(&scores, classes)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_by_hand() {
        // Train: two samples of class 0 along +x, one of class 1 along +y.
        let tr = [1.0, 0.0, 2.0, 0.1, 0.0, 1.0];
        let y = [0, 0, 1];
        let q = [0.0, 3.0, 1.0, 0.05];
        let opts = KnnOptions {
            k: 1,
            ..Default::default()
        };
        let f = |d: &'static [f32]| Features::new(d, 2).unwrap();
        let tr: &'static [f32] = Box::leak(Box::new(tr));
        let q: &'static [f32] = Box::leak(Box::new(q));
        let s = knn_scores(f(tr), &y, 2, f(q), &opts).unwrap();
        assert_eq!(s[0], 0.0);
        assert!((s[1] - (1.0f32 / 0.07).exp()).abs() / s[1] < 1e-5);
        assert!(s[2] > 0.0 && s[3] == 0.0);
        let r = knn_classify(
            f(tr),
            &y,
            f(q),
            &[1, 0],
            2,
            &KnnOptions {
                k: 3,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.predictions, vec![1, 0]);
        assert_eq!(r.top1, 1.0);
        assert!(knn_scores(
            f(tr),
            &y,
            2,
            f(q),
            &KnnOptions {
                k: 4,
                ..Default::default()
            }
        )
        .is_err());
    }
}
