//! Datasets, decoding, augmentations and the batch loader.
