//! `byol-linear-eval`: evaluation with the paper's protocols (features cache, logistic transfer
//! protocol, SGD ImageNet protocol, kNN on the frozen encoder; semi-supervised fine-tuning of the
//! whole network on a label subset), and `inspect`, what a weights file holds. The logic is
//! `byol_core::eval` and `byol_core::weights::inspect`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use byol_core::data::{DatasetKind, DatasetSource, LabelSpec};
use byol_core::device::parse_device;
use byol_core::distributed::DataParallel;
use byol_core::eval::cache::CacheStatus;
use byol_core::eval::knn::KnnOptions;
use byol_core::eval::linear_eval::EvalSetup;
use byol_core::eval::linear_protocol::LinearProtocolOptions;
use byol_core::eval::logistic::lambda_grid;
use byol_core::eval::report::ClassificationReport;
use byol_core::eval::semi_supervised::{
    FinetuneObserver, FinetuneStep, SemiSupervisedOptions, SemiSupervisedOutcome, SemiSupervisedRun,
};
use byol_core::eval::sgd_probe::{SgdProbeOptions, PAPER_LEARNING_RATES};
use byol_core::nn::{Precision, ResNetConfig, Stem};
use byol_core::optim::SgdConfig;
use byol_core::weights::{inspect_weights, Part, Weights};
use clap::{Args, Parser, Subcommand};

/// Reuses freed activation/gradient buffers instead of page-faulting fresh ones every step
/// (byol-core/src/allocator.rs); `main` switches off its purging first.
#[global_allocator]
static GLOBAL: byol_core::allocator::Allocator = byol_core::allocator::Allocator;

