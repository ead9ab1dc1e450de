"""Loader throughput, side by side in one run on a generated JPEG folder: the kit uncached, the kit cached
(kernel_src.data.ImageCache: every image resized once into a uint8 np.memmap file under the temp folder, read
through the page cache) and timm's create_loader (PIL + torchvision transforms), images per second.

Same images (random sizes between --min-px and --max-px, JPEG quality 90), output size, batch size, workers
and epochs; the kit's `light` pipeline against timm's training transforms without colour jitter. Each loader
reads --epochs epochs after one warm-up batch; the cache's build time and file size are reported too.

    .venv/bin/python bench/bench_loader.py                          # 2 workers, 400 images, 288 px
    .venv/bin/python bench/bench_loader.py --workers 4 --n 2000     # as on a Kaggle GPU machine (4 cores)
    .venv/bin/python bench/bench_loader.py --workers 4 --decode cuda  # adds nvJPEG decoding on the GPU

Scale: the cache file is n x size x size x 3 bytes (288 px: 249 KB an image, iMet's 109k: 27 GB, on the disk,
not in RAM). When it is larger than the page cache, cached reads become disk reads of 249 KB an image, still
without decoding. This set fits in RAM, so that case is made by hand: kit_cached_cold drops the file's pages
from the page cache (posix_fadvise DONTNEED) before every epoch, so each epoch reads it all from the disk,
as an epoch over a 27 GB file on a machine with less free RAM would.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def make_images(folder: Path, n: int, lo: int, hi: int, seed: int = 0) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        # smooth colour fields plus noise: compresses like a photo, not like flat colour
        base = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
        image = np.clip(base.astype(np.int16) + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / "x" / f"{i:05d}.jpg"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def rate(loader, epochs: int, set_epoch=None) -> float:
    it = iter(loader)
    next(it)  # warm-up: workers started
    count, started = 0, time.monotonic()
    for images, *_ in it:
        count += len(images)
    for epoch in range(1, epochs):
        if set_epoch:
            set_epoch(epoch)
        for images, *_ in loader:
            count += len(images)
    return count / (time.monotonic() - started)


def resident_mb(path: Path):
    """The file's bytes in the page cache (util-linux fincore), None where that tool is missing."""
    import subprocess

    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        return int(out) / 1e6
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def kit_loader(paths, size: int, batch: int, workers: int, cache=None, persistent: bool = True):
    from kernel_src import augment, data

    dataset = data.ImageDataset(paths, np.zeros((len(paths), 1), np.float32), augment.build("light", size),
                                cache=cache)
    sampler = data.EpochBatchSampler(len(paths), batch, 0, shuffle=True, drop_last=False)
    return data.make_loader(dataset, sampler, workers, persistent=persistent), sampler.set_epoch


def timm_loader(folder: Path, size: int, batch: int, workers: int):
    from timm.data import create_dataset, create_loader

    dataset = create_dataset("", root=str(folder))
    return create_loader(dataset, input_size=(3, size, size), batch_size=batch, is_training=True,
                         use_prefetcher=False, num_workers=workers, color_jitter=0.0, persistent_workers=True)


def decode_rate(paths, size: int, batch: int, device: str, epochs: int) -> float:
    """torchvision.io.decode_jpeg on `device` (a batch of file bytes at a time: nvJPEG on CUDA), then an
    antialiased resize there: the GPU-decode option, read in this process (no workers)."""
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg, read_file

    def one_epoch() -> int:
        done = 0
        for i in range(0, len(paths), batch):
            raw = [read_file(str(path)) for path in paths[i:i + batch]]
            images = decode_jpeg(raw, device=device)
            out = torch.stack([F.interpolate(im[None].float(), size=(size, size), mode="bilinear",
                                             antialias=True)[0] for im in images]).to(torch.uint8)
            done += len(out)
        if device == "cuda":
            torch.cuda.synchronize()
        return done

    one_epoch()  # warm-up (nvJPEG's handles on CUDA)
    started, count = time.monotonic(), sum(one_epoch() for _ in range(epochs))
    return count / (time.monotonic() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--size", type=int, default=288)
    p.add_argument("--min-px", type=int, default=300)
    p.add_argument("--max-px", type=int, default=800)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--folder", type=Path, help="reuse this generated folder (made when missing)")
    p.add_argument("--decode", choices=["none", "cpu", "cuda"], default="cpu",
                   help="also time torchvision.io.decode_jpeg on this device (cuda: where a GPU is present)")
    a = p.parse_args()
    torch.set_num_threads(1)
    from kernel_src import data

    with tempfile.TemporaryDirectory(prefix="kpack-bench-loader-") as tmp:
        folder = a.folder or Path(tmp) / "images"
        paths = sorted((folder / "x").glob("*.jpg")) if (folder / "x").is_dir() else []
        if len(paths) < a.n:
            paths = make_images(folder, a.n, a.min_px, a.max_px)
        paths = paths[: a.n]
        results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                   "n": len(paths), "size": a.size, "workers": a.workers, "batch": a.batch}
        results["timm_img_s"] = rate(timm_loader(folder, a.size, a.batch, a.workers), a.epochs)
        loader, set_epoch = kit_loader(paths, a.size, a.batch, a.workers)
        results["kit_uncached_img_s"] = rate(loader, a.epochs, set_epoch)
        started = time.monotonic()
        cache = data.ImageCache(paths, a.size, 3, Path(tmp) / "cache")
        results["cache_build_s"] = time.monotonic() - started
        results["cache_mb"] = cache.file.stat().st_size / 1e6
        loader, set_epoch = kit_loader(paths, a.size, a.batch, a.workers, cache=cache)
        results["kit_cached_img_s"] = rate(loader, a.epochs, set_epoch)
        # larger than RAM: every epoch's reads come from the disk. The file's pages are dropped from the page
        # cache before each epoch (workers not persistent, so no process keeps them mapped)
        loader._iterator._shutdown_workers()  # their mappings would keep the pages in
        cold, _ = kit_loader(paths, a.size, a.batch, a.workers, cache=cache, persistent=False)

        def drop_then(epoch: int) -> None:
            fd = os.open(cache.file, os.O_RDONLY)
            os.fsync(fd)  # only clean pages can be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            cold.batch_sampler.set_epoch(epoch)

        drop_then(0)
        results["cold_resident_mb_after_drop"] = resident_mb(cache.file)
        results["kit_cached_cold_img_s"] = rate(cold, a.epochs, drop_then)
        if a.decode != "none":
            results[f"torchvision_decode_{a.decode}_img_s"] = decode_rate(paths, a.size, a.batch, a.decode, a.epochs)
        results["uncached_vs_timm"] = results["kit_uncached_img_s"] / results["timm_img_s"]
        results["cached_vs_timm"] = results["kit_cached_img_s"] / results["timm_img_s"]
        results["cached_cold_vs_timm"] = results["kit_cached_cold_img_s"] / results["timm_img_s"]
        results["cache_gb_at_109k"] = 109_000 * a.size * a.size * 3 / 1e9
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
