//! Reading any supported weights file as a state dict (tensors plus metadata). A file is one of:
//! - safetensors (ours, with the encoder config in the metadata, or a torchvision/timm export);
//! - a PyTorch `torch.save` zip (`.pth`/`.pt`/`.bin`): a state dict, possibly under a
//!   `state_dict` or `model` key and with DDP's `module.` prefix, read by candle's pickle reader
//!   (which builds tensors only, it calls no Python code);
//! - an official DeepMind BYOL pickle (`pretrain_res50x1.pkl`), converted by
//!   [`crate::import::deepmind`] with its restricted pickle reader.
//!
//! The format comes from the file's first bytes, not its name.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::Device;

use crate::io::SafetensorsFile;
use crate::{Error, Result};

/// A weights file's format, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    Safetensors,
    /// `torch.save`'s zip archive.
    TorchZip,
    /// A bare pickle (protocol ≥ 2): the official DeepMind checkpoints.
    Pickle,
}

/// Sniffs the format of `path`.
pub fn detect_format(path: &Path) -> Result<WeightsFormat> {
    let mut head = [0u8; 9];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]).map_err(|e| Error::io(path, e))? {
            0 => break,
            k => n += k,
        }
    }
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") {
        Ok(WeightsFormat::TorchZip)
    } else if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        Ok(WeightsFormat::Pickle)
    } else if head.len() == 9 && head[8] == b'{' {
        Ok(WeightsFormat::Safetensors)
    } else {
        Err(Error::format(
            path,
            "not a weights file: expected safetensors, a torch.save zip (.pth) or a pickle (.pkl)",
        ))
    }
}

/// Reads any supported weights file as tensors plus metadata. PyTorch files give torchvision
/// names as they are (less `module.`), DeepMind pickles are converted to them and get the encoder
/// config (with TensorFlow `SAME` padding) in the metadata.
pub fn read_weights(path: &Path, device: &Device) -> Result<SafetensorsFile> {
    match detect_format(path)? {
        WeightsFormat::Safetensors => SafetensorsFile::read(path, device),
        WeightsFormat::TorchZip => read_torch(path, device),
        WeightsFormat::Pickle => crate::import::deepmind::read(path, device),
    }
}

/// Keys under which training scripts nest the state dict.
const NESTED_KEYS: [&str; 3] = ["state_dict", "model", "model_state_dict"];

fn read_torch(path: &Path, device: &Device) -> Result<SafetensorsFile> {
    let read = |key: Option<&str>| {
        candle_core::pickle::read_all_with_key(path, key)
            .map_err(|e| Error::format(path, format!("cannot read the PyTorch file: {e}")))
    };
    let mut tensors = read(None)?;
    for key in NESTED_KEYS {
        if !tensors.is_empty() {
            break;
        }
        // A missing key is simply not this layout.
        tensors = read(Some(key)).unwrap_or_default();
    }
    if tensors.is_empty() {
        return Err(Error::format(
            path,
            format!("no tensors at the top level nor under {NESTED_KEYS:?}"),
        ));
    }
    let mut out = HashMap::with_capacity(tensors.len());
    for (name, t) in tensors {
        let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
        let t = t
            .to_device(device)
            .map_err(|e| Error::tensor(&name, e.to_string()))?;
        out.insert(name, t);
    }
    Ok(SafetensorsFile {
        tensors: out,
        metadata: HashMap::new(),
    })
}
