//! Fine-tuning (App. D.3): what classification, VOC2007 and segmentation share.
//!
//! [`FineTuner`] holds the encoder to fine-tune (the weights file, or a seeded random init) with a
//! task head in a store of its own, and one SGD per store; `grid_search` chooses the learning
//! rate × weight decay on validation; `finetune_once` is the classification run (linear head,
//! softmax or per-class sigmoid cross-entropy, crop + flip, cosine lr). [`Classifier`] (encoder +
//! linear head), its cross-entropy step, its test scores and the tuner's checkpoint tensors are
//! shared with the semi-supervised protocol ([`crate::eval::semi_supervised`]).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Module, ModuleT, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::augment::{TwoViewAugmenter, ViewConfig};
use crate::data::dataset::{CorruptLog, CorruptPolicy};
use crate::data::loader::Transform;
use crate::data::Dataset;
use crate::nn::layers::Linear;
use crate::nn::{ResNet, VarPath, VarStore};
use crate::optim::{LrSchedule, Sgd, SgdConfig};
use crate::transfer::report::{FinetuneChoice, GridPoint};
use crate::transfer::{eval_augment, features_of_all, CommonOptions};
use crate::{Error, Result};

/// Fine-tuning settings (App. D.3: SGD Nesterov, lr × weight-decay grid chosen on val).
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneOptions {
    pub steps: usize,
    pub lrs: Vec<f64>,
    pub weight_decays: Vec<f64>,
    pub momentum: f64,
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        Self {
            steps: 20_000,
            lrs: vec![0.01, 0.03, 0.1],
            weight_decays: vec![0.0, 1e-5, 1e-4],
            momentum: 0.9,
        }
    }
}

impl FinetuneOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.lrs.is_empty() || self.weight_decays.is_empty() {
            return Err(Error::config(
                "finetune",
                "needs steps ≥ 1 and non-empty lr and weight-decay grids",
            ));
        }
        Ok(())
    }
}

/// An encoder and a task head trained together: the encoder from [`CommonOptions`] (the weights
/// file, or a random init seeded by `seed`), the head in its own [`VarStore`] (seed + 1, so its
/// names never clash with the encoder's), one [`Sgd`] per store. The weight decay goes to
/// convolution and linear weights only (by [`crate::nn::Role`]).
pub struct FineTuner<M> {
    /// What `build` made of the encoder and the head.
    pub model: M,
    encoder_store: VarStore,
    head_store: VarStore,
    encoder_opt: Sgd,
    head_opt: Sgd,
}

impl<M> FineTuner<M> {
    /// `build` receives the encoder and the root of the head's store.
    pub fn new(
        common: &CommonOptions,
        sgd: SgdConfig,
        build: impl FnOnce(ResNet, &mut VarPath) -> Result<M>,
    ) -> Result<Self> {
        let (encoder, encoder_store) = common.trainable_encoder()?;
        let mut head_store = VarStore::new(&common.device, common.seed.wrapping_add(1));
        let model = build(encoder, &mut head_store.root())?;
        Ok(Self {
            model,
            encoder_store,
            head_store,
            encoder_opt: Sgd::new(sgd)?,
            head_opt: Sgd::new(sgd)?,
        })
    }

    /// Backward through `loss`, then one SGD step of encoder and head at `lr`.
    pub fn step(&mut self, loss: &Tensor, lr: f64) -> Result<()> {
        let grads = loss.backward()?;
        self.encoder_opt.step(&self.encoder_store, &grads, lr)?;
        self.head_opt.step(&self.head_store, &grads, lr)?;
        Ok(())
    }

