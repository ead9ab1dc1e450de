"""Scoring a submission against a competition's hidden solution, with the competition's metric.

The solution is a CSV whose first column is the row id, whose `Usage` column (Public / Private) says which
leaderboard a row counts for, and whose other columns hold the truth (iMet's `attribute_ids`, space-separated
labels; a class; a number; a 0/1 target per column). Without a Usage column every row counts for the public
score and the private score stays empty; with one, every row must say Public, Private or Ignored (a row the
submission must hold but no leaderboard scores, as in Kaggle's own solution files). A submission must have the
same columns (any order, extra columns refused), exactly the solution's ids, once each, and cells the metric can
read. Anything else is malformed: `SubmissionError` with a message the submission list shows, as Kaggle's does.

METRICS are the common Kaggle ones; a competition records its metric's name (default `f2-samples`, iMet's).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

BETA = 2.0
MAX_BYTES = 512 * 1024 * 1024
DEFAULT_METRIC = "f2-samples"


class SubmissionError(Exception):
    """The submission cannot be scored; the message says why."""


@dataclass
class Score:
    public: float | None
    private: float | None
    rows: int

    @staticmethod
    def text(value: float | None) -> str | None:
        return None if value is None else f"{value:.5f}"


def fbeta(truth: set[str], pred: set[str], beta: float = BETA) -> float:
    """F-beta of one row; an empty truth and an empty prediction agree perfectly."""
    hits = len(truth & pred)
    return _fbeta_counts(hits, len(pred) - hits, len(truth) - hits, beta)


def fbeta_labels(truths: list[frozenset[str]], preds: list[frozenset[str]], beta: float, average: str) -> float:
    """F-beta over label sets, `macro`: per label, averaged over the labels any truth or prediction holds (a label
    only predicted scores 0), or `micro`: from every label's counts together. Nothing anywhere scores 1."""
    counts: dict[str, list[int]] = {}  # label -> [tp, fp, fn]
    for truth, pred in zip(truths, preds):
        for label in truth | pred:
            c = counts.setdefault(label, [0, 0, 0])
            c[0 if label in truth and label in pred else 1 if label in pred else 2] += 1
    if average == "micro":
        return _fbeta_counts(*(sum(c[i] for c in counts.values()) for i in range(3)), beta)
    return _mean(_fbeta_counts(*c, beta) for c in counts.values()) if counts else 1.0


def _fbeta_counts(tp: int, fp: int, fn: int, beta: float) -> float:
    b2 = beta * beta
    return (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp) if tp + fp + fn else 1.0


def _number(cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise ValueError("not a number") from None
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _binary(cell: str) -> float:
    value = _number(cell)
    if value not in (0.0, 1.0):
        raise ValueError("a binary target must be 0 or 1")
    return value


def auc(truth: list[float], scores: list[float]) -> float:
    """ROC AUC as the Mann-Whitney statistic, ties given their mean rank; needs both classes in truth."""
    order = sorted(range(len(scores)), key=scores.__getitem__)
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    positives = sum(truth)
    negatives = len(truth) - positives
    rank_sum = sum(r for r, t in zip(ranks, truth) if t == 1.0)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def _columns(truths: list[tuple], preds: list[tuple]) -> list[tuple[list, list]]:
    return [([t[c] for t in truths], [p[c] for p in preds]) for c in range(len(truths[0]))]


def _cells(truths: list[tuple], preds: list[tuple]) -> list[tuple[Any, Any]]:
    return [(t, p) for tr, pr in zip(truths, preds) for t, p in zip(tr, pr)]


def _logloss(truth: list[float], probs: list[float]) -> float:
    clipped = [min(max(p, 1e-15), 1 - 1e-15) for p in probs]  # Kaggle's clip: a hard 0 or 1 is not infinite
    return -_mean(t * math.log(p) + (1 - t) * math.log(1 - p) for t, p in zip(truth, clipped))


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


@dataclass(frozen=True)
class Metric:
    title: str                  # what ListCompetitions' evaluationMetric says
    higher_is_better: bool
    truth: Callable[[str], Any]  # reads one solution cell (ValueError: the solution is refused)
    pred: Callable[[str], Any]   # reads one submission cell (ValueError: the submission is refused)
    score: Callable[[list[tuple], list[tuple]], float]  # truth rows, predicted rows: tuples over target columns
    one_column: bool = False
    both_classes: bool = False   # every scored group needs positives and negatives in each column (AUC)


def _labels(cell: str) -> frozenset[str]:
    return frozenset(cell.split())


def _rmse(truths: list[tuple], preds: list[tuple]) -> float:
    return math.sqrt(_mean((a - b) ** 2 for a, b in _cells(truths, preds)))


METRICS: dict[str, Metric] = {
    "f2-samples": Metric("F2 (mean over rows)", True, _labels, _labels,
                         lambda t, p: _mean(fbeta(a[0], b[0]) for a, b in zip(t, p)), one_column=True),
    "f1-samples": Metric("F1 (mean over rows)", True, _labels, _labels,
                         lambda t, p: _mean(fbeta(a[0], b[0], beta=1.0) for a, b in zip(t, p)), one_column=True),
    "f1-macro": Metric("F1 (macro: mean over labels)", True, _labels, _labels,
                       lambda t, p: fbeta_labels([a[0] for a in t], [b[0] for b in p], 1.0, "macro"), one_column=True),
    "f1-micro": Metric("F1 (micro: over every label)", True, _labels, _labels,
                       lambda t, p: fbeta_labels([a[0] for a in t], [b[0] for b in p], 1.0, "micro"), one_column=True),
    "accuracy": Metric("Accuracy", True, str.strip, str.strip, lambda t, p: _mean(a == b for a, b in _cells(t, p))),
    "rmse": Metric("RMSE", False, _number, _number, _rmse),
    "mae": Metric("MAE", False, _number, _number, lambda t, p: _mean(abs(a - b) for a, b in _cells(t, p))),
    "auc": Metric("AUC (mean over columns)", True, _binary, _number,
                  lambda t, p: _mean(auc(a, b) for a, b in _columns(t, p)), both_classes=True),
    "logloss": Metric("Log loss (mean over columns)", False, _binary, _number,
                      lambda t, p: _mean(_logloss(a, b) for a, b in _columns(t, p))),
}


def metric(name: str | None) -> Metric:
    try:
        return METRICS[name or DEFAULT_METRIC]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}: use one of {', '.join(METRICS)}") from None


