"""Files in working/ that appear whole or not at all, and whose temp files never ship as output.

    with atomic.replacing(working / "best.pt") as f:   # f: a binary file; fsynced and renamed into place
        f.write(data)
    atomic.write_text(path, text); atomic.save_npy(path, array); atomic.copy(src, dst)
    atomic.clean(working)                             # at start-up: temp files a killed write left

Kaggle saves everything in /kaggle/working when a session ends, a session killed mid-write included, so a temp
file written beside its target would ship. A temp file is therefore written in the kernel's scratch folder
(<kaggle temp>/kpack-writes, not saved) and renamed from there: a rename is atomic only within one filesystem
and one mount, so that is probed once per target folder (whether /kaggle/temp and /kaggle/working share a
mount on Kaggle is not documented: either answer works). Where the probe fails the temp file goes beside its
target under a TEMP_PREFIX name, and clean() removes such files at the next start.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

TEMP_PREFIX = ".kpack-tmp."
SCRATCH = "kpack-writes"
# what older kits named their temp files (`.checkpoint.pt.x1y2.tmp`, `.oof.npy.tmp.npy`): cleaned as well
LEGACY_TEMP = (".*.tmp", ".*.tmp.npy")

_temp_dir_for: dict[str, Path] = {}


def _scratch() -> Optional[Path]:
    """<kaggle temp>/kpack-writes, or None outside a kernel (no Kaggle root: a dev machine has no /kaggle)."""
    from kpack_runtime import inputs

    if not inputs.kaggle_root().is_dir():
        return None
    try:
        folder = inputs.temp_dir() / SCRATCH
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError:  # a root that cannot hold a temp folder
        return None


def temp_dir_for(folder: Path) -> Path:
    """Where temp files for targets in `folder` are written: the scratch folder when a rename from it into
    `folder` works, else `folder` itself."""
    key = os.path.realpath(folder)
    if key not in _temp_dir_for:
        scratch, chosen = _scratch(), Path(folder)
        if scratch is not None:
            fd, probe = tempfile.mkstemp(dir=scratch, prefix=TEMP_PREFIX)
            os.close(fd)
            landed = Path(folder) / Path(probe).name
            try:
                os.rename(probe, landed)
                chosen = scratch
            except OSError:  # EXDEV: another filesystem or mount
                pass
            finally:
                Path(probe).unlink(missing_ok=True)
                landed.unlink(missing_ok=True)
        _temp_dir_for[key] = chosen
    return _temp_dir_for[key]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path, before_replace: Optional[Callable[[], None]] = None) -> Iterator:
    """Yield a binary file whose bytes replace `path` at once when the block ends (fsynced first); nothing
    changes at `path` when the block raises. `before_replace` runs between the fsync and the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    where = temp_dir_for(path.parent)
    where.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=where, prefix=f"{TEMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from other readers of the output
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    with replacing(path) as f:
        f.write(text.encode())


def save_npy(path: Path, array: np.ndarray) -> None:
    with replacing(path) as f:
        np.save(f, array)


def copy(source: Path, target: Path) -> None:
    with replacing(target) as f, open(source, "rb") as src:
        shutil.copyfileobj(src, f, 1 << 20)


def temp_files(folder: Path) -> list[Path]:
    """Temp files of killed writes in `folder` (top level, where the kit writes)."""
    folder = Path(folder)
    found = {p for pattern in (f"{TEMP_PREFIX}*", *LEGACY_TEMP) for p in folder.glob(pattern) if p.is_file()}
    return sorted(found)


def clean(folder: Path) -> None:
    """Remove what killed writes left: temp files in `folder`, and in the scratch folder when it serves it."""
    folders = [Path(folder)]
    scratch = temp_dir_for(folder)
    if scratch != Path(folder):
        folders.append(scratch)
    for where in folders:
        for stale in temp_files(where):
            stale.unlink(missing_ok=True)
