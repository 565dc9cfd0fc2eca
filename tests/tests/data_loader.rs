//! The batch loader: determinism across worker counts, sharding, drop-last, buffer reuse,
//! corrupt-file policy and error propagation.

use byol_core::data::loader::{Batch, Loader, LoaderConfig, SampleCtx, Transform};
use byol_core::data::{CorruptPolicy, Dataset, Image, Sample};
use byol_core::{Error, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// `n` 1x1 grey images whose pixel is the index; indices in `corrupt` fail like bad files.
struct Toy {
    n: usize,
    corrupt: Vec<usize>,
    classes: Vec<String>,
}

impl Toy {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            n,
            corrupt: vec![],
            classes: vec!["even".into(), "odd".into()],
        })
    }
}

impl Dataset for Toy {
    fn len(&self) -> usize {
        self.n
    }
    fn class_names(&self) -> &[String] {
        &self.classes
    }
    fn get(&self, index: usize) -> Result<Sample> {
        if self.corrupt.contains(&index) {
            return Err(Error::format(
                PathBuf::from(format!("img{index}.jpg")),
                "bad JPEG",
            ));
        }
        Ok(Sample {
            image: Image::new(1, 1, 1, vec![index as u8])?,
            label: index % 2,
        })
    }
}

/// Two views: the pixel plus a value drawn from the sample's seed, so determinism of the
/// per-sample randomness is checked too; view 1 is its negation.
fn two_views() -> Arc<dyn Transform> {
    Arc::new(
        |s: &Sample, ctx: &SampleCtx, views: &mut [&mut [f32]]| -> Result<()> {
            let noise = (ctx.rng_seed() % 1000) as f32 / 1000.0;
            views[0].fill(s.image.data[0] as f32 + noise);
            let v0 = views[0][0];
            views[1].fill(-v0);
            Ok(())
        },
    )
}

fn config(batch: usize, workers: usize) -> LoaderConfig {
    LoaderConfig {
        workers,
        prefetch: 2,
        seed: 7,
        ..LoaderConfig::new(batch, 2, 3)
    }
}

/// Indices, labels, view 0 and view 1 of one batch.
type Content = (Vec<usize>, Vec<usize>, Vec<f32>, Vec<f32>);

fn collect(loader: &Loader, epoch: usize) -> Vec<Content> {
    loader
        .epoch(epoch)
        .unwrap()
        .map(|b| {
            let b: Batch = b.unwrap();
            (
                b.indices().to_vec(),
                b.labels().to_vec(),
                b.view(0).to_vec(),
                b.view(1).to_vec(),
            )
        })
        .collect()
}

#[test]
fn batches_do_not_depend_on_worker_count() {
    let ds = Toy::new(50);
    let one = Loader::new(ds.clone(), two_views(), config(4, 1)).unwrap();
    let three = Loader::new(ds, two_views(), config(4, 3)).unwrap();
    for epoch in 0..2 {
        let a = collect(&one, epoch);
        assert_eq!(a, collect(&three, epoch));
        assert_eq!(a.len(), 12);
        // Labels, indices and view contents line up sample by sample.
        let (idx, labels, v0, v1) = &a[3];
        assert_eq!(labels, &idx.iter().map(|i| i % 2).collect::<Vec<_>>());
        assert_eq!(v0.len(), 4 * 3);
        assert_eq!(v0[3].floor() as usize, idx[1]);
        assert_eq!(v1[3], -v0[3]);
    }
    // Another epoch is another order.
    assert_ne!(collect(&one, 0)[0].0, collect(&one, 1)[0].0);
}

#[test]
fn an_epoch_started_mid_way_yields_the_same_remaining_batches() {
    let ds = Toy::new(50);
    let loader = Loader::new(ds, two_views(), config(4, 3)).unwrap();
    let whole = collect(&loader, 1);
    let tail: Vec<Content> = loader
        .epoch_from(1, 5)
        .unwrap()
        .map(|b| {
            let b = b.unwrap();
            (
                b.indices().to_vec(),
                b.labels().to_vec(),
                b.view(0).to_vec(),
                b.view(1).to_vec(),
            )
        })
        .collect();
    assert_eq!(tail.len(), whole.len() - 5);
    assert_eq!(tail, whole[5..].to_vec());
    assert_eq!(loader.epoch_from(1, 99).unwrap().count(), 0);
}

