//! The pretraining loop as a library function: augment → online/target forward → loss →
//! backward → LARS → EMA → schedules, with checkpoints, exact resume, monitors and a JSONL log.
//!
//! Resuming is exact because nothing depends on history except what the training state holds:
//! the data order is a function of (seed, epoch), each view of (seed, epoch, index), and the
//! learning rate and τ of the step number (or, under a time budget, of the seconds trained,
//! which the state stores).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use crate::byol::{tau_at, tau_schedule, Byol};
use crate::checkpoint::{load_training_state, save_training_state, TrainingState};
use crate::config::TrainConfig;
use crate::data::loader::{Loader, LoaderConfig, Transform};
use crate::data::Dataset;
use crate::distributed::DataParallel;
use crate::metrics_log::{read_metrics, MetricsLog, StepLog, METRICS_FILE};
use crate::optim::{Lars, LarsConfig, LrSchedule};
use crate::plot::plot_training_curves;
use crate::time_budget::{BudgetClock, PLANNED_SECONDS_KEY, TRAINED_SECONDS_KEY};
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
    /// The configuration the run ended with (`schedule_seconds` set by a time budget included).
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
    /// Wall-clock budget: a fresh run's learning-rate and τ schedules follow the share of it
    /// spent training ([`crate::time_budget`]), so they reach their final values as the budget
    /// ends; any run stops (a finished run, not an interrupted one) once the budget is spent.
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
    let total = config
        .schedule_steps
        .unwrap_or(epoch_steps)
        .min(epoch_steps);
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
            // A time-indexed run's schedules span the seconds it started with.
            config.schedule_seconds = stored.schedule_seconds;
            Ok(())
        }
    }
}

