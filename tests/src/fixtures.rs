//! Files in the real on-disk layouts for the tests: tiny JPEGs, palette PNG masks, the reader
//! fixture of a two-image VOC directory and a miniature VOCdevkit for the transfer tasks.

use std::fs;
use std::path::{Path, PathBuf};

use byol_core::data::voc::VOC_CLASSES;

/// A solid-colour RGB JPEG; solid colours survive JPEG almost exactly.
pub fn write_jpeg(path: &Path, w: u16, h: u16, rgb: [u8; 3]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let data: Vec<u8> = (0..w as usize * h as usize).flat_map(|_| rgb).collect();
    let enc = jpeg_encoder::Encoder::new_file(path, 95).unwrap();
    enc.encode(&data, w, h, jpeg_encoder::ColorType::Rgb)
        .unwrap();
}

pub fn png_bytes(
    w: u32,
    h: u32,
    color: png::ColorType,
    palette: Option<Vec<u8>>,
    data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    if let Some(p) = palette {
        enc.set_palette(p);
    }
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
    out
}

pub fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

pub const PALETTE: [u8; 9] = [0, 0, 0, 128, 0, 0, 0, 128, 0];

pub fn voc_fixture(voc: &Path) {
    for (id, v) in [("000001", 10u8), ("000002", 200)] {
        write_jpeg(&voc.join(format!("JPEGImages/{id}.jpg")), 4, 3, [v; 3]);
    }
    write(
        &voc.join("ImageSets/Main/trainval.txt"),
        b"000001\n000002\n",
    );
    for class in VOC_CLASSES {
        let (a, b) = match class {
            "cat" => (" 1", " 0"),
            "dog" => ("-1", " 1"),
            "person" => (" 0", "-1"),
            _ => ("-1", "-1"),
        };
        let text = format!("000001 {a}\n000002 {b}\n");
        write(
            &voc.join(format!("ImageSets/Main/{class}_trainval.txt")),
            text.as_bytes(),
        );
    }
    let xml = |objects: &[(&str, u8)]| {
        let objs: String = objects
            .iter()
            .map(|(n, d)| format!("<object><name>{n}</name><difficult>{d}</difficult></object>"))
            .collect();
        format!("<annotation><filename>x.jpg</filename>{objs}</annotation>")
    };
    write(
        &voc.join("Annotations/000001.xml"),
        xml(&[("cat", 0), ("person", 1)]).as_bytes(),
    );
    write(
        &voc.join("Annotations/000002.xml"),
        xml(&[("dog", 0), ("cat", 1), ("dog", 1)]).as_bytes(),
    );
    write(
        &voc.join("ImageSets/Segmentation/val.txt"),
        b"000001\n000002\n",
    );
    let mask = [0u8, 1, 1, 255, 0, 2, 2, 255, 0, 0, 0, 0];
    let pal = Some(PALETTE.to_vec());
    write(
        &voc.join("SegmentationClass/000001.png"),
        &png_bytes(4, 3, png::ColorType::Indexed, pal.clone(), &mask),
    );
    write(
        &voc.join("SegmentationClass/000002.png"),
        &png_bytes(3, 3, png::ColorType::Indexed, pal, &[0; 9]),
    );
}

/// An RGB JPEG from `w × h × 3` bytes (quality 95).
pub fn write_jpeg_pixels(path: &Path, w: u16, h: u16, rgb: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let enc = jpeg_encoder::Encoder::new_file(path, 95).unwrap();
    enc.encode(rgb, w, h, jpeg_encoder::ColorType::Rgb).unwrap();
}

/// A distinct colour per VOC class, so that even raw pixels separate the classes.
pub fn class_colour(c: usize) -> [u8; 3] {
    [
        (c * 53 % 256) as u8,
        ((c * 97 + 40) % 256) as u8,
        ((c * 151 + 80) % 256) as u8,
    ]
}

