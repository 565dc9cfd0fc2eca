//! The pretraining loop as a library function: augment → online/target forward → loss →
//! backward → LARS → EMA → schedules, with checkpoints, exact resume, monitors and a JSONL log.
//!
//! Resuming is exact because nothing depends on history except what the training state holds:
//! the data order is a function of (seed, epoch), each view of (seed, epoch, index), and the
//! learning rate and τ of the step number.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use crate::byol::{tau_schedule, Byol};
use crate::checkpoint::{load_training_state, save_training_state, TrainingState};
use crate::config::TrainConfig;
use crate::data::loader::{Loader, LoaderConfig, Transform};
use crate::data::Dataset;
use crate::distributed::DataParallel;
use crate::metrics_log::{read_metrics, MetricsLog, StepLog, METRICS_FILE};
use crate::optim::{Lars, LarsConfig, LrSchedule};
use crate::plot::plot_training_curves;
use crate::time_budget::{
    calibration_done, provisional_length, refit_due, refitted_length, steps_that_fit, RateWindow,
    CALIBRATION_STEPS,
};
use crate::weights::save_encoder;
use crate::{Error, Result};

/// Name of the encoder-only weights written at every checkpoint.
pub const ENCODER_FILE: &str = "encoder.safetensors";
/// The loss (and kNN) curves, redrawn at the end of every run.
pub const PLOT_FILE: &str = "metrics.png";
/// The run's configuration, written once every check has passed and again when a time budget
/// fixed its schedule.
pub const CONFIG_FILE: &str = "config.toml";
/// Held (an exclusive lock) for the life of a run; holds the pid of the process that runs it.
pub const LOCK_FILE: &str = ".lock";
/// Metadata key under which the run's [`TrainConfig`] is stored in a training state.
pub const TRAIN_CONFIG_KEY: &str = "byol.train";
const STATE_PREFIX: &str = "state-";
const STATES_KEPT: usize = 2;

/// What the loop tells its caller (progress bars, logs).
pub trait Observer {
    fn on_start(&mut self, _start_step: u64, _total_steps: u64) {}
    fn on_step(&mut self, _log: &StepLog) {}
    fn on_checkpoint(&mut self, _path: &Path) {}
    fn on_warning(&mut self, _message: &str) {}
}

/// An observer that does nothing.
pub struct Silent;
impl Observer for Silent {}

/// Evaluates the online encoder every few epochs (the kNN monitor); returns top-1 accuracy.
pub type Monitor<'a> = dyn FnMut(&Byol) -> Result<f64> + 'a;

/// The training data: images and the two-view augmentation.
pub struct TrainData {
    pub dataset: Arc<dyn Dataset>,
    pub transform: Arc<dyn Transform>,
    /// Channels of each view (the encoder's input channels).
    pub channels: usize,
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub steps_done: u64,
    pub total_steps: u64,
    pub last_loss: Option<f64>,
    /// True when a stop request (SIGINT) ended the run early.
    pub interrupted: bool,
    pub encoder_path: PathBuf,
    /// The configuration the run ended with (`schedule_steps` fixed by a time budget included).
    pub config: TrainConfig,
}

/// Steps per epoch and in total for a dataset of `n` samples (the last partial batch is
/// dropped: BatchNorm statistics of a tiny batch would be noise).
pub fn step_counts(config: &TrainConfig, n: usize) -> Result<(u64, u64)> {
    let per_epoch = (n / config.batch_size) as u64;
    if per_epoch == 0 {
        return Err(Error::config(
            "batch_size",
            format!(
                "{} is larger than the dataset ({n} images)",
                config.batch_size
            ),
        ));
    }
    Ok((per_epoch, per_epoch * config.epochs as u64))
}

/// The newest training state in `dir` (`state-<step>.safetensors`), if any.
pub fn latest_state(dir: &Path) -> Result<Option<PathBuf>> {
    let mut states = list_states(dir)?;
    Ok(states.pop().map(|(_, p)| p))
}

fn list_states(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut states = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix(STATE_PREFIX)
            .and_then(|s| s.strip_suffix(".safetensors"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            states.push((step, entry.path()));
        }
    }
    states.sort();
    Ok(states)
}

