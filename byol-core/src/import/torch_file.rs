//! Files written by `torch.save`, read without PyTorch and without running anything:
//!
//! - the zip archive (PyTorch ≥ 1.6): `<name>/data.pkl` (the object), `<name>/data/<key>` (one raw
//!   storage per key), `<name>/byteorder` (`little` or `big`, absent before PyTorch 1.13);
//! - the older stream (torchvision's original model-zoo files, PyTorch < 1.6 or
//!   `_use_new_zipfile_serialization=False`): five pickles (magic number, protocol version 1001,
//!   system info, the object, the sorted storage keys), then each storage as its element count
//!   (8 bytes, little-endian) and raw bytes (torch/serialization.py `_legacy_save`).
//!
//! The object is read by [`pickle::read_inert`]: hyper-parameters, optimiser and callback states
//! stay inert data, every name a name, and the file is refused if it names a code-running
//! callable. A tensor is the record of `torch._utils._rebuild_tensor_v2(storage, offset, size,
//! stride, …)` (or `_rebuild_tensor`, `_rebuild_parameter[_with_state]`,
//! `torch._tensor._rebuild_from_type_v2`), its storage the persistent id `('storage',
//! torch.<Type>Storage, key, location, numel[, view])`. [`TorchFile::tensors`] lists every tensor
//! of the object by its dotted path (dict keys, list indices; the `_parameters`, `_buffers` and
//! `_modules` of a pickled `nn.Module`), and [`TorchFile::read`] reads the ones asked for, each
//! checked against its storage and the file's size before anything is allocated.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::pickle::{self, Globals, Value};
use crate::{Error, Result};

/// `torch.serialization.MAGIC_NUMBER` (0x1950a86a20f9469cfc6c) as pickle's little-endian bytes:
/// the first value of an old-format file.
pub const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// The layout of a `torch.save` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchFormat {
    /// The zip archive of PyTorch ≥ 1.6.
    Zip,
    /// The stream of pickles and storages of older PyTorch.
    Legacy,
}

/// A tensor's element type as its storage class names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    U8,
    Bool,
}

impl StorageType {
    fn from_class(class: &str) -> Option<Self> {
        Some(match class.strip_prefix("torch.")? {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::U8 | Self::Bool => 1,
        }
    }

    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F64 => DType::F64,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::I64 => DType::I64,
            Self::I32 => DType::I32,
            Self::I16 => DType::I16,
            Self::U8 | Self::Bool => DType::U8,
        }
    }
}

/// Where a tensor's elements are: a storage, an offset and strides (in elements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    pub storage: String,
    pub dtype: StorageType,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

impl TensorRef {
    /// Storage key, offset, shape and strides: equal for the same tensor saved under two names
    /// (a module registered twice, `state_dict()` called twice).
    pub fn identity(&self) -> String {
        format!(
            "{}@{}{:?}{:?}",
            self.storage, self.offset, self.shape, self.stride
        )
    }

    /// Bytes of the storage the tensor spans (`None` on overflow).
    fn span_bytes(&self) -> Option<u64> {
        let size = self.dtype.size() as u64;
        if self.shape.contains(&0) {
            return Some(0);
        }
        let last =
            self.shape
                .iter()
                .zip(&self.stride)
                .try_fold(self.offset as u64, |acc, (&n, &s)| {
                    (n as u64 - 1)
                        .checked_mul(s as u64)
                        .and_then(|d| acc.checked_add(d))
                })?;
        last.checked_add(1)?.checked_mul(size)
    }
}

/// Where the storages are.
enum Storages {
    /// Entries `<prefix>data/<key>` of the zip archive.
    Zip { prefix: String },
    /// Byte ranges of each storage in the old format's stream.
    Legacy {
        bytes: Vec<u8>,
        ranges: HashMap<String, (usize, usize)>,
    },
}

