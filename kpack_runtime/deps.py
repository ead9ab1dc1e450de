"""Inside the kernel: make the wheels dataset importable, then check every pinned version, before anything runs.

    from kpack_runtime import deps
    deps.activate(config)   # bootstrap() does this when the config has datasets.wheels

The dataset (built by `packager/wheels.py`) holds a manifest, `kpack-wheels.json`, and per install mode:
- site: a folder installed ahead for this image, shipped as `site.zip`. It is used where it is mounted when a
  server unpacked the zip into a folder (found by its marker file, `kpack-site.json`); otherwise it is extracted
  once into <kaggle temp>/kpack-site-<hash>/ (never working/, which is the kernel's saved output). The folder
  goes first on sys.path: no install at all.
- uv: the wheels plus uv's own wheel: uv installs them offline into temp (pip --no-index if uv fails).
- pip: the wheels: pip --no-index installs them into temp.

Then every pinned requirement and every shipped package must import at its exact version (importlib.metadata);
a missing dataset, a Python the site was not built for, or a wrong version stops the kernel with one line.
Stdlib only: nothing else is importable yet.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import sys
import time
from pathlib import Path

from kpack_runtime import inputs

MANIFEST = "kpack-wheels.json"
SITE_MARKER = "kpack-site.json"
SEARCH_DEPTH = 4

_active: dict | None = None


class DepsError(SystemExit):
    """A dependency problem, told in one line; a SystemExit, so the kernel stops without a traceback."""

    def __init__(self, message: str):
        super().__init__(f"kpack deps: {message}")


_get = inputs.config_value


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _public(version: str) -> str:
    return str(version).split("+", 1)[0].strip()


def _same(found: str, expected: str) -> bool:
    """Versions equal after dropping local labels ('2.8.0+cu126' == '2.8.0') and trailing zeros ('2.0' == '2')."""
    def key(v: str) -> str:
        v = _public(v).lower()
        parts = v.split(".")
        while len(parts) > 1 and parts[-1] == "0":
            parts.pop()
        return ".".join(parts)
    return key(found) == key(expected)


def _walk(root: Path, name: str, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Files called `name` under root, shallowest first, at most `depth` folders down."""
    found, level = [], [root]
    for _ in range(depth + 1):
        nxt = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name == name and entry.is_file():
                    found.append(Path(entry.path))
                elif entry.is_dir(follow_symlinks=False) and not entry.name.endswith((".dist-info", "__pycache__")):
                    nxt.append(Path(entry.path))
        if found:
            return found
        level = nxt
    return found


def find_dataset(ref: str) -> tuple[Path, Path]:
    """(dataset folder, manifest path) of the mounted wheels dataset."""
    root = inputs.find_input(ref, "dataset")
    if root is not None:
        hits = _walk(root, MANIFEST, 2)
        if hits:
            return root, hits[0]
    slug = ref.rsplit("/", 1)[-1]
    for manifest in inputs.find_files(MANIFEST):
        if slug in manifest.parts:
            return manifest.parent, manifest
    raise DepsError(f"wheels dataset {ref} is not mounted under {inputs.input_dir()}: add it to the kernel's "
                    "dataset_sources (kpack does this for the configured wheels dataset) and push again")


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DepsError(f"{path}: unreadable manifest ({exc}); rebuild and push the wheels dataset") from None
    if manifest.get("format") != 1:
        raise DepsError(f"{path}: manifest format {manifest.get('format')!r} is not one this kernel reads; "
                        "rebuild the kernel and the wheels dataset with the same kpack")
    return manifest


def _check_python(manifest: dict) -> None:
    want = str(_get(manifest.get("target"), "python", ""))
    have = f"{sys.version_info.major}.{sys.version_info.minor}"
    if want and want != have:
        target = _get(manifest.get("target"), "name", "?")
        raise DepsError(f"the wheels dataset was built for Python {want} ({target}) but this kernel runs Python "
                        f"{sys.version.split()[0]}; refresh the image snapshot (kpack probe-image) and push again")


