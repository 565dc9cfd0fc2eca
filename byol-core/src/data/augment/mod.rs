//! BYOL's two-view augmentation pipeline (Grill et al. 2020, table 6 and the official JAX code)
//! and the evaluation transform, from a decoded [`Image`] to normalised f32 CHW in a
//! caller-provided slot.
//!
//! Per view, in this order: random resized crop (bicubic) -> horizontal flip -> colour jitter
//! (random order of brightness, contrast, saturation, hue) -> grayscale -> Gaussian blur ->
//! solarize -> normalise. Semantics are torchvision's, not the JAX code's:
//! - crop: `RandomResizedCrop`'s algorithm (10 tries with area in `crop_scale` and log-uniform
//!   aspect ratio in `crop_ratio`, then the central-crop fallback); the crop is resized with the
//!   antialiased Catmull-Rom bicubic of PIL / torchvision (`fast_image_resize`), pixels outside
//!   the crop are never read;
//! - colour jitter: `ColorJitter`'s formulas: brightness, contrast and saturation factors uniform
//!   in `[max(0, 1 - s), 1 + s]`, multiplicative brightness, contrast blended with the mean of the
//!   greyscale image, saturation blended with the per-pixel grey, hue shifted by a uniform
//!   `[-h, h]` turn in HSV; every op clamps to [0, 1]. The JAX code instead adds a brightness
//!   delta and blends contrast per channel; we follow torchvision, which most reproductions use.
//!   Ops run in f32 on [0, 1] values with no rounding to u8 between them (torchvision on u8
//!   tensors rounds after each op; the difference is below one grey level);
//! - grayscale: `0.2989 R + 0.5870 G + 0.1140 B`, replicated to the output channels;
//! - blur: torchvision's `GaussianBlur` (kernel `kernel_size`, reflect padding) with taps below
//!   1e-5 of the peak dropped and the rest renormalised (see [`pixels::gaussian_taps`]);
//! - solarize: `x >= threshold -> 1 - x` on [0, 1] values.
//!
//! One-channel (grey) input: brightness and contrast act on the single channel (contrast blends
//! with its mean), saturation, hue and grayscale are identities, as in torchvision. The output
//! has `out_channels` channels (1 or 3): grey input is replicated to 3, RGB input is reduced to
//! grey with the weights above when 1 channel is asked.
//!
//! Determinism: every random draw of view `v` of image `i` in epoch `e` comes from
//! [`view_rng`]`(seed, e, i, v)`, a ChaCha8 stream keyed by those four numbers, so the views do not
//! depend on thread count, batch composition or timing.

mod pixels;

use std::cell::RefCell;

use fast_image_resize as fr;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use pixels::gaussian_taps;
use pixels::ColorOp;

use super::Image;
use crate::{Error, Result};

/// ImageNet channel means (RGB), used by every preset.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The random augmentations of one view. Probabilities are in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    /// Range of the crop area as a fraction of the image area.
    pub crop_scale: [f64; 2],
    /// Range of the crop aspect ratio (width / height), sampled log-uniformly.
    pub crop_ratio: [f64; 2],
    pub flip_prob: f64,
    /// Probability that the colour jitter (all four ops, in random order) is applied.
    pub jitter_prob: f64,
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    /// Maximum hue shift in turns, at most 0.5.
    pub hue: f32,
    pub grayscale_prob: f64,
    pub blur_prob: f64,
    /// Range of the blur sigma in pixels of the output crop.
    pub blur_sigma: [f32; 2],
    /// Blur kernel side as a fraction of the output side, made odd (0.1 at 224 gives 23).
    pub blur_kernel_frac: f64,
    pub solarize_prob: f64,
    pub solarize_threshold: f32,
}

impl ViewConfig {
    /// BYOL's view with the given blur and solarize probabilities.
    pub fn byol(blur_prob: f64, solarize_prob: f64) -> Self {
        Self {
            crop_scale: [0.08, 1.0],
            crop_ratio: [3.0 / 4.0, 4.0 / 3.0],
            flip_prob: 0.5,
            jitter_prob: 0.8,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.2,
            hue: 0.1,
            grayscale_prob: 0.2,
            blur_prob,
            blur_sigma: [0.1, 2.0],
            blur_kernel_frac: 0.1,
            solarize_prob,
            solarize_threshold: 0.5,
        }
    }