/// A `torch.save` file: its object as inert data, and where its storages are.
pub struct TorchFile {
    path: PathBuf,
    pub format: TorchFormat,
    /// The saved object.
    pub root: Value,
    big_endian: bool,
    storages: Storages,
}

/// Why a value that is a tensor cannot be read (quantized, sparse, an unknown storage type).
pub type Unreadable = String;

impl TorchFile {
    /// Opens a `torch.save` file of either format.
    pub fn open(path: &Path, format: TorchFormat) -> Result<Self> {
        match format {
            TorchFormat::Zip => Self::open_zip(path),
            TorchFormat::Legacy => Self::open_legacy(path),
        }
    }

    fn open_zip(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut zip = open_archive(file)
            .map_err(|e| Error::format(path, format!("not a readable zip archive: {e}")))?;
        // `<name>/data.pkl` at the top of the archive (one directory deep).
        let pkl = zip
            .file_names()
            .filter_map(|n| n.ok())
            .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .min()
            .map(|n| n.to_string())
            .ok_or_else(|| {
                Error::format(
                    path,
                    "a zip without `<name>/data.pkl`: not a torch.save file",
                )
            })?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let read_entry = |zip: &mut zip::ZipArchive<_>, name: &str| -> Result<Vec<u8>> {
            let mut entry = zip
                .by_name(name)
                .map_err(|e| Error::format(path, format!("{name}: {e}")))?;
            let mut bytes = Vec::new();
            // Stored entries are no larger than the file; a claim beyond it is a lie.
            (&mut entry)
                .take(file_len)
                .read_to_end(&mut bytes)
                .map_err(|e| Error::format(path, format!("{name}: {e}")))?;
            Ok(bytes)
        };
        let data = read_entry(&mut zip, &pkl)?;
        let byteorder = format!("{prefix}byteorder");
        let big_endian = if zip.index_for_name(&byteorder).is_some() {
            match read_entry(&mut zip, &byteorder)?.as_slice() {
                b"little" => false,
                b"big" => true,
                other => {
                    return Err(Error::format(
                        path,
                        format!(
                            "{byteorder} says `{}`",
                            String::from_utf8_lossy(&other[..other.len().min(16)])
                        ),
                    ))
                }
            }
        } else {
            false
        };
        let root =
            pickle::read_inert(&data).map_err(|e| Error::format(path, format!("{pkl}: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            format: TorchFormat::Zip,
            root,
            big_endian,
            storages: Storages::Zip { prefix },
        })
    }

    fn open_legacy(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let fmt = |m: String| Error::format(path, m);
        let mut pos = 0;
        let next = |what: &str, pos: &mut usize| -> Result<Value> {
            let (v, end) = pickle::read_at(&bytes, *pos, Globals::Inert)
                .map_err(|e| fmt(format!("old torch.save format, {what}: {e}")))?;
            *pos = end;
            Ok(v)
        };
        match next("magic number", &mut pos)? {
            Value::BigInt(b) if b.as_slice() == LEGACY_MAGIC => {}
            _ => return Err(fmt("not a torch.save file (no magic number)".into())),
        }
        match next("protocol version", &mut pos)? {
            Value::Int(1001) => {}
            other => {
                return Err(fmt(format!(
                    "torch.save protocol version {other:?}, expected 1001"
                )))
            }
        }
        let sys_info = next("system info", &mut pos)?;
        if matches!(sys_info.get("little_endian"), Some(Value::Bool(false))) {
            return Err(fmt(
                "written on a big-endian machine: the old torch.save format is read little-endian \
                 only"
                    .into(),
            ));
        }
        let root = next("object", &mut pos)?;
        let keys = next("storage keys", &mut pos)?;
        let keys = keys
            .as_sequence()
            .ok_or_else(|| fmt("the storage keys are not a list".into()))?;
        // Element sizes come from the persistent ids of the object.
        let mut types = HashMap::new();
        collect_storage_types(&root, &mut types, 0);
        let mut ranges = HashMap::new();
        for key in keys {
            let Value::Str(key) = key else {
                return Err(fmt("a storage key is not a string".into()));
            };
            let size = types.get(key.as_str()).copied().ok_or_else(|| {
                fmt(format!(
                    "storage `{key}` is listed but no tensor of a known type uses it"
                ))
            })?;
            let count = bytes
                .get(pos..pos + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| fmt(format!("storage `{key}`: truncated before its size")))?;
            let start = pos + 8;
            let len = count
                .checked_mul(size as u64)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n <= bytes.len() - start)
                .ok_or_else(|| {
                    fmt(format!(
                        "storage `{key}` claims {count} elements, more than the file holds"
                    ))
                })?;
            ranges.insert(key.clone(), (start, len));
            pos = start + len;
        }
        Ok(Self {
            path: path.to_path_buf(),
            format: TorchFormat::Legacy,
            root,
            big_endian: false,
            storages: Storages::Legacy { bytes, ranges },
        })
    }

