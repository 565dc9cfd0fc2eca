//! Semi-supervised evaluation (BYOL, Table 2): the whole pretrained network and a new linear head
//! fine-tuned on a fraction of the training labels (ImageNet: SimCLR's fixed 1 % / 10 % lists),
//! hyper-parameters chosen on a held-out part of that labelled subset, then a final run on the
//! whole subset and top-1 / top-5 on the test split (ImageNet's validation set) with the centre
//! crop.
//!
//! The recipe is the paper's ([`PAPER_SEMI_SUPERVISED`], arXiv 2006.07733v3, appendix C.1,
//! "Semi-supervised learning on ImageNet"): SGD with Nesterov momentum 0.9, batch 1024, no weight
//! decay nor other regularisation, random crop + flip, learning rate swept over {0.01, 0.02, 0.05,
//! 0.1, 0.005} and epochs over {30, 50}. What the paper leaves open follows the official code's
//! fine-tuning path (`eval_experiment.py` with `freeze_backbone=False`): BatchNorm in training
//! mode, cosine decay of `lr × batch / 256` to 0 over the run, no warm-up.
//!
//! Every run of the grid and the final run checkpoint into the output directory (atomically,
//! through [`crate::io`]) every `checkpoint_every` steps, at the end of the run and when stopped
//! (the `stop` flag, set by SIGINT/SIGTERM in the binary, or `stop_after_steps`); finished grid
//! points are recorded in `semi-supervised-progress.json`. A resumed call skips the finished points
//! and continues the interrupted run from its checkpoint: data order and views depend only on
//! (seed, epoch, index), the learning rate only on the step, so the result equals that of an
//! uninterrupted call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::augment::EvalTransform;
use crate::data::loader::{Loader, LoaderConfig, Transform};
use crate::data::pipeline::OneViewAugmenter;
use crate::data::{Dataset, Subset};
use crate::eval::linear_eval::{EvalSetup, Outcome, Prepared};
use crate::eval::metrics;
use crate::eval::report::{
    hyperparameters, ClassificationMetrics, ClassificationReport, SemiSupervisedChoice,
    SemiSupervisedPoint, SplitSizes, WeightsInfo,
};
use crate::eval::split::train_val_split;
use crate::io::{to_json, write_atomic, write_safetensors, SafetensorsFile, STEP_KEY};
use crate::nn::ResNetConfig;
use crate::optim::{LrSchedule, SgdConfig};
use crate::train::{first_non_finite, remove_orphan_temporaries, Observer, RunLock};
use crate::transfer::finetune::{first_best, Classifier, FineTuner};
use crate::transfer::CommonOptions;
use crate::weights::{describe_architecture, Weights};
use crate::{Error, Result};

/// The fine-tuning recipe of the semi-supervised protocol.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SemiSupervisedRecipe {
    /// Base learning rates swept (the run's peak is `lr × batch_size / lr_reference_batch`).
    pub learning_rates: &'static [f64],
    /// Training lengths swept, in epochs of the labelled subset (1 % and 10 % alike).
    pub epochs: &'static [usize],
    pub batch_size: usize,
    pub momentum: f64,
    pub nesterov: bool,
    /// "We do not use any regularization methods such as weight decay".
    pub weight_decay: f64,
    /// Linear warm-up steps before the cosine decay (the official code's `warmup_steps=0`).
    pub warmup_steps: u64,
    /// The batch size a base learning rate refers to (official `learning_schedule`: / 256).
    pub lr_reference_batch: usize,
    /// Side of the random crop (training) and of the centre crop (evaluation).
    pub crop: usize,
    /// Area range of the random crop, as fractions of the image (App. B's random crop).
    pub crop_area: [f64; 2],
    /// Shorter side the evaluation images are resized to before the centre crop.
    pub eval_resize: usize,
}

