//! The classification report of `byol-linear-eval`: what was evaluated and how (dataset, split
//! sizes, weights, protocol, chosen hyper-parameters) and the metrics (top-1, top-5, mean
//! per-class accuracy, per-class accuracy, confusion matrix), as JSON and as a short table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::eval::metrics;
use crate::eval::sgd_probe::LrCandidate;
use crate::io::write_atomic;
use crate::{Error, Result};

/// Where the features came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsInfo {
    /// `encoder` or `pixels`.
    pub extractor: String,
    pub path: Option<String>,
    pub sha256: Option<String>,
    /// e.g. `resnet18 small-stem 1ch base 16`.
    pub architecture: Option<String>,
    /// Which encoder of the file (`online` or `target`); absent for raw pixels and in reports
    /// written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
}

/// What the logistic protocol chose and from what: `hyperparameters` of its report.
#[derive(Debug, Serialize)]
pub struct LogisticChoice<'a> {
    pub lambda: f64,
    pub lambda_grid: &'a [f64],
    pub standardize: bool,
    pub path_patience: Option<usize>,
    pub val_fraction: f64,
}

/// The kNN protocol's settings: `hyperparameters` of its report.
#[derive(Debug, Serialize)]
pub struct KnnChoice {
    pub k: usize,
    pub temperature: f64,
}

/// What the SGD protocol chose and from what: `hyperparameters` of its report.
#[derive(Debug, Serialize)]
pub struct SgdChoice<'a> {
    pub lr: f64,
    pub lr_grid: &'a [f64],
    pub val_top1_per_lr: &'a [LrCandidate],
    pub epochs: usize,
    pub batch_size: usize,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

/// The label subset the training split was restricted to (every mode with `--labels`).
#[derive(Debug, Serialize)]
pub struct LabelsChoice<'a> {
    /// `1%`, `10%` or the subset file's name.
    pub labels: &'a str,
    pub labels_source: &'a str,
    /// Training images with labels (the subset's size).
    pub labelled_images: usize,
}

/// One point of the semi-supervised grid and its held-out top-1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SemiSupervisedPoint {
    /// Base learning rate (× batch/256).
    pub lr: f64,
    pub epochs: usize,
    pub val_top1: f64,
}

/// What semi-supervised fine-tuning chose and from what: `hyperparameters` of its report.
#[derive(Debug, Serialize)]
pub struct SemiSupervisedChoice<'a> {
    /// Chosen base learning rate; the run's peak is `lr × batch_size / 256`.
    pub lr: f64,
    pub peak_lr: f64,
    pub epochs: usize,
    pub lr_grid: &'a [f64],
    pub epochs_grid: &'a [usize],
    /// Every grid point with its held-out top-1, in the order searched.
    pub grid: &'a [SemiSupervisedPoint],
    pub batch_size: usize,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// Smallest crop area of the training views.
    pub crop_min_scale: f64,
    pub lr_schedule: &'a str,
    pub val_fraction: f64,
    pub selection: &'a str,
    pub seed: u64,
}

/// A protocol's choice as the report's `hyperparameters` map (the field names are its keys).
pub fn hyperparameters<T: Serialize>(choice: &T) -> Result<BTreeMap<String, serde_json::Value>> {
    match serde_json::to_value(choice) {
        Ok(serde_json::Value::Object(map)) => Ok(map.into_iter().collect()),
        Ok(other) => Err(Error::encode(
            "the hyper-parameters",
            format!("a map was expected, not {other}"),
        )),
        Err(e) => Err(Error::encode("the hyper-parameters", e)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSizes {
    /// Images the final classifier was fitted on (train, held-out split included).
    pub train: usize,
    /// The held-out part of train used to choose hyper-parameters (0 when none is chosen).
    pub val: usize,
    pub test: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    /// `logistic`, `sgd` or `knn`.
    pub protocol: String,
    /// One line saying what the protocol is.
    pub protocol_description: String,
    pub dataset: String,
    pub data_dir: String,
    pub weights: WeightsInfo,
    pub splits: SplitSizes,
    pub feature_dim: usize,
    /// Chosen values and the grids they came from (e.g. `lambda`, `lr`, `k`).
    pub hyperparameters: BTreeMap<String, serde_json::Value>,
    pub top1: f64,
    pub top5: f64,
    pub mean_per_class_accuracy: f64,
    pub class_names: Vec<String>,
    /// `None` for a class absent from test.
    pub per_class_accuracy: Vec<Option<f64>>,
    /// Row = true class, column = prediction.
    pub confusion_matrix: Vec<Vec<u64>>,
    pub seconds: f64,
}

/// The metrics part of a report, from test scores (`[n, classes]`, row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationMetrics {
    pub top1: f64,
    pub top5: f64,
    pub mean_per_class_accuracy: f64,
    pub per_class_accuracy: Vec<Option<f64>>,
    pub confusion_matrix: Vec<Vec<u64>>,
}

impl ClassificationMetrics {
    pub fn from_scores(scores: &[f32], labels: &[usize], classes: usize) -> Result<Self> {
        let pred = metrics::predictions(scores, classes)?;
        let cm = metrics::confusion_matrix(labels, &pred, classes)?;
        let rows: Vec<Vec<u64>> = cm.chunks(classes).map(<[u64]>::to_vec).collect();
        let per_class_accuracy = rows
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let total: u64 = row.iter().sum();
                (total > 0).then(|| row[c] as f64 / total as f64)
            })
            .collect();
        Ok(Self {
            top1: metrics::top_k_accuracy(scores, labels, classes, 1)?,
            top5: metrics::top_k_accuracy(scores, labels, classes, 5.min(classes))?,
            mean_per_class_accuracy: metrics::mean_per_class_accuracy(labels, &pred, classes)?,
            per_class_accuracy,
            confusion_matrix: rows,
        })
    }
}

impl ClassificationReport {
    /// Writes the report as pretty JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| Error::encode("the report", e))?;
        write_atomic(path, text.as_bytes())
    }

    pub fn read_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))
    }

    /// A short human table: the setting, then the metrics.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let weights = self
            .weights
            .path
            .as_deref()
            .unwrap_or(self.weights.extractor.as_str());
        let _ = writeln!(s, "{} — {}", self.protocol, self.protocol_description);
        let _ = writeln!(
            s,
            "dataset {} ({} train / {} held out / {} test), {}-d features of {}",
            self.dataset,
            self.splits.train,
            self.splits.val,
            self.splits.test,
            self.feature_dim,
            weights
        );
        let chosen: Vec<String> = self
            .hyperparameters
            .iter()
            .filter(|(_, v)| !v.is_array())
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        if !chosen.is_empty() {
            let _ = writeln!(s, "chosen: {}", chosen.join(", "));
        }
        let _ = writeln!(s, "{:>8} {:>8} {:>16}", "top-1", "top-5", "mean per-class");
        let _ = writeln!(
            s,
            "{:>7.2}% {:>7.2}% {:>15.2}%",
            100.0 * self.top1,
            100.0 * self.top5,
            100.0 * self.mean_per_class_accuracy
        );
        s
    }
}
