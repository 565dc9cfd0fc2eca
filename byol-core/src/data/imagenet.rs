//! ImageNet (ILSVRC-2012): `train/<wnid>/*.JPEG`, and `val/` either as class folders or flat
//! with a labels file (`<file> <class-index>` lines, or Kaggle's `LOC_val_solution.csv`).

use crate::data::dataset::read_lines;
use crate::data::image_folder::{is_image_file, sorted_entries, ImageFolder};
use crate::data::Dataset;
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// `root/train` as an ImageFolder: labels are the indices of the sorted wnids.
pub fn imagenet_train(root: impl AsRef<Path>) -> Result<ImageFolder> {
    ImageFolder::open(root.as_ref().join("train"))
}

/// The sorted wnids: the sub-folders of `root/train`, or else the first column of Kaggle's
/// `root/LOC_synset_mapping.txt`.
pub fn imagenet_classes(root: impl AsRef<Path>) -> Result<Vec<String>> {
    let root = root.as_ref();
    let train = root.join("train");
    let mapping = root.join("LOC_synset_mapping.txt");
    let mut classes = if train.is_dir() {
        sorted_entries(&train)?
            .into_iter()
            .filter(|p| p.is_dir())
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .filter(|n| !n.starts_with('.'))
            .collect()
    } else if mapping.is_file() {
        read_lines(&mapping)?
            .into_iter()
            .map(|(_, line)| line.split_whitespace().next().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    } else {
        return Err(Error::format(
            root,
            "no train/ folder nor LOC_synset_mapping.txt to take the class list from",
        ));
    };
    classes.sort();
    Ok(classes)
}

/// `root/val`. With `labels` = None it must hold one folder per class (the same classes as
/// [`imagenet_classes`]); otherwise it is flat and `labels` says each file's class.
pub fn imagenet_val(root: impl AsRef<Path>, labels: Option<&Path>) -> Result<ImageFolder> {
    let root = root.as_ref();
    let classes = imagenet_classes(root)?;
    let val = root.join("val");
    let Some(labels) = labels else {
        let has_folders = sorted_entries(&val)?.iter().any(|p| p.is_dir());
        if !has_folders {
            return Err(Error::format(
                &val,
                "flat folder: pass a labels file (`<file> <class-index>` lines or LOC_val_solution.csv)",
            ));
        }
        let folder = ImageFolder::open(&val)?;
        if folder.class_names() != classes.as_slice() {
            return Err(Error::format(
                &val,
                format!(
                    "class folders differ from the {} training classes",
                    classes.len()
                ),
            ));
        }
        return Ok(folder);
    };
    let lines = read_lines(labels)?;
    let kaggle = lines
        .first()
        .is_some_and(|(_, l)| l.starts_with("ImageId,"));
    let index: HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut items = Vec::with_capacity(lines.len());
    for (number, line) in lines.iter().skip(usize::from(kaggle)) {
        let bad = |msg: String| Error::format(labels, format!("line {number}: {msg}"));
        let (file, label) = if kaggle {
            // `ILSVRC2012_val_00008726,n02119789 255 142 454 329 ...`: the first wnid is the class.
            let (id, prediction) = line
                .split_once(',')
                .ok_or_else(|| bad(format!("expected `ImageId,PredictionString`, got `{line}`")))?;
            let wnid = prediction.split_whitespace().next().unwrap_or("");
            let label = *index
                .get(wnid)
                .ok_or_else(|| bad(format!("unknown wnid `{wnid}`")))?;
            (format!("{id}.JPEG"), label)
        } else {
            let mut parts = line.split_whitespace();
            let (Some(file), Some(label), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad(format!(
                    "expected `<file> <class-index>`, got `{line}`"
                )));
            };
            let label: usize = label
                .parse()
                .map_err(|_| bad(format!("class index `{label}` is not a number")))?;
            if label >= classes.len() {
                return Err(bad(format!(
                    "class index {label} out of range for {} classes",
                    classes.len()
                )));
            }
            (file.to_owned(), label)
        };
        let path = val.join(&file);
        if !is_image_file(&path) || !path.is_file() {
            return Err(bad(format!("no image file {}", path.display())));
        }
        items.push((path, label));
    }
    if items.is_empty() {
        return Err(Error::format(labels, "no labelled images"));
    }
    Ok(ImageFolder::from_items(classes, items))
}
