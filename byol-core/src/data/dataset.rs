//! The `Dataset` trait every reader implements, and the corrupt-file policy the loader applies.

use crate::data::Image;
use crate::{Error, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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

    /// The label of sample `index` without decoding its image where the reader knows it (every
    /// reader of this crate does; the default decodes). Label subsets read every label.
    fn label_at(&self, index: usize) -> Result<usize> {
        self.get(index).map(|s| s.label)
    }

    /// The file sample `index` was read from, for datasets of image files (`None` for the
    /// readers of packed formats: IDX, CIFAR). Label-subset files name their images by it.
    fn file_path(&self, _index: usize) -> Option<&Path> {
        None
    }
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

/// The corrupt files met so far, shared by a loader's workers: each is named once (a warning),
/// later meetings are only counted; [`CorruptLog::get`] stops the run when more than half of
/// the samples tried were corrupt.
#[derive(Debug, Default)]
pub struct CorruptLog {
    tried: AtomicUsize,
    skipped: AtomicUsize,
    warned: Mutex<HashSet<usize>>,
}

impl CorruptLog {
    /// Corrupt samples skipped so far (each meeting counts).
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Samples read so far.
    pub fn tried(&self) -> usize {
        self.tried.load(Ordering::Relaxed)
    }

    /// Distinct corrupt samples seen.
    pub fn distinct(&self) -> usize {
        self.warned.lock().map(|w| w.len()).unwrap_or(0)
    }

    /// `dataset.get(index)` under `policy`: a corrupt file gives `Ok(None)` (a warning naming
    /// it the first time, a count after that), unless more than half of the samples tried so
    /// far were corrupt once at least `min(dataset.len(), 32)` were tried: then an error, since
    /// no useful batch will come out of this dataset.
    pub fn get(
        &self,
        dataset: &dyn Dataset,
        index: usize,
        policy: CorruptPolicy,
    ) -> Result<Option<Sample>> {
        let tried = self.tried.fetch_add(1, Ordering::Relaxed) + 1;
        match dataset.get(index) {
            Ok(sample) => Ok(Some(sample)),
            Err(err) if policy == CorruptPolicy::Skip && is_corrupt(&err) => {
                let skipped = self.skipped.fetch_add(1, Ordering::Relaxed) + 1;
                let first = self
                    .warned
                    .lock()
                    .map(|mut w| w.insert(index))
                    .unwrap_or(true);
                if first {
                    tracing::warn!("skipping corrupt sample {index}: {err}");
                } else {
                    tracing::debug!("skipping corrupt sample {index} again");
                }
                if tried >= dataset.len().clamp(1, 32) && 2 * skipped > tried {
                    return Err(Error::Dataset(format!(
                        "{skipped} of the {tried} samples read were corrupt ({} distinct files; \
                         the last: {err}): more than half, so the dataset or its path is wrong",
                        self.distinct()
                    )));
                }
                Ok(None)
            }
            Err(err) => Err(err),
        }
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