/// BYOL, arXiv 2006.07733v3, appendix C.1, "Semi-supervised learning on ImageNet" (what it does
/// not say, from the official code's `configs/eval.py` and `utils/schedules.py`): the values
/// quoted in `tests/tests/semi_supervised.rs`, which checks them against the paper's text.
pub const PAPER_SEMI_SUPERVISED: SemiSupervisedRecipe = SemiSupervisedRecipe {
    learning_rates: &[0.01, 0.02, 0.05, 0.1, 0.005],
    epochs: &[30, 50],
    batch_size: 1024,
    momentum: 0.9,
    nesterov: true,
    weight_decay: 0.0,
    warmup_steps: 0,
    lr_reference_batch: 256,
    crop: 224,
    crop_area: [0.08, 1.0],
    eval_resize: 256,
};

/// One row of the paper's Table 2 (ResNet-50, percentages).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperSemiSupervised {
    pub labels_percent: f64,
    pub top1: f64,
    pub top5: f64,
}

/// BYOL Table 2(a), ResNet-50: 1 % and 10 % of the ImageNet labels.
pub const PAPER_RESNET50: [PaperSemiSupervised; 2] = [
    PaperSemiSupervised {
        labels_percent: 1.0,
        top1: 53.2,
        top5: 78.4,
    },
    PaperSemiSupervised {
        labels_percent: 10.0,
        top1: 68.8,
        top5: 89.0,
    },
];

/// Settings of one semi-supervised evaluation; [`Default`] is the paper's recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct SemiSupervisedOptions {
    /// Base learning rates (× batch/256).
    pub learning_rates: Vec<f64>,
    pub epochs: Vec<usize>,
    /// Images per fine-tuning step.
    pub batch_size: usize,
    pub sgd: SgdConfig,
    /// Smallest area of the random crop, as a fraction of the image (paper: 0.08; small images
    /// lose their class in such crops).
    pub crop_min_scale: f64,
    /// Fraction of the labelled subset held out to choose the learning rate and epochs.
    pub val_fraction: f64,
    /// Seeds the held-out carve-out, the data order, the views and a random head.
    pub seed: u64,
    /// Steps between checkpoints of a run (0: only at its end and when stopped).
    pub checkpoint_every: u64,
}

impl Default for SemiSupervisedOptions {
    fn default() -> Self {
        let r = PAPER_SEMI_SUPERVISED;
        Self {
            learning_rates: r.learning_rates.to_vec(),
            epochs: r.epochs.to_vec(),
            batch_size: r.batch_size,
            sgd: SgdConfig {
                momentum: r.momentum,
                nesterov: r.nesterov,
                weight_decay: r.weight_decay,
            },
            crop_min_scale: r.crop_area[0],
            val_fraction: 0.1,
            seed: 0,
            checkpoint_every: 500,
        }
    }
}

impl SemiSupervisedOptions {
    pub fn validate(&self) -> Result<()> {
        if self.learning_rates.is_empty() || self.epochs.is_empty() {
            return Err(Error::config(
                "finetune",
                "needs at least one learning rate and one epoch count",
            ));
        }
        if let Some(lr) = self
            .learning_rates
            .iter()
            .find(|lr| !(lr.is_finite() && **lr > 0.0))
        {
            return Err(Error::config(
                "lrs",
                format!("{lr} is not a positive number"),
            ));
        }
        if self.epochs.contains(&0) {
            return Err(Error::config(
                "epochs",
                "every epoch count must be at least 1",
            ));
        }
        if self.batch_size == 0 {
            return Err(Error::config("train-batch-size", "must be at least 1"));
        }
        if !(self.crop_min_scale > 0.0 && self.crop_min_scale <= 1.0) {
            return Err(Error::config(
                "crop-min-scale",
                format!("{} is not in (0, 1]", self.crop_min_scale),
            ));
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return Err(Error::config(
                "val-fraction",
                format!("must be in (0, 1), got {}", self.val_fraction),
            ));
        }
        crate::optim::Sgd::new(self.sgd).map(|_| ())
    }
}

