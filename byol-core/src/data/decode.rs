//! JPEG and PNG decoding into [`Image`]. The format is sniffed from the bytes, not the file
//! name: ImageNet has PNG and CMYK files named `.JPEG`.

use crate::data::Image;
use crate::{Error, Result};
use std::io::Cursor;
use std::path::Path;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// The channel layout a decoder hands back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorMode {
    /// Grey files stay 1 channel, everything else becomes RGB.
    Keep,
    /// Always 3 channels (what the ImageNet-style pipelines expect).
    #[default]
    Rgb,
    /// Always 1 channel (ITU-R 601 luma, as PIL's `convert("L")`).
    Grey,
}

/// Default bound on an image's pixel count: PIL's `Image.MAX_IMAGE_PIXELS` (about 178 M, a
/// 0.5 GB RGB buffer). The count comes from the header, checked before anything is decoded, so a
/// small file claiming a huge canvas (a decompression bomb) is refused instead of filling memory.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 178_956_970;

/// Environment variable that raises (or lowers) [`DEFAULT_MAX_IMAGE_PIXELS`].
pub const MAX_IMAGE_PIXELS_ENV: &str = "BYOL_MAX_IMAGE_PIXELS";

/// The pixel bound: `BYOL_MAX_IMAGE_PIXELS` when set, else the default.
pub fn max_image_pixels() -> Result<u64> {
    parse_max_pixels(std::env::var(MAX_IMAGE_PIXELS_ENV).ok().as_deref())
}

fn parse_max_pixels(value: Option<&str>) -> Result<u64> {
    match value {
        None => Ok(DEFAULT_MAX_IMAGE_PIXELS),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                Error::config(
                    MAX_IMAGE_PIXELS_ENV,
                    format!("`{v}` is not a positive number of pixels"),
                )
            }),
    }
}

/// Refuses a `width × height` header above `max` pixels.
fn check_pixels(width: u64, height: u64, max: u64) -> std::result::Result<(), String> {
    let pixels = width.saturating_mul(height);
    if pixels > max {
        return Err(format!(
            "image of {width}×{height} = {pixels} pixels exceeds the limit of {max} pixels \
             (a decompression bomb?); raise it with {MAX_IMAGE_PIXELS_ENV}"
        ));
    }
    Ok(())
}

/// Reads and decodes the file at `path`.
pub fn decode_file(path: &Path, mode: ColorMode) -> Result<Image> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes(&bytes, path, mode)
}

/// Decodes JPEG or PNG `bytes`; `path` only names the source in errors.
pub fn decode_bytes(bytes: &[u8], path: &Path, mode: ColorMode) -> Result<Image> {
    let max = max_image_pixels()?;
    let image = if bytes.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg(bytes, mode, max)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes, max)
    } else {
        Err("neither a JPEG nor a PNG file".to_string())
    }
    .map_err(|msg| Error::format(path, msg))?;
    Ok(convert(image, mode))
}

/// Converts to the channel count `mode` asks for (a no-op when it already matches).
pub fn convert(image: Image, mode: ColorMode) -> Image {
    match (mode, image.channels) {
        (ColorMode::Rgb, 1) => {
            let data = image.data.iter().flat_map(|&v| [v, v, v]).collect();
            Image {
                channels: 3,
                data,
                ..image
            }
        }
        (ColorMode::Grey, 3) => {
            let data = image
                .data
                .chunks_exact(3)
                .map(|p| luma(p[0], p[1], p[2]))
                .collect();
            Image {
                channels: 1,
                data,
                ..image
            }
        }
        _ => image,
    }
}

fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 299 + g as u32 * 587 + b as u32 * 114 + 500) / 1000) as u8
}

fn decode_jpeg(bytes: &[u8], mode: ColorMode, max: u64) -> std::result::Result<Image, String> {
    // The decoder fills a truncated scan with grey instead of failing, so check the end marker:
    // a complete file has an EOI (FF D9) after its last start-of-scan (FF DA).
    if !ends_after_last_scan(bytes) {
        return Err("truncated JPEG (no end-of-image marker after the last scan)".into());
    }
    // The header first: its size is checked before the scan is decoded.
    let mut probe = JpegDecoder::new(Cursor::new(bytes));
    probe
        .decode_headers()
        .map_err(|e| format!("bad JPEG: {e:?}"))?;
    let (w, h) = probe
        .dimensions()
        .ok_or_else(|| "JPEG without dimensions".to_string())?;
    check_pixels(w as u64, h as u64, max)?;
    let out = match mode {
        ColorMode::Rgb => ColorSpace::RGB,
        ColorMode::Grey => ColorSpace::Luma,
        ColorMode::Keep if probe.input_colorspace() == Some(ColorSpace::Luma) => ColorSpace::Luma,
        ColorMode::Keep => ColorSpace::RGB,
    };
    let options = DecoderOptions::default().jpeg_set_out_colorspace(out);
    let mut decoder = JpegDecoder::new_with_options(Cursor::new(bytes), options);
    let data = decoder.decode().map_err(|e| format!("bad JPEG: {e:?}"))?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| "JPEG without dimensions".to_string())?;
    let channels = out.num_components();
    Image::new(width, height, channels, data).map_err(|e| e.to_string())
}

fn ends_after_last_scan(bytes: &[u8]) -> bool {
    for i in (0..bytes.len().saturating_sub(1)).rev() {
        if bytes[i] == 0xFF {
            match bytes[i + 1] {
                0xD9 => return true,
                0xDA => return false,
                _ => {}
            }
        }
    }
    false
}

