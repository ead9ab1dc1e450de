"""The competition metric and its parts, on binary label matrices (rows: samples, columns: labels).

Per-sample F-beta (BETA, 2 as in iMet Collection 2019), averaged over rows: the threshold search, the blend
weights, the best epoch and every CV maximise it. For one row, with tp, fp, fn
its true positives, false positives and false negatives:

    F = (1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp)

which equals (1 + b^2) P R / (b^2 P + R) whenever P and R are defined. A row with no true and no
predicted labels scores EMPTY_ROW_SCORE (1.0: nothing to find and nothing claimed is a perfect answer);
any other row with tp = 0 scores 0. The same rule holds for each label group and for precision and
recall: an empty-and-empty row has precision = recall = 1; a row with no predictions has precision 0
and a row with no true labels has recall 0 (unless both are empty). This is the local Kaggle's own
rule (packager/localkaggle/scoring.py, `fbeta`); tests/test_kit_metrics.py checks that the two agree.

Label groups (data.Labels.groups: iMet's `culture::`/`tag::`, the demo's `digit::`/`count::`) are column
index lists; `report` scores each group's columns alone with the same rules.
"""
from __future__ import annotations

import numpy as np

BETA = 2.0  # the competition's beta (iMet, Inclusive Images: 2); an F1 competition sets 1.0 here
NAME = f"F{BETA:g}"  # how logs name the score; the JSON keys say f2 whatever the beta, so older runs still read
EMPTY_ROW_SCORE = 1.0


def counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row true positives, false positives and false negatives, as float arrays."""
    t, p = _binary(y_true), _binary(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"true and predicted labels differ in shape: {t.shape} vs {p.shape}")
    tp = (t & p).sum(axis=1, dtype=np.float64)
    return tp, p.sum(axis=1, dtype=np.float64) - tp, t.sum(axis=1, dtype=np.float64) - tp


def fbeta_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta: float = BETA) -> np.ndarray:
    """Per-row F-beta from count arrays of any (broadcastable) shape; empty rows score EMPTY_ROW_SCORE."""
    b2 = beta * beta
    num = (1 + b2) * tp
    den = num + b2 * fn + fp
    return np.where(den > 0, num / np.where(den > 0, den, 1), EMPTY_ROW_SCORE)


def fbeta_rows(y_true: np.ndarray, y_pred: np.ndarray, beta: float = BETA) -> np.ndarray:
    return fbeta_from_counts(*counts(y_true, y_pred), beta=beta)


def fbeta_score(y_true: np.ndarray, y_pred: np.ndarray, beta: float = BETA) -> float:
    """The competition score: per-sample F-beta averaged over rows (0.0 for no rows)."""
    rows = fbeta_rows(y_true, y_pred, beta)
    return float(rows.mean()) if rows.size else 0.0


def precision_recall(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Per-sample precision and recall averaged over rows, with the empty-row rule above."""
    tp, fp, fn = counts(y_true, y_pred)
    if tp.size == 0:
        return 0.0, 0.0
    empty = (tp + fp + fn) == 0
    precision = np.where(empty, EMPTY_ROW_SCORE, tp / np.maximum(tp + fp, 1))
    recall = np.where(empty, EMPTY_ROW_SCORE, tp / np.maximum(tp + fn, 1))
    return float(precision.mean()), float(recall.mean())


def report(y_true: np.ndarray, y_pred: np.ndarray, groups: dict[str, list[int]] | None = None) -> dict:
    """F2, precision and recall overall and (when `groups` is given) per group, as plain floats."""
    precision, recall = precision_recall(y_true, y_pred)
    out = {"f2": fbeta_score(y_true, y_pred), "precision": precision, "recall": recall}
    if groups:
        out["groups"] = {name: report(np.asarray(y_true)[:, cols], np.asarray(y_pred)[:, cols])
                         for name, cols in groups.items()}
    return out


def _binary(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-d label matrix (rows, labels), got shape {a.shape}")
    return a.astype(bool, copy=False)
