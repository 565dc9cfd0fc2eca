//! The architecture of an encoder read from its tensor shapes (torchvision names), for files
//! that do not declare one: depth from the blocks per stage and the block type, width and input
//! channels from the stem convolution, the stem from its kernel. What shapes cannot tell (how a
//! 3×3 stem strides and pads) comes from what the file's framework is known to build, or is an
//! error asking for the architecture.

use std::collections::HashMap;

use crate::nn::{resnet_depth_list, Padding, ResNetConfig, Stem, RESNET_DEPTHS};

/// What the shapes alone leave open, as the file's framework settles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeHints {
    /// What a 3×3 stem convolution means in this framework (`None`: unknown, an error).
    pub small_stem: Option<Stem>,
    /// The padding convention of the framework's convolutions.
    pub padding: Padding,
}

impl ShapeHints {
    /// PyTorch padding; a 3×3 stem is ambiguous.
    pub fn torch() -> Self {
        Self {
            small_stem: None,
            padding: Padding::Torch,
        }
    }
}

/// The [`ResNetConfig`] whose tensors have the shapes of `shapes` (torchvision names, `fc.*`
/// ignored). The error says what is missing, unknown or ambiguous, in words for the user.
pub fn infer_architecture(
    shapes: &HashMap<String, Vec<usize>>,
    hints: ShapeHints,
) -> std::result::Result<ResNetConfig, String> {
    let stem = shapes
        .get("conv1.weight")
        .ok_or("no stem convolution `conv1.weight`")?;
    let [stem_out, in_channels, kh, kw] = stem.as_slice() else {
        return Err(format!(
            "`conv1.weight` has shape {stem:?}, not a convolution's (out, in, kh, kw)"
        ));
    };
    let mut blocks = [0usize; 4];
    for (g, n) in blocks.iter_mut().enumerate() {
        while shapes.contains_key(&format!("layer{}.{}.conv1.weight", g + 1, *n)) {
            *n += 1;
        }
    }
    let bottleneck = shapes.contains_key("layer1.0.conv3.weight");
    let depth = RESNET_DEPTHS
        .iter()
        .find(|d| d.blocks == blocks && d.bottleneck == bottleneck)
        .map(|d| d.depth)
        .ok_or_else(|| {
            format!(
                "blocks per stage {blocks:?} ({}) match no ResNet depth we build ({})",
                if bottleneck { "bottleneck" } else { "basic" },
                resnet_depth_list()
            )
        })?;
    let stem_kind = match (*kh, *kw) {
        (7, 7) => Stem::Imagenet,
        (3, 3) => hints.small_stem.ok_or_else(|| {
            "its 3×3 stem convolution does not say how it strides and pads: give the \
             architecture (--arch resnetN with --stem small for CIFAR-style ResNets: stride 1, \
             padding 1, no max-pool; small-padded for solo-learn's CIFAR stem: padding 2; \
             small-strided: stride 2)"
                .to_string()
        })?,
        _ => {
            return Err(format!(
                "a {kh}×{kw} stem convolution: we build 7×7 and 3×3 stems"
            ))
        }
    };
    // The paper's widths are multiples of 64 stem channels; narrow networks have fewer.
    let (width, base_channels) = if *stem_out >= 64 && stem_out.is_multiple_of(64) {
        (stem_out / 64, 64)
    } else {
        (1, *stem_out)
    };
    let config = ResNetConfig {
        depth,
        width,
        stem: stem_kind,
        in_channels: *in_channels,
        base_channels,
        zero_init_residual: false,
        padding: hints.padding,
    };
    config.validate().map_err(|e| e.to_string())?;
    // Every tensor the key shapes check looks at (stem and feature width) must agree, so a
    // ResNeXt or wide ResNet (other inner widths) is not taken for ours.
    let inner = shapes.get("layer1.0.conv1.weight").map(|s| s.first());
    let planes = config.base_channels * config.width;
    if let Some(Some(&c)) = inner {
        if c != planes {
            return Err(format!(
                "`layer1.0.conv1.weight` has {c} output channels where a plain ResNet with a \
                 {stem_out}-channel stem has {planes}: a wide ResNet or ResNeXt, which we do not \
                 build"
            ));
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{ResNet, VarStore};
    use candle_core::Device;

    /// The tensor shapes of the ResNet that `ResNet::new` builds (8 base channels: cheap even at
    /// depth 200), so inference is checked against the builder, not against a copy of its rules.
    fn built_shapes(depth: usize, stem: Stem) -> HashMap<String, Vec<usize>> {
        let config = ResNetConfig {
            stem,
            base_channels: 8,
            ..ResNetConfig::new(depth)
        };
        let mut store = VarStore::new(&Device::Cpu, 0);
        ResNet::new(&mut store.root(), &config).expect("a depth of the table builds");
        store
            .tensors_under("")
            .into_iter()
            .map(|(name, t)| (name, t.dims().to_vec()))
            .collect()
    }

    #[test]
    fn every_depth_of_the_table_is_recognised_from_the_network_built() {
        for row in RESNET_DEPTHS {
            let config = infer_architecture(
                &built_shapes(row.depth, Stem::Imagenet),
                ShapeHints::torch(),
            )
            .unwrap_or_else(|e| panic!("ResNet-{}: {e}", row.depth));
            assert_eq!(
                (config.depth, config.base_channels, config.stem),
                (row.depth, 8, Stem::Imagenet)
            );
        }
    }

    #[test]
    fn blocks_of_no_depth_we_build_are_named_with_the_depths_we_do() {
        let mut shapes = built_shapes(18, Stem::Imagenet);
        shapes.retain(|name, _| !name.starts_with("layer2.1."));
        let err = infer_architecture(&shapes, ShapeHints::torch())
            .expect_err("no ResNet has 2, 1, 2, 2 basic blocks");
        assert_eq!(
            err,
            "blocks per stage [2, 1, 2, 2] (basic) match no ResNet depth we build \
             (10, 18, 26, 34, 50, 101, 152 or 200)"
        );
    }

    #[test]
    fn a_3x3_stem_needs_the_framework_to_say_how_it_strides() {
        let shapes = built_shapes(10, Stem::Small);
        let err = infer_architecture(&shapes, ShapeHints::torch())
            .expect_err("a 3×3 stem is ambiguous in PyTorch");
        assert!(err.contains("--stem small"), "{err}");
        let hints = ShapeHints {
            small_stem: Some(Stem::Small),
            padding: Padding::Torch,
        };
        let config = infer_architecture(&shapes, hints).expect("ResNet-10");
        assert_eq!((config.depth, config.stem), (10, Stem::Small));
    }
}
