//! The pretraining loop end to end on generated images: it trains, logs, checkpoints, and a run
//! killed after a checkpoint and resumed gives exactly the losses of an uninterrupted run.
//!
//! Device-parametrised: every run trains on `BYOL_TEST_DEVICE` (`byol_tests::test_device`, CPU by
//! default); on a GPU the resumed run must still repeat the uninterrupted one's losses bit for bit
//! (candle's CUDA reductions, cuBLAS and cuDNN's forward algorithms are deterministic for a
//! given shape).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use byol_core::config::TrainConfig;
use byol_core::data::augment::{AugmentConfig, TwoViewAugmenter};
use byol_core::data::{Dataset, Image, Sample};
use byol_core::distributed::DataParallel;
use byol_core::metrics_log::{read_metrics, METRICS_FILE};
use byol_core::train::{latest_state, pretrain, RunControl, Silent, TrainData};
use byol_core::{Error, Result};
use byol_tests::{test_device, tiny_byol_config};
use candle_core::Device;

/// 24×24 RGB images of stripes whose phase and colour depend on the index.
struct Stripes {
    n: usize,
    classes: Vec<String>,
}

impl Dataset for Stripes {
    fn len(&self) -> usize {
        self.n
    }
    fn class_names(&self) -> &[String] {
        &self.classes
    }
    fn get(&self, index: usize) -> Result<Sample> {
        let (w, h) = (24, 24);
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let v = (((x + index) / (2 + index % 3)) % 2) as u8 * 200;
                data.extend_from_slice(&[v, (y * 10) as u8, (index * 37 % 255) as u8]);
            }
        }
        Ok(Sample {
            image: Image::new(w, h, 3, data)?,
            label: index % 2,
        })
    }
}

pub(crate) fn config() -> TrainConfig {
    TrainConfig {
        model: tiny_byol_config(),
        image_size: 16,
        batch_size: 4,
        epochs: 2,
        warmup_epochs: 0.5,
        base_lr: 0.5,
        checkpoint_every: 3,
        workers: 2,
        knn_every: 0,
        ..TrainConfig::fashion_mnist()
    }
}

/// `n` generated stripe images of two classes.
pub(crate) fn stripes(n: usize) -> Arc<dyn Dataset> {
    Arc::new(Stripes {
        n,
        classes: vec!["a".into(), "b".into()],
    })
}

pub(crate) fn data() -> TrainData {
    let augment = AugmentConfig::small_image(16);
    TrainData {
        dataset: stripes(18),
        transform: Arc::new(TwoViewAugmenter::new(augment).unwrap()),
        channels: 3,
    }
}

pub(crate) fn run<'a>(
    out_dir: &'a std::path::Path,
    resume: bool,
    stop: &'a AtomicBool,
) -> RunControl<'a> {
    RunControl {
        out_dir,
        device: test_device(),
        resume,
        init_weights: None,
        init_part: Default::default(),
        stop,
        time_budget: None,
        allow_config_change: false,
        parallel: DataParallel::single_process(),
    }
}

/// One `pretrain` on the generated data, without monitor or observer.
fn train(
    config: &TrainConfig,
    out_dir: &std::path::Path,
    resume: bool,
    stop: &AtomicBool,
) -> Result<byol_core::train::RunSummary> {
    pretrain(
        config,
        &data(),
        &run(out_dir, resume, stop),
        None,
        &mut Silent,
    )
}

/// A fresh [`train`] within a time budget.
fn train_within(
    config: &TrainConfig,
    out_dir: &std::path::Path,
    budget: std::time::Duration,
    stop: &AtomicBool,
) -> Result<byol_core::train::RunSummary> {
    let control = RunControl {
        time_budget: Some(budget),
        ..run(out_dir, false, stop)
    };
    pretrain(config, &data(), &control, None, &mut Silent)
}

pub(crate) fn losses(dir: &std::path::Path) -> Vec<(u64, f64)> {
    read_metrics(&dir.join(METRICS_FILE))
        .unwrap()
        .iter()
        .map(|l| (l.step, l.loss))
        .collect()
}

