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
    crate::io::check_regular_file(path)?;
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

/// The pickles of a PyTorch zip (`*/data.pkl`) within our reader's bounds: candle's parser, which
/// reads them next, copies memoised values whole and recurses over nesting.
fn check_torch_pickles(path: &Path) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    // Not a zip: candle says so next.
    let Ok(mut zip) = zip::ZipArchive::new(std::io::BufReader::new(file)) else {
        return Ok(());
    };
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| Error::format(path, format!("zip entry {i}: {e}")))?;
        let name = entry
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| format!("entry {i}"));
        if !name.ends_with("data.pkl") {
            continue;
        }
        // Stored entries are no larger than the file; a claim beyond it is a lie.
        let mut bytes = Vec::new();
        (&mut entry)
            .take(file_len)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::format(path, format!("{name}: {e}")))?;
        crate::import::pickle_bounds::check_bounds(&bytes)
            .map_err(|e| Error::format(path, format!("{name}: {e}")))?;
    }
    Ok(())
}

fn read_torch(path: &Path, device: &Device) -> Result<SafetensorsFile> {
    use candle_core::pickle::PthTensors;
    check_torch_pickles(path)?;
    let open = |key: Option<&str>| {
        PthTensors::new(path, key)
            .map_err(|e| Error::format(path, format!("cannot read the PyTorch file: {e}")))
    };
    let mut pth = open(None)?;
    for key in NESTED_KEYS {
        if !pth.tensor_infos().is_empty() {
            break;
        }
        // A missing key is simply not this layout.
        if let Ok(nested) = open(Some(key)) {
            pth = nested;
        }
    }
    if pth.tensor_infos().is_empty() {
        return Err(Error::format(
            path,
            format!("no tensors at the top level nor under {NESTED_KEYS:?}"),
        ));
    }
    // PyTorch stores storages uncompressed: a tensor needing more bytes than the whole file is a
    // lie of its pickle, refused before candle allocates for it.
    let file_len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let mut names: Vec<&String> = pth.tensor_infos().keys().collect();
    names.sort();
    let mut out = HashMap::with_capacity(names.len());
    for name in names {
        let info = &pth.tensor_infos()[name];
        let what = format!("tensor `{name}` (storage `{}`)", info.path);
        // candle's start offset is in bytes; the element count may overflow.
        let need = info
            .layout
            .dims()
            .iter()
            .try_fold(info.dtype.size_in_bytes() as u64, |acc, &d| {
                acc.checked_mul(d as u64)
            })
            .and_then(|n| n.checked_add(info.layout.start_offset() as u64))
            .unwrap_or(u64::MAX);
        if need > file_len {
            return Err(Error::format(
                path,
                format!("{what} needs {need} bytes, more than the file's {file_len}"),
            ));
        }
        let t = pth
            .get(name)
            .map_err(|e| Error::format(path, format!("{what} cannot be read: {e}")))?
            .ok_or_else(|| Error::format(path, format!("{what} disappeared while reading")))?
            .to_device(device)
            .map_err(|e| Error::tensor(name, e.to_string()))?;
        let name = name.strip_prefix("module.").unwrap_or(name).to_string();
        out.insert(name, t);
    }
    Ok(SafetensorsFile {
        tensors: out,
        metadata: HashMap::new(),
    })
}
