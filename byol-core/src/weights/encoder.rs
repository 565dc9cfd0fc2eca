//! The encoder file: the online encoder alone in torchvision naming (`conv1.weight`,
//! `layer1.0.bn1.running_mean`, …, `num_batches_tracked` as i64 scalars, `"format": "pt"`), so
//! `torchvision.models.resnet50()` loads it with strict key checking apart from `fc`; its
//! [`ResNetConfig`] sits in the `__metadata__` under [`ENCODER_CONFIG_KEY`].
//!
//! [`load_encoder_part`] (and [`load_encoder`], its online part) is the one way the library
//! loads an encoder, from any format of [`read_encoder_weights`]; a file that declares no
//! architecture gets the one its shapes imply ([`infer_architecture`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::byol::Byol;
use crate::io::{to_json, write_safetensors, ENCODER_CONFIG_KEY};
use crate::nn::{ResNet, ResNetConfig, VarStore};
use crate::weights::architecture::infer_architecture;
use crate::weights::choice::Part;
use crate::weights::format::{read_encoder_weights, EncoderWeights, WeightsSource};
use crate::{Error, Result};

/// Saves the online encoder of `model` in torchvision naming, with its config and `extra`
/// metadata (for instance the recipe and the step).
pub fn save_encoder(path: &Path, model: &Byol, extra: BTreeMap<String, String>) -> Result<()> {
    save_encoder_from_store(
        path,
        model.online_store(),
        "encoder.",
        &model.config().encoder,
        extra,
    )
}

/// Saves the tensors of `store` under `prefix` as an encoder file.
pub fn save_encoder_from_store(
    path: &Path,
    store: &VarStore,
    prefix: &str,
    config: &ResNetConfig,
    mut extra: BTreeMap<String, String>,
) -> Result<()> {
    extra.insert(ENCODER_CONFIG_KEY.into(), to_json(config)?);
    write_safetensors(path, store.tensors_under(prefix), extra)
}

/// A frozen-ready encoder read from a weights file.
pub struct LoadedEncoder {
    pub encoder: ResNet,
    pub store: VarStore,
    pub metadata: HashMap<String, String>,
    /// Which file format, framework, part and prefix it came from.
    pub source: WeightsSource,
}

/// The architecture in words (reports, messages).
pub fn describe_architecture(c: &ResNetConfig) -> String {
    format!(
        "resnet{} x{} {:?} stem, {} input channel(s), base {}",
        c.depth, c.width, c.stem, c.in_channels, c.base_channels
    )
}

/// Same layers and tensor shapes (the padding convention is not a shape).
fn same_shape(a: &ResNetConfig, b: &ResNetConfig) -> bool {
    (a.depth, a.width, a.stem, a.in_channels, a.base_channels)
        == (b.depth, b.width, b.stem, b.in_channels, b.base_channels)
}

/// Loads the online encoder of a weights file: [`load_encoder_part`] with [`Part::Online`].
pub fn load_encoder(
    path: &Path,
    device: &Device,
    arch: Option<&ResNetConfig>,
) -> Result<LoadedEncoder> {
    load_encoder_part(path, device, arch, Part::Online)
}

