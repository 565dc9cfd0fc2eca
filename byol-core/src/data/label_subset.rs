//! Which training images keep their labels in the semi-supervised protocol (BYOL Table 2): the
//! standard ImageNet 1 % / 10 % lists (SimCLR's split files, shipped in
//! `byol-core/data/imagenet-subsets/` and built into the library), a seeded class-balanced fraction
//! of any other dataset, or a file listing image file names, one a line, in the same format as
//! the standard lists (`n01440764_10026.JPEG`).
//!
//! A subset is resolved against the opened training split before anything is written: every
//! listed file must be one of its images, otherwise the error names the subset file, the line and
//! the first missing entry.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::data::{Dataset, DatasetKind};
use crate::{Error, Result};

/// SimCLR's ImageNet 1 % list (12 811 training images, 12 or 13 per class), Apache-2.0.
pub static IMAGENET_1_PERCENT: &str = include_str!("../../data/imagenet-subsets/1percent.txt");
/// SimCLR's ImageNet 10 % list (128 116 training images), Apache-2.0.
pub static IMAGENET_10_PERCENT: &str = include_str!("../../data/imagenet-subsets/10percent.txt");

/// A `--labels` value: a percentage (`1%`, `10%`, `2.5%`) or a subset file.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelSpec {
    /// Percent of the training images, in (0, 100].
    Percent(f64),
    /// A file naming the labelled images, one file name a line.
    File(PathBuf),
}

impl FromStr for LabelSpec {
    type Err = Error;

    /// `<p>%` is a percentage; anything else is a file path.
    fn from_str(s: &str) -> Result<Self> {
        let Some(number) = s.trim().strip_suffix('%') else {
            if s.trim().is_empty() {
                return Err(Error::config("labels", "give a percentage (1%) or a file"));
            }
            return Ok(Self::File(PathBuf::from(s)));
        };
        match number.trim().parse::<f64>() {
            Ok(p) if p.is_finite() && p > 0.0 && p <= 100.0 => Ok(Self::Percent(p)),
            _ => Err(Error::config(
                "labels",
                format!("`{s}`: a percentage must be a number in (0, 100], e.g. 1% or 10%"),
            )),
        }
    }
}

