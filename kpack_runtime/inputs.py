"""Where a kernel finds things, on Kaggle and on the local Kaggle alike.

The local Kaggle cannot write `/kaggle`, so each run gets its own root standing in for it, passed in
KPACK_KAGGLE_ROOT. Inputs are found by searching both mount layouts, never by one hard-coded path:
legacy `input/<slug>/` and newer `input/competitions/<slug>/`, `input/datasets/<owner>/<slug>/`,
`input/notebooks/<owner>/<slug>/`.
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "KPACK_KAGGLE_ROOT"


def kaggle_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or "/kaggle")


def input_dir() -> Path:
    return kaggle_root() / "input"


def working_dir() -> Path:
    return kaggle_root() / "working"


def temp_dir() -> Path:
    """Scratch space that is not saved as output (Kaggle's /kaggle/temp); created on demand."""
    path = kaggle_root() / "temp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _slug(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def candidates(ref: str, kind: str) -> list[Path]:
    """Places a mounted input may be, newest layout first. kind: competition, dataset or notebook."""
    base, slug = input_dir(), _slug(ref)
    owner = ref.split("/", 1)[0] if "/" in ref else "*"
    newer = {"competition": base / "competitions" / slug,
             "dataset": base / "datasets" / owner / slug,
             "notebook": base / "notebooks" / owner / slug}[kind]
    return [newer, base / slug]


def find_input(ref: str, kind: str) -> Path | None:
    """The folder of a mounted competition, dataset ('owner/slug') or kernel output, or None."""
    for path in candidates(ref, kind):
        if "*" in str(path):
            hits = sorted(path.parent.parent.glob(f"*/{path.name}"))
            if hits:
                return hits[0]
        elif path.is_dir():
            return path
    return None


NEWER_LAYOUT = ("competitions", "datasets", "notebooks", "models")


def find_files(name: str) -> list[Path]:
    """Every file called `name` anywhere under the inputs (e.g. a checkpoint an earlier session wrote), each
    once: an input mounted in both layouts (the local Kaggle mounts both; Kaggle one) is one file, named by its
    newer-layout path."""
    root = input_dir()
    if not root.is_dir():
        return []
    found, seen = [], set()
    for path in sorted(root.rglob(name), key=lambda p: (p.relative_to(root).parts[0] not in NEWER_LAYOUT, p)):
        try:
            stat = path.stat()
        except OSError:
            continue
        if (stat.st_dev, stat.st_ino) not in seen:  # two mounts of one folder: the same file
            seen.add((stat.st_dev, stat.st_ino))
            found.append(path)
    return sorted(found)


def config_value(obj, name: str, default=None):
    """A field of the kernel's config, whether it arrives as the resolved dict or as the packager's model."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)
