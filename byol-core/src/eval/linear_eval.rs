//! The modes of `byol-linear-eval` on one dataset and one set of weights: cached features, the
//! logistic (transfer) protocol, the SGD (ImageNet) protocol, kNN and (in
//! [`crate::eval::semi_supervised`]) semi-supervised fine-tuning, each ending in a
//! [`ClassificationReport`]. `labels` restricts the training split to a label subset (1 % / 10 %
//! of ImageNet, a class-balanced fraction, a file list) in every mode.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use serde_json::json;

use crate::data::augment::{AugmentConfig, EvalTransform};
use crate::data::label_subset::resolve_labels;
use crate::data::pipeline::OneViewAugmenter;
use crate::data::{Dataset, DatasetKind, DatasetSource, LabelSpec, LabelSubset, Split, Subset};
use crate::distributed::DataParallel;
use crate::eval::cache::{cached_features, load_features, save_features, CacheKey, CacheStatus};
use crate::eval::features::{extract, extract_across, FeaturePass, LabelledFeatures};
use crate::eval::knn::{knn_scores, KnnOptions};
use crate::eval::linear_protocol::{linear_protocol, LinearProtocolOptions};
use crate::eval::report::{
    hyperparameters, ClassificationMetrics, ClassificationReport, KnnChoice, LabelsChoice,
    LogisticChoice, SgdChoice, SplitSizes, WeightsInfo,
};
use crate::eval::sgd_probe::{sgd_probe, SgdProbeData, SgdProbeOptions};
use crate::io::sha256_file;
use crate::nn::{Precision, ResNet, ResNetConfig};
use crate::weights::{describe_architecture, load_encoder_part, LoadedEncoder, Part, Weights};
use crate::{Error, Result};

/// One evaluation setting.
#[derive(Debug, Clone)]
pub struct EvalSetup {
    pub data: DatasetSource,
    /// An encoder file, or [`Weights::None`] for raw pixels (the baseline).
    pub weights: Weights,
    /// Needed for files without our metadata (a plain torchvision state dict); checked against
    /// the metadata otherwise.
    pub arch: Option<ResNetConfig>,
    /// Which encoder of the file: the online one (default) or the target one.
    pub part: Part,
    /// Side of the evaluation crop; default: the dataset's native size (28 for MNIST-like,
    /// 32 for CIFAR) or 224.
    pub image_size: Option<usize>,
    /// Use only the first N images of train / test.
    pub train_subset: Option<usize>,
    pub test_subset: Option<usize>,
    /// Keep the labels of this subset of train only (the semi-supervised setting); the other
    /// training images are left out.
    pub labels: Option<LabelSpec>,
    /// Seed of what the setup draws itself: a class-balanced label subset.
    pub seed: u64,
    pub batch_size: usize,
    pub workers: usize,
    /// Where feature caches live.
    pub cache_dir: PathBuf,
    pub device: Device,
    /// Arithmetic of the encoder's forward pass (bf16: oneDNN on the CPU); bf16 features are
    /// cached apart from fp32 ones.
    pub precision: Precision,
    /// The ranks of a data-parallel launch ([`DataParallel::single`] alone): they share the
    /// feature passes of [`EvalSetup::share_feature_extraction`].
    pub parallel: DataParallel,
}

/// Features of both splits and whether each came from the cache.
pub struct SplitFeatures {
    pub train: LabelledFeatures,
    pub test: LabelledFeatures,
    pub status: [CacheStatus; 2],
    pub paths: [PathBuf; 2],
}

/// What every mode starts from: the weights (loaded and described), both splits (train
/// restricted to the label subset), the dataset's augmentation recipe.
pub(crate) struct Prepared {
    pub encoder: Option<LoadedEncoder>,
    pub weights: WeightsInfo,
    pub train: Arc<dyn Dataset>,
    pub test: Arc<dyn Dataset>,
    /// The label subset `train` was restricted to.
    pub labels: Option<LabelSubset>,
    pub augment: AugmentConfig,
    pub view_shape: (usize, usize, usize),
    pub classes: usize,
}

impl Prepared {
    /// The encoder features are extracted with (`None`: raw pixels).
    fn extractor(&self) -> Option<&ResNet> {
        self.encoder.as_ref().map(|e| &e.encoder)
    }
}

impl EvalSetup {
    pub(crate) fn image_size(&self) -> usize {
        self.image_size.unwrap_or(match self.data.kind {
            DatasetKind::FashionMnist | DatasetKind::Mnist => 28,
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => 32,
            DatasetKind::ImageFolder | DatasetKind::Imagenet => 224,
        })
    }

