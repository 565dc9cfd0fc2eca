//! `byol-pretrain`: BYOL self-supervised pretraining of a ResNet encoder.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use byol_core::byol::Byol;
use byol_core::config::TrainConfig;
use byol_core::data::augment::{AugmentConfig, AugmentSet, EvalTransform, TwoViewAugmenter};
use byol_core::data::{Dataset, DatasetKind, DatasetSource, Split, Subset};
use byol_core::device::parse_device;
use byol_core::distributed::DataParallel;
use byol_core::eval::knn::KnnOptions;
use byol_core::eval::linear_protocol::LinearProtocolOptions;
use byol_core::eval::probe::{compare_linear, knn_top1, ProbeData};
use byol_core::metrics_log::StepLog;
use byol_core::nn::{Precision, Stem};
use byol_core::train::{pretrain, Monitor, Observer, RunControl, RunLock, TrainData};
use candle_core::Device;
use clap::{Args as ClapArgs, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// Reuses freed activation/gradient buffers instead of page-faulting fresh ones every step
/// (byol-core/src/allocator.rs); `main` switches off its purging first.
#[global_allocator]
static GLOBAL: byol_core::allocator::Allocator = byol_core::allocator::Allocator;

/// BYOL pretraining (Grill et al. 2020): a preset or a TOML config, overridden by flags.
#[derive(Debug, Parser)]
#[command(version, about)]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// After training, publish the output directory to this Hub repository (owner/name): encoder
    /// as model.safetensors, config.json, model card (HF_TOKEN, HF_ENDPOINT as usual).
    #[arg(long, value_name = "OWNER/NAME")]
    push_to_hub: Option<String>,
    #[command(flatten)]
    hub: HubArgs,
    /// Paper presets imagenet-40ep/-100ep/-300ep/-1000ep, or cifar10, fashion-mnist.
    #[arg(long, default_value = "fashion-mnist")]
    preset: String,
    /// A TOML config (as written to <out>/config.toml); replaces the preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// fashion-mnist, mnist, cifar10, cifar100, image-folder or imagenet.
    #[arg(long, default_value = "fashion-mnist")]
    dataset: DatasetKind,
    /// Dataset directory (default for fashion-mnist: the Debian package's).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Use only the first N training images.
    #[arg(long)]
    train_subset: Option<usize>,
    /// Output directory: checkpoints, encoder, metrics, config.
    #[arg(long, default_value = "runs/byol")]
    out: PathBuf,
    /// Continue from the newest readable checkpoint in --out (an error where there is none).
    #[arg(long)]
    resume: bool,
    /// With --resume: accept recipe settings (learning rate, batch size, seed, epochs, ...) other
    /// than the ones the checkpoint was trained with.
    #[arg(long, requires = "resume")]
    allow_config_change: bool,
    /// Start the encoder from these weights instead of random init: a local file (our
    /// safetensors, a torchvision/timm state dict as safetensors or .pth, a solo-learn /
    /// mmselfsup / mmpretrain / lightly / VISSL / Lightning checkpoint, an official DeepMind
    /// pickle) or hf://owner/repo[@rev][/file]. Its architecture must match the run's.
    #[arg(long, value_name = "WEIGHTS")]
    init_weights: Option<String>,
    /// Which encoder of the --init-weights checkpoint initialises the run: online (default) or
    /// target (its momentum encoder).
    #[arg(long, requires = "init_weights", value_parser = ["online", "target"])]
    part: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// fp32; bf16: mixed precision on oneDNN (CPU with AVX-512), the convolutions round their
    /// inputs to bf16 (on oneDNN 2.x but for the weight gradients, faster in f32 there),
    /// weights, gradients, BatchNorm, loss and optimiser stay f32; auto: bf16 where the CPU has
    /// native bf16 and oneDNN runs, else fp32.
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "bf16", "auto"])]
    precision: String,
    #[arg(long)]
    depth: Option<usize>,
    #[arg(long)]
    width: Option<usize>,
    /// imagenet, small, small-strided or small-padded.
    #[arg(long)]
    stem: Option<String>,
    /// Stem channels before the width multiplier (64 in the paper).
    #[arg(long)]
    base_channels: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    epochs: Option<usize>,
    /// Learning rate at batch 256 (scaled by batch/256).
    #[arg(long)]
    base_lr: Option<f64>,
    #[arg(long)]
    tau_base: Option<f64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// LARS trust coefficient η (1e-3 in the paper).
    #[arg(long)]
    eta: Option<f64>,
    /// Warm-up length in epochs (shrunk in proportion when the schedules are shortened).
    #[arg(long)]
    warmup_epochs: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Train this many steps: the learning-rate and τ schedules end here instead of after all
    /// epochs, the warm-up shrinks in proportion.
    #[arg(long)]
    max_steps: Option<u64>,
    #[arg(long)]
    checkpoint_every: Option<u64>,
    #[arg(long)]
    workers: Option<usize>,
    /// Ablation: no predictor.
    #[arg(long)]
    no_predictor: bool,
    /// Ablation: no target network (the target is the online network under stop-gradient).
    #[arg(long)]
    no_target: bool,
    /// Ablation: learning-rate multiplier of the predictor.
    #[arg(long)]
    predictor_lr_multiplier: Option<f64>,
    /// Smallest area fraction of the random resized crop (0.08 in the paper).
    #[arg(long)]
    crop_min_scale: Option<f64>,
    /// Ablation: the augmentation operations kept, full, crop-flip or crop.
    #[arg(long)]
    augmentations: Option<AugmentSet>,
    /// After training, fit the linear protocol (standardised features, λ from 45 values chosen on
    /// a held-out tenth of train) on raw pixels, a random-init encoder and the BYOL online and
    /// target encoders, and print them side by side.
    #[arg(long)]
    probe: bool,
    /// Training images for the probe (first N of train; default all).
    #[arg(long)]
    probe_train: Option<usize>,
    /// Test images for the probe (first N of test; default all).
    #[arg(long)]
    probe_test: Option<usize>,
    /// kNN monitor: labelled training images in the memory bank (first N of train).
    #[arg(long, default_value_t = 5000)]
    knn_bank: usize,
    /// kNN monitor: held-out queries (first N of test).
    #[arg(long, default_value_t = 1000)]
    knn_queries: usize,
    /// Train for this many minutes: the learning rate and τ follow the share of the budget spent
    /// training (the kNN monitor and checkpoints left out) and end with it; the run stops
    /// cleanly (checkpoint + encoder) at the limit. A resumed run keeps its schedules' seconds.
    #[arg(long)]
    time_limit: Option<f64>,
    /// Run the kNN monitor every N epochs (0: never).
    #[arg(long)]
    knn_every: Option<usize>,
    /// Under mpirun/srun with several processes: normalise each BatchNorm with this process's
    /// slice of the batch instead of the statistics of the whole global batch (the paper's
    /// cross-replica BatchNorm, the default).
    #[arg(long)]
    no_sync_batch_norm: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish an existing output directory to a Hub repository in one commit (the repository
    /// is created if needed).
    Publish {
        /// A byol-pretrain output directory (encoder.safetensors, config.toml, reports, plots).
        out_dir: PathBuf,
        /// Target repository, owner/name.
        #[arg(long, value_name = "OWNER/NAME")]
        repo: String,
        #[command(flatten)]
        hub: HubArgs,
    },
}

