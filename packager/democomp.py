"""The demo competition: a Kaggle-format multi-label image competition made from scikit-learn's bundled digits.

Shaped like iMet Collection 2019: every image holds 1 to `max_digits` handwritten digits at random positions
and scales, and its labels come in two groups, the digits present (`digit::0`..`digit::9`, attribute ids
0-9) and how many digits there are (`count::1`..`count::N`, ids 10..). Nothing is downloaded: the 8x8
digits ship inside scikit-learn. The 8x8 samples are split per class first, so no test image reuses a
digit sample that a train image shows.

Layout written under `out_dir`:

    data/                      what the competition mounts (input/competitions/<slug>/)
      train.csv                id,attribute_ids        (ids space-separated, ascending)
      labels.csv               attribute_id,attribute_name
      sample_submission.csv    id,attribute_ids        (test ids in scoring order, a placeholder answer)
      train/<id>.png, test/<id>.png
    solution.csv               id,attribute_ids,Usage  (Public/Private; hidden: outside data/)

The same seed gives byte-identical files: all randomness comes from one numpy Generator, PNGs are written
by PIL without timestamps, and CSVs with fixed line endings.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from packager.errors import UserError

N_CLASSES = 10
TEST_SHARE = 0.3          # share of each class's 8x8 samples kept for the test images
MIN_SCALE, MAX_SCALE = 0.28, 0.5   # a digit's side as a share of the canvas side
MAX_COVER = 0.25          # most of a digit's box another digit may cover
PLACE_TRIES = 200
SAMPLE_ANSWER = "0 1 2"


@dataclass(frozen=True)
class DemoCompetition:
    data_dir: Path        # the competition's files, as mounted in a kernel
    solution_csv: Path    # hidden answers for the local Kaggle's scorer


def label_names(max_digits: int = 4) -> list[str]:
    """Attribute names by attribute id: digits first, then counts."""
    return [f"digit::{d}" for d in range(N_CLASSES)] + [f"count::{k}" for k in range(1, max_digits + 1)]


def count_label(k: int) -> int:
    """The attribute id of `count::k`."""
    return N_CLASSES + k - 1


def _split_samples(target: np.ndarray, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per class, disjoint train and test pools of 8x8 sample indices."""
    train, test = [], []
    for cls in range(N_CLASSES):
        idx = rng.permutation(np.flatnonzero(target == cls))
        n_test = int(round(len(idx) * TEST_SHARE))
        test.append(np.sort(idx[:n_test]))
        train.append(np.sort(idx[n_test:]))
    return train, test


