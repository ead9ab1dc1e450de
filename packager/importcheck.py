"""Build-time check that every import in the packed code resolves in the kernel.

In a kernel a module comes from the packed files, the standard library, the wheels dataset or the image; an
import that none of them has fails only there, minutes into a session. Every `import X` and `from X import`
of every packed module (top level and inside functions) is checked here against those four. Not checked:
imports guarded by `try: ... except ImportError` (or `contextlib.suppress(ImportError)`), and the branch of
an `if` that cannot run on the kernel (`if TYPE_CHECKING:`, `sys.version_info` and `sys.platform` tests for
the target's Python on Linux).

A distribution's import names come from the venv's own metadata where it is installed (top_level.txt, else
RECORD), else from its wheel in the wheel cache, else from ALIASES or its name with '-' -> '_'. The local
image is this venv minus packager/localkaggle/local-image-excludes.txt, as the local Kaggle gives it to its
kernels. Where the answer is not certain (a guessed
Kaggle snapshot that does not list a package installed here, an `if` the build cannot decide, a test module
that is probably never imported, a stdlib module the target Python removed), the check warns instead.
KPACK_IMPORT_CHECK=warn turns its refusals into warnings too (a kernel that is meant to fail, a bench).
"""
from __future__ import annotations

import ast
import functools
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from packager import inline, wheels
from packager.errors import UserError
from packager.fsutil import atomic_write_text

# Distributions whose import names are not their names (used where neither metadata nor a wheel says).
ALIASES: dict[str, tuple[str, ...]] = {
    "pillow": ("PIL",), "opencv-python": ("cv2",), "opencv-python-headless": ("cv2",),
    "opencv-contrib-python": ("cv2",), "opencv-contrib-python-headless": ("cv2",),
    "scikit-learn": ("sklearn",), "scikit-image": ("skimage",), "pyyaml": ("yaml", "_yaml"),
    "beautifulsoup4": ("bs4",), "python-dateutil": ("dateutil",), "protobuf": ("google",), "absl-py": ("absl",),
    "attrs": ("attr", "attrs"), "pycryptodome": ("Crypto",), "pyjwt": ("jwt",), "pywavelets": ("pywt",),
    "imbalanced-learn": ("imblearn",), "ipython": ("IPython",), "pyzmq": ("zmq",), "grpcio": ("grpc",),
    "faiss-cpu": ("faiss",), "faiss-gpu": ("faiss",), "websocket-client": ("websocket",),
    "python-dotenv": ("dotenv",), "python-slugify": ("slugify",), "markdown-it-py": ("markdown_it",),
    "setuptools": ("setuptools", "pkg_resources", "_distutils_hack"), "tensorflow": ("tensorflow", "tf_keras"),
    "google-cloud-storage": ("google",), "google-auth": ("google",), "googleapis-common-protos": ("google",),
    "matplotlib": ("matplotlib", "mpl_toolkits", "pylab"), "pytorch-lightning": ("pytorch_lightning",),
    "rpds-py": ("rpds",), "llvmlite": ("llvmlite",), "typing-extensions": ("typing_extensions",),
    "huggingface-hub": ("huggingface_hub",), "jax-cuda12-plugin": ("jax_cuda12_plugin",),
}
# Standard-library modules that later Pythons removed (PEP 594 and friends): the build's own list still has them.
REMOVED = {
    (3, 12): {"distutils", "imp", "asynchat", "asyncore", "smtpd"},
    (3, 13): {"aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "mailcap", "msilib", "nis", "nntplib",
              "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau", "telnetlib", "uu", "xdrlib", "lib2to3"},
}
SWITCH = "KPACK_IMPORT_CHECK"  # "warn": report what resolves to nothing as warnings instead of refusing the build
_CATCHES_IMPORT = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
_UNKNOWN = object()  # an expression whose value on the kernel the build cannot tell
# import names of what pyproject's `local` extra installs: a core-only kpack has no torch for local kernels
LOCAL_EXTRA = {"torch", "torchvision", "timm", "albumentations", "numpy", "pandas", "sklearn"}