    /// The blur kernel side for an output of `size` pixels: `floor(frac * size)`, made odd.
    pub fn blur_kernel_size(&self, size: usize) -> usize {
        let k = (self.blur_kernel_frac * size as f64).floor().max(1.0) as usize;
        if k.is_multiple_of(2) {
            k + 1
        } else {
            k
        }
    }

    fn validate(&self, field: &str) -> Result<()> {
        let f = |name: &str| format!("{field}.{name}");
        let prob = |name: &str, p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err(Error::config(
                    f(name),
                    format!("a probability in [0, 1], got {p}"),
                ))
            }
        };
        let [s0, s1] = self.crop_scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return Err(Error::config(
                f("crop_scale"),
                format!("needs 0 < min <= max <= 1, got [{s0}, {s1}]"),
            ));
        }
        let [r0, r1] = self.crop_ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return Err(Error::config(
                f("crop_ratio"),
                format!("needs 0 < min <= max, finite, got [{r0}, {r1}]"),
            ));
        }
        prob("flip_prob", self.flip_prob)?;
        prob("jitter_prob", self.jitter_prob)?;
        prob("grayscale_prob", self.grayscale_prob)?;
        prob("blur_prob", self.blur_prob)?;
        prob("solarize_prob", self.solarize_prob)?;
        for (name, v) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::config(f(name), format!("needs >= 0, got {v}")));
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return Err(Error::config(
                f("hue"),
                format!("needs 0 <= hue <= 0.5, got {}", self.hue),
            ));
        }
        let [b0, b1] = self.blur_sigma;
        if !(b0 > 0.0 && b0 <= b1 && b1.is_finite()) {
            return Err(Error::config(
                f("blur_sigma"),
                format!("needs 0 < min <= max, finite, got [{b0}, {b1}]"),
            ));
        }
        if !(self.blur_kernel_frac > 0.0 && self.blur_kernel_frac <= 1.0) {
            return Err(Error::config(
                f("blur_kernel_frac"),
                format!("needs 0 < frac <= 1, got {}", self.blur_kernel_frac),
            ));
        }
        if !(0.0..=1.0).contains(&self.solarize_threshold) {
            return Err(Error::config(
                f("solarize_threshold"),
                format!("needs [0, 1], got {}", self.solarize_threshold),
            ));
        }
        Ok(())
    }
}

/// Which of a recipe's operations a run keeps (the augmentation ablations of the paper).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AugmentSet {
    /// Every operation of the recipe.
    #[default]
    Full,
    /// Random resized crop and horizontal flip only.
    CropFlip,
    /// Random resized crop only.
    Crop,
}

impl AugmentSet {
    pub const NAMES: [&'static str; 3] = ["full", "crop-flip", "crop"];
}

impl std::str::FromStr for AugmentSet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(Self::Full),
            "crop-flip" => Ok(Self::CropFlip),
            "crop" => Ok(Self::Crop),
            other => Err(Error::config(
                "augmentations",
                format!("`{other}`: use one of {}", Self::NAMES.join(", ")),
            )),
        }
    }
}

/// The whole augmentation setup: output geometry, normalisation, the two views and the
/// evaluation resize.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Output side S (views and evaluation crops are S x S).
    pub size: usize,
    /// Output channels, 1 or 3.
    pub out_channels: usize,
    /// Per output channel mean and std of the normalisation (`out_channels` values each).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Evaluation: the shorter side is resized to `round(size * eval_resize_ratio)` before the
    /// centre crop (256/224 in the standard protocol).
    pub eval_resize_ratio: f64,
    pub view1: ViewConfig,
    pub view2: ViewConfig,
}

impl AugmentConfig {
    /// BYOL's ImageNet recipe at output side `size` (224 in the paper): view 1 always blurred,
    /// never solarized; view 2 blurred with p 0.1, solarized with p 0.2.
    pub fn byol_imagenet(size: usize) -> Self {
        Self {
            size,
            out_channels: 3,
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
            eval_resize_ratio: 256.0 / 224.0,
            view1: ViewConfig::byol(1.0, 0.0),
            view2: ViewConfig::byol(0.1, 0.2),
        }
    }

