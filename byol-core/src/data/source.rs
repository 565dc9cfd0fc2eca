//! Which dataset a command line names: a kind (`fashion-mnist`, `cifar10`, `imagenet`, ...) and a
//! directory, opened per split, with the augmentation recipe that suits its image size.

use crate::data::augment::AugmentConfig;
use crate::data::cifar::{Cifar, Cifar100Labels};
use crate::data::idx::{IdxDataset, FASHION_MNIST_DIR};
use crate::data::image_folder::ImageFolder;
use crate::data::imagenet::{imagenet_train, imagenet_val};
use crate::data::pipeline::fashion_mnist_augment;
use crate::data::{Dataset, Split};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// The on-disk layouts the binaries accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    /// IDX files of Fashion-MNIST (default directory: Debian's `dataset-fashion-mnist`).
    FashionMnist,
    /// IDX files of MNIST.
    Mnist,
    /// CIFAR-10, binary version.
    Cifar10,
    /// CIFAR-100, binary version, fine labels.
    Cifar100,
    /// `root/<class>/<image>`, or `root/train/<class>/...` with `root/test/` (or `val/`) beside.
    ImageFolder,
    /// ILSVRC-2012: `root/train/<wnid>/`, `root/val/` as class folders or flat with
    /// `root/LOC_val_solution.csv` or `root/val_labels.txt`.
    Imagenet,
}

impl DatasetKind {
    pub const NAMES: [&'static str; 6] = [
        "fashion-mnist",
        "mnist",
        "cifar10",
        "cifar100",
        "image-folder",
        "imagenet",
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::FashionMnist => "fashion-mnist",
            Self::Mnist => "mnist",
            Self::Cifar10 => "cifar10",
            Self::Cifar100 => "cifar100",
            Self::ImageFolder => "image-folder",
            Self::Imagenet => "imagenet",
        }
    }
}

impl FromStr for DatasetKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "fashion-mnist" => Self::FashionMnist,
            "mnist" => Self::Mnist,
            "cifar10" => Self::Cifar10,
            "cifar100" => Self::Cifar100,
            "image-folder" => Self::ImageFolder,
            "imagenet" => Self::Imagenet,
            other => {
                return Err(Error::config(
                    "dataset",
                    format!("`{other}`: use one of {}", Self::NAMES.join(", ")),
                ))
            }
        })
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A dataset kind and its directory (`None`: the kind's default, where it has one).
#[derive(Debug, Clone)]
pub struct DatasetSource {
    pub kind: DatasetKind,
    pub dir: Option<PathBuf>,
}

impl DatasetSource {
    pub fn new(kind: DatasetKind, dir: Option<PathBuf>) -> Self {
        Self { kind, dir }
    }

    /// The directory read: the given one or the kind's default.
    pub fn dir(&self) -> Result<PathBuf> {
        match (&self.dir, self.kind) {
            (Some(d), _) => Ok(d.clone()),
            (None, DatasetKind::FashionMnist) => Ok(PathBuf::from(FASHION_MNIST_DIR)),
            (None, kind) => Err(Error::config(
                "data",
                format!("a directory is required for the dataset {kind}"),
            )),
        }
    }

    /// Opens one split. Image folders without a `test/` or `val/` sub-folder have no test split.
    pub fn open(&self, split: Split) -> Result<Arc<dyn Dataset>> {
        let dir = self.dir()?;
        Ok(match self.kind {
            DatasetKind::FashionMnist => {
                Arc::new(IdxDataset::fashion_mnist(&dir, split).map_err(|e| match e {
                    // Only a missing file is helped by the package hint; a corrupt one says so.
                    Error::Io { ref source, .. }
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        Error::Dataset(format!(
                            "Fashion-MNIST not found in {} ({e}): install Debian's \
                             dataset-fashion-mnist or pass the IDX directory",
                            dir.display()
                        ))
                    }
                    e => e,
                })?)
            }
            DatasetKind::Mnist => Arc::new(IdxDataset::mnist(&dir, split)?),
            DatasetKind::Cifar10 => Arc::new(Cifar::cifar10(&dir, split)?),
            DatasetKind::Cifar100 => Arc::new(Cifar::cifar100(&dir, split, Cifar100Labels::Fine)?),
            DatasetKind::ImageFolder => Arc::new(open_image_folder(&dir, split)?),
            DatasetKind::Imagenet => Arc::new(match split {
                Split::Train => imagenet_train(&dir)?,
                Split::Test => {
                    let labels = ["LOC_val_solution.csv", "val_labels.txt"]
                        .iter()
                        .map(|name| dir.join(name))
                        .find(|p| p.is_file());
                    imagenet_val(&dir, labels.as_deref())?
                }
            }),
        })
    }

    /// The augmentation (and evaluation transform) recipe for this dataset at `image_size`,
    /// producing `channels` channels.
    pub fn augment_config(&self, image_size: usize, channels: usize) -> AugmentConfig {
        let mut a = match self.kind {
            DatasetKind::FashionMnist | DatasetKind::Mnist => fashion_mnist_augment(),
            _ if image_size <= 64 => AugmentConfig::small_image(image_size),
            _ => AugmentConfig::byol_imagenet(image_size),
        };
        a.size = image_size;
        if channels != a.out_channels {
            a.out_channels = channels;
            a.mean.resize(channels, a.mean[0]);
            a.std.resize(channels, a.std[0]);
        }
        a
    }
}

/// `root/train` + `root/test` (or `root/val`) when present, else `root` itself as the train split.
fn open_image_folder(root: &Path, split: Split) -> Result<ImageFolder> {
    let train = root.join("train");
    let has_splits = train.is_dir();
    match split {
        Split::Train if has_splits => ImageFolder::open(train),
        Split::Train => ImageFolder::open(root),
        Split::Test => ["test", "val"]
            .iter()
            .map(|name| root.join(name))
            .find(|p| p.is_dir())
            .map(ImageFolder::open)
            .unwrap_or_else(|| {
                Err(Error::format(
                    root,
                    "no test/ or val/ sub-folder: this image folder has no test split",
                ))
            }),
    }
}
