"""The competition metric and its parts, on binary label matrices (rows: samples, columns: labels).

F-beta (BETA, 2 as in iMet Collection 2019) averaged as AVERAGE says: the threshold search, the blend
weights, the best epoch and every CV maximise it.
  samples  per row, averaged over rows (iMet, Inclusive Images, Planet)
  macro    per label over its column, averaged over labels (Human Protein Atlas 2018's macro F1)
  micro    once, from the tp, fp and fn of every cell
For one row (or column, or the whole matrix), with tp, fp, fn its true positives, false positives and false
negatives:

    F = (1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp)

which equals (1 + b^2) P R / (b^2 P + R) whenever P and R are defined. A row with no true and no
predicted labels scores EMPTY_ROW_SCORE (1.0: nothing to find and nothing claimed is a perfect answer);
any other row with tp = 0 scores 0. The same rule holds for each label group and for precision and
recall: an empty-and-empty row has precision = recall = 1; a row with no predictions has precision 0
and a row with no true labels has recall 0 (unless both are empty). This is the local Kaggle's own
rule (packager/localkaggle/scoring.py, `fbeta`); tests/test_kit_metrics.py checks that the two agree.

Macro leaves out a label with no true and no predicted rows, as a metric that builds its label set from the
truth and the submission does (scikit-learn's f1_score on MultiLabelBinarizer-encoded label strings; the local
Kaggle's `f1-macro`); a label that is predicted but never true scores 0. A matrix with nothing to find and
nothing claimed scores EMPTY_ROW_SCORE under micro and macro too.

Label groups (data.Labels.groups: iMet's `culture::`/`tag::`, the demo's `digit::`/`count::`) are column
index lists; `report` scores each group's columns alone with the same rules.
"""
from __future__ import annotations

import numpy as np

BETA = 2.0  # the competition's beta (iMet, Inclusive Images: 2); an F1 competition sets 1.0 here
AVERAGE = "samples"  # or "macro" (per label, as HPA 2018) or "micro": how the competition averages F-beta
AVERAGES = ("samples", "macro", "micro")
if AVERAGE not in AVERAGES:
    raise ValueError(f"kernel_src/metrics.py: AVERAGE is {AVERAGE!r}; set one of {', '.join(AVERAGES)}")
# how logs name the score (the JSON keys say f2 whatever the metric, so older runs still read)
NAME = f"F{BETA:g}" if AVERAGE == "samples" else f"{AVERAGE} F{BETA:g}"
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


def column_counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label (column) true positives, false positives and false negatives, as float arrays."""
    return counts(_binary(y_true).T, _binary(y_pred).T)


def fbeta_columns(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta: float = BETA,
                  average: str = AVERAGE) -> np.ndarray:
    """The macro or micro score from per-label counts with labels on axis 0 (any further axes: one score each,
    as the threshold search's curves need)."""
    tp, fp, fn = (np.asarray(c, dtype=np.float64) for c in (tp, fp, fn))
    if average == "micro":
        return fbeta_from_counts(tp.sum(axis=0), fp.sum(axis=0), fn.sum(axis=0), beta)
    if average != "macro":
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    return macro_mean(*macro_parts(tp, fp, fn, beta))


def macro_parts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta: float = BETA) -> tuple[np.ndarray, np.ndarray]:
    """(the sum of F-beta over the labels in the label set, how many they are), along axis 0: parts that add up
    across label subsets, as the threshold search's curves need."""
    scored = (tp + fp + fn) > 0  # a label with nothing true and nothing predicted is not in the label set
    return np.where(scored, fbeta_from_counts(tp, fp, fn, beta), 0.0).sum(axis=0), scored.sum(axis=0)


def macro_mean(total: np.ndarray, n: np.ndarray) -> np.ndarray:
    return np.where(n > 0, total / np.maximum(n, 1), EMPTY_ROW_SCORE)


def fbeta_score(y_true: np.ndarray, y_pred: np.ndarray, beta: float = BETA, average: str = AVERAGE) -> float:
    """The competition score (0.0 for no rows)."""
    if average == "samples":
        rows = fbeta_rows(y_true, y_pred, beta)
        return float(rows.mean()) if rows.size else 0.0
    tp, fp, fn = column_counts(y_true, y_pred)
    return float(fbeta_columns(tp, fp, fn, beta, average)) if len(np.asarray(y_true)) else 0.0


def precision_recall(y_true: np.ndarray, y_pred: np.ndarray, average: str = AVERAGE) -> tuple[float, float]:
    """Precision and recall averaged as the score is, with the empty-row (or empty-label) rule above."""
    tp, fp, fn = counts(y_true, y_pred) if average == "samples" else column_counts(y_true, y_pred)
    if average == "micro":
        tp, fp, fn = tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True)
    if tp.size == 0 or not len(np.asarray(y_true)):
        return 0.0, 0.0
    empty = (tp + fp + fn) == 0
    if average == "macro" and not empty.all():
        tp, fp, fn, empty = tp[~empty], fp[~empty], fn[~empty], empty[~empty]
    precision = np.where(empty, EMPTY_ROW_SCORE, tp / np.maximum(tp + fp, 1))
    recall = np.where(empty, EMPTY_ROW_SCORE, tp / np.maximum(tp + fn, 1))
    return float(precision.mean()), float(recall.mean())


def report(y_true: np.ndarray, y_pred: np.ndarray, groups: dict[str, list[int]] | None = None) -> dict:
    """The score (key f2), precision and recall overall and (when `groups` is given) per group, as plain floats."""
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