/// Where a run writes and how it is controlled.
pub struct RunControl<'a> {
    pub out_dir: &'a Path,
    pub device: &'a Device,
    /// Continue from the newest checkpoint in `out_dir`.
    pub resume: bool,
    /// A fresh run starts its encoder from these weights (any format of
    /// [`crate::weights::read_encoder_weights`]) instead of random init; ignored when resuming.
    pub init_weights: Option<&'a Path>,
    /// Which encoder of `init_weights` (the online one by default, or the target one of a
    /// checkpoint that has one) initialises both networks.
    pub init_part: crate::weights::Part,
    /// Polled between steps: when set (by a SIGINT handler), the loop saves a checkpoint and
    /// returns with `interrupted`.
    pub stop: &'a AtomicBool,
    /// Wall-clock budget: a fresh run whose config fixes no `schedule_steps` measures its step
    /// rate over the first steps and shortens the schedules to the steps that fit, so the
    /// learning rate and τ reach their final values before the budget ends; any run stops (a
    /// finished run, not an interrupted one) once the budget is spent.
    pub time_budget: Option<Duration>,
    /// A resume may change recipe settings (learning rate, batch size, seed, ...) against the
    /// ones its state was trained with; otherwise that is an error listing them.
    pub allow_config_change: bool,
    /// The ranks of a data-parallel job ([`DataParallel::single`] for one process): each trains
    /// on its slice of every global batch; rank 0 alone writes files and runs the monitor.
    pub parallel: &'a DataParallel,
}

/// The learning-rate schedule of `config` (its length is `total_steps`, which the τ schedule
/// shares): all epochs, or `schedule_steps` when fewer, with the warm-up shrunk in proportion so
/// a shortened run warms up for the same share of its length.
pub fn lr_schedule(config: &TrainConfig, steps_per_epoch: u64, epoch_steps: u64) -> LrSchedule {
    let total = config.schedule_steps.unwrap_or(epoch_steps);
    lr_schedule_over(config, steps_per_epoch, epoch_steps, total)
}

/// [`lr_schedule`] over `total` steps (at most `epoch_steps`), whatever `schedule_steps` says.
fn lr_schedule_over(
    config: &TrainConfig,
    steps_per_epoch: u64,
    epoch_steps: u64,
    total: u64,
) -> LrSchedule {
    let total = total.min(epoch_steps);
    let share = total as f64 / epoch_steps.max(1) as f64;
    let warmup = (config.warmup_epochs * steps_per_epoch as f64 * share).round() as u64;
    LrSchedule::new(config.base_lr, config.batch_size, warmup, total)
}

/// Settings a resumed run must share with the run it continues (the model is checked apart):
/// changing one mid-run changes the recipe, so it takes [`RunControl::allow_config_change`].
/// The others (workers, checkpoint and monitor cadence, `max_steps`) may change freely.
const RECIPE_KEYS: [&str; 13] = [
    "image_size",
    "batch_size",
    "epochs",
    "warmup_epochs",
    "base_lr",
    "weight_decay",
    "momentum",
    "eta",
    "tau_base",
    "predictor_lr_multiplier",
    "seed",
    "crop_min_scale",
    "augmentations",
];

