"""Decoding on the training device (`kit.data.decode: device`): the loader's workers only read each JPEG's bytes,
this process decodes the batch where the model runs (torchvision.io.decode_jpeg: nvJPEG on CUDA, libjpeg-turbo
on a CPU, the same code path), resizes it there and flips it for the `light` pipeline.

    loader = gpudecode.loader(paths, targets, "light", sampler, kit.data, kit.seed, device, num_workers)
    for images, targets, index in loader: ...   # images uint8 (N, C, size, size) on `device`, as data.py's

What differs from the workers' path (data.ImageDataset + augment.build): the whole JPEG is decoded (no reduced
DCT scale) and the resize is antialiased bilinear instead of OpenCV's INTER_AREA, so pixels differ slightly.
EXIF orientation is applied as OpenCV applies it: nvJPEG ignores it, so the worker reads the tag from the bytes
and this process turns the decoded image. Only the none and light pipelines exist here
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
    """Items are (file bytes uint8 1-D, target float32 [C] or empty, index, flip, EXIF orientation 1-8), keyed by
    (epoch, index) or index."""

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
        return torch.from_numpy(raw), target, index, flip, exif_orientation(raw.tobytes())


def collate(items: list) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The byte tensors stay a list (their lengths differ): decode_jpeg takes the list whole."""
    raws, targets, index, flips, orientations = zip(*items)
    return list(raws), torch.stack(targets), torch.tensor(index), torch.tensor(flips), torch.tensor(orientations)


def exif_orientation(jpeg: bytes) -> int:
    """The EXIF Orientation tag (0x0112) of IFD0 in the JPEG's APP1 segment: 1-8, 1 where absent or unreadable."""
    i = 2
    while i + 4 <= len(jpeg) and jpeg[i] == 0xFF:
        marker = jpeg[i + 1]
        if marker in (0xDA, 0xD9):  # image data or its end: metadata comes before
            return 1
        length = int.from_bytes(jpeg[i + 2:i + 4], "big")
        if marker == 0xE1 and jpeg[i + 4:i + 10] == b"Exif\0\0":
            tiff = jpeg[i + 10:i + 2 + length]
            order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
            if order is None or len(tiff) < 8:
                return 1
            ifd = int.from_bytes(tiff[4:8], order)
            for entry in range(ifd + 2, ifd + 2 + 12 * int.from_bytes(tiff[ifd:ifd + 2], order), 12):
                if entry + 12 > len(tiff):
                    break
                if int.from_bytes(tiff[entry:entry + 2], order) == 0x0112:
                    value = int.from_bytes(tiff[entry + 8:entry + 10], order)  # a SHORT, first in its field
                    return value if 1 <= value <= 8 else 1
            return 1
        i += 2 + length
    return 1


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) as stored -> as meant to be seen, for EXIF orientation 1-8 (PIL's ImageOps.exif_transpose)."""
    if orientation in (5, 6, 7, 8):  # the stored rows are the picture's columns
        image = image.transpose(-2, -1)
    flips = {2: (-1,), 3: (-2, -1), 4: (-2,), 6: (-1,), 7: (-2, -1), 8: (-2,)}.get(orientation)
    return image.flip(flips) if flips else image


def decode_batch(raws: list[torch.Tensor], size: int, channels: int, device: torch.device,
                 flips: Optional[torch.Tensor] = None, orientations: Optional[torch.Tensor] = None) -> torch.Tensor:
    """uint8 (N, channels, size, size) on `device`: decoded, turned upright by each EXIF orientation, resized
    (antialiased bilinear), flipped where asked."""
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
    if orientations is not None:
        images = [orient(image, o) for image, o in zip(images, orientations.tolist())]
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
        for raws, targets, index, flips, orientations in self.loader:
            yield decode_batch(raws, self.size, self.channels, self.device, flips, orientations), targets, index

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
