//! The generic `root/<class>/**/<image>` layout (torchvision's `ImageFolder`).

use crate::data::dataset::out_of_range;
use crate::data::decode::{decode_file, ColorMode};
use crate::data::{Dataset, Sample};
use crate::{Error, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// File extensions taken as images, compared case-insensitively.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Images listed once at open; each `get` reads and decodes one file.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    classes: Vec<String>,
    items: Vec<(PathBuf, usize)>,
    mode: ColorMode,
}

impl ImageFolder {
    /// Lists `root`: one class per sub-folder, classes and files in sorted (byte) order so
    /// labels and indices are the same on every machine.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let classes = sorted_entries(root)?
            .into_iter()
            .filter(|p| p.is_dir())
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .filter(|n| !n.starts_with('.'))
            .collect::<Vec<_>>();
        let mut items = Vec::new();
        // Shared by the classes, seeded with the root: a link back to the root or into
        // another class is not walked again.
        let mut visited =
            HashSet::from([std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?]);
        for (label, class) in classes.iter().enumerate() {
            let mut files = Vec::new();
            list_images(&root.join(class), &mut files, &mut visited)?;
            items.extend(files.into_iter().map(|f| (f, label)));
        }
        if items.is_empty() {
            return Err(Error::format(
                root,
                format!(
                    "no images ({}) in class sub-folders",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            ));
        }
        Ok(Self::from_items(classes, items))
    }

    /// A dataset over explicit `(file, label)` pairs, e.g. a flat folder with a labels file.
    pub fn from_items(classes: Vec<String>, items: Vec<(PathBuf, usize)>) -> Self {
        Self {
            classes,
            items,
            mode: ColorMode::Rgb,
        }
    }

    /// Channel layout of decoded images (default RGB).
    pub fn with_color_mode(mut self, mode: ColorMode) -> Self {
        self.mode = mode;
        self
    }

    /// File of sample `index`.
    pub fn path(&self, index: usize) -> Option<&Path> {
        self.items.get(index).map(|(p, _)| p.as_path())
    }

    /// Label of sample `index` without decoding it.
    pub fn label(&self, index: usize) -> Option<usize> {
        self.items.get(index).map(|&(_, l)| l)
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn class_names(&self) -> &[String] {
        &self.classes
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (path, label) = self
            .items
            .get(index)
            .ok_or_else(|| out_of_range(index, self.items.len()))?;
        Ok(Sample {
            image: decode_file(path, self.mode)?,
            label: *label,
        })
    }

    fn label_at(&self, index: usize) -> Result<usize> {
        self.label(index)
            .ok_or_else(|| out_of_range(index, self.items.len()))
    }

    fn file_path(&self, index: usize) -> Option<&Path> {
        self.path(index)
    }
}

/// Entries of `dir`, sorted; a missing or unreadable folder is an error naming it.
pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| Error::io(dir, err)))
        .collect::<Result<Vec<_>>>()?;
    entries.sort();
    Ok(entries)
}

/// Whether `path` has one of [`IMAGE_EXTENSIONS`].
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The images under `dir`, recursively, following symbolic links; a directory reached a second
/// time (a link loop, or two links to one folder) is listed once: `visited` holds the
/// canonical paths of the directories listed so far.
fn list_images(dir: &Path, out: &mut Vec<PathBuf>, visited: &mut HashSet<PathBuf>) -> Result<()> {
    let canonical = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    if !visited.insert(canonical.clone()) {
        tracing::warn!(
            "{}: skipped, it leads to {} which was already listed (a symbolic link loop or a \
             second link to one folder)",
            dir.display(),
            canonical.display()
        );
        return Ok(());
    }
    for path in sorted_entries(dir)? {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            list_images(&path, out, visited)?;
        } else if is_image_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}
