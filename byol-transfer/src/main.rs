//! `byol-transfer`: VOC2007 classification (paper logistic protocol or VISSL SVM), VOC2012
//! segmentation (FCN, fine-tuned), image-folder classification (linear or fine-tuned) and the
//! paper's transfer suite. Parses flags, calls `byol_core::transfer`, prints a table and writes
//! the JSON report.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use byol_core::data::voc::VocSource;
use byol_core::device::parse_device;
use byol_core::eval::logistic::lambda_grid;
use byol_core::nn::{Precision, ResNetConfig, Stem};
use byol_core::transfer::classify::{run_classify, ClassifyOptions};
use byol_core::transfer::finetune::FinetuneOptions;
use byol_core::transfer::paper::Metric;
use byol_core::transfer::segmentation::{run_segmentation, LrPolicy, SegOptions};
use byol_core::transfer::suite::run_suite;
use byol_core::transfer::voc::{run_voc_classification, VocOptions, VocProtocol};
use byol_core::transfer::CommonOptions;
use byol_core::weights::{Part, Weights};
use clap::{Parser, ValueEnum};

/// Reuses freed activation/gradient buffers instead of page-faulting fresh ones every step
/// (byol-core/src/allocator.rs); `main` switches off its purging first.
#[global_allocator]
static GLOBAL: byol_core::allocator::Allocator = byol_core::allocator::Allocator;

/// Transfer evaluation of a pretrained encoder (see the README's "Transfer" section).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// voc (paper: logistic, 11-point mAP), voc-svm (VISSL: SVM, all-point mAP), voc-seg
    /// (VOC2012 FCN segmentation) or classify (image-folder dataset).
    #[arg(long, value_enum)]
    task: Option<Task>,
    /// `paper`: every dataset of the paper's suite found under --data (folders food101, cifar10,
    /// ..., voc2007, ...), one table next to the paper's numbers.
    #[arg(long, value_enum)]
    suite: Option<Suite>,
    /// Encoder weights (safetensors, .pth, a solo-learn / mmselfsup / mmpretrain / lightly /
    /// VISSL / Lightning checkpoint, official .pkl, or hf://owner/repo[@rev][/file]), or `none`:
    /// raw pixels for frozen-feature protocols, a random init of --depth/--stem for fine-tuning.
    #[arg(long)]
    weights: String,
    /// Which encoder of a BYOL checkpoint: online, or target (the momentum encoder).
    #[arg(long, default_value = "online", value_parser = ["online", "target"])]
    part: String,
    /// VOCdevkit root or VOC20xx directory (voc*), dataset directory (classify), suite root.
    #[arg(long)]
    data: PathBuf,
    /// Directory of the default report file.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// JSON report (default: <out>/transfer-<task>.json).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Network input side (default 224; 512 for voc-seg, the training crop).
    #[arg(long)]
    image_size: Option<usize>,
    /// Batch size (default 64; 8 for voc-seg).
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long, default_value_t = 4)]
    workers: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Arithmetic of the frozen encoder in the linear protocols: fp32, or bf16 (oneDNN on a CPU
    /// with AVX-512; features ~5e-3 relative off fp32).
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// Architecture of a weights file without config metadata, or of the random encoder of
    /// `--weights none` (default ResNet-50, ImageNet stem).
    #[arg(long)]
    depth: Option<usize>,
    /// The same as --depth, named as torchvision does: resnet18, resnet50, ...
    #[arg(long, conflicts_with = "depth")]
    arch: Option<String>,
    #[arg(long, default_value_t = 1)]
    width: usize,
    /// imagenet, small, small-strided or small-padded.
    #[arg(long, default_value = "imagenet")]
    stem: String,
    /// Number of L2 strengths, log-spaced in [1e-6, 1e5] (the paper: 45).
    #[arg(long, default_value_t = 45)]
    lambdas: usize,
    /// Validation fraction carved out of the training split when the dataset has no val split.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// VOC classification targets: image-sets (ImageSets/Main/<class>_<split>.txt) or
    /// annotations (the XML files).
    #[arg(long, value_enum, default_value_t = VocTargets::ImageSets)]
    voc_source: VocTargets,
    /// voc-svm: costs tried per class.
    #[arg(long, value_delimiter = ',', default_values_t = [0.01, 0.1, 1.0, 10.0, 100.0])]
    svm_costs: Vec<f64>,
    /// Fine-tuning steps (voc-seg default 30000, classify --finetune default 20000).
    #[arg(long)]
    steps: Option<usize>,
    /// voc-seg: base learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// voc-seg: SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// voc-seg: Nesterov momentum instead of plain momentum.
    #[arg(long)]
    nesterov: bool,
    /// voc-seg: weight decay (convolution and linear weights only).
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    /// voc-seg: poly or cosine.
    #[arg(long, default_value = "poly")]
    lr_schedule: String,
    /// voc-seg: random scale range of the training views, `min,max`.
    #[arg(long, value_delimiter = ',', default_values_t = [0.5, 2.0])]
    scale_range: Vec<f64>,
    /// voc-seg: score only the first N validation images.
    #[arg(long)]
    max_val_images: Option<usize>,
    /// classify and voc: fine-tune encoder + linear head instead of the frozen-feature protocol
    /// (the suite runs both).
    #[arg(long)]
    finetune: bool,
    /// --finetune: learning-rate grid.
    #[arg(long, value_delimiter = ',', default_values_t = [0.01, 0.03, 0.1])]
    lrs: Vec<f64>,
    /// --finetune: weight-decay grid.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 1e-5, 1e-4])]
    weight_decays: Vec<f64>,
    /// classify: override the dataset's metric (top1 or mean-per-class).
    #[arg(long)]
    metric: Option<String>,
}

