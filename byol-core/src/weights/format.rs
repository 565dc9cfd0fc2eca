//! Reading any supported weights file as an encoder's state dict (torchvision names) plus
//! metadata. A file is one of:
//! - safetensors: ours (encoder file, config in the metadata; or a training state, whose online
//!   and target encoders are both readable), or a torchvision/timm export;
//! - a PyTorch `torch.save` file, zip (`.pth`/`.pt`/`.ckpt`/`.bin`/`.torch`) or the pre-1.6
//!   stream, read by [`crate::import::torch_file`] (nothing in it is executed): a state dict,
//!   nested or not, or the checkpoint of solo-learn, mmselfsup/mmpretrain, lightly, VISSL or
//!   PyTorch Lightning, whose encoders [`crate::weights::layouts`] finds;
//! - an official DeepMind BYOL pickle (`pretrain_res50x1.pkl`), converted by
//!   [`crate::import::deepmind`] with its restricted pickle reader.
//!
//! The format comes from the file's first bytes, not its name (so an `hf://` download is sniffed
//! after it lands in the cache, whatever its name).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::byol::ByolConfig;
use crate::import::deepmind::{self, IMPORT_KEY};
use crate::import::pickle::{Global, Value};
use crate::import::torch_file::{TensorRef, TorchFile, TorchFormat, Unreadable, LEGACY_MAGIC};
use crate::io::{to_json, SafetensorsFile, ENCODER_CONFIG_KEY, MODEL_CONFIG_KEY};
use crate::weights::architecture::ShapeHints;
use crate::weights::choice::Part;
use crate::weights::layouts::{
    detect, EncoderAt, Framework, Layout, PartFound, PartKind, Scheme, TensorEntry,
};
use crate::{Error, Result};

/// A weights file's format, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    Safetensors,
    /// `torch.save`'s zip archive.
    TorchZip,
    /// `torch.save`'s format before PyTorch 1.6 (a stream of pickles and storages).
    TorchLegacy,
    /// A bare pickle (protocol ≥ 2): the official DeepMind checkpoints.
    Pickle,
}

impl WeightsFormat {
    pub fn describe(self) -> &'static str {
        match self {
            WeightsFormat::Safetensors => "safetensors",
            WeightsFormat::TorchZip => "torch.save zip archive",
            WeightsFormat::TorchLegacy => "torch.save stream (PyTorch < 1.6 format)",
            WeightsFormat::Pickle => "pickle",
        }
    }
}

/// Sniffs the format of `path`.
pub fn detect_format(path: &Path) -> Result<WeightsFormat> {
    crate::io::check_regular_file(path)?;
    let mut head = [0u8; 32];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]).map_err(|e| Error::io(path, e))? {
            0 => break,
            k => n += k,
        }
    }
    let head = &head[..n];
    let pickle = head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]);
    if head.starts_with(b"PK\x03\x04") {
        Ok(WeightsFormat::TorchZip)
    } else if pickle && head.windows(LEGACY_MAGIC.len()).any(|w| w == LEGACY_MAGIC) {
        Ok(WeightsFormat::TorchLegacy)
    } else if pickle {
        Ok(WeightsFormat::Pickle)
    } else if head.len() >= 9 && head[8] == b'{' {
        Ok(WeightsFormat::Safetensors)
    } else {
        Err(Error::format(
            path,
            "not a weights file: expected safetensors, a torch.save file (.pth, .ckpt) or a \
             pickle (.pkl)",
        ))
    }
}

/// Where an encoder read from a file came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightsSource {
    pub format: WeightsFormat,
    pub framework: Framework,
    pub part: Part,
    /// The encoder's tensors' prefix in the file (dotted path; empty at the top level).
    pub prefix: String,
    /// What the file's framework says about what shapes leave open.
    pub hints: ShapeHints,
}

/// One encoder of a weights file: its tensors in torchvision names (with `fc.*` when the file
/// has a classifier there) and metadata (ours, or where it was imported from).
pub struct EncoderWeights {
    pub file: SafetensorsFile,
    pub source: WeightsSource,
}

/// Reads any supported weights file's online encoder as tensors plus metadata. DeepMind pickles
/// and our training states also get the encoder config in the metadata.
pub fn read_weights(path: &Path, device: &Device) -> Result<SafetensorsFile> {
    Ok(read_encoder_weights(path, device, Part::Online)?.file)
}

/// Reads the encoder `part` of any supported weights file: an error naming the file when it has
/// no such encoder or cannot tell which one it is.
pub fn read_encoder_weights(path: &Path, device: &Device, part: Part) -> Result<EncoderWeights> {
    open_weights(path)?.encoder(part, device)
}

