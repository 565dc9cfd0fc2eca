//! What a weights file holds, in words (`byol-linear-eval inspect`): its format and framework,
//! the parts found (online and target encoders, projector, predictor, classifier) with their
//! tensor counts, the architecture of the chosen encoder (declared or inferred from its shapes)
//! and its tensors' shapes. Nothing is run and, for `torch.save` files, no tensor data is read:
//! the shapes come from the pickle.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::byol::ByolConfig;
use crate::import::deepmind;
use crate::io::{ENCODER_CONFIG_KEY, MODEL_CONFIG_KEY};
use crate::nn::ResNetConfig;
use crate::weights::architecture::infer_architecture;
use crate::weights::choice::Part;
use crate::weights::encoder::describe_architecture;
use crate::weights::format::{open_weights, WeightsFormat};
use crate::weights::layouts::{Framework, PartFound};
use crate::Result;

/// How the architecture of the inspected encoder is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchitectureOrigin {
    /// From the file's metadata.
    Declared,
    /// From the tensor shapes and the framework's conventions.
    Inferred,
}

/// The chosen encoder of an inspected file.
#[derive(Debug, Clone)]
pub struct EncoderSummary {
    pub part: Part,
    /// Where its tensors are in the file.
    pub prefix: String,
    /// Its architecture, or why the shapes leave it open (then `--arch` is needed).
    pub architecture: std::result::Result<(ResNetConfig, ArchitectureOrigin), String>,
    /// Its tensors in torchvision names with their shapes, by name.
    pub tensors: Vec<(String, Vec<usize>)>,
}

/// What [`inspect_weights`] found.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub path: PathBuf,
    pub format: WeightsFormat,
    pub framework: Framework,
    /// The saved object's top-level entries in words (`torch.save` files).
    pub top_level: Vec<(String, String)>,
    /// Metadata keys and values (safetensors), long values shortened.
    pub metadata: BTreeMap<String, String>,
    pub parts: Vec<PartFound>,
    /// Tensors of no part, by first path component.
    pub other: BTreeMap<String, usize>,
    /// Recognised but unreadable encoders, and why.
    pub unsupported: Vec<String>,
    /// The encoder asked for, or why the file has none (or several).
    pub encoder: std::result::Result<EncoderSummary, String>,
}

