"""Generated Kaggle-format multi-label image competitions, unlike the demo's digits, for benchmarking the kit.

Kinds:
  shapes    shape::{circle,square,triangle,cross,ring,bar} + colour::{red,green,blue,yellow,white}: 1-3 objects per
            image, each a random shape in a random colour, 40 px
  longtail  one flat group of 20 texture labels (stripes, dots, checks ...) with Zipf-like frequencies: a few common,
            many rare; 1-3 textures tiled into regions of the image, 32 px
  noisy     the shapes task at 48 px with background noise; its TRAIN labels are corrupted (each true label missing
            with p=MISSING, each absent label spurious with p=SPURIOUS); the test solution stays clean
  scenes    made after the kit's defaults were chosen, to check them out of sample: sky::{day,dusk,night} and
            ground::{grass,sand,water,rock} (exactly one of each: the top and bottom of the image) and eight
            object:: labels, each present on its own with a frequency from 0.45 down to 0.03, 56 px
  cells     the Human Protein Atlas' layout and task (HPA 2018, scored by macro F1): four grey PNGs per image,
            `{Id}_{red,green,blue,yellow}.png`; blue nuclei, red and yellow clutter, and the green protein's
            location::{nucleoplasm,cytosol,...} (1-3 of eight, 0.40 down to 0.04) readable only against the
            nuclei; train.csv `Id,Target` (label numbers), no labels.csv, sample_submission `Id,Predicted`, 48 px

Layout (as packager/democomp.py): out/data/{train.csv,labels.csv,sample_submission.csv,train/,test/},
out/solution.csv (id,attribute_ids,Usage; hidden, outside data/), and out/train_clean.csv (the uncorrupted train
labels, for checking the noise rate); `cells` has HPA's names instead, and Competition.kit_data says what
kit.data needs for it. One numpy Generator per seed: the same seed gives byte-identical files.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("shapes", "longtail", "noisy", "scenes", "cells")  # appended only: a kind's index seeds its generator
SIZES = {"shapes": 40, "longtail": 32, "noisy": 48, "scenes": 56, "cells": 48}
SHAPES = ["circle", "square", "triangle", "cross", "ring", "bar"]
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 240), "yellow": (230, 220, 40),
           "white": (240, 240, 240)}
TEXTURES = ["hstripes", "vstripes", "dstripes", "checks", "dots", "grid", "solid", "noise", "rings", "gradient",
            "zigzag", "bricks", "cross", "diamonds", "sparse_dots", "thick_hstripes", "thick_vstripes", "fine_checks",
            "waves", "speckle"]
MISSING, SPURIOUS = 0.10, 0.03
SKIES = {"day": (90, 150, 230), "dusk": (230, 130, 70), "night": (20, 25, 60)}
GROUNDS = {"grass": (60, 150, 50), "sand": (220, 200, 120), "water": (40, 90, 200), "rock": (120, 120, 120)}
OBJECTS = {  # name: (shape drawn, colour, frequency)
    "sun": ("circle", (250, 220, 40), 0.45), "tree": ("triangle", (20, 100, 30), 0.35),
    "house": ("square", (170, 60, 40), 0.25), "cloud": ("ring", (245, 245, 245), 0.15),
    "boat": ("bar", (140, 80, 30), 0.10), "flag": ("cross", (220, 30, 30), 0.06),
    "kite": ("triangle", (230, 60, 200), 0.04), "lamp": ("circle", (250, 250, 170), 0.03)}
LOCATIONS = {"nucleoplasm": 0.40, "cytosol": 0.30, "nucleoli": 0.15, "nuclear_membrane": 0.12,
             "plasma_membrane": 0.10, "mitochondria": 0.08, "centrosome": 0.05, "aggresome": 0.04}
CHANNEL_FILES = ("red", "green", "blue", "yellow")
HPA_DATA = {"id_column": "Id", "labels_column": "Target", "labels_csv": None, "channel_files": list(CHANNEL_FILES),
            "channels": len(CHANNEL_FILES)}


@dataclass(frozen=True)
class Competition:
    kind: str
    data_dir: Path
    solution_csv: Path
    train_clean_csv: Path
    names: list[str]
    kit_data: dict = field(default_factory=dict)  # kit.data settings this layout needs (cells: HPA's)


def label_names(kind: str) -> list[str]:
    if kind == "longtail":
        return [f"texture::{t}" for t in TEXTURES]
    if kind == "cells":
        return [f"location::{name}" for name in LOCATIONS]
    if kind == "scenes":
        return [f"sky::{k}" for k in SKIES] + [f"ground::{g}" for g in GROUNDS] + [f"object::{o}" for o in OBJECTS]
    return [f"shape::{s}" for s in SHAPES] + [f"colour::{c}" for c in COLOURS]


def hot(cells, n: int) -> np.ndarray:
    """(rows, n) bool targets from attribute_ids cells ("0 3 5": the column numbers these competitions use)."""
    y = np.zeros((len(cells), n), bool)
    for r, cell in enumerate(cells):
        y[r, [int(t) for t in str(cell).split()]] = True
    return y


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    cx, cy, w = (x0 + x1) / 2, (y0 + y1) / 2, max(2, (x1 - x0) // 5)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "cross":
        draw.rectangle((cx - w / 2, y0, cx + w / 2, y1), fill=fill)
        draw.rectangle((x0, cy - w / 2, x1, cy + w / 2), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=w)
    else:  # bar: a thin horizontal rectangle
        draw.rectangle((x0, cy - w / 2, x1, cy + w / 2), fill=fill)


def _shapes_image(size: int, noise: float, rng: np.random.Generator) -> tuple[Image.Image, list[int]]:
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 50, 3)))
    draw, labels = ImageDraw.Draw(image), set()
    for _ in range(int(rng.integers(1, 4))):
        s, c = int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS)))
        side = int(rng.integers(size // 4, size // 2 + 1))
        x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
        _draw_shape(draw, SHAPES[s], (x, y, x + side - 1, y + side - 1), list(COLOURS.values())[c])
        labels |= {s, len(SHAPES) + c}
    pixels = np.asarray(image, np.float32)
    if noise:
        pixels = pixels + rng.normal(0, noise * 255, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8), "RGB"), sorted(labels)


def _texture(t: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """One grey texture patch, values 0..1; a random phase so no two are pixel-identical."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) + rng.integers(0, 8, 2)[:, None, None]
    name = TEXTURES[t]
    period = {"thick_hstripes": 8, "thick_vstripes": 8, "fine_checks": 2, "sparse_dots": 8}.get(name, 4)
    pattern = {
        "hstripes": (y // 2) % 2, "vstripes": (x // 2) % 2, "dstripes": ((x + y) // 2) % 2,
        "checks": (x // 4 + y // 4) % 2, "dots": ((x % 4 < 2) & (y % 4 < 2)), "grid": ((x % 4 == 0) | (y % 4 == 0)),
        "solid": np.full_like(x, 0.8), "noise": rng.random((h, w)), "rings": (np.hypot(x - w, y - h) // 2) % 2,
        "gradient": x / max(1, x.max()), "zigzag": ((y + np.abs((x % 8) - 4)) // 2) % 2,
        "bricks": ((y // 4) % 2 == 0) | (((x + 4 * ((y // 4) % 2)) % 8) == 0), "cross": ((x % 6 == 3) | (y % 6 == 3)),
        "diamonds": ((np.abs(x % 8 - 4) + np.abs(y % 8 - 4)) < 3), "sparse_dots": ((x % period < 2) & (y % period < 2)),
        "thick_hstripes": (y // period) % 2, "thick_vstripes": (x // period) % 2,
        "fine_checks": (x // period + y // period) % 2, "waves": (np.sin(x / 2 + 2 * np.sin(y / 3)) > 0),
        "speckle": rng.random((h, w)) > 0.85}[name]
    return np.asarray(pattern, np.float32)


def _longtail_image(size: int, rng: np.random.Generator, freq: np.ndarray) -> tuple[Image.Image, list[int]]:
    k = int(rng.integers(1, 4))
    chosen = rng.choice(len(TEXTURES), size=k, replace=False, p=freq)
    canvas = np.zeros((size, size, 3), np.float32)
    bounds = np.linspace(0, size, k + 1).round().astype(int)  # k vertical bands, one texture each
    for t, a, b in zip(chosen, bounds[:-1], bounds[1:]):
        tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
        canvas[:, a:b] = _texture(int(t), size, b - a, rng)[..., None] * tint * 255
    return Image.fromarray(canvas.round().astype(np.uint8), "RGB"), sorted(int(t) for t in chosen)


def _scenes_image(size: int, rng: np.random.Generator) -> tuple[Image.Image, list[int]]:
    sky, ground = int(rng.integers(len(SKIES))), int(rng.integers(len(GROUNDS)))
    horizon = int(size * rng.uniform(0.45, 0.65))
    pixels = np.empty((size, size, 3), np.float32)
    pixels[:horizon] = np.asarray(list(SKIES.values())[sky]) * rng.uniform(0.8, 1.1)
    pixels[horizon:] = np.asarray(list(GROUNDS.values())[ground]) * rng.uniform(0.8, 1.1)
    pixels += rng.normal(0, 12, pixels.shape)  # texture, so no colour is exact
    image = Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8), "RGB")
    draw, labels = ImageDraw.Draw(image), [sky, len(SKIES) + ground]
    for o, (shape, colour, freq) in enumerate(OBJECTS.values()):
        if rng.random() < freq:
            side = int(rng.integers(size // 6, size // 3 + 1))
            x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
            _draw_shape(draw, shape, (x, y, x + side - 1, y + side - 1), colour)
            labels.append(len(SKIES) + len(GROUNDS) + o)
    return image, labels


def _cells_image(size: int, rng: np.random.Generator) -> tuple[list[Image.Image], list[int]]:
    """red, green, blue, yellow planes of one field of cells: the green pattern's place against the blue nuclei
    is the label; red (filaments) and yellow (a haze around the nuclei) are clutter."""
    planes = {c: Image.new("L", (size, size), int(rng.integers(0, 20))) for c in CHANNEL_FILES}
    draw = {c: ImageDraw.Draw(planes[c]) for c in CHANNEL_FILES}
    cells = []
    for _ in range(int(rng.integers(1, 3))):
        r = int(rng.integers(size // 10, size // 6 + 1))
        x, y = (int(v) for v in rng.integers(2 * r, size - 2 * r + 1, 2))
        cells.append((x, y, r))
        draw["yellow"].ellipse((x - 2 * r, y - 2 * r, x + 2 * r, y + 2 * r), fill=int(rng.integers(60, 120)))
        draw["blue"].ellipse((x - r, y - r, x + r, y + r), fill=int(rng.integers(150, 255)))
    for _ in range(int(rng.integers(2, 6))):
        draw["red"].line([tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)],
                         fill=int(rng.integers(100, 220)), width=1)
    labels = [j for j, freq in enumerate(LOCATIONS.values()) if rng.random() < freq][:3] or [0]
    g, names = draw["green"], list(LOCATIONS)
    for j in labels:
        bright = int(rng.integers(140, 256))
        for x, y, r in cells:
            box = lambda k: (x - k, y - k, x + k, y + k)  # noqa: E731
            if names[j] == "nucleoplasm":
                g.ellipse(box(r), fill=bright)
            elif names[j] == "cytosol":
                g.ellipse(box(2 * r), outline=bright, width=max(2, r // 2))
            elif names[j] == "nucleoli":
                for dx, dy in rng.integers(-r // 2, r // 2 + 1, (2, 2)):
                    g.ellipse((x + dx - 1, y + dy - 1, x + dx + 1, y + dy + 1), fill=bright)
            elif names[j] == "nuclear_membrane":
                g.ellipse(box(r), outline=bright, width=1)
            elif names[j] == "plasma_membrane":
                g.ellipse(box(2 * r + 2), outline=bright, width=1)
            elif names[j] == "mitochondria":
                for _ in range(6):
                    a, d = rng.uniform(0, 2 * np.pi), rng.uniform(1.2 * r, 2 * r)
                    px, py = x + d * np.cos(a), y + d * np.sin(a)
                    g.rectangle((px - 1, py, px + 1, py), fill=bright)
            elif names[j] == "centrosome":
                g.ellipse((x + r, y - 2, x + r + 3, y + 1), fill=bright)
            else:  # aggresome: one large bright blob beside the nucleus
                g.ellipse((x - 2 * r, y - 2 * r, x - r, y - r), fill=bright)
    return [planes[c] for c in CHANNEL_FILES], labels


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _csv(path: Path, header: str, rows: list[tuple]) -> None:
    path.write_text("".join(",".join(map(str, r)) + "\n" for r in [tuple(header.split(","))] + rows))


def generate(out: Path, kind: str, *, seed: int = 0, n_train: int = 600, n_test: int = 300,
             image_size: int | None = None) -> Competition:
    """Write competition `kind` under `out` (replacing an earlier one there) and return where its files lie."""
    if kind not in KINDS:
        raise ValueError(f"gencomp: kind must be one of {', '.join(KINDS)} (got {kind!r})")
    size, names = image_size or SIZES[kind], label_names(kind)
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    freq = 1.0 / np.arange(1, len(TEXTURES) + 1) ** 1.3  # Zipf: texture 0 common, the tail rare
    freq /= freq.sum()
    hpa = kind == "cells"
    id_col, label_col = ("Id", "Target") if hpa else ("id", "attribute_ids")
    data = Path(out) / "data"
    split_rows: dict[str, list[tuple[str, str]]] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        (data / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            if kind == "longtail":
                image, labels = _longtail_image(size, rng, freq)
            elif kind == "scenes":
                image, labels = _scenes_image(size, rng)
            elif hpa:
                image, labels = _cells_image(size, rng)
            else:
                image, labels = _shapes_image(size, 0.08 if kind == "noisy" else 0.0, rng)
            image_id = hashlib.sha1(f"gencomp:{kind}:{seed}:{split}:{i}".encode()).hexdigest()[:16]
            if hpa:
                for name, plane in zip(CHANNEL_FILES, image):
                    (data / split / f"{image_id}_{name}.png").write_bytes(_png(plane))
            else:
                (data / split / f"{image_id}.png").write_bytes(_png(image))
            rows.append((image_id, labels))
        split_rows[split] = rows
    train = []
    for image_id, labels in split_rows["train"]:
        if kind == "noisy":  # corrupt the train labels only: drop true ones, add spurious ones
            hot = np.zeros(len(names), bool)
            hot[labels] = True
            flip = np.where(hot, rng.random(len(names)) < MISSING, rng.random(len(names)) < SPURIOUS)
            labels = np.flatnonzero(hot ^ flip).tolist()
        train.append((image_id, " ".join(map(str, labels))))
    _csv(data / "train.csv", f"{id_col},{label_col}", train)
    _csv(Path(out) / "train_clean.csv", f"{id_col},{label_col}",
         [(i, " ".join(map(str, labels))) for i, labels in split_rows["train"]])
    if not hpa:  # HPA ships no labels file: its label ids are the numbers in Target
        _csv(data / "labels.csv", "attribute_id,attribute_name", list(enumerate(names)))
    test = split_rows["test"]
    submission = "Predicted" if hpa else label_col
    _csv(data / "sample_submission.csv", f"{id_col},{submission}", [(i, "0") for i, _ in test])
    public = np.zeros(len(test), bool)
    public[rng.permutation(len(test))[:len(test) // 2]] = True
    _csv(Path(out) / "solution.csv", f"{id_col},{submission},Usage",
         [(i, " ".join(map(str, labels)), "Public" if p else "Private") for (i, labels), p in zip(test, public)])
    return Competition(kind, data, Path(out) / "solution.csv", Path(out) / "train_clean.csv", names,
                       dict(HPA_DATA) if hpa else {})