impl std::fmt::Display for LabelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Percent(p) => write!(f, "{p}%"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A resolved subset: the training images whose labels are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSubset {
    /// `1%`, `10%` or the subset file's name.
    pub name: String,
    /// Where the selection came from, in words (the report's `labels_source`).
    pub source: String,
    /// Indices into the training split, ascending.
    pub indices: Vec<usize>,
    /// SHA-256 (hex) of the selected indices: two subsets with the same digest select the same
    /// images (feature caches and resumed runs compare it).
    pub digest: String,
}

impl LabelSubset {
    fn new(name: String, source: String, mut indices: Vec<usize>) -> Self {
        indices.sort_unstable();
        let mut hasher = Sha256::new();
        for i in &indices {
            hasher.update((*i as u64).to_le_bytes());
        }
        let digest = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            name,
            source,
            indices,
            digest,
        }
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Resolves `spec` against the training split `train` of a dataset of `kind`:
/// - `1%` / `10%` of ImageNet: the standard lists (every listed image must be in `train`);
/// - any other percentage, or any other dataset: a class-balanced fraction, chosen by `seed`;
/// - a file: the images it names.
pub fn resolve_labels(
    spec: &LabelSpec,
    kind: DatasetKind,
    train: &dyn Dataset,
    seed: u64,
) -> Result<LabelSubset> {
    match spec {
        LabelSpec::Percent(p) if kind == DatasetKind::Imagenet && (*p == 1.0 || *p == 10.0) => {
            let (text, file) = if *p == 1.0 {
                (IMAGENET_1_PERCENT, "1percent.txt")
            } else {
                (IMAGENET_10_PERCENT, "10percent.txt")
            };
            let listed = format!("imagenet-subsets/{file} (SimCLR's split, built in)");
            let indices = listed_images(text, &listed, train)?;
            Ok(LabelSubset::new(
                spec.to_string(),
                format!("the standard ImageNet {spec} subset: {listed}"),
                indices,
            ))
        }
        LabelSpec::Percent(p) => {
            let indices = balanced_fraction(train, p / 100.0, seed)?;
            Ok(LabelSubset::new(
                spec.to_string(),
                format!("class-balanced {spec} of each class, seed {seed}"),
                indices,
            ))
        }
        LabelSpec::File(path) => {
            crate::io::check_regular_file(path)?;
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let listed = path.display().to_string();
            let indices = listed_images(&text, &listed, train)?;
            let name = path
                .file_name()
                .map_or_else(|| listed.clone(), |n| n.to_string_lossy().into_owned());
            Ok(LabelSubset::new(
                name,
                format!("the images listed in {listed}"),
                indices,
            ))
        }
    }
}

/// `round(fraction × n_c)` images of each class `c` (at least one per non-empty class), the
/// first ones of a `seed`-shuffled order of the whole split.
pub fn balanced_fraction(train: &dyn Dataset, fraction: f64, seed: u64) -> Result<Vec<usize>> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(Error::config(
            "labels",
            format!("a fraction must be in (0, 1], got {fraction}"),
        ));
    }
    let classes = train.num_classes();
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for i in 0..train.len() {
        let label = train.label_at(i)?;
        let slot = by_class.get_mut(label).ok_or_else(|| {
            Error::Dataset(format!(
                "sample {i} has label {label}, past the {classes} classes"
            ))
        })?;
        slot.push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut chosen = Vec::new();
    for members in &mut by_class {
        if members.is_empty() {
            continue;
        }
        let keep = ((members.len() as f64 * fraction).round() as usize).clamp(1, members.len());
        members.shuffle(&mut rng);
        chosen.extend_from_slice(&members[..keep]);
    }
    chosen.sort_unstable();
    Ok(chosen)
}

/// The indices of the images `text` lists (one file name a line; blank lines ignored), each
/// matched by the end of its path in `train`. `listed` names the list in errors.
fn listed_images(text: &str, listed: &str, train: &dyn Dataset) -> Result<Vec<usize>> {
    let entries: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    if entries.is_empty() {
        return Err(Error::Dataset(format!("{listed} lists no image")));
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
    for &(line, entry) in &entries {
        if let Some(first) = seen.insert(entry, line) {
            return Err(Error::Dataset(format!(
                "{listed}: line {line} lists `{entry}` again (first on line {first})"
            )));
        }
    }
    // The training images by file name; a name shared by several images matches the entry
    // whose path ends with it.
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::with_capacity(train.len());
    let mut has_files = false;
    let wanted: HashSet<&str> = entries.iter().map(|(_, e)| file_name_of(e)).collect();
    for i in 0..train.len() {
        let Some(path) = train.file_path(i) else {
            continue;
        };
        has_files = true;
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            if wanted.contains(name) {
                by_name.entry(name).or_default().push(i);
            }
        }
    }
    if !has_files {
        return Err(Error::config(
            "labels",
            format!(
                "{listed} names image files, and this dataset is not made of files (IDX, CIFAR): \
                 give a percentage instead"
            ),
        ));
    }
    let mut indices = Vec::with_capacity(entries.len());
    let mut missing: Vec<(usize, &str)> = Vec::new();
    for &(line, entry) in &entries {
        let candidates = by_name
            .get(file_name_of(entry))
            .map_or(&[][..], Vec::as_slice);
        let matches: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| {
                train
                    .file_path(i)
                    .is_some_and(|p| p.ends_with(Path::new(entry)))
            })
            .collect();
        match matches.as_slice() {
            [] => missing.push((line, entry)),
            [i] => indices.push(*i),
            several => {
                let paths: Vec<String> = several
                    .iter()
                    .filter_map(|&i| train.file_path(i))
                    .map(|p| p.display().to_string())
                    .collect();
                return Err(Error::Dataset(format!(
                    "{listed}: line {line} `{entry}` matches {} training images ({}): list \
                     them with their class folder, e.g. `<class>/{entry}`",
                    several.len(),
                    paths.join(", ")
                )));
            }
        }
    }
    if let Some(&(line, entry)) = missing.first() {
        return Err(Error::Dataset(format!(
            "{listed}: {} of its {} entries are not images of the training set; the first: \
             line {line} `{entry}`",
            missing.len(),
            entries.len()
        )));
    }
    Ok(indices)
}

/// The last path component of a list entry.
fn file_name_of(entry: &str) -> &str {
    entry.rsplit('/').next().unwrap_or(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        assert_eq!("1%".parse::<LabelSpec>().unwrap(), LabelSpec::Percent(1.0));
        assert_eq!(
            " 10 %".parse::<LabelSpec>().unwrap(),
            LabelSpec::Percent(10.0)
        );
        assert_eq!(LabelSpec::Percent(2.5).to_string(), "2.5%");
        assert_eq!(
            "subset.txt".parse::<LabelSpec>().unwrap(),
            LabelSpec::File("subset.txt".into())
        );
        for bad in ["0%", "101%", "x%", "-1%", ""] {
            assert!(bad.parse::<LabelSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_standard_lists_are_built_in() {
        let count = |t: &str| t.lines().filter(|l| !l.trim().is_empty()).count();
        assert_eq!(count(IMAGENET_1_PERCENT), 12_811);
        assert_eq!(count(IMAGENET_10_PERCENT), 128_116);
        assert!(IMAGENET_1_PERCENT.starts_with("n04235860_14959.JPEG\n"));
    }
}
