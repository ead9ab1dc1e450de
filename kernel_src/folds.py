"""Multilabel-stratified k-fold: iterative stratification (Sechidis, Tsoumakas and Vlahavas, ECML 2011).

Rarest label first: its remaining samples go, one by one, to the fold that still wants that label most
(ties: the fold wanting the most samples, then a seeded random pick). Unlabelled samples fill the folds
that want the most samples. Deterministic by seed.

    fold_of = assign(targets, n_splits=5, seed=42)    # (N,) int: the validation fold of each sample
    train_idx, valid_idx = split(fold_of, fold=0)

With holdout=share, a stratified share of the rows is first set aside (fold HELD_OUT): no fold trains or
validates on it, so every model of every member can predict it, as each predicts the test set. That makes the
blend's score measurable out of sample; without it the folds are exactly those assigned before holdout existed.
"""
from __future__ import annotations

import numpy as np


def _pick(candidates: np.ndarray, rng: np.random.Generator) -> int:
    return int(candidates[0]) if len(candidates) == 1 else int(rng.choice(candidates))


HELD_OUT = -2  # the fold of a held-out row: trained and validated on by no fold


def assign(targets: np.ndarray, n_splits: int = 5, seed: int = 0, holdout: float = 0.0) -> np.ndarray:
    """The fold (0..n_splits-1, or HELD_OUT for the holdout share) of every row of a (N, C) 0/1 target matrix."""
    y = np.asarray(targets).astype(bool)
    if not holdout:
        return _stratify(y, np.full(n_splits, len(y) / n_splits), np.full(n_splits, 1.0 / n_splits), seed)
    if not 0 < holdout < 1:
        raise ValueError(f"holdout {holdout}: a share of the rows between 0 and 1")
    shares = np.array([holdout, 1 - holdout])
    kept = np.flatnonzero(_stratify(y, len(y) * shares, shares, [seed, 1]) == 1)  # its own draw: seed, 1
    fold_of = np.full(len(y), HELD_OUT, dtype=np.int64)
    fold_of[kept] = assign(y[kept], n_splits, seed)
    return fold_of


def _stratify(y: np.ndarray, want_samples: np.ndarray, shares: np.ndarray, seed) -> np.ndarray:
    """Iterative stratification into len(shares) folds of want_samples rows each."""
    n, n_labels = y.shape
    rng = np.random.default_rng(seed)
    fold_of = np.full(n, -1, dtype=np.int64)
    want_samples = want_samples.astype(float)
    want_labels = np.outer(shares, y.sum(0))  # (folds, labels)
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
    """(train indices, validation indices) for one fold; fold -1: everything but the holdout trains, nothing
    validates."""
    kept = fold_of != HELD_OUT
    if fold < 0:
        return np.flatnonzero(kept), np.zeros(0, dtype=np.int64)
    return np.flatnonzero(kept & (fold_of != fold)), np.flatnonzero(fold_of == fold)


def held_out(fold_of: np.ndarray) -> np.ndarray:
    """The indices of the held-out rows (none without a holdout)."""
    return np.flatnonzero(fold_of == HELD_OUT)
