//! Metric parity with scikit-learn / numpy references (fixtures from
//! `scripts/make_metric_fixtures.py`).

use byol_core::eval::metrics::{
    average_precision, confusion_matrix, mean_per_class_accuracy, predictions, segmentation_scores,
    top_k_accuracy, voc07_ap_11point, IGNORE_LABEL,
};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = byol_tests::fixture(&format!("metrics/{name}"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn classification_matches_sklearn() {
    let f = fixture("classification.json");
    for case in f["cases"].as_array().unwrap() {
        let c = case["classes"].as_u64().unwrap() as usize;
        let s = f32s(&case["scores"]);
        let y = usizes(&case["labels"]);
        let top1 = top_k_accuracy(&s, &y, c, 1).unwrap();
        let top5 = top_k_accuracy(&s, &y, c, 5.min(c)).unwrap();
        assert!((top1 - case["top1"].as_f64().unwrap()).abs() < 1e-12);
        assert!((top5 - case["top5"].as_f64().unwrap()).abs() < 1e-12);
        let pred = predictions(&s, c).unwrap();
        let bal = mean_per_class_accuracy(&y, &pred, c).unwrap();
        assert!((bal - case["balanced_accuracy"].as_f64().unwrap()).abs() < 1e-12);
        let cm: Vec<u64> = usizes(&case["confusion"])
            .iter()
            .map(|&v| v as u64)
            .collect();
        assert_eq!(confusion_matrix(&y, &pred, c).unwrap(), cm);
    }
}

#[test]
fn average_precision_matches_sklearn_and_devkit() {
    let f = fixture("ap.json");
    let mut worst: f64 = 0.0;
    for case in f["cases"].as_array().unwrap() {
        let s = f32s(&case["scores"]);
        let l: Vec<i8> = case["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i8)
            .collect();
        let all = average_precision(&s, &l).unwrap();
        let e11 = voc07_ap_11point(&s, &l).unwrap();
        worst = worst
            .max((all - case["ap_all"].as_f64().unwrap()).abs())
            .max((e11 - case["ap_11"].as_f64().unwrap()).abs());
    }
    assert!(worst < 1e-12, "worst AP error {worst}");
}

#[test]
fn miou_matches_numpy_bincount() {
    let f = fixture("miou.json");
    for case in f["cases"].as_array().unwrap() {
        let c = case["classes"].as_u64().unwrap() as usize;
        let gt: Vec<u32> = usizes(&case["gt"]).iter().map(|&v| v as u32).collect();
        let pred: Vec<u32> = usizes(&case["pred"]).iter().map(|&v| v as u32).collect();
        let s = segmentation_scores(&gt, &pred, c, IGNORE_LABEL).unwrap();
        for (k, r) in case["iou"].as_array().unwrap().iter().enumerate() {
            match (s.per_class_iou[k], r.as_f64()) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "class {k}: {a} vs {b}"),
                (None, None) => {}
                (a, b) => panic!("class {k}: {a:?} vs {b:?}"),
            }
        }
        assert!((s.miou - case["miou"].as_f64().unwrap()).abs() < 1e-12);
        assert!((s.pixel_accuracy - case["pixel_accuracy"].as_f64().unwrap()).abs() < 1e-12);
    }
}

#[test]
fn metric_errors_are_reported_not_panics() {
    assert!(top_k_accuracy(&[0.1, 0.2], &[0], 2, 0).is_err());
    assert!(top_k_accuracy(&[], &[], 2, 1).is_err());
    assert!(average_precision(&[0.1, f32::NAN], &[1, -1]).is_err());
    assert!(voc07_ap_11point(&[0.1], &[1, 1]).is_err());
    assert!(segmentation_scores(&[255, 255], &[0, 0], 2, IGNORE_LABEL).is_err());
    assert!(segmentation_scores(&[0, 1], &[0], 2, IGNORE_LABEL).is_err());
    assert!(confusion_matrix(&[0, 1], &[0, 5], 2).is_err());
}