@dataclass(frozen=True)
class Use:
    """One import statement's module, as the kernel would look it up."""

    path: str  # packed file
    line: int
    module: str  # absolute dotted name ('' when a relative import goes above its top-level package)
    conditional: bool  # under an `if` whose outcome on the kernel the build cannot tell


# --------------------------------------------------------------------------------------------- finding imports

def _names(node: ast.AST | None) -> set[str]:
    if node is None:
        return set()
    if isinstance(node, ast.Tuple):
        return set().union(*(_names(e) for e in node.elts))
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    return set()


def _guards(handler: ast.ExceptHandler) -> bool:
    return handler.type is None or bool(_names(handler.type) & _CATCHES_IMPORT)


def _suppresses(node: ast.With) -> bool:
    """`with contextlib.suppress(ImportError):`"""
    return any(isinstance(item.context_expr, ast.Call) and _names(item.context_expr.func) == {"suppress"}
               and any(_names(arg) & _CATCHES_IMPORT for arg in item.context_expr.args) for item in node.items)


class _Kernel:
    """What the build knows of the kernel an `if` runs on: its Python version, Linux."""

    def __init__(self, python: tuple[int, ...]):
        self.python = python

    def value(self, node: ast.AST):
        """The value of a simple expression on the kernel, or _UNKNOWN."""
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            known = {("sys", "version_info"): self.python, ("sys", "platform"): "linux", ("os", "name"): "posix"}
            return known.get((node.value.id, node.attr), _UNKNOWN)
        if isinstance(node, ast.Subscript):
            base = self.value(node.value)
            if isinstance(base, tuple):
                try:
                    return base[ast.literal_eval(node.slice) if not isinstance(node.slice, ast.Slice) else
                                slice(*(ast.literal_eval(p) if p else None
                                        for p in (node.slice.lower, node.slice.upper, node.slice.step)))]
                except (ValueError, TypeError, SyntaxError, IndexError):
                    return _UNKNOWN
            return _UNKNOWN
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            return _UNKNOWN

    def decide(self, test: ast.AST) -> bool | None:
        """Whether an `if` test holds on the kernel; None when the build cannot tell."""
        if _names(test) == {"TYPE_CHECKING"}:
            return False
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            inner = self.decide(test.operand)
            return None if inner is None else not inner
        if isinstance(test, ast.BoolOp):
            parts = [self.decide(v) for v in test.values]
            if isinstance(test.op, ast.And):
                return False if False in parts else (True if all(p is True for p in parts) else None)
            return True if True in parts else (False if all(p is False for p in parts) else None)
        if isinstance(test, ast.Call) and isinstance(test.func, ast.Attribute) and test.func.attr == "startswith" \
                and len(test.args) == 1:
            text, prefix = self.value(test.func.value), self.value(test.args[0])
            if isinstance(text, str) and isinstance(prefix, (str, tuple)):
                return text.startswith(prefix)
            return None
        if isinstance(test, ast.Compare) and len(test.ops) == 1:
            left, right = self.value(test.left), self.value(test.comparators[0])
            if left is _UNKNOWN or right is _UNKNOWN:
                return None
            ops = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
                   ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
                   ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
            try:
                return bool(ops[type(test.ops[0])](left, right))
            except (KeyError, TypeError):
                return None
        return None


def _package_of(bundle: inline.Bundle, file: inline.PackedFile) -> str | None:
    module = bundle.module_name(file)
    if module is None:
        return None
    return module if PurePosixPath(file.path).name == "__init__.py" else module.rpartition(".")[0]