/// Checks a resumed run's config against the one stored in its state (`stored`, TOML; states
/// of older versions may have none). The schedule length always comes from the state: a config
/// asking another one is an error, since the learning rate and τ would jump mid-run.
fn resumed_config(
    config: &mut TrainConfig,
    path: &Path,
    stored: Option<&String>,
    allow_change: bool,
) -> Result<()> {
    let Some(stored) = stored else { return Ok(()) };
    let stored: TrainConfig = toml::from_str(stored)
        .map_err(|e| Error::format(path, format!("{TRAIN_CONFIG_KEY}: {e}")))?;
    let table = |c: &TrainConfig| {
        toml::Table::try_from(c).map_err(|e| Error::encode("a config to compare", e))
    };
    let (asked, kept) = (table(config)?, table(&stored)?);
    let changed: Vec<String> = RECIPE_KEYS
        .iter()
        .filter(|k| asked.get(**k) != kept.get(**k))
        .map(|k| {
            let show = |t: &toml::Table| t.get(*k).map_or("-".into(), |v| v.to_string());
            format!("{k} {} → {}", show(&kept), show(&asked))
        })
        .collect();
    if !changed.is_empty() && !allow_change {
        return Err(Error::config(
            "resume",
            format!(
                "{} was trained with other settings ({}): resume with the same ones, or allow the \
                 change explicitly (--allow-config-change)",
                path.display(),
                changed.join(", ")
            ),
        ));
    }
    match (config.schedule_steps, stored.schedule_steps) {
        (Some(asked), Some(kept)) if asked != kept => Err(Error::config(
            "schedule_steps",
            format!(
                "{} was trained with schedules of {kept} steps, not {asked}: resume without changing \
                 --max-steps, or start a new run",
                path.display()
            ),
        )),
        (Some(asked), None) => Err(Error::config(
            "schedule_steps",
            format!(
                "{} was trained with schedules over all epochs, not {asked} steps: resume without \
                 --max-steps, or start a new run",
                path.display()
            ),
        )),
        (_, kept) => {
            config.schedule_steps = kept;
            Ok(())
        }
    }
}

