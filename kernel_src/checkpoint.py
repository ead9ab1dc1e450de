"""Checkpoints that survive a kill at any moment, and the search for the newest valid one.

A checkpoint file is torch.save's bytes followed by a trailer:

    payload | meta (JSON: sha256 and size of the payload, step, epoch, training hash, ...) | u64 len(meta) | MAGIC

It is written to a temp file (atomic.py: one that never ships as output), fsynced, and os.replace'd in; with
keep_previous the file it replaces first moves to `checkpoint-prev.pt`, so a valid checkpoint exists at every
instant. On load the trailer and the payload's sha256 are checked: a truncated or corrupt file is skipped for an
older valid one.

    seconds = save(working / NAME, state, meta)
    found = latest([working] + input folders, training_hash)   # Found(path, meta, state) or None
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from . import atomic

NAME = "checkpoint.pt"
PREVIOUS = "checkpoint-prev.pt"
MAGIC = b"KPACKCK1"
_TAIL = struct.Struct(">Q8s")


class CheckpointError(RuntimeError):
    """One line: a checkpoint that cannot be used, and why."""


class _Hashing(io.RawIOBase):
    """A write-only file wrapper that hashes and counts what passes through."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)


def save(path: Path, state: dict, meta: dict, keep_previous: bool = True) -> float:
    """Write `state` atomically at `path` (see the module docstring); returns the seconds it took."""
    started = time.monotonic()
    path = Path(path)

    def keep() -> None:
        if keep_previous and path.exists():
            os.replace(path, path.with_name(PREVIOUS))

    with atomic.replacing(path, before_replace=keep) as f:
        hashing = _Hashing(f)
        torch.save(state, hashing)
        trailer = json.dumps({**meta, "sha256": hashing.sha.hexdigest(), "size": hashing.size},
                             sort_keys=True).encode()
        f.write(trailer + _TAIL.pack(len(trailer), MAGIC))
    return time.monotonic() - started


def read_meta(path: Path) -> Optional[dict]:
    """The trailer's metadata, or None when the file is not a complete checkpoint (cheap: reads the end)."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            if end < _TAIL.size:
                return None
            f.seek(end - _TAIL.size)
            length, magic = _TAIL.unpack(f.read(_TAIL.size))
            if magic != MAGIC or length > end - _TAIL.size:
                return None
            f.seek(end - _TAIL.size - length)
            meta = json.loads(f.read(length))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("size") != end - _TAIL.size - length:
        return None
    return meta


def load(path: Path, meta: Optional[dict] = None) -> dict:
    """The state saved at `path`, after checking its sha256; CheckpointError when it does not check out."""
    meta = meta or read_meta(path)
    if meta is None:
        raise CheckpointError(f"{path}: not a complete checkpoint")
    with open(path, "rb") as f:
        payload = f.read(meta["size"])
    if len(payload) != meta["size"] or hashlib.sha256(payload).hexdigest() != meta["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch (damaged)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


@dataclass
class Found:
    path: Path
    meta: dict
    state: dict


def candidates(folders: Iterable[Path], extra: Iterable[Path] = ()) -> list[Path]:
    paths: list[Path] = []
    for folder in folders:
        paths += [Path(folder) / NAME, Path(folder) / PREVIOUS]
    paths += list(extra)
    seen, unique = set(), []
    for p in paths:
        key = os.path.realpath(p)
        if key not in seen and p.is_file():
            seen.add(key)
            unique.append(p)
    return unique


def latest(paths: list[Path], training_hash: str, log=print, world: Optional[int] = None) -> Optional[Found]:
    """The newest (highest step) valid checkpoint among `paths`; a damaged one is reported and skipped.
    The newest valid one written by another process count (`world`) or under another training hash is refused
    with one line; the count first, as `batch_size: auto` resolves by it and so changes the hash too."""
    metas = [(p, read_meta(p)) for p in paths]
    for p, m in metas:
        if m is None:
            log(f"[kpack] skipping {p}: incomplete or not a checkpoint")
    ranked = sorted(((p, m) for p, m in metas if m is not None),
                    key=lambda pm: (pm[1].get("step", -1), pm[1].get("written", 0)), reverse=True)
    for path, meta in ranked:
        try:
            state = load(path, meta)
        except Exception as exc:  # damaged payload, unpicklable: the next older one may be fine
            log(f"[kpack] skipping {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        trained_with = meta.get("world")  # in every checkpoint's meta since the kit's first one
        if world is not None and trained_with is not None and trained_with != world:
            raise CheckpointError(
                f"{path} was trained with {trained_with} processes, this run has {world}; "
                "the data order depends on it, so resume with the same number")
        if meta.get("training_hash") != training_hash:
            raise CheckpointError(
                f"{path} was written by another training config (hash {meta.get('training_hash')}, this config "
                f"{training_hash}); restore that config's kit settings, or start fresh without this input")
        return Found(path, meta, state)
    return None


def clean_temp(folder: Path) -> None:
    """Remove temp files killed writes left behind (any of the kit's, not only checkpoints')."""
    atomic.clean(folder)


def save_model(path: Path, model_state: dict, info: dict[str, Any]) -> None:
    """A weights-only file for inference: {"model": backbone state dict, **info}; atomic. `info` (plain data)
    goes through JSON first: pickle writes a string seen before as a back-reference, so the bytes would depend
    on whether two equal strings are one object (a literal) or two (one read back from a checkpoint)."""
    info = json.loads(json.dumps(info))
    save(path, {"model": model_state, **info}, {"kind": "model"}, keep_previous=False)


def load_model(path: Path) -> dict:
    """What save_model wrote (checked), or a plain torch file of weights."""
    if read_meta(Path(path)) is not None:
        return load(Path(path))
    return torch.load(path, map_location="cpu", weights_only=False)
