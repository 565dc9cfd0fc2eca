//! The full training state in one safetensors file: online and target networks, LARS momentum,
//! the step, the model and optimiser configs and whatever the training loop adds (such as its RNG
//! state), from which training resumes exactly. Written atomically through [`crate::io`]; the
//! encoder-only file is [`crate::weights`]'s.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::byol::{Byol, ByolConfig};
use crate::io::{
    to_json, write_safetensors, SafetensorsFile, MODEL_CONFIG_KEY, OPTIMIZER_CONFIG_KEY, STEP_KEY,
};
use crate::optim::{Lars, LarsConfig};
use crate::weights::describe_architecture;
use crate::{Error, Result};

const ONLINE: &str = "online.";
const TARGET: &str = "target.";
const MOMENTUM: &str = "lars.momentum.";

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
    check_declared_shapes(path, &config, &file.tensors)?;
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

/// The configs in the metadata must match the online tensors' shapes before the model is built:
/// otherwise a few bytes of metadata decide how much memory is reserved.
fn check_declared_shapes(
    path: &Path,
    config: &ByolConfig,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    let invalid = |e: Error| {
        Error::format(
            path,
            format!("model config in `{MODEL_CONFIG_KEY}` is invalid: {e}"),
        )
    };
    let mut shapes: Vec<(String, Vec<usize>)> = config
        .encoder
        .key_tensor_shapes()
        .map_err(invalid)?
        .into_iter()
        .map(|(n, s)| (format!("{ONLINE}encoder.{n}"), s))
        .collect();
    let features = config.encoder.feature_dim().map_err(invalid)?;
    let mut mlp = |name: &str, input: usize, c: &crate::nn::MlpConfig| {
        shapes.push((
            format!("{ONLINE}{name}.0.weight"),
            vec![c.hidden_dim, input],
        ));
        shapes.push((
            format!("{ONLINE}{name}.3.weight"),
            vec![c.output_dim, c.hidden_dim],
        ));
    };
    mlp("projector", features, &config.projector);
    if config.use_predictor {
        mlp("predictor", config.projector.output_dim, &config.predictor);
    }
    crate::weights::encoder::check_shapes(
        path,
        &describe_architecture(&config.encoder),
        tensors,
        shapes,
    )
}
