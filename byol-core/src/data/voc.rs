//! Pascal VOC 2007/2012 (`VOCdevkit/VOC20xx/`): multi-label classification targets from
//! `ImageSets/Main` or the XML annotations, and semantic segmentation with palette masks.

use crate::data::dataset::{out_of_range, read_lines};
use crate::data::decode::{decode_file, ColorMode};
use crate::data::{Dataset, Image, Sample};
use crate::{Error, Result};
use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// The 20 VOC classes in the standard (devkit) order; labels index this.
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// Mask value of the "void" (object border / ignore) pixels.
pub const VOID_LABEL: u8 = 255;

/// Per-class target of one image, as in `ImageSets/Main/<class>_<split>.txt`:
/// 1 present, 0 present but only as "difficult" objects, -1 absent.
pub type VocTargets = [i8; 20];

/// Where the classification targets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocSource {
    /// `ImageSets/Main/<class>_<split>.txt`.
    ImageSets,
    /// `Annotations/<id>.xml`, `<object><name>` and `<difficult>`.
    Annotations,
}

/// VOC multi-label classification. `Sample::label` is the lowest-index present class (or the
/// lowest difficult one); [`VocClassification::targets`] has the full multi-label target.
#[derive(Debug, Clone)]
pub struct VocClassification {
    dir: PathBuf,
    classes: Vec<String>,
    ids: Vec<String>,
    targets: Vec<VocTargets>,
    mode: ColorMode,
}

impl VocClassification {
    /// Opens `dir` (`.../VOCdevkit/VOC2007`) for `split` (`train`, `val`, `trainval`, `test`).
    pub fn open(dir: impl AsRef<Path>, split: &str, source: VocSource) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let main = dir.join("ImageSets").join("Main");
        let (ids, targets) = match source {
            VocSource::ImageSets => targets_from_image_sets(&main, split)?,
            VocSource::Annotations => {
                let ids = read_ids(&main.join(format!("{split}.txt")))?;
                let targets = ids
                    .iter()
                    .map(|id| targets_from_xml(&dir.join("Annotations").join(format!("{id}.xml"))))
                    .collect::<Result<Vec<_>>>()?;
                (ids, targets)
            }
        };
        Ok(Self {
            dir,
            classes: VOC_CLASSES.map(str::to_owned).to_vec(),
            ids,
            targets,
            mode: ColorMode::Rgb,
        })
    }

    /// Channel layout of decoded images (default RGB).
    pub fn with_color_mode(mut self, mode: ColorMode) -> Self {
        self.mode = mode;
        self
    }

    /// Multi-label target of sample `index`.
    pub fn targets(&self, index: usize) -> Option<&VocTargets> {
        self.targets.get(index)
    }

    /// Image id (file stem) of sample `index`.
    pub fn image_id(&self, index: usize) -> Option<&str> {
        self.ids.get(index).map(String::as_str)
    }
}

impl Dataset for VocClassification {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn class_names(&self) -> &[String] {
        &self.classes
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (id, targets) = self
            .ids
            .get(index)
            .zip(self.targets.get(index))
            .ok_or_else(|| out_of_range(index, self.ids.len()))?;
        let label = [1, 0]
            .iter()
            .find_map(|&v| targets.iter().position(|&t| t == v))
            .unwrap_or(0);
        let path = self.dir.join("JPEGImages").join(format!("{id}.jpg"));
        Ok(Sample {
            image: decode_file(&path, self.mode)?,
            label,
        })
    }
}

/// Image ids listed one per line (first column) in `path`.
fn read_ids(path: &Path) -> Result<Vec<String>> {
    Ok(read_lines(path)?
        .into_iter()
        .filter_map(|(_, l)| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

fn targets_from_image_sets(main: &Path, split: &str) -> Result<(Vec<String>, Vec<VocTargets>)> {
    let mut ids: Vec<String> = Vec::new();
    let mut row: HashMap<String, usize> = HashMap::new();
    let mut targets: Vec<[Option<i8>; 20]> = Vec::new();
    for (c, class) in VOC_CLASSES.iter().enumerate() {
        let path = main.join(format!("{class}_{split}.txt"));
        for (number, line) in read_lines(&path)? {
            let bad = |msg: String| Error::format(&path, format!("line {number}: {msg}"));
            let mut parts = line.split_whitespace();
            let (Some(id), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad(format!("expected `<image-id> <1|0|-1>`, got `{line}`")));
            };
            let value = match value {
                "1" => 1,
                "0" => 0,
                "-1" => -1,
                other => return Err(bad(format!("target `{other}` is not 1, 0 or -1"))),
            };
            // The first class file fixes the image list and order; the others must match it.
            let r = match row.get(id) {
                Some(&r) => r,
                None if c == 0 => {
                    ids.push(id.to_owned());
                    targets.push([None; 20]);
                    row.insert(id.to_owned(), ids.len() - 1);
                    ids.len() - 1
                }
                None => {
                    let first = format!("{}_{split}.txt", VOC_CLASSES[0]);
                    return Err(bad(format!("image `{id}` is not listed in {first}")));
                }
            };
            targets[r][c] = Some(value);
        }
        if let Some(r) = targets.iter().position(|t| t[c].is_none()) {
            return Err(Error::format(
                &path,
                format!("no line for image `{}`", ids[r]),
            ));
        }
    }
    let targets = targets
        .into_iter()
        .map(|t| t.map(|v| v.unwrap_or(-1)))
        .collect();
    Ok((ids, targets))
}

/// Targets of one annotation: 1 if a non-difficult object of the class is there, 0 if only
/// difficult ones (how the devkit writes `ImageSets/Main`), -1 otherwise.
fn targets_from_xml(path: &Path) -> Result<VocTargets> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let doc = roxmltree::Document::parse(&text)
        .map_err(|e| Error::format(path, format!("bad XML: {e}")))?;
    let mut targets = [-1i8; 20];
    for object in doc.descendants().filter(|n| n.has_tag_name("object")) {
        let child = |tag: &str| {
            object
                .children()
                .find(|n| n.has_tag_name(tag))
                .and_then(|n| n.text())
                .map(str::trim)
        };
        let line = doc.text_pos_at(object.range().start).row;
        let name = child("name")
            .ok_or_else(|| Error::format(path, format!("line {line}: <object> without <name>")))?;
        let class = VOC_CLASSES
            .iter()
            .position(|&c| c == name)
            .ok_or_else(|| Error::format(path, format!("line {line}: unknown class `{name}`")))?;
        let value = if child("difficult") == Some("1") {
            0
        } else {
            1
        };
        targets[class] = targets[class].max(value);
    }
    Ok(targets)
}

/// An image and its mask of class indices (0 background, 1..=20 classes, 255 void).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegSample {
    pub image: Image,
    /// One channel, same size as `image`.
    pub mask: Image,
}

