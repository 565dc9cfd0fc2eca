//! Safetensors checkpoints.
//!
//! Two kinds of file:
//! - the encoder alone, in torchvision naming (`conv1.weight`, `layer1.0.bn1.running_mean`, …,
//!   `num_batches_tracked` as i64 scalars, `"format": "pt"`), so `torchvision.models.resnet50()`
//!   loads it with strict key checking apart from `fc`; the encoder config sits in the
//!   `__metadata__` under [`ENCODER_CONFIG_KEY`];
//! - the full training state (online, target, LARS momentum, step, model config and whatever the
//!   training loop adds, such as its RNG state) from which training resumes exactly.
//!
//! Every write goes to a temporary file in the same directory and is renamed over the target, so
//! a crash mid-write never corrupts the last good checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use safetensors::SafeTensors;

use crate::byol::{Byol, ByolConfig};
use crate::nn::{ResNet, ResNetConfig, VarStore};
use crate::optim::{Lars, LarsConfig};
use crate::{Error, Result};

/// Metadata key of the encoder's [`ResNetConfig`] (JSON).
pub const ENCODER_CONFIG_KEY: &str = "byol.encoder";
/// Metadata key of the [`ByolConfig`] in a training state (JSON).
pub const MODEL_CONFIG_KEY: &str = "byol.model";
/// Metadata key of the [`LarsConfig`] in a training state (JSON).
pub const OPTIMIZER_CONFIG_KEY: &str = "byol.optimizer";
/// Metadata key of the number of optimiser steps taken.
pub const STEP_KEY: &str = "byol.step";

const ONLINE: &str = "online.";
const TARGET: &str = "target.";
const MOMENTUM: &str = "lars.momentum.";

/// Tensors and `__metadata__` of a safetensors file.
pub struct SafetensorsFile {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl SafetensorsFile {
    /// Reads a whole file; a truncated or foreign file is an error naming it.
    pub fn read(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let parsed = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file ({e})")))?;
        let mut tensors = HashMap::new();
        for (name, view) in parsed.tensors() {
            let tensor = view
                .load(device)
                .map_err(|e| Error::format(path, format!("tensor `{name}` cannot be read: {e}")))?;
            tensors.insert(name, tensor);
        }
        Ok(Self {
            tensors,
            metadata: header.metadata().clone().unwrap_or_default(),
        })
    }

    /// A metadata value parsed from JSON, or an error naming the file and the key.
    pub fn metadata_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
        key: &str,
    ) -> Result<T> {
        let raw = self
            .metadata
            .get(key)
            .ok_or_else(|| Error::format(path, format!("no `{key}` in the metadata")))?;
        serde_json::from_str(raw)
            .map_err(|e| Error::format(path, format!("metadata `{key}` is malformed: {e}")))
    }

    /// The tensors whose names start with `prefix`, with the prefix stripped.
    fn take_prefixed(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
            .collect()
    }
}

/// Serialises `tensors` with `metadata` (plus `"format": "pt"`) and writes them atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, Tensor)>,
    metadata: BTreeMap<String, String>,
) -> Result<()> {
    let mut meta: HashMap<String, String> = metadata.into_iter().collect();
    meta.insert("format".into(), "pt".into());
    // safetensors needs contiguous host data; this also moves GPU tensors to the host.
    let tensors = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(tensors, Some(meta))
        .map_err(|e| Error::format(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::format(path, "not a file path"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    // Persist the rename itself; not every filesystem supports syncing a directory.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

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
}

/// Loads an encoder file (any format of [`crate::weights::read_weights`]: safetensors, a PyTorch
/// `.pth`, an official DeepMind pickle). Its config comes from the metadata, or from `config` for
/// files that carry none (a plain torchvision state dict); `fc.*` tensors are ignored.
pub fn load_encoder(
    path: &Path,
    device: &Device,
    config: Option<&ResNetConfig>,
) -> Result<LoadedEncoder> {
    let file = crate::weights::read_weights(path, device)?;
    let config: ResNetConfig = match config {
        Some(c) => c.clone(),
        None => file.metadata_json(path, ENCODER_CONFIG_KEY).map_err(|_| {
            Error::format(
                path,
                format!("no encoder config in the metadata (`{ENCODER_CONFIG_KEY}`): give the architecture explicitly"),
            )
        })?,
    };
    let mut store = VarStore::new(device, 0);
    let encoder = ResNet::new(&mut store.root(), &config)?;
    let tensors: HashMap<String, Tensor> = file
        .tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("fc."))
        .collect();
    store
        .load_under("", &tensors, false)
        .map_err(|e| Error::format(path, e.to_string()))?;
    Ok(LoadedEncoder {
        encoder,
        store,
        metadata: file.metadata,
    })
}

/// Saves everything needed to resume: online and target tensors, LARS momentum, the step, the
/// model and optimiser configs, and `extra` metadata of the training loop.
pub fn save_training_state(
    path: &Path,
    model: &Byol,
    optimizer: &Lars,
    step: u64,
    mut extra: BTreeMap<String, String>,
) -> Result<()> {
    let mut tensors = prefixed(ONLINE, model.online_store().tensors_under(""));
    if let Some(target) = model.target_store() {
        tensors.extend(prefixed(TARGET, target.tensors_under("")));
    }
    tensors.extend(
        optimizer
            .momentum_buffers()
            .iter()
            .map(|(k, v)| (format!("{MOMENTUM}{k}"), v.clone())),
    );
    extra.insert(MODEL_CONFIG_KEY.into(), to_json(model.config())?);
    extra.insert(OPTIMIZER_CONFIG_KEY.into(), to_json(optimizer.config())?);
    extra.insert(STEP_KEY.into(), step.to_string());
    write_safetensors(path, tensors, extra)
}

/// A training state read back: the model and optimiser rebuilt from it, and the loop's metadata.
pub struct TrainingState {
    pub model: Byol,
    pub optimizer: Lars,
    pub step: u64,
    pub metadata: HashMap<String, String>,
}

/// Reads a training state written by [`save_training_state`].
pub fn load_training_state(path: &Path, device: &Device) -> Result<TrainingState> {
    let file = SafetensorsFile::read(path, device)?;
    let config: ByolConfig = file.metadata_json(path, MODEL_CONFIG_KEY)?;
    let lars: LarsConfig = file.metadata_json(path, OPTIMIZER_CONFIG_KEY)?;
    let step: u64 = file.metadata_json(path, STEP_KEY)?;
    let model = Byol::new(&config, device, 0)?;
    let in_file = |e: Error| Error::format(path, e.to_string());
    model
        .online_store()
        .load_under("", &file.take_prefixed(ONLINE), false)
        .map_err(in_file)?;
    if let Some(target) = model.target_store() {
        target
            .load_under("", &file.take_prefixed(TARGET), false)
            .map_err(in_file)?;
    }
    let mut optimizer = Lars::new(lars);
    optimizer
        .set_momentum_buffers(model.online_store(), file.take_prefixed(MOMENTUM))
        .map_err(in_file)?;
    Ok(TrainingState {
        model,
        optimizer,
        step,
        metadata: file.metadata,
    })
}

fn prefixed(prefix: &str, tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    tensors
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect()
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Input(format!("cannot serialise config: {e}")))
}
