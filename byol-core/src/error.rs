//! The one error type of the library. Every variant names what was at fault: a file, a tensor, a
//! flag or a config field, so a user can act on the message without reading the source.

use std::path::PathBuf;

/// Result alias used throughout `byol-core`.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on `path` failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file exists but its content is not what the reader expects.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },

    /// A checkpoint or weights file does not match the model it is loaded into.
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },

    /// A configuration value (from a TOML file, a preset or a flag) is out of range.
    #[error("invalid configuration `{field}`: {message}")]
    Config { field: String, message: String },

    /// The inputs of a computation (a batch, labels, features, an image buffer) are
    /// inconsistent with each other or with what was asked.
    #[error("invalid input: {0}")]
    Input(String),

    /// A dataset's content cannot be used as it is (image and mask of different sizes, labels
    /// outside the classes, train and test with different classes, mostly corrupt files). Never
    /// skipped as a corrupt sample: the dataset itself needs fixing.
    #[error("dataset: {0}")]
    Dataset(String),

    /// One of our own values (a config, a report, metrics, a plot) could not be encoded.
    #[error("cannot encode {what}: {message}")]
    Encode { what: String, message: String },

    /// Training diverged or produced a non-finite value.
    #[error("training diverged: {0}")]
    Diverged(String),

    /// A collective call of a data-parallel job failed (a rank died, the engine refused).
    #[error("data-parallel job: {0}")]
    Distributed(String),

    /// An error from the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A format error naming the file.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An error naming a tensor.
    pub fn tensor(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Tensor {
            name: name.into(),
            message: message.into(),
        }
    }

    /// An encoding failure of `what` (a config, a report, a plot).
    pub fn encode(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Encode {
            what: what.into(),
            message: message.to_string(),
        }
    }

    /// An error naming a configuration field.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}
