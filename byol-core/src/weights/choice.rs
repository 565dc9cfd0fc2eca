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
