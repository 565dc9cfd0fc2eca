//! ResNet v1 encoders (depths 10–200, width multipliers, ImageNet or small-image stem) with
//! torchvision's tensor names, so a torchvision state dict loads as is and ours loads in
//! torchvision. The classifier `fc` is absent: the encoder ends at global average pooling.
//!
//! Like torchvision (v1.5) and the official BYOL Haiku code, a bottleneck block strides in its
//! 3×3 convolution. The width multiplier scales every channel count, stem included, as in BYOL's
//! ResNet-50 (2×) and (4×).

use candle_core::{Module, ModuleT, Tensor};
use serde::{Deserialize, Serialize};

use byol_kernels::{FrozenConv, FrozenOp};

use super::layers::Conv2d;
use super::norm::BatchNorm;
use super::var_store::VarPath;
use crate::{Error, Result};

/// The first layers of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stem {
    /// 7×7 stride-2 convolution and 3×3 stride-2 max-pool (224 px inputs).
    Imagenet,
    /// 3×3 stride-1 convolution and no max-pool (28–64 px inputs, as CIFAR ResNets).
    Small,
    /// 3×3 stride-2 convolution and no max-pool: small images on a small compute budget. At
    /// twice the channels of `Small` a stage costs the same convolution FLOPs on a quarter of
    /// the positions (half the activation memory), and the features are twice as wide.
    SmallStrided,
    /// 3×3 stride-1 convolution with padding 2 and no max-pool: solo-learn's CIFAR ResNets
    /// (`nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2)`, solo/methods/base.py), whose
    /// feature maps are 2 pixels larger than the input; imported checkpoints only.
    SmallPadded,
}

impl std::str::FromStr for Stem {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "imagenet" => Ok(Stem::Imagenet),
            "small" | "cifar" => Ok(Stem::Small),
            "small-strided" => Ok(Stem::SmallStrided),
            "small-padded" => Ok(Stem::SmallPadded),
            _ => Err(Error::config(
                "stem",
                format!(
                    "`{s}` is not a stem: use `imagenet`, `small`, `small-strided` or \
                     `small-padded`"
                ),
            )),
        }
    }
}

/// How convolutions and the stem max-pool pad their input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Padding {
    /// PyTorch: `(k − 1) / 2` on every side (torchvision, our own training).
    #[default]
    Torch,
    /// TensorFlow/Haiku `SAME`: output `⌈n / stride⌉`, the total padding split with the extra
    /// row/column at the end, so stride-2 layers on even sizes pad only bottom/right. The official
    /// BYOL checkpoints need it to give their features.
    TfSame,
}

/// The shape of a ResNet encoder. Stored in checkpoint metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    /// 10, 18, 26, 34, 50, 101, 152 or 200 (10: one basic block a stage, the small-image
    /// preset's; 26: bottleneck blocks 2-2-2-2, VISSL's "resnet" of depth 18).
    pub depth: usize,
    /// Channel multiplier: 1, 2 or 4 in the paper.
    pub width: usize,
    pub stem: Stem,
    /// 1 (greyscale) or 3 (RGB).
    pub in_channels: usize,
    /// Channels of the stem before the width multiplier: 64 as in the paper; smaller values give
    /// the narrow networks used by fast tests.
    #[serde(default = "default_base_channels")]
    pub base_channels: usize,
    /// Zero-initialise the last BatchNorm scale of every residual block.
    #[serde(default)]
    pub zero_init_residual: bool,
    /// Padding convention (absent in older files: PyTorch's).
    #[serde(default)]
    pub padding: Padding,
}

fn default_base_channels() -> usize {
    64
}

/// One ResNet depth we build: blocks per stage and block type (torchvision's layouts; 10 and 26
/// are the narrow-network variants of the same families).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResNetDepth {
    pub(crate) depth: usize,
    pub(crate) blocks: [usize; 4],
    pub(crate) bottleneck: bool,
}