def _statements(data: bytes, path: str, kernel: _Kernel) -> list[tuple[int, int, str, bool]]:
    """(line, level, module, conditional) of each unguarded import statement that can run on the kernel;
    level > 0 for a relative import (module is then relative to the file's package, '' for `from . import`)."""
    found: list[tuple[int, int, str, bool]] = []

    def visit(node: ast.AST, conditional: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, 0, a.name, conditional) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.level, node.module or "", conditional))
        elif isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            guarded = any(_guards(h) for h in node.handlers)
            for child in [*([] if guarded else node.body), *node.handlers, *node.orelse, *node.finalbody]:
                visit(child, conditional)
        elif isinstance(node, ast.If):
            holds = kernel.decide(node.test)
            for branch, runs in ((node.body, holds is not False), (node.orelse, holds is not True)):
                for child in branch if runs else ():
                    visit(child, conditional or holds is None)
        elif not (isinstance(node, ast.With) and _suppresses(node)):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
                    visit(child, conditional)

    visit(ast.parse(data, filename=path), False)
    return found


def _absolute(package: str | None, level: int, module: str) -> str:
    """The absolute name of a relative import from `package` ('' when it goes above the top-level package)."""
    if level == 0:
        return module
    parts = package.split(".") if package else []
    if level - 1 >= len(parts):
        return ""
    base = ".".join(parts[:len(parts) - level + 1])
    return f"{base}.{module}" if module else base


class _Cache:
    """Import statements per file content (sha256), kept in build/.import-uses.json: parsing every packed module
    costs more than the rest of a build, and a rebuild usually changes one file."""

    FORMAT = 1

    def __init__(self, path: Path | None, python: tuple[int, ...]):
        self.path, self.key = path, f"{self.FORMAT} {'.'.join(map(str, python))}"
        self.old: dict = {}
        if path is not None:
            try:
                saved = json.loads(path.read_text())
                self.old = saved["files"] if saved.get("key") == self.key else {}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                pass
        self.new: dict = {}

    def get(self, file: inline.PackedFile, kernel: _Kernel) -> list[tuple[int, int, str, bool]]:
        digest = inline.sha256(file.data)
        found = self.old.get(digest)
        if found is None:
            found = _statements(file.data, file.path, kernel)
        self.new[digest] = [list(f) for f in found]
        return [tuple(f) for f in found]

    def save(self) -> None:
        if self.path is None or self.new == self.old:
            return
        try:
            atomic_write_text(self.path, json.dumps({"key": self.key, "files": self.new}, sort_keys=True))
        except OSError:  # a read-only project still builds, just without the cache
            pass


def imports(bundle: inline.Bundle, python: tuple[int, ...] = sys.version_info[:3],
            cache: Path | None = None) -> list[Use]:
    """Every import statement of the packed modules that can run on the kernel, unguarded, in file order."""
    kernel = _Kernel(tuple(python))
    kept = _Cache(cache, tuple(python))
    found: list[Use] = []
    for file in bundle.files:
        if file.is_module:
            package = _package_of(bundle, file)
            found += [Use(file.path, line, _absolute(package, level, module), conditional)
                      for line, level, module, conditional in kept.get(file, kernel)]
    kept.save()
    return found


# --------------------------------------------------------------------------------------------- what the kernel has

@functools.lru_cache(maxsize=1024)
def _installed_names(dist: str) -> frozenset[str] | None:
    """Top-level import names of a distribution installed in this venv, from its own metadata (None: not here)."""
    try:
        found = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    top = (found.read_text("top_level.txt") or "").split()
    if top:
        return frozenset(top)
    names = set()
    for file in found.files or ():
        first = file.parts[0] if file.parts else ""
        if first and first != ".." and not first.endswith((".dist-info", ".egg-info", ".pth")) \
                and first != "__pycache__":
            names.add(first.split(".", 1)[0] if "." in first else first)
    return frozenset(names)