/// Where a semi-supervised evaluation writes and how it is controlled.
pub struct SemiSupervisedRun<'a> {
    /// Checkpoints and the progress file (locked for the life of the call).
    pub out_dir: &'a Path,
    /// Where the report is written once the protocol has finished.
    pub report_path: &'a Path,
    /// Continue the unfinished evaluation in `out_dir`.
    pub resume: bool,
    /// Polled between steps: when set, the current run checkpoints and the call returns
    /// [`SemiSupervisedOutcome::Interrupted`].
    pub stop: &'a AtomicBool,
    /// Stop the same way once this call has taken this many optimiser steps (tests, short
    /// measurements).
    pub stop_after_steps: Option<u64>,
}

/// Progress of one fine-tuning step.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneStep<'a> {
    /// `selection lr 0.01, 30 epochs` or `final lr …`.
    pub run: &'a str,
    /// 0-based index of the run, of `runs` (the grid, then the final run).
    pub run_index: usize,
    pub runs: usize,
    /// Steps done in this run, of `total_steps`.
    pub step: u64,
    pub total_steps: u64,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub images_per_sec: f64,
}

/// What the protocol tells its caller.
pub trait FinetuneObserver {
    fn on_step(&mut self, _step: &FinetuneStep) {}
    /// A run ended; `held_out_top1` for the grid's runs.
    fn on_run_done(&mut self, _run: &str, _held_out_top1: Option<f64>) {}
    fn on_checkpoint(&mut self, _path: &Path) {}
}

/// An observer that does nothing.
pub struct SilentFinetune;
impl FinetuneObserver for SilentFinetune {}

/// How a call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SemiSupervisedOutcome {
    /// The protocol finished; the report was written to `report_path`.
    Finished(Box<ClassificationReport>),
    /// Stopped; continue with `resume`.
    Interrupted {
        run: String,
        step: u64,
        total_steps: u64,
        /// The checkpoint written (none when the stop came before the run's first step).
        checkpoint: Option<PathBuf>,
    },
}

/// The finished grid points and the settings they were trained with.
pub const PROGRESS_FILE: &str = "semi-supervised-progress.json";
/// The checkpoint of the run in progress.
pub const STATE_FILE: &str = "semi-supervised-state.safetensors";
const RUN_KEY: &str = "byol.semi_supervised.run";
const SETTINGS_KEY: &str = "byol.semi_supervised.settings";

const DESCRIPTION: &str = "encoder + linear head fine-tuned on a label subset: SGD Nesterov, \
     cosine lr (× batch/256, no warm-up), no weight decay, random crop + flip, BatchNorm in \
     training mode; lr and epochs chosen on a held-out part of the subset, final run on the whole \
     subset, centre-crop top-1/top-5 on test (BYOL App. C.1, Table 2)";
const LR_SCHEDULE: &str = "cosine decay of lr × batch/256 to 0 over the run, no warm-up";
const SELECTION: &str = "held-out top-1 on a seeded carve-out of the labelled subset (never the \
     test split); final run on the whole subset";

/// What a resumed call must share with the call it continues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Settings {
    weights_sha256: Option<String>,
    architecture: String,
    dataset: String,
    data_dir: String,
    labels: String,
    labels_digest: String,
    image_size: usize,
    learning_rates: Vec<f64>,
    epochs: Vec<usize>,
    batch_size: usize,
    sgd: SgdConfig,
    crop_min_scale: f64,
    val_fraction: f64,
    seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Progress {
    settings: Settings,
    /// Finished grid points, in the order searched.
    grid: Vec<SemiSupervisedPoint>,
    /// Wall time of the calls before this one.
    seconds: f64,
}

/// One fine-tuning run: a grid point (trained on the subset minus the held-out part, scored on
/// the held-out part) or the final run (the whole subset, scored on test).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct RunPlan {
    final_run: bool,
    lr: f64,
    epochs: usize,
}

impl RunPlan {
    fn label(&self) -> String {
        let kind = if self.final_run { "final" } else { "selection" };
        format!("{kind} lr {}, {} epochs", self.lr, self.epochs)
    }
}