/// Inspects `path`, describing its encoder `part`.
pub fn inspect_weights(path: &Path, part: Part) -> Result<Inspection> {
    let opened = open_weights(path)?;
    let encoder = if opened.format == WeightsFormat::Pickle {
        // Haiku names and HWIO shapes: the conversion tells the torchvision shapes.
        match deepmind::read_part(path, &Device::Cpu, part) {
            Ok(file) => {
                let mut tensors: Vec<(String, Vec<usize>)> = file
                    .tensors
                    .iter()
                    .map(|(k, t)| (k.clone(), t.dims().to_vec()))
                    .collect();
                tensors.sort();
                let architecture = file
                    .metadata_json::<ResNetConfig>(path, ENCODER_CONFIG_KEY)
                    .map(|c| (c, ArchitectureOrigin::Inferred))
                    .map_err(|e| e.to_string());
                Ok(EncoderSummary {
                    part,
                    prefix: format!("{part}_params/{part}_state"),
                    architecture,
                    tensors,
                })
            }
            Err(e) => Err(e.to_string()),
        }
    } else {
        opened.layout.encoder(part).map(|at| {
            let mut tensors: Vec<(String, Vec<usize>)> = opened
                .tensors
                .iter()
                .filter_map(|(k, e)| at.torchvision_name(k).map(|tv| (tv, e.shape.clone())))
                // A classifier `fc` is its own part.
                .filter(|(tv, _)| !tv.starts_with("fc."))
                .collect();
            tensors.sort();
            let declared = if at.prefix.is_empty() {
                opened.metadata.get(ENCODER_CONFIG_KEY).map(|json| {
                    serde_json::from_str::<ResNetConfig>(json).map_err(|e| {
                        format!("`{ENCODER_CONFIG_KEY}` in the metadata is invalid: {e}")
                    })
                })
            } else {
                opened.metadata.get(MODEL_CONFIG_KEY).map(|json| {
                    serde_json::from_str::<ByolConfig>(json)
                        .map(|m| m.encoder)
                        .map_err(|e| {
                            format!("`{MODEL_CONFIG_KEY}` in the metadata is invalid: {e}")
                        })
                })
            };
            let architecture = match declared {
                Some(config) => config.map(|c| (c, ArchitectureOrigin::Declared)),
                None => {
                    let shapes: HashMap<String, Vec<usize>> = tensors.iter().cloned().collect();
                    infer_architecture(&shapes, opened.layout.framework.shape_hints())
                        .map(|c| (c, ArchitectureOrigin::Inferred))
                }
            };
            EncoderSummary {
                part,
                prefix: at.prefix.clone(),
                architecture,
                tensors,
            }
        })
    };
    let metadata = opened
        .metadata
        .iter()
        .map(|(k, v)| {
            let v = if v.chars().count() > 120 {
                format!("{}…", v.chars().take(120).collect::<String>())
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect();
    Ok(Inspection {
        path: path.to_path_buf(),
        format: opened.format,
        framework: opened.layout.framework,
        top_level: opened.top_level,
        metadata,
        parts: opened.layout.parts,
        other: opened.layout.other,
        unsupported: opened.layout.unsupported,
        encoder: encoder.map_err(|why| format!("{}: {why}", path.display())),
    })
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file:         {}", self.path.display())?;
        writeln!(f, "format:       {}", self.format.describe())?;
        writeln!(f, "framework:    {}", self.framework.describe())?;
        if !self.top_level.is_empty() {
            writeln!(f, "top level (read as data, nothing constructed or run):")?;
            for (k, v) in &self.top_level {
                writeln!(f, "  {k}: {v}")?;
            }
        }
        if !self.metadata.is_empty() {
            writeln!(f, "metadata:")?;
            for (k, v) in &self.metadata {
                writeln!(f, "  {k}: {v}")?;
            }
        }
        writeln!(f, "parts:")?;
        if self.parts.is_empty() {
            writeln!(f, "  (no ResNet encoder recognised)")?;
        }
        let width = self.parts.iter().map(|p| p.prefix.len()).max().unwrap_or(0);
        let kinds = self
            .parts
            .iter()
            .map(|p| p.kind.describe().len())
            .max()
            .unwrap_or(0);
        for p in &self.parts {
            let prefix = if p.prefix.is_empty() {
                "(top level)"
            } else {
                &p.prefix
            };
            write!(
                f,
                "  {:<kinds$}  {prefix:<width$}  {} tensors",
                p.kind.describe(),
                p.tensors
            )?;
            if !p.aliases.is_empty() {
                write!(f, " (the same tensors also as {})", p.aliases.join(", "))?;
            }
            writeln!(f)?;
        }
        if !self.other.is_empty() {
            let mut line = String::new();
            for (k, n) in &self.other {
                let _ = write!(line, "{}{k} ({n})", if line.is_empty() { "" } else { ", " });
            }
            writeln!(f, "other tensors: {line}")?;
        }
        for u in &self.unsupported {
            writeln!(f, "not read: {u}")?;
        }
        match &self.encoder {
            Err(why) => writeln!(f, "encoder:      {why}")?,
            Ok(e) => {
                let at = if e.prefix.is_empty() {
                    "the top level".to_string()
                } else {
                    format!("`{}`", e.prefix)
                };
                writeln!(f, "encoder:      {} ({at})", e.part)?;
                match &e.architecture {
                    Ok((c, origin)) => writeln!(
                        f,
                        "architecture: {} ({})",
                        describe_architecture(c),
                        match origin {
                            ArchitectureOrigin::Declared => "declared in the metadata",
                            ArchitectureOrigin::Inferred => "inferred from the shapes",
                        }
                    )?,
                    Err(why) => writeln!(f, "architecture: unknown: {why}")?,
                }
                writeln!(f, "tensors ({}):", e.tensors.len())?;
                let width = e.tensors.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
                for (name, shape) in &e.tensors {
                    writeln!(f, "  {name:<width$}  {shape:?}")?;
                }
            }
        }
        Ok(())
    }
}
