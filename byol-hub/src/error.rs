//! The error type of `byol-hub`: a Hub transfer that failed, or an error of the library it reads
//! runs and weights with.

use std::path::PathBuf;

/// Result alias used throughout `byol-hub`.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Hub transfer failed: `reference` is the `hf://` reference or the repository.
    #[error("{reference}: {message}")]
    Hub { reference: String, message: String },

    /// Reading the run directory, a weights file or a value (a file, a format, a flag).
    #[error(transparent)]
    Core(#[from] byol_core::Error),
}

impl Error {
    /// An error naming a Hub reference or repository.
    pub fn hub(reference: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Hub {
            reference: reference.into(),
            message: message.into(),
        }
    }

    /// [`byol_core::Error::io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        byol_core::Error::io(path, source).into()
    }

    /// [`byol_core::Error::format`].
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        byol_core::Error::format(path, message).into()
    }

    /// [`byol_core::Error::config`].
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        byol_core::Error::config(field, message).into()
    }
}