def _read_csv(text: str, what: str) -> tuple[list[str], list[list[str]]]:
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise SubmissionError(f"{what} is not a valid CSV file: {exc}") from None
    rows = [r for r in rows if r]
    if not rows:
        raise SubmissionError(f"{what} is empty")
    header = [h.strip() for h in rows[0]]
    return header, rows[1:]


def _decode(data: bytes, what: str) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SubmissionError(f"{what} is not UTF-8 text (a CSV file is expected)") from None


@dataclass
class Solution:
    id_column: str
    columns: list[str]                   # the target columns, in the solution's order
    rows: dict[str, tuple[tuple, str]]   # id -> (truth per column, usage: Public, Private, Ignored or '')


def load_solution(path: Path, metric_name: str | None = None) -> Solution:
    """The solution, each cell read as `metric_name` reads a truth; ValueError says what is wrong with it."""
    name = metric_name or DEFAULT_METRIC
    scorer = metric(name)
    header, rows = _read_csv(_decode(Path(path).read_bytes(), "the solution file"), "the solution file")
    usage_col = next((i for i, h in enumerate(header) if h.lower() == "usage"), None)
    targets = [i for i in range(1, len(header)) if i != usage_col]
    if not targets or (scorer.one_column and len(targets) != 1):
        need = "one label column" if scorer.one_column else "target columns"
        raise ValueError(f"{path}: the solution needs an id column, {need} and optionally Usage; got {header}")
    solution: dict[str, tuple[tuple, str]] = {}
    for line, row in enumerate(rows, start=2):
        usage = row[usage_col].strip().capitalize() if usage_col is not None and usage_col < len(row) else ""
        if usage_col is not None and usage not in ("Public", "Private", "Ignored"):
            raise ValueError(f"line {line}: Usage is {usage or 'empty'!r}; each row's Usage must be Public, Private "
                             "or Ignored")
        truth = []
        for i in targets:
            cell = row[i] if i < len(row) else ""
            try:
                truth.append(scorer.truth(cell))
            except ValueError as exc:
                raise ValueError(f"line {line}: {header[i]} {cell!r}: {exc} (for {name})") from None
        solution[row[0].strip()] = (tuple(truth), usage)
    if scorer.both_classes:
        for usage in {u or "Public" for _, u in solution.values()} - {"Ignored"}:
            group = [t for t, u in solution.values() if (u or "Public") == usage]
            for c, column in enumerate(header[i] for i in targets):
                if len({t[c] for t in group}) < 2:
                    raise ValueError(f"column {column}: the {usage} rows hold one class only; {name} needs "
                                     "both 0 and 1 in each leaderboard's rows")
    return Solution(header[0], [header[i] for i in targets], solution)


def score_submission(submission: bytes, solution_path: Path, metric_name: str | None = None) -> Score:
    if len(submission) > MAX_BYTES:
        raise SubmissionError("the submission file is too large")
    scorer, solution = metric(metric_name), load_solution(solution_path, metric_name)
    columns = [solution.id_column, *solution.columns]
    header, rows = _read_csv(_decode(submission, "the submission"), "the submission")
    if sorted(header) != sorted(columns):
        raise SubmissionError(f"the submission must have exactly the columns {','.join(columns)} "
                              f"(got {','.join(header)})")
    id_at, value_at = header.index(solution.id_column), [header.index(c) for c in solution.columns]
    seen: dict[str, tuple] = {}
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise SubmissionError(f"line {line}: expected {len(header)} values, got {len(row)}")
        row_id = row[id_at].strip()
        if row_id in seen:
            raise SubmissionError(f"line {line}: id {row_id!r} appears twice")
        if row_id not in solution.rows:
            raise SubmissionError(f"line {line}: unexpected id {row_id!r} (not in the test set)")
        values = []
        for i in value_at:
            try:
                values.append(scorer.pred(row[i]))
            except ValueError as exc:
                raise SubmissionError(f"line {line}: {header[i]} {row[i]!r}: {exc}") from None
        seen[row_id] = tuple(values)
    missing = [i for i in solution.rows if i not in seen]
    if missing:
        raise SubmissionError(f"the submission is missing {len(missing)} of {len(solution.rows)} rows "
                              f"(first missing id: {missing[0]!r})")
    groups: dict[str, tuple[list, list]] = {"Public": ([], []), "Private": ([], [])}
    for row_id, (truth, usage) in solution.rows.items():
        board = groups.get(usage or "Public")  # none for Ignored
        if board is not None:
            board[0].append(truth)
            board[1].append(seen[row_id])

    def scored(truths: list[tuple], preds: list[tuple]) -> float | None:
        return scorer.score(truths, preds) if truths else None

    return Score(public=scored(*groups["Public"]), private=scored(*groups["Private"]), rows=len(solution.rows))
