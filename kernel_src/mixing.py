"""Batch-level training transforms, on the device: multi-scale resizing, mixup and cutmix for multi-label targets.

    size = train_size(kit.data, kit.seed, epoch, batch)           # None: keep the pipeline's size
    images = resize(images, size)
    images, targets = mix_batch(images, targets, draw(kit.mix, len(images), h, w, seed, epoch, batch, rank))

Randomness is a pure function of (seed, epoch, batch index[, rank]), drawn from its own generator: resuming
mid-epoch redraws the same size, lambda, partner permutation and box for every batch, and no global RNG
stream (dropout's) moves. Mixed targets are the same convex combination as the images: mixup
lam * y + (1 - lam) * y[perm]; cutmix the same with 1 - lam the share of pixels pasted from the partner.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .settings import DataSettings, MixSettings

SIZE_SALT, MIX_SALT = 0x5C41E, 0x313C  # separate streams for the size and the mix draws


def batch_rng(seed: int, epoch: int, batch: int, rank: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, batch, rank, salt])


# ------------------------------------------------------------------------------------------ multi-scale

def train_size(data: DataSettings, seed: int, epoch: int, batch: int) -> Optional[int]:
    """This batch's training size from `data.train_sizes` (the same on every rank), or None when unset."""
    if not data.train_sizes:
        return None
    key = batch if data.train_sizes_per == "batch" else 0
    rng = batch_rng(seed, epoch, key, 0, SIZE_SALT)
    return int(data.train_sizes[int(rng.integers(len(data.train_sizes)))])


def resize(images: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    """The batch (N, C, H, W) resized to size x size (bilinear, float pixel values); unchanged if already so."""
    if size is None or images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------------ mixup / cutmix

@dataclass
class Mix:
    kind: str                      # "none", "mixup" or "cutmix"
    lam: float = 1.0               # the weight of the batch itself; 1 - lam that of its partner
    perm: Optional[np.ndarray] = None
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # cutmix: y0, y1, x0, x1 pasted from the partner


def enabled(mix: MixSettings) -> bool:
    return mix.prob > 0 and (mix.mixup_alpha > 0 or mix.cutmix_alpha > 0)


def draw(mix: MixSettings, n: int, height: int, width: int, seed: int, epoch: int, batch: int,
         rank: int = 0) -> Mix:
    """The mix of one batch: which kind, lambda, partner permutation and cutmix box."""
    if not enabled(mix) or n < 2:
        return Mix("none")
    rng = batch_rng(seed, epoch, batch, rank, MIX_SALT)
    if rng.random() >= mix.prob:
        return Mix("none")
    use_cutmix = mix.cutmix_alpha > 0 and (mix.mixup_alpha <= 0 or rng.random() < mix.switch_prob)
    perm = rng.permutation(n)
    if not use_cutmix:
        return Mix("mixup", float(rng.beta(mix.mixup_alpha, mix.mixup_alpha)), perm)
    lam = float(rng.beta(mix.cutmix_alpha, mix.cutmix_alpha))
    cut = math.sqrt(1.0 - lam)  # a box of area share 1 - lam, clipped at the borders
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    area = (y1 - y0) * (x1 - x0) / (height * width)  # the target weight follows the clipped area exactly
    return Mix("cutmix", 1.0 - area, perm, (y0, y1, x0, x1))


def mix_batch(images: torch.Tensor, targets: torch.Tensor, m: Mix) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) and targets (N, K) mixed with their partners by `m`."""
    if m.kind == "none":
        return images, targets
    perm = torch.as_tensor(m.perm, device=images.device)
    targets = targets * m.lam + targets[perm] * (1.0 - m.lam)
    if m.kind == "mixup":
        x = images.float()
        return x * m.lam + x[perm] * (1.0 - m.lam), targets
    y0, y1, x0, x1 = m.box
    images = images.clone()
    images[:, :, y0:y1, x0:x1] = images[perm][:, :, y0:y1, x0:x1]
    return images, targets