    /// The small-image recipe (CIFAR, STL at 32-64 px, Fashion-MNIST) of solo-learn: BYOL's
    /// views without blur (at 32 px a tenth of the side is a 3-tap kernel, and blur hurts there).
    /// Outputs 3 channels with ImageNet statistics; grey input is replicated.
    pub fn small_image(size: usize) -> Self {
        Self {
            view1: ViewConfig::byol(0.0, 0.0),
            view2: ViewConfig::byol(0.0, 0.2),
            ..Self::byol_imagenet(size)
        }
    }

    /// The same recipe with only the operations of `set` left (the paper's augmentation
    /// ablations, Table 17): crop sizes, normalisation and output are kept.
    pub fn restricted_to(mut self, set: AugmentSet) -> Self {
        for view in [&mut self.view1, &mut self.view2] {
            if set != AugmentSet::Full {
                view.jitter_prob = 0.0;
                view.grayscale_prob = 0.0;
                view.blur_prob = 0.0;
                view.solarize_prob = 0.0;
            }
            if set == AugmentSet::Crop {
                view.flip_prob = 0.0;
            }
        }
        self
    }

    /// Checks every field; the error names the field at fault (`augment.<field>`).
    pub fn validate(&self) -> Result<()> {
        if !(1..=16384).contains(&self.size) {
            return Err(Error::config(
                "augment.size",
                format!("needs 1..=16384, got {}", self.size),
            ));
        }
        if self.out_channels != 1 && self.out_channels != 3 {
            return Err(Error::config(
                "augment.out_channels",
                format!("needs 1 or 3, got {}", self.out_channels),
            ));
        }
        for (name, v) in [("augment.mean", &self.mean), ("augment.std", &self.std)] {
            if v.len() != self.out_channels {
                return Err(Error::config(
                    name,
                    format!(
                        "needs one value per output channel ({}), got {}",
                        self.out_channels,
                        v.len()
                    ),
                ));
            }
        }
        if let Some(s) = self.std.iter().find(|s| !(**s > 0.0 && s.is_finite())) {
            return Err(Error::config("augment.std", format!("needs > 0, got {s}")));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(Error::config(
                "augment.mean",
                format!("needs finite, got {m}"),
            ));
        }
        if !(self.eval_resize_ratio >= 1.0 && self.eval_resize_ratio <= 16.0) {
            return Err(Error::config(
                "augment.eval_resize_ratio",
                format!("needs 1 <= ratio <= 16, got {}", self.eval_resize_ratio),
            ));
        }
        self.view1.validate("augment.view1")?;
        self.view2.validate("augment.view2")
    }

    /// Values in one output slot: `out_channels * size * size`.
    pub fn view_len(&self) -> usize {
        self.out_channels * self.size * self.size
    }

    /// `(scale, bias)` per output channel with `(x - mean) / std = x * scale + bias`.
    fn norm_maps(&self) -> Vec<(f32, f32)> {
        self.mean
            .iter()
            .zip(&self.std)
            .map(|(&m, &s)| (1.0 / s, -m / s))
            .collect()
    }
}

/// A crop rectangle in source pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropRect {
    pub left: usize,
    pub top: usize,
    pub width: usize,
    pub height: usize,
}

/// The order of the colour-jitter ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JitterOp {
    Brightness,
    Contrast,
    Saturation,
    Hue,
}

/// Sampled colour-jitter factors. An op whose strength is 0 in the config is `None` (skipped,
/// as torchvision does).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterParams {
    pub order: [JitterOp; 4],
    pub brightness: Option<f32>,
    pub contrast: Option<f32>,
    pub saturation: Option<f32>,
    pub hue: Option<f32>,
}

/// The Gaussian blur of one view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlurParams {
    pub sigma: f32,
    pub kernel_size: usize,
}

