//! Datasets, decoding, augmentations and the batch loader.

pub mod augment;
pub mod image;

pub use image::Image;