/// Every depth [`ResNetConfig`] builds; the architecture inference reads the same table.
pub(crate) const RESNET_DEPTHS: [ResNetDepth; 8] = [
    ResNetDepth::basic(10, [1, 1, 1, 1]),
    ResNetDepth::basic(18, [2, 2, 2, 2]),
    ResNetDepth::bottleneck(26, [2, 2, 2, 2]),
    ResNetDepth::basic(34, [3, 4, 6, 3]),
    ResNetDepth::bottleneck(50, [3, 4, 6, 3]),
    ResNetDepth::bottleneck(101, [3, 4, 23, 3]),
    ResNetDepth::bottleneck(152, [3, 8, 36, 3]),
    ResNetDepth::bottleneck(200, [3, 24, 36, 3]),
];

impl ResNetDepth {
    const fn basic(depth: usize, blocks: [usize; 4]) -> Self {
        Self {
            depth,
            blocks,
            bottleneck: false,
        }
    }

    const fn bottleneck(depth: usize, blocks: [usize; 4]) -> Self {
        Self {
            depth,
            blocks,
            bottleneck: true,
        }
    }

    /// A block's output channels per `planes`: 4 for bottlenecks, 1 for basic blocks.
    pub(crate) const fn expansion(&self) -> usize {
        if self.bottleneck {
            4
        } else {
            1
        }
    }
}

/// "10, 18, …, 152 or 200", for error messages.
pub(crate) fn resnet_depth_list() -> String {
    let depths: Vec<String> = RESNET_DEPTHS.iter().map(|d| d.depth.to_string()).collect();
    let (last, rest) = depths.split_last().expect("RESNET_DEPTHS is not empty");
    format!("{} or {last}", rest.join(", "))
}

impl ResNetConfig {
    /// The encoders the step benchmarks time, by name: `r18-small` (ResNet-18, small stem) and
    /// `r50-imagenet` (ResNet-50, ImageNet stem).
    pub fn benchmark(name: &str) -> Result<Self> {
        match name {
            "r18-small" => Ok(Self {
                stem: Stem::Small,
                ..Self::new(18)
            }),
            "r50-imagenet" => Ok(Self::new(50)),
            other => Err(Error::config(
                "model",
                format!("`{other}`: use r18-small or r50-imagenet"),
            )),
        }
    }

    /// A paper-width ResNet of the given depth, ImageNet stem, RGB input.
    pub fn new(depth: usize) -> Self {
        Self {
            depth,
            width: 1,
            stem: Stem::Imagenet,
            in_channels: 3,
            base_channels: 64,
            zero_init_residual: false,
            padding: Padding::Torch,
        }
    }

    /// The table's row for this depth: blocks per stage and whether blocks are bottlenecks.
    fn layout(&self) -> Result<ResNetDepth> {
        RESNET_DEPTHS
            .iter()
            .find(|d| d.depth == self.depth)
            .copied()
            .ok_or_else(|| {
                Error::config(
                    "depth",
                    format!(
                        "ResNet-{} does not exist: use {}",
                        self.depth,
                        resnet_depth_list()
                    ),
                )
            })
    }

    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        self.layout()?;
        if self.width == 0 {
            return Err(Error::config("width", "the width multiplier must be ≥ 1"));
        }
        if self.in_channels != 1 && self.in_channels != 3 {
            return Err(Error::config(
                "in_channels",
                format!("{} input channels: use 1 or 3", self.in_channels),
            ));
        }
        if self.base_channels == 0 {
            return Err(Error::config("base_channels", "must be ≥ 1"));
        }
        // The widest tensor is layer4's bottleneck output (base·width·8·4 channels): refuse a
        // product that overflows instead of wrapping or panicking later.
        self.base_channels
            .checked_mul(self.width)
            .and_then(|c| c.checked_mul(8 * 4))
            .ok_or_else(|| {
                Error::config(
                    "width",
                    format!(
                        "base_channels {} × width {} is out of range",
                        self.base_channels, self.width
                    ),
                )
            })?;
        Ok(())
    }

    /// Shapes of two tensors that together pin down the whole architecture: the stem convolution
    /// (`[base·width, in_channels, k, k]`) and the last BatchNorm of `layer4` (feature width).
    /// A weights file is checked against them before the model is allocated, so metadata alone
    /// can never make us reserve memory that the file's own tensors do not back.
    pub fn key_tensor_shapes(&self) -> Result<[(String, Vec<usize>); 2]> {
        self.validate()?;
        let ResNetDepth {
            blocks, bottleneck, ..
        } = self.layout()?;
        let k = match self.stem {
            Stem::Imagenet => 7,
            Stem::Small | Stem::SmallStrided | Stem::SmallPadded => 3,
        };
        let base = self.base_channels * self.width;
        let last = format!(
            "layer4.{}.bn{}.weight",
            blocks[3] - 1,
            if bottleneck { 3 } else { 2 }
        );
        Ok([
            ("conv1.weight".into(), vec![base, self.in_channels, k, k]),
            (last, vec![self.feature_dim()?]),
        ])
    }

    /// Length of the pooled feature vector (2048 for ResNet-50, 512 for ResNet-18).
    pub fn feature_dim(&self) -> Result<usize> {
        Ok(self.base_channels * self.width * 8 * self.layout()?.expansion())
    }
}

