//! The ImageNet linear-evaluation protocol (BYOL, App. C.1): a linear head on the frozen
//! encoder's pooled features of random-crop + flip views, SGD with Nesterov momentum, cosine
//! learning rate, no weight decay; the learning rate is chosen on a held-out split of train.
//!
//! The encoder pass dominates the cost, so every candidate learning rate trains on the same
//! augmented features: per rate, one head on train minus the held-out split (for selection)
//! and one on all of train (the head reported). One encoder pass per epoch serves them all.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};

use crate::data::loader::{Loader, LoaderConfig, Transform};
use crate::data::{Dataset, Subset};
use crate::eval::features::{extract, FeaturePass, LabelledFeatures};
use crate::eval::metrics;
use crate::eval::split::train_val_split;
use crate::nn::layers::Linear;
use crate::nn::{FrozenEncoder, Precision, ResNet, VarStore};
use crate::optim::{Sgd, SgdConfig};
use crate::{Error, Result};

/// The paper's learning-rate sweep (at batch 1024).
pub const PAPER_LEARNING_RATES: [f64; 5] = [0.4, 0.3, 0.2, 0.1, 0.05];

#[derive(Debug, Clone, PartialEq)]
pub struct SgdProbeOptions {
    pub learning_rates: Vec<f64>,
    pub epochs: usize,
    pub batch_size: usize,
    /// Fraction of train held out to choose the learning rate.
    pub val_fraction: f64,
    pub seed: u64,
    pub workers: usize,
    pub sgd: SgdConfig,
}

impl Default for SgdProbeOptions {
    /// The paper's protocol: batch 1024, 80 epochs, Nesterov 0.9, no weight decay.
    fn default() -> Self {
        Self {
            learning_rates: PAPER_LEARNING_RATES.to_vec(),
            epochs: 80,
            batch_size: 1024,
            val_fraction: 0.1,
            seed: 0,
            workers: 4,
            sgd: SgdConfig::default(),
        }
    }
}

impl SgdProbeOptions {
    pub fn validate(&self) -> Result<()> {
        if self.learning_rates.is_empty() {
            return Err(Error::config("learning_rates", "needs at least one value"));
        }
        if let Some(lr) = self
            .learning_rates
            .iter()
            .find(|lr| !(lr.is_finite() && **lr > 0.0))
        {
            return Err(Error::config(
                "learning_rates",
                format!("{lr} is not a positive number"),
            ));
        }
        if self.epochs == 0 {
            return Err(Error::config("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::config("batch_size", "must be at least 1"));
        }
        Sgd::new(self.sgd).map(|_| ())
    }
}

/// What the protocol runs on.
pub struct SgdProbeData<'a> {
    pub encoder: &'a ResNet,
    pub train: Arc<dyn Dataset>,
    pub test: Arc<dyn Dataset>,
    /// Random crop + flip (e.g. [`crate::data::pipeline::OneViewAugmenter::crop_and_flip`]).
    pub train_transform: Arc<dyn Transform>,
    /// Centre crop, for the held-out split and test.
    pub eval_transform: Arc<dyn Transform>,
    /// (channels, height, width) of one view.
    pub view_shape: (usize, usize, usize),
    pub classes: usize,
}

/// Held-out accuracy of one candidate learning rate.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LrCandidate {
    pub lr: f64,
    pub val_top1: f64,
}

#[derive(Debug, Clone)]
pub struct SgdProbeResult {
    pub best_lr: f64,
    pub candidates: Vec<LrCandidate>,
    /// Test scores of the head trained on all of train with `best_lr`, [test, classes].
    pub test_scores: Vec<f32>,
    pub test_labels: Vec<usize>,
    pub feature_dim: usize,
    pub train_size: usize,
    pub val_size: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HeadSplit {
    /// Trained on train minus the held-out split.
    Selection,
    /// Trained on all of train.
    Final,
}

struct Head {
    store: VarStore,
    linear: Linear,
    sgd: Sgd,
    lr: f64,
    split: HeadSplit,
}

impl Head {
    fn new(
        dim: usize,
        classes: usize,
        lr: f64,
        split: HeadSplit,
        opts: &SgdProbeOptions,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let mut store = VarStore::new(device, seed);
        let linear = Linear::new(&mut store.root(), dim, classes, true)?;
        Ok(Self {
            store,
            linear,
            sgd: Sgd::new(opts.sgd)?,
            lr,
            split,
        })
    }

