"""Multi-label image data: CSV tables, label spaces with groups, datasets, and reproducible epoch order.

Two table styles, chosen by `kit.data.style`:
  imet       `id,attribute_ids` (ids space-separated) + labels.csv `attribute_id,attribute_name`, where names
             like `culture::x` / `tag::y` make label groups (iMet Collection 2019)
  inclusive  an image-id column and a label-list column named in the config; a long table (one label per
             row, an optional `Confidence` column of 0/1) is grouped by image id (Inclusive Images 2018)

Reproducibility: the order of an epoch is a pure function of (seed, epoch), and a sample's augmentation of
(seed, epoch, sample index). The sampler yields `(epoch, index)` keys and the dataset seeds its own
generators from them, so batches are the same for any worker count, and resuming mid-epoch is skipping the
first k batches of the same order.

Interface (also used by validate.py / infer.py):
    root = data_root(kit, config)                  # the folder holding the CSVs
    table = read_train(kit.data, root)             # Table: ids, paths, targets (N x C uint8), labels
    test = read_test(kit.data, root)               # Table with targets None, ids in sample_submission order
    ds = ImageDataset(table.paths, table.targets, augment.build(name, size), seed=kit.seed, channels=3)
    sampler = EpochBatchSampler(len(ds), batch_size, seed, shuffle=True, drop_last=True, rank=0, world=1)
    sampler.set_epoch(epoch, start_batch=0); loader = make_loader(ds, sampler, num_workers)
    for images, targets, index in loader: ...      # images uint8 (N, C, H, W); targets float32 (N, C)
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .settings import DataSettings, KitSettings

cv2.setNumThreads(1)  # workers run in parallel already; OpenCV's own threads only contend with them


# ------------------------------------------------------------------------------------------ tables

@dataclass
class Labels:
    """The label space: column j of a target matrix is attribute `ids[j]` named `names[j]`."""
    ids: list[str]
    names: list[str]
    groups: dict[str, list[int]] = field(default_factory=dict)  # group -> column indices ("all" if ungrouped)

    def __post_init__(self) -> None:
        self.column = {label: j for j, label in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, tokens: list[str]) -> np.ndarray:
        row = np.zeros(len(self.ids), dtype=np.uint8)
        for token in tokens:
            row[self.column[token]] = 1
        return row

    def decode(self, row: np.ndarray) -> list[str]:
        """The attribute ids of the nonzero columns of one row, in column order."""
        return [self.ids[j] for j in np.flatnonzero(row)]

    def to_json(self) -> dict:
        return {"ids": self.ids, "names": self.names, "groups": self.groups}

    @classmethod
    def from_json(cls, data: dict) -> "Labels":
        return cls(list(data["ids"]), list(data["names"]), {k: list(v) for k, v in data["groups"].items()})


# One image: its file, or (kit.data.channel_files) one grey file per channel, stacked in that order
ImageRef = Union[Path, tuple[Path, ...]]


@dataclass
class Table:
    ids: list[str]
    paths: list[ImageRef]
    targets: Optional[np.ndarray]   # (N, C) uint8 multi-hot, None for test images
    labels: Labels


def data_root(kit: KitSettings, config: Optional[dict] = None) -> Path:
    """Where the competition's CSVs are: kit.data.root, else the mounted competition found in the inputs."""
    from kpack_runtime import inputs

    if kit.data.root:
        root = Path(kit.data.root)
        if not root.is_dir():
            raise FileNotFoundError(f"kit.data.root: no folder {root}")
        return root
    slug = kit.data.competition or (config or {}).get("competition")
    if not slug:
        raise FileNotFoundError("kit.data: set `root` or `competition` (no competition in the config either)")
    found = inputs.find_input(slug, "competition")
    if found is None:
        tried = ", ".join(str(p) for p in inputs.candidates(slug, "competition"))
        raise FileNotFoundError(f"kit.data: competition {slug!r} is not mounted (looked in {tried})")
    return found


def _sort_key(label: str) -> tuple:
    return (0, int(label), "") if label.isdigit() else (1, 0, label)


def _split(cell: Any, sep: str) -> list[str]:
    if not isinstance(cell, str):  # NaN: an image without labels
        return []
    return [t for t in cell.strip().split(sep or None) if t]


