//! The official DeepMind BYOL checkpoints (`pretrain_res50x1.pkl`, `pretrain_res200x2.pkl`, …):
//! a dill pickle (protocol 2) of `{'experiment_state': (online_params, target_params,
//! online_state, target_state, opt_state), 'step', 'rng'}` holding numpy arrays in Haiku naming.
//!
//! Read with the restricted reader of [`super::pickle`] (nothing in the file is executed), the
//! online encoder is converted to torchvision names: `…/~/initial_conv` → `conv1`,
//! `…/~/block_group_{g}/~/block_{b}/~/conv_{k}` → `layer{g+1}.{b}.conv{k+1}`, `batchnorm_{k}` →
//! `bn{k+1}`, `shortcut_conv`/`shortcut_batchnorm` → `downsample.0`/`.1`; fields `w` (H, W, in,
//! out) → `weight` (out, in, H, W), `scale`/`offset` → `weight`/`bias`, the state's
//! `mean_ema`/`var_ema` `average` → `running_mean`/`running_var`. Projector, predictor and
//! classifier are skipped. The architecture (depth, width, input channels) is inferred from the
//! shapes, with TensorFlow `SAME` padding ([`Padding::TfSame`]) as Haiku's convolutions use.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};

use super::pickle::{self, Array, Value};
use crate::io::{SafetensorsFile, ENCODER_CONFIG_KEY, STEP_KEY};
use crate::nn::{Padding, ResNetConfig, Stem};
use crate::{Error, Result};

/// Metadata key saying where imported weights came from.
pub const IMPORT_KEY: &str = "byol.import";

/// Reads an official checkpoint: the online encoder in torchvision names, its inferred config in
/// the metadata (`byol.encoder`), the step when present.
pub fn read(path: &Path, device: &Device) -> Result<SafetensorsFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let root =
        pickle::read(&bytes).map_err(|e| Error::format(path, format!("pickle refused: {e}")))?;
    let fmt = |m: &str| Error::format(path, m.to_string());
    let state = root
        .get("experiment_state")
        .and_then(Value::as_sequence)
        .ok_or_else(|| fmt("no `experiment_state` tuple: not an official BYOL checkpoint"))?;
    let (params, bn_state) = match state {
        [online_params, _, online_state, ..] => (online_params, online_state),
        _ => return Err(fmt("`experiment_state` has fewer than 3 fields")),
    };
    let params = params
        .as_mapping()
        .ok_or_else(|| fmt("online_params is not a mapping"))?;
    let bn_state = bn_state
        .as_mapping()
        .ok_or_else(|| fmt("online_state is not a mapping"))?;

    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, array: &Array, haiku: &str, conv: bool| -> Result<()> {
        let t = to_tensor(array, device).map_err(|e| Error::tensor(haiku, e.to_string()))?;
        let t = if conv {
            if t.rank() != 4 {
                return Err(Error::tensor(
                    haiku,
                    format!(
                        "conv weight of shape {:?}, expected (H, W, in, out)",
                        t.dims()
                    ),
                ));
            }
            t.permute((3, 2, 0, 1))?.contiguous()?
        } else {
            t.flatten_all()?
        };
        if tensors.insert(name.clone(), t).is_some() {
            return Err(Error::tensor(haiku, format!("maps to `{name}` twice")));
        }
        Ok(())
    };
    for (module, fields) in params {
        let Value::Str(module) = module else { continue };
        let Some(prefix) = torchvision_prefix(module) else {
            continue;
        };
        let fields = fields
            .as_mapping()
            .ok_or_else(|| Error::tensor(module, "parameters are not a mapping"))?;
        for (field, value) in fields {
            let (Value::Str(field), Value::Array(array)) = (field, value) else {
                return Err(Error::tensor(
                    module,
                    "a parameter is not a named numpy array",
                ));
            };
            let (suffix, conv) = match field.as_str() {
                "w" => ("weight", true),
                "scale" => ("weight", false),
                "offset" => ("bias", false),
                other => {
                    return Err(Error::tensor(
                        format!("{module}/{other}"),
                        "unknown parameter",
                    ))
                }
            };
            put(
                format!("{prefix}.{suffix}"),
                array,
                &format!("{module}/{field}"),
                conv,
            )?;
        }
    }
    for (module, fields) in bn_state {
        let Value::Str(module) = module else { continue };
        let Some((bn, stat)) = module.rsplit_once("/~/") else {
            continue;
        };
        let suffix = match stat {
            "mean_ema" => "running_mean",
            "var_ema" => "running_var",
            _ => continue,
        };
        let Some(prefix) = torchvision_prefix(bn) else {
            continue;
        };
        let Some(Value::Array(average)) = fields.get("average") else {
            return Err(Error::tensor(module, "no `average` array"));
        };
        put(
            format!("{prefix}.{suffix}"),
            average,
            &format!("{module}/average"),
            false,
        )?;
    }
    if tensors.is_empty() {
        return Err(fmt(
            "no encoder parameters (`…/~/initial_conv`, `block_group_*`) found",
        ));
    }
    let config = infer_config(&tensors).map_err(|e| Error::format(path, e.to_string()))?;
    let mut metadata = BTreeMap::new();
    metadata.insert(
        ENCODER_CONFIG_KEY.to_string(),
        serde_json::to_string(&config).map_err(|e| Error::encode("the encoder config", e))?,
    );
    metadata.insert(IMPORT_KEY.into(), "deepmind-byol online encoder".into());
    if let Some(Value::Array(step)) = root.get("step") {
        if let Some(s) = step.to_f32().first() {
            metadata.insert(STEP_KEY.into(), format!("{}", *s as u64));
        }
    }
    if let Some(Value::Int(step)) = root.get("step") {
        metadata.insert(STEP_KEY.into(), step.to_string());
    }
    Ok(SafetensorsFile {
        tensors,
        metadata: metadata.into_iter().collect(),
    })
}