/// `--task`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Task {
    Voc,
    VocSvm,
    VocSeg,
    Classify,
}

/// `--suite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Suite {
    Paper,
}

/// `--voc-source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum VocTargets {
    ImageSets,
    Annotations,
}

/// What one invocation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Task(Task),
    Suite(Suite),
}

impl Run {
    /// The name in the default report file, `transfer-<name>.json`.
    fn name(self) -> String {
        let value = match self {
            Run::Task(t) => t.to_possible_value(),
            Run::Suite(_) => return "suite".into(),
        };
        value.map(|v| v.get_name().to_string()).unwrap_or_default()
    }
}

fn main() -> Result<()> {
    byol_core::allocator::keep_freed_memory();
    byol_core::threads::park_idle_threads();
    byol_core::logging::init_logging();
    let args = Args::parse();
    let run = match (args.task, args.suite) {
        (_, Some(suite)) => Run::Suite(suite),
        (Some(t), None) => Run::Task(t),
        (None, None) => bail!("give --task (voc, voc-svm, voc-seg, classify) or --suite paper"),
    };
    let seg = run == Run::Task(Task::VocSeg);
    let mut common = CommonOptions::new(
        resolve_weights(&args.weights)?,
        args.image_size.unwrap_or(if seg { 512 } else { 224 }),
    );
    common.batch_size = args.batch_size.unwrap_or(if seg { 8 } else { 64 });
    common.workers = args.workers;
    common.seed = args.seed;
    common.device = parse_device(&args.device)?;
    common.precision = args.precision;
    common.part = args.part.parse()?;
    if common.part == Part::Target && common.weights == Weights::None {
        bail!("--part target needs a weights file, not `--weights none`");
    }
    let depth = match &args.arch {
        Some(arch) => Some(
            arch.strip_prefix("resnet")
                .and_then(|d| d.parse::<usize>().ok())
                .with_context(|| format!("--arch {arch}: expected resnet18, resnet50, ..."))?,
        ),
        None => args.depth,
    };
    if let Some(depth) = depth {
        common.arch = Some(ResNetConfig {
            width: args.width,
            stem: args.stem.parse::<Stem>()?,
            ..ResNetConfig::new(depth)
        });
    }
    let grid = lambda_grid(args.lambdas, 1e-6, 1e5).context("--lambdas")?;
    let report_path = args
        .report
        .clone()
        .unwrap_or_else(|| args.out.join(format!("transfer-{}.json", run.name())));
    let classify_opts = |common: CommonOptions| -> Result<ClassifyOptions> {
        let mut o = ClassifyOptions::new(common);
        o.lambda_grid = grid.clone();
        o.val_fraction = args.val_fraction;
        o.metric = args
            .metric
            .as_deref()
            .map(str::parse::<Metric>)
            .transpose()?;
        if args.finetune {
            o.finetune = Some(FinetuneOptions {
                steps: args.steps.unwrap_or(20_000),
                lrs: args.lrs.clone(),
                weight_decays: args.weight_decays.clone(),
                momentum: 0.9,
            });
        }
        Ok(o)
    };
    let report = match run {
        Run::Task(task @ (Task::Voc | Task::VocSvm)) => {
            let protocol = if task == Task::Voc {
                VocProtocol::Logistic
            } else {
                VocProtocol::Svm
            };
            let mut o = VocOptions::new(common, protocol);
            o.lambda_grid = grid.clone();
            o.val_fraction = args.val_fraction;
            o.source = match args.voc_source {
                VocTargets::ImageSets => VocSource::ImageSets,
                VocTargets::Annotations => VocSource::Annotations,
            };
            o.svm.costs = args.svm_costs.clone();
            o.finetune = classify_opts(o.common.clone())?.finetune;
            run_voc_classification(&args.data, &o)?
        }
        Run::Task(Task::VocSeg) => {
            let mut o = SegOptions::new(common);
            if let Some(s) = args.steps {
                o.steps = s;
            }
            o.lr = args.lr;
            o.momentum = args.momentum;
            o.nesterov = args.nesterov;
            o.weight_decay = args.weight_decay;
            o.schedule = args.lr_schedule.parse::<LrPolicy>()?;
            let [lo, hi] = args.scale_range[..] else {
                bail!("--scale-range takes two values, `min,max`");
            };
            o.scale_range = [lo, hi];
            o.max_val_images = args.max_val_images;
            run_segmentation(&args.data, &o)?
        }
        Run::Task(Task::Classify) => run_classify(&args.data, &classify_opts(common)?)?,
        Run::Suite(Suite::Paper) => {
            let suite = run_suite(&args.data, &classify_opts(common)?)?;
            suite.write(&report_path)?;
            print!("{}", suite.table());
            println!("report: {}", report_path.display());
            if !suite.failed.is_empty() {
                bail!(
                    "{} dataset(s) failed: {}",
                    suite.failed.len(),
                    suite.failed.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            return Ok(());
        }
    };
    report.write(&report_path)?;
    print!("{}", report.table());
    println!("report: {}", report_path.display());
    Ok(())
}

/// `none`, a local weights file, or an hf:// reference fetched into the Hub cache.
fn resolve_weights(value: &str) -> Result<Weights> {
    if value == "none" || value.is_empty() {
        return Ok(value.parse::<Weights>()?);
    }
    let path = byol_hub::resolve_weights(value).with_context(|| format!("--weights {value}"))?;
    Ok(Weights::File(path))
}