def read_labels(data: DataSettings, root: Path, seen: Optional[set[str]] = None) -> Labels:
    """labels.csv (first column: label id, second: name) or, without one, the sorted labels seen in train."""
    if data.labels_csv:
        frame = pd.read_csv(root / data.labels_csv, dtype=str, keep_default_na=False)
        ids = frame.iloc[:, 0].str.strip().tolist()
        names = frame.iloc[:, 1].str.strip().tolist() if frame.shape[1] > 1 else list(ids)
    else:
        ids = sorted(seen or set(), key=_sort_key)
        names = list(ids)
    if len(set(ids)) != len(ids):
        raise ValueError(f"{data.labels_csv}: label ids repeat")
    groups: dict[str, list[int]] = {}
    for j, name in enumerate(names):
        group = name.split("::", 1)[0] if "::" in name else "all"
        groups.setdefault(group, []).append(j)
    return Labels(ids, names, groups)


def read_train(data: DataSettings, root: Path) -> Table:
    """The training table: ids, image paths, multi-hot targets in labels.csv column order."""
    frame = pd.read_csv(root / data.train_csv, dtype=str, keep_default_na=False)
    for column in (data.id_column, data.labels_column):
        if column not in frame.columns:
            raise ValueError(f"kit.data: {data.train_csv} has no column {column!r} (has: {', '.join(frame.columns)})")
    absent = ((frame["Confidence"].str.strip() == "0").tolist() if data.style == "inclusive"
              and "Confidence" in frame.columns else [False] * len(frame))  # human labels: 0 = checked, absent
    tokens: dict[str, list[str]] = {}
    for image_id, cell, no in zip(frame[data.id_column], frame[data.labels_column], absent):
        image_id = image_id.strip()
        if data.style == "imet" and image_id in tokens:
            raise ValueError(f"kit.data: {data.train_csv} lists image {image_id!r} twice (style imet wants one row "
                             "per image; a long table of one label per row is style inclusive)")
        tokens.setdefault(image_id, []).extend([] if no else _split(cell, data.label_sep))
    ids = list(tokens)
    if data.max_samples:
        ids = ids[:data.max_samples]
    seen = {t for image_id in ids for t in tokens[image_id]}
    labels = read_labels(data, root, seen)
    unknown = seen - set(labels.ids)
    if unknown:
        raise ValueError(f"kit.data: {data.train_csv} uses labels missing from {data.labels_csv}: "
                         f"{', '.join(sorted(unknown)[:5])}")
    targets = np.stack([labels.encode(tokens[i]) for i in ids]) if ids else np.zeros((0, len(labels)), np.uint8)
    return Table(ids, image_refs(data, root, "train_images", ids, data.train_csv), targets, labels)


def image_refs(data: DataSettings, root: Path, images: str, ids: list[str], listed_in: str) -> list[ImageRef]:
    """Each id's image file (or channel files) in the folder `data.<images>` names. The first id's must exist: a
    layout the settings misread (image_ext, the images folder, channel_files) stops here in one line, not in a
    loader worker."""
    folder = root / getattr(data, images)
    if data.channel_files:
        refs = [tuple(folder / f"{i}_{name}{data.image_ext}" for name in data.channel_files) for i in ids]
    else:
        refs = [folder / f"{i}{data.image_ext}" for i in ids]
    first = refs[0] if refs else ()
    gone = [p for p in (first if isinstance(first, tuple) else (first,)) if not p.is_file()]
    if gone:
        seen = os.listdir(folder)[:1] if folder.is_dir() else []  # the failure's path only: a listing is fine
        there = f"{folder.name}/ holds e.g. {seen[0]}" if seen else f"{folder} is missing or empty"
        raise FileNotFoundError(f"kit.data: no file {folder.name}/{gone[0].name} for {listed_in}'s first id "
                                f"{ids[0]!r} ({there}); check kit.data.{images}, image_ext and channel_files")
    return refs


def read_test(data: DataSettings, root: Path, labels: Optional[Labels] = None,
              submission_csv: str = "sample_submission.csv") -> Table:
    """Test images in sample_submission order (else sorted file names of the test folder)."""
    sample = root / submission_csv
    if sample.is_file():
        frame = pd.read_csv(sample, dtype=str, keep_default_na=False)
        ids, listed_in = frame.iloc[:, 0].str.strip().tolist(), submission_csv
    else:  # an image's id is its file name less the extension (and the first channel file's suffix)
        tail = (f"_{data.channel_files[0]}" if data.channel_files else "") + data.image_ext
        ids = sorted(p.name[:-len(tail)] for p in (root / data.test_images).glob(f"*{tail}"))
        listed_in = data.test_images + "/"
    return Table(ids, image_refs(data, root, "test_images", ids, listed_in), None,
                 labels or read_labels(data, root))


