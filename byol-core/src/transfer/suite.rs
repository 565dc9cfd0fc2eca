//! `--suite paper`: every dataset of the paper's transfer table found under a root, linear and
//! (with fine-tuning options) fine-tuned, one row each next to the paper's numbers. A dataset
//! that fails is recorded and the suite goes on.

use std::collections::BTreeMap;
use std::path::Path;

use crate::transfer::classify::{run_classify, ClassifyOptions};
use crate::transfer::paper::{Metric, PAPER_TRANSFER};
use crate::transfer::report::{SuiteReport, SuiteRow, TransferReport};
use crate::transfer::voc::{run_voc_classification, VocOptions, VocProtocol};
use crate::{Error, Result};

/// Every dataset of [`PAPER_TRANSFER`] found as a folder of `root`: linear (and fine-tuned when
/// `opts.finetune` is set), one row each next to the paper's numbers.
pub fn run_suite(root: &Path, opts: &ClassifyOptions) -> Result<SuiteReport> {
    let mut rows = Vec::new();
    let mut reports = Vec::new();
    let mut missing = Vec::new();
    let mut failed = BTreeMap::new();
    for entry in PAPER_TRANSFER {
        let dir = root.join(entry.name);
        if !dir.is_dir() {
            missing.push(entry.name.to_string());
            continue;
        }
        tracing::info!(dataset = entry.name, "transfer suite");
        let run = || -> Result<(TransferReport, Option<TransferReport>)> {
            if entry.metric == Metric::Map11 {
                let mut v = VocOptions::new(opts.common.clone(), VocProtocol::Logistic);
                v.lambda_grid = opts.lambda_grid.clone();
                v.val_fraction = opts.val_fraction;
                let lin = run_voc_classification(&dir, &v)?;
                v.finetune = opts.finetune.clone();
                let ft = match &opts.finetune {
                    Some(_) => Some(run_voc_classification(&dir, &v)?),
                    None => None,
                };
                return Ok((lin, ft));
            }
            let lin = run_classify(
                &dir,
                &ClassifyOptions {
                    finetune: None,
                    ..opts.clone()
                },
            )?;
            let ft = match &opts.finetune {
                Some(_) => Some(run_classify(&dir, opts)?),
                None => None,
            };
            Ok((lin, ft))
        };
        // One broken dataset must not throw away hours of the others: record it and go on.
        let (linear, finetuned) = match run() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(dataset = entry.name, "{e}");
                failed.insert(entry.name.to_string(), e.to_string());
                continue;
            }
        };
        rows.push(SuiteRow {
            dataset: entry.name.into(),
            metric: linear.metric.clone(),
            linear: Some(linear.value),
            paper_linear: Some(entry.linear),
            finetune: finetuned.as_ref().map(|r| r.value),
            paper_finetune: entry.finetune,
        });
        reports.push(linear);
        reports.extend(finetuned);
    }
    if rows.is_empty() && failed.is_empty() {
        return Err(Error::format(
            root,
            format!(
                "none of the paper's datasets is here (expected folders named {})",
                PAPER_TRANSFER.map(|e| e.name).join(", ")
            ),
        ));
    }
    Ok(SuiteReport {
        root: root.to_path_buf(),
        missing,
        failed,
        rows,
        reports,
    })
}
