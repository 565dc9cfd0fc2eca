//! The train / val / test splits of one dataset directory, in the layouts the transfer suite
//! accepts:
//! - `train/<class>/…`, `test/<class>/…` and optionally `val/<class>/…`;
//! - `<class>/…` with split files `train.txt`, `test.txt` and optionally `val.txt` listing image
//!   paths relative to the directory (`<class>/<file>`), one per line;
//! - for `cifar10` / `cifar100` (the directory's name), the binary version.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::data::image_folder::ImageFolder;
use crate::data::{Dataset, DatasetKind, DatasetSource, Split};
use crate::{Error, Result};

/// The splits of one dataset.
pub struct Splits {
    pub train: Arc<dyn Dataset>,
    pub val: Option<Arc<dyn Dataset>>,
    pub test: Arc<dyn Dataset>,
    /// How they were found, for the report.
    pub layout: String,
}

/// Opens `dir` in one of the layouts of the module docs.
pub fn open_splits(dir: &Path) -> Result<Splits> {
    if dir.join("train").is_dir() {
        let open = |name: &str| -> Result<Option<Arc<dyn Dataset>>> {
            let d = dir.join(name);
            Ok(if d.is_dir() {
                Some(Arc::new(ImageFolder::open(&d)?))
            } else {
                None
            })
        };
        let train = open("train")?.ok_or_else(|| Error::format(dir, "no train/"))?;
        let test = open("test")?.ok_or_else(|| {
            Error::format(
                dir,
                "train/ but no test/ sub-folder: the test split is missing",
            )
        })?;
        let val = open("val")?;
        for (name, d) in [("test", Some(&test)), ("val", val.as_ref())] {
            if let Some(d) = d {
                if d.class_names() != train.class_names() {
                    return Err(Error::format(
                        dir.join(name),
                        "its class folders differ from train/'s",
                    ));
                }
            }
        }
        return Ok(Splits {
            train,
            val,
            test,
            layout: "train/ val/ test/ class folders".into(),
        });
    }
    if dir.join("train.txt").is_file() {
        let classes: Vec<String> = ImageFolder::open(dir)?.class_names().to_vec();
        let list = |name: &str| -> Result<Option<Arc<dyn Dataset>>> {
            let path = dir.join(format!("{name}.txt"));
            if !path.is_file() {
                return Ok(None);
            }
            Ok(Some(Arc::new(split_file(dir, &path, &classes)?)))
        };
        let train = list("train")?.ok_or_else(|| Error::format(dir, "no train.txt"))?;
        let test = list("test")?
            .ok_or_else(|| Error::format(dir.join("test.txt"), "missing: no test split"))?;
        return Ok(Splits {
            train,
            val: list("val")?,
            test,
            layout: "class folders with train/val/test.txt split files".into(),
        });
    }
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let kind = match name {
        "cifar10" => Some(DatasetKind::Cifar10),
        "cifar100" => Some(DatasetKind::Cifar100),
        _ => None,
    };
    if let Some(kind) = kind {
        let source = DatasetSource::new(kind, Some(dir.to_path_buf()));
        return Ok(Splits {
            train: source.open(Split::Train)?,
            val: None,
            test: source.open(Split::Test)?,
            layout: format!("{kind} binary files"),
        });
    }
    Err(Error::format(
        dir,
        "no train/ sub-folder and no train.txt split file: not an image-folder dataset",
    ))
}

/// An image-folder split from a list of relative paths; the class is the first path component.
fn split_file(dir: &Path, list: &Path, classes: &[String]) -> Result<ImageFolder> {
    let text = std::fs::read_to_string(list).map_err(|e| Error::io(list, e))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |m: String| Error::format(list, format!("line {}: {m}", i + 1));
        let rel = PathBuf::from(line);
        let class = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .ok_or_else(|| bad(format!("`{line}` has no class folder")))?;
        let label = classes
            .iter()
            .position(|c| c == class)
            .ok_or_else(|| bad(format!("class folder `{class}` does not exist")))?;
        let path = dir.join(&rel);
        if !path.is_file() {
            return Err(bad(format!("image {} does not exist", path.display())));
        }
        items.push((path, label));
    }
    if items.is_empty() {
        return Err(Error::format(list, "lists no image"));
    }
    Ok(ImageFolder::from_items(classes.to_vec(), items))
}
