"""Named augmentation pipelines (albumentations) and test-time flips, chosen by name in the config.

A pipeline maps a uint8 HxWxC image to a uint8 image of `size` x `size`; conversion to a tensor happens in
the dataset and normalisation on the device (models.Classifier), so workers ship 4x fewer bytes.
Randomness: the dataset hands each call its own generators (see data.ImageDataset), never global state.

    augment.build("medium", 64)   -> albumentations.Compose
    augment.TTA["hflip"](batch)   -> the batch (N, C, H, W tensor) flipped; inverse of itself
"""
from __future__ import annotations

import os
from typing import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import (kernels are offline)

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import torch  # noqa: E402


def _resize(size: int) -> list:
    return [A.Resize(size, size, interpolation=cv2.INTER_AREA)]


def _none(size: int) -> list:
    return _resize(size)


def _light(size: int) -> list:
    return _resize(size) + [A.HorizontalFlip(p=0.5)]


def _affine(size: int) -> list:
    """Shifts, scales and small rotations; no flips (for content whose mirror image means something else)."""
    return _resize(size) + [
        A.Affine(scale=(0.85, 1.15), translate_percent=(-0.1, 0.1), rotate=(-10, 10),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.8),
        A.RandomBrightnessContrast(0.15, 0.15, p=0.5),
    ]


def _medium(size: int) -> list:
    return [
        A.RandomResizedCrop((size, size), scale=(0.6, 1.0), ratio=(0.8, 1.25), interpolation=cv2.INTER_AREA),
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-10, 10), border_mode=cv2.BORDER_REFLECT_101, p=0.3),
        A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
    ]


def _heavy(size: int) -> list:
    return _medium(size) + [
        A.HueSaturationValue(10, 20, 10, p=0.3),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15),
                        fill=0, p=0.5),
    ]


PIPELINES: dict[str, Callable[[int], list]] = {
    "none": _none, "light": _light, "affine": _affine, "medium": _medium, "heavy": _heavy,
}


# Pipelines whose first step resizes the whole image: their JPEGs may be decoded at a reduced scale first
# (data.load_image). medium/heavy crop first already (RandomResizedCrop: crop, then resize the crop).
WHOLE_IMAGE_RESIZE = ("none", "light", "affine")


def build(name: str, size: int, reduced_decode: bool = True) -> A.Compose:
    """The named pipeline for `size` x `size` outputs; an unknown name fails with the known ones.
    Its `decode_size` (size, or None) tells the dataset how small a JPEG may be decoded (kit.data.decode_scale)."""
    if name not in PIPELINES:
        raise ValueError(f"augmentation {name!r} is not known; choose one of: {', '.join(PIPELINES)}")
    pipeline = A.Compose(PIPELINES[name](size), seed=0)
    pipeline.decode_size = size if reduced_decode and name in WHOLE_IMAGE_RESIZE else None
    return pipeline


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _vflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-2)


def _rot180(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-2, -1)


# Test-time views of a batch (N, C, H, W): each is its own inverse, so spatial outputs map back the same way.
TTA: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x, "hflip": _hflip, "vflip": _vflip, "rot180": _rot180,
}


def tta_views(names: list[str]) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    unknown = [n for n in names if n not in TTA]
    if unknown:
        raise ValueError(f"test-time augmentation {unknown[0]!r} is not known; choose from: {', '.join(TTA)}")
    return [TTA[n] for n in names]
