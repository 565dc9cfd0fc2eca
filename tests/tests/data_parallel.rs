//! Data-parallel pretraining: N ranks (threads of this test, through the in-process
//! collective of `byol_tests::thread_group`) must train exactly as one process at the same
//! global batch. The MPI engine is tested through `mpirun` in byol-pretrain's CLI tests.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use byol_core::config::TrainConfig;
use byol_core::distributed::{Collective, DataParallel};
use byol_core::train::{pretrain, RunControl, Silent};
use byol_kernels::{with_backend, Backend};
use byol_tests::state_difference;
use byol_tests::thread_group::thread_group;

use crate::pretrain_resume::{config, data, losses};

/// 24 images, global batch 8: 3 steps an epoch, 6 in all.
fn recipe() -> TrainConfig {
    TrainConfig {
        batch_size: 8,
        checkpoint_every: 0,
        ..config()
    }
}

fn control<'a>(
    out_dir: &'a Path,
    resume: bool,
    stop: &'a AtomicBool,
    parallel: &'a DataParallel,
) -> RunControl<'a> {
    RunControl {
        parallel,
        ..crate::pretrain_resume::run(out_dir, resume, stop)
    }
}

/// Trains `config` into `out` as `world` ranks (threads); rank 0 writes.
fn train_ranks(
    config: &TrainConfig,
    out: &Path,
    world: usize,
    sync_batch_norm: bool,
    resume: bool,
) {
    let backend = byol_kernels::backend();
    train_ranks_on(backend, config, out, world, sync_batch_norm, resume, None)
}

/// [`train_ranks`] with every rank on the kernels `backend`, within `time_budget` if any.
fn train_ranks_on(
    backend: Backend,
    config: &TrainConfig,
    out: &Path,
    world: usize,
    sync_batch_norm: bool,
    resume: bool,
    time_budget: Option<std::time::Duration>,
) {
    let ranks = thread_group(world);
    std::thread::scope(|scope| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|rank| {
                scope.spawn(move || {
                    let parallel = DataParallel {
                        collective: Arc::new(rank) as Arc<dyn Collective>,
                        sync_batch_norm,
                    };
                    let stop = AtomicBool::new(false);
                    let mut data = data();
                    data.dataset = crate::pretrain_resume::stripes(24);
                    with_backend(backend, || {
                        let run = RunControl {
                            time_budget,
                            ..control(out, resume, &stop, &parallel)
                        };
                        pretrain(config, &data, &run, None, &mut Silent).expect("a rank trains")
                    })
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a rank thread");
        }
    });
}

fn loss_difference(a: &Path, b: &Path) -> f64 {
    let (a, b) = (losses(a), losses(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            assert_eq!(x.0, y.0);
            (x.1 - y.1).abs() / x.1.abs().max(1e-12)
        })
        .fold(0.0, f64::max)
}

#[test]
fn two_ranks_with_synchronised_batch_norm_train_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two, three) = (
        dir.path().join("one"),
        dir.path().join("two"),
        dir.path().join("three"),
    );
    train_ranks(&recipe(), &one, 1, true, false);
    train_ranks(&recipe(), &two, 2, true, false);
    // 8 = 3 + 3 + 2: uneven slices weigh their gradients by their share.
    train_ranks(&recipe(), &three, 3, true, false);
    assert_eq!(losses(&one).len(), 6);
    // Each rank rounds its partial sums to f32: the BatchNorm shifts (β), whose gradient Σdy
    // cancels to a small value, move most. Two ranks: < 1e-5 on AVX-512 kernels, 1.3e-5 on an
    // AVX2-only EPYC (other summation orders); three: ~1e-4.
    for (other, state_tolerance) in [(&two, 1e-4), (&three, 1e-3)] {
        let (loss, state) = (loss_difference(&one, other), state_difference(&one, other));
        assert!(loss < 1e-5, "{}: loss differs by {loss:e}", other.display());
        assert!(
            state < state_tolerance,
            "{}: state differs by {state:e}",
            other.display()
        );
    }
    // Rank 0 alone wrote the run's files.
    assert!(two.join("encoder.safetensors").exists() && two.join("config.toml").exists());
}

