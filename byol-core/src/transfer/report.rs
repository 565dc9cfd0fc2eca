//! The JSON report of a transfer task and the short table printed beside it. Scores are stored
//! as fractions in [0, 1]; the table prints percentages, as the paper does.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::io::write_atomic;
use crate::{Error, Result};

pub use crate::eval::report::WeightsInfo;

/// One class's score (AP, IoU or accuracy); `None` where it is undefined (e.g. an IoU of a class
/// absent from both prediction and ground truth).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    pub class: String,
    pub value: Option<f64>,
}

/// What every task writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferReport {
    /// `voc`, `voc-svm`, `voc-seg` or `classify`.
    pub task: String,
    /// The protocol in words; VOC's logistic and SVM numbers are not comparable and this says
    /// which one produced the report.
    pub protocol: String,
    /// Dataset name (folder name for the suite).
    pub dataset: String,
    pub dataset_root: PathBuf,
    /// Images per split actually used.
    pub splits: BTreeMap<String, usize>,
    pub weights: WeightsInfo,
    pub image_size: usize,
    /// Chosen (and fixed) hyper-parameters.
    pub hyperparameters: BTreeMap<String, serde_json::Value>,
    /// Name of the headline metric (`mAP (11-point)`, `top-1`, `mean per-class accuracy`, ...).
    pub metric: String,
    /// The headline metric, in [0, 1].
    pub value: f64,
    /// The paper's number for this setting (ResNet-50), in [0, 1], when it reports one.
    pub paper: Option<f64>,
    pub per_class: Vec<ClassScore>,
    /// Secondary metrics (pixel accuracy, top-5, losses, ...).
    pub extra: BTreeMap<String, f64>,
    pub seconds: f64,
}

impl TransferReport {
    /// Writes the report as pretty JSON (atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }

    /// A short human-readable table: the headline, then one line per class.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "task      {}  ({})", self.task, self.protocol);
        let splits: Vec<String> = self
            .splits
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "dataset   {}  [{}]", self.dataset, splits.join(", "));
        let paper = self
            .paper
            .map(|p| format!("   (paper, ResNet-50: {:.1})", 100.0 * p))
            .unwrap_or_default();
        let _ = writeln!(s, "{:<9} {:.2}{paper}", self.metric, 100.0 * self.value);
        for (k, v) in &self.extra {
            let _ = writeln!(s, "  {k:<22} {v:.4}");
        }
        for c in &self.per_class {
            let v = c
                .value
                .map_or("   n/a".to_string(), |v| format!("{:6.2}", 100.0 * v));
            let _ = writeln!(s, "  {:<22} {v}", c.class);
        }
        s
    }
}

/// One dataset of the suite table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteRow {
    pub dataset: String,
    pub metric: String,
    pub linear: Option<f64>,
    pub paper_linear: Option<f64>,
    pub finetune: Option<f64>,
    pub paper_finetune: Option<f64>,
}

/// The `--suite paper` result: one row per dataset found, and every task's full report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteReport {
    pub root: PathBuf,
    /// Datasets of the paper's list with no folder under the root.
    pub missing: Vec<String>,
    /// Datasets that were found but failed, with the error.
    pub failed: BTreeMap<String, String>,
    pub rows: Vec<SuiteRow>,
    pub reports: Vec<TransferReport>,
}

impl SuiteReport {
    pub fn write(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }

    /// Ours next to the paper's (ResNet-50, percentages).
    pub fn table(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}", 100.0 * v));
        let mut s = format!(
            "{:<11} {:<26} {:>7} {:>7} {:>9} {:>9}\n",
            "dataset", "metric", "linear", "paper", "finetune", "paper"
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "{:<11} {:<26} {:>7} {:>7} {:>9} {:>9}",
                r.dataset,
                r.metric,
                f(r.linear),
                f(r.paper_linear),
                f(r.finetune),
                f(r.paper_finetune)
            );
        }
        for (name, err) in &self.failed {
            let _ = writeln!(s, "FAILED {name}: {err}");
        }
        if !self.missing.is_empty() {
            let _ = writeln!(s, "not found: {}", self.missing.join(", "));
        }
        s
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::format(path, format!("cannot serialise the report: {e}")))?;
    write_atomic(path, text.as_bytes())
}

/// Adds a protocol's typed choice to [`TransferReport::hyperparameters`] (its field names are
/// the keys; `None` fields are left out).
pub(crate) fn record<T: Serialize>(
    map: &mut BTreeMap<String, serde_json::Value>,
    choice: &T,
) -> Result<()> {
    map.extend(crate::eval::report::hyperparameters(choice)?);
    Ok(())
}

/// One point of a fine-tuning grid and its validation score (the reports' `grid`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GridPoint {
    pub lr: f64,
    pub weight_decay: f64,
    pub val: f64,
}

/// The folder layout a classification dataset was read with.
#[derive(Debug, Serialize)]
pub struct LayoutChoice<'a> {
    pub layout: &'a str,
}

/// The linear protocol of `classify`: λ chosen by validation top-1.
#[derive(Debug, Serialize)]
pub struct LinearChoice<'a> {
    pub lambda: f64,
    pub lambda_grid_size: usize,
    pub validation: &'a str,
}

/// Fine-tuning (`classify --finetune`, `voc --protocol finetune`): lr × weight decay chosen on
/// validation, then retrained.
#[derive(Debug, Serialize)]
pub struct FinetuneChoice<'a> {
    pub steps: usize,
    pub batch_size: usize,
    pub momentum: f64,
    pub lr: f64,
    pub weight_decay: f64,
    pub grid: &'a [GridPoint],
    pub validation: &'a str,
}

/// The VOC07 frozen-feature protocols: per-class λ (logistic) or SVM cost, and how they were
/// chosen.
#[derive(Debug, Default, Serialize)]
pub struct VocLinearChoice<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_grid_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_per_class: Option<BTreeMap<&'a str, f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub costs: Option<&'a [f64]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folds: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_per_class: Option<BTreeMap<&'a str, f64>>,
    pub feature_dim: usize,
}

/// VOC2012 segmentation fine-tuning.
#[derive(Debug, Serialize)]
pub struct SegmentationChoice<'a> {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub lr_schedule: String,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub scale_range: [f64; 2],
    pub crop_size: usize,
    pub head: &'a str,
    pub seed: u64,
}