/// The newest training state of `dir` that reads back; unreadable newer ones (a truncated
/// file, say) are skipped with a warning naming them.
fn newest_readable_state(
    dir: &Path,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<Option<(PathBuf, TrainingState)>> {
    let mut first_error: Option<(PathBuf, Error)> = None;
    for (_, path) in list_states(dir)?.into_iter().rev() {
        match load_training_state(&path, device) {
            Ok(state) => {
                if let Some((bad, e)) = &first_error {
                    observer.on_warning(&format!(
                        "resuming from {}: the newer {} cannot be read ({e})",
                        path.display(),
                        bad.display()
                    ));
                }
                return Ok(Some((path, state)));
            }
            Err(e) => {
                first_error.get_or_insert((path, e));
            }
        }
    }
    match first_error {
        Some((_, e)) => Err(e),
        None => Ok(None),
    }
}

/// Runs (or resumes) BYOL pretraining into `run.out_dir`. A non-finite loss stops the run with
/// [`Error::Diverged`] and leaves the last good checkpoint untouched.
pub fn pretrain(
    config: &TrainConfig,
    data: &TrainData,
    run: &RunControl,
    monitor: Option<&mut Monitor>,
    observer: &mut dyn Observer,
) -> Result<RunSummary> {
    let RunControl {
        out_dir,
        device,
        resume,
        init_weights,
        init_part,
        stop,
        time_budget,
        allow_config_change,
        parallel,
    } = *run;
    let writer = parallel.is_writer();
    let world = parallel.world_size();
    let started = Instant::now();
    config.validate()?;
    // The schedule length can still be fixed by a resumed state or a time budget.
    let mut config = config.clone();
    if data.channels != config.model.encoder.in_channels {
        return Err(Error::config(
            "model.encoder.in_channels",
            format!(
                "the encoder takes {} channels but the data gives {}",
                config.model.encoder.in_channels, data.channels
            ),
        ));
    }
    if config.batch_size < 2 * world {
        return Err(Error::config(
            "batch_size",
            format!(
                "{} is too small for {world} processes: each needs at least 2 images of every \
                 global batch",
                config.batch_size
            ),
        ));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    if writer {
        remove_orphan_temporaries(out_dir, observer)?;
    }
    let (steps_per_epoch, epoch_steps) = step_counts(&config, data.dataset.len())?;

    let (mut model, mut optimizer, mut step) = if resume {
        let Some((path, state)) = newest_readable_state(out_dir, device, observer)? else {
            return Err(Error::config(
                "resume",
                format!("{} holds no checkpoint to resume", out_dir.display()),
            ));
        };
        if state.model.config() != &config.model {
            return Err(Error::config(
                "model",
                format!("{} was trained with another model config", path.display()),
            ));
        }
        resumed_config(
            &mut config,
            &path,
            state.metadata.get(TRAIN_CONFIG_KEY),
            allow_config_change,
        )?;
        (state.model, state.optimizer, state.step)
    } else {
        // A fresh run must not mix its checkpoints with an older run's: pruning keeps the
        // highest steps, and a later resume would pick the old run's state.
        if let Some(path) = latest_state(out_dir)? {
            return Err(Error::config(
                "resume",
                format!(
                    "{} already holds checkpoints ({}): resume them or choose another output \
                     directory",
                    out_dir.display(),
                    path.display()
                ),
            ));
        }
        let mut model = Byol::new(&config.model, device, config.seed)?;
        if let Some(path) = init_weights {
            let file = crate::weights::read_encoder_weights(path, device, init_part)?.file;
            crate::weights::check_values(path, &file.tensors)?;
            model
                .init_encoder(&file.tensors)
                .map_err(|e| Error::format(path, format!("as the initial encoder: {e}")))?;
            tracing::info!("encoder initialised from {} ({init_part})", path.display());
        }
        let optimizer = Lars::new(LarsConfig {
            momentum: config.momentum,
            eta: config.eta,
            weight_decay: config.weight_decay,
        });
        (model, optimizer, 0)
    };
    model.set_data_parallel(parallel.clone());
    // Every check has passed: the run's configuration may now replace an older one.
    if writer {
        write_config(out_dir, &config)?;
    }
    let mut schedule = lr_schedule(&config, steps_per_epoch, epoch_steps);
    let end_of = |schedule: &LrSchedule, config: &TrainConfig| {
        config
            .max_steps
            .map_or(schedule.total_steps, |m| m.min(schedule.total_steps))
    };
    let mut end_step = end_of(&schedule, &config);
    // Only a fresh run is calibrated: a resumed one keeps the schedule its state was saved with.
    let mut calibration = match time_budget {
        Some(budget) if step == 0 && config.schedule_steps.is_none() => Some(budget),
        _ => None,
    };
    // During calibration: when the step after the first began (the first step is slow: caches,
    // the loader), to time the provisional schedules the calibration steps follow.
    let mut after_first_step: Option<Instant> = None;
    // After calibration: the budget whose rate is re-measured.
    let mut refit_budget: Option<Duration> = None;
    // The step rate being measured: the calibration's from its first timed step, then each
    // refit's.
    let mut rate_window: Option<RateWindow> = None;
    let mut log = match writer {
        true => Some(MetricsLog::open(&out_dir.join(METRICS_FILE), step)?),
        false => None,
    };

    let view_len = data.channels * config.image_size * config.image_size;
    let loader = Loader::new(
        Arc::clone(&data.dataset),
        Arc::clone(&data.transform),
        LoaderConfig {
            workers: config.workers,
            seed: config.seed,
            drop_last: true,
            rank: parallel.rank(),
            world_size: world,
            ..LoaderConfig::new(config.batch_size, 2, view_len)
        },
    )?;
    let predictor_mult = config.predictor_lr_multiplier;
    let lr_scale = move |name: &str| {
        if name.starts_with("predictor.") {
            predictor_mult
        } else {
            1.0
        }
    };
    let mut monitor = monitor;
    let mut last_loss = None;
    let mut interrupted = false;
    observer.on_start(step, end_step);
    let save = |model: &Byol,
                optimizer: &Lars,
                step: u64,
                config: &TrainConfig,
                observer: &mut dyn Observer| {
        if writer {
            let path = save_checkpoint(out_dir, model, optimizer, step, config)?;
            observer.on_checkpoint(&path);
        }
        Ok::<_, Error>(())
    };
    // A schedule length found by rank 0's clock, applied by every rank at the next step.
    let mut pending_refit: Option<(u64, f64)> = None;
    // A provisional schedule length (calibration), applied the same way but not recorded.
    let mut pending_provisional: Option<u64> = None;

    let started_first_step = Instant::now();
    'epochs: while step < end_step {
        let epoch = (step / steps_per_epoch) as usize;
        let first = (step % steps_per_epoch) as usize;
        let mut batches = loader.epoch_from(epoch, first)?;
        let mut tick = Instant::now();
        loop {
            // What ends or reshapes the run is decided together: a stop request on any rank,
            // and rank 0's clock (budget spent, a new schedule length).
            let mut control = RunDecision {
                stop: stop.load(Ordering::Relaxed),
                // The budget ends the run like its last step (slower steps after calibration
                // can leave a few of the schedule's last steps, whose learning rate is nearly 0).
                budget_spent: time_budget.is_some_and(|b| started.elapsed() >= b),
                refit: pending_refit.take(),
                provisional: pending_provisional.take(),
            };
            if world > 1 {
                control = control.agreed(parallel)?;
            }
            if let Some((fits, rate)) = control.refit {
                config.schedule_steps = Some(fits);
                if writer {
                    write_config(out_dir, &config)?;
                }
                schedule = lr_schedule(&config, steps_per_epoch, epoch_steps);
                end_step = end_of(&schedule, &config);
                observer.on_start(step, end_step);
                tracing::info!(
                    "{rate:.2} steps/s: the schedules span {} steps to fit the time budget",
                    schedule.total_steps
                );
            }
            if let Some(length) = control.provisional {
                schedule = lr_schedule_over(&config, steps_per_epoch, epoch_steps, length);
            }
            if step >= end_step {
                break 'epochs;
            }
            if control.stop {
                interrupted = true;
                break 'epochs;
            }
            if control.budget_spent {
                break 'epochs;
            }
            let Some(batch) = batches.next() else { break };
            let batch = batch?;
            let shape = (
                batch.len(),
                data.channels,
                config.image_size,
                config.image_size,
            );
            let v1 = Tensor::from_slice(&batch.view(0)[..batch.len() * view_len], shape, device)?;
            let v2 = Tensor::from_slice(&batch.view(1)[..batch.len() * view_len], shape, device)?;
            let lr = schedule.lr(step);
            let tau = tau_schedule(config.tau_base, step, schedule.total_steps);
            let out = model
                .train_step(&v1, &v2, &mut optimizer, lr, tau, &lr_scale)
                .map_err(|e| match e {
                    Error::Diverged(msg) => Error::Diverged(format!(
                        "{msg} at step {step}; the last good checkpoint in {} is kept",
                        out_dir.display()
                    )),
                    other => other,
                })?;
            step += 1;
            last_loss = Some(out.loss);
            let current_length = schedule.total_steps;
            // A new schedule length (recorded in the config and every later checkpoint) takes
            // effect before the next step, on every rank at once.
            let mut refit = |fits: u64, rate: f64| {
                if writer {
                    pending_refit = Some((fits, rate));
                }
            };
            if let Some(budget) = calibration {
                let left = budget.saturating_sub(started.elapsed()).as_secs_f64();
                if step == CALIBRATION_STEPS.start {
                    rate_window = Some(RateWindow::open(step));
                }
                let measured = rate_window.filter(|w| calibration_done(step, w.seconds(), budget));
                if let Some(window) = measured {
                    let rate = window.rate(step);
                    let fits = steps_that_fit(step, rate, left);
                    if rate.is_finite() && rate > 0.0 && fits < epoch_steps {
                        refit(fits, rate);
                        refit_budget = Some(budget);
                        rate_window = Some(RateWindow::open(step));
                    } else if writer {
                        // All epochs fit: back from the provisional schedule to theirs.
                        pending_provisional = Some(epoch_steps);
                    }
                    calibration = None;
                } else if writer {
                    // Until then, the schedule the steps so far predict (the first one untimed
                    // once others are), so the warm-up climbs as the calibrated one will.
                    let (timed, seconds) = match after_first_step {
                        Some(t) => (step - 1, t.elapsed().as_secs_f64()),
                        None => (step, started_first_step.elapsed().as_secs_f64()),
                    };
                    pending_provisional = provisional_length(step, timed, seconds, left);
                    after_first_step.get_or_insert_with(Instant::now);
                }
            } else if let (Some(budget), Some(window)) = (refit_budget, rate_window) {
                if refit_due(window.seconds(), budget) {
                    let rate = window.rate(step);
                    let left = budget.saturating_sub(started.elapsed()).as_secs_f64();
                    let refitted = refitted_length(step, rate, left, current_length, epoch_steps);
                    if let Some(fits) = refitted {
                        refit(fits, rate);
                    }
                    rate_window = Some(RateWindow::open(step));
                }
            }
            let elapsed = tick.elapsed().as_secs_f64();
            tick = Instant::now();
            let mut entry = StepLog {
                step,
                epoch,
                loss: out.loss,
                lr,
                tau,
                // The whole job's images (every rank's slice of the global batch).
                images_per_sec: (batch.len() * world) as f64 / elapsed.max(1e-9),
                projection_std: out.projection_std,
                knn_top1: None,
            };
            if out.projection_std < config.collapse_threshold {
                observer.on_warning(&format!(
                    "step {step}: projections are collapsing (spread {:.3} < {})",
                    out.projection_std, config.collapse_threshold
                ));
            }
            let epoch_done = step % steps_per_epoch == 0;
            if let Some(m) = monitor.as_mut().filter(|_| writer) {
                let epochs_done = (step / steps_per_epoch) as usize;
                if epoch_done
                    && config.knn_every > 0
                    && epochs_done.is_multiple_of(config.knn_every)
                {
                    let monitoring = Instant::now();
                    entry.knn_top1 = Some(m(&model)?);
                    if let Some(w) = rate_window.as_mut() {
                        w.pause(monitoring.elapsed());
                    }
                }
            }
            if let Some(log) = log.as_mut() {
                log.append(&entry)?;
            }
            observer.on_step(&entry);
            if config.checkpoint_every > 0 && step % config.checkpoint_every == 0 && step < end_step
            {
                let saving = Instant::now();
                save(&model, &optimizer, step, &config, observer)?;
                if let Some(w) = rate_window.as_mut() {
                    w.pause(saving.elapsed());
                }
            }
        }
    }
    save(&model, &optimizer, step, &config, observer)?;
    drop(log);
    // The plot is a convenience: failing to draw it must not fail a finished run.
    if writer {
        let plotted = read_metrics(&out_dir.join(METRICS_FILE))
            .and_then(|logs| plot_training_curves(&logs, &out_dir.join(PLOT_FILE)));
        if let Err(e) = plotted {
            observer.on_warning(&e.to_string());
        }
    }
    Ok(RunSummary {
        steps_done: step,
        total_steps: schedule.total_steps,
        config,
        last_loss,
        interrupted,
        encoder_path: out_dir.join(ENCODER_FILE),
    })
}

/// What decides, before each step, whether and how the run goes on.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RunDecision {
    /// A stop request (SIGINT/SIGTERM).
    stop: bool,
    /// The time budget is spent.
    budget_spent: bool,
    /// A new schedule length and the step rate it was fitted to.
    refit: Option<(u64, f64)>,
    /// A schedule length to follow until the rate is calibrated (not recorded in the config).
    provisional: Option<u64>,
}

