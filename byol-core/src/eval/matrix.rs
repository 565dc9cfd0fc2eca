//! Row-major f32 feature matrices shared by the probes, plus the small dense kernels they need.
//! The kernels are single-threaded GEMMs: callers parallelise over row chunks instead, which keeps
//! each chunk in cache between the forward and the gradient product.
//!
//! The probes take borrowed [`Features`] views so that a caller holding a `Vec<f32>` (or a
//! tensor converted once with [`OwnedFeatures::from_tensor`]) never pays a copy it did not ask for.

use crate::{Error, Result};
use candle_core::{DType, Tensor};
use gemm::Parallelism;

/// A borrowed `rows × cols` row-major f32 matrix (one sample per row).
#[derive(Debug, Clone, Copy)]
pub struct Features<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> Features<'a> {
    /// Views `data` as rows of `cols` features. Errors when `cols == 0`, the data is empty or its
    /// length is not a multiple of `cols`.
    pub fn new(data: &'a [f32], cols: usize) -> Result<Self> {
        if cols == 0 {
            return Err(Error::Input("feature dimension is 0".into()));
        }
        if data.is_empty() {
            return Err(Error::Input("feature matrix is empty".into()));
        }
        if !data.len().is_multiple_of(cols) {
            return Err(Error::Input(format!(
                "feature buffer of length {} is not a multiple of the dimension {cols}",
                data.len()
            )));
        }
        Ok(Self {
            data,
            rows: data.len() / cols,
            cols,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Copies the rows named by `idx` (in that order) into a new matrix.
    pub fn gather(&self, idx: &[usize]) -> Result<OwnedFeatures> {
        let mut data = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            if i >= self.rows {
                return Err(Error::Input(format!(
                    "row index {i} out of range for {} rows",
                    self.rows
                )));
            }
            data.extend_from_slice(self.row(i));
        }
        OwnedFeatures::new(data, self.cols)
    }

    /// Errors unless the matrix has `cols` columns (a model applied to features of another size).
    pub(crate) fn expect_cols(&self, cols: usize, what: &str) -> Result<()> {
        if self.cols != cols {
            return Err(Error::Input(format!(
                "{what}: features have dimension {}, the model expects {cols}",
                self.cols
            )));
        }
        Ok(())
    }
}

/// An owned row-major f32 matrix.
#[derive(Debug, Clone)]
pub struct OwnedFeatures {
    data: Vec<f32>,
    cols: usize,
}

impl OwnedFeatures {
    pub fn new(data: Vec<f32>, cols: usize) -> Result<Self> {
        Features::new(&data, cols)?;
        Ok(Self { data, cols })
    }

    /// Converts a 2-D tensor (any float dtype, any device) into f32 rows.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let (_, cols) = t.dims2().map_err(|e| {
            Error::Input(format!(
                "features must be a 2-D tensor (n × d), got shape {:?}: {e}",
                t.dims()
            ))
        })?;
        let data = t
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_device(&candle_core::Device::Cpu)?
            .to_vec1::<f32>()?;
        Self::new(data, cols)
    }

    pub fn view(&self) -> Features<'_> {
        Features {
            data: &self.data,
            rows: self.data.len() / self.cols,
            cols: self.cols,
        }
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
}

/// Checks multi-label VOC targets (row-major `rows × classes`, 1 / -1 / 0 = difficult) of a
/// train and a test split against their features.
pub(crate) fn check_multilabel(
    train: Features<'_>,
    train_labels: &[i8],
    test: Features<'_>,
    test_labels: &[i8],
    classes: usize,
) -> Result<()> {
    if classes == 0
        || train_labels.len() != train.rows() * classes
        || test_labels.len() != test.rows() * classes
    {
        return Err(Error::Input(format!(
            "VOC labels must be rows × {classes}: got {} train labels for {} rows, {} test labels for {} rows",
            train_labels.len(),
            train.rows(),
            test_labels.len(),
            test.rows()
        )));
    }
    test.expect_cols(train.cols(), "test split")
}

/// Checks class labels against the number of rows and classes.
pub(crate) fn check_labels(y: &[usize], rows: usize, classes: usize, what: &str) -> Result<()> {
    if y.len() != rows {
        return Err(Error::Input(format!(
            "{what}: {} labels for {rows} feature rows",
            y.len()
        )));
    }
    if classes == 0 {
        return Err(Error::config("classes", "must be at least 1"));
    }
    if let Some((i, &c)) = y.iter().enumerate().find(|(_, &c)| c >= classes) {
        return Err(Error::Input(format!(
            "{what}: label {c} at row {i} is out of range for {classes} classes"
        )));
    }
    Ok(())
}

/// Returns a copy with every row scaled to unit L2 norm (zero rows stay zero).
pub fn l2_normalized(x: Features<'_>) -> OwnedFeatures {
    let mut data = x.data().to_vec();
    l2_normalize_rows(&mut data, x.cols());
    OwnedFeatures {
        data,
        cols: x.cols(),
    }
}