#[derive(Debug, Clone)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    /// This layer, BatchNorm folded, as a frozen convolution from register `src` to `dst`.
    fn frozen(&self, src: usize, dst: usize, relu: bool, sum: bool) -> Result<FrozenConv> {
        let (weight, stride, pad, tf_same) = self.conv.parts();
        let (_, cin, kernel, _) = weight.dims4()?;
        let (weight, bias) = self.bn.fold_into(weight)?;
        Ok(FrozenConv {
            src,
            dst,
            cout: bias.len(),
            weight,
            bias,
            cin,
            kernel,
            stride,
            pad,
            tf_same,
            relu,
            sum,
        })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.bn.forward_t(&self.conv.forward(xs)?, train)
    }

    /// `relu(bn(conv(xs)))`, BatchNorm and ReLU fused on the fast backend.
    fn forward_relu(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.bn.forward_relu(&self.conv.forward(xs)?, train)
    }
}

/// A residual block: the basic (two 3×3) or bottleneck (1×1, 3×3, 1×1) branch plus shortcut.
#[derive(Debug, Clone)]
struct Block {
    /// (conv, bn) pairs of the branch; the last BN is the one zero-init touches.
    branch: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn new(
        vs: &mut VarPath,
        in_ch: usize,
        planes: usize,
        stride: usize,
        bottleneck: bool,
        zero_init: bool,
        padding: Padding,
    ) -> Result<Self> {
        // (kernel, stride, padding, in, out) of each branch convolution.
        let out_ch = if bottleneck { planes * 4 } else { planes };
        let convs: Vec<(usize, usize, usize, usize, usize)> = if bottleneck {
            vec![
                (1, 1, 0, in_ch, planes),
                (3, stride, 1, planes, planes),
                (1, 1, 0, planes, out_ch),
            ]
        } else {
            vec![(3, stride, 1, in_ch, planes), (3, 1, 1, planes, planes)]
        };
        let last = convs.len();
        let mut branch = Vec::with_capacity(last);
        for (i, &(k, s, p, cin, cout)) in convs.iter().enumerate() {
            let conv = Conv2d::new(&mut vs.pp(format!("conv{}", i + 1)), cin, cout, k, s, p)?
                .with_tf_same(padding == Padding::TfSame);
            let bn = BatchNorm::new(
                &mut vs.pp(format!("bn{}", i + 1)),
                cout,
                zero_init && i + 1 == last,
            )?;
            branch.push(ConvBn { conv, bn });
        }
        let downsample = if stride != 1 || in_ch != out_ch {
            let mut ds = vs.pp("downsample");
            let conv = Conv2d::new(&mut ds.pp(0), in_ch, out_ch, 1, stride, 0)?
                .with_tf_same(padding == Padding::TfSame);
            let bn = BatchNorm::new(&mut ds.pp(1), out_ch, false)?;
            Some(ConvBn { conv, bn })
        } else {
            None
        };
        Ok(Self { branch, downsample })
    }

