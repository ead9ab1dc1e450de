"""Scoring a submission against a competition's hidden solution: F-beta (beta 2) per row, mean over rows.

The solution is a CSV whose first column is the row id, whose `Usage` column (Public / Private) says which
leaderboard a row counts for, and whose one other column holds the true labels, space-separated (iMet's
`attribute_ids`). Without a Usage column every row counts for the public score and the private score stays
empty; with one, every row must say Public, Private or Ignored (a row the submission must hold but no
leaderboard scores, as in Kaggle's own solution files). A submission must have the same id and label columns (any order, extra columns refused),
exactly the solution's ids, once each. Anything else is malformed: `SubmissionError` with a message the
submission list shows, as Kaggle's does.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

BETA = 2.0
MAX_BYTES = 512 * 1024 * 1024


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
    if not truth and not pred:
        return 1.0
    hits = len(truth & pred)
    if hits == 0:
        return 0.0
    precision, recall = hits / len(pred), hits / len(truth)
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)


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


def load_solution(path: Path) -> tuple[str, str, dict[str, tuple[set[str], str]]]:
    """(id column, label column, id -> (labels, usage)); usage is 'Public', 'Private', 'Ignored' or ''."""
    header, rows = _read_csv(_decode(Path(path).read_bytes(), "the solution file"), "the solution file")
    usage_col = next((i for i, h in enumerate(header) if h.lower() == "usage"), None)
    targets = [i for i in range(1, len(header)) if i != usage_col]
    if len(targets) != 1:
        raise ValueError(f"{path}: the solution needs an id column, one label column and optionally Usage; "
                         f"got {header}")
    solution: dict[str, tuple[set[str], str]] = {}
    for line, row in enumerate(rows, start=2):
        usage = row[usage_col].strip().capitalize() if usage_col is not None and usage_col < len(row) else ""
        if usage_col is not None and usage not in ("Public", "Private", "Ignored"):
            raise ValueError(f"line {line}: Usage is {usage or 'empty'!r}; each row's Usage must be Public, Private "
                             "or Ignored")
        solution[row[0].strip()] = (set(row[targets[0]].split()) if targets[0] < len(row) else set(), usage)
    return header[0], header[targets[0]], solution


def score_submission(submission: bytes, solution_path: Path) -> Score:
    if len(submission) > MAX_BYTES:
        raise SubmissionError("the submission file is too large")
    id_col, label_col, solution = load_solution(solution_path)
    header, rows = _read_csv(_decode(submission, "the submission"), "the submission")
    if sorted(header) != sorted([id_col, label_col]):
        raise SubmissionError(f"the submission must have exactly the columns {id_col},{label_col} "
                              f"(got {','.join(header)})")
    id_at, label_at = header.index(id_col), header.index(label_col)
    seen: dict[str, set[str]] = {}
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise SubmissionError(f"line {line}: expected {len(header)} values, got {len(row)}")
        row_id = row[id_at].strip()
        if row_id in seen:
            raise SubmissionError(f"line {line}: id {row_id!r} appears twice")
        if row_id not in solution:
            raise SubmissionError(f"line {line}: unexpected id {row_id!r} (not in the test set)")
        seen[row_id] = set(row[label_at].split())
    missing = [i for i in solution if i not in seen]
    if missing:
        raise SubmissionError(f"the submission is missing {len(missing)} of {len(solution)} rows "
                              f"(first missing id: {missing[0]!r})")
    groups: dict[str, list[float]] = {"Public": [], "Private": []}
    for row_id, (truth, usage) in solution.items():
        value = fbeta(truth, seen[row_id])
        if usage in groups:
            groups[usage].append(value)
        elif not usage:
            groups["Public"].append(value)

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return Score(public=mean(groups["Public"]), private=mean(groups["Private"]), rows=len(solution))