def _wheel_names(wheel: Path) -> frozenset[str]:
    """Top-level import names a wheel installs: its top_level.txt, else the first parts of its file list."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            listed = zf.namelist()
            top = next((n for n in listed if n.endswith(".dist-info/top_level.txt")), None)
            if top:
                return frozenset(zf.read(top).decode("utf-8", "replace").split())
    except (OSError, zipfile.BadZipFile):
        return frozenset()
    firsts = {n.split("/", 1)[0] for n in listed}
    return frozenset(f.split(".", 1)[0] for f in firsts if not f.endswith((".dist-info", ".data")))


def _guessed_names(dist: str) -> set[str]:
    return {*ALIASES.get(dist, ()), dist.replace("-", "_")}


def _requires_closure(names: set[str]) -> set[str]:
    """The pins and, where they are installed here, everything they need (extras aside): what the wheels
    dataset ships with them, as far as this venv shows without resolving again."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            try:
                if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                    continue
            except Exception:  # noqa: BLE001 - an unusual marker: keep the requirement
                pass
            todo.append(canonicalize_name(req.name))
    return seen


class Provider:
    """Distributions a source of modules has (the wheels dataset, the image), asked for import names."""

    def __init__(self, label: str, dists: set[str], wheel_cache: Path | None = None, known: bool = True,
                 expand=None):
        self.label, self.dists, self.known = label, dists, known
        self.wheel_cache = wheel_cache
        self.expand = expand  # dists -> more dists (what the pins pull in), asked only when the cheap answer fails
        self._names: dict[str, str] | None = None

    def has(self, top: str, thorough: bool = True) -> bool:
        """Whether one of the distributions installs `top`: by name and ALIASES only, or (thorough) also by
        what the pins pull in and each distribution's own metadata or wheel."""
        if any(top in _guessed_names(d) for d in self.dists):
            return True
        if not thorough:
            return False
        if self.expand is not None:
            self.dists, self.expand = self.expand(self.dists), None
            if any(top in _guessed_names(d) for d in self.dists):
                return True
        if self._names is None:
            self._names = {}
            cached = {}
            if self.wheel_cache is not None and self.wheel_cache.is_dir():
                for wheel in sorted(self.wheel_cache.glob("*.whl")):
                    key = wheels.wheel_key(wheel)
                    if key:
                        cached.setdefault(key[0], wheel)
            for dist in sorted(self.dists):
                names = _installed_names(dist)
                if names is None and dist in cached:
                    names = _wheel_names(cached[dist])
                for name in names or ():
                    self._names.setdefault(name, dist)
        return top in self._names


class Folder:
    """The local image: the folder of top-level modules the local Kaggle gives its kernels (found on first use:
    listing the venv's distributions costs a tenth of a second)."""

    known = True

    def __init__(self, label: str, site):
        self.label, self.site = label, site  # site: a callable giving the folder
        self.tops: set[str] | None = None

    def has(self, top: str, thorough: bool = True) -> bool:
        if self.tops is None:
            self.tops = set()
            for entry in self.site().iterdir():
                name = entry.name
                if not (name.endswith((".dist-info", ".egg-info", ".libs", ".pth")) or name == "__pycache__"):
                    self.tops.add(name.split(".", 1)[0])
        return top in self.tops


class LocalImage:
    """The local image (this venv minus packager/localkaggle/local-image-excludes.txt), asked cheaply: a name found in
    the venv's site folders that no excluded distribution installs is in it; only a name an excluded one installs
    is looked up in the image's own folder (listing every distribution for that costs a tenth of a second)."""

    known = True
    label = "the local image"

    def __init__(self):
        self._excluded: set[str] | None = None
        self._exact: Folder | None = None

    def _excluded_names(self) -> set[str]:
        from packager.localkaggle import image

        excludes, names = image.read_excludes(), set()
        for site in image.site_dirs():
            for info in site.glob("*.dist-info"):
                if image.normalize(info.name.split("-", 1)[0]) not in excludes:
                    continue
                top = info / "top_level.txt"
                record = info / "RECORD"
                if top.is_file():
                    names |= set(top.read_text(errors="replace").split())
                elif record.is_file():
                    firsts = {line.split("/", 1)[0].split(",", 1)[0] for line in
                              record.read_text(errors="replace").splitlines()}
                    names |= {f.split(".", 1)[0] for f in firsts if f and not f.endswith(".dist-info")}
        return names

    def has(self, top: str, thorough: bool = True) -> bool:
        from packager.localkaggle import image

        if importlib.machinery.PathFinder.find_spec(top, [str(d) for d in image.site_dirs()]) is None:
            return False
        if self._excluded is None:
            self._excluded = self._excluded_names()
        if top not in self._excluded:
            return True
        if not thorough:
            return False
        if self._exact is None:
            self._exact = Folder(self.label, image.image_site)
        return self._exact.has(top)


