"""Test-time augmentation: a model's sigmoid probabilities averaged over views of each batch.

Views are named in `kit.augment.tta`: augment.TTA's `none`, `hflip`, `vflip`, `rot180`, and small shifts
`shift_left`, `shift_right`, `shift_up`, `shift_down` (by SHIFT_SHARE of the side, zero-filled: a shift
keeps the label of content that a mirror would change, like digits). Averaging is over probabilities,
not logits, so a view that makes the model unsure pulls the mean toward 0.5 rather than dominating it.

    probs = tta.predict(model, loader, ["none", "shift_left"], device)   # (N, labels) float32, row order
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from . import augment

SHIFT_SHARE = 1 / 16
View = Callable[[torch.Tensor], torch.Tensor]


def _shift(dx: int, dy: int) -> View:
    """Translate a (N, C, H, W) batch by (dx, dy) steps of SHIFT_SHARE of its size; vacated pixels are 0."""
    def view(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        sx, sy = dx * max(1, round(w * SHIFT_SHARE)), dy * max(1, round(h * SHIFT_SHARE))
        out = torch.zeros_like(x)
        out[..., max(sy, 0):h + min(sy, 0), max(sx, 0):w + min(sx, 0)] = \
            x[..., max(-sy, 0):h + min(-sy, 0), max(-sx, 0):w + min(-sx, 0)]
        return out
    return view


VIEWS: dict[str, View] = {
    **augment.TTA,
    "shift_left": _shift(-1, 0), "shift_right": _shift(1, 0), "shift_up": _shift(0, -1), "shift_down": _shift(0, 1),
}


def views(names: Iterable[str]) -> list[View]:
    names = list(names) or ["none"]
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        raise ValueError(f"kit.augment.tta: view {unknown[0]!r} is not known; choose from: {', '.join(VIEWS)}")
    return [VIEWS[n] for n in names]


@torch.no_grad()
def predict_batch(model: torch.nn.Module, images: torch.Tensor, names: Iterable[str]) -> torch.Tensor:
    """Mean over the named views of sigmoid(model(view(images))), as float32 (N, labels)."""
    chosen = views(names)
    total = None
    for view in chosen:
        probs = torch.sigmoid(model(view(images)).float())
        total = probs if total is None else total + probs
    return total / len(chosen)


@torch.no_grad()
def predict(model: torch.nn.Module, loader: Iterable, names: Iterable[str], device: torch.device | str,
            n_rows: int | None = None) -> np.ndarray:
    """TTA probabilities for every row a loader of (images, targets, index) batches yields, placed by index.

    `n_rows` defaults to the size of the loader's dataset."""
    names = list(names)
    views(names)  # fail on an unknown view before the first batch
    model.eval()
    n_rows = len(loader.dataset) if n_rows is None else n_rows
    out: np.ndarray | None = None
    for images, _, index in loader:
        probs = predict_batch(model, images.to(device, non_blocking=True), names).cpu().numpy()
        if out is None:
            out = np.full((n_rows, probs.shape[1]), np.nan, dtype=np.float32)
        out[np.asarray(index)] = probs
    if out is None or np.isnan(out).any():
        raise RuntimeError("the loader did not yield every row (a sampler with drop_last?)")
    return out
