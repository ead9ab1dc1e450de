"""Content hashes and atomic writes: same inputs give the same hash, and nothing is ever half-written."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """sha256 of files remembered in a JSON file by (device, inode), size and modification time, so that a
    file not touched since it was hashed is not read again (git's index does the same): re-pushing code
    beside gigabytes of unchanged weights then reads none of them. A file modified less than RACY_NS before
    it was hashed is not remembered, since a write within the clock's resolution could keep its size and time."""

    RACY_NS = 2_000_000_000

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.known = dict(json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            self.known = {}
        self.used: dict[str, list] = {}

    def sha256(self, path: str | os.PathLike) -> str:
        st = os.stat(path)
        key, stamp = f"{st.st_dev}:{st.st_ino}", [st.st_size, st.st_mtime_ns]
        entry = self.known.get(key)
        if not (isinstance(entry, list) and len(entry) == 3 and entry[:2] == stamp):
            entry = [*stamp, file_sha256(path)]
            after = os.stat(path)
            if [after.st_size, after.st_mtime_ns] != stamp or time.time_ns() - st.st_mtime_ns < self.RACY_NS:
                return entry[2]
        self.used[key] = entry
        return entry[2]

    def save(self) -> None:
        """Keep what this run hashed or looked up; entries of files it did not see are dropped."""
        atomic_write_text(self.path, json.dumps(self.used, sort_keys=True) + "\n")


def tree_hash(root: str | os.PathLike, exclude: tuple[str, ...] = ("dataset-metadata.json",),
              sha256=file_sha256) -> str:
    """sha256 over every file's relative path and content (by `sha256`, e.g. a HashCache's), in sorted order;
    names in `exclude` are skipped."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in exclude):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(sha256(path).encode() + b"\n")
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())
