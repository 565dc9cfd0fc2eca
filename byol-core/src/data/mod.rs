//! Datasets, decoding, augmentations and the batch loader.

pub mod augment;
pub mod cifar;
pub mod compose;
pub mod dataset;
pub mod decode;
pub mod idx;
pub mod image;
pub mod image_folder;
pub mod imagenet;
pub mod label_subset;
pub mod loader;
pub mod pipeline;
pub mod source;
pub mod splits;
pub mod voc;

pub use compose::{Concat, Subset};
pub use dataset::{CorruptPolicy, Dataset, Sample, Split};
pub use decode::ColorMode;
pub use image::Image;
pub use label_subset::{LabelSpec, LabelSubset};
pub use source::{DatasetKind, DatasetSource};
