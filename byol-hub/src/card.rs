//! The files that describe a published encoder: `config.json` (architecture and recipe, in the
//! spirit of timm's) and the `README.md` model card whose YAML front matter carries a
//! `model-index` built only from our own evaluation reports (never typed by hand).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use byol_core::eval::report::ClassificationReport;
use byol_core::nn::ResNetConfig;
use byol_core::transfer::TransferReport;

use crate::{Error, Result};

/// An evaluation result read from one of our JSON reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Linear(ClassificationReport),
    Transfer(TransferReport),
}

impl Report {
    /// Reads a report file: a linear-eval or a transfer report, or `None` for another JSON file.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        if let Ok(r) = serde_json::from_str::<ClassificationReport>(&text) {
            return Ok(Some(Report::Linear(r)));
        }
        if let Ok(r) = serde_json::from_str::<TransferReport>(&text) {
            return Ok(Some(Report::Transfer(r)));
        }
        Ok(None)
    }

    fn dataset(&self) -> &str {
        match self {
            Report::Linear(r) => &r.dataset,
            Report::Transfer(r) => &r.dataset,
        }
    }
}

/// What the card says besides the reports.
#[derive(Debug, Clone)]
pub struct CardInfo {
    /// `owner/name`.
    pub repo: String,
    pub license: String,
    /// Hub dataset ids of the pretraining data (front matter `datasets`).
    pub datasets: Vec<String>,
    pub encoder: ResNetConfig,
    /// The run's recipe (`config.toml` as JSON), if any.
    pub recipe: Option<Value>,
    /// Files of the repository besides the card, with one line each.
    pub files: Vec<(String, String)>,
}

/// `resnet50`, `resnet50x2`.
pub fn architecture_name(c: &ResNetConfig) -> String {
    if c.width == 1 {
        format!("resnet{}", c.depth)
    } else {
        format!("resnet{}x{}", c.depth, c.width)
    }
}

/// `config.json`: architecture, encoder config, feature size, recipe.
pub fn config_json(encoder: &ResNetConfig, recipe: Option<&Value>) -> Result<String> {
    let value = json!({
        "architecture": architecture_name(encoder),
        "library_name": "byol-rs",
        "num_features": encoder.feature_dim()?,
        "num_classes": 0,
        "encoder": encoder,
        "weights_format": "torchvision ResNet state dict without fc (safetensors)",
        "pretrain": recipe.cloned().unwrap_or(Value::Null),
    });
    serde_json::to_string_pretty(&value)
        .map_err(|e| Error::Core(byol_core::Error::encode("the Hub config.json", e)))
}

/// A YAML scalar: JSON strings are valid YAML double-quoted scalars.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The model card.
pub fn model_card(info: &CardInfo, reports: &[Report]) -> Result<String> {
    let arch = architecture_name(&info.encoder);
    let name = info.repo.rsplit('/').next().unwrap_or(&info.repo);
    let mut y = String::from("---\n");
    let _ = writeln!(y, "library_name: byol-rs");
    let _ = writeln!(y, "license: {}", q(&info.license));
    let _ = writeln!(
        y,
        "tags:\n- byol\n- self-supervised\n- image-feature-extraction\n- {}",
        q(&arch)
    );
    let _ = writeln!(y, "pipeline_tag: image-feature-extraction");
    let mut datasets = info.datasets.clone();
    for r in reports {
        if !datasets.iter().any(|d| d == r.dataset()) {
            datasets.push(r.dataset().to_string());
        }
    }
    if !datasets.is_empty() {
        let _ = writeln!(y, "datasets:");
        for d in &datasets {
            let _ = writeln!(y, "- {}", q(d));
        }
    }
    if !reports.is_empty() {
        let _ = writeln!(y, "model-index:\n- name: {}\n  results:", q(name));
        for r in reports {
            let (task, task_name, dataset, metrics) = match r {
                Report::Linear(r) => (
                    "image-classification",
                    linear_name(r),
                    &r.dataset,
                    vec![
                        ("accuracy", "Top-1 accuracy", 100.0 * r.top1),
                        ("accuracy", "Top-5 accuracy", 100.0 * r.top5),
                    ],
                ),
                Report::Transfer(r) => (
                    if r.task.contains("seg") {
                        "image-segmentation"
                    } else {
                        "image-classification"
                    },
                    format!("Transfer: {} ({})", r.task, r.protocol),
                    &r.dataset,
                    vec![(metric_type(&r.metric), r.metric.as_str(), 100.0 * r.value)],
                ),
            };
            let _ = writeln!(
                y,
                "  - task:\n      type: {task}\n      name: {}",
                q(&task_name)
            );
            let _ = writeln!(
                y,
                "    dataset:\n      type: {}\n      name: {}",
                q(dataset),
                q(dataset)
            );
            let _ = writeln!(y, "    metrics:");
            for (ty, label, value) in metrics {
                let _ = writeln!(
                    y,
                    "    - type: {}\n      name: {}\n      value: {value:.2}",
                    q(ty),
                    q(label)
                );
            }
        }
    }
    y.push_str("---\n\n");

    let _ = writeln!(y, "# {name}\n");
    let _ = writeln!(
        y,
        "A {arch} encoder pretrained with BYOL (Grill et al., 2020) by \
         [byol-rs](https://github.com/byol-rs/byol-rs). `model.safetensors` holds the encoder in \
         torchvision naming without `fc`:\n"
    );
    let _ = writeln!(
        y,
        "```python\nimport torchvision\nfrom huggingface_hub import hf_hub_download\nfrom safetensors.torch import load_file\n\
         model = torchvision.models.{}()\nmissing, unexpected = model.load_state_dict(load_file(hf_hub_download({}, \"model.safetensors\")), strict=False)\n\
         assert unexpected == [] and set(missing) == {{\"fc.weight\", \"fc.bias\"}}\n```\n",
        if info.encoder.width == 1 { arch.clone() } else { format!("resnet{}  # widen to x{}", info.encoder.depth, info.encoder.width) },
        q(&info.repo)
    );
    let _ = writeln!(y, "Or with byol-rs: `--weights hf://{}`.\n", info.repo);
    if !reports.is_empty() {
        let _ = writeln!(y, "## Results (from the evaluation reports)\n\n| evaluation | dataset | metric | value |\n|---|---|---|---|");
        for r in reports {
            match r {
                Report::Linear(r) => {
                    let _ = writeln!(
                        y,
                        "| {} | {} | top-1 / top-5 | {:.2} / {:.2} |",
                        linear_row(r),
                        r.dataset,
                        100.0 * r.top1,
                        100.0 * r.top5
                    );
                }
                Report::Transfer(r) => {
                    let _ = writeln!(
                        y,
                        "| transfer {} ({}) | {} | {} | {:.2} |",
                        r.task,
                        r.protocol,
                        r.dataset,
                        r.metric,
                        100.0 * r.value
                    );
                }
            }
        }
        y.push('\n');
    }
    let _ = writeln!(y, "## Files\n");
    for (f, what) in &info.files {
        let _ = writeln!(y, "- `{f}`: {what}");
    }
    Ok(y)
}

