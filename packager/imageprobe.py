"""`kpack probe-image`: read the kernel image's installed packages, from inside a kernel, into datasets_meta/.

A small probe kernel (no inputs, no internet, the train kernel's accelerator so it gets the same image) writes
`kpack-image-probe.txt` to its output: every distribution importlib.metadata finds as `name==version`, under
`# key: value` header lines with the Python version, platform and glibc. The packager pushes it through the
same door as every push (packager.push / packager.watch), waits, downloads the output and rewrites the snapshot:

- backend kaggle -> datasets_meta/kaggle-image-packages.txt (what the wheels dataset resolves against)
- backend local  -> datasets_meta/local-image-packages.txt (the local build then reads it instead of the local
  image itself, as the Kaggle build reads its snapshot)

The header's `# source: probe` and `# probed: <UTC time>` lines mark a snapshot as read, not guessed: only
then does the wheels builder leave a package to the image. `kpack push` to backend kaggle probes first
when the snapshot is a guess, missing or older than 30 days (`ensure_probed`; KPACK_NO_PROBE=1 skips it).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

from packaging.utils import canonicalize_name

from packager import wheels
from packager.errors import UserError
from packager.fsutil import atomic_write_text
from packager.wheels import parse_snapshot

PROBE_SLUG = "kpack-image-probe"
PROBE_TITLE = "Kpack Image Probe"
PROBE_FILE = "kpack-image-probe.txt"
CODE_FILE = "kpack_image_probe.py"
PROBE_DIR = Path("build") / "probe"
WAIT_S = 1800.0
SESSION_S = 900  # the probe takes seconds; a stuck session is killed after 15 minutes

# The probe kernel: stdlib only, runs on the image as it is (nothing installed, nothing mounted).
PROBE_SCRIPT = '''\
"""kpack image probe: records the packages this image has (name==version) for the wheels dataset builder."""
import importlib.metadata as metadata
import os
import platform
import re
import sys

root = os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle"
working = os.path.join(root, "working")
os.makedirs(working, exist_ok=True)

found = {}
for dist in metadata.distributions():  # sys.path order: the first of a name is the one import uses
    name = (dist.metadata["Name"] or "").strip()
    if name and re.sub(r"[-_.]+", "-", name).lower() not in found:
        found[re.sub(r"[-_.]+", "-", name).lower()] = (name, dist.version)

libc, libc_version = platform.libc_ver()
lines = [
    "# kpack image probe",
    "# python: " + platform.python_version(),
    "# implementation: " + sys.implementation.name,
    "# platform: " + platform.platform(),
    "# machine: " + platform.machine(),
    "# glibc: " + (libc_version if libc == "glibc" else "none"),
    "# executable: " + sys.executable,
]
lines += [name + "==" + version for _, (name, version) in sorted(found.items())]
path = os.path.join(working, "''' + PROBE_FILE + '''")
with open(path + ".tmp", "w") as f:
    f.write("\\n".join(lines) + "\\n")
os.replace(path + ".tmp", path)
print("kpack image probe: %d distributions, Python %s" % (len(found), platform.python_version()))
'''


STALE_DAYS = 30  # Kaggle rebuilds its image every few weeks
NO_PROBE_ENV = "KPACK_NO_PROBE"


def snapshot_path(cfg, root: Path | None = None) -> Path:
    return wheels.snapshot_path(cfg.backend, root)


def parse_probe(text: str, source: str = PROBE_FILE) -> tuple[dict[str, str], dict[str, str]]:
    """The probe's output -> ({canonical name: version}, header); refuses an output that is not a probe's."""
    packages, meta = parse_snapshot(text)
    if not text.startswith("# kpack image probe") or "python" not in meta:
        raise UserError(f"{source}: not a kpack image probe output (no '# kpack image probe' / '# python:' header)")
    if not packages:
        raise UserError(f"{source}: the probe found no packages at all; is importlib.metadata working there?")
    return packages, meta


def render_snapshot(packages: dict[str, str], meta: dict[str, str], backend: str, kernel: str, when: str) -> str:
    """The snapshot file: a header saying where and when it was read, then `name==version` sorted by name."""
    image = "the Kaggle image" if backend == "kaggle" else "the local Kaggle's image"
    header = [
        f"# Packages of {image}, read by `kpack probe-image` from inside a kernel; refresh it the same way.",
        "# The wheels builder skips what is listed here at the same version, and resolves pins against it.",
        "# source: probe",
        f"# kernel: {kernel}",
        f"# probed: {when}",
    ]
    for key in ("python", "implementation", "platform", "machine", "glibc"):
        if key in meta:
            header.append(f"# {key}: {meta[key]}")
    body = [f"{name}=={version}" for name, version in sorted(packages.items())]
    return "\n".join(header + body) + "\n"


def diff_summary(old: dict[str, str], new: dict[str, str], limit: int = 8) -> str:
    """'3 added, 1 removed, 2 changed (numpy 2.0.2 -> 2.1.3, ...)'; 'no change' when the same."""
    old = {canonicalize_name(k): v for k, v in old.items()}
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(n for n in set(old) & set(new) if old[n] != new[n])
    if not (added or removed or changed):
        return "no change"
    shown = [f"{n} {old[n]} -> {new[n]}" for n in changed[:limit]]
    more = f", {len(changed) - limit} more" if len(changed) > limit else ""
    return (f"{len(added)} added, {len(removed)} removed, {len(changed)} changed"
            + (f" ({', '.join(shown)}{more})" if shown else ""))


def refresh_snapshot(cfg, probe_text: str, kernel: str, root: Path | None = None,
                     when: str | None = None) -> str:
    """Write the snapshot for cfg.backend from a probe's output; returns a one-line summary."""
    packages, meta = parse_probe(probe_text)
    path = snapshot_path(cfg, root)
    old, _ = parse_snapshot(path.read_text()) if path.is_file() else ({}, {})
    when = when or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_text(path, render_snapshot(packages, meta, cfg.backend, kernel, when))
    return (f"{path}: {len(packages)} packages, Python {meta['python']} (from {kernel}); "
            f"{diff_summary(old, packages)}")


