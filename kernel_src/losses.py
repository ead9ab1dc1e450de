"""Multi-label losses on logits (N, C) and 0/1 targets (N, C); each returns a scalar mean.

  bce         binary cross-entropy
  focal       BCE * |y - p|^gamma, optionally alpha-balanced: (1 - p_t)^gamma on 0/1 targets (Lin et al. 2017)
  soft_fbeta  1 - soft F-beta on sigmoid probabilities (beta 2: iMet's metric), per sample (or macro, micro)
  forgiving   BCE(x, y) + w * BCE(x * y, y): positives count 1 + w times, negatives once (iMet 2019)

`build(terms)` makes the weighted sum a stage of the config asks for; `smooth(targets, eps)` is label smoothing
for multi-label targets (each column a binary problem: 1 -> 1 - eps/2, 0 -> eps/2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .settings import LossTerm


def smooth(targets: torch.Tensor, eps: float) -> torch.Tensor:
    """Label smoothing of binary targets: y (1 - eps) + eps / 2, so every target lies in [eps/2, 1 - eps/2]."""
    return targets if eps <= 0 else targets * (1 - eps) + eps / 2


def per_sample_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE averaged over the classes of each sample: (N,) (hard-negative mining ranks samples by it)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").mean(1)


def bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets)


def focal(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float = -1.0) -> torch.Tensor:
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    # |y - p| is 1 - p_t on 0/1 targets and, unlike 1 - exp(-BCE), 0 where p meets a soft target (smoothing, mixup,
    # distillation), so well-fit soft rows are not weighted as if they were wrong
    loss = ce * (targets - torch.sigmoid(logits)).abs() ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.mean()


def soft_fbeta(logits: torch.Tensor, targets: torch.Tensor, beta: float = 2.0, average: str = "samples",
               eps: float = 1e-7) -> torch.Tensor:
    """1 - the soft F-beta (1+b^2) tp / ((1+b^2) tp + b^2 fn + fp), tp/fp/fn from probabilities: per sample and
    averaged (samples), per label over the batch and averaged (macro), or once over the batch (micro)."""
    p = torch.sigmoid(logits.float())
    y = targets.float()
    dims = {"samples": (1,), "macro": (0,), "micro": (0, 1)}[average]
    tp = (p * y).sum(dims)
    fp = (p * (1 - y)).sum(dims)
    fn = ((1 - p) * y).sum(dims)
    b2 = beta * beta
    score = (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp + eps)
    return 1 - score.mean()


def forgiving(logits: torch.Tensor, targets: torch.Tensor, w: float = 1.0) -> torch.Tensor:
    return bce(logits, targets) + w * bce(logits * targets, targets)


class WeightedSum(nn.Module):
    """sum_i weight_i * loss_i(logits, targets); float32 whatever the autocast dtype of the logits."""

    def __init__(self, terms: list[LossTerm]):
        super().__init__()
        self.terms = list(terms)

    def _one(self, term: LossTerm, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if term.name == "bce":
            return bce(logits, targets)
        if term.name == "focal":
            return focal(logits, targets, term.gamma, term.alpha)
        if term.name == "soft_fbeta":
            return soft_fbeta(logits, targets, term.beta, term.average)
        if term.name == "forgiving":
            return forgiving(logits, targets, term.w)
        raise ValueError(f"unknown loss {term.name!r}")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        total = logits.new_zeros(())
        for term in self.terms:
            total = total + term.weight * self._one(term, logits, targets)
        return total

    def extra_repr(self) -> str:
        return " + ".join(f"{t.weight:g}*{t.name}" for t in self.terms)


def build(terms: list[LossTerm]) -> WeightedSum:
    return WeightedSum(terms)