/// Evaluates a frozen encoder (or raw pixels) on a labelled dataset.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Say what a weights file holds (format, framework, parts, architecture, tensor shapes)
    /// without running or loading anything.
    Inspect {
        /// A weights file of any supported format, or hf://owner/repo[@rev][/file].
        #[arg(long)]
        weights: String,
        /// The encoder to describe: online or target.
        #[arg(long, default_value = "online", value_parser = ["online", "target"])]
        part: String,
    },
    /// Compute (or check) the cached features of train and test.
    Features(Common),
    /// L2-regularised logistic regression, λ from a log grid on a held-out split (App. D.2).
    Logistic {
        #[command(flatten)]
        common: Common,
        /// Number of λ values, log-spaced in [--lambda-min, --lambda-max] (paper: 45).
        #[arg(long, default_value_t = 45)]
        lambdas: usize,
        #[arg(long, default_value_t = 1e-6)]
        lambda_min: f64,
        #[arg(long, default_value_t = 1e5)]
        lambda_max: f64,
        /// Fraction of train held out to choose λ.
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        /// Standardise every feature with the training mean and standard deviation before the
        /// fit (folded into the reported model).
        #[arg(long)]
        standardize: bool,
        /// Stop the λ path once this many consecutive values have not improved the held-out
        /// accuracy (default: the whole grid, as the paper).
        #[arg(long)]
        path_patience: Option<usize>,
    },
    /// Linear head by SGD on random-crop + flip views (the ImageNet protocol, App. C.1).
    Sgd {
        #[command(flatten)]
        common: Common,
        /// Learning rates swept on the held-out split (paper: 0.4,0.3,0.2,0.1,0.05).
        #[arg(long, value_delimiter = ',')]
        lrs: Option<Vec<f64>>,
        /// Paper: 80.
        #[arg(long, default_value_t = 80)]
        epochs: usize,
        /// Batch of the head's SGD (paper: 1024).
        #[arg(long, default_value_t = 1024)]
        head_batch_size: usize,
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
    },
    /// Semi-supervised evaluation (Table 2): the whole network and a new linear head fine-tuned
    /// on a label subset (--labels), lr and epochs chosen on a held-out part of it, final run on
    /// all of it, top-1/top-5 on test (App. C.1). Resumable: Ctrl-C checkpoints, --resume goes on.
    Finetune {
        #[command(flatten)]
        common: Common,
        /// Base learning rates swept, × batch/256 (paper: 0.01,0.02,0.05,0.1,0.005).
        #[arg(long, value_delimiter = ',')]
        lrs: Option<Vec<f64>>,
        /// Epoch counts swept (paper: 30,50).
        #[arg(long, value_delimiter = ',')]
        epochs: Option<Vec<usize>>,
        /// Images per fine-tuning step (paper: 1024).
        #[arg(long, default_value_t = 1024)]
        train_batch_size: usize,
        /// Fraction of the labelled subset held out to choose lr and epochs.
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        /// Smallest area of the random training crops (paper: 0.08; small images such as
        /// Fashion-MNIST's 28 px lose their class in crops that small).
        #[arg(long, default_value_t = 0.08)]
        crop_min_scale: f64,
        /// Steps between checkpoints of a run (0: only at its end and on Ctrl-C).
        #[arg(long, default_value_t = 500)]
        checkpoint_every: u64,
        /// Continue the unfinished evaluation in --out.
        #[arg(long)]
        resume: bool,
        /// Checkpoint and stop after this many steps, as Ctrl-C does (continue with --resume).
        #[arg(long)]
        stop_after_steps: Option<u64>,
    },
    /// Weighted kNN on cosine similarity.
    Knn {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 20)]
        k: usize,
        #[arg(long, default_value_t = 0.07)]
        temperature: f32,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// Encoder weights: safetensors (ours or torchvision/timm names), a PyTorch .pth state dict,
    /// a solo-learn / mmselfsup / mmpretrain / lightly / VISSL / Lightning checkpoint, an
    /// official DeepMind BYOL .pkl, or hf://owner/repo[@rev][/file]; `none` for raw pixels.
    #[arg(long)]
    weights: String,
    /// Which encoder of a BYOL checkpoint: online, or target (the momentum encoder).
    #[arg(long, default_value = "online", value_parser = ["online", "target"])]
    part: String,
    /// fashion-mnist, mnist, cifar10, cifar100, image-folder or imagenet.
    #[arg(long, default_value = "fashion-mnist")]
    dataset: DatasetKind,
    /// Dataset directory (default for fashion-mnist: Debian's package directory).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Architecture of a weights file without our metadata, e.g. resnet50 (checked otherwise;
    /// inferred from the tensor shapes when not given, where they tell).
    #[arg(long)]
    arch: Option<String>,
    /// With --arch: width multiplier.
    #[arg(long, default_value_t = 1)]
    width: usize,
    /// With --arch: imagenet, small, small-strided or small-padded.
    #[arg(long, default_value = "imagenet")]
    stem: String,
    /// With --arch: 1 or 3.
    #[arg(long, default_value_t = 3)]
    in_channels: usize,
    /// With --arch: stem channels before the width multiplier.
    #[arg(long, default_value_t = 64)]
    base_channels: usize,
    /// Evaluation crop side (default: 28 MNIST-like, 32 CIFAR, else 224).
    #[arg(long)]
    image_size: Option<usize>,
    /// Use only the first N training images.
    #[arg(long)]
    train_subset: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    test_subset: Option<usize>,
    /// Keep the labels of a subset of train only: 1% or 10% (ImageNet: SimCLR's standard lists;
    /// other datasets: a seeded class-balanced fraction), any other percentage, or a file of image
    /// file names, one a line (e.g. n01440764_10026.JPEG).
    #[arg(long)]
    labels: Option<String>,
    /// Images per encoder batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Arithmetic of the encoder's forward pass: fp32, or bf16 (oneDNN on a CPU with
    /// AVX-512; features ~1e-2 relative off fp32, cached apart).
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory: feature caches (features/) and the report.
    #[arg(long, default_value = "runs/linear-eval")]
    out: PathBuf,
    /// Report path (default: <out>/<mode>.json).
    #[arg(long)]
    report: Option<PathBuf>,
}

impl Common {
    /// The evaluation's setup. Under mpirun/srun every rank first takes its share of the
    /// feature passes; rank 0 then gets the setup (reading the caches), the others `None`.
    fn setup(&self, parallel: &DataParallel) -> Result<Option<EvalSetup>> {
        let setup = self.setup_alone()?;
        let setup = EvalSetup {
            parallel: parallel.clone(),
            ..setup
        };
        setup.share_feature_extraction()?;
        Ok(parallel.is_writer().then_some(setup))
    }