/// The tensors of an opened file.
enum Content {
    /// A safetensors file, read whole.
    Loaded(HashMap<String, Tensor>, HashMap<String, String>),
    /// A `torch.save` file: its tensors' references, read on demand.
    Torch(
        Box<TorchFile>,
        BTreeMap<String, std::result::Result<TensorRef, Unreadable>>,
    ),
    /// An official DeepMind pickle, converted when an encoder is asked for.
    DeepMind,
}

/// A weights file opened for its encoders: its format, layout and every tensor's shape, with
/// no tensor data read yet for `torch.save` files.
pub struct OpenedWeights {
    pub path: PathBuf,
    pub format: WeightsFormat,
    pub layout: Layout,
    /// Every tensor by dotted path, with its shape.
    pub tensors: BTreeMap<String, TensorEntry>,
    /// The saved object's top-level entries and what each holds, in words (none for
    /// safetensors, whose metadata is in `metadata`).
    pub top_level: Vec<(String, String)>,
    pub metadata: HashMap<String, String>,
    content: Content,
}

/// Opens `path` and finds its layout without reading tensor data (safetensors are read whole,
/// onto the CPU).
pub fn open_weights(path: &Path) -> Result<OpenedWeights> {
    let format = detect_format(path)?;
    match format {
        WeightsFormat::Safetensors => {
            let file = SafetensorsFile::read(path, &Device::Cpu)?;
            let tensors: BTreeMap<String, TensorEntry> = file
                .tensors
                .iter()
                .map(|(k, t)| {
                    let entry = TensorEntry {
                        shape: t.dims().to_vec(),
                        identity: None,
                    };
                    (k.clone(), entry)
                })
                .collect();
            let layout = if file.metadata.contains_key(MODEL_CONFIG_KEY) {
                training_state_layout(&tensors)
            } else {
                let mut layout = detect(&tensors, &[]);
                if layout.framework == Framework::Torchvision
                    && file.metadata.contains_key(ENCODER_CONFIG_KEY)
                {
                    layout.framework = Framework::ByolRs;
                }
                as_is_fallback(&mut layout, "");
                layout
            };
            Ok(OpenedWeights {
                path: path.to_path_buf(),
                format,
                layout,
                tensors,
                top_level: Vec::new(),
                metadata: file.metadata.clone(),
                content: Content::Loaded(file.tensors, file.metadata),
            })
        }
        WeightsFormat::TorchZip | WeightsFormat::TorchLegacy => {
            let torch_format = if format == WeightsFormat::TorchZip {
                TorchFormat::Zip
            } else {
                TorchFormat::Legacy
            };
            let torch = TorchFile::open(path, torch_format)?;
            let refs = torch.tensors();
            let tensors: BTreeMap<String, TensorEntry> = refs
                .iter()
                .map(|(k, r)| {
                    let entry = match r {
                        Ok(r) => TensorEntry {
                            shape: r.shape.clone(),
                            identity: Some(r.identity()),
                        },
                        Err(_) => TensorEntry {
                            shape: Vec::new(),
                            identity: None,
                        },
                    };
                    (k.clone(), entry)
                })
                .collect();
            // Every top-level entry with a name; a state dict at the top level is summed up,
            // not listed tensor by tensor.
            // A pickled object (`torch.save(model)`) is one entry, not its attributes.
            let mapping: &[(Value, Value)] = match &torch.root {
                Value::Dict(items) => items,
                _ => &[],
            };
            let entries: Vec<(String, &Value)> = mapping
                .iter()
                .filter_map(|(k, v)| match k {
                    Value::Str(k) => Some((k.clone(), v)),
                    Value::Int(k) => Some((k.to_string(), v)),
                    _ => None,
                })
                .collect();
            let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
            let top_tensors = keys.iter().filter(|k| refs.contains_key(*k)).count();
            let mut top_level: Vec<(String, String)> = entries
                .iter()
                .filter(|(k, _)| !refs.contains_key(k))
                .map(|(k, v)| (k.clone(), describe_value(v, &refs, k)))
                .collect();
            if top_tensors > 0 {
                let line = format!("{top_tensors} at the top level (a state dict)");
                top_level.insert(0, ("tensors".into(), line));
            }
            if !matches!(torch.root, Value::Dict(_)) {
                let what = describe_value(&torch.root, &refs, "");
                top_level.push(("object".into(), what));
            }
            let mut layout = detect(&tensors, &keys);
            // No ResNet: the state dict at the top level, or under the first nesting key that
            // holds tensors, as the tensors are.
            let root = if keys.iter().any(|k| refs.contains_key(k)) {
                Some(String::new())
            } else {
                NESTED_KEYS
                    .iter()
                    .map(|k| format!("{k}."))
                    .find(|p| tensors.keys().any(|n| n.starts_with(p.as_str())))
            };
            if let Some(root) = root {
                as_is_fallback(&mut layout, &root);
            }
            Ok(OpenedWeights {
                path: path.to_path_buf(),
                format,
                layout,
                tensors,
                top_level,
                metadata: HashMap::new(),
                content: Content::Torch(Box::new(torch), refs),
            })
        }
        WeightsFormat::Pickle => {
            let (parts, step) = deepmind::parts(path)?;
            let mut metadata = HashMap::new();
            if let Some(step) = step {
                metadata.insert(crate::io::STEP_KEY.to_string(), step);
            }
            let encoder = |prefix: &str| EncoderAt {
                prefix: prefix.to_string(),
                scheme: Scheme::Torchvision,
                aliases: Vec::new(),
            };
            let has = |k: PartKind| parts.iter().any(|p| p.kind == k);
            let layout = Layout {
                framework: Framework::DeepMind,
                online: if has(PartKind::Online) {
                    vec![encoder("online_params/online_state")]
                } else {
                    Vec::new()
                },
                target: if has(PartKind::Target) {
                    vec![encoder("target_params/target_state")]
                } else {
                    Vec::new()
                },
                parts,
                other: BTreeMap::new(),
                unsupported: Vec::new(),
            };
            Ok(OpenedWeights {
                path: path.to_path_buf(),
                format,
                layout,
                tensors: BTreeMap::new(),
                top_level: Vec::new(),
                metadata,
                content: Content::DeepMind,
            })
        }
    }
}

