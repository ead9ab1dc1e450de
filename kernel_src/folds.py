"""Multilabel-stratified k-fold: iterative stratification (Sechidis, Tsoumakas and Vlahavas, ECML 2011).

Rarest label first: its remaining samples go, one by one, to the fold that still wants that label most
(ties: the fold wanting the most samples, then a seeded random pick). Unlabelled samples fill the folds
that want the most samples. Deterministic by seed.

    fold_of = assign(targets, n_splits=5, seed=42)    # (N,) int: the validation fold of each sample
    train_idx, valid_idx = split(fold_of, fold=0)
"""
from __future__ import annotations

import numpy as np


def _pick(candidates: np.ndarray, rng: np.random.Generator) -> int:
    return int(candidates[0]) if len(candidates) == 1 else int(rng.choice(candidates))


def assign(targets: np.ndarray, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """The fold (0..n_splits-1) of every row of a (N, C) 0/1 target matrix."""
    y = np.asarray(targets).astype(bool)
    n, n_labels = y.shape
    rng = np.random.default_rng(seed)
    fold_of = np.full(n, -1, dtype=np.int64)
    want_samples = np.full(n_splits, n / n_splits)
    want_labels = np.outer(np.full(n_splits, 1.0 / n_splits), y.sum(0))  # (folds, labels)
    left = y.sum(0).astype(np.int64)                                       # unassigned samples per label
    labels_of = [np.flatnonzero(row) for row in y]
    samples_of = [np.flatnonzero(y[:, j]) for j in range(n_labels)]

    def place(s: int, fold: int) -> None:
        fold_of[s] = fold
        want_samples[fold] -= 1
        want_labels[fold, labels_of[s]] -= 1
        left[labels_of[s]] -= 1

    while left.any():
        counts = np.where(left > 0, left, np.iinfo(np.int64).max)
        label = _pick(np.flatnonzero(counts == counts.min()), rng)
        for s in rng.permutation(samples_of[label]):
            if fold_of[s] >= 0:
                continue
            wants = want_labels[:, label]
            best = np.flatnonzero(wants == wants.max())
            if len(best) > 1:
                best = best[want_samples[best] == want_samples[best].max()]
            place(int(s), _pick(best, rng))
    for s in rng.permutation(np.flatnonzero(fold_of < 0)):
        place(int(s), _pick(np.flatnonzero(want_samples == want_samples.max()), rng))
    return fold_of


def split(fold_of: np.ndarray, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) for one fold; fold -1: everything trains, nothing validates."""
    if fold < 0:
        return np.arange(len(fold_of)), np.zeros(0, dtype=np.int64)
    return np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
