//! Datasets, decoding, augmentations and the batch loader.

pub mod image;

pub use image::Image;
