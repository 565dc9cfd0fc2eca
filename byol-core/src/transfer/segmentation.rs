//! VOC2012 semantic segmentation: an FCN head on the encoder, encoder and head fine-tuned with
//! SGD, pixel cross-entropy ignoring the void label 255; mIoU over the 21 classes.
//!
//! The head follows torchvision's `FCNHead` (3×3 conv to a quarter of the channels, BN, ReLU,
//! 1×1 conv with bias; no dropout) on the stride-16 map: `layer4`, bilinearly upsampled to
//! `layer3`'s size, concatenated with `layer3` (an FCN-16s-style skip instead of dilating the
//! last stage, which our convolutions do not support). Logits are bilinearly upsampled to the
//! input size before the loss ([`crate::nn::resize`]).
//!
//! Training views: the image scaled so its shorter side is the crop size times a random factor
//! (`scale_range`), a random `size × size` window (padding: mean pixel, void mask), random
//! horizontal flip; the image resampled bilinearly, the mask by nearest neighbour. Evaluation:
//! the whole image scaled to fit the window, the predicted labels mapped back by nearest
//! neighbour and scored on the original-resolution mask. Before training, every listed image and
//! mask is checked from its file header (present, same size).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, ModuleT, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::augment::{IMAGENET_MEAN, IMAGENET_STD};
use crate::data::voc::{find_voc_dir, read_mask, VocSegmentation, VOC_CLASSES};
use crate::data::Image;
use crate::eval::metrics::{SegConfusion, IGNORE_LABEL};
use crate::nn::layers::Conv2d;
use crate::nn::resize::resize_bilinear;
use crate::nn::{BatchNorm, ResNet, Role, VarPath};
use crate::optim::SgdConfig;
use crate::transfer::finetune::FineTuner;
use crate::transfer::paper::PAPER_VOC_SEG_MIOU;
use crate::transfer::report::{record, ClassScore, SegmentationChoice, TransferReport};
use crate::transfer::CommonOptions;
use crate::{Error, Result};

/// Background plus the 20 VOC classes: the 21 mask labels.
pub const SEG_CLASSES: usize = 21;

/// Learning-rate decay over the fine-tuning steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrPolicy {
    /// `lr · (1 − t/T)^0.9`, the usual segmentation schedule.
    Poly,
    Cosine,
}

impl std::str::FromStr for LrPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "poly" => Ok(LrPolicy::Poly),
            "cosine" => Ok(LrPolicy::Cosine),
            _ => Err(Error::config(
                "lr-schedule",
                format!("`{s}`: use poly or cosine"),
            )),
        }
    }
}

impl LrPolicy {
    pub fn lr(self, base: f64, step: usize, total: usize) -> f64 {
        let t = step as f64 / total.max(1) as f64;
        match self {
            LrPolicy::Poly => base * (1.0 - t).max(0.0).powf(0.9),
            LrPolicy::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
        }
    }
}

/// Settings of [`run_segmentation`].
#[derive(Debug, Clone)]
pub struct SegOptions {
    /// `image_size` is the training crop and evaluation window side.
    pub common: CommonOptions,
    pub steps: usize,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub schedule: LrPolicy,
    /// Random scale factors of the training views.
    pub scale_range: [f64; 2],
    pub train_split: String,
    pub val_split: String,
    /// Score at most this many validation images (all by default).
    pub max_val_images: Option<usize>,
}

impl SegOptions {
    pub fn new(common: CommonOptions) -> Self {
        Self {
            common,
            steps: 30_000,
            lr: 0.01,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
            schedule: LrPolicy::Poly,
            scale_range: [0.5, 2.0],
            train_split: "train".into(),
            val_split: "val".into(),
            max_val_images: None,
        }
    }
}

/// torchvision's `FCNHead` without dropout, on concatenated `layer3` and upsampled `layer4`.
#[derive(Debug, Clone)]
pub struct FcnHead {
    conv: Conv2d,
    bn: BatchNorm,
    classifier: Conv2d,
    bias: Var,
}

impl FcnHead {
    /// Tensors `0.weight`, `1.*` (BN), `4.weight`, `4.bias` under `vs`, as torchvision names
    /// `classifier.*` of `fcn_resnet50`.
    pub fn new(vs: &mut VarPath, in_channels: usize, classes: usize) -> Result<Self> {
        let inter = (in_channels / 4).max(1);
        let conv = Conv2d::new(&mut vs.pp(0), in_channels, inter, 3, 1, 1)?;
        let bn = BatchNorm::new(&mut vs.pp(1), inter, false)?;
        let classifier = Conv2d::new(&mut vs.pp(4), inter, classes, 1, 1, 0)?;
        let bias = vs.pp(4).constant("bias", &[classes], 0.0, Role::Bias)?;
        Ok(Self {
            conv,
            bn,
            classifier,
            bias,
        })
    }

