"""Blending several models' probabilities (rows x labels each) into one matrix.

Methods (`kit.blend.method`):
  mean      the plain mean of the members' probabilities
  weighted  a weighted mean; weights given in the config or searched on OOF predictions
  rank      a (weighted) mean of per-label ranks scaled to [0, 1]: members whose probabilities live on
            different scales (another loss, temperature) count alike. Ranks are taken within the matrix
            blended, so OOF and test rank scales agree only when their label frequencies do.

`search_weights` looks for the weights (non-negative, summing to 1) that maximise the OOF F2 at the best
global threshold: from equal weights it moves `step` of weight between two members while that helps,
then halves the step, down to `min_step`. `search_blend` tries every method (mean, weighted, rank) that
way and keeps the best; ties go to the simpler method (in METHODS order).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .thresholds import best_global

METHODS = ("mean", "weighted", "rank")


def rank_scale(probs: np.ndarray) -> np.ndarray:
    """Per-column average ranks mapped to [0, 1] (ties share their mean rank; one row gives 0.5)."""
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    if n <= 1:
        return np.full(probs.shape, 0.5)
    order = np.argsort(probs, axis=0, kind="stable")
    ranks = np.empty(probs.shape)
    np.put_along_axis(ranks, order, np.arange(n, dtype=np.float64)[:, None], axis=0)
    for j in range(probs.shape[1]):  # ties: the mean of their ranks
        values, inverse, counts = np.unique(probs[:, j], return_inverse=True, return_counts=True)
        if len(values) < n:
            ranks[:, j] = (np.bincount(inverse, weights=ranks[:, j]) / counts)[inverse]
    return ranks / (n - 1)


def blend(members: Sequence[np.ndarray], method: str = "mean", weights: Sequence[float] | None = None) -> np.ndarray:
    """One probability matrix from the members' (same shape) matrices."""
    if method not in METHODS:
        raise ValueError(f"kit.blend.method must be one of {METHODS}, got {method!r}")
    if not members:
        raise ValueError("nothing to blend: no members")
    shapes = {np.shape(m) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"blend members differ in shape: {sorted(shapes)}")
    w = _weights(len(members), None if method == "mean" else weights)
    stack = np.stack([rank_scale(m) if method == "rank" else np.asarray(m, dtype=np.float64) for m in members])
    return np.tensordot(w, stack, axes=1).astype(np.float32)


def search_weights(members: Sequence[np.ndarray], targets: np.ndarray, *, method: str = "weighted",
                   step: float = 0.1, min_step: float = 0.0125) -> tuple[np.ndarray, float]:
    """Weights for `blend(members, method, weights)` that maximise the OOF F2; returns (weights, F2)."""
    if method == "rank":  # rank once, then blend the ranks linearly
        members, method = [rank_scale(m) for m in members], "weighted"
    w = _weights(len(members), None)

    def value(weights: np.ndarray) -> float:
        return best_global(blend(members, method, weights), targets)[1]

    best = value(w)
    while step >= min_step and len(members) > 1:
        moves = [(i, j) for i in range(len(w)) for j in range(len(w)) if i != j and w[j] >= step - 1e-12]
        trial = None
        for i, j in moves:
            cand = w.copy()
            cand[i] += step
            cand[j] -= step
            f2 = value(np.clip(cand, 0, None))
            if f2 > best + 1e-9:
                best, trial = f2, np.clip(cand, 0, None)
        if trial is None:
            step /= 2
        else:
            w = trial
    return w / w.sum(), best


def search_blend(members: Sequence[np.ndarray], targets: np.ndarray,
                 methods: Sequence[str] = METHODS) -> tuple[str, list[float], dict[str, dict]]:
    """(method, weights, every method's {"weights", "f2"}) of the best blend of `members` on OOF targets."""
    tried: dict[str, dict] = {}
    for method in methods:
        if method == "mean" or len(members) == 1:
            weights = _weights(len(members), None)
            f2 = best_global(blend(members, "mean" if method == "mean" else method, weights), targets)[1]
        else:
            weights, f2 = search_weights(members, targets, method=method)
        tried[method] = {"weights": [round(float(w), 6) for w in weights], "f2": round(float(f2), 6)}
    best = max(tried, key=lambda m: tried[m]["f2"])  # the first of equals: the simpler method
    return best, tried[best]["weights"], tried


def _weights(n: int, weights: Sequence[float] | None) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"kit.blend.weights: expected {n} non-negative weights, not all zero (got {list(weights)})")
    return w / w.sum()