impl RunDecision {
    /// The decision every rank takes: stop if any rank was asked to, the rest as rank 0 says
    /// (one small all-reduce; only rank 0's clock counts, so the ranks never disagree).
    fn agreed(self, parallel: &DataParallel) -> Result<Self> {
        let rank0 = parallel.is_writer();
        let mine = |v: f64| if rank0 { v } else { 0.0 };
        let (fits, rate) = self.refit.unwrap_or((0, 0.0));
        let mut v = [
            f64::from(u8::from(self.stop)),
            mine(f64::from(u8::from(self.budget_spent))),
            mine(fits as f64),
            mine(rate),
            mine(self.provisional.unwrap_or(0) as f64),
        ];
        parallel.collective.all_reduce_f64(&mut v)?;
        Ok(Self {
            stop: v[0] > 0.0,
            budget_spent: v[1] > 0.0,
            refit: (v[2] > 0.0).then_some((v[2] as u64, v[3])),
            provisional: (v[4] > 0.0).then_some(v[4] as u64),
        })
    }
}

fn write_config(out_dir: &Path, config: &TrainConfig) -> Result<()> {
    crate::io::write_atomic(&out_dir.join(CONFIG_FILE), config.to_toml()?.as_bytes())
}

/// An exclusive lock on a run directory for the life of a run, so two runs never interleave
/// their checkpoints, logs and configs in one directory. Released when dropped (or when the
/// process dies: the lock is the kernel's, the file only names the holder).
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock of `dir` (created if missing) or fails at once naming the holder's pid.
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(Error::config(
                    "out",
                    format!(
                        "{} is in use by another run (pid {}): wait for it or choose another \
                         output directory",
                        dir.display(),
                        holder.trim()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        use std::io::{Seek, Write};
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self { _file: file })
    }
}