    /// Validates and opens everything a mode needs; writes nothing.
    pub(crate) fn prepare(&self) -> Result<Prepared> {
        let (encoder, weights) = match &self.weights {
            Weights::File(path) => {
                let loaded = load_encoder_part(path, &self.device, self.arch.as_ref(), self.part)?;
                let info = WeightsInfo {
                    extractor: "encoder".into(),
                    path: Some(path.display().to_string()),
                    sha256: Some(sha256_file(path)?),
                    architecture: Some(describe_architecture(loaded.encoder.config())),
                    part: Some(self.part.to_string()),
                };
                (Some(loaded), info)
            }
            Weights::None => (
                None,
                WeightsInfo {
                    extractor: "pixels".into(),
                    path: None,
                    sha256: None,
                    architecture: None,
                    part: None,
                },
            ),
        };
        let mut train = self.data.open(Split::Train)?;
        let mut test = self.data.open(Split::Test)?;
        if self.train_subset.is_some() && self.labels.is_some() {
            return Err(Error::config(
                "labels",
                "--labels and --train-subset both choose the training images: give one of them",
            ));
        }
        if let Some(n) = self.train_subset {
            train = Arc::new(Subset::first(train, n));
        }
        let labels = match &self.labels {
            Some(spec) => {
                let subset = resolve_labels(spec, self.data.kind, train.as_ref(), self.seed)?;
                train = Arc::new(Subset::new(train, subset.indices.clone())?);
                Some(subset)
            }
            None => None,
        };
        if let Some(n) = self.test_subset {
            test = Arc::new(Subset::first(test, n));
        }
        if train.class_names() != test.class_names() {
            return Err(Error::Dataset(format!(
                "{}: train has {} classes and test {}, or they are named differently",
                self.data.dir()?.display(),
                train.num_classes(),
                test.num_classes()
            )));
        }
        let channels = match &encoder {
            Some(e) => e.encoder.config().in_channels,
            None => match self.data.kind {
                DatasetKind::FashionMnist | DatasetKind::Mnist => 1,
                _ => 3,
            },
        };
        let size = self.image_size();
        let augment = self.data.augment_config(size, channels);
        Ok(Prepared {
            encoder,
            weights,
            classes: train.num_classes(),
            train,
            test,
            labels,
            augment,
            view_shape: (channels, size, size),
        })
    }

    fn cache_key(&self, p: &Prepared, split: Split, samples: usize) -> Result<CacheKey> {
        let transform = json!({
            "size": p.augment.size,
            "channels": p.augment.out_channels,
            "mean": p.augment.mean,
            "std": p.augment.std,
            "eval_resize_ratio": p.augment.eval_resize_ratio,
        });
        // The target encoder of a file is other features than its online one.
        let weights = match (&p.weights.sha256, self.part) {
            (None, _) => "pixels".to_string(),
            (Some(sha), Part::Online) => sha.clone(),
            (Some(sha), part) => format!("{sha} {part}"),
        };
        let weights = match (&p.weights.sha256, self.precision) {
            (Some(_), Precision::Bf16) => format!("{weights} bf16"),
            _ => weights,
        };
        let mut dataset = format!("{} {}", self.data.kind, self.data.dir()?.display());
        if let (Split::Train, Some(labels)) = (split, &p.labels) {
            dataset.push_str(&format!(" labels {} {}", labels.name, labels.digest));
        }
        Ok(CacheKey {
            weights,
            transform: transform.to_string(),
            dataset,
            split: format!("{split:?}").to_lowercase(),
            samples,
        })
    }