/// A miniature ImageNet in the ILSVRC-2012 layout: `train/<wnid>/<wnid>_<k>.JPEG` (ImageNet's
/// training file names, which the label-subset files list) for `k < train_per_class`, and
/// `val/<wnid>/ILSVRC2012_val_<n>.JPEG` class folders with `val_per_class` images each (none:
/// no `val/`). Every image is `side × side` in its class's colour, brightened a little per image
/// and with a darker square whose place depends on the class, so the classes are learnable.
pub fn write_mini_imagenet(
    root: &Path,
    wnids: &[&str],
    train_per_class: usize,
    val_per_class: usize,
    side: u16,
) {
    let s = side as usize;
    let image = |c: usize, k: usize| -> Vec<u8> {
        let rgb = class_colour(c * 7 + 2).map(|v| v.saturating_add((k * 3 % 40) as u8));
        let (top, left) = ((c * s / 4) % (s / 2), (c * s / 3) % (s / 2));
        (0..s * s)
            .flat_map(|i| {
                let (y, x) = (i / s, i % s);
                let inside = (top..top + s / 2).contains(&y) && (left..left + s / 2).contains(&x);
                if inside {
                    rgb.map(|v| v / 3)
                } else {
                    rgb
                }
            })
            .collect()
    };
    let mut val_id = 0;
    for (c, wnid) in wnids.iter().enumerate() {
        for k in 0..train_per_class {
            let path = root.join(format!("train/{wnid}/{wnid}_{k}.JPEG"));
            write_jpeg_pixels(&path, side, side, &image(c, k));
        }
        for k in 0..val_per_class {
            val_id += 1;
            let path = root.join(format!("val/{wnid}/ILSVRC2012_val_{val_id:08}.JPEG"));
            write_jpeg_pixels(&path, side, side, &image(c, k + train_per_class));
        }
    }
}

/// The 256-entry VOC colour map (bit-interleaved), as the devkit writes it.
pub fn voc_palette() -> Vec<u8> {
    let mut p = Vec::with_capacity(768);
    for i in 0..256usize {
        let (mut r, mut g, mut b, mut c) = (0u8, 0u8, 0u8, i);
        for j in 0..8 {
            r |= ((c & 1) as u8) << (7 - j);
            g |= (((c >> 1) & 1) as u8) << (7 - j);
            b |= (((c >> 2) & 1) as u8) << (7 - j);
            c >>= 3;
        }
        p.extend([r, g, b]);
    }
    p
}

/// One VOC2007 image: id and per-class targets.
type Row = (String, [i8; 20]);

/// A miniature `VOCdevkit` with `VOC2007` (classification: train/val/test, `ImageSets/Main`
/// lists and XML annotations) and `VOC2012` (segmentation: palette masks with void borders).
/// Every image shows one class in that class's colour, so the tasks are learnable.
#[derive(Debug, Clone)]
pub struct MiniVoc {
    /// VOC2007 images per class in train, val and test.
    pub per_class: [usize; 3],
    /// VOC2012 segmentation images in train and val.
    pub seg: [usize; 2],
    /// Image width and height.
    pub size: (u16, u16),
}

impl Default for MiniVoc {
    fn default() -> Self {
        Self {
            per_class: [2, 2, 2],
            seg: [10, 5],
            size: (24, 20),
        }
    }
}

impl MiniVoc {
    /// Writes `root/VOCdevkit/{VOC2007,VOC2012}` and returns `root/VOCdevkit`.
    pub fn write(&self, root: &Path) -> PathBuf {
        let devkit = root.join("VOCdevkit");
        self.write_voc2007(&devkit.join("VOC2007"));
        self.write_voc2012(&devkit.join("VOC2012"));
        devkit
    }