fn to_tensor(a: &Array, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_vec(a.to_f32(), a.shape.as_slice(), device)
}

/// The torchvision module name of a Haiku encoder module, `None` for other heads.
pub fn torchvision_prefix(module: &str) -> Option<String> {
    let parts: Vec<&str> = module.split("/~/").collect();
    if parts
        .iter()
        .any(|p| p.contains("projector") || p.contains("predictor") || p.contains("classifier"))
    {
        return None;
    }
    let last = *parts.last()?;
    let index =
        |p: &str, prefix: &str| p.strip_prefix(prefix).and_then(|n| n.parse::<usize>().ok());
    if last == "initial_conv" || last.starts_with("initial_conv_") {
        return Some("conv1".into());
    }
    if last == "initial_batchnorm" || last.starts_with("initial_batchnorm_") {
        return Some("bn1".into());
    }
    let [.., group, block, layer] = parts.as_slice() else {
        return None;
    };
    let g = index(group, "block_group_")?;
    let b = index(block, "block_")?;
    let name = if let Some(k) = index(layer, "conv_") {
        format!("conv{}", k + 1)
    } else if let Some(k) = index(layer, "batchnorm_") {
        format!("bn{}", k + 1)
    } else if *layer == "shortcut_conv" {
        "downsample.0".into()
    } else if *layer == "shortcut_batchnorm" {
        "downsample.1".into()
    } else {
        return None;
    };
    Some(format!("layer{}.{b}.{name}", g + 1))
}

/// Depth from the blocks per group and the block type, width and input channels from the stem.
fn infer_config(t: &HashMap<String, Tensor>) -> Result<ResNetConfig> {
    let stem = t
        .get("conv1.weight")
        .ok_or_else(|| Error::tensor("conv1.weight", "missing (no `initial_conv`)"))?;
    let (stem_out, in_channels, _, _) = stem.dims4()?;
    let mut blocks = [0usize; 4];
    for (g, n) in blocks.iter_mut().enumerate() {
        while t.contains_key(&format!("layer{}.{}.conv1.weight", g + 1, *n)) {
            *n += 1;
        }
    }
    let bottleneck = t.contains_key("layer1.0.conv3.weight");
    let depth = match (blocks, bottleneck) {
        ([2, 2, 2, 2], false) => 18,
        ([3, 4, 6, 3], false) => 34,
        ([3, 4, 6, 3], true) => 50,
        ([3, 4, 23, 3], true) => 101,
        ([3, 8, 36, 3], true) => 152,
        ([3, 24, 36, 3], true) => 200,
        _ => {
            return Err(Error::Input(format!(
                "blocks per group {blocks:?} ({}) match no ResNet",
                if bottleneck { "bottleneck" } else { "basic" }
            )))
        }
    };
    // The paper's widths are multiples of 64 stem channels; miniature nets have fewer.
    let (width, base_channels) = if stem_out >= 64 && stem_out.is_multiple_of(64) {
        (stem_out / 64, 64)
    } else {
        (1, stem_out)
    };
    let config = ResNetConfig {
        depth,
        width,
        stem: Stem::Imagenet,
        in_channels,
        base_channels,
        zero_init_residual: false,
        padding: Padding::TfSame,
    };
    config.validate()?;
    Ok(config)
}