/// Everything random about one view, drawn by [`TwoViewAugmenter::sample_params`] and applied by
/// [`TwoViewAugmenter::apply_params`].
#[derive(Debug, Clone, PartialEq)]
pub struct ViewParams {
    pub crop: CropRect,
    pub flip: bool,
    pub jitter: Option<JitterParams>,
    pub grayscale: bool,
    pub blur: Option<BlurParams>,
    /// The solarize threshold when solarize fires.
    pub solarize: Option<f32>,
}

/// The RNG of view `view` of image `index` in `epoch`: ChaCha8 keyed by the four numbers, so
/// distinct tuples give independent streams.
pub fn view_rng(seed: u64, epoch: u64, index: u64, view: usize) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (chunk, v) in key
        .chunks_exact_mut(8)
        .zip([seed, epoch, index, view as u64])
    {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

fn uniform<R: Rng + ?Sized>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// torchvision's `RandomResizedCrop.get_params` on a `width` x `height` image (Python's
/// `round`, half to even, included).
pub fn sample_crop<R: Rng + ?Sized>(
    rng: &mut R,
    width: usize,
    height: usize,
    scale: [f64; 2],
    ratio: [f64; 2],
) -> CropRect {
    let area = (width * height) as f64;
    let (lr0, lr1) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale[0], scale[1]);
        let aspect = uniform(rng, lr0, lr1).exp();
        let w = (target * aspect).sqrt().round_ties_even() as usize;
        let h = (target / aspect).sqrt().round_ties_even() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return CropRect {
                left,
                top,
                width: w,
                height: h,
            };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio[0] {
        (width, (width as f64 / ratio[0]).round_ties_even() as usize)
    } else if in_ratio > ratio[1] {
        (
            (height as f64 * ratio[1]).round_ties_even() as usize,
            height,
        )
    } else {
        (width, height)
    };
    let (w, h) = (w.clamp(1, width), h.clamp(1, height));
    CropRect {
        left: (width - w) / 2,
        top: (height - h) / 2,
        width: w,
        height: h,
    }
}

/// Draws the random parameters of one view from `rng` for a `width` x `height` source image.
pub fn sample_view<R: Rng + ?Sized>(
    cfg: &ViewConfig,
    size: usize,
    width: usize,
    height: usize,
    rng: &mut R,
) -> ViewParams {
    let crop = sample_crop(rng, width, height, cfg.crop_scale, cfg.crop_ratio);
    let flip = rng.random::<f64>() < cfg.flip_prob;
    let jitter = (rng.random::<f64>() < cfg.jitter_prob).then(|| {
        let mut order = [
            JitterOp::Brightness,
            JitterOp::Contrast,
            JitterOp::Saturation,
            JitterOp::Hue,
        ];
        for i in (1..4).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let mut factor = |s: f32| {
            (s > 0.0).then(|| uniform(rng, (1.0 - s as f64).max(0.0), 1.0 + s as f64) as f32)
        };
        let brightness = factor(cfg.brightness);
        let contrast = factor(cfg.contrast);
        let saturation = factor(cfg.saturation);
        let hue = (cfg.hue > 0.0).then(|| uniform(rng, -cfg.hue as f64, cfg.hue as f64) as f32);
        JitterParams {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        }
    });
    let grayscale = rng.random::<f64>() < cfg.grayscale_prob;
    let blur = (rng.random::<f64>() < cfg.blur_prob).then(|| BlurParams {
        sigma: uniform(rng, cfg.blur_sigma[0] as f64, cfg.blur_sigma[1] as f64) as f32,
        kernel_size: cfg.blur_kernel_size(size),
    });
    let solarize = (rng.random::<f64>() < cfg.solarize_prob).then_some(cfg.solarize_threshold);
    ViewParams {
        crop,
        flip,
        jitter,
        grayscale,
        blur,
        solarize,
    }
}

