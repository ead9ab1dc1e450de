"""From probabilities to label sets: the decision rule, and its search on out-of-fold predictions.

A `Rule` turns a (rows, labels) probability matrix into a binary prediction:
  1. `one_of` groups (e.g. the demo's `count::*`, exactly one true per row): the most probable label of
     the group, whatever the thresholds say;
  2. every other ("free") label: probability >= its threshold, or, with `context` c > 0, >= c times the
     row's highest free probability (context-aware, as iMet 2019's 6th place: a row's own scale counts);
     with `top_k` > 0 instead, the k most probable free labels whatever their probabilities;
  3. `fallback` k: rows left with no free label get their k most probable free labels (top-k fallback);
  4. `min_labels`: rows left with fewer labels than that (one_of labels included) get the most probable
     free labels added until they have it (the "at least one label" fallback).

`search` scores candidate rules by the competition metric (kernel_src.metrics) on OOF predictions:
the fixed 0.5 threshold, the best global threshold on a grid, per-class thresholds by coordinate
ascent from there, per label group thresholds (`groups`, e.g. iMet's culture vs tag) by the same ascent
over groups, each with the min_labels and top-k fallbacks, context-aware (the best threshold and fraction
on two grids), and top-k; it keeps the best. Ties go to the simpler rule, and inside a run of equally
good thresholds the middle one is taken. `search_one_of` tries each exactly-one-per-group constraint with
and without, keeping it only where it scores better.

Under a macro or micro average (metrics.AVERAGE) the thresholds come from per-label count tables instead
(each label's true and false positives at every grid value): the global threshold, per-class thresholds and
per-group thresholds by coordinate ascent over those tables; the min_labels and top-k fallbacks keep their
family's thresholds, and every candidate is still scored exactly.

The searches are exact (tests compare them with brute force) and scale to iMet-sized data: the global curve
comes from per-row histograms over the grid, one class's curve from a cumulative sum over its sorted column
(the whole auto search: about 40 s for 2e4 rows x 1103 labels in two label groups on two busy CPU cores,
the context-aware rule's 10 fractions about a third of it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .metrics import AVERAGE, column_counts, fbeta_from_counts, fbeta_score, macro_mean, macro_parts

GRID = np.round(np.arange(0.01, 1.0, 0.01), 6)
ROW_CHUNK = 2048
METHODS = ("auto", "fixed", "global", "per_class", "per_group", "context", "top_k")
CONTEXT_GRID = np.round(np.arange(0.1, 1.0001, 0.1), 6)  # fractions of the row maximum tried


@dataclass
class Rule:
    thresholds: np.ndarray                            # (labels,) one per label; only free labels use it
    min_labels: int = 0
    top_k: int = 0
    one_of: tuple[tuple[int, ...], ...] = ()
    context: float = 0.0                              # free label on also at >= context x the row's max
    fallback: int = 0                                 # rows with no free label get their top `fallback`

    def __post_init__(self) -> None:
        self.thresholds = np.asarray(self.thresholds, dtype=np.float64).ravel()
        self.one_of = tuple(tuple(int(c) for c in cols) for cols in self.one_of)

    def free_columns(self) -> np.ndarray:
        fixed = {c for cols in self.one_of for c in cols}
        return np.asarray([c for c in range(len(self.thresholds)) if c not in fixed], dtype=np.int64)

    def apply(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != len(self.thresholds):
            raise ValueError(f"probabilities of shape {probs.shape} for a rule over {len(self.thresholds)} labels")
        rows = np.arange(len(probs))
        pred = np.zeros(probs.shape, dtype=bool)
        for cols in self.one_of:
            cols = np.asarray(cols)
            pred[rows, cols[probs[:, cols].argmax(axis=1)]] = True
        free = self.free_columns()
        if self.top_k > 0:
            pred[:, free] = _top_k(probs[:, free], self.top_k)
        else:
            pred[:, free] = probs[:, free] >= self.thresholds[free]
            if self.context > 0 and free.size:
                pred[:, free] |= probs[:, free] >= self.context * probs[:, free].max(axis=1, keepdims=True)
        if self.fallback > 0 and free.size:
            empty = np.flatnonzero(~pred[:, free].any(axis=1))
            pred[np.ix_(empty, free)] = _top_k(probs[np.ix_(empty, free)], self.fallback)
        need = self.min_labels - len(self.one_of)
        if need > 0 and free.size:
            short = np.flatnonzero(pred[:, free].sum(axis=1) < need)
            pred[np.ix_(short, free)] |= _top_k(probs[np.ix_(short, free)], need)
        return pred

    def to_dict(self) -> dict:
        return {"thresholds": [round(float(t), 6) for t in self.thresholds], "min_labels": self.min_labels,
                "top_k": self.top_k, "one_of": [list(cols) for cols in self.one_of],
                "context": round(float(self.context), 6), "fallback": self.fallback}

    @classmethod
    def from_dict(cls, data: dict) -> "Rule":
        return cls(np.asarray(data["thresholds"], dtype=np.float64), int(data.get("min_labels", 0)),
                   int(data.get("top_k", 0)), tuple(tuple(c) for c in data.get("one_of", ())),
                   float(data.get("context", 0.0)), int(data.get("fallback", 0)))

    @classmethod
    def constant(cls, n_labels: int, threshold: float = 0.5, **kwargs) -> "Rule":
        return cls(np.full(n_labels, float(threshold)), **kwargs)


@dataclass
class SearchResult:
    rule: Rule
    f2: float
    name: str                                        # which candidate won, e.g. "per_class+min1"
    candidates: dict[str, float] = field(default_factory=dict)
    constraints: dict[str, dict] = field(default_factory=dict)  # one_of group -> score with, without, kept

    def to_dict(self) -> dict:
        out = {"name": self.name, "f2": self.f2, "rule": self.rule.to_dict(),
               "candidates": {k: round(v, 6) for k, v in self.candidates.items()}}
        if self.constraints:
            out["constraints"] = self.constraints
        return out


def score(rule: Rule, probs: np.ndarray, targets: np.ndarray, average: str = AVERAGE) -> float:
    return fbeta_score(targets, rule.apply(probs), average=average)


def search(probs: np.ndarray, targets: np.ndarray, *, method: str = "auto", grid: np.ndarray = GRID,
           fixed: float = 0.5, min_labels: tuple[int, ...] = (0, 1), top_k: tuple[int, ...] = (1, 2, 3),
           one_of: tuple[tuple[int, ...], ...] = (), rounds: int = 3,
           groups: dict[str, list[int]] | None = None, average: str = AVERAGE) -> SearchResult:
    """The best rule on (probs, targets) among the candidates `method` allows (see the module docstring).
    groups: label group -> columns, for the per-group thresholds (tried when two or more hold free labels);
    average: how the metric averages F-beta (metrics.AVERAGE)."""
    if method not in METHODS:
        raise ValueError(f"threshold method must be one of {METHODS}, got {method!r}")
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets).astype(bool)
    if probs.shape != targets.shape or probs.ndim != 2:
        raise ValueError(f"probabilities {probs.shape} and targets {targets.shape} must be the same 2-d shape")
    grid = np.sort(np.asarray(grid, dtype=np.float64))
    n_labels = probs.shape[1]
    base = Rule.constant(n_labels, fixed, one_of=one_of)
    free = base.free_columns()
    p, y = probs[:, free], targets[:, free]
    mins = sorted({int(k) for k in min_labels} | {0})
    fallbacks = sorted({int(k) for k in top_k if 0 < k <= len(free)})
    column_groups = _free_groups(groups, free)
    thresholded = method in ("auto", "global", "per_class", "per_group")  # global: the others' start
    families: dict[str, np.ndarray] = {}  # method family -> its thresholds
    own: dict[str, np.ndarray] = {}       # candidate -> thresholds of its own, where its fallback moves them
    if average == "samples":
        fixed_counts = _fixed_counts(probs, targets, base)
        if thresholded:
            families, own = _row_families(p, y, fixed_counts, grid, base, method, mins, fallbacks, column_groups,
                                          rounds)
        curve = lambda q: _global_curve(q, y, fixed_counts, grid, 0)
    else:
        fixed_columns = np.setdiff1d(np.arange(n_labels), free)
        held = column_counts(targets[:, fixed_columns], base.apply(probs)[:, fixed_columns])
        if thresholded:
            families = _column_families(_column_tables(p, y, grid), held, grid, base, method, column_groups, rounds,
                                        average)
        curve = lambda q: _curve_with(held, _column_tables(q, y, grid), average)
    found: dict[str, tuple[str, Rule]] = {"fixed": ("fixed", base)}  # name -> (method family, rule)
    found.update(_family_rules(families, own, base, mins, fallbacks))
    if method in ("auto", "top_k"):
        for k in fallbacks:
            found[f"top{k}"] = ("top_k", Rule(base.thresholds, top_k=k, one_of=one_of))
    if method in ("auto", "context") and free.size:
        t, c = _context_search(p, grid, curve)
        found["context"] = ("context", Rule.constant(n_labels, t, one_of=one_of, context=c))
    # every candidate is scored exactly, for the record; the fixed rule wins only under "auto" or "fixed"
    scores = {name: score(rule, probs, targets, average) for name, (_, rule) in found.items()}
    allowed = [name for name, (family, _) in found.items() if method in ("auto", family)] or ["fixed"]
    best = max(allowed, key=lambda name: scores[name])  # the first of equals: the simpler rule
    return SearchResult(found[best][1], scores[best], best, scores)


def search_one_of(probs: np.ndarray, targets: np.ndarray, one_of: dict[str, tuple[int, ...]],
                  **kwargs) -> SearchResult:
    """`search` with each exactly-one-per-group constraint in `one_of` (group -> columns) tried with and
    without: from all of them, a group's constraint is dropped when the best rule scores better without it.
    The result's `constraints` says, per group, the score with and without and whether it was kept."""
    kept = list(one_of)
    best = search(probs, targets, one_of=tuple(tuple(one_of[g]) for g in kept), **kwargs)
    record: dict[str, dict] = {}
    for name in list(one_of):
        trial = [g for g in kept if g != name]
        without = search(probs, targets, one_of=tuple(tuple(one_of[g]) for g in trial), **kwargs)
        record[name] = {"with": round(best.f2, 6), "without": round(without.f2, 6)}
        if without.f2 > best.f2 + 1e-12:
            kept, best = trial, without
        record[name]["kept"] = name in kept
    best.constraints = record
    return best