    fn setup_alone(&self) -> Result<EvalSetup> {
        let part: Part = self.part.parse()?;
        let weights = match self.weights.as_str() {
            "none" if part == Part::Target => {
                anyhow::bail!("--part target needs a weights file, not `--weights none`")
            }
            // Raw pixels; for fine-tuning, a random init of --arch (default ResNet-50).
            "none" => Weights::None,
            value => {
                // A local file, or an hf:// reference fetched into the Hub cache.
                let path = byol_hub::resolve_weights(value)
                    .with_context(|| format!("--weights {value}"))?;
                Weights::File(path)
            }
        };
        let arch = self.arch()?;
        let labels = self
            .labels
            .as_deref()
            .map(|l| {
                l.parse::<LabelSpec>()
                    .with_context(|| format!("--labels {l}"))
            })
            .transpose()?;
        Ok(EvalSetup {
            data: DatasetSource::new(self.dataset, self.data.clone()),
            weights,
            arch,
            part,
            image_size: self.image_size,
            train_subset: self.train_subset,
            test_subset: self.test_subset,
            labels,
            seed: self.seed,
            batch_size: self.batch_size,
            workers: self.workers,
            cache_dir: self.out.join("features"),
            device: parse_device(&self.device)?,
            precision: self.precision,
            parallel: DataParallel::single(),
        })
    }

    fn arch(&self) -> Result<Option<ResNetConfig>> {
        let Some(arch) = &self.arch else {
            return Ok(None);
        };
        let depth: usize = arch
            .strip_prefix("resnet")
            .and_then(|d| d.parse().ok())
            .with_context(|| format!("--arch {arch}: expected resnet18, resnet50, ..."))?;
        let config = ResNetConfig {
            width: self.width,
            stem: self.stem.parse::<Stem>()?,
            in_channels: self.in_channels,
            base_channels: self.base_channels,
            ..ResNetConfig::new(depth)
        };
        config.validate()?;
        Ok(Some(config))
    }

    fn report_path(&self, mode: &str) -> PathBuf {
        self.report
            .clone()
            .unwrap_or_else(|| self.out.join(format!("{mode}.json")))
    }
}

fn finish(report: &ClassificationReport, common: &Common) -> Result<()> {
    let path = common.report_path(&report.protocol);
    report.write_json(&path)?;
    print!("{}", report.table());
    println!("report: {}", path.display());
    Ok(())
}

fn main() -> Result<()> {
    byol_core::allocator::keep_freed_memory();
    byol_core::threads::park_idle_threads();
    byol_core::logging::init_logging();
    let cli = Cli::parse();
    // Under mpirun/srun: the feature passes are shared by the job's ranks.
    let group = byol_mpi::Group::join(true)?;
    let result = evaluate(cli.mode, &group.parallel);
    if let Err(e) = &result {
        if group.parallel.world_size() > 1 {
            eprintln!("rank {}: error: {e:#}", group.parallel.rank());
            group.abort_job(1);
        }
    }
    result
}