    fn write_voc2007(&self, voc: &Path) {
        let (w, h) = self.size;
        let mut next = 0usize;
        let mut splits: Vec<(&str, Vec<Row>)> = Vec::new();
        for (si, split) in ["train", "val", "test"].into_iter().enumerate() {
            let mut rows = Vec::new();
            for c in 0..20 {
                for k in 0..self.per_class[si] {
                    next += 1;
                    let id = format!("{next:06}");
                    let mut t = [-1i8; 20];
                    t[c] = 1;
                    // A difficult object of another class on some images.
                    if k == 0 {
                        t[(c + 7) % 20] = 0;
                    }
                    let v = (k * 4) as i32;
                    let rgb: Vec<u8> = (0..w as usize * h as usize)
                        .flat_map(|_| class_colour(c).map(|x| (x as i32 + v).min(255) as u8))
                        .collect();
                    write_jpeg_pixels(&voc.join(format!("JPEGImages/{id}.jpg")), w, h, &rgb);
                    let objects: String = (0..20)
                        .filter(|&j| t[j] >= 0)
                        .map(|j| {
                            format!(
                                "<object><name>{}</name><difficult>{}</difficult></object>",
                                VOC_CLASSES[j],
                                u8::from(t[j] == 0)
                            )
                        })
                        .collect();
                    write(
                        &voc.join(format!("Annotations/{id}.xml")),
                        format!("<annotation><filename>{id}.jpg</filename>{objects}</annotation>")
                            .as_bytes(),
                    );
                    rows.push((id, t));
                }
            }
            splits.push((split, rows));
        }
        let trainval: Vec<Row> = [splits[0].1.clone(), splits[1].1.clone()].concat();
        splits.push(("trainval", trainval));
        for (split, rows) in &splits {
            let ids: String = rows.iter().map(|(id, _)| format!("{id}\n")).collect();
            write(
                &voc.join(format!("ImageSets/Main/{split}.txt")),
                ids.as_bytes(),
            );
            for (c, class) in VOC_CLASSES.iter().enumerate() {
                let text: String = rows
                    .iter()
                    .map(|(id, t)| format!("{id} {:>2}\n", t[c]))
                    .collect();
                write(
                    &voc.join(format!("ImageSets/Main/{class}_{split}.txt")),
                    text.as_bytes(),
                );
            }
        }
    }

    fn write_voc2012(&self, voc: &Path) {
        let (w, h) = (self.size.0 as usize, self.size.1 as usize);
        let mut next = 0usize;
        for (si, split) in ["train", "val"].into_iter().enumerate() {
            let mut ids = String::new();
            for i in 0..self.seg[si] {
                next += 1;
                let id = format!("2012_{next:06}");
                let c = (next - 1) % 20;
                let side = w.min(h) / 2;
                let (x0, y0) = (
                    (next * 3) % (w - side - 1) + 1,
                    (next * 5) % (h - side - 1) + 1,
                );
                let mut rgb = vec![90u8; w * h * 3];
                let mut mask = vec![0u8; w * h];
                for y in 0..h {
                    for x in 0..w {
                        let inside = (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y);
                        let ring =
                            (x0 - 1..=x0 + side).contains(&x) && (y0 - 1..=y0 + side).contains(&y);
                        if inside {
                            rgb[(y * w + x) * 3..][..3].copy_from_slice(&class_colour(c));
                            mask[y * w + x] = (c + 1) as u8;
                        } else if ring {
                            mask[y * w + x] = 255;
                        }
                    }
                }
                write_jpeg_pixels(
                    &voc.join(format!("JPEGImages/{id}.jpg")),
                    w as u16,
                    h as u16,
                    &rgb,
                );
                write(
                    &voc.join(format!("SegmentationClass/{id}.png")),
                    &png_bytes(
                        w as u32,
                        h as u32,
                        png::ColorType::Indexed,
                        Some(voc_palette()),
                        &mask,
                    ),
                );
                ids.push_str(&id);
                ids.push('\n');
                let _ = i;
            }
            write(
                &voc.join(format!("ImageSets/Segmentation/{split}.txt")),
                ids.as_bytes(),
            );
        }
    }
}

/// A pickle whose memo doubles 64 times: a list in slot 0, then 64 × (GET 0, GET 0, TUPLE2,
/// PUT 0), 2^64 nodes from 400 bytes.
pub fn pickle_memo_bomb() -> Vec<u8> {
    let mut bytes = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..64 {
        bytes.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
    }
    bytes.push(b'.');
    bytes
}

/// A pickle of `depth` nested lists: EMPTY_LIST `depth` times, then APPEND each into the one
/// below (a recursive drop or parse of it overflows the stack).
pub fn pickle_nested_lists(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x80, 2];
    bytes.resize(bytes.len() + depth, b']');
    bytes.resize(bytes.len() + depth - 1, b'a');
    bytes.push(b'.');
    bytes
}
