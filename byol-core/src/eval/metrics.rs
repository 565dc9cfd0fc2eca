//! Classification and segmentation metrics: top-k accuracy, mean per-class accuracy, confusion
//! matrices, VOC average precision (11-point and all-point) and mIoU.
//!
//! Scores are row-major `n × classes`. VOC labels follow the devkit: `1` positive, `-1` negative,
//! `0` "difficult" (left out of AP entirely).

use crate::{Error, Result};

/// Ignore label of segmentation masks (VOC/ADE/Cityscapes convention).
pub const IGNORE_LABEL: u32 = 255;

fn check_scores(scores: &[f32], labels: &[usize], classes: usize) -> Result<()> {
    if classes == 0 {
        return Err(Error::config("classes", "must be at least 1"));
    }
    if labels.is_empty() {
        return Err(Error::Input("no samples to score".into()));
    }
    if scores.len() != labels.len() * classes {
        return Err(Error::Input(format!(
            "{} scores for {} samples × {classes} classes",
            scores.len(),
            labels.len()
        )));
    }
    if let Some((i, &c)) = labels.iter().enumerate().find(|(_, &c)| c >= classes) {
        return Err(Error::Input(format!(
            "label {c} at sample {i} is out of range for {classes} classes"
        )));
    }
    Ok(())
}

/// Rank of the true class in a score row (0 = best). Ties go to the lower class index, as an
/// arg-max or a stable sort would break them, so top-1 agrees with [`argmax`].
fn rank_of(row: &[f32], label: usize) -> usize {
    let s = row[label];
    row.iter()
        .enumerate()
        .filter(|&(c, &v)| v > s || (v == s && c < label))
        .count()
}

/// Index of the largest score (first one on ties). `row` must be non-empty.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Fraction of samples whose true class is among the `k` highest scores.
pub fn top_k_accuracy(scores: &[f32], labels: &[usize], classes: usize, k: usize) -> Result<f64> {
    check_scores(scores, labels, classes)?;
    if k == 0 {
        return Err(Error::config("k", "top-k accuracy needs k >= 1"));
    }
    let hits = labels
        .iter()
        .enumerate()
        .filter(|&(i, &y)| rank_of(&scores[i * classes..(i + 1) * classes], y) < k)
        .count();
    Ok(hits as f64 / labels.len() as f64)
}

/// Top-1 accuracy (arg-max of the scores).
pub fn top1_accuracy(scores: &[f32], labels: &[usize], classes: usize) -> Result<f64> {
    top_k_accuracy(scores, labels, classes, 1)
}

/// Arg-max prediction per row.
pub fn predictions(scores: &[f32], classes: usize) -> Result<Vec<usize>> {
    if classes == 0 || !scores.len().is_multiple_of(classes) {
        return Err(Error::Input(format!(
            "{} scores do not split into rows of {classes} classes",
            scores.len()
        )));
    }
    Ok(scores.chunks(classes).map(argmax).collect())
}

/// `classes × classes` confusion matrix, row = true class, column = prediction (sklearn layout).
pub fn confusion_matrix(truth: &[usize], pred: &[usize], classes: usize) -> Result<Vec<u64>> {
    if truth.len() != pred.len() {
        return Err(Error::Input(format!(
            "{} labels but {} predictions",
            truth.len(),
            pred.len()
        )));
    }
    let mut cm = vec![0u64; classes * classes];
    for (i, (&t, &p)) in truth.iter().zip(pred).enumerate() {
        if t >= classes || p >= classes {
            return Err(Error::Input(format!(
                "sample {i}: label {t} / prediction {p} out of range for {classes} classes"
            )));
        }
        cm[t * classes + p] += 1;
    }
    Ok(cm)
}

/// Mean over classes of per-class recall (sklearn's `balanced_accuracy_score`); classes without
/// any true sample are left out of the mean.
pub fn mean_per_class_accuracy(truth: &[usize], pred: &[usize], classes: usize) -> Result<f64> {
    if truth.is_empty() {
        return Err(Error::Input("no samples to score".into()));
    }
    let cm = confusion_matrix(truth, pred, classes)?;
    let (mut sum, mut present) = (0.0, 0usize);
    for c in 0..classes {
        let row: u64 = cm[c * classes..(c + 1) * classes].iter().sum();
        if row > 0 {
            sum += cm[c * classes + c] as f64 / row as f64;
            present += 1;
        }
    }
    Ok(sum / present as f64)
}

/// Scores and labels of the non-difficult samples, sorted by decreasing score (stable, so equal
/// scores keep their input order as the devkit's sort does in practice).
fn ranked(scores: &[f32], labels: &[i8]) -> Result<(Vec<f32>, Vec<bool>, usize)> {
    if scores.len() != labels.len() {
        return Err(Error::Input(format!(
            "{} scores for {} labels",
            scores.len(),
            labels.len()
        )));
    }
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| !matches!(l, -1..=1))
    {
        return Err(Error::Input(format!(
            "label {l} at sample {i}: VOC labels are 1, -1 or 0 (difficult)"
        )));
    }
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return Err(Error::Input(format!("score of sample {i} is NaN")));
    }
    let mut idx: Vec<usize> = (0..scores.len()).filter(|&i| labels[i] != 0).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let npos = idx.iter().filter(|&&i| labels[i] > 0).count();
    if npos == 0 {
        return Err(Error::Input(
            "average precision needs at least one positive (non-difficult) sample".into(),
        ));
    }
    Ok((
        idx.iter().map(|&i| scores[i]).collect(),
        idx.iter().map(|&i| labels[i] > 0).collect(),
        npos,
    ))
}

