//! The seeded train / validation carve-out every protocol without a validation split uses.

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::{Error, Result};

/// Deterministic carve-out of a validation split: a seeded shuffle of `0..n`, the first
/// `round(n·val_fraction)` indices (at least one, leaving at least one) become validation.
/// Both lists are returned sorted.
pub fn train_val_split(n: usize, val_fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        return Err(Error::config(
            "val_fraction",
            format!("must be in (0, 1), got {val_fraction}"),
        ));
    }
    if n < 2 {
        return Err(Error::Input(format!(
            "cannot split {n} samples into train and validation"
        )));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let n_val = ((n as f64 * val_fraction).round() as usize).clamp(1, n - 1);
    let mut val = idx[..n_val].to_vec();
    let mut train = idx[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    Ok((train, val))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let (a, b) = train_val_split(100, 0.2, 7).unwrap();
        assert_eq!((a.len(), b.len()), (80, 20));
        assert_eq!(
            train_val_split(100, 0.2, 7).unwrap(),
            (a.clone(), b.clone())
        );
        assert_ne!(train_val_split(100, 0.2, 8).unwrap().1, b);
        let mut all = [a, b].concat();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert!(train_val_split(100, 1.0, 0).is_err());
    }
}