# --------------------------------------------------------------------------------------------- the check

@dataclass
class Sources:
    """Where the kernel can find a module that is not packed."""

    python: tuple[int, ...]
    wheels: Provider
    image: Provider | LocalImage | None  # None: the build has no snapshot of the image to check against
    requirements: str | None  # the requirements file of the wheels dataset (None: no wheels dataset)
    notes: list[str]
    cache: Path | None = None  # where parsed import statements are kept between builds


def kernel_sources(cfg, root: Path) -> Sources:
    """The wheels dataset's distributions and the image's, for the configured backend."""
    notes: list[str] = []
    target = wheels.target_for(cfg, root)
    spec = cfg.datasets.wheels
    pins: set[str] = set()
    requirements = None
    label = "no wheels dataset"
    if spec is not None:
        requirements = spec.requirements
        path = root / spec.requirements
        label = f"the wheels dataset ({requirements})"
        if path.is_file():
            pins = {p.name for p in wheels.read_requirements(path)}  # a bad line: its own one-line error
        else:
            label = f"the wheels dataset ({requirements}, which does not exist)"
    shipped = set(pins)
    if spec is not None:
        manifest = root / "build" / "datasets" / spec.slug / wheels.MANIFEST
        try:
            built = json.loads(manifest.read_text())
            if set(built.get("requirements", {})) == pins:
                shipped |= set(built.get("shipped", {})) | set(built.get("image", {}))
        except (OSError, ValueError, AttributeError):
            pass
    wheel_cache = root / wheels.CACHE_DIR / target.key
    provider = Provider(label, shipped, wheel_cache, expand=_requires_closure)

    image: Provider | LocalImage | None
    snapshot = wheels.snapshot_file(wheels.snapshot_path(target.name, root))
    if snapshot is not None:
        image = Provider(f"the image snapshot {snapshot.where} ({snapshot.describe()})", set(snapshot.packages),
                         known=snapshot.known)
    elif target.name == "local":
        image = LocalImage()
    else:
        image = None
        notes.append(f"imports not checked against the image: no {wheels.snapshot_path(target.name, root)} "
                     "(`kpack probe-image` records it)")
    python = sys.version_info[:3] if target.name == "local" else _snapshot_python(root, target.python)
    return Sources(python, provider, image, requirements, notes, root / "build" / ".import-uses.json")


def _snapshot_python(root: Path, fallback: str) -> tuple[int, ...]:
    text = wheels.read_snapshot(root / wheels.KAGGLE_SNAPSHOT)[1].get("python", fallback)
    try:
        return tuple(int(p) for p in text.split(".")[:3])
    except ValueError:
        return tuple(int(p) for p in fallback.split("."))


def _packed_modules(bundle: inline.Bundle) -> set[str]:
    """Every importable dotted name of the packed tree: modules, packages, namespace folders."""
    names = set()
    for file in bundle.files:
        module = bundle.module_name(file)
        if module:
            parts = module.split(".")
            names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def _installed_here(top: str) -> bool:
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _maybe_never_imported(path: str) -> bool:
    """Test modules of a packed third-party package: shipped, but no kernel imports them."""
    parts = PurePosixPath(path).parts
    name = parts[-1]
    return any(p in ("tests", "test", "testing") for p in parts[:-1]) or name.startswith("test_") \
        or name == "conftest.py"