/// Removes the temporary files (`.<name>.<pid>.tmp`, see [`crate::io::write_atomic`])
/// that killed writes left in `dir`, unless their process is still alive.
pub(crate) fn remove_orphan_temporaries(dir: &Path, observer: &mut dyn Observer) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.rsplit_once('.'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists();
        if !alive {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            observer.on_warning(&format!(
                "removed {}, left by an interrupted write",
                path.display()
            ));
        }
    }
    Ok(())
}

/// The first tensor of a training state (online, target, LARS momentum, in that order) that
/// holds a NaN or an infinity. A finite loss does not prove a finite state: BatchNorm running
/// variances can overflow steps before the loss does.
pub fn non_finite_tensor(model: &Byol, optimizer: &Lars) -> Result<Option<String>> {
    let online = prefixed_names("online.", model.online_store().tensors_under(""));
    let target = model
        .target_store()
        .map(|s| prefixed_names("target.", s.tensors_under("")))
        .unwrap_or_default();
    let mut momentum: Vec<_> = optimizer.momentum_buffers().iter().collect();
    momentum.sort_by(|a, b| a.0.cmp(b.0));
    let momentum = momentum
        .into_iter()
        .map(|(n, t)| (format!("lars.momentum.{n}"), t.clone()));
    first_non_finite(online.into_iter().chain(target).chain(momentum))
}

