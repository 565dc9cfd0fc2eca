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

/// Largest data a gzipped IDX file may inflate to (1 GiB; EMNIST's largest split is 547 MB).
/// The size comes from the header, checked before anything is inflated, so a small file cannot
/// make the reader allocate gigabytes.
pub const MAX_IDX_GZIP_BYTES: u64 = 1 << 30;

/// Deflate cannot compress better than about 1032:1, so a gzip file of `n` bytes holds at most
/// this many times `n`: a header claiming more is a lie, refused without inflating.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Reads an IDX file of `u8` (type 0x08); gzip is recognised by its magic bytes. The header is
/// read first; its dimensions must fit the file (plain) or the bounds above (gzip), and the data
/// is read through a reader limited to the size they give.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let io = |e: std::io::Error| Error::io(path, e);
    let bad = |msg: String| Error::format(path, msg);
    let file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut file = std::io::BufReader::new(file);
    let gzip = {
        use std::io::BufRead;
        file.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b])
    };
    let mut reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let read_exact = |reader: &mut dyn Read, buf: &mut [u8], what: &str| {
        reader.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => bad(format!("truncated IDX {what}")),
            _ if gzip => bad(format!("bad gzip data: {e}")),
            _ => Error::io(path, e),
        })
    };
    let mut magic = [0u8; 4];
    read_exact(&mut *reader, &mut magic, "header")?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(bad("not an IDX file (bad magic number)".into()));
    }
    if magic[2] != 0x08 {
        return Err(bad(format!(
            "IDX element type 0x{:02x}, only unsigned bytes (0x08) are supported",
            magic[2]
        )));
    }
    let ndims = usize::from(magic[3]);
    let mut raw_dims = vec![0u8; 4 * ndims];
    read_exact(&mut *reader, &mut raw_dims, "header")?;
    let dims: Vec<usize> = raw_dims
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let size = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| bad(format!("IDX header dimensions {dims:?} overflow")))?;
    let header_len = 4 + 4 * ndims as u64;
    if gzip {
        let most = file_len
            .saturating_mul(MAX_DEFLATE_RATIO)
            .min(MAX_IDX_GZIP_BYTES);
        if size > most {
            return Err(bad(format!(
                "IDX header claims dimensions {dims:?} ({size} bytes), more than a gzip file of \
                 {file_len} bytes may hold (at most {most} bytes); refused without inflating"
            )));
        }
    } else if size != file_len.saturating_sub(header_len) {
        return Err(bad(format!(
            "IDX header dimensions {dims:?} need {size} data bytes, the file has {}",
            file_len.saturating_sub(header_len)
        )));
    }
    // One byte more than the header promises tells a longer stream from an exact one.
    let mut data = Vec::new();
    reader.take(size + 1).read_to_end(&mut data).map_err(|e| {
        if gzip {
            bad(format!("bad gzip data: {e}"))
        } else {
            io(e)
        }
    })?;
    if data.len() as u64 != size {
        return Err(bad(format!(
            "IDX header dimensions {dims:?} need {size} data bytes, the file has {}{}",
            data.len(),
            if data.len() as u64 > size {
                " or more"
            } else {
                ""
            }
        )));
    }
    Ok(IdxArray { dims, data })
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

    fn label_at(&self, index: usize) -> Result<usize> {
        self.label(index)
            .ok_or_else(|| out_of_range(index, self.labels.len()))
    }
}
