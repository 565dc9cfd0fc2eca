//! Evaluation of frozen encoders: feature extraction, linear probes, kNN and metrics.
//!
//! - [`metrics`]: top-k / mean per-class accuracy, confusion matrix, VOC07 11-point and
//!   scikit-learn all-point AP (difficult = label 0 excluded), segmentation mIoU.
//! - [`logistic`]: an L2-regularised multinomial (or one-vs-rest binary) logistic regression
//!   fitted by [`lbfgs`], and the L2 path that chooses λ on validation data. Penalty convention:
//!   mean loss + λ/2·‖W‖², i.e. scikit-learn's `C = 1 / (n · λ)` for a fit on `n` rows.
//! - [`linear_protocol`]: the BYOL linear-transfer protocol on top of it, with the seeded
//!   validation carve-out of [`split`]; [`voc_logistic`]: its per-class VOC07 variant.
//! - [`knn`]: temperature-weighted cosine kNN (k = 20, T = 0.07).
//! - [`svm`]: the VOC07 linear-SVM protocol (squared hinge, dual coordinate descent, cost chosen by
//!   3-fold cross-validated AP).
//!
//! - [`sgd_probe`]: the ImageNet linear protocol (SGD head on augmented views, lr sweep).
//! - [`semi_supervised`]: fine-tuning the whole network on 1 % / 10 % of the labels (Table 2).
//! - [`cache`], [`report`], [`linear_eval`]: the cached features, the JSON report and the
//!   modes of `byol-linear-eval` built from the above.
//!
//! Features are row-major f32 matrices ([`matrix::Features`]); tensors convert once through
//! [`matrix::OwnedFeatures::from_tensor`].

pub mod cache;
pub mod features;
pub mod knn;
pub mod lbfgs;
pub mod linear_eval;
pub mod linear_protocol;
pub mod logistic;
pub mod matrix;
pub mod metrics;
pub mod probe;
pub mod report;
pub mod semi_supervised;
pub mod sgd_probe;
pub mod split;
pub mod svm;
pub mod voc_logistic;