#[test]
fn ranks_take_contiguous_slices_of_the_single_process_batches() {
    // Every rank's batch b, concatenated in rank order, is the single-process batch b: the
    // same images with the same augmentations (the data side of a data-parallel run).
    let ds = Toy::new(103);
    let single = collect(
        &Loader::new(
            ds.clone(),
            two_views(),
            LoaderConfig {
                drop_last: false,
                ..config(8, 2)
            },
        )
        .unwrap(),
        3,
    );
    assert_eq!(single.len(), 13);
    let world = 3;
    let per_rank: Vec<_> = (0..world)
        .map(|rank| {
            let cfg = LoaderConfig {
                rank,
                world_size: world,
                drop_last: false,
                ..config(8, 2)
            };
            let loader = Loader::new(ds.clone(), two_views(), cfg).unwrap();
            assert_eq!(loader.num_batches(), 13);
            collect(&loader, 3)
        })
        .collect();
    for (b, whole) in single.iter().enumerate() {
        let mut joined: Content = Default::default();
        for rank in &per_rank {
            joined.0.extend(rank[b].0.iter().copied());
            joined.1.extend(rank[b].1.iter().copied());
            joined.2.extend(rank[b].2.iter().copied());
            joined.3.extend(rank[b].3.iter().copied());
        }
        assert_eq!(&joined, whole, "batch {b}");
    }
    // 8 = 3 + 3 + 2; the last batch (7 images) splits 3 + 2 + 2.
    assert_eq!(per_rank[2][0].0.len(), 2);
    assert_eq!(per_rank[0][12].0.len(), 3);
}

#[test]
fn drop_last_and_no_shuffle() {
    let ds = Toy::new(10);
    let keep = LoaderConfig {
        drop_last: false,
        shuffle: false,
        ..config(4, 2)
    };
    let loader = Loader::new(ds.clone(), two_views(), keep.clone()).unwrap();
    let sizes: Vec<usize> = collect(&loader, 0).iter().map(|b| b.0.len()).collect();
    assert_eq!(sizes, [4, 4, 2]);
    assert_eq!(collect(&loader, 0)[2].0, [8, 9]);
    let drop = LoaderConfig {
        drop_last: true,
        ..keep
    };
    let loader = Loader::new(ds, two_views(), drop).unwrap();
    let sizes: Vec<usize> = collect(&loader, 0).iter().map(|b| b.0.len()).collect();
    assert_eq!(sizes, [4, 4]);
}

#[test]
fn buffers_come_back_to_the_pool() {
    let loader = Loader::new(Toy::new(40), two_views(), config(4, 2)).unwrap();
    assert_eq!(collect(&loader, 0).len(), 10);
    let spare = loader.spare_buffers();
    // At most workers + prefetch + 2 are kept.
    assert!((1..=6).contains(&spare), "{spare}");
    // A second epoch reuses them instead of growing the pool past its bound.
    assert_eq!(collect(&loader, 1).len(), 10);
    assert!(loader.spare_buffers() <= 6);
}

#[test]
fn corrupt_files_are_skipped_or_fatal_by_policy() {
    let ds = Arc::new(Toy {
        n: 12,
        corrupt: vec![2, 5],
        classes: vec!["a".into(), "b".into()],
    });
    let cfg = LoaderConfig {
        shuffle: false,
        drop_last: false,
        ..config(4, 3)
    };
    let loader = Loader::new(ds.clone(), two_views(), cfg.clone()).unwrap();
    let batches = collect(&loader, 0);
    let idx: Vec<Vec<usize>> = batches.iter().map(|b| b.0.clone()).collect();
    assert_eq!(idx, [vec![0, 1, 3], vec![4, 6, 7], vec![8, 9, 10, 11]]);
    assert_eq!(batches[0].2.len(), 3 * 3);
    assert_eq!(loader.skipped(), 2);

    let strict = LoaderConfig {
        on_corrupt: CorruptPolicy::Error,
        ..cfg
    };
    let loader = Loader::new(ds, two_views(), strict).unwrap();
    let results: Vec<_> = loader.epoch(0).unwrap().collect();
    // Batch 0 fails on img2.jpg; the iterator ends after the error.
    assert_eq!(results.len(), 1);
    let err = results.into_iter().next().unwrap().unwrap_err();
    assert!(err.to_string().contains("img2.jpg"), "{err}");
}

#[test]
fn transform_errors_and_panics_reach_the_consumer() {
    let failing: Arc<dyn Transform> = Arc::new(
        |s: &Sample, _: &SampleCtx, _: &mut [&mut [f32]]| -> Result<()> {
            if s.image.data[0] == 30 {
                return Err(Error::Input("crop larger than image".into()));
            }
            Ok(())
        },
    );
    let cfg = LoaderConfig {
        shuffle: false,
        ..config(4, 3)
    };
    let loader = Loader::new(Toy::new(40), failing, cfg.clone()).unwrap();
    let results: Vec<_> = loader.epoch(0).unwrap().collect();
    // Batches 0..7 arrive, batch 7 (samples 28..32) is the error, then nothing.
    assert_eq!(results.len(), 8);
    assert!(results[..7].iter().all(|r| r.is_ok()));
    assert!(matches!(&results[7], Err(Error::Input(m)) if m.contains("crop")));

    let panicking: Arc<dyn Transform> = Arc::new(
        |s: &Sample, _: &SampleCtx, _: &mut [&mut [f32]]| -> Result<()> {
            assert!(s.image.data[0] != 9, "transform bug");
            Ok(())
        },
    );
    let loader = Loader::new(Toy::new(40), panicking, cfg).unwrap();
    let results: Vec<_> = loader.epoch(0).unwrap().collect();
    assert_eq!(results.len(), 3);
    assert!(matches!(&results[2], Err(Error::Input(m)) if m.contains("panicked")));
}