def best_global(probs: np.ndarray, targets: np.ndarray, grid: np.ndarray = GRID,
                average: str = AVERAGE) -> tuple[float, float]:
    """(threshold, score) of the best single threshold for every label, no fallbacks: a quick yardstick."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets).astype(bool)
    grid = np.sort(np.asarray(grid, dtype=np.float64))
    if average == "samples":
        zero = np.zeros(len(probs))
        curve = _global_curve(probs, targets, (zero, zero, zero), grid, 0)
    else:
        none = np.zeros(0)
        curve = _curve_with((none, none, none), _column_tables(probs, targets, grid), average)
    g = _plateau_middle(curve)
    return float(grid[g]), float(curve[g])


def _family_rules(families: dict[str, np.ndarray], own: dict[str, np.ndarray], base: Rule, mins: list[int],
                  fallbacks: list[int]) -> dict[str, tuple[str, Rule]]:
    """Each family's thresholds with each at-least-k fallback, then with each top-k fallback for rows with no
    free label (in that order: ties go to the earlier, simpler rule)."""
    found = {}
    for family, thr in families.items():
        for k in mins:
            name = family if k == 0 else f"{family}+min{k}"
            found[name] = (family, Rule(own.get(name, thr), k, 0, base.one_of))
    for family, thr in families.items():
        for k in fallbacks:
            name = f"{family}+fb{k}"
            found[name] = (family, Rule(own.get(name, thr), fallback=k, one_of=base.one_of))
    return found


def _with_free(base: Rule, values: np.ndarray) -> np.ndarray:
    """`base`'s thresholds with its free labels' set to `values`."""
    thr = np.array(base.thresholds)
    thr[base.free_columns()] = values
    return thr


# ---- fast exact curves, per sample ---------------------------------------------------------------------

def _row_families(p: np.ndarray, y: np.ndarray, fixed_counts: tuple[np.ndarray, ...], grid: np.ndarray, base: Rule,
                  method: str, mins: list[int], fallbacks: list[int], column_groups: list[np.ndarray],
                  rounds: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(family -> thresholds, candidate -> its own thresholds) from the exact row curves: the global threshold is
    searched again with each fallback, since a fallback moves it; per class and per group start from it."""
    n_labels, fixed = len(base.thresholds), len(base.one_of)
    own = {}
    for k in mins:
        curve = _global_curve(p, y, fixed_counts, grid, max(0, k - fixed))
        own["global" if k == 0 else f"global+min{k}"] = np.full(n_labels, grid[_plateau_middle(curve)])
    for k in fallbacks:
        own[f"global+fb{k}"] = np.full(n_labels, grid[_plateau_middle(_global_curve(p, y, fixed_counts, grid, 0, k))])
    families = {"global": own["global"]}
    start = own["global"][base.free_columns()]
    if method in ("auto", "per_class"):
        families["per_class"] = _with_free(base, _per_class_ascent(p, y, fixed_counts, grid, start, rounds))
    if method in ("auto", "per_group") and len(column_groups) >= 2:
        families["per_group"] = _with_free(base, _per_group_ascent(p, y, fixed_counts, grid, start, column_groups,
                                                                   rounds))
    return families, own