fn evaluate(mode: Mode, parallel: &DataParallel) -> Result<()> {
    match mode {
        Mode::Inspect { weights, part } => {
            let part: Part = part.parse()?;
            let path = byol_hub::resolve_weights(&weights)
                .with_context(|| format!("--weights {weights}"))?;
            let inspection = inspect_weights(&path, part)?;
            print!("{inspection}");
            if let Err(why) = &inspection.encoder {
                anyhow::bail!("--part {part}: {why}");
            }
        }
        Mode::Features(common) => {
            let Some(setup) = common.setup(parallel)? else {
                return Ok(());
            };
            let f = setup.features()?;
            for ((name, status), path) in ["train", "test"].iter().zip(f.status).zip(&f.paths) {
                let how = match status {
                    CacheStatus::Hit => "up to date",
                    CacheStatus::Missing => "computed",
                    CacheStatus::Stale => "stale, recomputed",
                };
                let rows = if *name == "train" {
                    f.train.labels.len()
                } else {
                    f.test.labels.len()
                };
                println!(
                    "{name}: {rows} × {} features, {how}: {}",
                    f.train.features.view().cols(),
                    path.display()
                );
            }
        }
        Mode::Logistic {
            common,
            lambdas,
            lambda_min,
            lambda_max,
            val_fraction,
            standardize,
            path_patience,
        } => {
            let mut opts = LinearProtocolOptions {
                grid: lambda_grid(lambdas, lambda_min, lambda_max)?,
                val_fraction,
                seed: common.seed,
                ..LinearProtocolOptions::default()
            };
            opts.logistic.standardize = standardize;
            opts.logistic.path_patience = path_patience;
            let Some(setup) = common.setup(parallel)? else {
                return Ok(());
            };
            let report = setup.logistic(&opts)?;
            finish(&report, &common)?;
        }
        Mode::Sgd {
            common,
            lrs,
            epochs,
            head_batch_size,
            val_fraction,
        } => {
            let opts = SgdProbeOptions {
                learning_rates: lrs.unwrap_or_else(|| PAPER_LEARNING_RATES.to_vec()),
                epochs,
                batch_size: head_batch_size,
                val_fraction,
                seed: common.seed,
                workers: common.workers,
                sgd: SgdConfig::default(),
            };
            let mut on_epoch = |epoch: usize, loss: f64| {
                tracing::info!("epoch {}/{epochs}: head loss {loss:.4}", epoch + 1);
            };
            if parallel.world_size() > 1 {
                bail!("the sgd protocol runs in one process (its encoder passes are not shared)");
            }
            let report = common.setup_alone()?.sgd(&opts, &mut on_epoch)?;
            finish(&report, &common)?;
        }
        Mode::Finetune {
            common,
            lrs,
            epochs,
            train_batch_size,
            val_fraction,
            crop_min_scale,
            checkpoint_every,
            resume,
            stop_after_steps,
        } => {
            let defaults = SemiSupervisedOptions::default();
            let opts = SemiSupervisedOptions {
                learning_rates: lrs.unwrap_or(defaults.learning_rates),
                epochs: epochs.unwrap_or(defaults.epochs),
                batch_size: train_batch_size,
                crop_min_scale,
                val_fraction,
                seed: common.seed,
                checkpoint_every,
                ..defaults
            };
            if parallel.world_size() > 1 {
                bail!("fine-tuning runs in one process (under mpirun only the feature passes are shared)");
            }
            let setup = common.setup_alone()?;
            // SIGINT or SIGTERM: checkpoint at the next step and exit cleanly; a second one exits now.
            let stop = byol_core::signals::stop_on_signals()?;
            let report_path = common.report_path("semi-supervised");
            let run = SemiSupervisedRun {
                out_dir: &common.out,
                report_path: &report_path,
                resume,
                stop: &stop,
                stop_after_steps,
            };
            let mut log = StepLog::default();
            let outcome = setup.semi_supervised(&opts, &run, &mut log)?;
            log.print_rate();
            match outcome {
                SemiSupervisedOutcome::Finished(report) => {
                    print!("{}", report.table());
                    println!("report: {}", report_path.display());
                }
                SemiSupervisedOutcome::Interrupted {
                    run,
                    step,
                    total_steps,
                    ..
                } => println!(
                    "interrupted at step {step}/{total_steps} of {run}: checkpoint saved in {}; \
                     continue with --resume",
                    common.out.display()
                ),
            }
        }
        Mode::Knn {
            common,
            k,
            temperature,
        } => {
            let opts = KnnOptions {
                k,
                temperature,
                ..KnnOptions::default()
            };
            let Some(setup) = common.setup(parallel)? else {
                return Ok(());
            };
            let report = setup.knn(&opts)?;
            finish(&report, &common)?;
        }
    }
    Ok(())
}

/// Logs fine-tuning progress (about ten lines a run) and keeps the step rates.
#[derive(Default)]
struct StepLog {
    rates: Vec<f64>,
}

impl StepLog {
    /// The median images/s of the steps taken, the first of each run left out (start-up).
    fn print_rate(&self) {
        if self.rates.is_empty() {
            return;
        }
        let mut r = self.rates.clone();
        r.sort_by(f64::total_cmp);
        println!(
            "fine-tuning step: median {:.1} images/s over {} steps",
            r[r.len() / 2],
            r.len()
        );
    }
}

impl FinetuneObserver for StepLog {
    fn on_step(&mut self, s: &FinetuneStep) {
        if s.step > 1 {
            self.rates.push(s.images_per_sec);
        }
        let every = (s.total_steps / 10).max(1);
        if s.step.is_multiple_of(every) || s.step == s.total_steps {
            tracing::info!(
                "run {}/{} ({}): step {}/{}, epoch {}, loss {:.4}, lr {:.5}, {:.1} images/s",
                s.run_index + 1,
                s.runs,
                s.run,
                s.step,
                s.total_steps,
                s.epoch + 1,
                s.loss,
                s.lr,
                s.images_per_sec
            );
        }
    }

    fn on_run_done(&mut self, run: &str, held_out_top1: Option<f64>) {
        if let Some(v) = held_out_top1 {
            println!("{run}: held-out top-1 {:.2}%", 100.0 * v);
        }
    }
}