/// VOC2007 11-point interpolated AP: mean over t ∈ {0, 0.1, …, 1} of the highest precision at a
/// recall ≥ t (0 where no such point exists). Difficult samples (label 0) are ignored.
pub fn voc07_ap_11point(scores: &[f32], labels: &[i8]) -> Result<f64> {
    let (_, pos, npos) = ranked(scores, labels)?;
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut points = Vec::with_capacity(pos.len());
    for p in pos {
        if p {
            tp += 1;
        } else {
            fp += 1;
        }
        points.push((tp as f64 / npos as f64, tp as f64 / (tp + fp) as f64));
    }
    let mut ap = 0.0;
    for t in 0..=10 {
        // k·0.1 (not k/10) as the devkit's `0:0.1:1` / numpy's `arange(0, 1.1, 0.1)` produce it:
        // 3·0.1 > 0.3, which matters when a recall lands exactly on 0.3, 0.6 or 0.7.
        let t = t as f64 * 0.1;
        let best = points
            .iter()
            .filter(|(r, _)| *r >= t)
            .map(|&(_, p)| p)
            .fold(0.0f64, f64::max);
        ap += best / 11.0;
    }
    Ok(ap)
}

/// All-point AP as scikit-learn's `average_precision_score`: Σₙ (Rₙ − Rₙ₋₁)·Pₙ over the distinct
/// score thresholds, so tied scores enter as one operating point. Difficult samples are ignored.
pub fn average_precision(scores: &[f32], labels: &[i8]) -> Result<f64> {
    let (s, pos, npos) = ranked(scores, labels)?;
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut prev_recall = 0.0;
    let mut ap = 0.0;
    for i in 0..s.len() {
        if pos[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        // Only the last sample of a run of equal scores closes a threshold.
        if i + 1 < s.len() && s[i + 1] == s[i] {
            continue;
        }
        let recall = tp as f64 / npos as f64;
        ap += (recall - prev_recall) * (tp as f64 / (tp + fp) as f64);
        prev_recall = recall;
    }
    Ok(ap)
}

/// Per-class AP for multi-label data: `scores` and `labels` are row-major `n × classes`.
/// `eleven_point` picks the VOC2007 11-point formula, otherwise the all-point one.
pub fn per_class_ap(
    scores: &[f32],
    labels: &[i8],
    classes: usize,
    eleven_point: bool,
) -> Result<Vec<f64>> {
    if classes == 0 || scores.len() != labels.len() || !scores.len().is_multiple_of(classes) {
        return Err(Error::Input(format!(
            "{} scores / {} labels do not form rows of {classes} classes",
            scores.len(),
            labels.len()
        )));
    }
    (0..classes)
        .map(|c| {
            let s: Vec<f32> = scores.iter().skip(c).step_by(classes).copied().collect();
            let l: Vec<i8> = labels.iter().skip(c).step_by(classes).copied().collect();
            let ap = if eleven_point {
                voc07_ap_11point(&s, &l)
            } else {
                average_precision(&s, &l)
            };
            ap.map_err(|e| Error::Input(format!("class {c}: {e}")))
        })
        .collect()
}

/// A pixel confusion matrix for semantic segmentation.
#[derive(Debug, Clone, PartialEq)]
pub struct SegConfusion {
    pub classes: usize,
    /// `classes × classes`, row = ground truth, column = prediction.
    pub counts: Vec<u64>,
}

/// Segmentation scores derived from a [`SegConfusion`].
#[derive(Debug, Clone, PartialEq)]
pub struct SegScores {
    /// IoU per class; `None` for a class absent from both prediction and ground truth.
    pub per_class_iou: Vec<Option<f64>>,
    /// Mean of the defined IoUs (numpy `nanmean`).
    pub miou: f64,
    /// Correct pixels over all non-ignored pixels.
    pub pixel_accuracy: f64,
}

impl SegConfusion {
    pub fn new(classes: usize) -> Result<Self> {
        if classes == 0 {
            return Err(Error::config("classes", "must be at least 1"));
        }
        Ok(Self {
            classes,
            counts: vec![0; classes * classes],
        })
    }

    /// Adds one mask pair. Ground-truth pixels equal to `ignore` are skipped; any other label or
    /// prediction outside `0..classes` is an error.
    pub fn update(&mut self, truth: &[u32], pred: &[u32], ignore: u32) -> Result<()> {
        if truth.len() != pred.len() {
            return Err(Error::Input(format!(
                "mask sizes differ: {} ground-truth vs {} predicted pixels",
                truth.len(),
                pred.len()
            )));
        }
        let c = self.classes;
        for (i, (&t, &p)) in truth.iter().zip(pred).enumerate() {
            if t == ignore {
                continue;
            }
            if t as usize >= c || p as usize >= c {
                return Err(Error::Input(format!(
                    "pixel {i}: label {t} / prediction {p} out of range for {c} classes"
                )));
            }
            self.counts[t as usize * c + p as usize] += 1;
        }
        Ok(())
    }

    /// Per-class IoU = TP / (TP + FP + FN), mIoU and pixel accuracy.
    pub fn scores(&self) -> Result<SegScores> {
        let c = self.classes;
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return Err(Error::Input("no labelled pixels to score".into()));
        }
        let mut per_class_iou = Vec::with_capacity(c);
        let mut correct = 0u64;
        for k in 0..c {
            let tp = self.counts[k * c + k];
            let row: u64 = self.counts[k * c..(k + 1) * c].iter().sum();
            let col: u64 = (0..c).map(|r| self.counts[r * c + k]).sum();
            correct += tp;
            let union = row + col - tp;
            per_class_iou.push((union > 0).then(|| tp as f64 / union as f64));
        }
        let defined: Vec<f64> = per_class_iou.iter().flatten().copied().collect();
        Ok(SegScores {
            miou: defined.iter().sum::<f64>() / defined.len() as f64,
            per_class_iou,
            pixel_accuracy: correct as f64 / total as f64,
        })
    }
}