    /// Logits at the resolution of `layer3`.
    pub fn forward_t(&self, layer3: &Tensor, layer4: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = layer3.dims4()?;
        let up = resize_bilinear(layer4, h, w)?;
        let x = Tensor::cat(&[layer3, &up], 1)?;
        let x = self
            .bn
            .forward_t(&candle_core::Module::forward(&self.conv, &x)?, train)?
            .relu()?;
        let y = candle_core::Module::forward(&self.classifier, &x)?;
        Ok(y.broadcast_add(&self.bias.as_tensor().reshape((1, (), 1, 1))?)?)
    }
}

/// Encoder + FCN head: `[N, 3, H, W]` → logits `[N, 21, H, W]`.
pub struct FcnModel {
    pub encoder: ResNet,
    pub head: FcnHead,
}

impl FcnModel {
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let stages = self.encoder.forward_features(x, train)?;
        let logits = self.head.forward_t(&stages[2], &stages[3], train)?;
        resize_bilinear(&logits, h, w)
    }
}

/// Mean cross-entropy of `logits` `[N, C, H, W]` over the pixels whose label (`N·H·W`, row-major)
/// is not [`IGNORE_LABEL`]; also returns the number of such pixels.
pub fn pixel_cross_entropy(logits: &Tensor, labels: &[u32]) -> Result<(Tensor, usize)> {
    let (n, c, h, w) = logits.dims4()?;
    if labels.len() != n * h * w {
        return Err(Error::Input(format!(
            "{} labels for {n}×{h}×{w} pixels",
            labels.len()
        )));
    }
    if let Some(&bad) = labels
        .iter()
        .find(|&&l| l != IGNORE_LABEL && l as usize >= c)
    {
        return Err(Error::Input(format!(
            "mask label {bad} is neither a class (0..{c}) nor the void label {IGNORE_LABEL}"
        )));
    }
    let dev = logits.device();
    let flat = logits
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((n * h * w, c))?;
    let logp = candle_nn::ops::log_softmax(&flat, D::Minus1)?;
    let idx: Vec<u32> = labels
        .iter()
        .map(|&l| if l == IGNORE_LABEL { 0 } else { l })
        .collect();
    let keep: Vec<f32> = labels
        .iter()
        .map(|&l| if l == IGNORE_LABEL { 0.0 } else { 1.0 })
        .collect();
    let count = keep.iter().filter(|&&k| k > 0.0).count();
    let idx = Tensor::from_vec(idx, (n * h * w, 1), dev)?;
    let keep = Tensor::from_vec(keep, n * h * w, dev)?;
    let picked = logp.gather(&idx, 1)?.squeeze(1)?;
    let loss = (picked * keep)?
        .sum_all()?
        .affine(-1.0 / count.max(1) as f64, 0.0)?;
    Ok((loss, count))
}

/// Where the scaled image sits in the window.
#[derive(Debug, Clone, Copy)]
struct Placement {
    /// Scale from source to window pixels.
    k: f64,
    /// Window origin in scaled-image pixels.
    left: f64,
    top: f64,
    flip: bool,
}