/// A checkpoint read back.
struct SavedRun {
    plan: RunPlan,
    step: u64,
    tensors: std::collections::HashMap<String, Tensor>,
}

/// Everything the runs share.
struct Context<'a> {
    opts: &'a SemiSupervisedOptions,
    run: &'a SemiSupervisedRun<'a>,
    common: CommonOptions,
    classes: usize,
    train_transform: Arc<dyn Transform>,
    eval_transform: Arc<dyn Transform>,
    view_shape: (usize, usize, usize),
    settings: Settings,
    state_path: PathBuf,
    /// Optimiser steps taken by this call.
    steps_taken: u64,
    run_index: usize,
    runs: usize,
}

enum RunEnd {
    Done(Box<FineTuner<Classifier>>),
    Interrupted(SemiSupervisedOutcome),
}

impl EvalSetup {
    /// Semi-supervised fine-tuning (the `finetune` mode of `byol-linear-eval`); `self.labels`
    /// names the label subset. Everything is validated before the first write; the report is
    /// written to `run.report_path` when the protocol finishes.
    pub fn semi_supervised(
        &self,
        opts: &SemiSupervisedOptions,
        run: &SemiSupervisedRun,
        observer: &mut dyn FinetuneObserver,
    ) -> Result<SemiSupervisedOutcome> {
        let started = Instant::now();
        opts.validate()?;
        if self.labels.is_none() {
            return Err(Error::config(
                "labels",
                "semi-supervised fine-tuning needs a label subset: --labels 1%, 10%, 100% or a \
                 file of image names",
            ));
        }
        let mut p = self.prepare()?;
        let labels = p
            .labels
            .clone()
            .ok_or_else(|| Error::config("labels", "no label subset"))?;
        if p.classes < 2 {
            return Err(Error::Input(format!(
                "fine-tuning a classifier needs at least 2 classes, the dataset has {}",
                p.classes
            )));
        }
        let (common, arch) = self.finetune_options(&p, opts.seed)?;
        if p.encoder.is_none() {
            p.weights = WeightsInfo {
                extractor: "random init (supervised from scratch)".into(),
                path: None,
                sha256: None,
                architecture: Some(describe_architecture(&arch)),
                part: None,
            };
        }
        let n = p.train.len();
        let (sel_idx, held_idx) = train_val_split(n, opts.val_fraction, opts.seed)?;
        let selection_train: Arc<dyn Dataset> =
            Arc::new(Subset::new(Arc::clone(&p.train), sel_idx)?);
        let held_out: Arc<dyn Dataset> = Arc::new(Subset::new(Arc::clone(&p.train), held_idx)?);
        if selection_train.len() < opts.batch_size {
            return Err(Error::config(
                "train-batch-size",
                format!(
                    "{} is more than the {} images the grid trains on ({} labelled, {} held out): \
                     lower it",
                    opts.batch_size,
                    selection_train.len(),
                    n,
                    held_out.len()
                ),
            ));
        }
        let settings = Settings {
            weights_sha256: p.weights.sha256.clone(),
            architecture: describe_architecture(&arch),
            dataset: self.data.kind.to_string(),
            data_dir: self.data.dir()?.display().to_string(),
            labels: labels.name.clone(),
            labels_digest: labels.digest.clone(),
            image_size: common.image_size,
            learning_rates: opts.learning_rates.clone(),
            epochs: opts.epochs.clone(),
            batch_size: opts.batch_size,
            sgd: opts.sgd,
            crop_min_scale: opts.crop_min_scale,
            val_fraction: opts.val_fraction,
            seed: opts.seed,
        };
        let progress_path = run.out_dir.join(PROGRESS_FILE);
        let state_path = run.out_dir.join(STATE_FILE);
        check_resume(run, &progress_path, &state_path, &settings)?;
        let train_transform: Arc<dyn Transform> = Arc::new(OneViewAugmenter::crop_and_flip_scaled(
            &p.augment,
            [opts.crop_min_scale, PAPER_SEMI_SUPERVISED.crop_area[1]],
        )?);
        let eval_transform: Arc<dyn Transform> = Arc::new(EvalTransform::new(p.augment.clone())?);

        // Every check has passed: the first write.
        let _lock = RunLock::acquire(run.out_dir)?;
        // Read again under the lock: another call may have written since the check above.
        let existing = check_resume(run, &progress_path, &state_path, &settings)?;
        remove_orphan_temporaries(run.out_dir, &mut WarnLog)?;
        let mut saved = match existing {
            Some(_) if state_path.exists() => Some(read_state(&state_path, &settings, &common)?),
            _ => None,
        };
        let mut progress = existing.unwrap_or(Progress {
            settings: settings.clone(),
            grid: Vec::new(),
            seconds: 0.0,
        });
        write_progress(&progress_path, &progress)?;

        let grid: Vec<RunPlan> = opts
            .learning_rates
            .iter()
            .flat_map(|&lr| {
                opts.epochs.iter().map(move |&epochs| RunPlan {
                    final_run: false,
                    lr,
                    epochs,
                })
            })
            .collect();
        let mut ctx = Context {
            opts,
            run,
            common,
            classes: p.classes,
            train_transform,
            eval_transform,
            view_shape: p.view_shape,
            settings,
            state_path,
            steps_taken: 0,
            run_index: 0,
            runs: grid.len() + 1,
        };
        let interrupted = |progress: &mut Progress, outcome: SemiSupervisedOutcome| {
            progress.seconds += started.elapsed().as_secs_f64();
            write_progress(&progress_path, progress)?;
            Ok::<_, Error>(outcome)
        };

        for (k, plan) in grid.iter().enumerate() {
            ctx.run_index = k;
            if let Some(done) = progress.grid.get(k) {
                if (done.lr, done.epochs) != (plan.lr, plan.epochs) {
                    return Err(Error::format(
                        &progress_path,
                        format!("grid point {k} is {done:?}, expected {}", plan.label()),
                    ));
                }
                continue;
            }
            let resume_from = take_matching(&mut saved, plan);
            let tuner = match train_run(&mut ctx, *plan, &selection_train, resume_from, observer)? {
                RunEnd::Done(tuner) => tuner,
                RunEnd::Interrupted(outcome) => return interrupted(&mut progress, outcome),
            };
            let (scores, labels_out) = tuner.model.scores(
                Arc::clone(&held_out),
                Arc::clone(&ctx.eval_transform),
                &ctx.common,
                "the held-out part of the labelled subset",
            )?;
            let val_top1 = metrics::top1_accuracy(&scores, &labels_out, ctx.classes)?;
            tracing::info!("{}: held-out top-1 {:.2}%", plan.label(), 100.0 * val_top1);
            observer.on_run_done(&plan.label(), Some(val_top1));
            progress.grid.push(SemiSupervisedPoint {
                lr: plan.lr,
                epochs: plan.epochs,
                val_top1,
            });
            write_progress(&progress_path, &progress)?;
            remove_if_exists(&ctx.state_path)?;
        }

        let best = *first_best(&progress.grid, |p| p.val_top1)
            .ok_or_else(|| Error::config("finetune", "empty grid"))?;
        let plan = RunPlan {
            final_run: true,
            lr: best.lr,
            epochs: best.epochs,
        };
        ctx.run_index = grid.len();
        let resume_from = take_matching(&mut saved, &plan);
        let tuner = match train_run(&mut ctx, plan, &p.train, resume_from, observer)? {
            RunEnd::Done(tuner) => tuner,
            RunEnd::Interrupted(outcome) => return interrupted(&mut progress, outcome),
        };
        let (scores, test_labels) = tuner.model.scores(
            Arc::clone(&p.test),
            Arc::clone(&ctx.eval_transform),
            &ctx.common,
            "test",
        )?;
        observer.on_run_done(&plan.label(), None);
        let metrics = ClassificationMetrics::from_scores(&scores, &test_labels, ctx.classes)?;
        let hyper = hyperparameters(&SemiSupervisedChoice {
            lr: best.lr,
            peak_lr: LrSchedule::new(best.lr, opts.batch_size, 0, 1).peak_lr,
            epochs: best.epochs,
            lr_grid: &opts.learning_rates,
            epochs_grid: &opts.epochs,
            grid: &progress.grid,
            batch_size: opts.batch_size,
            momentum: opts.sgd.momentum,
            nesterov: opts.sgd.nesterov,
            weight_decay: opts.sgd.weight_decay,
            crop_min_scale: opts.crop_min_scale,
            lr_schedule: LR_SCHEDULE,
            val_fraction: opts.val_fraction,
            selection: SELECTION,
            seed: opts.seed,
        })?;
        let feature_dim = tuner.model.encoder.config().feature_dim()?;
        let mut report = self.report(
            &p,
            Outcome {
                protocol: "semi-supervised",
                description: DESCRIPTION,
                splits: SplitSizes {
                    train: n,
                    val: held_out.len(),
                    test: test_labels.len(),
                },
                feature_dim,
                hyperparameters: hyper,
                metrics,
            },
            started,
        )?;
        report.seconds += progress.seconds;
        report.write_json(run.report_path)?;
        remove_if_exists(&ctx.state_path)?;
        remove_if_exists(&progress_path)?;
        Ok(SemiSupervisedOutcome::Finished(Box::new(report)))
    }

