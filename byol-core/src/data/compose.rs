//! Datasets made of other datasets: [`Subset`] (a selection, in a given order) and [`Concat`]
//! (several with the same classes, one after the other).

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
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn class_names(&self) -> &[String] {
        self.inner.class_names()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let inner = *self.indices.get(index).ok_or_else(|| {
            Error::Input(format!(
                "index {index} is past the subset's {} samples",
                self.len()
            ))
        })?;
        self.inner.get(inner)
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

    fn get(&self, mut index: usize) -> Result<Sample> {
        for p in &self.parts {
            if index < p.len() {
                return p.get(index);
            }
            index -= p.len();
        }
        Err(Error::Input(format!(
            "index past the {} samples of the concatenation",
            self.len()
        )))
    }
}
