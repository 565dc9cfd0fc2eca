//! CIFAR-10 and CIFAR-100 in their binary releases (`cifar-10-batches-bin/`,
//! `cifar-100-binary/`): fixed-size records of label byte(s) and a 32x32 image stored CHW.

use crate::data::dataset::{existing, out_of_range, read_lines};
use crate::data::{Dataset, Image, Sample, Split};
use crate::{Error, Result};
use std::path::Path;

const PIXELS: usize = 32 * 32;
const IMAGE_BYTES: usize = 3 * PIXELS;

const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Which CIFAR-100 label to train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cifar100Labels {
    /// The 100 classes.
    Fine,
    /// The 20 superclasses.
    Coarse,
}

/// A whole CIFAR split held in memory (150 MB for the training set).
#[derive(Debug, Clone)]
pub struct Cifar {
    classes: Vec<String>,
    labels: Vec<u8>,
    /// Images one after another, each CHW as on disk.
    pixels: Vec<u8>,
}

impl Cifar {
    /// CIFAR-10 from `dir` (`data_batch_1.bin`..`data_batch_5.bin`, `test_batch.bin`).
    pub fn cifar10(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let names: Vec<String> = match split {
            Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Split::Test => vec!["test_batch.bin".into()],
        };
        let classes = class_names(&dir.join("batches.meta.txt"), 10)?
            .unwrap_or_else(|| CIFAR10_CLASSES.map(str::to_owned).to_vec());
        let mut data = Self {
            classes,
            labels: Vec::new(),
            pixels: Vec::new(),
        };
        for name in names {
            data.append(&existing(dir, &name)?, 0, 1)?;
        }
        Ok(data)
    }

    /// CIFAR-100 from `dir` (`train.bin`, `test.bin`; records are coarse, fine, pixels).
    pub fn cifar100(dir: impl AsRef<Path>, split: Split, which: Cifar100Labels) -> Result<Self> {
        let dir = dir.as_ref();
        let file = match split {
            Split::Train => "train.bin",
            Split::Test => "test.bin",
        };
        let (offset, count, names) = match which {
            Cifar100Labels::Coarse => (0, 20, "coarse_label_names.txt"),
            Cifar100Labels::Fine => (1, 100, "fine_label_names.txt"),
        };
        let classes = class_names(&dir.join(names), count)?
            .unwrap_or_else(|| (0..count).map(|i| i.to_string()).collect());
        let mut data = Self {
            classes,
            labels: Vec::new(),
            pixels: Vec::new(),
        };
        data.append(&existing(dir, file)?, offset, 2)?;
        Ok(data)
    }

    /// Appends the records of `path`: `header` label bytes each, the label at `offset`.
    fn append(&mut self, path: &Path, offset: usize, header: usize) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let record = header + IMAGE_BYTES;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(Error::format(
                path,
                format!(
                    "size {} is not a whole number of {record}-byte records",
                    bytes.len()
                ),
            ));
        }
        for (i, rec) in bytes.chunks_exact(record).enumerate() {
            let label = rec[offset];
            if usize::from(label) >= self.classes.len() {
                return Err(Error::format(
                    path,
                    format!(
                        "record {i}: label {label} out of range for {} classes",
                        self.classes.len()
                    ),
                ));
            }
            self.labels.push(label);
            self.pixels.extend_from_slice(&rec[header..]);
        }
        Ok(())
    }
}

/// Class names from a `*.txt` meta file when it is there (one per line).
fn class_names(path: &Path, count: usize) -> Result<Option<Vec<String>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let names: Vec<String> = read_lines(path)?.into_iter().map(|(_, l)| l).collect();
    if names.len() != count {
        return Err(Error::format(
            path,
            format!("{} class names, expected {count}", names.len()),
        ));
    }
    Ok(Some(names))
}

impl Dataset for Cifar {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn class_names(&self) -> &[String] {
        &self.classes
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let label = *self
            .labels
            .get(index)
            .ok_or_else(|| out_of_range(index, self.labels.len()))?;
        let chw = &self.pixels[index * IMAGE_BYTES..(index + 1) * IMAGE_BYTES];
        let (r, g, b) = (&chw[..PIXELS], &chw[PIXELS..2 * PIXELS], &chw[2 * PIXELS..]);
        let hwc = (0..PIXELS).flat_map(|i| [r[i], g[i], b[i]]).collect();
        Ok(Sample {
            image: Image::new(32, 32, 3, hwc)?,
            label: usize::from(label),
        })
    }

    fn label_at(&self, index: usize) -> Result<usize> {
        self.labels
            .get(index)
            .map(|&l| usize::from(l))
            .ok_or_else(|| out_of_range(index, self.labels.len()))
    }
}