/// Options of a Hub publish.
#[derive(Debug, Clone, ClapArgs)]
struct HubArgs {
    /// Also upload the newest training state as training_state.safetensors.
    #[arg(long)]
    include_state: bool,
    /// Create the repository private.
    #[arg(long)]
    private: bool,
    /// Licence in the model card.
    #[arg(long, default_value = "apache-2.0")]
    license: String,
    /// Hub dataset id of the pretraining data for the card (repeatable), e.g. imagenet-1k.
    #[arg(long = "hub-dataset")]
    hub_datasets: Vec<String>,
    /// A linear-eval or transfer JSON report for the card's results (repeatable); the *.json
    /// reports in the output directory are always included.
    #[arg(long = "report")]
    reports: Vec<PathBuf>,
    /// Branch to commit to (default main).
    #[arg(long)]
    revision: Option<String>,
}

fn publish(out_dir: &std::path::Path, repo: &str, hub: &HubArgs) -> Result<()> {
    let opts = byol_hub::PublishOptions {
        revision: hub.revision.clone(),
        private: hub.private,
        include_state: hub.include_state,
        reports: hub.reports.clone(),
        datasets: hub.hub_datasets.clone(),
        license: hub.license.clone(),
        ..byol_hub::PublishOptions::new(repo)
    };
    let hub_options = byol_hub::HubOptions::from_env()?;
    let done = byol_hub::publish(out_dir, &opts, &hub_options)
        .with_context(|| format!("publishing {} to {repo}", out_dir.display()))?;
    println!(
        "published {} files to {} (commit {})",
        done.files.len(),
        done.repo,
        done.commit.as_deref().unwrap_or("?")
    );
    Ok(())
}

