//! MNIST-style IDX files (MNIST, Fashion-MNIST), plain or gzipped.

use crate::data::dataset::out_of_range;
use crate::data::{Dataset, Image, Sample, Split};
use crate::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where Debian's `dataset-fashion-mnist` package installs Fashion-MNIST.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// An IDX array of unsigned bytes: its dimensions and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file of `u8` (type 0x08); gzip is recognised by its magic bytes.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("bad gzip data: {e}")))?;
        out
    } else {
        raw
    };
    let bad = |msg: String| Error::format(path, msg);
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("not an IDX file (bad magic number)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "IDX element type 0x{:02x}, only unsigned bytes (0x08) are supported",
            bytes[2]
        )));
    }
    let ndims = usize::from(bytes[3]);
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(bad("truncated IDX header".into()));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if expected != Some(bytes.len() - header) {
        return Err(bad(format!(
            "dimensions {dims:?} need {expected:?} data bytes, the file has {}",
            bytes.len() - header
        )));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Grey images with a class label each, from an images IDX (N x rows x cols) and a labels
/// IDX (N).
#[derive(Debug, Clone)]
pub struct IdxDataset {
    classes: Vec<String>,
    rows: usize,
    cols: usize,
    images: Vec<u8>,
    labels: Vec<u8>,
}

impl IdxDataset {
    /// Pairs `images` and `labels`; every label must index `classes`.
    pub fn open(images: &Path, labels: &Path, classes: Vec<String>) -> Result<Self> {
        let img = read_idx(images)?;
        let lab = read_idx(labels)?;
        let [n, rows, cols] = img.dims[..] else {
            return Err(Error::format(
                images,
                format!("expected 3 dimensions, got {:?}", img.dims),
            ));
        };
        if lab.dims != [n] {
            return Err(Error::format(
                labels,
                format!(
                    "expected {n} labels to match {}, got dims {:?}",
                    images.display(),
                    lab.dims
                ),
            ));
        }
        if let Some(i) = lab
            .data
            .iter()
            .position(|&l| usize::from(l) >= classes.len())
        {
            return Err(Error::format(
                labels,
                format!(
                    "label {} of item {i} out of range for {} classes",
                    lab.data[i],
                    classes.len()
                ),
            ));
        }
        Ok(Self {
            classes,
            rows,
            cols,
            images: img.data,
            labels: lab.data,
        })
    }

    /// MNIST from `dir` (`{train,t10k}-{images-idx3,labels-idx1}-ubyte`, `.gz` or not).
    pub fn mnist(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let classes = (0..10).map(|d| d.to_string()).collect();
        Self::standard(dir.as_ref(), split, classes)
    }

    /// Fashion-MNIST from `dir` (same file names as MNIST); see [`FASHION_MNIST_DIR`].
    pub fn fashion_mnist(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let classes = FASHION_CLASSES.map(str::to_owned).to_vec();
        Self::standard(dir.as_ref(), split, classes)
    }

    fn standard(dir: &Path, split: Split, classes: Vec<String>) -> Result<Self> {
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        let images = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        Self::open(&images, &labels, classes)
    }

    /// Label of sample `index` without building its image.
    pub fn label(&self, index: usize) -> Option<usize> {
        self.labels.get(index).map(|&l| usize::from(l))
    }
}

/// `dir/name.gz`, else `dir/name`.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{name}.gz"));
    let plain = dir.join(name);
    if gz.is_file() {
        Ok(gz)
    } else if plain.is_file() {
        Ok(plain)
    } else {
        Err(Error::io(
            plain,
            std::io::Error::new(std::io::ErrorKind::NotFound, "IDX file not found (nor .gz)"),
        ))
    }
}

impl Dataset for IdxDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn class_names(&self) -> &[String] {
        &self.classes
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let label = self
            .label(index)
            .ok_or_else(|| out_of_range(index, self.labels.len()))?;
        let size = self.rows * self.cols;
        let data = self.images[index * size..(index + 1) * size].to_vec();
        Ok(Sample {
            image: Image::new(self.cols, self.rows, 1, data)?,
            label,
        })
    }
}