    /// The fine-tuning options of the transfer code (the encoder to start from and how to batch
    /// its evaluation) and the architecture fine-tuned: the weights file's, or `arch` (default
    /// ResNet-50 with the dataset's channels) initialised at random for `--weights none`.
    fn finetune_options(&self, p: &Prepared, seed: u64) -> Result<(CommonOptions, ResNetConfig)> {
        let channels = p.view_shape.0;
        let arch = match &p.encoder {
            Some(e) => e.encoder.config().clone(),
            None => {
                let arch = self.arch.clone().unwrap_or_else(|| ResNetConfig {
                    in_channels: channels,
                    ..ResNetConfig::new(50)
                });
                if arch.in_channels != channels {
                    return Err(Error::config(
                        "arch",
                        format!(
                            "{} input channel(s), the dataset gives {channels}",
                            arch.in_channels
                        ),
                    ));
                }
                arch.validate()?;
                arch
            }
        };
        let common = CommonOptions {
            weights: self.weights.clone(),
            part: self.part,
            arch: match &self.weights {
                Weights::File(_) => self.arch.clone(),
                Weights::None => Some(arch.clone()),
            },
            image_size: self.image_size(),
            batch_size: self.batch_size,
            workers: self.workers,
            seed,
            device: self.device.clone(),
            precision: self.precision,
        };
        common.validate()?;
        Ok((common, arch))
    }
}