/// Reusable per-thread buffers: the views are produced by many loader threads, and large
/// per-call allocations would cost page faults each time.
#[derive(Default)]
struct Scratch {
    resizer: fr::Resizer,
    resized: Vec<u8>,
    planes: Vec<f32>,
    tmp: Vec<f32>,
    row: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn check_image(img: &Image) -> Result<()> {
    if img.channels != 1 && img.channels != 3 {
        return Err(Error::Input(format!(
            "augment: images have 1 or 3 channels, got {}",
            img.channels
        )));
    }
    if img.width == 0
        || img.height == 0
        || img.width > u32::MAX as usize
        || img.height > u32::MAX as usize
    {
        return Err(Error::Input(format!(
            "augment: image of {}x{} has no pixels or is too large",
            img.width, img.height
        )));
    }
    if img.data.len() != img.width * img.height * img.channels {
        return Err(Error::Input(format!(
            "augment: image of {}x{}x{} needs {} bytes, got {}",
            img.width,
            img.height,
            img.channels,
            img.width * img.height * img.channels,
            img.data.len()
        )));
    }
    Ok(())
}

fn check_out(out: &[f32], want: usize, what: &str) -> Result<()> {
    if out.len() != want {
        return Err(Error::Input(format!(
            "{what}: output slot holds {} values, needs out_channels * size * size = {want}",
            out.len()
        )));
    }
    Ok(())
}

/// Crops `rect` out of `img` and resizes it to `out_w` x `out_h` with antialiased bicubic
/// (Catmull-Rom, PIL's BICUBIC), into `dst` (interleaved u8, `img.channels` per pixel).
fn crop_resize(
    resizer: &mut fr::Resizer,
    img: &Image,
    rect: CropRect,
    out_w: usize,
    out_h: usize,
    dst: &mut Vec<u8>,
) -> Result<()> {
    let pt = if img.channels == 1 {
        fr::PixelType::U8
    } else {
        fr::PixelType::U8x3
    };
    let err = |e: &dyn std::fmt::Display| Error::Input(format!("augment: resize failed: {e}"));
    let src = fr::images::ImageRef::new(img.width as u32, img.height as u32, &img.data, pt)
        .map_err(|e| err(&e))?;
    let cropped = fr::images::CroppedImage::new(
        &src,
        rect.left as u32,
        rect.top as u32,
        rect.width as u32,
        rect.height as u32,
    )
    .map_err(|e| err(&e))?;
    dst.resize(out_w * out_h * img.channels, 0);
    let mut dst_img = fr::images::Image::from_slice_u8(out_w as u32, out_h as u32, dst, pt)
        .map_err(|e| err(&e))?;
    let opts = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom))
        .use_alpha(false);
    resizer
        .resize(&cropped, &mut dst_img, &opts)
        .map_err(|e| err(&e))
}

/// BYOL's two-view augmentation. Cheap to share between threads (`&self` everywhere; scratch
/// buffers are per thread).
#[derive(Debug, Clone)]
pub struct TwoViewAugmenter {
    cfg: AugmentConfig,
    maps: Vec<(f32, f32)>,
}

impl TwoViewAugmenter {
    /// Validates `cfg`.
    pub fn new(cfg: AugmentConfig) -> Result<Self> {
        cfg.validate()?;
        let maps = cfg.norm_maps();
        Ok(Self { cfg, maps })
    }

    pub fn config(&self) -> &AugmentConfig {
        &self.cfg
    }

    /// Values in one view slot: `out_channels * size * size`.
    pub fn view_len(&self) -> usize {
        self.cfg.view_len()
    }

    fn view_cfg(&self, view: usize) -> Result<&ViewConfig> {
        match view {
            0 => Ok(&self.cfg.view1),
            1 => Ok(&self.cfg.view2),
            _ => Err(Error::Input(format!("augment: view is 0 or 1, got {view}"))),
        }
    }

    /// The parameters of view `view` (0 or 1) for a `width` x `height` image, drawn from `rng`.
    pub fn sample_params<R: Rng + ?Sized>(
        &self,
        view: usize,
        width: usize,
        height: usize,
        rng: &mut R,
    ) -> Result<ViewParams> {
        let cfg = self.view_cfg(view)?;
        if width == 0 || height == 0 {
            return Err(Error::Input(format!(
                "augment: image of {width}x{height} has no pixels"
            )));
        }
        Ok(sample_view(cfg, self.cfg.size, width, height, rng))
    }

