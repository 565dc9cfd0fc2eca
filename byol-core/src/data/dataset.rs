//! The `Dataset` trait every reader implements, and the corrupt-file policy the loader applies.

use crate::data::Image;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// One decoded example: the image and its class index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub image: Image,
    pub label: usize,
}

/// A random-access, labelled image dataset. `Send + Sync` so the loader threads share one.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class names in label order; `label` indexes this slice.
    fn class_names(&self) -> &[String];

    fn num_classes(&self) -> usize {
        self.class_names().len()
    }

    /// Reads and decodes sample `index` (`0..len()`). A file that does not decode gives
    /// `Error::Format` naming it; see [`is_corrupt`].
    fn get(&self, index: usize) -> Result<Sample>;
}

/// Train or test half of the datasets that ship in two fixed parts (CIFAR, MNIST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// What to do with a sample whose file is corrupt or truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CorruptPolicy {
    /// Warn naming the file, count it and leave it out (large scraped datasets have a few).
    #[default]
    Skip,
    /// Fail with the decode error.
    Error,
}

/// Whether `err` means "this one file's content is bad" (skippable) rather than a missing
/// file, a bad index or a configuration mistake, which always stop.
pub fn is_corrupt(err: &Error) -> bool {
    matches!(err, Error::Format { .. })
}

/// `dataset.get(index)` under `policy`: a corrupt file gives `Ok(None)` after a warning and
/// one increment of `skipped`.
pub fn get_or_skip(
    dataset: &dyn Dataset,
    index: usize,
    policy: CorruptPolicy,
    skipped: &AtomicUsize,
) -> Result<Option<Sample>> {
    match dataset.get(index) {
        Ok(sample) => Ok(Some(sample)),
        Err(err) if policy == CorruptPolicy::Skip && is_corrupt(&err) => {
            tracing::warn!("skipping corrupt sample {index}: {err}");
            skipped.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// The error for an index past the end, shared by the readers.
pub(crate) fn out_of_range(index: usize, len: usize) -> Error {
    Error::Input(format!(
        "sample index {index} out of range for a dataset of {len}"
    ))
}

/// Non-empty lines with their 1-based line numbers.
pub(crate) fn read_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim().to_owned()))
        .filter(|(_, l)| !l.is_empty())
        .collect())
}

/// `dir/name`, for readers whose files have fixed names.
pub(crate) fn existing(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::io(
            &path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        ))
    }
}