/// λ values past the best held-out accuracy after which the probe's path stops (two decades
/// of the 45-value grid): the weak-penalty tail only overfits and costs most of the probe's time.
const PROBE_PATH_PATIENCE: usize = 8;

fn build_config(args: &Args) -> Result<TrainConfig> {
    let mut c = match &args.config {
        Some(path) => TrainConfig::from_toml_file(path)?,
        None => TrainConfig::preset(&args.preset)?,
    };
    let enc = &mut c.model.encoder;
    if let Some(v) = args.depth {
        enc.depth = v;
    }
    if let Some(v) = args.width {
        enc.width = v;
    }
    if let Some(v) = &args.stem {
        enc.stem = v.parse::<Stem>()?;
    }
    if let Some(v) = args.base_channels {
        enc.base_channels = v;
    }
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = args.$field { c.$field = v; } )* };
    }
    set!(
        batch_size,
        epochs,
        base_lr,
        tau_base,
        weight_decay,
        eta,
        warmup_epochs,
        seed,
        checkpoint_every,
        workers,
        predictor_lr_multiplier,
        knn_every,
        crop_min_scale,
        augmentations
    );
    if args.max_steps.is_some() {
        c.max_steps = args.max_steps;
        c.schedule_steps = args.max_steps;
    }
    if args.no_predictor {
        c.model.use_predictor = false;
    }
    if args.no_target {
        c.model.use_target = false;
    }
    c.validate()?;
    Ok(c)
}

fn augment_config(source: &DatasetSource, c: &TrainConfig) -> AugmentConfig {
    let mut a = source
        .augment_config(c.image_size, c.model.encoder.in_channels)
        .restricted_to(c.augmentations);
    a.view1.crop_scale[0] = c.crop_min_scale;
    a.view2.crop_scale[0] = c.crop_min_scale;
    a
}

/// Progress bar with epoch, step, loss, lr, τ and images/s; warnings go to the log.
struct Progress {
    bar: ProgressBar,
}

impl Observer for Progress {
    fn on_start(&mut self, start: u64, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(start);
    }
    fn on_step(&mut self, log: &StepLog) {
        self.bar.set_position(log.step);
        let knn = log
            .knn_top1
            .map(|a| format!(" knn {:.1}%", 100.0 * a))
            .unwrap_or_default();
        self.bar.set_message(format!(
            "ep {} loss {:.4} lr {:.4} τ {:.5} {:.0} img/s{knn}",
            log.epoch, log.loss, log.lr, log.tau, log.images_per_sec
        ));
        if log.knn_top1.is_some() {
            tracing::info!(step = log.step, knn_top1 = log.knn_top1, "monitor");
        }
    }
    fn on_checkpoint(&mut self, path: &std::path::Path) {
        tracing::debug!("checkpoint {}", path.display());
    }
    fn on_warning(&mut self, message: &str) {
        self.bar.suspend(|| tracing::warn!("{message}"));
    }
}