def _fixed_counts(probs: np.ndarray, targets: np.ndarray, rule: Rule) -> tuple[np.ndarray, ...]:
    """Per-row tp, fp, fn of the one_of columns, which no threshold changes."""
    fixed = np.setdiff1d(np.arange(probs.shape[1]), rule.free_columns())
    if fixed.size == 0:
        zero = np.zeros(len(probs))
        return zero, zero, zero
    pred = rule.apply(probs)[:, fixed]
    t = targets[:, fixed]
    tp = (pred & t).sum(axis=1, dtype=np.float64)
    return tp, pred.sum(axis=1) - tp, t.sum(axis=1) - tp


def _global_curve(p: np.ndarray, y: np.ndarray, fixed_counts: tuple[np.ndarray, ...], grid: np.ndarray,
                  need: int, fallback: int = 0) -> np.ndarray:
    """Mean per-sample F-beta at each grid threshold applied to every free column, with the at-least-`need` fallback (or,
    with `fallback` k, the top-k one for rows with no free label)."""
    n_grid = len(grid)
    total = np.zeros(n_grid)
    for lo in range(0, len(p), ROW_CHUNK):
        pc, yc = p[lo:lo + ROW_CHUNK], y[lo:lo + ROW_CHUNK]
        n = len(pc)
        # bin b = number of grid values <= p, so p >= grid[g] exactly when b > g
        bins = np.searchsorted(grid, pc, side="right") + (n_grid + 1) * np.arange(n)[:, None]
        hist_all = np.bincount(bins.ravel(), minlength=n * (n_grid + 1)).reshape(n, n_grid + 1)
        hist_pos = np.bincount(bins[yc], minlength=n * (n_grid + 1)).reshape(n, n_grid + 1)
        above_all = np.cumsum(hist_all[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (n, grid): count of p >= grid[g]
        tp = np.cumsum(hist_pos[:, ::-1], axis=1)[:, ::-1][:, 1:].astype(np.float64)
        fp = above_all - tp
        if need > 0 or fallback > 0:
            top = _top_k(pc, fallback or need)
            top_tp = (top & yc).sum(axis=1, dtype=np.float64)[:, None]
            short = above_all == 0 if fallback else above_all < need
            tp = np.where(short, top_tp, tp)
            fp = np.where(short, top.sum(axis=1)[:, None] - top_tp, fp)
        fn = yc.sum(axis=1)[:, None] - tp
        ftp, ffp, ffn = (c[lo:lo + ROW_CHUNK, None] for c in fixed_counts)
        total += fbeta_from_counts(tp + ftp, fp + ffp, fn + ffn).sum(axis=0)
    return total / max(len(p), 1)


def _per_class_ascent(p: np.ndarray, y: np.ndarray, fixed_counts: tuple[np.ndarray, ...], grid: np.ndarray,
                      start: np.ndarray, rounds: int) -> np.ndarray:
    """Coordinate ascent: each class's threshold set to the grid value best for the whole metric, the
    other classes held; repeated until nothing moves (or `rounds` passes)."""
    thr = np.array(start, dtype=np.float64)
    pred = p >= thr
    tp = fixed_counts[0] + (pred & y).sum(axis=1)
    fp = fixed_counts[1] + (pred & ~y).sum(axis=1)
    fn = fixed_counts[2] + (~pred & y).sum(axis=1)
    for _ in range(rounds):
        moved = False
        for j in range(p.shape[1]):
            yj, on = y[:, j], pred[:, j]
            tp0, fp0, fn0 = tp - (on & yj), fp - (on & ~yj), fn - (~on & yj)
            f_off = fbeta_from_counts(tp0, fp0, fn0 + yj)
            f_on = fbeta_from_counts(tp0 + yj, fp0 + ~yj, fn0)
            order = np.argsort(-p[:, j], kind="stable")
            gain = np.concatenate([[0.0], np.cumsum((f_on - f_off)[order])])
            n_on = len(p) - np.searchsorted(p[order[::-1], j], grid, side="left")  # rows with p >= each t
            t = grid[_plateau_middle(gain[n_on])]
            if t != thr[j]:
                moved = True
                thr[j] = t
                pred[:, j] = p[:, j] >= t
                on = pred[:, j]
                tp, fp, fn = tp0 + (on & yj), fp0 + (on & ~yj), fn0 + (~on & yj)
        if not moved:
            break
    return thr


def _free_groups(groups: dict[str, list[int]] | None, free: np.ndarray) -> list[np.ndarray]:
    """Each label group's free columns, as positions among the free columns (empty groups left out)."""
    position = {int(c): i for i, c in enumerate(free)}
    found = [np.asarray([position[c] for c in cols if c in position], dtype=np.int64)
             for cols in (groups or {}).values()]
    return [g for g in found if g.size]


def _per_group_ascent(p: np.ndarray, y: np.ndarray, fixed_counts: tuple[np.ndarray, ...], grid: np.ndarray,
                      start: np.ndarray, column_groups: list[np.ndarray], rounds: int) -> np.ndarray:
    """Coordinate ascent over label groups: one threshold per group, each set to the grid value best for the
    whole metric (its exact curve: the other columns' counts held fixed), until nothing moves."""
    thr = np.array(start, dtype=np.float64)
    for _ in range(rounds):
        moved = False
        for cols in column_groups:
            rest = np.setdiff1d(np.arange(p.shape[1]), cols)
            on, yr = p[:, rest] >= thr[rest], y[:, rest]
            tp = (on & yr).sum(axis=1, dtype=np.float64)
            held = (fixed_counts[0] + tp, fixed_counts[1] + on.sum(axis=1) - tp, fixed_counts[2] + yr.sum(axis=1) - tp)
            t = grid[_plateau_middle(_global_curve(p[:, cols], y[:, cols], held, grid, 0))]
            if not np.all(thr[cols] == t):
                moved = True
                thr[cols] = t
        if not moved:
            break
    return thr


def _context_search(p: np.ndarray, grid: np.ndarray, global_curve) -> tuple[float, float]:
    """(threshold, fraction) of the best context-aware rule: for each fraction c, the labels at >= c x the
    row's max are on at every threshold (their probability lifted above the grid), so one exact global
    curve per fraction (`global_curve(probabilities)`) scores every threshold."""
    top = p.max(axis=1, keepdims=True)
    best = (-1.0, float(grid[-1]), float(CONTEXT_GRID[-1]))
    for c in CONTEXT_GRID:
        curve = global_curve(np.where(p >= c * top, 2.0, p))
        g = _plateau_middle(curve)
        if curve[g] > best[0] + 1e-12:
            best = (float(curve[g]), float(grid[g]), float(c))
    return best[1], best[2]


# ---- per-label count tables, for a macro or micro average ----------------------------------------------

def _column_tables(p: np.ndarray, y: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each label's tp, fp and fn with its threshold at each grid value: three (labels, grid) arrays, from
    per-label histograms over the grid (a threshold moves only its own label's counts)."""
    n_grid, n_labels = len(grid), p.shape[1]
    size = n_labels * (n_grid + 1)
    hist_all, hist_pos = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
    offset = (n_grid + 1) * np.arange(n_labels)
    for lo in range(0, len(p), ROW_CHUNK):
        bins = np.searchsorted(grid, p[lo:lo + ROW_CHUNK], side="right") + offset  # p >= grid[g] when bin > g
        hist_all += np.bincount(bins.ravel(), minlength=size)
        hist_pos += np.bincount(bins[y[lo:lo + ROW_CHUNK]], minlength=size)
    above = np.cumsum(hist_all.reshape(n_labels, n_grid + 1)[:, ::-1], axis=1)[:, ::-1][:, 1:]
    tp = np.cumsum(hist_pos.reshape(n_labels, n_grid + 1)[:, ::-1], axis=1)[:, ::-1][:, 1:]
    return tp.astype(np.float64), (above - tp).astype(np.float64), (y.sum(axis=0)[:, None] - tp).astype(np.float64)


def _curve_with(held: tuple[np.ndarray, ...], moving: tuple[np.ndarray, ...], average: str) -> np.ndarray:
    """The score at each grid value: `held` the (tp, fp, fn) of the labels no grid value moves, (labels,) each;
    `moving` those of the labels whose threshold is each grid value in turn, (labels, grid) each."""
    if average == "micro":
        return fbeta_from_counts(*(h.sum() + m.sum(axis=0) for h, m in zip(held, moving)))
    (total_held, n_held), (total, n) = macro_parts(*held), macro_parts(*moving)
    return macro_mean(total_held + total, n_held + n)


def _column_ascent(tables: tuple[np.ndarray, ...], held: tuple[np.ndarray, ...], groups: list[np.ndarray],
                   start: np.ndarray, rounds: int, average: str) -> np.ndarray:
    """Coordinate ascent on the count tables over groups of labels, one grid index per group: each set to the
    best for the whole score, the other labels held at theirs, until nothing moves (or `rounds` passes)."""
    at = np.array(start, dtype=np.int64)
    labels = np.arange(len(at))
    for _ in range(rounds):
        moved = False
        for cols in groups:
            rest = np.setdiff1d(labels, cols)
            others = tuple(np.concatenate([h, t[rest, at[rest]]]) for h, t in zip(held, tables))
            g = _plateau_middle(_curve_with(others, tuple(t[cols] for t in tables), average))
            if np.any(at[cols] != g):
                moved, at[cols] = True, g
        if not moved:
            break
    return at


def _column_families(tables: tuple[np.ndarray, ...], held: tuple[np.ndarray, ...], grid: np.ndarray, base: Rule,
                     method: str, column_groups: list[np.ndarray], rounds: int, average: str) -> dict[str, np.ndarray]:
    """Family -> thresholds from the count tables: one global grid value, then per class and per group from it."""
    n_free = tables[0].shape[0]
    found = {"global": _column_ascent(tables, held, [np.arange(n_free)], np.zeros(n_free), 1, average)}
    if method in ("auto", "per_class"):
        singles = [np.array([j]) for j in range(n_free)]
        found["per_class"] = _column_ascent(tables, held, singles, found["global"], rounds, average)
    if method in ("auto", "per_group") and len(column_groups) >= 2:
        found["per_group"] = _column_ascent(tables, held, column_groups, found["global"], rounds, average)
    return {family: _with_free(base, grid[at]) for family, at in found.items()}


def _plateau_middle(curve: np.ndarray, tol: float = 1e-12) -> int:
    """Index of the middle of the run of best values that holds the first best value."""
    best = int(np.argmax(curve))
    near = curve >= curve[best] - tol
    hi = best
    while hi + 1 < len(curve) and near[hi + 1]:
        hi += 1
    return (best + hi) // 2


def _top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """Mask of each row's k most probable columns (all of them when there are no more than k)."""
    mask = np.zeros(probs.shape, dtype=bool)
    if probs.size == 0 or k <= 0:
        return mask
    k = min(k, probs.shape[1])
    idx = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    np.put_along_axis(mask, idx, True, axis=1)
    return mask


# ---- honest CV: the threshold scored on rows it was not searched on ------------------------------------

def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic split of n rows (a function of seed alone) into two halves A and B."""
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def cross_fit_global(probs: np.ndarray, targets: np.ndarray, seed: int, grid: np.ndarray = GRID,
                     average: str = AVERAGE) -> dict:
    """The global threshold cross-fitted over the two halves: searched on B and scored on A (`f2_a`), searched on
    A and scored on B (`f2_b`); `f2` is their row-weighted mean (out of sample for the threshold), and
    `f2_in_sample` the usual best threshold searched and scored on every row. `f2_a_alone`: searched and
    scored on A, the only score that sees none of B's labels (what may choose an epoch when B is recorded)."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets).astype(bool)
    a, b = halves(len(probs), seed)
    threshold, in_sample = best_global(probs, targets, grid, average)
    if len(a) == 0 or len(b) == 0:
        return {"f2": in_sample, "f2_a": in_sample, "f2_b": in_sample, "f2_in_sample": in_sample,
                "f2_a_alone": in_sample, "threshold": threshold}
    t_b, _ = best_global(probs[b], targets[b], grid, average)
    t_a, f2_a_alone = best_global(probs[a], targets[a], grid, average)
    f2_a = fbeta_score(targets[a], probs[a] >= t_b, average=average)
    f2_b = fbeta_score(targets[b], probs[b] >= t_a, average=average)
    return {"f2": (f2_a * len(a) + f2_b * len(b)) / len(probs), "f2_a": f2_a, "f2_b": f2_b,
            "f2_in_sample": in_sample, "f2_a_alone": f2_a_alone, "threshold": threshold}


def cross_fit(search_fn, n: int, k: int, seed: int) -> list:
    """K deterministic row splits: `search_fn(train_rows)` returns a function that predicts rows; each split's
    held-out rows are predicted by what was searched on the others. Returns a list of (held-out rows, their
    prediction)."""
    fold = np.random.default_rng([seed, 0xC0FF]).permutation(n) % k
    parts = []
    for f in range(k):
        held = np.flatnonzero(fold == f)
        if held.size:
            parts.append((held, search_fn(np.flatnonzero(fold != f))(held)))
    return parts
