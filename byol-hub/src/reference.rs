//! What a `--weights` value names: a local path or a Hub reference
//! `hf://<owner>/<repo>[@<revision>][/<file>]` (parsing; [`crate::pull`] downloads).

use std::path::PathBuf;

use byol_core::{Error, Result};

/// A parsed `--weights` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsRef {
    Local(PathBuf),
    Hub(HubRef),
}

/// `hf://<owner>/<repo>[@<revision>][/<file>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `owner/name`.
    pub repo: String,
    /// Branch, tag or commit; `None` is `main`.
    pub revision: Option<String>,
    /// File inside the repo; `None` is `model.safetensors`.
    pub file: Option<String>,
}

/// The file a Hub reference without a file name points at.
pub const DEFAULT_HUB_FILE: &str = "model.safetensors";

impl HubRef {
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    pub fn file(&self) -> &str {
        self.file.as_deref().unwrap_or(DEFAULT_HUB_FILE)
    }
}

impl std::fmt::Display for HubRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hf://{}", self.repo)?;
        if let Some(r) = &self.revision {
            write!(f, "@{r}")?;
        }
        if let Some(file) = &self.file {
            write!(f, "/{file}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for WeightsRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let Some(rest) = s.strip_prefix("hf://") else {
            if s.is_empty() {
                return Err(Error::config(
                    "weights",
                    "empty: give a file or hf://owner/repo",
                ));
            }
            return Ok(WeightsRef::Local(PathBuf::from(s)));
        };
        let bad = |why: &str| {
            Error::config(
                "weights",
                format!("`{s}`: {why}; expected hf://<owner>/<repo>[@<revision>][/<file>]"),
            )
        };
        let mut parts = rest.splitn(3, '/');
        let owner = parts.next().unwrap_or_default();
        let name_rev = parts.next().ok_or_else(|| bad("no repository name"))?;
        let file = parts.next().map(str::to_string);
        let (name, revision) = match name_rev.split_once('@') {
            Some((n, r)) => (n, Some(r.to_string())),
            None => (name_rev, None),
        };
        let valid = |x: &str| {
            !x.is_empty()
                && x.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !valid(owner) || !valid(name) {
            return Err(bad("owner and name are letters, digits, `-`, `_` or `.`"));
        }
        if revision.as_deref() == Some("") {
            return Err(bad("empty revision after `@`"));
        }
        if let Some(f) = &file {
            if f.is_empty() || f.split('/').any(|c| c.is_empty() || c == "..") {
                return Err(bad(
                    "the file path is empty or climbs out of the repository",
                ));
            }
        }
        Ok(WeightsRef::Hub(HubRef {
            repo: format!("{owner}/{name}"),
            revision,
            file,
        }))
    }
}