    /// The block as frozen ops from register `x` (its input, which it overwrites with its
    /// output unless there is a downsample branch) using `free` registers; returns the output's.
    fn frozen(&self, x: usize, free: [usize; 3], ops: &mut Vec<FrozenOp>) -> Result<usize> {
        let Some((last, inner)) = self.branch.split_last() else {
            return Err(Error::Input("a residual block without convolutions".into()));
        };
        let [a, b, shortcut] = free;
        // The shortcut first, where the last convolution will accumulate onto it.
        let out = match &self.downsample {
            Some(ds) => {
                ops.push(FrozenOp::Conv(ds.frozen(x, shortcut, false, false)?));
                shortcut
            }
            None => x,
        };
        let mut src = x;
        for (i, cb) in inner.iter().enumerate() {
            let dst = if i % 2 == 0 { a } else { b };
            ops.push(FrozenOp::Conv(cb.frozen(src, dst, true, false)?));
            src = dst;
        }
        ops.push(FrozenOp::Conv(last.frozen(src, out, true, true)?));
        Ok(out)
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let Some((last, inner)) = self.branch.split_last() else {
            candle_core::bail!("a residual block without convolutions")
        };
        let mut ys = xs.clone();
        for cb in inner {
            ys = cb.forward_relu(&ys, train)?;
        }
        let shortcut = match &self.downsample {
            Some(ds) => ds.forward_t(xs, train)?,
            None => xs.clone(),
        };
        // relu(bn(conv(ys)) + shortcut), the add and ReLU fused into the BatchNorm when fast.
        last.bn
            .forward_add_relu(&last.conv.forward(&ys)?, &shortcut, train)
    }
}

/// A ResNet v1 encoder: image batch `[N, C, H, W]` → pooled features `[N, feature_dim]`.
#[derive(Debug, Clone)]
pub struct ResNet {
    config: ResNetConfig,
    stem: ConvBn,
    stages: Vec<Vec<Block>>,
}

impl ResNet {
    /// Creates the encoder's tensors under `vs` (names `conv1.weight`, `layer1.0.bn1.weight`, …).
    pub fn new(vs: &mut VarPath, config: &ResNetConfig) -> Result<Self> {
        config.validate()?;
        let layout = config.layout()?;
        let ResNetDepth {
            blocks, bottleneck, ..
        } = layout;
        let base = config.base_channels * config.width;
        let (k, s, p) = match config.stem {
            Stem::Imagenet => (7, 2, 3),
            Stem::Small => (3, 1, 1),
            Stem::SmallStrided => (3, 2, 1),
            Stem::SmallPadded => (3, 1, 2),
        };
        let stem = ConvBn {
            conv: Conv2d::new(&mut vs.pp("conv1"), config.in_channels, base, k, s, p)?
                .with_tf_same(config.padding == Padding::TfSame),
            bn: BatchNorm::new(&mut vs.pp("bn1"), base, false)?,
        };
        let expansion = layout.expansion();
        let mut in_ch = base;
        let mut stages = Vec::with_capacity(4);
        for (stage, &n) in blocks.iter().enumerate() {
            let planes = base << stage;
            let mut layer = vs.pp(format!("layer{}", stage + 1));
            let mut stage_blocks = Vec::with_capacity(n);
            for b in 0..n {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                stage_blocks.push(Block::new(
                    &mut layer.pp(b),
                    in_ch,
                    planes,
                    stride,
                    bottleneck,
                    config.zero_init_residual,
                    config.padding,
                )?);
                in_ch = planes * expansion;
            }
            stages.push(stage_blocks);
        }
        Ok(Self {
            config: config.clone(),
            stem,
            stages,
        })
    }

    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// The outputs of the four stages (`layer1`..`layer4`, strides 4/8/16/32 with the ImageNet
    /// stem, 1/2/4/8 with the small and small padded ones, 2/4/8/16 with the small strided one),
    /// before pooling: dense heads (segmentation) read them.
    pub fn forward_features(&self, xs: &Tensor, train: bool) -> candle_core::Result<Vec<Tensor>> {
        let mut ys = self.stem.forward_relu(xs, train)?;
        if self.config.stem == Stem::Imagenet {
            ys = max_pool_3x3_s2(&ys, self.config.padding)?;
        }
        let mut outs = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            for block in stage {
                ys = block.forward_t(&ys, train)?;
            }
            outs.push(ys.clone());
        }
        Ok(outs)
    }

    /// The encoder in inference mode (running statistics) as frozen ops for
    /// `byol_kernels::FrozenNet`: every BatchNorm folded into its convolution, ReLU and the
    /// residual add as the convolutions' post-ops, ending in the global average pool.
    pub fn frozen_ops(&self) -> Result<Vec<FrozenOp>> {
        let mut ops = Vec::new();
        // Register 0 is the input; 1–4 hold activations in turn.
        ops.push(FrozenOp::Conv(self.stem.frozen(0, 1, true, false)?));
        let mut x = 1;
        if self.config.stem == Stem::Imagenet {
            ops.push(FrozenOp::MaxPool3x3s2 {
                src: 1,
                dst: 2,
                tf_same: self.config.padding == Padding::TfSame,
            });
            x = 2;
        }
        for block in self.stages.iter().flatten() {
            let free: Vec<usize> = (1..=4).filter(|&r| r != x).collect();
            x = block.frozen(x, [free[0], free[1], free[2]], &mut ops)?;
        }
        ops.push(FrozenOp::GlobalAvgPool { src: x });
        Ok(ops)
    }

    /// Every channel count inside the stages: each stage's `planes` (the stem's output is the
    /// first) and its output.
    fn stage_widths(&self) -> Vec<usize> {
        let base = self.config.base_channels * self.config.width;
        let planes = [base, base * 2, base * 4, base * 8];
        let outputs = self.stage_channels().unwrap_or(planes);
        planes.into_iter().chain(outputs).collect()
    }

    /// Channels of each stage's output.
    pub fn stage_channels(&self) -> Result<[usize; 4]> {
        let e = self.config.layout()?.expansion();
        let base = self.config.base_channels * self.config.width;
        Ok([base * e, base * 2 * e, base * 4 * e, base * 8 * e])
    }
}