    /// Everything a resumed run needs besides its step: encoder and head tensors (BatchNorm
    /// statistics and counters included) and both SGD momentum buffers, by prefixed name.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let prefixed = |prefix: &str, tensors: Vec<(String, Tensor)>| {
            tensors
                .into_iter()
                .map(move |(n, t)| (format!("{prefix}{n}"), t))
                .collect::<Vec<_>>()
        };
        let momentum = |prefix: &str, sgd: &Sgd| {
            let mut buffers: Vec<(String, Tensor)> = sgd
                .momentum_buffers()
                .iter()
                .map(|(n, t)| (format!("{prefix}{n}"), t.clone()))
                .collect();
            buffers.sort_by(|a, b| a.0.cmp(&b.0));
            buffers
        };
        let mut out = prefixed(STATE_ENCODER, self.encoder_store.tensors_under(""));
        out.extend(prefixed(STATE_HEAD, self.head_store.tensors_under("")));
        out.extend(momentum(STATE_ENCODER_SGD, &self.encoder_opt));
        out.extend(momentum(STATE_HEAD_SGD, &self.head_opt));
        out
    }

    /// Restores what [`FineTuner::state_tensors`] wrote (by prefix, as read from a file): every
    /// tensor must fit the model built for this run.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let under = |prefix: &str| -> HashMap<String, Tensor> {
            tensors
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
                .collect()
        };
        self.encoder_store
            .load_under("", &under(STATE_ENCODER), false)?;
        self.head_store.load_under("", &under(STATE_HEAD), false)?;
        self.encoder_opt
            .set_momentum_buffers(&self.encoder_store, under(STATE_ENCODER_SGD))?;
        self.head_opt
            .set_momentum_buffers(&self.head_store, under(STATE_HEAD_SGD))?;
        Ok(())
    }
}

// Prefixes of the tuner's checkpoint tensors.
const STATE_ENCODER: &str = "encoder.";
const STATE_HEAD: &str = "head.";
const STATE_ENCODER_SGD: &str = "sgd.encoder.";
const STATE_HEAD_SGD: &str = "sgd.head.";

/// The classification model of fine-tuning: the encoder and a linear head `fc` on its pooled
/// features (torchvision's names).
pub struct Classifier {
    pub encoder: ResNet,
    pub head: Linear,
}

impl Classifier {
    /// Logits of the images `x`; BatchNorm in training mode (batch statistics, running update)
    /// when `train`.
    pub fn logits(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.head.forward(&self.encoder.forward_t(x, train)?)?)
    }

    /// Scores (row-major `n × classes`) and labels of every image of `dataset` through
    /// `transform` (one view of the encoder's channels at `common.image_size`), BatchNorm in
    /// inference mode. `what` names the set in the error for images skipped as corrupt.
    pub fn scores(
        &self,
        dataset: Arc<dyn Dataset>,
        transform: Arc<dyn Transform>,
        common: &CommonOptions,
        what: &str,
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        let feats = features_of_all(Some(&self.encoder), dataset, transform, common, what)?;
        let cols = feats.features.view().cols();
        let x = Tensor::from_vec(
            feats.features.into_vec(),
            (feats.labels.len(), cols),
            &common.device,
        )?;
        let scores: Vec<f32> = self.head.forward(&x)?.flatten_all()?.to_vec1()?;
        Ok((scores, feats.labels))
    }
}

impl FineTuner<Classifier> {
    /// The encoder of `common` with a new linear head of `classes` outputs.
    pub fn classifier(common: &CommonOptions, sgd: SgdConfig, classes: usize) -> Result<Self> {
        Self::new(common, sgd, |encoder, head| {
            let dim = encoder.config().feature_dim()?;
            let head = Linear::new(&mut head.pp("fc"), dim, classes, true)?;
            Ok(Classifier { encoder, head })
        })
    }

    /// One step of softmax cross-entropy on the images `x` (BatchNorm in training mode) and
    /// their `labels` at learning rate `lr`; returns the loss before the step, an
    /// [`Error::Diverged`] if it is not finite (`context` says where).
    pub fn cross_entropy_step(
        &mut self,
        x: &Tensor,
        labels: &[usize],
        lr: f64,
        context: &dyn Fn() -> String,
    ) -> Result<f64> {
        let logits = self.model.logits(x, true)?;
        let y: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let y = Tensor::from_vec(y, labels.len(), x.device())?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let value = checked_loss(&loss, context)?;
        self.step(&loss, lr)?;
        Ok(value)
    }
}

