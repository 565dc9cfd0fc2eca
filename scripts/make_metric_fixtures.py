#!/usr/bin/env python3
"""Writes the small JSON reference fixtures of byol-core's evaluation code.

Run from the repository root with numpy + scikit-learn available, e.g.
    "$(scripts/peer-python)" scripts/make_metric_fixtures.py
Output: tests/fixtures/metrics/{classification,ap,miou,logistic,svm}.json (committed; the Rust
tests read them and never call Python).

References are computed independently of the Rust code: sklearn for top-k / balanced accuracy /
confusion / all-point AP / LinearSVC / LogisticRegression; a direct transcription of the VOC2007
devkit formula for 11-point AP; numpy bincount for the segmentation confusion matrix.
"""
import json
import os

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    top_k_accuracy_score,
)
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

OUT = os.path.join("tests", "fixtures", "metrics")
rng = np.random.default_rng(20240611)


def r(a, nd=7):
    """Rounded lists keep the fixtures small; inputs are rounded BEFORE computing references."""
    return np.round(np.asarray(a, dtype=np.float64), nd)


def nan_to_none(v):
    return None if np.isnan(v) else float(v)


def dump(name, obj):
    obj = {"sklearn": sklearn.__version__, "numpy": np.__version__, **obj}
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(obj, f, separators=(",", ":"))
    print("wrote", name)


def classification():
    cases = []
    for n, c in [(50, 3), (200, 10), (120, 7)]:
        scores = r(rng.normal(size=(n, c)), 4).astype(np.float32)
        labels = rng.integers(0, c, size=n)
        labels[:c] = np.arange(c)  # every class present
        pred = scores.argmax(1)
        cases.append(
            {
                "classes": c,
                "labels": labels.tolist(),
                "scores": scores.astype(np.float64).ravel().tolist(),
                "top1": float(top_k_accuracy_score(labels, scores, k=1, labels=np.arange(c))),
                "top5": float(top_k_accuracy_score(labels, scores, k=min(5, c), labels=np.arange(c))),
                "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
                "confusion": confusion_matrix(labels, pred, labels=np.arange(c)).ravel().tolist(),
            }
        )
    dump("classification.json", {"cases": cases})


def voc07_11point(scores, labels):
    """VOC2007 devkit (VOCevalcls.m): rank all samples, difficult (0) counts as neither TP nor FP."""
    order = np.argsort(-scores, kind="stable")
    gt = labels[order]
    tp = np.cumsum(gt > 0)
    fp = np.cumsum(gt < 0)
    rec = tp / np.sum(labels > 0)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).tiny)
    ap = 0.0
    for t in np.arange(0, 1.1, 0.1):
        p = prec[rec >= t]
        ap += (p.max() if p.size else 0.0) / 11.0
    return ap


def ap_cases():
    cases = []
    for n, pos_rate, difficult_rate, decimals in [
        (30, 0.3, 0.0, 4),
        (100, 0.1, 0.1, 4),
        (257, 0.5, 0.05, 4),
        (80, 0.25, 0.1, 1),  # heavy ties
        (500, 0.05, 0.1, 2),  # some ties
    ]:
        u = rng.random(n)
        labels = np.where(u < pos_rate, 1, -1)
        labels[rng.random(n) < difficult_rate] = 0
        labels[0] = 1  # at least one positive
        # Informative but imperfect scores.
        scores = np.round(rng.normal(size=n) + 1.2 * (labels > 0), decimals).astype(np.float32)
        scores = scores.astype(np.float64)
        keep = labels != 0
        cases.append(
            {
                "scores": scores.tolist(),
                "labels": labels.tolist(),
                "ap_all": float(average_precision_score(labels[keep] > 0, scores[keep])),
                "ap_11": float(voc07_11point(scores, labels)),
            }
        )
    dump("ap.json", {"cases": cases})