/// VOC semantic segmentation: `ImageSets/Segmentation/<split>.txt`, `JPEGImages/<id>.jpg`,
/// `SegmentationClass/<id>.png`.
#[derive(Debug, Clone)]
pub struct VocSegmentation {
    dir: PathBuf,
    ids: Vec<String>,
    mode: ColorMode,
}

impl VocSegmentation {
    pub fn open(dir: impl AsRef<Path>, split: &str) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let list = dir
            .join("ImageSets")
            .join("Segmentation")
            .join(format!("{split}.txt"));
        let ids = read_ids(&list)?;
        Ok(Self {
            dir,
            ids,
            mode: ColorMode::Rgb,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Image id (file stem) of sample `index`.
    pub fn image_id(&self, index: usize) -> Option<&str> {
        self.ids.get(index).map(String::as_str)
    }

    /// The mask file of sample `index` (`SegmentationClass/<id>.png`).
    pub fn mask_path(&self, index: usize) -> Result<PathBuf> {
        let id = self
            .ids
            .get(index)
            .ok_or_else(|| out_of_range(index, self.ids.len()))?;
        Ok(self.dir.join("SegmentationClass").join(format!("{id}.png")))
    }

    /// Image and mask of sample `index`; a mask of another size than its image is an error.
    pub fn get(&self, index: usize) -> Result<SegSample> {
        let id = self
            .ids
            .get(index)
            .ok_or_else(|| out_of_range(index, self.ids.len()))?;
        let image = decode_file(
            &self.dir.join("JPEGImages").join(format!("{id}.jpg")),
            self.mode,
        )?;
        let mask_path = self.mask_path(index)?;
        let mask = read_mask(&mask_path)?;
        if (mask.width, mask.height) != (image.width, image.height) {
            // Dataset, not Format: a mismatched pair is never skipped as a corrupt sample.
            return Err(Error::Dataset(format!(
                "{}: mask is {}x{} but its image is {}x{}",
                mask_path.display(),
                mask.width,
                mask.height,
                image.width,
                image.height
            )));
        }
        Ok(SegSample { image, mask })
    }
}

/// Reads a segmentation mask as its raw palette indices (or 8-bit grey values). The palette
/// itself is ignored: it only colours the classes for viewing.
pub fn read_mask(path: &Path) -> Result<Image> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let bad = |msg: String| Error::format(path, msg);
    let mut reader = decoder
        .read_info()
        .map_err(|e| bad(format!("bad PNG: {e}")))?;
    let (color, depth) = reader.output_color_type();
    if !matches!(color, png::ColorType::Indexed | png::ColorType::Grayscale)
        || depth != png::BitDepth::Eight
    {
        return Err(bad(format!(
            "a mask must be 8-bit palette or grey, got {color:?} {depth:?}"
        )));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad("PNG too large".into()))?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(format!("bad PNG: {e}")))?;
    buf.truncate(info.buffer_size());
    Image::new(info.width as usize, info.height as usize, 1, buf)
}

/// The `VOC<year>` directory given a `VOCdevkit` root, its parent, or the directory itself.
pub fn find_voc_dir(root: &Path, year: &str) -> Result<PathBuf> {
    let name = format!("VOC{year}");
    let candidates = [
        root.to_path_buf(),
        root.join(&name),
        root.join("VOCdevkit").join(&name),
    ];
    candidates
        .into_iter()
        .find(|d| d.join("ImageSets").is_dir())
        .ok_or_else(|| {
            Error::format(
                root,
                format!(
                    "no {name} here: expected ImageSets/ in it, in {name}/ or in VOCdevkit/{name}/"
                ),
            )
        })
}