fn decode_png(bytes: &[u8], max: u64) -> std::result::Result<Image, String> {
    // The header alone first: its size is checked before any row is inflated. The decoder's own
    // byte limit then backs the check (8 bytes a pixel: 16-bit RGBA).
    let mut probe = png::Decoder::new(Cursor::new(bytes));
    let (w, h) = probe
        .read_header_info()
        .map(|info| (info.width, info.height))
        .map_err(|e| format!("bad PNG: {e}"))?;
    check_pixels(w as u64, h as u64, max)?;
    let limits = png::Limits {
        bytes: usize::try_from(max.saturating_mul(8)).unwrap_or(usize::MAX),
    };
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), limits);
    // Palette and low-bit grey expand to 8 bits, 16-bit keeps its high byte.
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| format!("bad PNG: {e}"))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "PNG too large".to_string())?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("bad PNG: {e}"))?;
    buf.truncate(info.buffer_size());
    let (width, height) = (info.width as usize, info.height as usize);
    let (channels, data) = match info.color_type {
        png::ColorType::Grayscale => (1, buf),
        png::ColorType::Rgb => (3, buf),
        // Alpha is dropped, not composited: what torchvision's `convert("RGB")` does.
        png::ColorType::GrayscaleAlpha => (1, buf.chunks_exact(2).map(|p| p[0]).collect()),
        png::ColorType::Rgba => (
            3,
            buf.chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        ),
        png::ColorType::Indexed => return Err("PNG palette was not expanded".into()),
    };
    Image::new(width, height, channels, data).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(w: u32, h: u32, ct: png::ColorType, depth: png::BitDepth, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(ct);
        enc.set_depth(depth);
        if ct == png::ColorType::Indexed {
            enc.set_palette(vec![0, 0, 0, 10, 20, 30, 200, 100, 50]);
        }
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
        out
    }

    fn dec(bytes: &[u8], mode: ColorMode) -> Image {
        decode_bytes(bytes, Path::new("t.png"), mode).unwrap()
    }

    #[test]
    fn png_colour_types_decode_to_8_bit() {
        use png::{BitDepth as D, ColorType as C};
        let rgba = png_bytes(2, 1, C::Rgba, D::Eight, &[1, 2, 3, 9, 4, 5, 6, 9]);
        assert_eq!(dec(&rgba, ColorMode::Keep).data, vec![1, 2, 3, 4, 5, 6]);
        let ga = png_bytes(2, 1, C::GrayscaleAlpha, D::Eight, &[7, 0, 8, 0]);
        let img = dec(&ga, ColorMode::Keep);
        assert_eq!((img.channels, img.data), (1, vec![7, 8]));
        // 16-bit big-endian 0x1234 keeps its high byte.
        let g16 = png_bytes(1, 1, C::Grayscale, D::Sixteen, &[0x12, 0x34]);
        assert_eq!(dec(&g16, ColorMode::Keep).data, vec![0x12]);
        let pal = png_bytes(3, 1, C::Indexed, D::Eight, &[2, 1, 0]);
        assert_eq!(
            dec(&pal, ColorMode::Rgb).data,
            vec![200, 100, 50, 10, 20, 30, 0, 0, 0]
        );
        let grey = dec(&pal, ColorMode::Grey);
        assert_eq!(grey.data, vec![luma(200, 100, 50), luma(10, 20, 30), 0]);
        assert_eq!(dec(&ga, ColorMode::Rgb).data, vec![7, 7, 7, 8, 8, 8]);
    }

    #[test]
    fn pixel_limit_comes_from_the_environment_value() {
        assert_eq!(parse_max_pixels(None).unwrap(), DEFAULT_MAX_IMAGE_PIXELS);
        assert_eq!(parse_max_pixels(Some(" 500000000 ")).unwrap(), 500_000_000);
        for bad in ["0", "-1", "many"] {
            let err = parse_max_pixels(Some(bad)).unwrap_err().to_string();
            assert!(err.contains(MAX_IMAGE_PIXELS_ENV), "{err}");
        }
        assert!(check_pixels(20_000, 20_000, DEFAULT_MAX_IMAGE_PIXELS).is_err());
        assert!(check_pixels(13_000, 13_000, DEFAULT_MAX_IMAGE_PIXELS).is_ok());
    }

    #[test]
    fn garbage_and_truncation_are_format_errors_naming_the_file() {
        let err = decode_bytes(b"hello", Path::new("x/bad.jpg"), ColorMode::Rgb).unwrap_err();
        assert!(matches!(err, Error::Format { .. }));
        assert!(err.to_string().contains("x/bad.jpg"), "{err}");
        let png = png_bytes(4, 4, png::ColorType::Rgb, png::BitDepth::Eight, &[9; 48]);
        let err = decode_bytes(&png[..png.len() - 20], Path::new("t.png"), ColorMode::Rgb);
        assert!(matches!(err, Err(Error::Format { .. })), "{err:?}");
        // JPEG header followed by a scan marker but no end: truncated.
        let err = decode_bytes(
            &[0xFF, 0xD8, 0xFF, 0xDA, 1, 2],
            Path::new("t.jpg"),
            ColorMode::Rgb,
        );
        assert!(err.unwrap_err().to_string().contains("truncated"));
    }
}