/// Fine-tunes a fresh copy of the encoder and head on `train` for the run `plan` (from `saved`
/// when it continues that run); checkpoints as [`SemiSupervisedRun`] says.
fn train_run(
    ctx: &mut Context,
    plan: RunPlan,
    train: &Arc<dyn Dataset>,
    saved: Option<SavedRun>,
    observer: &mut dyn FinetuneObserver,
) -> Result<RunEnd> {
    let opts = ctx.opts;
    let label = plan.label();
    let sgd = opts.sgd;
    let mut tuner = Box::new(FineTuner::classifier(&ctx.common, sgd, ctx.classes)?);
    let mut step = 0u64;
    if let Some(saved) = saved {
        tuner
            .load_state(&saved.tensors)
            .map_err(|e| Error::format(&ctx.state_path, format!("does not fit the run: {e}")))?;
        step = saved.step;
        tracing::info!("{label}: resuming at step {step}");
    }
    let (c, h, w) = ctx.view_shape;
    let view_len = c * h * w;
    let loader = Loader::new(
        Arc::clone(train),
        Arc::clone(&ctx.train_transform),
        LoaderConfig {
            shuffle: true,
            drop_last: true,
            seed: opts.seed,
            workers: ctx.common.workers.max(1),
            ..LoaderConfig::new(opts.batch_size, 1, view_len)
        },
    )?;
    let per_epoch = loader.num_batches() as u64;
    let total = per_epoch * plan.epochs as u64;
    let schedule = LrSchedule::new(
        plan.lr,
        opts.batch_size,
        PAPER_SEMI_SUPERVISED.warmup_steps,
        total,
    );
    if step > total {
        return Err(Error::format(
            &ctx.state_path,
            format!("step {step} is past the run's {total} steps"),
        ));
    }
    tracing::info!(
        "{label}: {} images, {per_epoch} steps of {} per epoch, {total} steps",
        train.len(),
        opts.batch_size
    );
    while step < total {
        let epoch = (step / per_epoch) as usize;
        let first = (step % per_epoch) as usize;
        let before = step;
        let mut batches = loader.epoch_from(epoch, first)?;
        let mut tick = Instant::now();
        loop {
            let stop = ctx.run.stop.load(Ordering::Relaxed)
                || ctx
                    .run
                    .stop_after_steps
                    .is_some_and(|n| ctx.steps_taken >= n);
            if stop {
                let checkpoint = if step > 0 {
                    Some(save_state(ctx, &tuner, plan, step, observer)?)
                } else {
                    None
                };
                return Ok(RunEnd::Interrupted(SemiSupervisedOutcome::Interrupted {
                    run: label,
                    step,
                    total_steps: total,
                    checkpoint,
                }));
            }
            let Some(batch) = batches.next() else { break };
            let batch = batch?;
            let m = batch.len();
            if m == 0 {
                continue;
            }
            let x = Tensor::from_slice(
                &batch.view(0)[..m * view_len],
                (m, c, h, w),
                &ctx.common.device,
            )?;
            let lr = schedule.lr(step);
            let context = || format!("step {step} of {label}");
            let loss = tuner.cross_entropy_step(&x, batch.labels(), lr, &context)?;
            step += 1;
            ctx.steps_taken += 1;
            let elapsed = tick.elapsed().as_secs_f64();
            tick = Instant::now();
            observer.on_step(&FinetuneStep {
                run: &label,
                run_index: ctx.run_index,
                runs: ctx.runs,
                step,
                total_steps: total,
                epoch,
                loss,
                lr,
                images_per_sec: m as f64 / elapsed.max(1e-9),
            });
            if opts.checkpoint_every > 0
                && step.is_multiple_of(opts.checkpoint_every)
                && step < total
            {
                save_state(ctx, &tuner, plan, step, observer)?;
            }
            if step >= total {
                break;
            }
        }
        if step == before {
            return Err(Error::Dataset(format!(
                "{label}: epoch {epoch} gave no batch (every image corrupt?)"
            )));
        }
    }
    // The end of every run is a checkpoint: a call stopped while it evaluates resumes there.
    save_state(ctx, &tuner, plan, step, observer)?;
    Ok(RunEnd::Done(tuner))
}

