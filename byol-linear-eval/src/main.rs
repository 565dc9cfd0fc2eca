//! `byol-linear-eval`: frozen-encoder evaluation with the paper's protocols (features cache,
//! logistic transfer protocol, SGD ImageNet protocol, kNN), and `inspect`, what a weights file
//! holds. The logic is `byol_core::eval` and `byol_core::weights::inspect`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use byol_core::data::{DatasetKind, DatasetSource};
use byol_core::device::parse_device;
use byol_core::distributed::DataParallel;
use byol_core::eval::cache::CacheStatus;
use byol_core::eval::knn::KnnOptions;
use byol_core::eval::linear_eval::EvalSetup;
use byol_core::eval::linear_protocol::LinearProtocolOptions;
use byol_core::eval::logistic::lambda_grid;
use byol_core::eval::report::ClassificationReport;
use byol_core::eval::sgd_probe::{SgdProbeOptions, PAPER_LEARNING_RATES};
use byol_core::nn::{ResNetConfig, Stem};
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
    /// Images per encoder batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
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
        let (weights, arch) = match self.weights.as_str() {
            "none" if part == Part::Target => {
                anyhow::bail!("--part target needs a weights file, not `--weights none`")
            }
            "none" => (Weights::None, None),
            value => {
                // A local file, or an hf:// reference fetched into the Hub cache.
                let path = byol_hub::resolve_weights(value)
                    .with_context(|| format!("--weights {value}"))?;
                (Weights::File(path), self.arch()?)
            }
        };
        Ok(EvalSetup {
            data: DatasetSource::new(self.dataset, self.data.clone()),
            weights,
            arch,
            part,
            image_size: self.image_size,
            train_subset: self.train_subset,
            test_subset: self.test_subset,
            batch_size: self.batch_size,
            workers: self.workers,
            cache_dir: self.out.join("features"),
            device: parse_device(&self.device)?,
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