pub(crate) fn l2_normalize_rows(data: &mut [f32], cols: usize) {
    for row in data.chunks_mut(cols) {
        let n2: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        if n2 > 0.0 {
            let inv = (1.0 / n2.sqrt()) as f32;
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

/// Per-feature mean and inverse standard deviation estimated on a training set.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    /// 1/std; 1 for constant features so they pass through centred instead of blowing up.
    pub inv_std: Vec<f32>,
}

impl Standardizer {
    /// Mean and (population) standard deviation of every column, accumulated in f64.
    pub fn fit(x: Features<'_>) -> Self {
        let d = x.cols();
        let n = x.rows() as f64;
        let mut sum = vec![0f64; d];
        let mut sq = vec![0f64; d];
        for i in 0..x.rows() {
            for (j, &v) in x.row(i).iter().enumerate() {
                sum[j] += v as f64;
                sq[j] += (v as f64) * (v as f64);
            }
        }
        let mut mean = Vec::with_capacity(d);
        let mut inv_std = Vec::with_capacity(d);
        for j in 0..d {
            let m = sum[j] / n;
            let var = (sq[j] / n - m * m).max(0.0);
            mean.push(m as f32);
            let sd = var.sqrt();
            inv_std.push(if sd > 1e-12 { (1.0 / sd) as f32 } else { 1.0 });
        }
        Self { mean, inv_std }
    }

    /// A standardised copy of `x`.
    pub fn apply(&self, x: Features<'_>) -> Result<OwnedFeatures> {
        x.expect_cols(self.mean.len(), "standardizer")?;
        let mut data = x.data().to_vec();
        for row in data.chunks_mut(x.cols()) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.inv_std) {
                *v = (*v - m) * s;
            }
        }
        OwnedFeatures::new(data, x.cols())
    }
}

/// `c (m×n) (+)= A·B` on one thread, `c` row-major, A and B read through (column, row) strides.
///
/// # Safety
/// `a` must cover `(m−1)·a_rs + (k−1)·a_cs`, `b` must cover `(k−1)·b_rs + (n−1)·b_cs`, and `c`
/// (m×n) must not alias them; the callers assert the lengths that imply this.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    accumulate: bool,
    a: &[f32],
    (a_cs, a_rs): (isize, isize),
    b: &[f32],
    (b_cs, b_rs): (isize, isize),
) {
    if m == 0 || n == 0 {
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        c.as_mut_ptr(),
        1,
        n as isize,
        accumulate,
        a.as_ptr(),
        a_cs,
        a_rs,
        b.as_ptr(),
        b_cs,
        b_rs,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        Parallelism::None,
    )
}

/// `c (m×n) = a (m×k) · b (k×n)`, all row-major; `accumulate` adds to `c` instead of overwriting.
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: the lengths asserted above cover the strided extents; `c` is a distinct `&mut`.
    unsafe {
        gemm_strided(
            m,
            n,
            k,
            c,
            accumulate,
            a,
            (1, k as isize),
            b,
            (1, n as isize),
        )
    }
}

/// `c (k×n) = aᵀ · b` with `a` row-major `m×k` and `b` row-major `m×n` (the gradient `Xᵀ·R`).
pub(crate) fn matmul_tn(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= m * n && c.len() >= k * n);
    // SAFETY: as in `matmul`; aᵀ is read through swapped strides.
    unsafe { gemm_strided(k, n, m, c, false, a, (k as isize, 1), b, (1, n as isize)) }
}

/// `c (m×n) = a (m×k) · bᵀ` with `b` row-major `n×k` (similarities between two sets of rows).
pub(crate) fn matmul_nt(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= n * k && c.len() >= m * n);
    // SAFETY: as in `matmul`; bᵀ is read through swapped strides.
    unsafe { gemm_strided(m, n, k, c, false, a, (1, k as isize), b, (k as isize, 1)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_naive_products() {
        let (m, n, k) = (7, 3, 5);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.71).cos()).collect();
        let mut c = vec![0f32; m * n];
        matmul(m, n, k, &a, &b, &mut c, false);
        for i in 0..m {
            for j in 0..n {
                let r: f32 = (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum();
                assert!((c[i * n + j] - r).abs() < 1e-5);
            }
        }
        // aᵀ·a2 with a2 m×n
        let a2: Vec<f32> = (0..m * n).map(|i| (i as f32 * 0.13).cos()).collect();
        let mut ct = vec![0f32; k * n];
        matmul_tn(m, n, k, &a, &a2, &mut ct);
        for i in 0..k {
            for j in 0..n {
                let r: f32 = (0..m).map(|t| a[t * k + i] * a2[t * n + j]).sum();
                assert!((ct[i * n + j] - r).abs() < 1e-5);
            }
        }
        // a · bt with bt n×k
        let mut cn = vec![0f32; m * n];
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.29).sin()).collect();
        matmul_nt(m, n, k, &a, &bt, &mut cn);
        for i in 0..m {
            for j in 0..n {
                let r: f32 = (0..k).map(|t| a[i * k + t] * bt[j * k + t]).sum();
                assert!((cn[i * n + j] - r).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn features_reject_bad_shapes() {
        assert!(Features::new(&[], 3).is_err());
        assert!(Features::new(&[1.0, 2.0], 0).is_err());
        assert!(Features::new(&[1.0, 2.0, 3.0], 2).is_err());
        let f = Features::new(&[1.0, 2.0, 3.0, 4.0], 2).unwrap();
        assert_eq!(f.rows(), 2);
        assert!(f.gather(&[2]).is_err());
    }
}