/// One-shot mIoU over a set of masks.
pub fn segmentation_scores(
    truth: &[u32],
    pred: &[u32],
    classes: usize,
    ignore: u32,
) -> Result<SegScores> {
    let mut cm = SegConfusion::new(classes)?;
    cm.update(truth, pred, ignore)?;
    cm.scores()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_by_hand() {
        // 3 samples, 3 classes: true ranks 0, 1, 2.
        let s = [0.9, 0.05, 0.05, 0.2, 0.5, 0.3, 0.5, 0.3, 0.2];
        let y = [0, 2, 2];
        assert!((top1_accuracy(&s, &y, 3).unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert!((top_k_accuracy(&s, &y, 3, 2).unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(top_k_accuracy(&s, &y, 3, 3).unwrap(), 1.0);
        assert!(top_k_accuracy(&s, &[0, 3, 1], 3, 1).is_err());
        assert!(top_k_accuracy(&s[..8], &y, 3, 1).is_err());
    }

    #[test]
    fn ap_by_hand() {
        // Ranking + - + - : P at the positives 1 and 2/3 → AP = (1 + 2/3)/2.
        let s = [0.9, 0.8, 0.7, 0.6];
        let l = [1, -1, 1, -1];
        assert!((average_precision(&s, &l).unwrap() - 5.0 / 6.0).abs() < 1e-12);
        // 11-point: recall 0.5 reached at P=1 (t=0..0.5, 6 points), recall 1 at P=2/3 (5 points).
        let e = (6.0 + 5.0 * 2.0 / 3.0) / 11.0;
        assert!((voc07_ap_11point(&s, &l).unwrap() - e).abs() < 1e-12);
        // A difficult sample ranked first changes nothing.
        let s2 = [1.0, 0.9, 0.8, 0.7, 0.6];
        let l2 = [0, 1, -1, 1, -1];
        assert!((average_precision(&s2, &l2).unwrap() - 5.0 / 6.0).abs() < 1e-12);
        // Ties form one threshold: both tied at the top → P = 1/2 at recall 1.
        assert!((average_precision(&[0.5, 0.5], &[1, -1]).unwrap() - 0.5).abs() < 1e-12);
        assert!(average_precision(&[0.5, 0.4], &[-1, 0]).is_err());
        assert!(average_precision(&[0.5], &[2]).is_err());
    }

    #[test]
    fn miou_by_hand() {
        // gt:   0 0 1 1 255   pred: 0 1 1 1 0 ; class 2 absent everywhere.
        let t = [0, 0, 1, 1, 255];
        let p = [0, 1, 1, 1, 0];
        let s = segmentation_scores(&t, &p, 3, IGNORE_LABEL).unwrap();
        assert_eq!(s.per_class_iou[0], Some(0.5));
        assert_eq!(s.per_class_iou[1], Some(2.0 / 3.0));
        assert_eq!(s.per_class_iou[2], None);
        assert!((s.miou - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!((s.pixel_accuracy - 0.75).abs() < 1e-12);
        assert!(segmentation_scores(&[0, 3], &[0, 0], 3, IGNORE_LABEL).is_err());
    }

    #[test]
    fn per_class_accuracy_by_hand() {
        let t = [0, 0, 0, 1];
        let p = [0, 0, 1, 1];
        let cm = confusion_matrix(&t, &p, 3).unwrap();
        assert_eq!(cm, vec![2, 1, 0, 0, 1, 0, 0, 0, 0]);
        let m = mean_per_class_accuracy(&t, &p, 3).unwrap();
        assert!((m - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
    }
}