/// The scalar `loss`, or [`Error::Diverged`] naming `context` when it is not finite.
fn checked_loss(loss: &Tensor, context: &dyn Fn() -> String) -> Result<f64> {
    let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !value.is_finite() {
        return Err(Error::Diverged(format!(
            "fine-tuning loss {value} at {}",
            context()
        )));
    }
    Ok(value)
}

/// The chosen point of a learning rate × weight decay grid.
pub(crate) struct GridChoice {
    pub lr: f64,
    pub weight_decay: f64,
    /// Every point with its validation score (the reports' `grid`).
    pub grid: Vec<GridPoint>,
}

impl GridChoice {
    /// What a fine-tuning report records: the chosen point, its grid and the fixed settings.
    pub(crate) fn report<'a>(
        &'a self,
        ft: &FinetuneOptions,
        batch_size: usize,
        validation: &'a str,
    ) -> FinetuneChoice<'a> {
        FinetuneChoice {
            steps: ft.steps,
            batch_size,
            momentum: ft.momentum,
            lr: self.lr,
            weight_decay: self.weight_decay,
            grid: &self.grid,
            validation,
        }
    }
}

/// Runs `val_score(lr, weight_decay)` over `ft`'s grid and keeps the best (the first of ties).
pub(crate) fn grid_search(
    ft: &FinetuneOptions,
    mut val_score: impl FnMut(f64, f64) -> Result<f64>,
) -> Result<GridChoice> {
    let mut grid = Vec::new();
    for &lr in &ft.lrs {
        for &wd in &ft.weight_decays {
            let v = val_score(lr, wd)?;
            tracing::info!(lr, wd, val = v, "fine-tuning grid point");
            grid.push(GridPoint {
                lr,
                weight_decay: wd,
                val: v,
            });
        }
    }
    let best =
        first_best(&grid, |p| p.val).ok_or_else(|| Error::config("finetune", "empty grid"))?;
    let (lr, weight_decay) = (best.lr, best.weight_decay);
    Ok(GridChoice {
        lr,
        weight_decay,
        grid,
    })
}

/// The point of `points` with the highest `score`, the first of ties (grids are searched in a
/// fixed order, so a tie always resolves the same way).
pub(crate) fn first_best<T>(points: &[T], score: impl Fn(&T) -> f64) -> Option<&T> {
    let mut best: Option<(&T, f64)> = None;
    for p in points {
        let v = score(p);
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((p, v));
        }
    }
    best.map(|(p, _)| p)
}

