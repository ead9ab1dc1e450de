"""Decoding on the training device (`kit.data.decode: device`): the loader's workers only read each JPEG's bytes,
this process decodes the batch where the model runs (torchvision.io.decode_jpeg: nvJPEG on CUDA, libjpeg-turbo
on a CPU, the same code path), resizes it there and flips it for the `light` pipeline.

    loader = gpudecode.loader(paths, targets, "light", sampler, kit.data, kit.seed, device, num_workers)
    for images, targets, index in loader: ...   # images uint8 (N, C, size, size) on `device`, as data.py's

What differs from the workers' path (data.ImageDataset + augment.build): the whole JPEG is decoded (no reduced
DCT scale), the resize is antialiased bilinear instead of OpenCV's INTER_AREA, and EXIF orientation is not
applied (nvJPEG does not), so pixels differ slightly. Only the none and light pipelines exist here
(settings.DEVICE_PIPELINES). The flip of a sample is a pure function of (seed, epoch, index) drawn in the worker
from data.sample_generators, so resume is exact and no global RNG stream moves.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from . import data
from .settings import DEVICE_PIPELINES, DataSettings

JPEG_MAGIC = b"\xff\xd8"
_STREAMS: dict[str, "torch.cuda.Stream"] = {}  # per CUDA device: the stream decode_jpeg runs with (decode_batch)


class JpegBytes(Dataset):
    """Items are (file bytes uint8 1-D, target float32 [C] or empty, index, flip), keyed by (epoch, index) or index."""

    def __init__(self, paths: list[Path], targets: Optional[np.ndarray], pipeline: str, *, seed: int = 0):
        if pipeline not in DEVICE_PIPELINES:
            raise ValueError(f"device decoding supports the {' and '.join(DEVICE_PIPELINES)} pipelines "
                             f"(got {pipeline!r}); use kit.data.decode: workers")
        self.paths, self.targets, self.seed, self.flips = list(paths), targets, seed, pipeline == "light"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        path = self.paths[index]
        raw = np.fromfile(path, dtype=np.uint8)
        if raw[:2].tobytes() != JPEG_MAGIC:
            raise ValueError(f"{path}: not a JPEG file (kit.data.decode: device reads JPEGs only; use decode: workers)")
        # the same generator the workers' pipelines draw from; p = 0.5 as albumentations' HorizontalFlip
        flip = self.flips and bool(data.sample_generators(self.seed, epoch, index)[0].random() < 0.5)
        target = (torch.from_numpy(self.targets[index].astype(np.float32)) if self.targets is not None
                  else torch.zeros(0))
        return torch.from_numpy(raw), target, index, flip


def collate(items: list) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The byte tensors stay a list (their lengths differ): decode_jpeg takes the list whole."""
    raws, targets, index, flips = zip(*items)
    return list(raws), torch.stack(targets), torch.tensor(index), torch.tensor(flips)


def decode_batch(raws: list[torch.Tensor], size: int, channels: int, device: torch.device,
                 flips: Optional[torch.Tensor] = None) -> torch.Tensor:
    """uint8 (N, channels, size, size) on `device`: decoded, resized (antialiased bilinear), flipped where asked."""
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec; they still work
        warnings.simplefilter("ignore", DeprecationWarning)
        if device.type != "cuda":
            images = decode_jpeg(raws, mode=mode, device=device)
        else:
            # torchvision allocates the outputs on the current stream but nvJPEG writes them on a stream of its
            # own that does not wait for it (pytorch/vision PR #9606): a block freed by the last step, whose
            # kernels may still be queued, could be overwritten. With a stream current on which nothing else
            # runs, the outputs come from blocks of that stream only, and record_stream keeps each from being
            # reused before the work queued on the training stream has read it
            main = torch.cuda.current_stream(device)
            if str(device) not in _STREAMS:
                _STREAMS[str(device)] = torch.cuda.Stream(device=device)
            side = _STREAMS[str(device)]
            with torch.cuda.stream(side):
                images = decode_jpeg(raws, mode=mode, device=device)
            main.wait_stream(side)
            for image in images:
                image.record_stream(main)
    out = torch.empty((len(images), channels, size, size), dtype=torch.uint8, device=device)
    by_shape: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):  # one interpolate per distinct shape, not per image
        by_shape.setdefault(tuple(image.shape), []).append(i)
    for shape, rows in by_shape.items():
        batch = torch.stack([images[i] for i in rows])
        if shape[-2:] != (size, size):
            batch = F.interpolate(batch.float(), size=(size, size), mode="bilinear", align_corners=False,
                                  antialias=True).round_().clamp_(0, 255).to(torch.uint8)
        out[rows] = batch
    if flips is not None and bool(flips.any()):
        flips = flips.to(device)
        out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    return out


class DeviceLoader:
    """A DataLoader of JpegBytes batches that yields (images on `device`, targets, index), as data.make_loader's do."""

    def __init__(self, loader: DataLoader, size: int, channels: int, device: torch.device):
        self.loader, self.size, self.channels, self.device = loader, size, channels, device
        self.dataset = loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for raws, targets, index, flips in self.loader:
            yield decode_batch(raws, self.size, self.channels, self.device, flips), targets, index

    # engine.Run._stop_workers ends the workers through the loader's iterator
    @property
    def _iterator(self):
        return self.loader._iterator

    @_iterator.setter
    def _iterator(self, value) -> None:
        self.loader._iterator = value


def loader(paths: list[Path], targets: Optional[np.ndarray], pipeline: str, sampler: data.EpochBatchSampler,
           d: DataSettings, seed: int, device: torch.device, num_workers: int,
           persistent: bool = True) -> DeviceLoader:
    """What data.make_loader(ImageDataset(...)) is for decode: workers, for decode: device."""
    dataset = JpegBytes(paths, targets, pipeline, seed=seed)
    inner = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                       pin_memory=device.type == "cuda", persistent_workers=persistent and num_workers > 0,
                       generator=torch.Generator(),  # as data.make_loader: the global RNG stays untouched
                       prefetch_factor=4 if num_workers > 0 else None)
    return DeviceLoader(inner, d.image_size, d.channels, device)