/// Keys under which training scripts nest a plain state dict.
const NESTED_KEYS: [&str; 3] = ["state_dict", "model", "model_state_dict"];

/// A file in which no ResNet was recognised at all: its state dict under `root` is handed on as
/// the online encoder, as it is (the architecture check then names what does not fit).
fn as_is_fallback(layout: &mut Layout, root: &str) {
    if layout.online.is_empty() && layout.target.is_empty() && layout.unsupported.is_empty() {
        layout.online.push(EncoderAt {
            prefix: root.to_string(),
            scheme: Scheme::AsIs,
            aliases: Vec::new(),
        });
    }
}

/// Our training state: `online.encoder.*`, `target.encoder.*`, heads beside them, LARS
/// momentum under `lars.momentum.` (checkpoint.rs).
fn training_state_layout(tensors: &BTreeMap<String, TensorEntry>) -> Layout {
    let encoder = |prefix: &str| EncoderAt {
        prefix: prefix.to_string(),
        scheme: Scheme::Torchvision,
        aliases: Vec::new(),
    };
    let count = |p: &str| tensors.keys().filter(|k| k.starts_with(p)).count();
    let mut parts = Vec::new();
    let mut other = BTreeMap::new();
    for (kind, prefix) in [
        (PartKind::Online, "online.encoder."),
        (PartKind::Projector, "online.projector."),
        (PartKind::Predictor, "online.predictor."),
        (PartKind::Target, "target.encoder."),
        (PartKind::TargetProjector, "target.projector."),
    ] {
        let n = count(prefix);
        if n > 0 {
            parts.push(PartFound {
                kind,
                prefix: prefix.into(),
                tensors: n,
                aliases: Vec::new(),
            });
        }
    }
    let lars = count("lars.");
    if lars > 0 {
        other.insert("lars".into(), lars);
    }
    Layout {
        framework: Framework::ByolRsState,
        online: (count("online.encoder.") > 0)
            .then(|| encoder("online.encoder."))
            .into_iter()
            .collect(),
        target: (count("target.encoder.") > 0)
            .then(|| encoder("target.encoder."))
            .into_iter()
            .collect(),
        parts,
        other,
        unsupported: Vec::new(),
    }
}