# ---------------------------------------------------------------------------------------- images

_REDUCED = {(1, 2): cv2.IMREAD_REDUCED_GRAYSCALE_2, (1, 4): cv2.IMREAD_REDUCED_GRAYSCALE_4,
            (1, 8): cv2.IMREAD_REDUCED_GRAYSCALE_8, (3, 2): cv2.IMREAD_REDUCED_COLOR_2,
            (3, 4): cv2.IMREAD_REDUCED_COLOR_4, (3, 8): cv2.IMREAD_REDUCED_COLOR_8}


def decode_scale(path: Path, reduce_to: Optional[int]) -> int:
    """1, 2, 4 or 8: the JPEG DCT scaling that still leaves both sides >= reduce_to (1 for other formats,
    or where the image is under twice the target). Reads only the header (PIL, lazy)."""
    if not reduce_to:
        return 1
    from PIL import Image

    try:
        with Image.open(path) as header:
            if header.format != "JPEG":
                return 1  # PNG & co: OpenCV would decode in full and resize with INTER_LINEAR_EXACT
            short = min(header.size)
    except OSError:
        return 1  # let cv2 say what is wrong with the file
    return next((s for s in (8, 4, 2) if short >= s * reduce_to), 1)


def load_image(path: ImageRef, channels: int = 3, reduce_to: Optional[int] = None) -> np.ndarray:
    """uint8 H x W x channels (RGB), whatever the file holds (grey, RGB, RGBA); a tuple of files (channel files):
    each read as grey, stacked in order. reduce_to: the size the caller resizes to next; a JPEG at least twice as
    large is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling: cheaper than decoding in full, then the
    resize has less to do)."""
    if isinstance(path, tuple):
        planes = [load_image(p, 1, reduce_to) for p in path]
        if len({plane.shape for plane in planes}) > 1:
            sizes = ", ".join(f"{p.name} {plane.shape[1]}x{plane.shape[0]}" for p, plane in zip(path, planes))
            raise ValueError(f"channel files of one image differ in size: {sizes}")
        return np.concatenate(planes, axis=2)
    scale = decode_scale(path, reduce_to)
    flag = _REDUCED[channels, scale] if scale > 1 else cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imread(str(path), flag)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    if channels == 1:
        return image[:, :, None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class ImageCache:
    """Every image resized once to size x size, in one uint8 memmap under the temp dir (not the output)."""

    def __init__(self, paths: list[ImageRef], size: int, channels: int, directory: Optional[Path] = None,
                 reduced: bool = True):
        self.reduced = reduced  # reduced-size JPEG decode (kit.data.decode_scale), as ImageDataset does it
        if directory is None:
            from kpack_runtime import inputs
            directory = inputs.temp_dir() / "kpack-cache"
        directory.mkdir(parents=True, exist_ok=True)
        head = f"{size}:{channels}:{'' if reduced else 'full:'}"  # auto keeps the key caches had before
        key = hashlib.sha256(head.encode() + "\n".join(map(str, paths)).encode()).hexdigest()[:16]
        self.file = directory / f"{key}.u8"
        self.shape = (len(paths), size, size, channels)
        with open(directory / f"{key}.lock", "w") as lock:  # one builder at a time (DDP ranks share the disk)
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (directory / f"{key}.done").exists():
                self._build(paths, size, channels)
                (directory / f"{key}.done").touch()
        self.array = np.memmap(self.file, dtype=np.uint8, mode="r", shape=self.shape)

    def _build(self, paths: list[ImageRef], size: int, channels: int) -> None:
        array = np.memmap(self.file, dtype=np.uint8, mode="w+", shape=self.shape)

        def one(i: int) -> None:
            image = load_image(paths[i], channels, size if self.reduced else None)  # as the uncached pipeline
            # cv2.resize takes at most 4 channels at once
            array[i] = np.concatenate([cv2.resize(image[:, :, c:c + 4], (size, size), interpolation=cv2.INTER_AREA)
                                       .reshape(size, size, -1) for c in range(0, channels, 4)], axis=2)

        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:  # cv2 releases the GIL
            list(pool.map(one, range(len(paths))))
        array.flush()
        del array

    def __getitem__(self, index: int) -> np.ndarray:
        return np.array(self.array[index])


def sample_generators(seed: int, epoch: int, index: int) -> tuple[np.random.Generator, random.Random]:
    """numpy and stdlib generators for one sample of one epoch; nothing else feeds augmentation."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index, 0x5A3]).generate_state(2, dtype=np.uint64)
    return np.random.Generator(np.random.PCG64(int(state[0]))), random.Random(int(state[1]))


class ImageDataset(Dataset):
    """Items are (image uint8 C x H x W, target float32 [C] or empty, index), keyed by (epoch, index) or index."""

    def __init__(self, paths: list[ImageRef], targets: Optional[np.ndarray] = None,
                 transform: Optional[Callable] = None, *, seed: int = 0, channels: int = 3,
                 cache: Optional[ImageCache] = None):
        self.paths, self.targets, self.transform = list(paths), targets, transform
        self.seed, self.channels, self.cache = seed, channels, cache

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image = (self.cache[index] if self.cache is not None else
                 load_image(self.paths[index], self.channels, getattr(self.transform, "decode_size", None)))
        if self.transform is not None:
            if hasattr(self.transform, "set_random_state"):
                self.transform.set_random_state(*sample_generators(self.seed, epoch, index))
            image = self.transform(image=image)["image"]
        if image.ndim == 2:
            image = image[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        target = (torch.from_numpy(self.targets[index].astype(np.float32)) if self.targets is not None
                  else torch.zeros(0))
        return tensor, target, index


# ------------------------------------------------------------------------------------------ order

def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The sample order of one epoch: a pure function of (seed, epoch)."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, 0x0D3]).permutation(n)


def shard_batches(order: np.ndarray, batch_size: int, rank: int = 0, world: int = 1,
                  drop_last: bool = True) -> list[list[int]]:
    """This rank's batches of `order`, as DistributedSampler would deal them: padded to a multiple of world
    by wrapping around, then every world-th sample; every rank gets the same number of batches."""
    n = len(order)
    if world > 1 and n % world:
        order = np.concatenate([order, order[:world - n % world]])
    mine = order[rank::world]
    count = len(mine) // batch_size if drop_last else -(-len(mine) // batch_size)
    if drop_last and count == 0 and len(mine):  # fewer samples than a batch: one short batch beats none
        count = 1
    return [mine[b * batch_size:(b + 1) * batch_size].tolist() for b in range(count)]


class EpochBatchSampler(Sampler):
    """Batches of (epoch, index) keys for the current epoch, from batch `start_batch` on.

    Works with persistent workers: each DataLoader iteration re-reads the epoch set by `set_epoch`.
    """

    def __init__(self, n: int, batch_size: int, seed: int, *, shuffle: bool = True, drop_last: bool = True,
                 rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last, self.rank, self.world = shuffle, drop_last, rank, world
        self.epoch, self.start_batch = 0, 0
        self.order_fn: Optional[Callable[[int], np.ndarray]] = None  # epoch -> order (mining.py); else epoch_order

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches(self, epoch: Optional[int] = None) -> list[list[int]]:
        epoch = self.epoch if epoch is None else epoch
        order = self.order_fn(epoch) if self.order_fn else epoch_order(self.n, self.seed, epoch, self.shuffle)
        return shard_batches(order, self.batch_size, self.rank, self.world, self.drop_last)

    def __len__(self) -> int:
        return len(shard_batches(np.arange(self.n), self.batch_size, self.rank, self.world, self.drop_last))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batches()[self.start_batch:]:
            yield [(self.epoch, i) for i in batch]


def make_loader(dataset: Dataset, sampler: EpochBatchSampler, num_workers: int = 0,
                pin_memory: bool = False, persistent: bool = True) -> DataLoader:
    """A DataLoader over `sampler`'s batches. Its own torch.Generator keeps the global RNG untouched, so
    creating an iterator (at an epoch start or mid-epoch on resume) never shifts dropout's random stream."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=persistent and num_workers > 0, generator=torch.Generator(),
                      prefetch_factor=4 if num_workers > 0 else None)