    fn scores(&self, x: &LabelledFeatures, device: &Device) -> Result<Vec<f32>> {
        let v = x.features.view();
        let t = Tensor::from_slice(v.data(), (v.rows(), v.cols()), device)?;
        Ok(self.linear.forward(&t)?.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// Runs the protocol; `on_epoch(epoch, mean loss of the final heads)` reports progress.
pub fn sgd_probe(
    data: &SgdProbeData,
    opts: &SgdProbeOptions,
    device: &Device,
    on_epoch: &mut dyn FnMut(usize, f64),
) -> Result<SgdProbeResult> {
    opts.validate()?;
    let classes = data.classes;
    if classes < 2 {
        return Err(Error::Input(format!(
            "the linear head needs at least 2 classes, the dataset has {classes}"
        )));
    }
    let n = data.train.len();
    let (_, val_idx) = train_val_split(n, opts.val_fraction, opts.seed)?;
    let mut held_out = vec![false; n];
    for &i in &val_idx {
        held_out[i] = true;
    }
    let eval_features = |set: Arc<dyn Dataset>| {
        extract(&FeaturePass {
            encoder: Some(data.encoder),
            dataset: set,
            transform: Arc::clone(&data.eval_transform),
            view_shape: data.view_shape,
            batch_size: opts.batch_size,
            workers: opts.workers,
            device,
            precision: Precision::F32,
        })
    };
    let val = eval_features(Arc::new(Subset::new(
        Arc::clone(&data.train),
        val_idx.clone(),
    )?))?;
    let test = eval_features(Arc::clone(&data.test))?;
    let dim = val.features.view().cols();
    for (split, labels) in [("train", &val.labels), ("test", &test.labels)] {
        if let Some(&l) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::Input(format!(
                "{split} label {l} is out of range for {classes} classes"
            )));
        }
    }

    let mut heads = Vec::with_capacity(2 * opts.learning_rates.len());
    for &lr in &opts.learning_rates {
        for split in [HeadSplit::Selection, HeadSplit::Final] {
            // Same initialisation for every head, as separate runs with one seed would have.
            heads.push(Head::new(dim, classes, lr, split, opts, device, opts.seed)?);
        }
    }

    let (c, h, w) = data.view_shape;
    let view_len = c * h * w;
    let loader = Loader::new(
        Arc::clone(&data.train),
        Arc::clone(&data.train_transform),
        LoaderConfig {
            shuffle: true,
            drop_last: false,
            seed: opts.seed,
            workers: opts.workers,
            ..LoaderConfig::new(opts.batch_size, 1, view_len)
        },
    )?;
    let total_steps = (opts.epochs * n.div_ceil(opts.batch_size)) as f64;
    let mut step = 0usize;
    let encoder = FrozenEncoder::new(data.encoder, Precision::F32, device)?;
    for epoch in 0..opts.epochs {
        let (mut loss_sum, mut batches) = (0.0, 0usize);
        for batch in loader.epoch(epoch)? {
            let batch = batch?;
            let m = batch.len();
            if m == 0 {
                continue;
            }
            let features = encoder.forward_tensor(&batch.view(0)[..m * view_len], (m, c, h, w))?;
            if let Some(&l) = batch.labels().iter().find(|&&l| l >= classes) {
                return Err(Error::Input(format!(
                    "train label {l} is out of range for {classes} classes"
                )));
            }
            let targets: Vec<u32> = batch.labels().iter().map(|&l| l as u32).collect();
            let targets = Tensor::from_vec(targets, (m, 1), device)?;
            let keep: Vec<f32> = batch
                .indices()
                .iter()
                .map(|&i| if held_out[i] { 0.0 } else { 1.0 })
                .collect();
            let kept = keep.iter().sum::<f32>();
            let keep = Tensor::from_vec(keep, m, device)?;

            let mut total: Option<Tensor> = None;
            let mut final_loss = 0.0;
            for head in &heads {
                let logp = candle_nn::ops::log_softmax(&head.linear.forward(&features)?, 1)?;
                let nll = logp.gather(&targets, 1)?.squeeze(1)?.neg()?;
                let loss = match head.split {
                    HeadSplit::Final => nll.mean(0)?,
                    HeadSplit::Selection if kept > 0.0 => {
                        (nll * &keep)?.sum(0)?.affine(1.0 / kept as f64, 0.0)?
                    }
                    HeadSplit::Selection => continue,
                };
                if head.split == HeadSplit::Final {
                    final_loss += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                }
                total = Some(match total {
                    Some(t) => (t + loss)?,
                    None => loss,
                });
            }
            let Some(total) = total else { continue };
            let grads = total.backward()?;
            let factor = 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total_steps).cos());
            for head in &mut heads {
                head.sgd.step(&head.store, &grads, head.lr * factor)?;
            }
            loss_sum += final_loss / opts.learning_rates.len() as f64;
            batches += 1;
            step += 1;
        }
        let mean = loss_sum / batches.max(1) as f64;
        if !mean.is_finite() {
            return Err(Error::Diverged(format!(
                "linear head loss is {mean} at epoch {epoch}: lower the learning rates"
            )));
        }
        on_epoch(epoch, mean);
    }

    let mut candidates = Vec::with_capacity(opts.learning_rates.len());
    let (mut best, mut best_acc) = (0usize, f64::NEG_INFINITY);
    for (k, head) in heads
        .iter()
        .filter(|h| h.split == HeadSplit::Selection)
        .enumerate()
    {
        let acc = metrics::top1_accuracy(&head.scores(&val, device)?, &val.labels, classes)?;
        if acc > best_acc {
            (best, best_acc) = (k, acc);
        }
        candidates.push(LrCandidate {
            lr: head.lr,
            val_top1: acc,
        });
    }
    let final_head = heads
        .iter()
        .filter(|h| h.split == HeadSplit::Final)
        .nth(best)
        .ok_or_else(|| Error::Input("no final head".into()))?;
    Ok(SgdProbeResult {
        best_lr: final_head.lr,
        candidates,
        test_scores: final_head.scores(&test, device)?,
        test_labels: test.labels,
        feature_dim: dim,
        train_size: n,
        val_size: val_idx.len(),
    })
}
