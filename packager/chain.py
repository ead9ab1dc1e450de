"""Session chaining: keep training going across Kaggle's per-session time limit.

When a session's output holds a state.json whose `done` is false, the next session is pushed: the same script,
with the previous session's kernel added to its kernel_sources (a kernel reading its own earlier output is not
a path known to work on Kaggle, a kernel reading another kernel's output is). Which slug runs it is the
kernel's `chain` setting:

- alternate (the default): two kernels, <slug> for sessions 1, 3, 5, ... and <slug>-b for 2, 4, 6, ...; each new
  version reads the other kernel's newest output. Kaggle attaches secrets per notebook in its web UI (no API
  call does), so a secret is attached to these two kernels once, and a run of 20 sessions leaves two kernels
  on the profile, not 20. `-b`: short (the 50-character slug limit), and no session number, which it is not.
- distinct: a new kernel per session, <slug>, <slug>-s2, <slug>-s3, ... (each needs its secrets attached).

The kernel finds the checkpoint by searching /kaggle/input.
The chain stops when state.json says done (or is missing), when a session does not end COMPLETE, when a
session made no progress (its state.json has the step and epoch of the one before: start-up left no time to
train, so every further session would do the same), or after `max_sessions` sessions
(kernels.<kind>.max_sessions when the config has it, else KPACK_MAX_SESSIONS, else 20).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from packager.errors import env_number
from packager.fsutil import atomic_write_text

STATE_FILE = "state.json"
DEFAULT_MAX_SESSIONS = 20
SLUG_MAX = 50


ALTERNATE_SUFFIX = "-b"  # kpack_runtime/__init__.py names the same pair: keep them alike


def session_slug(base: str, session: int, mode: str = "alternate") -> str:
    """The slug of session `session` (1-based). alternate: <base>, <base>-b, <base>, ...; distinct: <base>,
    <base>-s2, <base>-s3, ..."""
    if session <= 1 or (mode == "alternate" and session % 2 == 1):
        return base
    suffix = ALTERNATE_SUFFIX if mode == "alternate" else f"-s{session}"
    return base[: SLUG_MAX - len(suffix)].rstrip("-") + suffix


def chain_mode(cfg, kind: str) -> str:
    return getattr(cfg.kernel(kind), "chain", None) or "alternate"


def chain_slugs(cfg, kind: str) -> set[str]:
    """Every slug KIND's chain can run under (the first 50 sessions, for distinct)."""
    base, mode = cfg.kernel(kind).slug, chain_mode(cfg, kind)
    return {session_slug(base, k, mode) for k in range(1, (3 if mode == "alternate" else 51))}


def max_sessions(cfg, kind: str) -> int:
    configured = getattr(cfg.kernel(kind), "max_sessions", None)
    if configured:
        return int(configured)
    return env_number("KPACK_MAX_SESSIONS", DEFAULT_MAX_SESSIONS, int, minimum=1)


def read_state(output_dir: str | os.PathLike) -> dict | None:
    """The session's state.json (the shallowest one in its output), or None when there is none."""
    found = sorted(Path(output_dir).rglob(STATE_FILE), key=lambda p: (len(p.parts), str(p)))
    for path in found:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return None


def needs_another_session(output_dir: str | os.PathLike) -> bool:
    state = read_state(output_dir)
    return state is not None and state.get("done") is False


def progress(output_dir: str | os.PathLike) -> tuple | None:
    """Where training stands after a session, (step, epoch), or None when its state.json does not say."""
    state = read_state(output_dir) or {}
    return (state["step"], state.get("epoch")) if "step" in state else None


def prepare_session(cfg, kind: str, folder: str | os.PathLike, session: int, previous: str,
                    out_root: str | os.PathLike = Path("build") / "kernels") -> Path:
    """A kernel folder for session `session`: the built kernel's script, and its metadata with the session's
    slug and title and the previous session's kernel (`previous`, owner/slug) added to its kernel_sources.
    It lives in build/kernels/sessions/<slug>/s<N>/ (alternate reuses the built kernel's slug)."""
    from packager.metadata import KERNEL_METADATA, kernel_metadata, title_for

    folder = Path(folder)
    built = json.loads((folder / KERNEL_METADATA).read_text())
    slug = session_slug(cfg.kernel(kind).slug, session, chain_mode(cfg, kind))
    dest = Path(out_root) / "sessions" / cfg.kernel(kind).slug / f"s{session}"
    sources = [s for s in built.get("kernel_sources", []) if s != previous] + [previous]
    meta = kernel_metadata(cfg, kind, built["code_file"], built.get("dataset_sources", []), sources,
                           slug=slug, title=title_for(slug))
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / built["code_file"], dest / built["code_file"])
    atomic_write_text(dest / KERNEL_METADATA, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return dest
