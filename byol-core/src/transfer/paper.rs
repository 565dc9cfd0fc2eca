//! The paper's ResNet-50 transfer numbers (Table 3 and the segmentation result) and the metric
//! each dataset is scored with (App. D.2).

use crate::{Error, Result};

/// A dataset's transfer metric (App. D.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Top1,
    MeanPerClass,
    /// VOC2007's 11-point mAP (multi-label; the VOC task computes it).
    Map11,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Top1 => "top-1",
            Metric::MeanPerClass => "mean per-class accuracy",
            Metric::Map11 => "mAP (11-point)",
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "top1" | "top-1" => Ok(Metric::Top1),
            "mean-per-class" => Ok(Metric::MeanPerClass),
            _ => Err(Error::config(
                "metric",
                format!("`{s}`: use top1 or mean-per-class"),
            )),
        }
    }
}

/// One dataset of the paper's transfer table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperEntry {
    /// Folder name under the suite root.
    pub name: &'static str,
    pub metric: Metric,
    /// Linear evaluation, ResNet-50, as a fraction.
    pub linear: f64,
    /// Fine-tuned, where the recipe lists it.
    pub finetune: Option<f64>,
}

const fn entry(name: &'static str, metric: Metric, linear: f64, ft: Option<f64>) -> PaperEntry {
    PaperEntry {
        name,
        metric,
        linear,
        finetune: ft,
    }
}

/// The paper's ResNet-50 transfer numbers, copied from `shared/BYOL-RECIPE.md` ("Reported
/// numbers": linear transfer and fine-tuned transfer; metrics from "Evaluation protocols").
pub const PAPER_TRANSFER: [PaperEntry; 12] = [
    entry("food101", Metric::Top1, 0.753, Some(0.885)),
    entry("cifar10", Metric::Top1, 0.913, Some(0.978)),
    entry("cifar100", Metric::Top1, 0.784, Some(0.861)),
    entry("birdsnap", Metric::Top1, 0.572, None),
    entry("sun397", Metric::Top1, 0.622, None),
    entry("cars", Metric::Top1, 0.678, None),
    entry("aircraft", Metric::MeanPerClass, 0.606, None),
    entry("voc2007", Metric::Map11, 0.825, Some(0.854)),
    entry("dtd", Metric::Top1, 0.755, None),
    entry("pets", Metric::MeanPerClass, 0.904, None),
    entry("caltech101", Metric::MeanPerClass, 0.942, None),
    entry("flowers", Metric::MeanPerClass, 0.961, Some(0.970)),
];

/// The paper's entry for a dataset folder name.
pub fn paper_numbers(name: &str) -> Option<PaperEntry> {
    PAPER_TRANSFER.iter().copied().find(|e| e.name == name)
}

/// The paper's VOC2012 mIoU (ResNet-50, BYOL-RECIPE.md "Reported numbers").
pub const PAPER_VOC_SEG_MIOU: f64 = 0.763;
