//! `metrics.jsonl`, the record of a pretraining run: one [`StepLog`] per line, appended by the
//! training loop, truncated to the resumed step on resume, read back for the plot, reports and
//! tests.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::io::write_atomic;
use crate::{Error, Result};

/// Name of the per-step metrics log in the output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    pub step: u64,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub tau: f64,
    pub images_per_sec: f64,
    pub projection_std: f64,
    /// Present on the steps after which the monitor ran.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub knn_top1: Option<f64>,
}

/// The JSONL metrics log; on resume, lines past the resumed step are dropped first so the log
/// reads as one uninterrupted run.
pub(crate) struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    pub(crate) fn open(path: &Path, resume_step: u64) -> Result<Self> {
        let kept: String = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<StepLog>(line).is_ok_and(|l| l.step <= resume_step)
                })
                .map(|l| format!("{l}\n"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        write_atomic(path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub(crate) fn append(&mut self, entry: &StepLog) -> Result<()> {
        let line = serde_json::to_string(entry).map_err(|e| Error::encode("a metrics line", e))?;
        writeln!(self.file, "{line}").map_err(|e| Error::io(&self.path, e))
    }
}

/// Reads a metrics log back (for plots, reports and tests).
pub fn read_metrics(path: &Path) -> Result<Vec<StepLog>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|e| Error::format(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}