/// Resamples `img` (bilinear, normalised CHW) and `mask` (nearest, 255 outside) into `s × s`.
fn warp(img: &Image, mask: Option<&Image>, p: Placement, s: usize) -> (Vec<f32>, Vec<u32>) {
    let (w, h, ch) = (img.width, img.height, img.channels);
    let mut out = vec![0f32; 3 * s * s];
    let mut labels = vec![IGNORE_LABEL; if mask.is_some() { s * s } else { 0 }];
    let (sw, sh) = (p.k * w as f64, p.k * h as f64);
    for oy in 0..s {
        let v = p.top + oy as f64 + 0.5;
        if v < 0.0 || v >= sh {
            continue;
        }
        let sy = (v / p.k - 0.5).clamp(0.0, (h - 1) as f64);
        let y0 = sy.floor() as usize;
        let y1 = (y0 + 1).min(h - 1);
        let fy = (sy - y0 as f64) as f32;
        let my = ((v / p.k) as usize).min(h - 1);
        for ox in 0..s {
            let xs = if p.flip { s - 1 - ox } else { ox };
            let u = p.left + xs as f64 + 0.5;
            if u < 0.0 || u >= sw {
                continue;
            }
            let sx = (u / p.k - 0.5).clamp(0.0, (w - 1) as f64);
            let x0 = sx.floor() as usize;
            let x1 = (x0 + 1).min(w - 1);
            let fx = (sx - x0 as f64) as f32;
            for c in 0..3 {
                let sc = if ch == 1 { 0 } else { c };
                let px = |y: usize, x: usize| img.data[(y * w + x) * ch + sc] as f32;
                let top = px(y0, x0) * (1.0 - fx) + px(y0, x1) * fx;
                let bot = px(y1, x0) * (1.0 - fx) + px(y1, x1) * fx;
                let val = (top * (1.0 - fy) + bot * fy) / 255.0;
                out[c * s * s + oy * s + ox] = (val - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
            if let Some(m) = mask {
                let mx = ((u / p.k) as usize).min(w - 1);
                labels[oy * s + ox] = m.data[my * w + mx] as u32;
            }
        }
    }
    (out, labels)
}

/// `(width, height)` from the header of a JPEG or PNG file (sniffed, not taken from the name).
fn image_size(path: &Path) -> Result<(usize, usize)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.starts_with(&[0xFF, 0xD8]) {
        let mut d = zune_jpeg::JpegDecoder::new(std::io::Cursor::new(&bytes));
        d.decode_headers()
            .map_err(|e| Error::format(path, format!("bad JPEG: {e:?}")))?;
        d.dimensions()
            .ok_or_else(|| Error::format(path, "JPEG without dimensions"))
    } else {
        let reader = png::Decoder::new(std::io::Cursor::new(&bytes))
            .read_info()
            .map_err(|e| Error::format(path, format!("neither a JPEG nor a readable PNG: {e}")))?;
        let info = reader.info();
        Ok((info.width as usize, info.height as usize))
    }
}

/// Checks every listed pair from the file headers before training: both files exist and the
/// sizes agree, so a dataset error stops the run in seconds rather than hours in.
fn preflight(dir: &Path, ds: &VocSegmentation) -> Result<()> {
    (0..ds.len()).into_par_iter().try_for_each(|i| {
        let id = ds.image_id(i).unwrap_or_default();
        let image = dir.join("JPEGImages").join(format!("{id}.jpg"));
        let mask = dir.join("SegmentationClass").join(format!("{id}.png"));
        let (iw, ih) = image_size(&image)?;
        let (mw, mh) = image_size(&mask)?;
        if (iw, ih) != (mw, mh) {
            return Err(Error::Dataset(format!(
                "{}: mask is {mw}x{mh} but its image is {iw}x{ih}",
                mask.display()
            )));
        }
        Ok(())
    })
}

/// A mask value that is neither a class nor void is a dataset error: name the file.
fn check_labels(mask: &Image, path: &Path) -> Result<()> {
    match mask
        .data
        .iter()
        .find(|&&v| v as u32 != IGNORE_LABEL && v as usize >= SEG_CLASSES)
    {
        // Dataset, as for a mask of the wrong size: never skipped as a corrupt sample.
        Some(v) => Err(Error::Dataset(format!(
            "{}: mask value {v} is neither a class (0..{SEG_CLASSES}) nor void (255)",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Random training placement: shorter side to `s · r`, random window, random flip.
fn train_placement(
    rng: &mut ChaCha8Rng,
    w: usize,
    h: usize,
    s: usize,
    range: [f64; 2],
) -> Placement {
    let r = range[0] + (range[1] - range[0]) * rng.random::<f64>();
    let k = s as f64 * r / w.min(h) as f64;
    let mut offset = |extent: f64| {
        let slack = extent - s as f64;
        let (lo, hi) = (slack.min(0.0), slack.max(0.0));
        lo + (hi - lo) * rng.random::<f64>()
    };
    let left = offset(k * w as f64);
    let top = offset(k * h as f64);
    Placement {
        k,
        left,
        top,
        flip: rng.random::<f64>() < 0.5,
    }
}

/// Fine-tunes encoder + FCN head on VOC2012 `train_split` and scores `val_split`.
pub fn run_segmentation(root: &Path, opts: &SegOptions) -> Result<TransferReport> {
    let start = Instant::now();
    let common = &opts.common;
    common.validate()?;
    if opts.steps == 0 {
        return Err(Error::config("steps", "must be at least 1"));
    }
    if !(opts.scale_range[0] > 0.0 && opts.scale_range[0] <= opts.scale_range[1]) {
        return Err(Error::config(
            "scale-range",
            format!("{:?} is not 0 < min ≤ max", opts.scale_range),
        ));
    }
    let dir = find_voc_dir(root, "2012")?;
    let train = VocSegmentation::open(&dir, &opts.train_split)?;
    let val = VocSegmentation::open(&dir, &opts.val_split)?;
    let list = |split: &str| dir.join(format!("ImageSets/Segmentation/{split}.txt"));
    if train.is_empty() || val.is_empty() {
        let split = if train.is_empty() {
            &opts.train_split
        } else {
            &opts.val_split
        };
        return Err(Error::format(list(split), "lists no image"));
    }
    preflight(&dir, &train)?;
    preflight(&dir, &val)?;
    let sgd = SgdConfig {
        momentum: opts.momentum,
        nesterov: opts.nesterov,
        weight_decay: opts.weight_decay,
    };
    let mut tuner = FineTuner::new(common, sgd, |encoder, head| {
        if encoder.config().in_channels != 3 {
            return Err(Error::config(
                "weights",
                "segmentation needs an RGB (3-channel) encoder",
            ));
        }
        let ch = encoder.stage_channels()?;
        let head = FcnHead::new(&mut head.pp("classifier"), ch[2] + ch[3], SEG_CLASSES)?;
        Ok(FcnModel { encoder, head })
    })?;

    // Every training mask is read once before step 1: a label outside the classes is a dataset
    // error that would otherwise stop the run at whichever step first draws it.
    (0..train.len()).into_par_iter().try_for_each(|i| {
        let path = train.mask_path(i)?;
        check_labels(&read_mask(&path)?, &path)
    })?;
    let (s, bs) = (common.image_size, common.batch_size);
    let mut rng = ChaCha8Rng::seed_from_u64(common.seed);
    let mut losses = Vec::with_capacity(opts.steps);
    for step in 0..opts.steps {
        // Indices and placements drawn on one thread so a seed fixes the run; decoding in parallel.
        let picks: Vec<usize> = (0..bs).map(|_| rng.random_range(0..train.len())).collect();
        let seeds: Vec<u64> = (0..bs).map(|_| rng.random()).collect();
        let samples = picks
            .par_iter()
            .zip(&seeds)
            .map(|(&i, &seed)| {
                let sample = train.get(i)?;
                let mut r = ChaCha8Rng::seed_from_u64(seed);
                let p = train_placement(
                    &mut r,
                    sample.image.width,
                    sample.image.height,
                    s,
                    opts.scale_range,
                );
                Ok(warp(&sample.image, Some(&sample.mask), p, s))
            })
            .collect::<Result<Vec<_>>>()?;
        let (pixels, labels): (Vec<Vec<f32>>, Vec<Vec<u32>>) = samples.into_iter().unzip();
        let x = Tensor::from_vec(pixels.concat(), (bs, 3, s, s), &common.device)?;
        let logits = tuner.model.forward_t(&x, true)?;
        let (loss, count) = pixel_cross_entropy(&logits, &labels.concat())?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(Error::Diverged(format!(
                "segmentation loss {value} at step {step}"
            )));
        }
        losses.push(value);
        if count > 0 {
            tuner.step(&loss, opts.schedule.lr(opts.lr, step, opts.steps))?;
        }
        if step % 50 == 0 || step + 1 == opts.steps {
            tracing::info!(step, loss = value, "segmentation fine-tuning");
        }
    }

    let model = &tuner.model;
    let n_val = opts.max_val_images.map_or(val.len(), |m| m.min(val.len()));
    let mut confusion = SegConfusion::new(SEG_CLASSES)?;
    for chunk in (0..n_val).collect::<Vec<_>>().chunks(bs) {
        let items = chunk
            .par_iter()
            .map(|&i| {
                let sample = val.get(i)?;
                let (w, h) = (sample.image.width, sample.image.height);
                let k = s as f64 / w.max(h) as f64;
                let p = Placement {
                    k,
                    left: 0.0,
                    top: 0.0,
                    flip: false,
                };
                let (pixels, _) = warp(&sample.image, None, p, s);
                Ok((pixels, sample.mask, k))
            })
            .collect::<Result<Vec<_>>>()?;
        let flat: Vec<f32> = items.iter().flat_map(|it| it.0.iter().copied()).collect();
        let x = Tensor::from_vec(flat, (items.len(), 3, s, s), &common.device)?;
        let pred: Vec<u32> = model
            .forward_t(&x, false)?
            .argmax(1)?
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1()?;
        for (j, (_, mask, k)) in items.iter().enumerate() {
            let map = &pred[j * s * s..(j + 1) * s * s];
            let (w, h) = (mask.width, mask.height);
            let mut full = Vec::with_capacity(w * h);
            for y in 0..h {
                let oy = (((y as f64 + 0.5) * k) as usize).min(s - 1);
                for x in 0..w {
                    let ox = (((x as f64 + 0.5) * k) as usize).min(s - 1);
                    full.push(map[oy * s + ox]);
                }
            }
            let truth: Vec<u32> = mask.data.iter().map(|&v| v as u32).collect();
            confusion.update(&truth, &full, IGNORE_LABEL).map_err(|e| {
                Error::Dataset(format!(
                    "{}: {e}",
                    dir.join("SegmentationClass")
                        .join(format!("{}.png", val.image_id(chunk[j]).unwrap_or("?")))
                        .display()
                ))
            })?;
        }
    }
    let scores = confusion.scores()?;

    let mut hyper = BTreeMap::new();
    record(
        &mut hyper,
        &SegmentationChoice {
            steps: opts.steps,
            batch_size: bs,
            lr: opts.lr,
            lr_schedule: format!("{:?}", opts.schedule).to_lowercase(),
            momentum: opts.momentum,
            nesterov: opts.nesterov,
            weight_decay: opts.weight_decay,
            scale_range: opts.scale_range,
            crop_size: s,
            head: "FCN (torchvision FCNHead) on layer3 ⊕ up(layer4), stride 16",
            seed: common.seed,
        },
    )?;
    let mut splits = BTreeMap::new();
    splits.insert(opts.train_split.clone(), train.len());
    splits.insert(opts.val_split.clone(), n_val);
    let tail = losses.len().min(10);
    let mut extra = BTreeMap::new();
    extra.insert("pixel_accuracy".to_string(), scores.pixel_accuracy);
    extra.insert("first_loss".to_string(), losses[0]);
    extra.insert(
        "final_loss".to_string(),
        losses[losses.len() - tail..].iter().sum::<f64>() / tail as f64,
    );
    let names = std::iter::once("background").chain(VOC_CLASSES.iter().copied());
    Ok(TransferReport {
        task: "voc-seg".into(),
        protocol: "VOC2012 segmentation: FCN head, encoder + head fine-tuned with SGD, pixel \
                   cross-entropy ignoring 255, mIoU over 21 classes on the original-resolution \
                   val masks"
            .into(),
        dataset: "voc2012".into(),
        dataset_root: dir,
        splits,
        weights: common.weights_info()?,
        image_size: s,
        hyperparameters: hyper,
        metric: "mIoU".into(),
        value: scores.miou,
        paper: Some(PAPER_VOC_SEG_MIOU),
        per_class: names
            .zip(scores.per_class_iou)
            .map(|(c, v)| ClassScore {
                class: c.to_string(),
                value: v,
            })
            .collect(),
        extra,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_ignores_void_pixels() {
        // Two pixels, 2 classes; the second is void and must not count.
        let logits = Tensor::new(&[0f32, 0., 5., -5.], &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 1, 2))
            .unwrap();
        let (loss, n) = pixel_cross_entropy(&logits, &[1, IGNORE_LABEL]).unwrap();
        let v = loss.to_scalar::<f32>().unwrap();
        // Pixel 0: logits (0, 5) → −log softmax[1] = log(1 + e^−5).
        assert_eq!(n, 1);
        assert!((v - (1.0 + (-5f32).exp()).ln()).abs() < 1e-5, "{v}");
        assert!(pixel_cross_entropy(&logits, &[7, 0]).is_err());
    }

    #[test]
    fn warp_keeps_mask_labels_exact() {
        let img = Image::new(2, 2, 3, vec![0; 12]).unwrap();
        let mask = Image::new(2, 2, 1, vec![1, 2, 3, 255]).unwrap();
        let p = Placement {
            k: 2.0,
            left: 0.0,
            top: 0.0,
            flip: true,
        };
        let (_, m) = warp(&img, Some(&mask), p, 4);
        assert_eq!(m, [2, 2, 1, 1, 2, 2, 1, 1, 255, 255, 3, 3, 255, 255, 3, 3]);
    }
}