    /// Writes view `view` (0 or 1) of `img`, the `index`-th image of `epoch`, into `out`
    /// (`out_channels x size x size`, normalised). The result depends only on
    /// `(seed, epoch, index, view)` and the image.
    pub fn apply(
        &self,
        img: &Image,
        seed: u64,
        epoch: u64,
        index: u64,
        view: usize,
        out: &mut [f32],
    ) -> Result<()> {
        check_image(img)?;
        let mut rng = view_rng(seed, epoch, index, view);
        let params = self.sample_params(view, img.width, img.height, &mut rng)?;
        self.apply_params(img, &params, out)
    }

    /// Both views of `img` into `out1` and `out2`.
    pub fn apply_pair(
        &self,
        img: &Image,
        seed: u64,
        epoch: u64,
        index: u64,
        out1: &mut [f32],
        out2: &mut [f32],
    ) -> Result<()> {
        self.apply(img, seed, epoch, index, 0, out1)?;
        self.apply(img, seed, epoch, index, 1, out2)
    }

    /// Applies already drawn parameters (the pixel half of [`Self::apply`]).
    pub fn apply_params(&self, img: &Image, p: &ViewParams, out: &mut [f32]) -> Result<()> {
        check_image(img)?;
        check_out(out, self.view_len(), "augment")?;
        let c = p.crop;
        if c.width == 0
            || c.height == 0
            || c.left + c.width > img.width
            || c.top + c.height > img.height
        {
            return Err(Error::Input(format!(
                "augment: crop {c:?} outside the {}x{} image",
                img.width, img.height
            )));
        }
        if let Some(b) = p.blur {
            if !(b.sigma > 0.0 && b.sigma.is_finite()) {
                return Err(Error::Input(format!(
                    "augment: blur sigma needs > 0, got {}",
                    b.sigma
                )));
            }
        }
        if let Some(h) = p.jitter.and_then(|j| j.hue) {
            if !(-0.5..=0.5).contains(&h) {
                return Err(Error::Input(format!(
                    "augment: hue shift needs [-0.5, 0.5], got {h}"
                )));
            }
        }
        let s = self.cfg.size;
        let len = s * s;
        SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            let sc = &mut *guard;
            crop_resize(&mut sc.resizer, img, c, s, s, &mut sc.resized)?;
            let wc = img.channels;
            sc.planes.resize(wc * len, 0.0);
            pixels::load_planes(&sc.resized, wc, s, p.flip, &mut sc.planes);

            // Colour ops, split at contrast: its mean is over the image as it is before it.
            let mut ops_a: Vec<ColorOp> = Vec::with_capacity(6);
            let mut ops_b: Vec<ColorOp> = Vec::with_capacity(6);
            let mut contrast: Option<f32> = None;
            if let Some(j) = &p.jitter {
                for op in j.order {
                    let dst = if contrast.is_some() {
                        &mut ops_b
                    } else {
                        &mut ops_a
                    };
                    match op {
                        JitterOp::Brightness => {
                            dst.extend(j.brightness.map(ColorOp::Brightness));
                        }
                        JitterOp::Saturation => {
                            dst.extend(j.saturation.map(ColorOp::Saturation));
                        }
                        JitterOp::Hue => dst.extend(j.hue.map(ColorOp::Hue)),
                        JitterOp::Contrast => contrast = j.contrast,
                    }
                }
            }
            let collapse = wc == 3 && (p.grayscale || self.cfg.out_channels == 1);
            let last = if contrast.is_some() {
                &mut ops_b
            } else {
                &mut ops_a
            };
            if collapse {
                last.push(ColorOp::Grey);
            }
            let nplanes = if collapse { 1 } else { wc };
            if let Some(factor) = contrast {
                let sum = pixels::color_pass(&mut sc.planes, wc, len, &ops_a, true);
                let mean = (sum / len as f64) as f32;
                ops_b.insert(0, ColorOp::Contrast { factor, mean });
                pixels::color_pass(&mut sc.planes, wc, len, &ops_b, false);
            } else if !ops_a.is_empty() {
                pixels::color_pass(&mut sc.planes, wc, len, &ops_a, false);
            }

            let taps = match p.blur {
                Some(b) => gaussian_taps(b.sigma, b.kernel_size),
                None => vec![1.0],
            };
            let oc = self.cfg.out_channels;
            const SINGLE: [[usize; 1]; 3] = [[0], [1], [2]];
            for (pl, single) in SINGLE.iter().enumerate().take(nplanes) {
                let targets: &[usize] = match (nplanes, oc) {
                    (1, 3) => &[0, 1, 2],
                    (1, 1) => &[0],
                    _ => single,
                };
                let maps: Vec<(f32, f32)> = targets.iter().map(|&t| self.maps[t]).collect();
                pixels::finish_plane(
                    &sc.planes[pl * len..(pl + 1) * len],
                    s,
                    &taps,
                    p.solarize,
                    &maps,
                    targets,
                    out,
                    &mut sc.tmp,
                    &mut sc.row,
                );
            }
            Ok(())
        })
    }
}