#[test]
fn ranks_follow_rank_zeros_clock_through_a_time_budget() {
    // Each rank's clock differs a little; rank 0's decides every step's learning rate and the
    // last step for all (a rank that stopped apart would leave the others waiting forever).
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        epochs: 100_000,
        ..recipe()
    };
    let budget = std::time::Duration::from_secs(3);
    let backend = byol_kernels::backend();
    train_ranks_on(backend, &config, dir.path(), 2, true, false, Some(budget));
    let logs = byol_core::metrics_log::read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    assert!(logs.len() > 5, "{} steps in 3 s", logs.len());
    let peak = logs.iter().map(|l| l.lr).fold(0.0, f64::max);
    assert!(logs.last().unwrap().lr < 0.1 * peak, "{:?}", logs.last());
}

#[test]
fn without_synchronised_batch_norm_the_ranks_normalise_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    train_ranks(&recipe(), &one, 1, true, false);
    train_ranks(&recipe(), &two, 2, false, false);
    // Per-rank statistics of 4 images instead of 8: another loss from the first step on.
    let first = |d: &Path| losses(d)[0].1;
    let gap = (first(&one) - first(&two)).abs() / first(&one);
    assert!(gap > 1e-4, "the first losses differ by only {gap:e}");
}

#[test]
fn a_two_rank_checkpoint_resumes_in_one_process_on_the_same_curve() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
    train_ranks(&recipe(), &whole, 1, true, false);
    let first_half = TrainConfig {
        max_steps: Some(4),
        ..recipe()
    };
    train_ranks(&first_half, &split, 2, true, false);
    assert_eq!(losses(&split).len(), 4);
    train_ranks(&recipe(), &split, 1, true, true);
    assert_eq!(losses(&split).len(), 6);
    let (loss, state) = (
        loss_difference(&whole, &split),
        state_difference(&whole, &split),
    );
    assert!(loss < 1e-5, "loss differs by {loss:e}");
    // Rounding of the two ranks' partial sums, as above (1.3e-5 on an AVX2-only EPYC).
    assert!(state < 1e-4, "state differs by {state:e}");
}

#[test]
fn the_stock_path_synchronises_batch_norm_too() {
    // The stock candle ops (the path CUDA takes) reduce through the cross-replica sum op, whose
    // backward sums the gradients: two ranks again train as one process.
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let short = TrainConfig {
        max_steps: Some(3),
        ..recipe()
    };
    train_ranks_on(Backend::Stock, &short, &one, 1, true, false, None);
    train_ranks_on(Backend::Stock, &short, &two, 2, true, false, None);
    let (loss, state) = (loss_difference(&one, &two), state_difference(&one, &two));
    assert!(loss < 1e-5, "loss differs by {loss:e}");
    // Stock candle sums the batch in f32 (the fused kernels in f64): the BatchNorm shifts,
    // whose gradients cancel to small values, move by a few 1e-5 of their size.
    assert!(state < 1e-4, "state differs by {state:e}");
}

#[test]
fn two_ranks_write_the_feature_cache_one_process_writes() {
    use byol_core::eval::cache::load_features;
    use byol_core::weights::Weights;
    let dir = tempfile::tempdir().unwrap();
    // 70 / 20 images, batch 64: the last train batch (6 images) splits 3 + 3.
    byol_tests::write_mnist_like(&dir.path().join("data"), 70, 20, 4, 3);
    let weights = dir.path().join("encoder.safetensors");
    byol_tests::save_tiny_encoder(&weights, 1);
    let alone = crate::linear_eval::setup(dir.path(), Weights::File(weights.clone()));
    let features = alone.features().unwrap();
    let ranks = thread_group(2);
    std::thread::scope(|scope| {
        for rank in ranks {
            let weights = weights.clone();
            let root = dir.path();
            scope.spawn(move || {
                let setup = byol_core::eval::linear_eval::EvalSetup {
                    cache_dir: root.join("shared"),
                    parallel: DataParallel {
                        collective: Arc::new(rank),
                        sync_batch_norm: true,
                    },
                    ..crate::linear_eval::setup(root, Weights::File(weights))
                };
                setup.share_feature_extraction().unwrap();
            });
        }
    });
    for (split, path) in features.paths.iter().enumerate() {
        let shared = dir.path().join("shared").join(path.file_name().unwrap());
        let (a, key_a) = load_features(path).unwrap();
        let (b, key_b) = load_features(&shared).unwrap();
        assert_eq!(key_a, key_b, "split {split}");
        assert_eq!(a.labels, b.labels, "split {split}");
        assert_eq!(
            a.features.view().data(),
            b.features.view().data(),
            "split {split}: the rows one process extracts, in its order"
        );
    }
}
