//! Evaluation of frozen encoders: feature extraction, linear probes, kNN and metrics.

pub mod features;
pub mod knn;
pub mod lbfgs;
pub mod logistic;
pub mod matrix;
pub mod metrics;
pub mod probe;
pub mod svm;