/// What a `byol-linear-eval` report evaluated, in words: a linear protocol on the frozen
/// encoder, or semi-supervised fine-tuning on a label subset (its `labels` hyper-parameter).
fn linear_name(r: &ClassificationReport) -> String {
    if r.protocol == SEMI_SUPERVISED {
        let labels = r
            .hyperparameters
            .get("labels")
            .and_then(Value::as_str)
            .unwrap_or("a subset of the");
        format!("Semi-supervised fine-tuning ({labels} labels)")
    } else {
        format!("Linear evaluation ({})", r.protocol)
    }
}

/// [`linear_name`] for the card's results table.
fn linear_row(r: &ClassificationReport) -> String {
    if r.protocol == SEMI_SUPERVISED {
        linear_name(r).to_lowercase()
    } else {
        format!("linear ({})", r.protocol)
    }
}

/// The `protocol` of semi-supervised fine-tuning reports.
const SEMI_SUPERVISED: &str = "semi-supervised";

fn metric_type(metric: &str) -> &'static str {
    let m = metric.to_ascii_lowercase();
    if m.contains("iou") {
        "mean_iou"
    } else if m.contains("map") || m.contains("ap") {
        "mAP"
    } else {
        "accuracy"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(protocol: &str, labels: Option<&str>) -> Report {
        let mut hyperparameters = std::collections::BTreeMap::new();
        if let Some(l) = labels {
            hyperparameters.insert("labels".to_string(), json!(l));
            hyperparameters.insert("labelled_images".to_string(), json!(12811));
        }
        Report::Linear(ClassificationReport {
            protocol: protocol.into(),
            protocol_description: String::new(),
            dataset: "imagenet".into(),
            data_dir: "/data/imagenet".into(),
            weights: byol_core::eval::report::WeightsInfo {
                extractor: "encoder".into(),
                path: None,
                sha256: None,
                architecture: None,
                part: None,
            },
            splits: byol_core::eval::report::SplitSizes {
                train: 12811,
                val: 1281,
                test: 50000,
            },
            feature_dim: 2048,
            hyperparameters,
            top1: 0.532,
            top5: 0.784,
            mean_per_class_accuracy: 0.53,
            class_names: vec![],
            per_class_accuracy: vec![],
            confusion_matrix: vec![],
            seconds: 1.0,
        })
    }

    #[test]
    fn semi_supervised_reports_are_named_by_their_label_subset() {
        let info = CardInfo {
            repo: "me/byol-r50".into(),
            license: "apache-2.0".into(),
            datasets: vec![],
            encoder: ResNetConfig::new(50),
            recipe: None,
            files: vec![],
        };
        let reports = [report("semi-supervised", Some("1%")), report("sgd", None)];
        let card = model_card(&info, &reports).unwrap();
        for needle in [
            "name: \"Semi-supervised fine-tuning (1% labels)\"",
            "name: \"Linear evaluation (sgd)\"",
            "value: 53.20",
            "value: 78.40",
            "| semi-supervised fine-tuning (1% labels) | imagenet | top-1 / top-5 | 53.20 / 78.40 |",
            "| linear (sgd) | imagenet |",
        ] {
            assert!(card.contains(needle), "card lacks {needle:?}:\n{card}");
        }
        // The report reads back as a linear-eval report, whatever its protocol.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("semi-supervised.json");
        let Report::Linear(r) = &reports[0] else {
            unreachable!()
        };
        r.write_json(&path).unwrap();
        assert_eq!(Report::read(&path).unwrap(), Some(reports[0].clone()));
    }
}