/// The clock a resumed time-indexed state continues with (its config has `schedule_seconds`):
/// the seconds it trained and the seconds its schedules span, from its metadata.
fn resumed_clock(
    config: &TrainConfig,
    path: &Path,
    state: &TrainingState,
) -> Result<Option<BudgetClock>> {
    if config.schedule_seconds.is_none() {
        return Ok(None);
    }
    let seconds = |key: &str| {
        let value = state
            .metadata
            .get(key)
            .ok_or_else(|| Error::format(path, format!("a time-budgeted state without {key}")))?;
        match value.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(Error::format(
                path,
                format!("{key} `{value}` is not a number of seconds"),
            )),
        }
    };
    Ok(Some(BudgetClock::resumed(
        seconds(TRAINED_SECONDS_KEY)?,
        seconds(PLANNED_SECONDS_KEY)?,
    )))
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

    let (mut model, mut optimizer, mut step, resumed) = if resume {
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
        let clock = resumed_clock(&config, &path, &state)?;
        (state.model, state.optimizer, state.step, clock)
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
        // A budget indexes the schedules by time (whichever of it and the steps is further).
        config.schedule_seconds = time_budget.map(|b| b.as_secs_f64());
        (model, optimizer, 0, None)
    };
    model.set_data_parallel(parallel.clone());
    // Every check has passed: the run's configuration may now replace an older one.
    if writer {
        write_config(out_dir, &config)?;
    }
    let schedule = lr_schedule(&config, steps_per_epoch, epoch_steps);
    let end_step = config
        .max_steps
        .map_or(schedule.total_steps, |m| m.min(schedule.total_steps));
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
                clock: Option<&BudgetClock>,
                observer: &mut dyn Observer| {
        if writer {
            let path = save_checkpoint(out_dir, model, optimizer, step, &config, clock)?;
            observer.on_checkpoint(&path);
        }
        Ok::<_, Error>(())
    };
    // Rank 0's clock decides every rank's progress through a time-indexed run's schedules.
    let mut clock = match (resumed, config.schedule_seconds) {
        (Some(clock), _) => Some(clock),
        (None, Some(seconds)) => Some(BudgetClock::fresh(
            started,
            Instant::now(),
            Duration::from_secs_f64(seconds),
        )),
        (None, None) => None,
    };
    if let Some(seconds) = config.schedule_seconds {
        tracing::info!(
            "the learning rate and τ follow the time budget: they end after {:.0} s of training",
            clock.as_ref().map_or(seconds, BudgetClock::planned_seconds)
        );
    }
    'epochs: while step < end_step {
        let epoch = (step / steps_per_epoch) as usize;
        let first = (step % steps_per_epoch) as usize;
        let mut batches = loader.epoch_from(epoch, first)?;
        let mut tick = Instant::now();
        loop {
            // What ends the run, and where it stands in its schedules, is decided together: a
            // stop request on any rank, rank 0's clock for the rest.
            let mut control = RunDecision {
                stop: stop.load(Ordering::Relaxed),
                budget_spent: time_budget.is_some_and(|b| started.elapsed() >= b),
                progress: clock.as_ref().map_or(0.0, BudgetClock::progress),
            };
            if world > 1 {
                control = control.agreed(parallel)?;
            }
            if step >= end_step {
                break 'epochs;
            }
            if control.stop {
                interrupted = true;
                break 'epochs;
            }
            // A spent budget ends the run like its last step.
            if control.budget_spent || (clock.is_some() && control.progress >= 1.0) {
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
            let (lr, tau) = match clock {
                // Whichever of the budget and the steps is further along.
                Some(_) => {
                    let steps = step as f64 / schedule.total_steps.max(1) as f64;
                    let progress = control.progress.max(steps);
                    (schedule.lr_at(progress), tau_at(config.tau_base, progress))
                }
                None => (
                    schedule.lr(step),
                    tau_schedule(config.tau_base, step, schedule.total_steps),
                ),
            };
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
            // The bar's length: the steps the budget's pace so far leads to.
            if step.is_multiple_of(25) && control.progress > 0.01 {
                let expected = (step as f64 / control.progress) as u64;
                observer.on_start(step, expected.clamp(step, end_step));
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
                    if let Some(c) = clock.as_mut() {
                        c.pause(monitoring.elapsed());
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
                save(&model, &optimizer, step, clock.as_ref(), observer)?;
                if let Some(c) = clock.as_mut() {
                    c.pause(saving.elapsed());
                }
            }
        }
    }
    save(&model, &optimizer, step, clock.as_ref(), observer)?;
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
        // A time-indexed run's length is what the budget gave it.
        total_steps: match clock {
            Some(_) if !interrupted => step,
            _ => end_step,
        },
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
    /// Progress through a time-indexed run's schedules (0 when they follow the steps).
    progress: f64,
}

impl RunDecision {
    /// The decision every rank takes: stop if any rank was asked to, the rest as rank 0 says
    /// (one small all-reduce; only rank 0's clock counts, so the ranks never disagree).
    fn agreed(self, parallel: &DataParallel) -> Result<Self> {
        let rank0 = parallel.is_writer();
        let mine = |v: f64| if rank0 { v } else { 0.0 };
        let mut v = [
            f64::from(u8::from(self.stop)),
            mine(f64::from(u8::from(self.budget_spent))),
            mine(self.progress),
        ];
        parallel.collective.all_reduce_f64(&mut v)?;
        Ok(Self {
            stop: v[0] > 0.0,
            budget_spent: v[1] > 0.0,
            progress: v[2],
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
    clock: Option<&BudgetClock>,
) -> Result<PathBuf> {
    if let Some(name) = non_finite_tensor(model, optimizer)? {
        return Err(Error::Diverged(format!(
            "{name} holds a NaN or an infinity at step {step}; the last good checkpoint in {} is kept",
            out_dir.display()
        )));
    }
    let mut meta = BTreeMap::new();
    meta.insert(TRAIN_CONFIG_KEY.to_string(), config.to_toml()?);
    if let Some(clock) = clock {
        let seconds = |s: f64| format!("{s:.3}");
        meta.insert(TRAINED_SECONDS_KEY.into(), seconds(clock.trained_seconds()));
        meta.insert(PLANNED_SECONDS_KEY.into(), seconds(clock.planned_seconds()));
    }
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
