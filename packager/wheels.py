"""The wheels dataset: pinned requirements -> wheels for the kernel's image -> a dataset the kernel starts from.

Pipeline: read the pins (every requirement `name==version`), resolve their dependencies for the target with uv
(the image's own packages as constraints, torch and friends excluded: the image has them), drop what the image
already has at the same version (only when its versions are known: a probed snapshot or the local image itself;
with a guessed snapshot everything ships, as the kernel stops on a pinned version the image does not match),
fetch the rest as wheels into `build/wheel-cache/<target>/`, check every wheel's tags against the target, then
lay out the dataset for the install mode:

- `site` (default): the wheels installed ahead for the target (`uv pip install --target`) and shipped as one
  deterministic `site.zip`; the kernel only puts the folder on `sys.path` (no install at all).
- `uv`: the wheels plus uv's own wheel; the kernel installs offline with uv into temp (pip if uv fails).
- `pip`: the wheels; the kernel installs offline with `pip --no-index`.

`site.zip` is a top-level file on purpose: the `kaggle` client uploads top-level files without `--dir-mode`, one
file uploads faster than thousands, and a zip built here has sorted entries and fixed mtimes, so the same
requirements and target give the same bytes and the same content hash (an unchanged re-push uploads nothing).
Where a server unpacks the zip into a folder, the kernel finds the folder by its marker file instead.

Targets: `kaggle` (CPython 3.12, manylinux x86_64; the Python version comes from the image snapshot's header)
and `local` (this interpreter, as the local Kaggle runs kernels). `cfg.backend` picks one, and its own snapshot
(`datasets_meta/kaggle-image-packages.txt`, `datasets_meta/local-image-packages.txt`); the local target reads the
local image directly when no probe wrote a local snapshot.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags, sys_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from packager.errors import UserError
from packager.fsutil import atomic_write_text, file_sha256, tree_hash

MANIFEST = "kpack-wheels.json"
SITE_ZIP = "site.zip"
SITE_MARKER = "kpack-site.json"  # at the root of the site folder: the kernel finds the folder by it
FORMAT = 1
META_DIR = Path("datasets_meta")
KAGGLE_SNAPSHOT = META_DIR / "kaggle-image-packages.txt"
LOCAL_SNAPSHOT = META_DIR / "local-image-packages.txt"
CACHE_DIR = Path("build") / "wheel-cache"

# Never shipped: GBs of CUDA builds that must match the image's drivers. The image has them.
NEVER_SHIP = ("torch", "torchvision", "torchaudio", "triton")
NEVER_SHIP_PREFIXES = ("nvidia-",)
KAGGLE_MANYLINUX = 28  # manylinux_2_28: what `uv --python-platform x86_64-manylinux_2_28` accepts, and pip too
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def never_shipped(name: str) -> bool:
    name = canonicalize_name(name)
    return name in NEVER_SHIP or name.startswith(NEVER_SHIP_PREFIXES)


def _public(version: str) -> str:
    """'2.8.0+cu126' -> '2.8.0': the image's local build labels never match an index release."""
    return version.split("+", 1)[0].strip()


def same_version(a: str, b: str) -> bool:
    try:
        return Version(_public(a)) == Version(_public(b))
    except InvalidVersion:
        return _public(a) == _public(b)


# --------------------------------------------------------------------------------------------- targets