def _cover(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """Share of the smaller of two square boxes (x, y, side) that their intersection covers."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1]))
    return ix * iy / min(a[2], b[2]) ** 2


def _place(n: int, size: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """n square boxes inside the canvas, none covering more than MAX_COVER of another."""
    boxes: list[tuple[int, int, int]] = []
    lo, hi = max(6, int(MIN_SCALE * size)), max(6, int(MAX_SCALE * size))
    while len(boxes) < n:
        for _ in range(PLACE_TRIES):
            side = int(rng.integers(lo, hi + 1))
            box = (int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1)), side)
            if all(_cover(box, other) <= MAX_COVER for other in boxes):
                boxes.append(box)
                break
        else:  # crowded: shrink the digits and try again
            hi = max(lo, int(hi * 0.85))
            lo = max(4, int(lo * 0.85))
    return boxes


def _render(samples: list[np.ndarray], size: int, mode: str, noise: float, rng: np.random.Generator) -> Image.Image:
    """Paste upscaled 8x8 digits (values 0-16) onto a dark canvas; brighter pixels win where digits touch."""
    channels = 3 if mode == "RGB" else 1
    canvas = np.zeros((size, size, channels), dtype=np.float32)
    if mode == "RGB":
        canvas += rng.uniform(0, 60, size=channels).astype(np.float32)
    for sample, (x, y, side) in zip(samples, _place(len(samples), size, rng)):
        small = Image.fromarray((sample * (255 / 16)).round().astype(np.uint8), "L")
        patch = np.asarray(small.resize((side, side), Image.BICUBIC), dtype=np.float32)[..., None]
        color = rng.uniform(120, 255, size=channels).astype(np.float32) if mode == "RGB" else np.float32(255)
        region = canvas[y:y + side, x:x + side]
        np.maximum(region, patch / 255 * color, out=region)
    if noise > 0:
        canvas += rng.normal(0, noise * 255, size=canvas.shape).astype(np.float32)
    pixels = canvas.clip(0, 255).round().astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)  # PIL writes no tIME chunk unless asked
    return buf.getvalue()


def _csv(header: str, rows: list[tuple]) -> str:
    return "".join(f"{','.join(map(str, row))}\n" for row in [tuple(header.split(","))] + rows)


def _make_split(name: str, n: int, pools: list[np.ndarray], images: np.ndarray, seed: int, *, size: int,
                mode: str, noise: float, max_digits: int, folder: Path,
                rng: np.random.Generator) -> list[tuple[str, str]]:
    """Draw, render and write `n` images; returns (id, attribute_ids) rows in generation order."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        k = int(rng.integers(1, max_digits + 1))
        digits = rng.choice(N_CLASSES, size=k, replace=False)  # distinct digits: `count::k` means k labels
        samples = [images[int(rng.choice(pools[d]))] for d in digits]
        image_id = hashlib.sha1(f"kpack-digits:{seed}:{name}:{i}".encode()).hexdigest()[:16]
        (folder / f"{image_id}.png").write_bytes(_png_bytes(_render(samples, size, mode, noise, rng)))
        labels = sorted(int(d) for d in digits) + [count_label(k)]
        rows.append((image_id, " ".join(map(str, labels))))
    return rows


def generate(out_dir: Path, *, seed: int = 0, n_train: int = 600, n_test: int = 200, image_size: int = 64,
             mode: str = "L", max_digits: int = 4, noise: float = 0.03,
             public_fraction: float = 0.5) -> DemoCompetition:
    """Write the demo competition under `out_dir` (see the module docstring) and return where it lies.
    An earlier demo competition there is replaced whole; a folder holding anything else is refused."""
    if mode not in ("L", "RGB"):
        raise UserError(f"demo competition: mode must be 'L' or 'RGB' (got {mode!r})")
    if not 1 <= max_digits <= 4:
        raise UserError(f"demo competition: max_digits must be 1..4 (got {max_digits})")
    if image_size < 16:
        raise UserError(f"demo competition: image_size must be at least 16 pixels (got {image_size})")
    if n_train < 1 or n_test < 1:
        raise UserError(f"demo competition: n_train and n_test must be at least 1 (got {n_train}, {n_test})")

    out_dir = Path(out_dir)
    if out_dir.exists() and {p.name for p in out_dir.iterdir()} - {"data", "solution.csv"}:
        raise UserError(f"demo competition: {out_dir} holds other files; give an empty or new folder")
    # built beside out_dir and renamed into place: never half-written, no stale images of an earlier run
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    work.chmod(0o755)
    try:
        _write(work, seed=seed, n_train=n_train, n_test=n_test, image_size=image_size, mode=mode,
               max_digits=max_digits, noise=noise, public_fraction=public_fraction)
        old = out_dir.with_name(f"{work.name}.old")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(work, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return DemoCompetition(data_dir=out_dir / "data", solution_csv=out_dir / "solution.csv")


def _write(out_dir: Path, *, seed: int, n_train: int, n_test: int, image_size: int, mode: str, max_digits: int,
           noise: float, public_fraction: float) -> None:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    data_dir = out_dir / "data"
    digits = load_digits()
    rng = np.random.default_rng(seed)
    train_pools, test_pools = _split_samples(digits.target, rng)
    common = dict(size=image_size, mode=mode, noise=noise, max_digits=max_digits, rng=rng)
    train_rows = _make_split("train", n_train, train_pools, digits.images, seed, folder=data_dir / "train", **common)
    test_rows = _make_split("test", n_test, test_pools, digits.images, seed, folder=data_dir / "test", **common)

    public = np.zeros(n_test, dtype=bool)
    public[rng.permutation(n_test)[:int(round(n_test * public_fraction))]] = True
    names = label_names(max_digits)
    (data_dir / "train.csv").write_text(_csv("id,attribute_ids", train_rows))
    (data_dir / "labels.csv").write_text(_csv("attribute_id,attribute_name", list(enumerate(names))))
    (data_dir / "sample_submission.csv").write_text(
        _csv("id,attribute_ids", [(image_id, SAMPLE_ANSWER) for image_id, _ in test_rows]))
    solution = [(image_id, labels, "Public" if pub else "Private") for (image_id, labels), pub in zip(test_rows, public)]
    (out_dir / "solution.csv").write_text(_csv("id,attribute_ids,Usage", solution))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the digits demo competition.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--mode", choices=("L", "RGB"), default="L")
    args = parser.parse_args(argv)
    try:
        comp = generate(args.out_dir, seed=args.seed, n_train=args.n_train, n_test=args.n_test,
                        image_size=args.image_size, mode=args.mode)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print(f"data: {comp.data_dir}\nsolution: {comp.solution_csv}")


if __name__ == "__main__":
    main()