def check(bundle: inline.Bundle, sources: Sources, kind: str) -> list[str]:
    """Raise a UserError naming the first import that resolves to nothing (and how many more); return the
    warnings for those that cannot be decided here."""
    roots = {r.name for r in bundle.roots}
    packed = _packed_modules(bundle)
    removed = set().union(*(names for version, names in REMOVED.items() if sources.python[:2] >= version))
    errors: list[tuple[Use, str]] = []
    warnings = list(sources.notes)
    seen: set[str] = set()  # removed stdlib modules already warned about
    warned: set[str] = set()
    failed: set[str] = set()
    runtime = next((r.path + "/" for r in bundle.roots if r.name == "kpack_runtime"), None)
    for use in imports(bundle, sources.python, sources.cache):
        if runtime and use.path.startswith(runtime):
            continue  # kpack's own kernel runtime: it picks among optional backends (cryptography, Crypto) itself
        where = f"{use.path}:{use.line}"
        if not use.module:
            errors.append((use, f"{where}: a relative import goes above its top-level package; import it by its "
                                f"full name instead"))
            continue
        top = use.module.split(".", 1)[0]
        if top in roots:
            if use.module not in packed:
                errors.append((use, f"{where}: `{use.module}`: {top} is packed but has no module {use.module}; "
                                    "check the name, or that the file is in the packed folder"))
            continue
        if top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "__main__":
            if top in removed and top not in seen:
                seen.add(top)
                warnings.append(f"{where}: `{use.module}` is no longer in the standard library of the kernel's "
                                f"Python {'.'.join(map(str, sources.python[:2]))}")
            continue
        if top in failed:
            continue
        providers = [p for p in (sources.wheels, sources.image) if p is not None]
        if any(p.has(top, thorough=False) for p in providers) or any(p.has(top) for p in providers):
            continue
        undecided = None
        if sources.image is None:
            undecided = "no image snapshot to check against: `kpack push` probes the image first"
        elif not sources.image.known and _installed_here(top):
            undecided = "the snapshot is a guess and the package is installed here: the image may have it " \
                        "(`kpack probe-image` records the image)"
        elif use.conditional:
            undecided = "it sits under an `if` the build cannot decide"
        elif _maybe_never_imported(use.path):
            undecided = "in a test module, which a kernel hardly imports"
        if undecided and top in warned:
            continue
        fix = (f"add its distribution to {sources.requirements} (the wheels dataset)" if sources.requirements else
               "add a wheels dataset (datasets.wheels) whose requirements name its distribution")
        fix += f", or pack its folder with kernels.{kind}.packages"
        if isinstance(sources.image, LocalImage) and top in LOCAL_EXTRA:
            fix += f" (or `pip install 'kpack[local]'`: the local Kaggle's image is this Python's packages)"
        image_part = f"not in {sources.image.label}" if sources.image is not None else "no image snapshot"
        what = "may fail" if undecided else "resolves to nothing"
        wheels_part = f"not in {sources.wheels.label}" if sources.requirements else "no wheels dataset"
        line = f"{where}: `import {use.module}` {what} in the kernel: {top} is not packed, {wheels_part}, " \
               f"{image_part}; {fix}"
        if undecided:
            warned.add(top)
            warnings.append(f"{line} ({undecided})")
        else:
            failed.add(top)
            errors.append((use, line))
    if errors and os.environ.get(SWITCH, "").strip().lower() == "warn":
        return warnings + [line for _, line in errors]
    if errors:
        first = errors[0][1]
        more = [f"{u.module} ({u.path}:{u.line})" for u, _ in errors[1:]]
        raise UserError(first + (f"; also: {', '.join(more[:5])}" + (" ..." if len(more) > 5 else "") if more
                                 else ""))
    return warnings


def check_build(cfg, kind: str, root: Path, bundle: inline.Bundle) -> list[str]:
    """The check as `kpack build` runs it: the configured wheels dataset and image."""
    return check(bundle, kernel_sources(cfg, Path(root)), kind)