impl OpenedWeights {
    /// The encoder `part`, its tensors read onto `device` in torchvision names.
    pub fn encoder(self, part: Part, device: &Device) -> Result<EncoderWeights> {
        let path = self.path;
        let hints = self.layout.framework.shape_hints();
        if let Content::DeepMind = self.content {
            let file = deepmind::read_part(&path, device, part)?;
            let prefix = format!("{part}_params/{part}_state");
            return Ok(EncoderWeights {
                file,
                source: WeightsSource {
                    format: self.format,
                    framework: Framework::DeepMind,
                    part,
                    prefix,
                    hints: Framework::DeepMind.shape_hints(),
                },
            });
        }
        let at = self
            .layout
            .encoder(part)
            .map_err(|m| Error::format(&path, m))?
            .clone();
        // raw name → torchvision name.
        let names: Vec<(String, String)> = self
            .tensors
            .keys()
            .filter_map(|k| at.torchvision_name(k).map(|tv| (k.clone(), tv)))
            .collect();
        let mut metadata = HashMap::new();
        let tensors: HashMap<String, Tensor> = match self.content {
            Content::Loaded(mut all, file_metadata) => {
                match self.layout.framework {
                    // A top-level state dict: its metadata (our encoder config) is the encoder's.
                    _ if at.prefix.is_empty() => metadata = file_metadata,
                    Framework::ByolRsState => {
                        // The encoder config is the model config's.
                        let json = file_metadata
                            .get(MODEL_CONFIG_KEY)
                            .cloned()
                            .unwrap_or_default();
                        let model: ByolConfig = serde_json::from_str(&json).map_err(|e| {
                            Error::format(
                                &path,
                                format!("model config in `{MODEL_CONFIG_KEY}` is invalid: {e}"),
                            )
                        })?;
                        metadata.insert(ENCODER_CONFIG_KEY.to_string(), to_json(&model.encoder)?);
                    }
                    _ => {}
                }
                let mut out = HashMap::with_capacity(names.len());
                for (raw, tv) in names {
                    if let Some(t) = all.remove(&raw) {
                        out.insert(tv, t.to_device(device)?);
                    }
                }
                out
            }
            Content::Torch(torch, refs) => {
                let mut wanted = Vec::with_capacity(names.len());
                for (raw, tv) in &names {
                    match refs.get(raw) {
                        Some(Ok(r)) => wanted.push((raw.clone(), r.clone())),
                        Some(Err(why)) => {
                            return Err(Error::format(&path, format!("tensor `{raw}`: {why}")))
                        }
                        None => {
                            return Err(Error::format(
                                &path,
                                format!("tensor `{raw}` ({tv}) vanished"),
                            ))
                        }
                    }
                }
                let mut read = torch.read(&wanted, device)?;
                names
                    .into_iter()
                    .filter_map(|(raw, tv)| read.remove(&raw).map(|t| (tv, t)))
                    .collect()
            }
            Content::DeepMind => HashMap::new(),
        };
        if !matches!(
            self.layout.framework,
            Framework::ByolRs | Framework::ByolRsState
        ) {
            let from = if at.prefix.is_empty() {
                "the top level".to_string()
            } else {
                format!("`{}`", at.prefix)
            };
            metadata.insert(
                IMPORT_KEY.to_string(),
                format!(
                    "{} {part} encoder from {from}",
                    self.layout.framework.describe()
                ),
            );
        }
        Ok(EncoderWeights {
            file: SafetensorsFile { tensors, metadata },
            source: WeightsSource {
                format: self.format,
                framework: self.layout.framework,
                part,
                prefix: at.prefix,
                hints,
            },
        })
    }
}

/// A top-level entry of a `torch.save` object in words: what it holds, tensors counted.
fn describe_value(
    v: &Value,
    refs: &BTreeMap<String, std::result::Result<TensorRef, Unreadable>>,
    key: &str,
) -> String {
    // `key` empty: the whole object.
    let prefix = format!("{key}.");
    let tensors = if key.is_empty() {
        refs.len()
    } else {
        refs.range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .count()
    };
    let with_tensors = |s: String| {
        if tensors > 0 {
            format!("{s}, {tensors} tensor(s)")
        } else {
            s
        }
    };
    match v {
        Value::None => "None".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Str(s) if s.chars().count() <= 40 => format!("{s:?}"),
        Value::Str(s) => format!("a string of {} characters", s.chars().count()),
        Value::Dict(items) => with_tensors(format!(
            "a dict of {} entr{}",
            items.len(),
            if items.len() == 1 { "y" } else { "ies" }
        )),
        Value::List(items) | Value::Tuple(items) => {
            let s = if items.len() == 1 { "" } else { "s" };
            with_tensors(format!("a list of {} item{s}", items.len()))
        }
        Value::Global(Global::Record(name)) => format!("a reference to `{name}` (not resolved)"),
        Value::Record { class, .. } if refs.contains_key(key) => {
            format!("a tensor ({class})")
        }
        Value::Record { class, .. } => with_tensors(format!(
            "a `{class}` object, kept as data (never constructed)"
        )),
        other => format!("{:?}", std::mem::discriminant(other)),
    }
}