#[test]
fn consumer_may_stop_early_and_bad_configs_are_rejected() {
    let loader = Loader::new(Toy::new(1000), two_views(), config(2, 3)).unwrap();
    let first: Vec<_> = loader.epoch(0).unwrap().take(2).collect();
    assert_eq!(first.len(), 2);
    let bad = LoaderConfig {
        rank: 2,
        world_size: 2,
        ..config(2, 1)
    };
    assert!(matches!(
        Loader::new(Toy::new(4), two_views(), bad),
        Err(Error::Config { .. })
    ));
    let bad = LoaderConfig {
        workers: 0,
        ..config(2, 1)
    };
    assert!(Loader::new(Toy::new(4), two_views(), bad).is_err());
}

#[test]
fn an_all_corrupt_image_folder_stops_with_a_clear_error() {
    use byol_core::data::image_folder::ImageFolder;
    let dir = tempfile::tempdir().unwrap();
    for i in 0..10 {
        let p = dir.path().join(format!("cls/{i}.jpg"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("text file {i}, not a JPEG")).unwrap();
    }
    let ds = Arc::new(ImageFolder::open(dir.path()).unwrap());
    for (batch, workers) in [(4, 2), (2, 1), (16, 3)] {
        let cfg = LoaderConfig {
            drop_last: false,
            ..config(batch, workers)
        };
        let loader = Loader::new(ds.clone(), two_views(), cfg).unwrap();
        let start = std::time::Instant::now();
        // Never an endless run of empty batches: the first epoch ends in an error.
        let results: Vec<_> = loader.epoch(0).unwrap().collect();
        assert!(start.elapsed() < std::time::Duration::from_secs(30));
        assert_eq!(results.len(), 1, "batch {batch}");
        let err = results.into_iter().next().unwrap().unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains(".jpg"), "{err}");
        assert!(loader.skipped() <= 10, "{}", loader.skipped());
    }
}

#[test]
fn mostly_corrupt_data_stops_once_more_than_half_was_corrupt() {
    // 40 samples, 30 corrupt: stops within the first epoch, having read at most 32 + a batch.
    let ds = Arc::new(Toy {
        n: 40,
        corrupt: (10..40).collect(),
        classes: vec!["a".into(), "b".into()],
    });
    let loader = Loader::new(ds, two_views(), config(4, 2)).unwrap();
    let err = loader
        .epoch(0)
        .unwrap()
        .find_map(|b| b.err())
        .expect("an error");
    assert!(err.to_string().contains("more than half"), "{err}");
    // A few corrupt files are only skipped (the policy test above); an epoch of only empty
    // batches is an error of its own.
    let one_bad = Arc::new(Toy {
        n: 40,
        corrupt: vec![3],
        classes: vec!["a".into(), "b".into()],
    });
    let loader = Loader::new(one_bad, two_views(), config(4, 2)).unwrap();
    for epoch in 0..3 {
        assert_eq!(collect(&loader, epoch).len(), 10);
    }
    assert_eq!(loader.skipped(), 3);
}

#[cfg(unix)]
#[test]
fn a_symlink_loop_in_an_image_folder_lists_each_image_once() {
    use byol_core::data::image_folder::ImageFolder;
    use byol_tests::fixtures::write_jpeg;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for class in ["a", "b"] {
        for i in 0..4 {
            write_jpeg(&root.join(format!("{class}/{i}.jpg")), 2, 2, [i * 40; 3]);
        }
    }
    // a/self → a (a loop), b/up → the root (a loop through both classes), b/sub/back → b.
    std::os::unix::fs::symlink(root.join("a"), root.join("a/self")).unwrap();
    std::os::unix::fs::symlink(root, root.join("b/up")).unwrap();
    std::fs::create_dir_all(root.join("b/sub")).unwrap();
    std::os::unix::fs::symlink(root.join("b"), root.join("b/sub/back")).unwrap();
    let ds = ImageFolder::open(root).unwrap();
    assert_eq!(ds.len(), 8, "images listed more than once");
    // b/up leads to the root, whose class a was not listed from inside b: a's images there
    // would be counted as class b. Each file is listed once, under its own class.
    let labels: Vec<usize> = (0..8).map(|i| ds.label(i).unwrap()).collect();
    assert_eq!(labels, [0, 0, 0, 0, 1, 1, 1, 1]);
}
