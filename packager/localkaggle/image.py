"""The local Kaggle's "image": which Python packages a local kernel can import.

A real kernel sees the Kaggle image's packages plus whatever its wheels dataset installs. Locally the image
is this interpreter's (the project venv's) installed distributions minus those named in
`packager/localkaggle/local-image-excludes.txt`: the wheels a real kernel must bring itself, and the tools' own
packages. Were they importable locally, a broken wheels dataset would pass here and fail on Kaggle.

The allowed distributions are gathered into a "site farm": a folder of symlinks to their top-level modules
and `.dist-info` folders, found from each distribution's RECORD. A top-level folder shared by several
distributions (namespace packages such as `nvidia/`) is linked whole when all of them are allowed and
split one level down otherwise. The runner gives each kernel a throwaway venv whose only site-packages
entry is a `.pth` naming the farm, so `import timm` fails in a local kernel while `import torch` works, and
`pip install` lands in that throwaway venv, never in the tools' venv. The farm is built once and
cached by a hash of the venv's distribution list and the excludes; a new install or an edited excludes
file gives a new farm.

Local kernels run on this venv's Python (3.11); the real image is Python 3.12.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from packager.errors import UserError

EXCLUDES_FILE = Path(__file__).with_name("local-image-excludes.txt")  # package data: found wherever kpack is installed
CACHE_ENV = "KPACK_IMAGE_CACHE"  # where farms are kept; default: <venv>/kpack-image
FARM_FORMAT = 1  # bump when the farm's layout changes, so old caches are not reused

_lock = threading.Lock()


def normalize(name: str) -> str:
    """PEP 503 name normalization: 'Huggingface_Hub' and 'huggingface-hub' are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def site_dirs() -> list[Path]:
    """The venv's site-packages (purelib and platlib; the same folder on most installs)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(Path(paths[key]) for key in ("purelib", "platlib")))


def read_excludes(path: Path | None = None) -> frozenset[str]:
    path = path or EXCLUDES_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing; it lists the venv's packages a local kernel must not see")
    names = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return frozenset(normalize(n) for n in names if n)


@dataclass(frozen=True)
class _Dist:
    name: str  # normalized
    version: str
    site: Path
    dist: metadata.Distribution

    def entries(self) -> list[tuple[str, ...]]:
        """Path parts, relative to its site folder, of every file it installed there."""
        files = self.dist.files
        if files is None:  # no RECORD: fall back to the top-level names it declares, and its metadata
            top = (self.dist.read_text("top_level.txt") or "").split()
            return [(t,) for t in top] + [(Path(self.dist._path).name,)]  # type: ignore[attr-defined]
        return [f.parts for f in files if f.parts and f.parts[0] != ".."]


def _installed() -> list[_Dist]:
    found: dict[str, _Dist] = {}
    for site in site_dirs():
        for dist in metadata.distributions(path=[str(site)]):
            name = normalize(dist.metadata["Name"] or "")
            if name and name not in found:
                found[name] = _Dist(name, dist.version, site, dist)
    return sorted(found.values(), key=lambda d: d.name)


def _fingerprint(dists: list[_Dist], excludes: frozenset[str]) -> str:
    digest = hashlib.sha256(f"format {FARM_FORMAT}\n{sys.version}\n".encode())
    for d in dists:
        digest.update(f"{d.name}=={d.version}@{d.site}\n".encode())
    digest.update(("excludes " + ",".join(sorted(excludes))).encode())
    return digest.hexdigest()[:20]


def _skip(name: str) -> bool:
    # .pth files only run under site.py, which a kernel's farm never gets; __pycache__ is rebuilt on import.
    return name == "__pycache__" or name.endswith(".pth")


def _link_tree(farm: Path, site: Path, prefix: tuple[str, ...], owners: dict[tuple[str, ...], set[str]],
               allowed: set[str]) -> None:
    """Link each child of `prefix` whole when only allowed distributions own it; split mixed folders."""
    children = sorted({key[len(prefix)] for key in owners if len(key) > len(prefix) and key[:len(prefix)] == prefix})
    for child in children:
        path = prefix + (child,)
        if _skip(child) or not (site / Path(*path)).exists():
            continue
        who = owners[path]
        if who <= allowed:
            (farm / Path(*path)).symlink_to(site / Path(*path))
        elif who & allowed and (site / Path(*path)).is_dir() and not (site / Path(*path)).is_symlink():
            (farm / Path(*path)).mkdir()
            _link_tree(farm, site, path, owners, allowed)


def _build(farm_site: Path, dists: list[_Dist], excludes: frozenset[str]) -> None:
    for site in {d.site for d in dists}:
        owners: dict[tuple[str, ...], set[str]] = {}
        for d in (d for d in dists if d.site == site):
            for parts in d.entries():
                for i in range(1, len(parts) + 1):
                    owners.setdefault(parts[:i], set()).add(d.name)
        allowed = {d.name for d in dists if d.site == site and d.name not in excludes}
        _link_tree(farm_site, site, (), owners, allowed)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(sys.prefix) / "kpack-image")


def _farm() -> tuple[Path, dict[str, str]]:
    excludes = read_excludes()
    dists = _installed()
    image = {d.name: d.version for d in dists if d.name not in excludes}
    root = cache_root() / _fingerprint(dists, excludes)
    with _lock:
        if not (root / "site").is_dir():
            root.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
            try:
                (tmp / "site").mkdir()
                _build(tmp / "site", dists, excludes)
                (tmp / "distributions.json").write_text(json.dumps(image, indent=1, sort_keys=True) + "\n")
                os.rename(tmp, root)  # atomic; another process may have won the race, which is fine
            except OSError:
                if not (root / "site").is_dir():
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return root / "site", image


def image_site() -> Path:
    """The folder a local kernel imports its packages from (built on first use, then cached)."""
    return _farm()[0]


def image_distributions() -> dict[str, str]:
    """The local image's distributions: normalized name -> version (what a local kernel has without wheels)."""
    return _farm()[1]
