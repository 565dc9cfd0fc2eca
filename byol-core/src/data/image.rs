//! The decoded image that flows from the readers to the augmentations.

/// An 8-bit image, rows top to bottom, pixels interleaved (HWC): `channels` is 1 (grey) or 3 (RGB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl Image {
    /// Wraps interleaved pixels; `data.len()` must be `width * height * channels`.
    pub fn new(width: usize, height: usize, channels: usize, data: Vec<u8>) -> crate::Result<Self> {
        if channels != 1 && channels != 3 {
            return Err(crate::Error::Input(format!(
                "an image has 1 or 3 channels, got {channels}"
            )));
        }
        if data.len() != width * height * channels {
            return Err(crate::Error::Input(format!(
                "image of {width}x{height}x{channels} needs {} bytes, got {}",
                width * height * channels,
                data.len()
            )));
        }
        Ok(Self {
            width,
            height,
            channels,
            data,
        })
    }
}