    /// Every tensor of the object by dotted path, in path order: its reference, or why it cannot
    /// be read.
    pub fn tensors(&self) -> BTreeMap<String, std::result::Result<TensorRef, Unreadable>> {
        let mut out = BTreeMap::new();
        walk(&self.root, String::new(), &mut out, 0);
        out
    }

    /// Reads the tensors `wanted` (name → reference) onto `device`, each storage once. A tensor
    /// that reaches beyond its storage or the file is an error naming it.
    pub fn read(
        &self,
        wanted: &[(String, TensorRef)],
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        let path = &self.path;
        let file_len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        let mut zip = match &self.storages {
            Storages::Zip { .. } => {
                let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
                Some(open_archive(file).map_err(|e| Error::format(path, format!("zip: {e}")))?)
            }
            Storages::Legacy { .. } => None,
        };
        let mut cache: HashMap<&str, Vec<u8>> = HashMap::new();
        let mut out = HashMap::with_capacity(wanted.len());
        for (name, r) in wanted {
            let what = format!("tensor `{name}` (storage `{}`)", r.storage);
            let need = r.span_bytes().unwrap_or(u64::MAX);
            if need > file_len {
                return Err(Error::format(
                    path,
                    format!("{what} needs {need} bytes, more than the file's {file_len}"),
                ));
            }
            if !cache.contains_key(r.storage.as_str()) {
                let bytes = match (&self.storages, zip.as_mut()) {
                    (Storages::Zip { prefix }, Some(zip)) => {
                        let entry_name = format!("{prefix}data/{}", r.storage);
                        let mut entry = zip.by_name(&entry_name).map_err(|e| {
                            Error::format(path, format!("{what}: {entry_name}: {e}"))
                        })?;
                        let mut bytes = Vec::new();
                        (&mut entry)
                            .take(file_len)
                            .read_to_end(&mut bytes)
                            .map_err(|e| Error::format(path, format!("{what}: {e}")))?;
                        bytes
                    }
                    (Storages::Legacy { bytes, ranges }, _) => {
                        let &(start, len) = ranges.get(&r.storage).ok_or_else(|| {
                            Error::format(path, format!("{what}: the storage is not in the file"))
                        })?;
                        bytes[start..start + len].to_vec()
                    }
                    _ => return Err(Error::format(path, "storages unavailable")),
                };
                cache.insert(r.storage.as_str(), bytes);
            }
            let storage = &cache[r.storage.as_str()];
            if need > storage.len() as u64 {
                return Err(Error::format(
                    path,
                    format!(
                        "{what} needs {need} bytes, its storage holds {}",
                        storage.len()
                    ),
                ));
            }
            let data = gather(storage, r, self.big_endian);
            let t = Tensor::from_raw_buffer(&data, r.dtype.dtype(), &r.shape, device)
                .map_err(|e| Error::format(path, format!("{what}: {e}")))?;
            out.insert(name.clone(), t);
        }
        Ok(out)
    }
}

