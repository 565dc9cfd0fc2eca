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

/// Reads and decodes the file at `path`.
pub fn decode_file(path: &Path, mode: ColorMode) -> Result<Image> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes(&bytes, path, mode)
}

/// Decodes JPEG or PNG `bytes`; `path` only names the source in errors.
pub fn decode_bytes(bytes: &[u8], path: &Path, mode: ColorMode) -> Result<Image> {
    let image = if bytes.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg(bytes, mode)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes)
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

fn decode_jpeg(bytes: &[u8], mode: ColorMode) -> std::result::Result<Image, String> {
    // The decoder fills a truncated scan with grey instead of failing, so check the end marker:
    // a complete file has an EOI (FF D9) after its last start-of-scan (FF DA).
    if !ends_after_last_scan(bytes) {
        return Err("truncated JPEG (no end-of-image marker after the last scan)".into());
    }
    let out = match mode {
        ColorMode::Rgb => ColorSpace::RGB,
        ColorMode::Grey => ColorSpace::Luma,
        ColorMode::Keep => {
            // Only this mode needs the header first, to learn whether the file is grey.
            let mut probe = JpegDecoder::new(Cursor::new(bytes));
            probe
                .decode_headers()
                .map_err(|e| format!("bad JPEG: {e:?}"))?;
            if probe.input_colorspace() == Some(ColorSpace::Luma) {
                ColorSpace::Luma
            } else {
                ColorSpace::RGB
            }
        }
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

fn decode_png(bytes: &[u8]) -> std::result::Result<Image, String> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
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