fn main() -> Result<()> {
    byol_core::allocator::keep_freed_memory();
    byol_core::threads::park_idle_threads();
    byol_core::logging::init_logging();
    let args = Args::parse();
    if let Some(Command::Publish { out_dir, repo, hub }) = &args.command {
        return publish(out_dir, repo, hub);
    }
    // Checked before anything is read or written: a bad repository id or Hub setting must not
    // surface only after the training it was meant to publish.
    if let Some(repo) = &args.push_to_hub {
        byol_hub::check_publish_target(repo, args.hub.revision.as_deref())
            .with_context(|| format!("--push-to-hub {repo}"))?;
        byol_hub::HubOptions::from_env().context("--push-to-hub")?;
    }
    // Under mpirun/srun: this process is one rank of a data-parallel job.
    let mut group = byol_mpi::Group::join(!args.no_sync_batch_norm)?;
    let result = rank_device(&args, &group.parallel)
        .and_then(|device| {
            group.use_device(&device)?;
            Ok(device)
        })
        .and_then(|device| train_and_probe(&args, &group.parallel, &device));
    if let Err(e) = &result {
        if group.parallel.world_size() > 1 {
            // The other ranks would wait in their next collective: end the job now.
            eprintln!("rank {}: error: {e:#}", group.parallel.rank());
            group.abort_job(1);
        }
    }
    result
}

/// The device of this rank: `--device`, except that `cuda` in a job of several processes means
/// the GPU of this rank's index on its node.
fn rank_device(args: &Args, parallel: &DataParallel) -> Result<Device> {
    Ok(match args.device.as_str() {
        "cuda" if parallel.world_size() > 1 => {
            parse_device(&format!("cuda:{}", byol_mpi::local_rank()))?
        }
        name => parse_device(name)?,
    })
}