/// Writes the run's checkpoint (atomically), refusing a state with a NaN or an infinity.
fn save_state(
    ctx: &Context,
    tuner: &FineTuner<Classifier>,
    plan: RunPlan,
    step: u64,
    observer: &mut dyn FinetuneObserver,
) -> Result<PathBuf> {
    let tensors = tuner.state_tensors();
    if let Some(name) = first_non_finite(tensors.iter().cloned())? {
        return Err(Error::Diverged(format!(
            "{name} holds a NaN or an infinity at step {step} of {}; the last good checkpoint in \
             {} is kept",
            plan.label(),
            ctx.run.out_dir.display()
        )));
    }
    let mut meta = BTreeMap::new();
    meta.insert(RUN_KEY.to_string(), to_json(&plan)?);
    meta.insert(STEP_KEY.to_string(), step.to_string());
    meta.insert(SETTINGS_KEY.to_string(), to_json(&ctx.settings)?);
    write_safetensors(&ctx.state_path, tensors, meta)?;
    observer.on_checkpoint(&ctx.state_path);
    Ok(ctx.state_path.clone())
}

/// Reads the checkpoint of an interrupted run; it must belong to this evaluation.
fn read_state(path: &Path, settings: &Settings, common: &CommonOptions) -> Result<SavedRun> {
    let file = SafetensorsFile::read(path, &common.device)?;
    let stored: Settings = file.metadata_json(path, SETTINGS_KEY)?;
    if &stored != settings {
        return Err(Error::format(
            path,
            "was written by another semi-supervised evaluation (its settings differ from the \
             progress file's): remove it to restart the interrupted run",
        ));
    }
    Ok(SavedRun {
        plan: file.metadata_json(path, RUN_KEY)?,
        step: file.metadata_json(path, STEP_KEY)?,
        tensors: file.tensors,
    })
}

