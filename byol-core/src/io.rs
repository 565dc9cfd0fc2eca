//! Generic file I/O of the library: safetensors files (tensors plus `__metadata__`), atomic
//! writes (a temporary file beside the target, synced, then renamed, so a crash mid-write never
//! corrupts the previous file), the metadata keys every weights file shares, and file digests.
//! Nothing here knows a model: the encoder file is [`crate::weights`], the training state
//! [`crate::checkpoint`].

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Metadata key of an encoder's `ResNetConfig` (JSON).
pub const ENCODER_CONFIG_KEY: &str = "byol.encoder";
/// Metadata key of the `ByolConfig` in a training state (JSON).
pub const MODEL_CONFIG_KEY: &str = "byol.model";
/// Metadata key of the `LarsConfig` in a training state (JSON).
pub const OPTIMIZER_CONFIG_KEY: &str = "byol.optimizer";
/// Metadata key of the number of optimiser steps taken.
pub const STEP_KEY: &str = "byol.step";

/// Tensors and `__metadata__` of a safetensors file.
pub struct SafetensorsFile {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl SafetensorsFile {
    /// Reads a whole file; a truncated or foreign file is an error naming it.
    pub fn read(path: &Path, device: &Device) -> Result<Self> {
        check_regular_file(path)?;
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
    pub fn take_prefixed(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
            .collect()
    }
}

/// `path` must name a regular file: a directory, a device (`/dev/null`), a FIFO or a socket is
/// an error saying so. Checked with `stat` before opening, since opening a FIFO blocks until
/// someone writes to it.
pub fn check_regular_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::format(path, "is a directory, not a file"));
    }
    if !meta.is_file() {
        return Err(Error::format(
            path,
            "not a regular file (a device, FIFO or socket)",
        ));
    }
    Ok(())
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
    let bytes = canonical_header(&bytes).map_err(|e| Error::format(path, e))?;
    write_atomic(path, &bytes)
}

/// `bytes` (a serialised safetensors file) with its JSON header's keys sorted, `__metadata__`'s
/// included: safetensors writes the metadata in `HashMap` order, which differs from run to run,
/// so identical tensors and metadata would give files with different SHA-256 (and feature caches
/// keyed by it would miss). Tensor data and offsets are unchanged.
fn canonical_header(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .filter(|n| 8 + n <= bytes.len())
        .ok_or("serialised file without a header")?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(bytes[8..8 + n].trim_ascii_end())
            .map_err(|e| format!("serialised header is not a JSON object: {e}"))?;
    let sorted = |v: serde_json::Value| match v {
        serde_json::Value::Object(m) => {
            serde_json::to_value(m.into_iter().collect::<BTreeMap<_, _>>())
        }
        other => Ok(other),
    };
    let header = header
        .into_iter()
        .map(|(k, v)| Ok((k, sorted(v)?)))
        .collect::<std::result::Result<BTreeMap<_, _>, serde_json::Error>>()
        .and_then(|h| serde_json::to_vec(&h))
        .map_err(|e| e.to_string())?;
    let mut header = header;
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
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

/// A value as JSON for the metadata of a file.
pub fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::encode("a config as JSON", e))
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