def miou_cases():
    cases = []
    for c, npix, ignore_rate, absent in [(5, 400, 0.1, []), (21, 3000, 0.05, [3, 7]), (3, 50, 0.3, [2])]:
        gt = rng.integers(0, c, size=npix)
        pred = np.where(rng.random(npix) < 0.6, gt, rng.integers(0, c, size=npix))
        for a in absent:  # classes absent from both → excluded from the mean
            gt[gt == a] = 0
            pred[pred == a] = 0
        gt[rng.random(npix) < ignore_rate] = 255
        valid = gt != 255
        cm = np.bincount(c * gt[valid] + pred[valid], minlength=c * c).reshape(c, c)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
        cases.append(
            {
                "classes": c,
                "gt": gt.tolist(),
                "pred": pred.tolist(),
                "iou": [nan_to_none(v) for v in iou],
                "miou": float(np.nanmean(iou)),
                "pixel_accuracy": float(np.diag(cm).sum() / cm.sum()),
            }
        )
    dump("miou.json", {"cases": cases})


def logistic_cases():
    out = {}
    n, d, c = 240, 6, 3
    centers = rng.normal(size=(c, d)) * 1.0
    y = rng.integers(0, c, size=n)
    x = r(centers[y] + rng.normal(size=(n, d)), 4).astype(np.float32)
    xt = r(rng.normal(size=(40, d)) * 1.5, 4).astype(np.float32)
    cases = []
    for lam in [1e-3, 1e-1]:
        clf = LogisticRegression(C=1.0 / (n * lam), tol=1e-12, max_iter=100000)
        clf.fit(x.astype(np.float64), y)
        cases.append(
            {
                "lambda": lam,
                "coef": clf.coef_.T.ravel().tolist(),  # d × C row-major, as the Rust model
                "intercept": (clf.intercept_ - clf.intercept_.mean()).tolist(),
                "proba": clf.predict_proba(xt.astype(np.float64)).ravel().tolist(),
            }
        )
    out["multinomial"] = {
        "dim": d,
        "classes": c,
        "x": x.astype(np.float64).ravel().tolist(),
        "y": y.tolist(),
        "x_test": xt.astype(np.float64).ravel().tolist(),
        "cases": cases,
    }
    t = np.where(x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=n) > 0, 1, -1)
    bcases = []
    for lam in [1e-3, 1e-1]:
        clf = LogisticRegression(C=1.0 / (n * lam), tol=1e-12, max_iter=100000)
        clf.fit(x.astype(np.float64), t)
        bcases.append(
            {
                "lambda": lam,
                "coef": clf.coef_.ravel().tolist(),
                "intercept": float(clf.intercept_[0]),
                "decision": clf.decision_function(xt.astype(np.float64)).tolist(),
            }
        )
    out["binary"] = {"dim": d, "targets": t.tolist(), "cases": bcases}
    dump("logistic.json", out)


def svm_cases():
    n, d = 150, 12
    w_true = rng.normal(size=d)
    x = rng.normal(size=(n, d))
    y = np.where(x @ w_true + 0.8 * rng.normal(size=n) > 0.3, 1, -1)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    x = r(x, 5).astype(np.float32).astype(np.float64)
    xt = rng.normal(size=(30, d))
    xt = r(xt / np.linalg.norm(xt, axis=1, keepdims=True), 5).astype(np.float32).astype(np.float64)
    cases = []
    for cost, cw in [(0.1, {1: 2, -1: 1}), (1.0, {1: 2, -1: 1}), (10.0, {1: 2, -1: 1}), (1.0, None)]:
        clf = LinearSVC(
            C=cost,
            class_weight=cw,
            intercept_scaling=1.0,
            penalty="l2",
            loss="squared_hinge",
            dual=True,
            tol=1e-10,
            max_iter=1000000,
            random_state=0,  # liblinear's coordinate order: reproducible fixtures
        )
        clf.fit(x, y)
        cases.append(
            {
                "cost": cost,
                "pos_weight": 2.0 if cw else 1.0,
                "coef": clf.coef_.ravel().tolist(),
                "intercept": float(clf.intercept_[0]),
                "decision": clf.decision_function(xt).tolist(),
            }
        )
    fold_labels = np.where(rng.random(40) < 0.3, 1, -1)
    folds = np.zeros(40, dtype=int)
    for k, (_, test) in enumerate(StratifiedKFold(3).split(np.zeros((40, 1)), fold_labels)):
        folds[test] = k
    dump(
        "svm.json",
        {
            "dim": d,
            "x": x.ravel().tolist(),
            "y": y.tolist(),
            "x_test": xt.ravel().tolist(),
            "cases": cases,
            "fold_labels": fold_labels.tolist(),
            "folds": folds.tolist(),
        },
    )


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    classification()
    ap_cases()
    miou_cases()
    logistic_cases()
    svm_cases()