/// `saved` when it checkpoints `plan`; a checkpoint of another run (left by a call stopped
/// between recording a finished run and removing its checkpoint) is dropped.
fn take_matching(saved: &mut Option<SavedRun>, plan: &RunPlan) -> Option<SavedRun> {
    match saved.take() {
        Some(s) if s.plan == *plan => Some(s),
        Some(s) => {
            tracing::info!(
                "ignoring the checkpoint of {}, a run already recorded",
                s.plan.label()
            );
            None
        }
        None => None,
    }
}

/// The progress to continue (with `run.resume`), after checking it belongs to `settings`; a
/// fresh call into a directory holding an unfinished evaluation is refused.
fn check_resume(
    run: &SemiSupervisedRun,
    progress_path: &Path,
    state_path: &Path,
    settings: &Settings,
) -> Result<Option<Progress>> {
    let existing = read_progress(progress_path)?;
    let unfinished = existing.is_some() || state_path.exists();
    match (run.resume, existing) {
        (false, _) if unfinished => Err(Error::config(
            "resume",
            format!(
                "{} holds an unfinished semi-supervised evaluation ({PROGRESS_FILE}, \
                 {STATE_FILE}): continue it with --resume, or choose another --out",
                run.out_dir.display()
            ),
        )),
        (false, _) => Ok(None),
        (true, None) => Err(Error::config(
            "resume",
            format!(
                "{} holds no semi-supervised evaluation to resume ({PROGRESS_FILE} is missing)",
                run.out_dir.display()
            ),
        )),
        (true, Some(progress)) => {
            let changed = changed_settings(&progress.settings, settings)?;
            if !changed.is_empty() {
                return Err(Error::config(
                    "resume",
                    format!(
                        "{} was started with other settings ({}): resume with the same ones, or \
                         choose another --out",
                        progress_path.display(),
                        changed.join(", ")
                    ),
                ));
            }
            Ok(Some(progress))
        }
    }
}

/// `key stored → asked` for every setting that differs.
fn changed_settings(stored: &Settings, asked: &Settings) -> Result<Vec<String>> {
    let map = |s: &Settings| match serde_json::to_value(s) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::encode("the settings", "not a map")),
        Err(e) => Err(Error::encode("the settings", e)),
    };
    let (old, new) = (map(stored)?, map(asked)?);
    Ok(old
        .iter()
        .filter(|(k, v)| new.get(*k) != Some(v))
        .map(|(k, v)| {
            let now = new.get(k).map_or("-".to_string(), |v| v.to_string());
            format!("{k} {v} → {now}")
        })
        .collect())
}

fn read_progress(path: &Path) -> Result<Option<Progress>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::format(path, format!("not a semi-supervised progress file: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn write_progress(path: &Path, progress: &Progress) -> Result<()> {
    let text = serde_json::to_string_pretty(progress)
        .map_err(|e| Error::encode("the semi-supervised progress", e))?;
    write_atomic(path, text.as_bytes())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// The pretraining loop's warnings (orphaned temporaries) as log lines.
struct WarnLog;
impl Observer for WarnLog {
    fn on_warning(&mut self, message: &str) {
        tracing::warn!("{message}");
    }
}
