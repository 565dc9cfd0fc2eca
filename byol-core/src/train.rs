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
use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::byol::{tau_schedule, Byol};
use crate::checkpoint::{load_training_state, save_training_state};
use crate::config::TrainConfig;
use crate::data::loader::{Loader, LoaderConfig, Transform};
use crate::data::Dataset;
use crate::metrics_log::{read_metrics, MetricsLog, StepLog, METRICS_FILE};
use crate::optim::{Lars, LarsConfig, LrSchedule};
use crate::plot::plot_training_curves;
use crate::weights::save_encoder;
use crate::{Error, Result};

/// Name of the encoder-only weights written at every checkpoint.
pub const ENCODER_FILE: &str = "encoder.safetensors";
/// The loss (and kNN) curves, redrawn at the end of every run.
pub const PLOT_FILE: &str = "metrics.png";
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
    /// [`crate::weights::read_weights`]) instead of random init; ignored when resuming.
    pub init_weights: Option<&'a Path>,
    /// Polled between steps: when set (by a SIGINT handler), the loop saves a checkpoint and
    /// returns with `interrupted`.
    pub stop: &'a AtomicBool,
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
        stop,
    } = *run;
    config.validate()?;
    if data.channels != config.model.encoder.in_channels {
        return Err(Error::config(
            "model.encoder.in_channels",
            format!(
                "the encoder takes {} channels but the data gives {}",
                config.model.encoder.in_channels, data.channels
            ),
        ));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let (steps_per_epoch, total_steps) = step_counts(config, data.dataset.len())?;
    let warmup = (config.warmup_epochs * steps_per_epoch as f64).round() as u64;
    let schedule = LrSchedule::new(config.base_lr, config.batch_size, warmup, total_steps);
    let end_step = config.max_steps.map_or(total_steps, |m| m.min(total_steps));

    let (mut model, mut optimizer, mut step) = match latest_state(out_dir)? {
        // A fresh run must not mix its checkpoints with an older run's: pruning keeps the
        // highest steps, and a later resume would pick the old run's state.
        Some(path) if !resume => {
            return Err(Error::config(
                "resume",
                format!(
                "{} already holds checkpoints ({}): resume them or choose another output directory",
                out_dir.display(),
                path.display()
            ),
            ))
        }
        Some(path) => {
            let state = load_training_state(&path, device)?;
            if state.model.config() != &config.model {
                return Err(Error::config(
                    "model",
                    format!("{} was trained with another model config", path.display()),
                ));
            }
            (state.model, state.optimizer, state.step)
        }
        None => {
            let mut model = Byol::new(&config.model, device, config.seed)?;
            if let Some(path) = init_weights {
                let file = crate::weights::read_weights(path, device)?;
                model
                    .init_encoder(&file.tensors)
                    .map_err(|e| Error::format(path, format!("as the initial encoder: {e}")))?;
                tracing::info!("encoder initialised from {}", path.display());
            }
            let optimizer = Lars::new(LarsConfig {
                momentum: config.momentum,
                eta: config.eta,
                weight_decay: config.weight_decay,
            });
            (model, optimizer, 0)
        }
    };
    let mut log = MetricsLog::open(&out_dir.join(METRICS_FILE), step)?;

    let view_len = data.channels * config.image_size * config.image_size;
    let loader = Loader::new(
        Arc::clone(&data.dataset),
        Arc::clone(&data.transform),
        LoaderConfig {
            workers: config.workers,
            seed: config.seed,
            drop_last: true,
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
    let save = |model: &Byol, optimizer: &Lars, step: u64, observer: &mut dyn Observer| {
        let path = save_checkpoint(out_dir, model, optimizer, step, config)?;
        observer.on_checkpoint(&path);
        Ok::<_, Error>(path)
    };

    'epochs: while step < end_step {
        let epoch = (step / steps_per_epoch) as usize;
        let first = (step % steps_per_epoch) as usize;
        let mut batches = loader.epoch_from(epoch, first)?;
        let mut tick = Instant::now();
        loop {
            if step >= end_step {
                break 'epochs;
            }
            if stop.load(Ordering::Relaxed) {
                interrupted = true;
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
            let tau = tau_schedule(config.tau_base, step, total_steps);
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
            let elapsed = tick.elapsed().as_secs_f64();
            tick = Instant::now();
            let mut entry = StepLog {
                step,
                epoch,
                loss: out.loss,
                lr,
                tau,
                images_per_sec: batch.len() as f64 / elapsed.max(1e-9),
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
            if let Some(m) = monitor.as_mut() {
                let epochs_done = (step / steps_per_epoch) as usize;
                if epoch_done
                    && config.knn_every > 0
                    && epochs_done.is_multiple_of(config.knn_every)
                {
                    entry.knn_top1 = Some(m(&model)?);
                }
            }
            log.append(&entry)?;
            observer.on_step(&entry);
            if config.checkpoint_every > 0 && step % config.checkpoint_every == 0 && step < end_step
            {
                save(&model, &optimizer, step, observer)?;
            }
        }
    }
    save(&model, &optimizer, step, observer)?;
    drop(log);
    // The plot is a convenience: failing to draw it must not fail a finished run.
    let plotted = read_metrics(&out_dir.join(METRICS_FILE))
        .and_then(|logs| plot_training_curves(&logs, &out_dir.join(PLOT_FILE)));
    if let Err(e) = plotted {
        observer.on_warning(&e.to_string());
    }
    Ok(RunSummary {
        steps_done: step,
        total_steps,
        last_loss,
        interrupted,
        encoder_path: out_dir.join(ENCODER_FILE),
    })
}

/// Writes `state-<step>.safetensors` and the encoder file, then prunes older states.
fn save_checkpoint(
    out_dir: &Path,
    model: &Byol,
    optimizer: &Lars,
    step: u64,
    config: &TrainConfig,
) -> Result<PathBuf> {
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