/// 3×3 stride-2 max-pool, for non-negative inputs (it follows a ReLU): padding 1 (PyTorch) or
/// TensorFlow `SAME` (none before on even sizes); both give `⌈n / 2⌉` outputs.
///
/// One fused op on the fast backend. Elsewhere (candle's `max_pool2d` has no backward pass when
/// kernel ≠ stride) the maximum of the nine shifted, stride-2 views; zero padding is exact there
/// because the input is ≥ 0 (PyTorch and TensorFlow pad with −∞, equivalent here).
fn max_pool_3x3_s2(xs: &Tensor, padding: Padding) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    let (ho, wo) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    let before = |size: usize, out: usize| match padding {
        Padding::Torch => 1,
        Padding::TfSame => ((out - 1) * 2 + 3).saturating_sub(size) / 2,
    };
    let (top, left) = (before(h, ho), before(w, wo));
    if byol_kernels::use_fast(xs) {
        return byol_kernels::max_pool_3x3_s2(xs, top, left);
    }
    // `before` rows/columns of padding first, enough after for 2·ho rows from offset 2.
    let padded = xs
        .pad_with_zeros(2, top, 2 * ho + 2 - h - top)?
        .pad_with_zeros(3, left, 2 * wo + 2 - w - left)?;
    let mut out: Option<Tensor> = None;
    for di in 0..3 {
        for dj in 0..3 {
            let view = padded
                .narrow(2, di, 2 * ho)?
                .narrow(3, dj, 2 * wo)?
                .reshape((n, c, ho, 2, wo, 2))?
                .narrow(3, 0, 1)?
                .narrow(5, 0, 1)?
                .reshape((n, c, ho, wo))?;
            out = Some(match out {
                None => view,
                Some(m) => m.maximum(&view)?,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("empty max-pool window".into()))
}

impl ModuleT for ResNet {
    /// In training on the oneDNN backends the stages keep their activations in oneDNN's
    /// channel-blocked layout (`byol_kernels::training_block`): one conversion after the stem
    /// instead of reorders around every convolution pass.
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut ys = self.stem.forward_relu(xs, train)?;
        if self.config.stem == Stem::Imagenet {
            ys = max_pool_3x3_s2(&ys, self.config.padding)?;
        }
        let channel_block = train
            .then(|| byol_kernels::training_block(&ys, &self.stage_widths()))
            .flatten();
        if let Some(channel_block) = channel_block {
            ys = byol_kernels::to_blocked(&ys, channel_block)?;
        }
        for stage in &self.stages {
            for block in stage {
                ys = block.forward_t(&ys, train)?;
            }
        }
        byol_kernels::spatial_mean(&ys)
    }
}