/// The evaluation transform: resize the shorter side to `round(size * eval_resize_ratio)`
/// (bicubic, keeping the aspect ratio as torchvision's `Resize(int)` does), centre crop
/// `size`, normalise.
#[derive(Debug, Clone)]
pub struct EvalTransform {
    cfg: AugmentConfig,
    maps: Vec<(f32, f32)>,
}

impl EvalTransform {
    /// Uses `size`, `out_channels`, `mean`, `std` and `eval_resize_ratio` of `cfg`.
    pub fn new(cfg: AugmentConfig) -> Result<Self> {
        cfg.validate()?;
        let maps = cfg.norm_maps();
        Ok(Self { cfg, maps })
    }

    /// Values in one output slot: `out_channels * size * size`.
    pub fn view_len(&self) -> usize {
        self.cfg.view_len()
    }

    /// The resized `(width, height)` of a `w` x `h` image (torchvision: the longer side is
    /// truncated, `int(resize * long / short)`).
    pub fn resized_dims(&self, w: usize, h: usize) -> (usize, usize) {
        let r = (self.cfg.size as f64 * self.cfg.eval_resize_ratio).round() as usize;
        if w <= h {
            (r, ((r * h) as f64 / w as f64) as usize)
        } else {
            (((r * w) as f64 / h as f64) as usize, r)
        }
    }

    pub fn apply(&self, img: &Image, out: &mut [f32]) -> Result<()> {
        check_image(img)?;
        check_out(out, self.view_len(), "eval transform")?;
        let s = self.cfg.size;
        let (rw, rh) = self.resized_dims(img.width, img.height);
        let full = CropRect {
            left: 0,
            top: 0,
            width: img.width,
            height: img.height,
        };
        SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            let sc = &mut *guard;
            crop_resize(&mut sc.resizer, img, full, rw, rh, &mut sc.resized)?;
            // torchvision's CenterCrop offsets (Python's round: half to even).
            let top = ((rh - s) as f64 / 2.0).round_ties_even() as usize;
            let left = ((rw - s) as f64 / 2.0).round_ties_even() as usize;
            let c = img.channels;
            let len = s * s;
            for y in 0..s {
                let row = &sc.resized[((top + y) * rw + left) * c..((top + y) * rw + left + s) * c];
                for x in 0..s {
                    let px = &row[x * c..(x + 1) * c];
                    let rgb = if c == 1 {
                        [px[0] as f32 / 255.0; 3]
                    } else {
                        [
                            px[0] as f32 / 255.0,
                            px[1] as f32 / 255.0,
                            px[2] as f32 / 255.0,
                        ]
                    };
                    if self.cfg.out_channels == 1 {
                        let g = if c == 1 {
                            rgb[0]
                        } else {
                            pixels::GREY_R * rgb[0]
                                + pixels::GREY_G * rgb[1]
                                + pixels::GREY_B * rgb[2]
                        };
                        out[y * s + x] = g * self.maps[0].0 + self.maps[0].1;
                    } else {
                        for ch in 0..3 {
                            out[ch * len + y * s + x] = rgb[ch] * self.maps[ch].0 + self.maps[ch].1;
                        }
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