/// Mean over the kept entries (`keep` = 1) of the sigmoid cross-entropy of `logits` against `y`
/// in {0, 1}, in the stable form `max(x, 0) − x·y + log(1 + e^−|x|)`.
fn sigmoid_cross_entropy(logits: &Tensor, y: &Tensor, keep: &Tensor) -> Result<Tensor> {
    let x = logits;
    let per = ((x.relu()? - (x * y)?)? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let n = keep.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((per * keep)?.sum_all()?.affine(1.0 / n.max(1.0), 0.0)?)
}

/// Fine-tunes a fresh copy of the encoder plus a linear head on `train` for `ft.steps`, returning
/// the test scores on `eval` (row-major `n × classes`) and its labels.
///
/// With `multi_label` (row-major `train.len() × classes` targets 1 / -1 / 0 = difficult) the loss
/// is a per-class sigmoid cross-entropy with difficult entries left out (VOC); otherwise softmax
/// cross-entropy on the dataset's labels.
pub(crate) fn finetune_once(
    train: &Arc<dyn Dataset>,
    eval: &Arc<dyn Dataset>,
    multi_label: Option<&[i8]>,
    lr: f64,
    weight_decay: f64,
    common: &CommonOptions,
    ft: &FinetuneOptions,
) -> Result<(Vec<f32>, Vec<usize>, f64)> {
    let classes = train.num_classes();
    if let Some(t) = multi_label {
        if t.len() != train.len() * classes {
            return Err(Error::Input(format!(
                "{} multi-label targets for {} images × {classes} classes",
                t.len(),
                train.len()
            )));
        }
    }
    let sgd = SgdConfig {
        momentum: ft.momentum,
        nesterov: ft.momentum > 0.0,
        weight_decay,
    };
    let mut tuner = FineTuner::classifier(common, sgd, classes)?;
    let channels = tuner.model.encoder.config().in_channels;
    // Fine-tuning augmentation: random resized crop and flip only.
    let mut aug = eval_augment(common.image_size, channels);
    let view = ViewConfig {
        jitter_prob: 0.0,
        grayscale_prob: 0.0,
        ..ViewConfig::byol(0.0, 0.0)
    };
    aug.view1 = view.clone();
    aug.view2 = view;
    let augmenter = TwoViewAugmenter::new(aug)?;
    let schedule = LrSchedule {
        peak_lr: lr,
        warmup_steps: 0,
        total_steps: ft.steps as u64,
    };
    let (s, bs) = (common.image_size, common.batch_size);
    let view_len = augmenter.view_len();
    let mut rng = ChaCha8Rng::seed_from_u64(common.seed);
    let mut last_loss = f64::NAN;
    let corrupt = CorruptLog::default();
    for step in 0..ft.steps {
        // Corrupt files are skipped as the loader skips them (named once, counted, an error when
        // more than half of those read are corrupt); their slots are drawn again.
        let mut picks: Vec<usize> = (0..bs).map(|_| rng.random_range(0..train.len())).collect();
        let mut batch = Vec::with_capacity(bs);
        while !picks.is_empty() {
            let got = picks
                .par_iter()
                .map(|&i| {
                    let Some(sample) = corrupt.get(train.as_ref(), i, CorruptPolicy::Skip)? else {
                        return Ok(None);
                    };
                    let mut out = vec![0f32; view_len];
                    augmenter.apply(
                        &sample.image,
                        common.seed,
                        step as u64,
                        i as u64,
                        0,
                        &mut out,
                    )?;
                    Ok(Some((out, (i, sample.label))))
                })
                .collect::<Result<Vec<_>>>()?;
            batch.extend(got.into_iter().flatten());
            picks = (batch.len()..bs)
                .map(|_| rng.random_range(0..train.len()))
                .collect();
        }
        let (pixels, meta): (Vec<Vec<f32>>, Vec<(usize, usize)>) = batch.into_iter().unzip();
        let x = Tensor::from_vec(pixels.concat(), (bs, channels, s, s), &common.device)?;
        let context = || format!("step {step} (lr {lr}, wd {weight_decay})");
        let lr_now = schedule.lr(step as u64);
        last_loss = match multi_label {
            None => {
                let labels: Vec<usize> = meta.iter().map(|m| m.1).collect();
                tuner.cross_entropy_step(&x, &labels, lr_now, &context)?
            }
            Some(t) => {
                let pick = |f: fn(i8) -> f32| -> Vec<f32> {
                    meta.iter()
                        .flat_map(|&(i, _)| t[i * classes..(i + 1) * classes].iter().map(|&v| f(v)))
                        .collect()
                };
                let y =
                    Tensor::from_vec(pick(|v| f32::from(v == 1)), (bs, classes), &common.device)?;
                let keep =
                    Tensor::from_vec(pick(|v| f32::from(v != 0)), (bs, classes), &common.device)?;
                let logits = tuner.model.logits(&x, true)?;
                let loss = sigmoid_cross_entropy(&logits, &y, &keep)?;
                let value = checked_loss(&loss, &context)?;
                tuner.step(&loss, lr_now)?;
                value
            }
        };
    }
    let transform = Arc::new(common.eval_transform(channels)?);
    let (scores, labels) = tuner
        .model
        .scores(Arc::clone(eval), transform, common, "evaluation")?;
    Ok((scores, labels, last_loss))
}