def probe_accelerator(cfg) -> str:
    """The train kernel's accelerator: Kaggle's GPU and CPU images differ (torch builds, CUDA libraries)."""
    kernel = cfg.kernels.get("train")
    return kernel.accelerator if kernel is not None else "None"


def write_probe_kernel(cfg, folder: Path) -> Path:
    """The probe kernel's folder: its script and kernel-metadata.json (as packager.metadata writes them)."""
    import json

    from packager.metadata import accelerator_flags

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / CODE_FILE, PROBE_SCRIPT)
    meta = {
        "id": f"{cfg.kaggle_user}/{PROBE_SLUG}",
        "title": PROBE_TITLE,
        "code_file": CODE_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_internet": False,
        **accelerator_flags(probe_accelerator(cfg)),
        "dataset_sources": [],
        "competition_sources": [],
        "kernel_sources": [],
        "model_sources": [],
    }
    atomic_write_text(folder / "kernel-metadata.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


class _ProbeSettings(SimpleNamespace):
    """What packager.push.push_folder reads of a project config: cfg.kernel(kind) -> session limit, shape."""

    def kernel(self, kind: str):
        return SimpleNamespace(session_hours=SESSION_S / 3600, accelerator=self.accelerator)


def probe(cfg, root: Path | None = None, wait_s: float = WAIT_S, api=None) -> str:
    """Push the probe kernel, wait for it, download its output and refresh the snapshot; returns a summary."""
    from packager import kaggle_api, push, watch

    root = Path(root or ".")
    folder = write_probe_kernel(cfg, root / PROBE_DIR / "kernel")
    api = api or kaggle_api.connect(cfg)
    ref = push.push_folder(api, _ProbeSettings(accelerator=probe_accelerator(cfg)), "probe", folder)
    outcome = watch.wait_for(api, ref, timeout_s=wait_s)
    if outcome.status != "COMPLETE":
        failure = f": {outcome.failure}" if outcome.failure else ""
        raise UserError(f"{ref}: the image probe ended {outcome.status}{failure}; see `kpack output "
                        f"{ref.ref}/{ref.version}` for its log", exit_code=1)
    out = watch.download(api, ref, root / PROBE_DIR / "output" / f"v{ref.version}")
    hits = sorted(out.rglob(PROBE_FILE))
    if not hits:
        raise UserError(f"{ref}: its output in {out} has no {PROBE_FILE}", exit_code=1)
    return refresh_snapshot(cfg, hits[0].read_text(), f"{ref.ref}/{ref.version}", root)


# --------------------------------------------------------------------------------------------- before a push

def snapshot_problem(path: Path, now=None) -> str | None:
    """Why the snapshot in `path` should be probed again ('a guess', 'missing', 'probed 41 days ago'); None when
    a probe wrote it within STALE_DAYS."""
    snapshot = wheels.snapshot_file(path)
    if snapshot is None:
        return "missing"
    if snapshot.source != wheels.PROBED or snapshot.probed_at is None:
        return "a guess"
    age = snapshot.age_days(now)
    return f"probed {age:.0f} days ago" if age > STALE_DAYS else None


def _probe_skipped() -> bool:
    return os.environ.get(NO_PROBE_ENV, "").strip().lower() not in ("", "0", "no", "false")


def ensure_probed(cfg, root: Path | None = None) -> None:
    """Before a push to `backend: kaggle`: probe the image first when its snapshot is a guess, missing or older
    than STALE_DAYS (a one-minute kernel), so the wheels dataset leaves to the image only what it really has.
    With KPACK_NO_PROBE set, say in one line how to probe instead (a guessed snapshot then ships every wheel)."""
    if cfg.backend != "kaggle":
        return
    path = snapshot_path(cfg, root)
    problem = snapshot_problem(path)
    if problem is None:
        return
    if _probe_skipped():
        if problem == "missing":
            raise UserError(f"{path}: no image snapshot and {NO_PROBE_ENV} is set; run `kpack probe-image` (a "
                            f"one-minute kernel), or unset {NO_PROBE_ENV} and kpack push runs it first")
        then = ("every package ships as a wheel, none is left to the image" if problem == "a guess" else
                "a pinned package the image no longer has at that version stops the kernel")
        print(f"note: the image snapshot {path} is {problem} and {NO_PROBE_ENV} is set, so it is not probed: "
              f"{then}; refresh it with `kpack probe-image`", flush=True)
        return
    print(f"the image snapshot {path} is {problem}: probing the Kaggle image first (a one-minute kernel, "
          f"{PROBE_SLUG}; set {NO_PROBE_ENV}=1 to skip)", flush=True)
    from packager import kaggle_api

    api = kaggle_api.connect(cfg)  # credentials and kaggle_user first: the push would stop on them too
    try:
        print(probe(cfg, root, api=api), flush=True)
    except UserError as err:
        if getattr(err, "unreachable", False):  # Kaggle out of reach: the push would fail the same way
            raise
        raise UserError(f"{err}; or push without the probe: {NO_PROBE_ENV}=1 kpack push ...",
                        exit_code=err.exit_code) from None