#[test]
fn a_killed_run_resumes_with_identical_losses() {
    let no_stop = AtomicBool::new(false);
    let full = tempfile::tempdir().unwrap();
    let summary = train(&config(), full.path(), false, &no_stop).unwrap();
    // 18 images, batch 4, last partial batch dropped: 4 steps per epoch, 8 in all.
    assert_eq!((summary.steps_done, summary.total_steps), (8, 8));
    let reference = losses(full.path());
    assert_eq!(
        reference.iter().map(|l| l.0).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert!(reference.iter().all(|l| l.1.is_finite() && l.1 > 0.0));
    assert!(full.path().join("encoder.safetensors").exists());

    // The "killed" run: it got to step 5 (mid-epoch 2) and saved at 3; the kill lost step 5's
    // state, so only state 3 is on disk while the log already holds steps 4 and 5.
    let killed = tempfile::tempdir().unwrap();
    let mut stopped = config();
    stopped.max_steps = Some(5);
    train(&stopped, killed.path(), false, &no_stop).unwrap();
    let newest = latest_state(killed.path()).unwrap().unwrap();
    assert!(
        newest.ends_with("state-000000005.safetensors"),
        "{newest:?}"
    );
    std::fs::remove_file(&newest).unwrap();

    let resumed = train(&config(), killed.path(), true, &no_stop).unwrap();
    assert_eq!(resumed.steps_done, 8);
    assert_eq!(
        losses(killed.path()),
        reference,
        "bit-identical losses after resume"
    );
}

#[test]
fn a_stop_request_saves_and_a_bad_config_is_refused() {
    let stop = AtomicBool::new(true);
    let dir = tempfile::tempdir().unwrap();
    let summary = train(&config(), dir.path(), false, &stop).unwrap();
    assert!(summary.interrupted);
    assert_eq!(summary.steps_done, 0);
    assert!(
        latest_state(dir.path()).unwrap().is_some(),
        "a checkpoint was written"
    );

    // A fresh run into a directory that holds checkpoints is refused rather than mixed in.
    let no_stop = AtomicBool::new(false);
    let err = train(&config(), dir.path(), false, &no_stop).unwrap_err();
    assert!(
        matches!(err, Error::Config { ref field, .. } if field == "resume"),
        "{err}"
    );

    let mut bad = config();
    bad.batch_size = 64;
    let err = train(&bad, dir.path(), false, &stop).unwrap_err();
    assert!(
        matches!(err, Error::Config { ref field, .. } if field == "batch_size"),
        "{err}"
    );

    let mut grey = config();
    grey.model.encoder.in_channels = 1;
    let err = train(&grey, dir.path(), false, &stop).unwrap_err();
    assert!(err.to_string().contains("in_channels"), "{err}");
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let no_stop = AtomicBool::new(false);
    let dir = tempfile::tempdir().unwrap();
    let mut first = config();
    first.max_steps = Some(3);
    train(&first, dir.path(), false, &no_stop).unwrap();
    let good = latest_state(dir.path()).unwrap().unwrap();
    let good_bytes = std::fs::read(&good).unwrap();

    // Resumed with an absurd learning rate, the weights overflow within a step or two.
    let mut exploding = config();
    exploding.base_lr = 1e30;
    let allowed = RunControl {
        allow_config_change: true,
        parallel: DataParallel::single_process(),
        ..run(dir.path(), true, &no_stop)
    };
    let err = pretrain(&exploding, &data(), &allowed, None, &mut Silent).unwrap_err();
    assert!(matches!(err, Error::Diverged(_)), "{err}");
    let message = err.to_string();
    assert!(message.contains("step"), "{message}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert_eq!(latest_state(dir.path()).unwrap().unwrap(), good);
    assert_eq!(
        std::fs::read(&good).unwrap(),
        good_bytes,
        "the good checkpoint is untouched"
    );
    byol_core::checkpoint::load_training_state(&good, test_device()).unwrap();
}

#[test]
fn a_fresh_run_can_start_its_encoder_from_a_weights_file() {
    let dir = tempfile::tempdir().unwrap();
    let weights = byol_tests::write_tiny_encoder(dir.path(), 42);
    let file = byol_core::weights::read_weights(&weights, &Device::Cpu).unwrap();

    // Both networks start from the file; the heads keep their own random init.
    let mut model = byol_tests::tiny_byol(0);
    let fresh = byol_tests::tiny_byol(0);
    model.init_encoder(&file.tensors).unwrap();
    let target = model.target_store().unwrap();
    for name in [
        "conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.running_var",
    ] {
        let expected = &file.tensors[name];
        for store in [model.online_store(), target] {
            let got = store
                .get(&format!("encoder.{name}"))
                .unwrap()
                .var
                .as_tensor();
            assert_eq!(byol_tests::relative_error(got, expected), 0.0, "{name}");
        }
    }
    let head = "projector.0.weight";
    let (a, b) = (
        model.online_store().get(head).unwrap().var.as_tensor(),
        fresh.online_store().get(head).unwrap().var.as_tensor(),
    );
    assert_eq!(byol_tests::relative_error(a, b), 0.0);

    // Through the loop: a file of another architecture is refused before any step, naming it.
    let out = dir.path().join("run");
    let stop = AtomicBool::new(false);
    let wrong = byol_tests::fixture("import/resnet18-tiny.pth");
    let control = RunControl {
        init_weights: Some(&wrong),
        init_part: Default::default(),
        ..run(&out, false, &stop)
    };
    let Err(err) = pretrain(&config(), &data(), &control, None, &mut Silent) else {
        panic!("a mismatched encoder must be refused");
    };
    let err = err.to_string();
    assert!(
        err.contains("resnet18-tiny.pth") && err.contains("initial encoder"),
        "{err}"
    );
    assert_eq!(latest_state(&out).unwrap(), None);

    // And a matching file trains.
    let control = RunControl {
        init_weights: Some(&weights),
        init_part: Default::default(),
        ..run(&out, false, &stop)
    };
    let mut short = config();
    short.max_steps = Some(2);
    pretrain(&short, &data(), &control, None, &mut Silent).unwrap();
    assert_eq!(losses(&out).len(), 2);
}

#[test]
fn a_fresh_run_can_start_from_the_target_encoder_of_a_checkpoint() {
    use byol_core::optim::{Lars, LarsConfig};
    use byol_core::weights::Part;
    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let state = dir.path().join("state.safetensors");
    byol_core::checkpoint::save_training_state(
        &state,
        &byol_tests::tiny_byol(3),
        &Lars::new(LarsConfig::default()),
        1,
        Default::default(),
    )
    .unwrap();
    let encoder = byol_tests::write_tiny_encoder(dir.path(), 0);
    let mut short = config();
    short.max_steps = Some(1);
    let out = dir.path().join("run");
    let control = RunControl {
        init_weights: Some(&state),
        init_part: Part::Target,
        ..run(&out, false, &stop)
    };
    pretrain(&short, &data(), &control, None, &mut Silent).expect("starts from the target");
    assert_eq!(losses(&out).len(), 1);
    // A file without a target encoder is refused before any step, naming it.
    let out = dir.path().join("refused");
    let control = RunControl {
        init_weights: Some(&encoder),
        init_part: Part::Target,
        ..run(&out, false, &stop)
    };
    let Err(err) = pretrain(&short, &data(), &control, None, &mut Silent) else {
        panic!("no target encoder in an encoder file");
    };
    let err = err.to_string();
    assert!(
        err.contains("tiny-encoder-0.safetensors") && err.contains("no target"),
        "{err}"
    );
    assert_eq!(latest_state(&out).unwrap(), None);
}

#[test]
fn a_shortened_schedule_ends_the_run_and_shrinks_the_warm_up() {
    let mut c = config();
    c.epochs = 10;
    c.warmup_epochs = 2.0;
    // 18 images, batch 4: 4 steps an epoch, 40 in all, warm-up 8.
    let full = byol_core::train::lr_schedule(&c, 4, 40);
    assert_eq!((full.warmup_steps, full.total_steps), (8, 40));
    c.schedule_steps = Some(10);
    let short = byol_core::train::lr_schedule(&c, 4, 40);
    assert_eq!((short.warmup_steps, short.total_steps), (2, 10));
    assert_eq!(short.lr(10), 0.0);
    // Never longer than all epochs.
    c.schedule_steps = Some(400);
    assert_eq!(byol_core::train::lr_schedule(&c, 4, 40).total_steps, 40);

    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    c.schedule_steps = Some(6);
    let summary = train(&c, dir.path(), false, &stop).unwrap();
    assert_eq!((summary.steps_done, summary.total_steps), (6, 6));
    let logs = read_metrics(&dir.path().join(METRICS_FILE)).unwrap();
    assert_eq!(logs.len(), 6);
    // τ reaches 1 and the lr 0 at the end of the shortened schedule, not of all epochs.
    let last = logs.last().unwrap();
    assert!(last.lr < 0.1 * logs.iter().map(|l| l.lr).fold(0.0, f64::max));
    assert!(last.tau > 0.99 + 0.009 * 0.9, "τ {}", last.tau);

    // A resume asking another schedule length is refused, naming the setting.
    c.schedule_steps = Some(8);
    let Err(err) = train(&c, dir.path(), true, &stop) else {
        panic!("a resume with another schedule must be refused");
    };
    assert!(err.to_string().contains("schedule"), "{err}");
    // Without one, the stored schedule is kept: nothing is left to train.
    c.schedule_steps = None;
    let resumed = train(&c, dir.path(), true, &stop).unwrap();
    assert_eq!(resumed.steps_done, 6);
    assert_eq!(resumed.config.schedule_steps, Some(6));
}

#[test]
fn a_time_budget_ends_the_run_without_interrupting_it() {
    let mut c = config();
    c.epochs = 20; // 80 steps
    c.checkpoint_every = 0;
    let stop = AtomicBool::new(false);
    // A budget spent before the first step: a finished (not interrupted) run, saved.
    let dir = tempfile::tempdir().unwrap();
    let summary = train_within(&c, dir.path(), std::time::Duration::from_nanos(1), &stop).unwrap();
    assert!(!summary.interrupted);
    assert!(summary.steps_done < 80);
    assert!(latest_state(dir.path()).unwrap().is_some());
    // Resuming it trains nothing more: its schedules' seconds are spent.
    let resumed = train(&c, dir.path(), true, &stop).unwrap();
    assert_eq!(resumed.steps_done, summary.steps_done);
    // A generous budget: the epochs end first, and their steps lead the schedules to 0.
    let dir = tempfile::tempdir().unwrap();
    let summary =
        train_within(&c, dir.path(), std::time::Duration::from_secs(3600), &stop).unwrap();
    assert_eq!(summary.config.schedule_seconds, Some(3600.0));
    assert_eq!(summary.steps_done, 80);
    let logs = read_metrics(&dir.path().join(METRICS_FILE)).unwrap();
    let peak = logs.iter().map(|l| l.lr).fold(0.0, f64::max);
    assert!(logs.last().unwrap().lr < 0.01 * peak, "{:?}", logs.last());
}

#[test]
fn a_time_budget_drives_the_schedules_to_their_end_as_it_runs_out() {
    // Epochs far beyond the budget, warming up for a quarter of the run: the learning rate
    // climbs for about a quarter of the 4 s, then decays to about 0 as the budget ends, and τ
    // rises to about 1 — whatever the steps' pace.
    let mut c = config();
    c.epochs = 100_000;
    c.warmup_epochs = 25_000.0;
    c.checkpoint_every = 0;
    let stop = AtomicBool::new(false);
    let dir = tempfile::tempdir().unwrap();
    let summary = train_within(&c, dir.path(), std::time::Duration::from_secs(4), &stop).unwrap();
    assert!(!summary.interrupted);
    assert!(
        summary.steps_done > 20,
        "only {} steps in 4 s",
        summary.steps_done
    );
    assert_eq!(summary.total_steps, summary.steps_done);
    let logs = read_metrics(&dir.path().join(METRICS_FILE)).unwrap();
    let lrs: Vec<f64> = logs.iter().map(|l| l.lr).collect();
    let peak_at = (0..lrs.len())
        .max_by(|&a, &b| lrs[a].total_cmp(&lrs[b]))
        .unwrap();
    let peak_lr = 0.5 * 4.0 / 256.0;
    assert!(lrs[peak_at] > 0.8 * peak_lr, "peak {}", lrs[peak_at]);
    let share = peak_at as f64 / lrs.len() as f64;
    assert!(
        (0.1..0.45).contains(&share),
        "peak at step {peak_at} of {}",
        lrs.len()
    );
    // Up to the peak it rises, after it falls: the schedules never jump back.
    assert!(lrs[..=peak_at].windows(2).all(|w| w[0] <= w[1]), "{lrs:?}");
    assert!(lrs[peak_at..].windows(2).all(|w| w[0] >= w[1]), "{lrs:?}");
    let last = logs.last().unwrap();
    assert!(last.lr < 0.1 * peak_lr, "last lr {}", last.lr);
    assert!(last.tau > 0.99 + 0.009 * 0.9, "last τ {}", last.tau);
}

#[test]
fn a_time_budgeted_run_resumes_on_the_seconds_it_trained() {
    let mut c = config();
    c.epochs = 20; // 80 steps
    c.checkpoint_every = 0;
    c.max_steps = Some(5);
    let stop = AtomicBool::new(false);
    let dir = tempfile::tempdir().unwrap();
    let first = train_within(&c, dir.path(), std::time::Duration::from_secs(3600), &stop).unwrap();
    assert_eq!(first.steps_done, 5);
    let state = byol_core::checkpoint::load_training_state(
        &latest_state(dir.path()).unwrap().unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let seconds = |key: &str| state.metadata[key].parse::<f64>().unwrap();
    let trained = seconds(byol_core::time_budget::TRAINED_SECONDS_KEY);
    let planned = seconds(byol_core::time_budget::PLANNED_SECONDS_KEY);
    assert!(trained > 0.0 && trained < 600.0, "trained {trained}");
    assert!(planned > 3000.0 && planned <= 3600.0, "planned {planned}");
    // Resumed without a budget, the run keeps its schedules' seconds and the steps lead.
    c.max_steps = None;
    let resumed = train(&c, dir.path(), true, &stop).unwrap();
    assert_eq!(resumed.config.schedule_seconds, Some(3600.0));
    assert_eq!(resumed.steps_done, 80);
    // Metadata that is not a number of seconds is named.
    let path = latest_state(dir.path()).unwrap().unwrap();
    let file = byol_core::io::SafetensorsFile::read(&path, &Device::Cpu).unwrap();
    let mut metadata: std::collections::BTreeMap<_, _> = file.metadata.into_iter().collect();
    metadata.insert(
        byol_core::time_budget::TRAINED_SECONDS_KEY.into(),
        "soon".into(),
    );
    byol_core::io::write_safetensors(&path, file.tensors.into_iter().collect(), metadata).unwrap();
    let Err(err) = train(&c, dir.path(), true, &stop) else {
        panic!("a state with unreadable seconds must be refused");
    };
    let err = err.to_string();
    assert!(
        err.contains("byol.trained_seconds") && err.contains("soon"),
        "{err}"
    );
}

#[test]
fn config_files_with_empty_heads_or_unknown_keys_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = TrainConfig::fashion_mnist().to_toml().unwrap();
    let cases = [
        (
            good.replace("hidden_dim = 512", "hidden_dim = 0"),
            "model.projector.hidden_dim",
        ),
        (
            good.replace("output_dim = 128", "output_dim = 0"),
            "model.projector.output_dim",
        ),
        (
            good.replace("in_channels = 1", "in_channels = 1\nbase_chanels = 8"),
            "base_chanels",
        ),
        (
            good.replace(
                "use_target = true",
                "use_target = true\nuse_targets = false",
            ),
            "use_targets",
        ),
        (good.replace("knn_k = 20", "knn_k = 0"), "knn_k"),
        (
            good.replace("knn_temperature = 0.07", "knn_temperature = 0.0"),
            "knn_temperature",
        ),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        assert_ne!(text, &good, "case {i} changed nothing");
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let err = TrainConfig::from_toml_file(&path).unwrap_err().to_string();
        assert!(err.contains(field), "case {i}: {err}");
    }
}

#[test]
fn a_state_with_a_non_finite_tensor_is_named_and_never_saved() {
    use byol_core::byol::Byol;
    use byol_core::optim::{Lars, LarsConfig};
    use byol_core::train::non_finite_tensor;
    let model = Byol::new(&tiny_byol_config(), test_device(), 0).unwrap();
    let lars = Lars::new(LarsConfig::default());
    assert_eq!(non_finite_tensor(&model, &lars).unwrap(), None);
    // BatchNorm statistics overflow first (the loss still finite): the target's.
    let target = model.target_store().unwrap();
    let entry = target.get("encoder.bn1.running_var").unwrap();
    let shape = entry.var.as_tensor().dims().to_vec();
    let poisoned = candle_core::Tensor::full(f32::INFINITY, shape, test_device()).unwrap();
    entry.var.set(&poisoned).unwrap();
    assert_eq!(
        non_finite_tensor(&model, &lars).unwrap().as_deref(),
        Some("target.encoder.bn1.running_var")
    );
}

/// Records the loop's warnings.
#[derive(Default)]
struct Warnings(Vec<String>);
impl byol_core::train::Observer for Warnings {
    fn on_warning(&mut self, message: &str) {
        self.0.push(message.to_string());
    }
}

#[test]
fn resume_refuses_an_empty_directory_and_changed_settings_and_skips_a_truncated_state() {
    let stop = AtomicBool::new(false);
    let dir = tempfile::tempdir().unwrap();
    let err = train(&config(), dir.path(), true, &stop)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no checkpoint") && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
    assert!(!dir.path().join("config.toml").exists());

    let mut six = config();
    six.max_steps = Some(6); // states at steps 3 and 6
    train(&six, dir.path(), false, &stop).unwrap();

    // Another seed and batch size: refused, both listed; accepted when allowed.
    let mut other = six.clone();
    other.seed = 7;
    other.batch_size = 2;
    let err = train(&other, dir.path(), true, &stop)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("seed 0 → 7") && err.contains("batch_size 4 → 2"),
        "{err}"
    );

    // The newest state truncated: the older one is resumed, with a warning naming both.
    let newest = latest_state(dir.path()).unwrap().unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let mut warnings = Warnings::default();
    let mut seven = config();
    seven.max_steps = Some(7);
    let summary = pretrain(
        &seven,
        &data(),
        &run(dir.path(), true, &stop),
        None,
        &mut warnings,
    )
    .unwrap();
    assert_eq!(summary.steps_done, 7);
    let warned = warnings.0.join("\n");
    assert!(
        warned.contains("state-000000003") && warned.contains("state-000000006"),
        "{warned}"
    );
    // The log reads as one run resumed at step 3.
    assert_eq!(losses(dir.path()).len(), 7);

    let allowed = RunControl {
        allow_config_change: true,
        parallel: DataParallel::single_process(),
        ..run(dir.path(), true, &stop)
    };
    let mut eight = other.clone();
    eight.max_steps = Some(8);
    pretrain(&eight, &data(), &allowed, None, &mut Silent).unwrap();
}
