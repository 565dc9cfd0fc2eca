//! [`Weights`]: an encoder file or none (`--weights <file>` / `--weights none`).

use std::path::PathBuf;

use crate::{Error, Result};

/// Which weights an evaluation uses: an encoder file, or none. The one "which weights" type of
/// the library (`hf://` references are resolved to a file by `byol-hub` first).
#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    /// An encoder file (any format of [`crate::weights::read_weights`]; a file without
    /// architecture metadata needs one given alongside).
    File(PathBuf),
    /// No pretrained weights: frozen-feature protocols read raw pixels (the baseline), fine-tuning
    /// starts from a random initialisation.
    None,
}

impl std::str::FromStr for Weights {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "" => Err(Error::config(
                "weights",
                "empty: give an encoder file or `none`",
            )),
            "none" => Ok(Weights::None),
            path => Ok(Weights::File(PathBuf::from(path))),
        }
    }
}

impl Weights {
    /// The file, if any.
    pub fn file(&self) -> Option<&std::path::Path> {
        match self {
            Weights::File(p) => Some(p),
            Weights::None => None,
        }
    }
}

/// Which encoder of a BYOL checkpoint to use: the online one (the default, what the paper
/// evaluates and what our encoder files hold) or the target (momentum) one, where the file has
/// one (`--part online|target`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Part {
    #[default]
    Online,
    Target,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Online => "online",
            Part::Target => "target",
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Part {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "online" => Ok(Part::Online),
            "target" | "momentum" => Ok(Part::Target),
            _ => Err(Error::config(
                "part",
                format!("`{s}` is not a part: use `online` or `target`"),
            )),
        }
    }
}