/// Pretraining (as one rank of `parallel`, on `device`), then the optional probe and publish on
/// rank 0.
fn train_and_probe(args: &Args, parallel: &DataParallel, device: &Device) -> Result<()> {
    let writer = parallel.is_writer();
    let device = device.clone();
    let config = build_config(args)?;
    if config.knn_every > 0 && (args.knn_bank == 0 || args.knn_queries == 0) {
        bail!(
            "--knn-bank {} / --knn-queries {}: the kNN monitor needs at least one image in each \
             (--knn-every 0 switches it off)",
            args.knn_bank,
            args.knn_queries
        );
    }
    let precision = match args.precision.as_str() {
        "auto" => byol_core::nn::precision::fastest_for_training(&device),
        name => name.parse::<Precision>().context("--precision")?,
    };
    byol_core::nn::precision::use_for_training(precision, &device).context("--precision")?;
    if writer {
        tracing::info!("convolutions in {precision}");
    }
    let source = DatasetSource::new(args.dataset, args.data.clone());
    let mut train: Arc<dyn Dataset> = source.open(Split::Train)?;
    if let Some(n) = args.train_subset {
        train = Arc::new(Subset::first(train, n));
    }
    let augment = augment_config(&source, &config);
    let channels = config.model.encoder.in_channels;
    let data = TrainData {
        dataset: Arc::clone(&train),
        transform: Arc::new(TwoViewAugmenter::new(augment.clone())?),
        channels,
    };
    // Held until the process ends: a second run into the same directory fails at once (rank 0
    // holds it for the job).
    let _lock = if writer {
        Some(RunLock::acquire(&args.out)?)
    } else {
        None
    };

    // SIGINT or SIGTERM: checkpoint at the next step and exit cleanly; a second one exits now.
    let stop = byol_core::signals::stop_on_signals()?;
    let time_budget = match args.time_limit {
        Some(minutes) if !(minutes.is_finite() && minutes > 0.0) => {
            bail!("--time-limit {minutes}: give a positive number of minutes")
        }
        Some(minutes) => Some(std::time::Duration::from_secs_f64(minutes * 60.0)),
        None => None,
    };

    let bar = match writer {
        true => ProgressBar::new(0),
        false => ProgressBar::hidden(),
    };
    let bar = bar.with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .context("progress template")?,
    );
    let mut progress = Progress { bar };
    tracing::info!(
        "BYOL ResNet-{} ({} base ch., {:?} stem) on {} images, {} epochs of batch {}",
        config.model.encoder.depth,
        config.model.encoder.base_channels * config.model.encoder.width,
        config.model.encoder.stem,
        train.len(),
        config.epochs,
        config.batch_size
    );
    let init_weights = args
        .init_weights
        .as_deref()
        .map(|value| {
            byol_hub::resolve_weights(value).with_context(|| format!("--init-weights {value}"))
        })
        .transpose()?;
    let run = RunControl {
        out_dir: &args.out,
        device: &device,
        resume: args.resume,
        init_weights: init_weights.as_deref(),
        init_part: args.part.as_deref().unwrap_or("online").parse()?,
        stop: &stop,
        time_budget,
        allow_config_change: args.allow_config_change,
        parallel,
    };
    // The kNN monitor on held-out data (datasets with a test split).
    let monitor_data = match source.open(Split::Test) {
        Ok(test) if config.knn_every > 0 => Some(ProbeData {
            train: Arc::new(Subset::first(Arc::clone(&train), args.knn_bank)),
            test: Arc::new(Subset::first(test, args.knn_queries)),
            transform: Arc::new(EvalTransform::new(augment.clone())?),
            view_shape: (channels, config.image_size, config.image_size),
            workers: config.workers,
        }),
        _ => None,
    };
    let knn_options = KnnOptions {
        k: config.knn_k,
        temperature: config.knn_temperature as f32,
        ..KnnOptions::default()
    };
    let mut knn_monitor = |model: &Byol| match &monitor_data {
        Some(d) => knn_top1(model.encoder(), d, &knn_options, &device),
        None => Ok(f64::NAN),
    };
    let monitor: Option<&mut Monitor> = if monitor_data.is_some() {
        Some(&mut knn_monitor)
    } else {
        None
    };
    let summary = pretrain(&config, &data, &run, monitor, &mut progress)?;
    progress.bar.finish();
    if !writer {
        return Ok(());
    }
    if summary.interrupted {
        println!(
            "interrupted at step {}/{}: checkpoint saved; continue with --resume",
            summary.steps_done, summary.total_steps
        );
        return Ok(());
    }
    println!(
        "trained {} steps, last loss {:.4}; encoder: {}",
        summary.steps_done,
        summary.last_loss.unwrap_or(f64::NAN),
        summary.encoder_path.display()
    );

    if args.probe {
        let online = byol_core::weights::load_encoder(&summary.encoder_path, &device, None)?;
        let state_path = byol_core::train::latest_state(&args.out)?
            .context("the finished run left no training state")?;
        let state = byol_core::checkpoint::load_training_state(&state_path, &device)?;
        let random = Byol::new(&config.model, &device, config.seed)?;
        let subset = |split: Split, n: Option<usize>| -> Result<Arc<dyn Dataset>> {
            let all = source.open(split)?;
            Ok(match n {
                Some(n) => Arc::new(Subset::first(all, n)),
                None => all,
            })
        };
        let probe_data = ProbeData {
            train: subset(Split::Train, args.probe_train)?,
            test: subset(Split::Test, args.probe_test)?,
            transform: Arc::new(EvalTransform::new(augment)?),
            view_shape: (channels, config.image_size, config.image_size),
            workers: config.workers,
        };
        let mut options = LinearProtocolOptions::default();
        options.logistic.standardize = true;
        options.logistic.path_patience = Some(PROBE_PATH_PATIENCE);
        let mut extractors = vec![
            ("raw pixels", None),
            ("random-init encoder", Some(random.encoder())),
            ("BYOL online encoder", Some(&online.encoder)),
        ];
        if let Some(target) = state.model.target_encoder() {
            extractors.push(("BYOL target encoder", Some(target)));
        }
        let rows = compare_linear(&extractors, &probe_data, &options, &device)?;
        println!(
            "\nlinear probe (logistic regression on standardised features, λ from {} values on a \
             held-out tenth of train), {} train / {} test images",
            options.grid.len(),
            probe_data.train.len(),
            probe_data.test.len()
        );
        println!(
            "{:<22} {:>6} {:>8} {:>8} {:>10}",
            "features", "dim", "top-1", "top-5", "λ"
        );
        for r in &rows {
            println!(
                "{:<22} {:>6} {:>7.2}% {:>7.2}% {:>10.1e}",
                r.name,
                r.feature_dim,
                100.0 * r.test_top1,
                100.0 * r.test_top5,
                r.best_lambda
            );
        }
        let report = serde_json::to_string_pretty(&rows)?;
        // Atomic like every other file of the run directory: a kill mid-write leaves no half report.
        byol_core::io::write_atomic(&args.out.join("probe.json"), report.as_bytes())?;
    }
    if let Some(repo) = &args.push_to_hub {
        publish(&args.out, repo, &args.hub)?;
    }
    Ok(())
}