/// The name of the first float tensor of `tensors` that holds a NaN or an infinity: checked
/// before every checkpoint (pretraining, fine-tuning) so the newest file stays a good one.
pub fn first_non_finite(
    tensors: impl IntoIterator<Item = (String, Tensor)>,
) -> Result<Option<String>> {
    for (name, tensor) in tensors {
        if !tensor.dtype().is_float() {
            continue;
        }
        // In f64 a sum of f32 values overflows only through an infinity or a NaN among them.
        let sum = tensor
            .to_dtype(candle_core::DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        if !sum.is_finite() {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

fn prefixed_names(prefix: &str, tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    tensors
        .into_iter()
        .map(|(n, t)| (format!("{prefix}{n}"), t))
        .collect()
}

/// Writes `state-<step>.safetensors` and the encoder file, then prunes older states; a state
/// with a non-finite tensor is refused ([`Error::Diverged`]) so the newest file stays a good one.
fn save_checkpoint(
    out_dir: &Path,
    model: &Byol,
    optimizer: &Lars,
    step: u64,
    config: &TrainConfig,
) -> Result<PathBuf> {
    if let Some(name) = non_finite_tensor(model, optimizer)? {
        return Err(Error::Diverged(format!(
            "{name} holds a NaN or an infinity at step {step}; the last good checkpoint in {} is kept",
            out_dir.display()
        )));
    }
    let mut meta = BTreeMap::new();
    meta.insert(TRAIN_CONFIG_KEY.to_string(), config.to_toml()?);
    let path = out_dir.join(format!("{STATE_PREFIX}{step:09}.safetensors"));
    save_training_state(&path, model, optimizer, step, meta)?;
    let mut enc_meta = BTreeMap::new();
    enc_meta.insert("byol.step".to_string(), step.to_string());
    save_encoder(&out_dir.join(ENCODER_FILE), model, enc_meta)?;
    let states = list_states(out_dir)?;
    if states.len() > STATES_KEPT {
        for (_, old) in &states[..states.len() - STATES_KEPT] {
            std::fs::remove_file(old).map_err(|e| Error::io(old, e))?;
        }
    }
    Ok(path)
}
