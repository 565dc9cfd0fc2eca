//! The official DeepMind BYOL checkpoints (`pretrain_res50x1.pkl`, `pretrain_res200x2.pkl`, …):
//! a dill pickle (protocol 2) of `{'experiment_state': (online_params, target_params,
//! online_state, target_state, opt_state), 'step', 'rng'}` holding numpy arrays in Haiku naming.
//!
//! Read with the restricted reader of [`super::pickle`] (nothing in the file is executed), the
//! online encoder (or, for [`Part::Target`], the target encoder: `target_params`,
//! `target_state`) is converted to torchvision names: `…/~/initial_conv` → `conv1`,
//! `…/~/block_group_{g}/~/block_{b}/~/conv_{k}` → `layer{g+1}.{b}.conv{k+1}`, `batchnorm_{k}` →
//! `bn{k+1}`, `shortcut_conv`/`shortcut_batchnorm` → `downsample.0`/`.1`; fields `w` (H, W, in,
//! out) → `weight` (out, in, H, W), `scale`/`offset` → `weight`/`bias`, the state's
//! `mean_ema`/`var_ema` `average` → `running_mean`/`running_var`. Projector, predictor and
//! classifier are skipped. The architecture (depth, width, input channels) is inferred from the
//! shapes ([`infer_architecture`]), with TensorFlow `SAME` padding ([`Padding::TfSame`]) as
//! Haiku's convolutions use.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};

use super::pickle::{self, Array, Value};
use crate::io::{SafetensorsFile, ENCODER_CONFIG_KEY, STEP_KEY};
use crate::nn::Padding;
use crate::weights::architecture::{infer_architecture, ShapeHints};
use crate::weights::choice::Part;
use crate::weights::layouts::{PartFound, PartKind};
use crate::{Error, Result};

/// Metadata key saying where imported weights came from.
pub const IMPORT_KEY: &str = "byol.import";

/// Reads an official checkpoint: the online encoder in torchvision names, its inferred config in
/// the metadata (`byol.encoder`), the step when present.
pub fn read(path: &Path, device: &Device) -> Result<SafetensorsFile> {
    read_part(path, device, Part::Online)
}

/// The pickle's root value, read by the allow-list reader.
fn load(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    pickle::read(&bytes).map_err(|e| Error::format(path, format!("pickle refused: {e}")))
}

/// The entries of a pickled mapping.
type Mapping<'v> = &'v [(Value, Value)];

/// `(params, state)` of `part`: fields 0 and 2 of `experiment_state` (online), 1 and 3 (target).
fn experiment<'v>(root: &'v Value, path: &Path, part: Part) -> Result<(Mapping<'v>, Mapping<'v>)> {
    let fmt = |m: &str| Error::format(path, m.to_string());
    let state = root
        .get("experiment_state")
        .and_then(Value::as_sequence)
        .ok_or_else(|| fmt("no `experiment_state` tuple: not an official BYOL checkpoint"))?;
    let (params, bn_state) = match (state, part) {
        ([online_params, _, online_state, ..], Part::Online) => (online_params, online_state),
        ([_, target_params, _, target_state, ..], Part::Target) => (target_params, target_state),
        _ => return Err(fmt("`experiment_state` has fewer fields than (online_params, target_params, online_state, target_state)")),
    };
    let params = params
        .as_mapping()
        .ok_or_else(|| fmt(&format!("{part}_params is not a mapping")))?;
    let bn_state = bn_state
        .as_mapping()
        .ok_or_else(|| fmt(&format!("{part}_state is not a mapping")))?;
    Ok((params, bn_state))
}

/// The parts of an official checkpoint with their tensor counts (encoders in torchvision
/// tensors), and its step.
pub fn parts(path: &Path) -> Result<(Vec<PartFound>, Option<String>)> {
    let root = load(path)?;
    let mut parts = Vec::new();
    for part in [Part::Online, Part::Target] {
        let Ok((params, bn_state)) = experiment(&root, path, part) else {
            continue;
        };
        let fields = |m: &Value| m.as_mapping().map_or(0, <[_]>::len);
        let mut encoder = 0;
        let mut heads: Vec<(PartKind, &str, usize)> = Vec::new();
        for (module, value) in params {
            let Value::Str(module) = module else { continue };
            if torchvision_prefix(module).is_some() {
                encoder += fields(value);
                continue;
            }
            let kind = match (part, module.split("/~/").next().unwrap_or("")) {
                (Part::Online, m) if m.contains("projector") => PartKind::Projector,
                (Part::Target, m) if m.contains("projector") => PartKind::TargetProjector,
                (Part::Online, m) if m.contains("predictor") => PartKind::Predictor,
                (Part::Online, m) if m.contains("classifier") => PartKind::Classifier,
                (Part::Target, m) if m.contains("classifier") => PartKind::TargetClassifier,
                _ => continue,
            };
            let name = match kind {
                PartKind::Projector | PartKind::TargetProjector => "projector",
                PartKind::Predictor => "predictor",
                _ => "classifier",
            };
            match heads.iter_mut().find(|(k, _, _)| *k == kind) {
                Some(h) => h.2 += fields(value),
                None => heads.push((kind, name, fields(value))),
            }
        }
        encoder += bn_state
            .iter()
            .filter(|(m, _)| {
                matches!(m, Value::Str(m) if m.rsplit_once("/~/").is_some_and(|(bn, s)| {
                    matches!(s, "mean_ema" | "var_ema") && torchvision_prefix(bn).is_some()
                }))
            })
            .count();
        if encoder > 0 {
            parts.push(PartFound {
                kind: if part == Part::Online {
                    PartKind::Online
                } else {
                    PartKind::Target
                },
                prefix: format!("{part}_params/{part}_state"),
                tensors: encoder,
                aliases: Vec::new(),
            });
        }
        parts.extend(heads.into_iter().map(|(kind, name, n)| PartFound {
            kind,
            prefix: format!("{part}_params {name}"),
            tensors: n,
            aliases: Vec::new(),
        }));
    }
    let step = match root.get("step") {
        Some(Value::Array(a)) => a.to_f32().first().map(|s| format!("{}", *s as u64)),
        Some(Value::Int(s)) => Some(s.to_string()),
        _ => None,
    };
    Ok((parts, step))
}

/// Reads the encoder `part` of an official checkpoint, as [`read`].
pub fn read_part(path: &Path, device: &Device, part: Part) -> Result<SafetensorsFile> {
    let root = load(path)?;
    let fmt = |m: &str| Error::format(path, m.to_string());
    let (params, bn_state) = experiment(&root, path, part)?;

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
    let shapes = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    let hints = ShapeHints {
        small_stem: None,
        padding: Padding::TfSame,
    };
    let config = infer_architecture(&shapes, hints).map_err(|e| Error::format(path, e))?;
    let mut metadata = BTreeMap::new();
    metadata.insert(
        ENCODER_CONFIG_KEY.to_string(),
        serde_json::to_string(&config).map_err(|e| Error::encode("the encoder config", e))?,
    );
    metadata.insert(IMPORT_KEY.into(), format!("deepmind-byol {part} encoder"));
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