/// Loads the encoder `part` of a weights file of any format of [`read_encoder_weights`],
/// reading it once.
///
/// The architecture is the one the file declares in its metadata; `arch`, when given, must have
/// the same shape (an [`Error::Config`] otherwise). For a file that declares none (a plain
/// torchvision state dict, another framework's checkpoint) `arch` is used when given, else the
/// architecture its tensor shapes imply, or an error naming the file when they leave it open
/// (how a 3×3 stem strides and pads). `fc.*` tensors are ignored.
pub fn load_encoder_part(
    path: &Path,
    device: &Device,
    arch: Option<&ResNetConfig>,
    part: Part,
) -> Result<LoadedEncoder> {
    let EncoderWeights { file, source } = read_encoder_weights(path, device, part)?;
    let config: ResNetConfig = if file.metadata.contains_key(ENCODER_CONFIG_KEY) {
        let declared: ResNetConfig = file.metadata_json(path, ENCODER_CONFIG_KEY)?;
        if let Some(arch) = arch {
            if !same_shape(arch, &declared) {
                return Err(Error::config(
                    "arch",
                    format!(
                        "{} holds a {}, not the requested {}",
                        path.display(),
                        describe_architecture(&declared),
                        describe_architecture(arch)
                    ),
                ));
            }
        }
        declared
    } else if let Some(arch) = arch {
        arch.clone()
    } else {
        let shapes = file
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect();
        infer_architecture(&shapes, source.hints).map_err(|why| {
            Error::format(
                path,
                format!(
                    "no encoder config in the metadata (`{ENCODER_CONFIG_KEY}`) and the \
                     architecture cannot be inferred from the tensors: {why}"
                ),
            )
        })?
    };
    check_key_shapes(path, &config, &file.tensors)?;
    let tensors: HashMap<String, Tensor> = file
        .tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("fc."))
        .collect();
    check_values(path, &tensors)?;
    let mut store = VarStore::new(device, 0);
    let encoder = ResNet::new(&mut store.root(), &config)?;
    store
        .load_under("", &tensors, false)
        .map_err(|e| Error::format(path, e.to_string()))?;
    Ok(LoadedEncoder {
        encoder,
        store,
        metadata: file.metadata,
        source,
    })
}

/// Every float tensor of an encoder file must be a float tensor of finite values: a NaN or an
/// infinity (a diverged run) would give chance-level features without a word, and integers
/// where weights belong would be truncated garbage. Other float widths (f16, bf16, f64) are
/// converted to the model's f32 with a note. `num_batches_tracked` is an integer counter; `fc.*`
/// (a classifier) is not loaded.
pub fn check_values(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut converted = BTreeMap::new();
    for name in names {
        if name.ends_with("num_batches_tracked") || name.starts_with("fc.") {
            continue;
        }
        let t = &tensors[name];
        let dtype = t.dtype();
        if !dtype.is_float() {
            return Err(Error::format(
                path,
                format!("tensor `{name}` holds {dtype:?} integers where float weights belong"),
            ));
        }
        if dtype != DType::F32 {
            *converted.entry(format!("{dtype:?}")).or_insert(0usize) += 1;
        }
        // The values the model will hold: f64 beyond f32's range becomes an infinity here.
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(Error::format(
                path,
                format!(
                    "tensor `{name}` holds a non-finite value ({bad}): weights of a diverged run?"
                ),
            ));
        }
    }
    if !converted.is_empty() {
        tracing::info!(
            "{}: converted to f32 (tensors per dtype): {converted:?}",
            path.display()
        );
    }
    Ok(())
}

/// The architecture (declared in metadata or given) must match the file's own tensors before
/// anything is allocated: a metadata claiming `width: 100000` would otherwise reserve hundreds of
/// gigabytes for a file of a few kilobytes.
fn check_key_shapes(
    path: &Path,
    config: &ResNetConfig,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    let shapes = config.key_tensor_shapes().map_err(|e| {
        Error::format(
            path,
            format!("architecture in `{ENCODER_CONFIG_KEY}` is invalid: {e}"),
        )
    })?;
    check_shapes(path, &describe_architecture(config), tensors, shapes)
}

/// Each `(name, shape)` must be a tensor of `tensors` with that shape; the error names the file,
/// the tensor and the architecture (`what`) that implied the shape.
pub(crate) fn check_shapes(
    path: &Path,
    what: &str,
    tensors: &HashMap<String, Tensor>,
    shapes: impl IntoIterator<Item = (String, Vec<usize>)>,
) -> Result<()> {
    for (name, expected) in shapes {
        let Some(t) = tensors.get(&name) else {
            return Err(Error::format(
                path,
                format!("tensor `{name}` is missing; the architecture ({what}) needs it"),
            ));
        };
        if t.dims() != expected.as_slice() {
            return Err(Error::format(
                path,
                format!(
                    "tensor `{name}` has shape {:?}, but the architecture ({what}) needs {:?}",
                    t.dims(),
                    expected
                ),
            ));
        }
    }
    Ok(())
}
