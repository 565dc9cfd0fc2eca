//! Datasets made of other datasets: [`Subset`] (a selection, in a given order) and [`Concat`]
//! (several with the same classes, one after the other).

use std::path::Path;
use std::sync::Arc;

use crate::data::{Dataset, Sample};
use crate::{Error, Result};

/// A fixed selection of another dataset's samples, in the given order.
pub struct Subset {
    inner: Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl Subset {
    /// The first `n` samples (all of them if the dataset is smaller).
    pub fn first(inner: Arc<dyn Dataset>, n: usize) -> Self {
        let indices = (0..n.min(inner.len())).collect();
        Self { inner, indices }
    }

    /// The samples at `indices`; each must be below the dataset's length.
    pub fn new(inner: Arc<dyn Dataset>, indices: Vec<usize>) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(Error::Input(format!(
                "subset index {bad} is past the dataset's {} samples",
                inner.len()
            )));
        }
        Ok(Self { inner, indices })
    }

    /// The indices of the selection in the inner dataset.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    fn inner_index(&self, index: usize) -> Result<usize> {
        self.indices.get(index).copied().ok_or_else(|| {
            Error::Input(format!(
                "index {index} is past the subset's {} samples",
                self.len()
            ))
        })
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn class_names(&self) -> &[String] {
        self.inner.class_names()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        self.inner.get(self.inner_index(index)?)
    }

    fn label_at(&self, index: usize) -> Result<usize> {
        self.inner.label_at(self.inner_index(index)?)
    }

    fn file_path(&self, index: usize) -> Option<&Path> {
        self.inner.file_path(*self.indices.get(index)?)
    }
}

/// Datasets with the same classes, one after the other (train + val for a final fit).
pub struct Concat {
    parts: Vec<Arc<dyn Dataset>>,
}

impl Concat {
    /// At least one part; every part must have the classes of the first.
    pub fn new(parts: Vec<Arc<dyn Dataset>>) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Err(Error::Input("a concatenation of no dataset".into()));
        };
        if parts.iter().any(|p| p.class_names() != first.class_names()) {
            return Err(Error::Input(
                "concatenated datasets must have the same classes".into(),
            ));
        }
        Ok(Self { parts })
    }
}

impl Dataset for Concat {
    fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    fn class_names(&self) -> &[String] {
        self.parts[0].class_names()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (part, index) = self.locate(index)?;
        part.get(index)
    }

    fn label_at(&self, index: usize) -> Result<usize> {
        let (part, index) = self.locate(index)?;
        part.label_at(index)
    }

    fn file_path(&self, index: usize) -> Option<&Path> {
        let (part, index) = self.locate(index).ok()?;
        part.file_path(index)
    }
}

impl Concat {
    /// The part holding sample `index` of the concatenation, and its index there.
    fn locate(&self, mut index: usize) -> Result<(&dyn Dataset, usize)> {
        for p in &self.parts {
            if index < p.len() {
                return Ok((p.as_ref(), index));
            }
            index -= p.len();
        }
        Err(Error::Input(format!(
            "index past the {} samples of the concatenation",
            self.len()
        )))
    }
}