def _key(manifest: dict, name: str) -> str:
    digest = (manifest.get("files") or {}).get(name) or hashlib.sha256(
        json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def _scratch() -> Path:
    return inputs.temp_dir()


def _extract(archive: Path, dest: Path) -> Path:
    """Unzip once into dest (atomic: a half-extracted folder is never used)."""
    import shutil
    import tempfile
    import zipfile

    if (dest / SITE_MARKER).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process won the race
            if not (dest / SITE_MARKER).is_file():
                raise
    except (OSError, zipfile.BadZipFile) as exc:
        raise DepsError(f"{archive}: cannot be extracted into {dest.parent} ({exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def site_folder(root: Path, manifest: dict) -> Path:
    """The installed-ahead site folder: where a server unpacked it, else extracted from site.zip into temp."""
    for marker in _walk(root, SITE_MARKER):
        return marker.parent
    archive = root / manifest.get("site", "site.zip")
    if not archive.is_file():
        hits = _walk(root, manifest.get("site", "site.zip"))
        if not hits:
            raise DepsError(f"{root}: no site folder and no {archive.name} in the wheels dataset; rebuild and push it")
        archive = hits[0]
    return _extract(archive, _scratch() / f"kpack-site-{_key(manifest, archive.name)}")


def _wheel_files(root: Path, manifest: dict) -> list[Path]:
    names = manifest.get("wheels") or []
    found = []
    for name in names:
        hits = [root / name] if (root / name).is_file() else _walk(root, name)
        if not hits:
            raise DepsError(f"{root}: wheel {name} listed in the manifest is missing; rebuild and push the dataset")
        found.append(hits[0])
    return found


def _uv_binary(root: Path, manifest: dict) -> Path | None:
    import stat
    import zipfile

    name = manifest.get("uv")
    if not name:
        return None
    hits = [root / name] if (root / name).is_file() else _walk(root, name)
    if not hits:
        return None
    dest = _scratch() / f"kpack-uv-{_key(manifest, name)}" / "uv"
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(hits[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith("/scripts/uv")), None)
            if member is None:
                return None
            tmp = dest.with_name(".uv.tmp")
            tmp.write_bytes(zf.read(member))
            tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            os.replace(tmp, dest)
    return dest


def install(root: Path, manifest: dict, mode: str) -> Path:
    """Install the wheels offline into a temp site folder (uv, then pip as the fallback); returns the folder."""
    import shutil
    import subprocess

    wheels = _wheel_files(root, manifest)
    dest = _scratch() / f"kpack-{mode}-{_key(manifest, MANIFEST)}"
    if (dest / SITE_MARKER).is_file():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    attempts = []
    uv = _uv_binary(root, manifest) if mode == "uv" else None
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", UV_NO_CACHE="1", PIP_NO_INDEX="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    if uv is not None:
        attempts.append([str(uv), "pip", "install", "--target", str(dest), "--python", sys.executable,
                         "--no-index", "--no-deps", "--no-config", "--quiet", *map(str, wheels)])
    attempts.append([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile",
                     "--disable-pip-version-check", "--quiet", "--target", str(dest), *map(str, wheels)])
    errors = []
    for cmd in attempts:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode == 0:
            (dest / SITE_MARKER).write_text(json.dumps({"installed_by": Path(cmd[0]).name}) + "\n")
            return dest
        tail = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()][-1:] or ["no output"]
        errors.append(f"{Path(cmd[0]).name}: {tail[0].strip()}")
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
    raise DepsError(f"offline install of the wheels failed: {'; '.join(errors)}")


def put_first(folder: Path) -> None:
    """Put a site folder first on sys.path (and run its .pth files, as site-packages would)."""
    import site

    path = str(folder)
    if sys.path[:1] != [path]:
        site.addsitedir(path)  # appends, and processes .pth files
        while path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    importlib.invalidate_caches()


def expected_versions(manifest: dict) -> dict[str, str]:
    """Pinned requirements and shipped packages: normalized name -> exact version."""
    wanted = {normalize(k): str(v) for k, v in (manifest.get("shipped") or {}).items()}
    wanted.update({normalize(k): str(v) for k, v in (manifest.get("requirements") or {}).items()})
    return wanted


def _installed_versions(names: set[str]) -> dict[str, str]:
    """normalized name -> version of the first distribution of each name on sys.path, read from the
    `.dist-info` folders the way importlib.metadata finds them (without importing it: 0.1-0.3 s saved)."""
    found: dict[str, str] = {}
    for entry in sys.path:
        if len(found) == len(names):
            break
        try:
            listing = os.listdir(entry or ".")
        except OSError:
            continue
        for item in listing:
            if not item.endswith(".dist-info"):
                continue
            name = normalize(item[: -len(".dist-info")].split("-", 1)[0])
            if name not in names or name in found:
                continue
            version = _metadata_version(Path(entry or ".", item))
            if version is not None:
                found[name] = version
    missing = names - set(found)
    if missing:  # egg-info and other layouts: ask importlib.metadata about those few
        import importlib.metadata as metadata

        for name in missing:
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                pass
    return found


def _metadata_version(dist_info: Path) -> str | None:
    try:
        with open(dist_info / "METADATA", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
                if not line.strip():
                    break
    except OSError:
        pass
    return None


def check_versions(wanted: dict[str, str], source: str, manifest: dict | None = None) -> None:
    """Every name must import at its exact version; one line names each package, expected and found (and, for a
    package the builder left to the image, the snapshot that said the image has it)."""
    problems, wrong = [], []
    have = _installed_versions(set(wanted))
    for name, version in sorted(wanted.items()):
        found = have.get(name)
        if found is None or not _same(found, version):
            problems.append(f"{name}: expected {version}, found {found or 'none'}")
            wrong.append(name)
    if problems:
        left = [n for n in wrong if n in {normalize(k) for k in ((manifest or {}).get("image") or {})}]
        snapshot = (manifest or {}).get("snapshot") or {}
        when = f"probed {snapshot['probed'][:10]}" if snapshot.get("probed") else snapshot.get("source", "a guess")
        hint = (f"; {', '.join(left)} left to the image by its snapshot ({when}): refresh it with `kpack "
                "probe-image` and push again" if left else "")
        raise DepsError(f"version check failed ({source}): {'; '.join(problems)}{hint}")


def image_drift(manifest: dict, limit: int = 5) -> str | None:
    """A note when the image's versions differ from those the wheels were resolved against (a stale snapshot):
    not fatal, since the pins themselves were checked, but worth a `kpack probe-image`."""
    expected = {normalize(k): str(v) for k, v in (manifest.get("image") or {}).items()}
    if not expected:
        return None
    have = _installed_versions(set(expected))
    drift = [f"{n} {have.get(n, 'missing')} (resolved against {v})" for n, v in sorted(expected.items())
             if n not in have or not _same(have[n], v)]
    if not drift:
        return None
    more = f" and {len(drift) - limit} more" if len(drift) > limit else ""
    return (f"kpack deps: note: the image differs from the snapshot the wheels were built against: "
            f"{', '.join(drift[:limit])}{more}; refresh it with `kpack probe-image`")


def activate(config) -> dict | None:
    """Make the wheels dataset importable and check the pinned versions; returns what it did, or None when the
    config has no wheels dataset. Idempotent within a process."""
    global _active
    wheels = _get(_get(config, "datasets"), "wheels")
    if not wheels:
        return None
    ref = f"{_get(config, 'kaggle_user')}/{_get(wheels, 'slug')}"
    if _active is not None and _active.get("ref") == ref:
        return _active
    start = time.perf_counter()
    root, manifest_path = find_dataset(ref)
    manifest = _read_manifest(manifest_path)
    mode = manifest.get("mode", "site")
    _check_python(manifest)
    folder = site_folder(manifest_path.parent, manifest) if mode == "site" else install(manifest_path.parent,
                                                                                       manifest, mode)
    put_first(folder)
    # Kernels run offline: albumentations would otherwise try the network for a newer version at import.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    check_versions(expected_versions(manifest), f"wheels dataset {ref}, mode {mode}", manifest)
    drift = image_drift(manifest)
    if drift:
        print(drift, file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    shipped = manifest.get("shipped") or {}
    print(f"kpack deps: {len(shipped)} package(s) from {ref} ({mode}) ready in {seconds:.2f}s", flush=True)
    _active = {"ref": ref, "mode": mode, "site": str(folder), "seconds": seconds, "shipped": dict(shipped)}
    return _active