@dataclass(frozen=True)
class Target:
    """Where the wheels will be imported: a CPython version and platform, as uv and pip spell them."""

    name: str                      # "kaggle" | "local"
    python: str                    # "3.12"
    uv_platform: str | None        # "x86_64-manylinux_2_28"; None: this interpreter's own platform
    pip_platforms: tuple[str, ...]  # pip download --platform values; () for this interpreter

    @property
    def key(self) -> str:
        return f"{self.name}-{self.abi}"

    @property
    def abi(self) -> str:
        return f"cp{self.python.replace('.', '')}"

    @cached_property
    def tags(self) -> frozenset[Tag]:
        if not self.pip_platforms:
            return frozenset(sys_tags())
        version = tuple(int(p) for p in self.python.split("."))
        return frozenset([*cpython_tags(version, abis=[self.abi], platforms=list(self.pip_platforms)),
                          *compatible_tags(version, self.abi, list(self.pip_platforms))])

    def describe(self) -> str:
        where = self.uv_platform or "this machine's platform"
        return f"{self.name} ({self.abi}, {where})"

    def uv_args(self) -> list[str]:
        if self.uv_platform is None:
            return ["--python", sys.executable]
        return ["--python-version", self.python, "--python-platform", self.uv_platform]

    def pip_args(self) -> list[str]:
        if not self.pip_platforms:
            return []
        args = ["--python-version", self.python, "--implementation", "cp", "--abi", self.abi, "--abi", "abi3",
                "--abi", "none"]
        for platform in self.pip_platforms:
            args += ["--platform", platform]
        return args

    def to_json(self) -> dict:
        return {"name": self.name, "python": self.python, "platform": self.uv_platform or "local"}


def kaggle_target(python: str = "3.12") -> Target:
    platforms = tuple(f"manylinux_2_{minor}_x86_64" for minor in range(KAGGLE_MANYLINUX, 16, -1))
    platforms += ("manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")
    return Target("kaggle", python, f"x86_64-manylinux_2_{KAGGLE_MANYLINUX}", platforms)


def local_target() -> Target:
    return Target("local", f"{sys.version_info.major}.{sys.version_info.minor}", None, ())


def target_for(cfg, root: Path | None = None) -> Target:
    """kaggle backend -> the Kaggle image (Python version from the snapshot); local -> this interpreter."""
    if cfg.backend == "kaggle":
        meta = read_snapshot(Path(root or ".") / KAGGLE_SNAPSHOT)[1]
        python = ".".join(meta.get("python", "3.12").split(".")[:2])
        return kaggle_target(python)
    return local_target()


# --------------------------------------------------------------------------------------------- requirements

@dataclass(frozen=True)
class Pin:
    name: str      # canonical (PEP 503) name
    version: str
    line: str      # as written, for messages and the resolver

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


def parse_requirements(text: str, source: str = "requirements") -> list[Pin]:
    """Every line must be `name[extras]==version` (markers allowed); anything else is refused with one line."""
    pins: list[Pin] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        if line.startswith("-"):
            raise UserError(f"{where}: {line!r}: options are not supported here; list pinned packages only "
                            "(name==version)")
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            # packaging's message is three lines (reason, the line, a caret): keep the reason only
            reason = str(exc).splitlines()[0].rstrip(".") if str(exc).strip() else "unparsable"
            raise UserError(f"{where}: {line!r} is not a requirement; expected one pinned package a line, "
                            f"name==version (e.g. timm==1.0.31) ({reason})") from None
        specs = list(req.specifier)
        if req.url or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            raise UserError(f"{where}: {line!r} is not pinned; pin an exact version (e.g. {req.name}==1.2.3) so "
                            "every build ships the same wheels")
        pins.append(Pin(canonicalize_name(req.name), specs[0].version, line))
    names = [p.name for p in pins]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"{source}: {name} is pinned twice; keep one line")
    return pins


def read_requirements(path: Path) -> list[Pin]:
    if not path.is_file():
        raise UserError(f"{path}: requirements file not found (datasets.wheels.requirements in kpack.yaml)")
    return parse_requirements(path.read_text(), str(path))


# --------------------------------------------------------------------------------------------- the image