/// A `torch.save` zip, which starts at byte 0. The zip crate's default, detecting an offset
/// from where the central directory "should" be, misreads PyTorch's zip64 archives whose first
/// central-directory entry is exactly as long as the zip64 end records (76 bytes: an archive
/// named with 21 characters, `<name>/data.pkl` first) and fails on them.
fn open_archive(
    file: std::fs::File,
) -> zip::result::ZipResult<zip::ZipArchive<std::io::BufReader<std::fs::File>>> {
    let config = zip::read::Config {
        archive_offset: zip::read::ArchiveOffset::Known(0),
    };
    zip::ZipArchive::with_config(config, std::io::BufReader::new(file))
}

/// The tensor's elements in row-major order, little-endian.
fn gather(storage: &[u8], r: &TensorRef, big_endian: bool) -> Vec<u8> {
    let size = r.dtype.size();
    let count: usize = r.shape.iter().product();
    if count == 0 {
        // Nothing to read, wherever its offset points.
        return Vec::new();
    }
    let contiguous = {
        let mut expected = 1usize;
        r.shape.iter().zip(&r.stride).rev().all(|(&n, &s)| {
            let ok = n == 1 || s == expected;
            expected *= n;
            ok
        })
    };
    let mut data = if contiguous {
        storage[r.offset * size..(r.offset + count) * size].to_vec()
    } else {
        let mut data = Vec::with_capacity(count * size);
        let mut index = vec![0usize; r.shape.len()];
        for _ in 0..count {
            let at = r.offset
                + index
                    .iter()
                    .zip(&r.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            data.extend_from_slice(&storage[at * size..(at + 1) * size]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < r.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        data
    };
    if big_endian && size > 1 {
        data.chunks_exact_mut(size).for_each(|c| c.reverse());
    }
    data
}

/// The class name of a global reference.
fn global_name(v: &Value) -> Option<&str> {
    match v {
        Value::Global(pickle::Global::Record(name)) => Some(name),
        _ => None,
    }
}

/// The tensor `class(*args)` rebuilds: `None` when it is not a tensor-rebuilding call.
fn rebuild(class: &str, args: &[Value]) -> Option<std::result::Result<TensorRef, Unreadable>> {
    match class {
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            Some(tensor_args(args))
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            match args.first() {
                Some(Value::Record { class, args, .. }) => rebuild(class, args),
                _ => Some(Err(format!("{class} of something that is not a tensor"))),
            }
        }
        // (func, type, func's args, state): a tensor subclass.
        "torch._tensor._rebuild_from_type_v2" => {
            match (args.first().and_then(global_name), args.get(2)) {
                (Some(func), Some(Value::Tuple(inner))) => rebuild(func, inner),
                _ => Some(Err(format!("{class} without a rebuild function"))),
            }
        }
        other if other.starts_with("torch._utils._rebuild_") => Some(Err(format!(
            "`{other}` tensors (quantized, sparse, nested or device-only) are not read"
        ))),
        _ => None,
    }
}

/// `(storage, storage_offset, size, stride, …)` of `_rebuild_tensor_v2`.
fn tensor_args(args: &[Value]) -> std::result::Result<TensorRef, Unreadable> {
    let [Value::Persistent(pid), Value::Int(offset), size, stride, ..] = args else {
        return Err("tensor arguments are not (storage, offset, size, stride)".into());
    };
    let dims = |v: &Value, what: &str| -> std::result::Result<Vec<usize>, Unreadable> {
        v.as_sequence()
            .ok_or(format!("tensor {what} is not a tuple"))?
            .iter()
            .map(|d| match d {
                Value::Int(n) if *n >= 0 => usize::try_from(*n).map_err(|e| e.to_string()),
                _ => Err(format!(
                    "tensor {what} holds a negative or non-integer value"
                )),
            })
            .collect()
    };
    let (shape, stride) = (dims(size, "size")?, dims(stride, "stride")?);
    if shape.len() != stride.len() {
        return Err(format!(
            "size {shape:?} and stride {stride:?} differ in rank"
        ));
    }
    let (storage, dtype, view_offset) = storage_id(pid)?;
    let offset = usize::try_from(*offset)
        .ok()
        .and_then(|o| o.checked_add(view_offset))
        .ok_or("negative storage offset")?;
    Ok(TensorRef {
        storage,
        dtype,
        offset,
        shape,
        stride,
    })
}

/// `('storage', torch.<Type>Storage, key, location, numel[, view])`: key, type and the view's
/// offset in elements (old format only).
fn storage_id(pid: &Value) -> std::result::Result<(String, StorageType, usize), Unreadable> {
    let Some([Value::Str(kind), class, Value::Str(key), _location, _numel, rest @ ..]) =
        pid.as_sequence()
    else {
        return Err("a persistent id that is not a storage reference".into());
    };
    if kind != "storage" {
        return Err(format!("a persistent id of kind `{kind}`"));
    }
    let class = global_name(class).unwrap_or("?");
    let dtype = StorageType::from_class(class)
        .ok_or_else(|| format!("storage type `{class}` is not read"))?;
    let view_offset = match rest.first() {
        None | Some(Value::None) => 0,
        Some(v) => match v.as_sequence() {
            Some([_, Value::Int(o), _]) if *o >= 0 => *o as usize,
            _ => return Err("a storage view that is not (key, offset, size)".into()),
        },
    };
    Ok((key.clone(), dtype, view_offset))
}

/// The value's tensor, if it is one.
fn as_tensor(v: &Value) -> Option<std::result::Result<TensorRef, Unreadable>> {
    match v {
        Value::Record { class, args, .. } => rebuild(class, args),
        _ => None,
    }
}

/// Collects the tensors under `v` by dotted path. Depth is bounded by the pickle reader's.
fn walk(
    v: &Value,
    path: String,
    out: &mut BTreeMap<String, std::result::Result<TensorRef, Unreadable>>,
    depth: usize,
) {
    if depth > pickle::MAX_DEPTH {
        return;
    }
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    if let Some(t) = as_tensor(v) {
        out.insert(path, t);
        return;
    }
    match v {
        Value::Dict(items) => {
            for (k, child) in items {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                walk(child, join(&key), out, depth + 1);
            }
        }
        Value::List(items) | Value::Tuple(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(child, join(&i.to_string()), out, depth + 1);
            }
        }
        // A pickled nn.Module (`torch.save(model)`): its state holds `_parameters`, `_buffers`
        // and `_modules`, named as its state_dict() would name them.
        Value::Record {
            state: Some(state), ..
        } => {
            if state.get("_parameters").is_none() && state.get("_modules").is_none() {
                return;
            }
            for field in ["_parameters", "_buffers", "_modules"] {
                if let Some(Value::Dict(items)) = state.get(field) {
                    for (k, child) in items {
                        if let Value::Str(key) = k {
                            walk(child, join(key), out, depth + 1);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// Storage key → element size, from every persistent id under `v` (the old format lists its
/// storages without their types).
fn collect_storage_types(v: &Value, out: &mut HashMap<String, usize>, depth: usize) {
    if depth > pickle::MAX_DEPTH {
        return;
    }
    if let Value::Persistent(pid) = v {
        if let Ok((key, dtype, _)) = storage_id(pid) {
            out.insert(key, dtype.size());
        }
        return;
    }
    let children: Vec<&Value> = match v {
        Value::Dict(items) => items.iter().flat_map(|(k, v)| [k, v]).collect(),
        Value::List(items) | Value::Tuple(items) => items.iter().collect(),
        Value::Record {
            args, state, items, ..
        } => args
            .iter()
            .chain(state.as_deref())
            .chain(items.iter().flat_map(|(k, v)| [k, v]))
            .collect(),
        _ => Vec::new(),
    };
    for c in children {
        collect_storage_types(c, out, depth + 1);
    }
}