    fn cache_path(&self, p: &Prepared, split: Split) -> PathBuf {
        let weights = match &self.weights {
            Weights::File(path) => {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "encoder".into());
                match self.part {
                    Part::Online => stem,
                    part => format!("{stem}-{part}"),
                }
            }
            Weights::None => "pixels".into(),
        };
        let weights = match (&self.weights, self.precision) {
            (Weights::File(_), Precision::Bf16) => format!("{weights}-bf16"),
            _ => weights,
        };
        // A label subset's features live beside the whole split's (another file, not a stale one).
        let labels = match (split, &p.labels) {
            (Split::Train, Some(l)) => format!("-labels-{}", &l.digest[..12]),
            _ => String::new(),
        };
        self.cache_dir.join(format!(
            "{}-{}{labels}-{}.safetensors",
            self.data.kind,
            format!("{split:?}").to_lowercase(),
            weights
        ))
    }

    /// The feature pass of one split through `p`'s extractor with this setup's settings.
    fn feature_pass<'a>(
        &'a self,
        p: &'a Prepared,
        set: &Arc<dyn Dataset>,
        transform: &Arc<EvalTransform>,
    ) -> FeaturePass<'a> {
        FeaturePass {
            encoder: p.extractor(),
            dataset: Arc::clone(set),
            transform: transform.clone(),
            view_shape: p.view_shape,
            batch_size: self.batch_size,
            workers: self.workers,
            device: &self.device,
            precision: self.precision,
        }
    }

    fn split_features(&self, p: &Prepared) -> Result<SplitFeatures> {
        let transform = Arc::new(EvalTransform::new(p.augment.clone())?);
        let mut out = Vec::with_capacity(2);
        for (split, set) in [(Split::Train, &p.train), (Split::Test, &p.test)] {
            let key = self.cache_key(p, split, set.len())?;
            let path = self.cache_path(p, split);
            let (features, status) = cached_features(&path, &key, || {
                extract(&self.feature_pass(p, set, &transform))
            })?;
            out.push((features, status, path));
        }
        let (test, test_status, test_path) = out.pop().ok_or_else(no_split)?;
        let (train, train_status, train_path) = out.pop().ok_or_else(no_split)?;
        if train.features.view().cols() != test.features.view().cols() {
            return Err(Error::Input(format!(
                "feature dimension {} in {} but {} in {}",
                train.features.view().cols(),
                train_path.display(),
                test.features.view().cols(),
                test_path.display()
            )));
        }
        Ok(SplitFeatures {
            train,
            test,
            status: [train_status, test_status],
            paths: [train_path, test_path],
        })
    }

    /// Under a data-parallel launch (mpirun/srun): every rank extracts its slice of each batch of
    /// both splits and rank 0 writes the cache files one process would write; splits whose cache
    /// rank 0 finds up to date are skipped by all. Afterwards rank 0 runs any protocol from the
    /// caches. One process alone: nothing to share, nothing done.
    pub fn share_feature_extraction(&self) -> Result<()> {
        let group = self.parallel.collective.as_ref();
        if group.world_size() == 1 {
            return Ok(());
        }
        let p = self.prepare()?;
        let transform = Arc::new(EvalTransform::new(p.augment.clone())?);
        for (split, set) in [(Split::Train, &p.train), (Split::Test, &p.test)] {
            let key = self.cache_key(&p, split, set.len())?;
            let path = self.cache_path(&p, split);
            // Rank 0's view of the cache decides for all (the ranks may not share a disk).
            let fresh = self.parallel.is_writer()
                && matches!(load_features(&path), Ok((_, found)) if found == key);
            let mut vote = [f64::from(u8::from(fresh))];
            group.all_reduce_f64(&mut vote)?;
            if vote[0] > 0.0 {
                continue;
            }
            if let Some(all) = extract_across(&self.feature_pass(&p, set, &transform), group)? {
                save_features(&path, &all, &key)?;
            }
        }
        Ok(())
    }

    /// The `features` mode: computes (or finds up to date) the cached features of both splits.
    pub fn features(&self) -> Result<SplitFeatures> {
        self.split_features(&self.prepare()?)
    }

    pub(crate) fn report(
        &self,
        p: &Prepared,
        o: Outcome,
        started: Instant,
    ) -> Result<ClassificationReport> {
        let mut hyper = o.hyperparameters;
        if let Some(labels) = &p.labels {
            hyper.extend(hyperparameters(&LabelsChoice {
                labels: &labels.name,
                labels_source: &labels.source,
                labelled_images: labels.len(),
            })?);
        }
        Ok(ClassificationReport {
            protocol: o.protocol.into(),
            protocol_description: o.description.into(),
            dataset: self.data.kind.to_string(),
            data_dir: self.data.dir()?.display().to_string(),
            weights: p.weights.clone(),
            splits: o.splits,
            feature_dim: o.feature_dim,
            hyperparameters: hyper,
            top1: o.metrics.top1,
            top5: o.metrics.top5,
            mean_per_class_accuracy: o.metrics.mean_per_class_accuracy,
            class_names: p.train.class_names().to_vec(),
            per_class_accuracy: o.metrics.per_class_accuracy,
            confusion_matrix: o.metrics.confusion_matrix,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The linear-transfer protocol on cached features: L2-regularised multinomial logistic
    /// regression, λ chosen on a held-out split of train, refit on all of train.
    pub fn logistic(&self, opts: &LinearProtocolOptions) -> Result<ClassificationReport> {
        let started = Instant::now();
        let p = self.prepare()?;
        let f = self.split_features(&p)?;
        let result = linear_protocol(
            f.train.features.view(),
            &f.train.labels,
            f.test.features.view(),
            &f.test.labels,
            p.classes,
            opts,
        )?;
        let scores = result.model.predict_scores(f.test.features.view())?;
        let metrics = ClassificationMetrics::from_scores(&scores, &f.test.labels, p.classes)?;
        let val = ((f.train.labels.len() as f64 * opts.val_fraction).round() as usize).max(1);
        let hyper = hyperparameters(&LogisticChoice {
            lambda: result.best_lambda,
            lambda_grid: &opts.grid,
            standardize: opts.logistic.standardize,
            path_patience: opts.logistic.path_patience,
            val_fraction: opts.val_fraction,
        })?;
        self.report(
            &p,
            Outcome {
                protocol: "logistic",
                description: "L2-regularised multinomial logistic regression (L-BFGS) on frozen features, λ from the grid on a held-out split, refit on train (BYOL App. D.2)",
                splits: SplitSizes {
                train: f.train.labels.len(),
                val,
                test: f.test.labels.len(),
            },
                feature_dim: f.train.features.view().cols(),
                hyperparameters: hyper,
                metrics,
            },
            started,
        )
    }

    /// Weighted cosine kNN on cached features.
    pub fn knn(&self, opts: &KnnOptions) -> Result<ClassificationReport> {
        let started = Instant::now();
        let p = self.prepare()?;
        let f = self.split_features(&p)?;
        let scores = knn_scores(
            f.train.features.view(),
            &f.train.labels,
            p.classes,
            f.test.features.view(),
            opts,
        )?;
        let metrics = ClassificationMetrics::from_scores(&scores, &f.test.labels, p.classes)?;
        let hyper = hyperparameters(&KnnChoice {
            k: opts.k,
            // f32 → f64 without the binary noise (0.07, not 0.07000000029802322).
            temperature: (f64::from(opts.temperature) * 1e6).round() / 1e6,
        })?;
        self.report(
            &p,
            Outcome {
                protocol: "knn",
                description:
                    "k-nearest neighbours, cosine similarity, votes weighted by exp(sim/T)",
                splits: SplitSizes {
                    train: f.train.labels.len(),
                    val: 0,
                    test: f.test.labels.len(),
                },
                feature_dim: f.train.features.view().cols(),
                hyperparameters: hyper,
                metrics,
            },
            started,
        )
    }

    /// The ImageNet linear protocol: a linear head by SGD on random-crop + flip views of the
    /// frozen encoder. Needs an encoder (raw pixels have no such protocol).
    pub fn sgd(
        &self,
        opts: &SgdProbeOptions,
        on_epoch: &mut dyn FnMut(usize, f64),
    ) -> Result<ClassificationReport> {
        let started = Instant::now();
        let p = self.prepare()?;
        let encoder = p.encoder.as_ref().ok_or_else(|| {
            Error::config(
                "weights",
                "the sgd protocol trains on encoder features of augmented views: give encoder weights (use logistic or knn for raw pixels)",
            )
        })?;
        let data = SgdProbeData {
            encoder: &encoder.encoder,
            train: Arc::clone(&p.train),
            test: Arc::clone(&p.test),
            train_transform: Arc::new(OneViewAugmenter::crop_and_flip(&p.augment)?),
            eval_transform: Arc::new(EvalTransform::new(p.augment.clone())?),
            view_shape: p.view_shape,
            classes: p.classes,
        };
        let result = sgd_probe(&data, opts, &self.device, on_epoch)?;
        let metrics = ClassificationMetrics::from_scores(
            &result.test_scores,
            &result.test_labels,
            p.classes,
        )?;
        let hyper = hyperparameters(&SgdChoice {
            lr: result.best_lr,
            lr_grid: &opts.learning_rates,
            val_top1_per_lr: &result.candidates,
            epochs: opts.epochs,
            batch_size: opts.batch_size,
            momentum: opts.sgd.momentum,
            nesterov: opts.sgd.nesterov,
            weight_decay: opts.sgd.weight_decay,
        })?;
        self.report(
            &p,
            Outcome {
                protocol: "sgd",
                description: "linear head by SGD (Nesterov, cosine lr, no weight decay) on random-crop + flip views of the frozen encoder, lr chosen on a held-out split (BYOL App. C.1)",
                splits: SplitSizes {
                train: result.train_size,
                val: result.val_size,
                test: result.test_labels.len(),
            },
                feature_dim: result.feature_dim,
                hyperparameters: hyper,
                metrics,
            },
            started,
        )
    }
}

/// What a protocol produced, before it becomes a report.
pub(crate) struct Outcome {
    pub protocol: &'static str,
    pub description: &'static str,
    pub splits: SplitSizes,
    pub feature_dim: usize,
    pub hyperparameters: BTreeMap<String, serde_json::Value>,
    pub metrics: ClassificationMetrics,
}

fn no_split() -> Error {
    Error::Input("feature extraction returned no split".into())
}