def parse_snapshot(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """`name==version` lines -> ({canonical name: version}, {header key: value}) from `# key: value` comments."""
    packages: dict[str, str] = {}
    meta: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            match = re.match(r"#\s*([a-z_]+):\s*(.+)$", line)
            if match:
                meta.setdefault(match.group(1), match.group(2).strip())
            continue
        if "==" in line:
            name, version = line.split("==", 1)
            packages.setdefault(canonicalize_name(name.strip()), version.strip())  # the first wins, as on sys.path
    return packages, meta


def read_snapshot(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    if not path.is_file():
        return {}, {}
    return parse_snapshot(path.read_text())


PROBED = "probe"  # `# source: probe` (with `# probed: <UTC time>`): `kpack probe-image` read it inside a kernel
LIVE = "live"     # the local image, read straight from this venv
GIVEN = "given"   # passed in by the caller (tests, tools that know the image)


@dataclass(frozen=True)
class ImageSnapshot:
    """What the kernel's image has, and whether that is known or guessed.

    Only a known image (probed, read live, or given) lets the builder leave a package to the image: the kernel
    stops on any pinned version the image does not match, so a wrong guess would stop it on Kaggle."""

    packages: dict[str, str]    # canonical name -> version
    source: str                 # PROBED | LIVE | GIVEN | "guess" (any other value counts as a guess)
    probed_at: datetime | None  # when a probe read it (PROBED only)
    where: str                  # the file, for messages

    @property
    def known(self) -> bool:
        return self.source in (LIVE, GIVEN) or (self.source == PROBED and self.probed_at is not None)

    def age_days(self, now: datetime | None = None) -> float | None:
        if self.probed_at is None:
            return None
        return ((now or datetime.now(timezone.utc)) - self.probed_at).total_seconds() / 86400

    def describe(self) -> str:
        if self.source == PROBED and self.probed_at is not None:
            return f"probed {self.probed_at:%Y-%m-%d}"
        return {LIVE: "read from the local image", GIVEN: "given"}.get(self.source, "a guess")

    def to_json(self) -> dict:
        return {"source": self.source if self.known else "guess",
                "probed": self.probed_at.strftime("%Y-%m-%dT%H:%M:%SZ") if self.probed_at else None}


def _probe_time(text: str | None) -> datetime | None:
    try:
        when = datetime.fromisoformat((text or "").strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def snapshot_file(path: Path) -> ImageSnapshot | None:
    """The snapshot in `path` (None when there is none); its `# source:` / `# probed:` header says how known it is."""
    packages, meta = read_snapshot(path)
    if not packages:
        return None
    source = meta.get("source", "guess").split()[0].lower()
    probed_at = _probe_time(meta.get("probed")) if source == PROBED else None
    return ImageSnapshot(packages, source, probed_at, str(path))


def snapshot_path(backend: str, root: Path | None = None) -> Path:
    """Each backend's image has its own file: the local image never passes for Kaggle's, nor the reverse."""
    return Path(root or ".") / (KAGGLE_SNAPSHOT if backend == "kaggle" else LOCAL_SNAPSHOT)


def image_snapshot(target: Target, root: Path) -> ImageSnapshot:
    """The kernel's image: the Kaggle snapshot for the kaggle target; for the local one, its own snapshot when a
    probe (or a test) wrote one, else the local image itself (this venv minus the excludes)."""
    path = snapshot_path(target.name, root)
    found = snapshot_file(path)
    if found is not None:
        return found
    if target.name == "kaggle":
        raise UserError(f"{path}: no image snapshot; run `kpack probe-image` with backend: kaggle to record the "
                        "image's packages (`kpack push` does it first unless KPACK_NO_PROBE is set)")
    try:
        from packager.localkaggle.image import image_distributions
    except ImportError:
        raise UserError("the local Kaggle's image (packager.localkaggle.image) is not available") from None
    return ImageSnapshot({canonicalize_name(k): v for k, v in image_distributions().items()}, LIVE, None,
                         "the local image")


def image_packages(target: Target, root: Path) -> dict[str, str]:
    """What the kernel's image has (or is guessed to have): canonical name -> version."""
    return image_snapshot(target, root).packages


# --------------------------------------------------------------------------------------------- tools

def uv_bin() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if not found:
            raise UserError("uv is not installed: `make setup` installs it into .venv/") from None
        return found


def uv_version() -> str:
    from importlib.metadata import version

    return version("uv")


def _tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["UV_PYTHON_DOWNLOADS"] = "never"  # cross-target resolves need no interpreter of the target's version
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return env


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=_tool_env(), check=False)


def _index_args(find_links: tuple[Path, ...], no_index: bool) -> list[str]:
    args: list[str] = []
    for link in find_links:
        args += ["--find-links", str(link)]
    if no_index:
        args.append("--no-index")
    return args


# --------------------------------------------------------------------------------------------- resolve

_NO_WHEEL = re.compile(r"([A-Za-z0-9_.\-]+)==([^\s,]+) has no (usable wheels|wheels with a matching [^,]+?)"
                       r"(?: \(|,| and)")


def _uv_reason(stderr: str) -> str:
    """uv's error and its causes on one line (warnings and hints left out)."""
    lines = [ln.strip().lstrip("╰─▶×").strip() for ln in stderr.splitlines()]
    lines = [ln.removeprefix("error: ").removeprefix("cause: ") for ln in lines
             if ln and not ln.startswith(("warning:", "hint:"))]
    return ": ".join(lines)[:400] or "uv gave no reason"


def _no_wheel_error(stderr: str, target: Target) -> UserError | None:
    match = _NO_WHEEL.search(stderr.replace("\n", " "))
    if not match:
        return None
    name, version, why = match.groups()
    why = "no wheel at all (sdist only)" if why == "usable wheels" else why.replace("wheels", "no wheel", 1)
    return UserError(f"{canonicalize_name(name)}=={version}: {why} for {target.describe()}; pick a version that "
                     "ships a wheel for the target, or drop it")


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def resolve_cached(pins: list[Pin], target: Target, image: dict[str, str], cache: Path, *,
                   find_links: tuple[Path, ...] = (), no_index: bool = False,
                   notes: list[str] | None = None) -> dict[str, str]:
    """`resolve`, remembered in `cache/resolved-<key>.json`: the same pins, image and target give the same set
    (a lock file in effect: a new release of a dependency does not change an unchanged build; delete the
    cache, e.g. `make clean`, to re-resolve)."""
    notes = notes if notes is not None else []
    key = _digest(FORMAT, [p.line for p in pins], target.to_json(), sorted(image.items()),
                  [str(f) for f in find_links], no_index)
    path = cache / f"resolved-{key}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        notes.extend(saved["notes"])
        return saved["resolved"]
    mine: list[str] = []
    resolved = resolve(pins, target, image, find_links=find_links, no_index=no_index, notes=mine)
    atomic_write_text(path, _dump({"resolved": resolved, "notes": mine}))
    notes.extend(mine)
    return resolved


def resolve(pins: list[Pin], target: Target, image: dict[str, str], *, find_links: tuple[Path, ...] = (),
            no_index: bool = False, notes: list[str] | None = None) -> dict[str, str]:
    """The full dependency set of the pins for the target (canonical name -> version), torch & co. excluded.

    The image's versions are constraints, so what the image has is reused rather than shadowed. When the pins
    cannot live with the image's versions, the resolve is redone without them (and says so in `notes`).
    """
    notes = notes if notes is not None else []
    with tempfile.TemporaryDirectory(prefix="kpack-resolve-") as tmp:
        reqs, excludes, constraints = Path(tmp, "req.txt"), Path(tmp, "ex.txt"), Path(tmp, "con.txt")
        reqs.write_text("".join(p.line + "\n" for p in pins))
        excludes.write_text("".join(n + "\n" for n in NEVER_SHIP))
        pinned = {p.name for p in pins}
        lines = []
        for name, version in sorted(image.items()):
            if never_shipped(name) or name in pinned:
                continue
            try:
                Version(_public(version))
            except InvalidVersion:
                continue
            lines.append(f"{name}=={_public(version)}\n")
        constraints.write_text("".join(lines))
        base = [uv_bin(), "pip", "compile", str(reqs), "--excludes", str(excludes), "--only-binary", ":all:",
                "--no-header", "--no-annotate", "--no-config", "--quiet", *target.uv_args(),
                *_index_args(find_links, no_index)]
        done = _run(base + ["--constraints", str(constraints)])
        if done.returncode != 0:
            refused = _no_wheel_error(done.stderr, target)
            if refused:
                raise refused
            retry = _run(base)
            if retry.returncode != 0:
                raise _no_wheel_error(retry.stderr, target) or UserError(
                    f"resolving {', '.join(map(str, pins))} for {target.describe()} failed: "
                    f"{_uv_reason(retry.stderr)}")
            notes.append("the pins need versions other than the image's; those are shipped and shadow the "
                         f"image's ({_uv_reason(done.stderr)[:200]})")
            done = retry
    resolved: dict[str, str] = {}
    for line in done.stdout.splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            name = canonicalize_name(re.sub(r"\[.*\]", "", name))
            if not never_shipped(name):
                resolved[name] = version.strip()
    return resolved


def plan(pins: list[Pin], resolved: dict[str, str], image: dict[str, str],
         notes: list[str], known: bool = True) -> tuple[dict[str, str], dict[str, str]]:
    """-> (shipped, from the image): what goes into the dataset, and what the image is expected to provide.

    known: the image's versions were read from it (probed); with a guess every resolved package ships, since
    the kernel stops on a pinned version the image turns out not to have."""
    ship: dict[str, str] = {}
    from_image: dict[str, str] = {}
    for name, version in sorted(resolved.items()):
        have = image.get(name)
        if known and have is not None and same_version(have, version):
            from_image[name] = version
        else:
            if known and have is not None:
                notes.append(f"{name}: the image has {have}, {version} is shipped and shadows it")
            ship[name] = version
    return ship, from_image


def check_never_shipped(pins: list[Pin], image: dict[str, str], notes: list[str]) -> list[Pin]:
    """torch & co. in the pins: skipped with a note when the image has that version; refused otherwise."""
    kept = []
    for pin in pins:
        if not never_shipped(pin.name):
            kept.append(pin)
            continue
        have = image.get(pin.name)
        if have is not None and not same_version(have, pin.version):
            raise UserError(f"{pin}: {pin.name} is never shipped (the image's own CUDA build is used) and the image "
                            f"has {pin.name}=={have}; pin that version or remove the line")
        notes.append(f"{pin}: not shipped, the image's {pin.name} is used"
                     + ("" if have else " (the image snapshot does not list it)"))
    return kept


# --------------------------------------------------------------------------------------------- wheels

def wheel_key(path: Path) -> tuple[str, str, frozenset[Tag]] | None:
    try:
        name, version, _build, tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename:
        return None
    return canonicalize_name(name), str(version), frozenset(tags)


def check_wheel_tags(path: Path, target: Target) -> None:
    """Refuse a file that is not a wheel, or a wheel whose tags the target cannot install, with one line."""
    if not path.name.endswith(".whl"):
        raise UserError(f"{path.name}: not a wheel (an sdist needs building on the kernel, which has no compiler "
                        f"or network); pin a version with a wheel for {target.describe()}")
    key = wheel_key(path)
    if key is None:
        raise UserError(f"{path.name}: not a valid wheel file name")
    name, version, tags = key
    if not tags & target.tags:
        shown = ".".join(sorted({str(t) for t in tags}))
        raise UserError(f"{name}=={version}: wheel {path.name} has tags {shown}, none installable on "
                        f"{target.describe()}")


def _find_cached(cache: Path, name: str, version: str, target: Target) -> Path | None:
    for path in sorted(cache.glob("*.whl")):
        key = wheel_key(path)
        if key and key[0] == name and same_version(key[1], version) and key[2] & target.tags:
            return path
    return None


def fetch_wheels(packages: dict[str, str], target: Target, cache: Path, *, find_links: tuple[Path, ...] = (),
                 no_index: bool = False) -> dict[str, Path]:
    """One wheel per package (name -> path in `cache`); the cache is looked at first, pip downloads the rest."""
    cache.mkdir(parents=True, exist_ok=True)
    found = {n: _find_cached(cache, n, v, target) for n, v in packages.items()}
    missing = [f"{n}=={v}" for n, v in sorted(packages.items()) if found[n] is None]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--dest", str(cache), *target.pip_args(), *_index_args(find_links, no_index), *missing]
        done = _run(cmd)
        if done.returncode != 0:
            match = re.search(r"No matching distribution found for (\S+)", done.stderr)
            if match:
                raise UserError(f"{match.group(1)}: no wheel for {target.describe()} on the index (only an sdist, "
                                "or wheels for other platforms); pick a version with one, or drop it")
            tail = [ln for ln in done.stderr.splitlines() if ln.strip()][-1:] or ["pip gave no reason"]
            raise UserError(f"downloading wheels for {target.describe()} failed: {tail[0].strip()}")
        found = {n: _find_cached(cache, n, v, target) for n, v in packages.items()}
    for name, version in packages.items():
        if found[name] is None:
            stray = sorted(cache.glob(f"{name.replace('-', '_')}-{version}*")) + sorted(
                cache.glob(f"{name}-{version}*"))
            if stray:
                check_wheel_tags(stray[0], target)
            raise UserError(f"{name}=={version}: no wheel for {target.describe()} was downloaded")
    for path in found.values():
        check_wheel_tags(path, target)  # type: ignore[arg-type]
    return found  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- site folder

MACHINE_FILES = ("uv_cache.json", "direct_url.json")  # timestamps and absolute paths: not for a dataset


def install_site(wheels: dict[str, Path], packages: dict[str, str], target: Target, dest: Path) -> None:
    """Install the wheels for the target into `dest` (no deps, no bytecode), then strip what is not portable."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    links = sorted({p.parent for p in wheels.values()})
    cmd = [uv_bin(), "pip", "install", "--target", str(dest), *target.uv_args(), "--no-index", "--no-deps",
           "--no-config", "--link-mode", "copy", "--no-compile", "--quiet",
           *[a for link in links for a in ("--find-links", str(link))],
           *[f"{n}=={v}" for n, v in sorted(packages.items())]]
    done = _run(cmd)
    if done.returncode != 0:
        raise UserError(f"installing the wheels into a site folder for {target.describe()} failed: "
                        f"{_uv_reason(done.stderr)}")
    make_portable(dest)


def bytecode_python(target: Target) -> tuple[str, str] | None:
    """(path, version) of an interpreter of the target's Python version, to precompile the site with; None when
    this machine has none (the kernel then compiles on import, 2-3 s of CPU for timm + albumentations)."""
    if target.uv_platform is None:
        return sys.executable, ".".join(map(str, sys.version_info[:3]))
    found = [shutil.which(f"python{target.python}")]
    found += sorted(map(str, Path.home().glob(f".pyenv/versions/{target.python}.*/bin/python{target.python}")))
    for path in filter(None, found):
        try:
            done = subprocess.run([path, "-I", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                                  capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            continue
        version = done.stdout.strip()
        if done.returncode == 0 and version.rsplit(".", 1)[0] == target.python:
            return path, version
    return None


def compile_site(site: Path, python: str) -> None:
    """Precompile every module into __pycache__, reproducibly: hash-based pycs that are never checked against a
    source mtime (PEP 552 unchecked-hash) and file names relative to the site folder (no build path inside;
    tracebacks still find the source through sys.path). Inputs are read-only on Kaggle, so without these
    every session would compile timm and albumentations again on import."""
    site = site.resolve()
    subprocess.run([python, "-I", "-m", "compileall", "-qq", "-j", "0", "-s", str(site), "--invalidation-mode",
                    "unchecked-hash", str(site)], capture_output=True, text=True, check=False)  # a module that
    # does not compile (another Python's syntax) just has no pyc: it fails on import as it would anyway


def make_portable(site: Path) -> None:
    """Drop console scripts (their shebangs name this machine's Python), bytecode and uv's cache stamps, and take
    them out of each RECORD, so the same wheels give the same bytes on every build."""
    removed: set[str] = set()
    for path in sorted(site.rglob("*")):
        rel = path.relative_to(site).as_posix()
        if rel == "bin" or path.name == "__pycache__":
            if path.is_dir():
                removed.update(p.relative_to(site).as_posix() for p in path.rglob("*") if p.is_file())
                shutil.rmtree(path)
        elif path.is_file() and (path.suffix == ".pyc" or (path.parent.name.endswith(".dist-info")
                                                          and path.name in MACHINE_FILES)):
            removed.add(rel)
            path.unlink()
    for record in sorted(site.glob("*.dist-info/RECORD")):
        kept = []
        for line in record.read_text().splitlines():
            entry = line.split(",", 1)[0]
            normal = os.path.normpath(entry).replace(os.sep, "/")
            if normal in removed or normal.startswith("bin/") or normal.endswith(".pyc"):
                continue
            kept.append(line)
        record.write_text("".join(line + "\n" for line in kept))


def deterministic_zip(src: Path, dest: Path) -> None:
    """Zip a folder with sorted entries, a fixed date and fixed modes: same files, same bytes."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(src.rglob("*"), key=lambda p: p.relative_to(src).as_posix()):
            if not path.is_file():
                continue
            info = zipfile.ZipInfo(path.relative_to(src).as_posix(), ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = (0o100755 if os.access(path, os.X_OK) else 0o100644) << 16
            zf.writestr(info, path.read_bytes(), compresslevel=6)
    os.replace(tmp, dest)


def build_site_zip(wheels: dict[str, Path], ship: dict[str, str], target: Target, cache: Path,
                   dest: Path) -> str | None:
    """site.zip for these wheels: built once per set of wheel files (kept in `cache/sites/`), then copied.
    Returns the bytecode it holds ('cpython-3.12.1'), or None when no interpreter of the target's version was
    here to compile it."""
    python = bytecode_python(target) if ship else None
    bytecode = f"cpython-{python[1]}" if python else None
    key = _digest(FORMAT, target.to_json(), bytecode,
                  sorted((n, wheels[n].name, file_sha256(wheels[n])) for n in ship))
    kept = cache / "sites" / f"site-{key}.zip"
    if not kept.is_file():
        kept.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="kpack-site-", dir=kept.parent) as tmp:
            site = Path(tmp) / "site"
            if ship:
                install_site(wheels, ship, target, site)
                if python:
                    compile_site(site, python[0])
            else:
                site.mkdir()
            marker = {"format": FORMAT, "target": target.to_json(), "packages": ship, "bytecode": bytecode}
            (site / SITE_MARKER).write_text(_dump(marker))
            deterministic_zip(site, kept)
    shutil.copyfile(kept, dest)
    return bytecode


# --------------------------------------------------------------------------------------------- the dataset

@dataclass
class DatasetBuild:
    """A dataset folder ready to upload. content_hash: `fsutil.tree_hash` of the folder (metadata excluded)."""

    slug: str
    title: str
    path: Path
    content_hash: str
    files: list[str]
    notes: list[str] = field(default_factory=list)


def _dump(data: dict) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def _title(slug: str) -> str:
    title = slug.replace("-", " ")
    return title if len(title) >= 6 else f"{title} wheels"


def build_wheels_dataset(cfg, out_dir: Path, *, root: Path | None = None, find_links: tuple[Path, ...] = (),
                         no_index: bool = False, cache_dir: Path | None = None,
                         image: dict[str, str] | None = None) -> DatasetBuild:
    """Build the wheels dataset for `cfg.datasets.wheels` into `out_dir` (replaced whole).

    root: the project root (requirements, snapshots and the wheel cache are relative to it; default: cwd).
    find_links / no_index: extra wheel sources and index-off, for offline builds and tests.
    image: the image's packages (default: the snapshot or the local image, per target).
    """
    spec = cfg.datasets.wheels
    if spec is None:
        raise UserError("kpack.yaml: no datasets.wheels section; add one with at least 'slug:'")
    root = Path(root or Path.cwd())
    out_dir = Path(out_dir)
    target = target_for(cfg, root)
    notes: list[str] = []
    req_path = root / spec.requirements
    pins = read_requirements(req_path)
    snapshot = image_snapshot(target, root) if image is None else ImageSnapshot(
        {canonicalize_name(k): v for k, v in image.items()}, GIVEN, None, "given")
    image = snapshot.packages
    if not snapshot.known:
        notes.append(f"the image snapshot {snapshot.where} is a guess: every resolved package ships, none is left "
                     "to the image (`kpack probe-image` records the image's own versions)")
    all_pins = pins
    pins = check_never_shipped(pins, image, notes)
    cache = Path(cache_dir) if cache_dir else root / CACHE_DIR / target.key
    resolved = resolve_cached(pins, target, image, cache, find_links=find_links, no_index=no_index,
                              notes=notes) if pins else {}
    ship, from_image = plan(pins, resolved, image, notes, known=snapshot.known)
    wheels = fetch_wheels(ship, target, cache, find_links=find_links, no_index=no_index) if ship else {}

    staging = out_dir.with_name(f".{out_dir.name}.building")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    files: dict[str, str] = {}
    manifest = {
        "format": FORMAT,
        "target": target.to_json(),
        "mode": spec.install,
        "requirements": {p.name: p.version for p in all_pins},  # the kernel checks each of these
        "shipped": ship,
        "image": from_image,
        "snapshot": snapshot.to_json(),  # how the image's versions were known (deps.py names it on a mismatch)
        "notes": notes,
    }
    try:
        if spec.install == "site":
            bytecode = build_site_zip(wheels, ship, target, cache, staging / SITE_ZIP)
            manifest["site"] = SITE_ZIP
            manifest["bytecode"] = bytecode
            if ship and not bytecode:
                notes.append(f"no Python {target.python} here to precompile the site's bytecode: the kernel compiles "
                             "on import (a few seconds)")
        else:
            for path in wheels.values():
                shutil.copyfile(path, staging / path.name)
            if spec.install == "uv":
                uv_wheel = fetch_wheels({"uv": uv_version()}, target, cache, find_links=find_links,
                                        no_index=no_index)["uv"]
                shutil.copyfile(uv_wheel, staging / uv_wheel.name)
                manifest["uv"] = uv_wheel.name
            manifest["wheels"] = sorted(p.name for p in wheels.values())
        for path in sorted(staging.iterdir()):
            files[path.name] = file_sha256(path)
        manifest["files"] = files
        (staging / MANIFEST).write_text(_dump(manifest))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    size = sum((out_dir / name).stat().st_size for name in files)
    print(f"wheels dataset {spec.slug}: {len(ship)} package(s) shipped for {target.describe()} ({spec.install}, "
          f"{size / 1e6:.1f} MB), {len(from_image)} from the image", flush=True)
    for note in notes:
        print(f"  note: {note}", flush=True)
    return DatasetBuild(slug=spec.slug, title=_title(spec.slug), path=out_dir, content_hash=tree_hash(out_dir),
                        files=sorted([*files, MANIFEST]), notes=notes)
