"""Pack Python packages, their data files and a config into ONE self-contained kernel script.

The script carries every packed file under its original path (`kernel_src/losses.py`) and a small
meta-path importer that serves them from memory: modules, package data through `importlib.resources`
and `loader.get_data`, and `importlib.metadata` for packed `*.dist-info` folders. Each module is compiled
with its original path as the filename and its text is registered with `linecache`, so a traceback inside the
kernel names `kernel_src/losses.py`, the line and its text.

Nothing is extracted to disk, except for a package whose code names `__file__` (the build finds those): its
files are written to a private temp folder the first time it is imported, and its modules' `__file__` and
`__path__` name that copy, so `Path(__file__).parent / "data.json"` reads a real file. The folder is under the
kernel's temp dir (`/kaggle/temp`, never `/kaggle/working`, which is saved as output) and removed at exit.

Where an interpreter of the kernel's Python version is on this machine, the modules also travel compiled (one
base64 blob after the sources: `marshal` code objects, zlib): a kernel whose Python has the same bytecode magic
number executes those instead of compiling the sources, which was most of a packed script's start-up overhead
(a Python of another version compiles the sources as before). The code objects carry the original file names,
so tracebacks read the same either way.

A file is written as a raw string literal when its exact text survives that (and the trip through the
kaggle client, which reads the script in text mode and so turns `\\r` into `\\n`), else as base64.
Every literal is checked by parsing it back, and the finished script is parsed once more and compared
file by file with the inputs before anyone may write it.
"""
from __future__ import annotations

import ast
import base64
import functools
import hashlib
import json
import os
import subprocess
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packager.errors import UserError

# Files a package folder may hold that are never packed (build litter, type stubs, editor files).
SKIP_DIRS = ("__pycache__",)
SKIP_SUFFIXES = (".pyc", ".pyo", ".pyi")
# A compiled extension cannot be imported from memory: it has to come from the wheels dataset.
NATIVE_SUFFIXES = (".so", ".pyd", ".dylib", ".dll")
# Files of a `*.dist-info` folder that importlib.metadata reads (version, entry points, top level names).
DIST_INFO_FILES = ("METADATA", "entry_points.txt", "top_level.txt")
# Unicode categories that never go into a raw literal: control, surrogate, private use, unassigned,
# line and paragraph separators (editors and str.splitlines treat them as line breaks).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Co", "Cn", "Zl", "Zp"})
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F)) + b"\t\n"
_B64_LINE = 76
RULE = "# " + "=" * 98
THIN_RULE = "# " + "-" * 98


@dataclass(frozen=True)
class PackedFile:
    path: str  # original path, POSIX, relative: kernel_src/losses.py, vendor/attr/_make.py
    data: bytes

    @property
    def is_module(self) -> bool:
        return self.path.endswith(".py")


@dataclass(frozen=True)
class PackedRoot:
    """A top-level import name and where its files sit in the packed tree (a folder or one .py file)."""

    name: str
    path: str


@dataclass
class Bundle:
    """Everything one script carries, in a fixed order."""

    roots: list[PackedRoot]
    files: list[PackedFile]
    dists: list[str]  # packed *.dist-info folders

    def module_name(self, file: PackedFile) -> str | None:
        """The import name a packed .py file is served under (None for data files)."""
        if not file.is_module:
            return None
        for root in self.roots:
            if file.path == root.path:
                return root.name
            if file.path.startswith(root.path + "/"):
                rel = PurePosixPath(file.path[len(root.path) + 1:]).with_suffix("")
                parts = [root.name, *rel.parts]
                if parts[-1] == "__init__":
                    parts.pop()
                return ".".join(parts)
        return None


def _label(path: Path, root: Path, name: str) -> str:
    """The path a packed file is known by: relative to the project root, else under its import name."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return name


def _walk(folder: Path) -> list[Path]:
    """Every packable file under `folder`, sorted by relative path (the same order on every machine)."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and not path.name.endswith(SKIP_SUFFIXES):
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _is_native(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(NATIVE_SUFFIXES) or ".so." in name


def _dist_info_for(folder: Path) -> Path | None:
    """The `*.dist-info` beside an unpacked wheel's package folder that owns it, if any."""
    for dist in sorted(folder.parent.glob("*.dist-info")):
        record = dist / "RECORD"
        top = dist / "top_level.txt"
        names = set()
        if top.is_file():
            names |= set(top.read_text(errors="replace").split())
        if record.is_file():
            names |= {line.split("/", 1)[0] for line in record.read_text(errors="replace").splitlines() if "/" in line}
        if folder.name in names:
            return dist
    return None


def collect(root: Path, sources: list[tuple[str, Path]]) -> Bundle:
    """Read the packages to pack. `sources`: (what the config calls it, folder or .py file) pairs.

    Refuses, with one line each, what cannot work in a kernel: a missing folder, a name that cannot be
    imported, two packages with one name, a compiled extension.
    """
    roots: list[PackedRoot] = []
    files: dict[str, PackedFile] = {}
    dists: list[str] = []
    for what, src in sources:
        if not src.exists():
            raise UserError(f"{what}: no such package folder; check the path (relative to the project root)")
        if src.is_file() and src.suffix != ".py":
            raise UserError(f"{what}: neither a package folder nor a .py module")
        name = src.stem if src.is_file() else src.name
        if not name.isidentifier():
            raise UserError(f"{what}: '{name}' is not an importable package name")
        if any(r.name == name for r in roots):
            raise UserError(f"{what}: a second package called '{name}'; each packed package needs its own name")
        label = _label(src, root, name if src.is_dir() else f"{name}.py")
        roots.append(PackedRoot(name, label))
        paths = [src] if src.is_file() else _walk(src)
        if src.is_dir() and not any(p.suffix == ".py" for p in paths):
            raise UserError(f"{what}: no Python modules in this folder; is it the package folder?")
        for path in paths:
            rel = label if src.is_file() else f"{label}/{path.relative_to(src).as_posix()}"
            if _is_native(path):
                raise UserError(
                    f"{rel}: a compiled extension cannot be packed into a kernel script; "
                    "ship its package as a wheel in the wheels dataset (datasets.wheels) instead")
            files[rel] = PackedFile(rel, path.read_bytes())
        dist = _dist_info_for(src) if src.is_dir() else None
        if dist is not None:
            dist_label = _label(dist, root, dist.name)
            if dist_label not in dists:
                dists.append(dist_label)
                for fname in DIST_INFO_FILES:
                    if (dist / fname).is_file():
                        rel = f"{dist_label}/{fname}"
                        files[rel] = PackedFile(rel, (dist / fname).read_bytes())
    return Bundle(roots, [files[k] for k in sorted(files)], dists)


def root_of(bundle: Bundle, file: PackedFile) -> PackedRoot | None:
    """The packed package (or single module) a file belongs to."""
    return next((r for r in bundle.roots if file.path == r.path or file.path.startswith(r.path + "/")), None)


def file_users(bundle: Bundle) -> dict[str, tuple[str, int]]:
    """Packed packages whose code names `__file__`: root name -> (file, line) of the first use.

    Only the bare name counts (a module asking where it itself lives): `other.__file__` merely names a path.
    Such packages are written to disk in the kernel so that paths made from `__file__` exist."""
    found: dict[str, tuple[str, int]] = {}
    for file in bundle.files:
        if not file.is_module or b"__file__" not in file.data:
            continue
        root = root_of(bundle, file)
        if root is None or root.name in found:
            continue
        lines = [n.lineno for n in ast.walk(ast.parse(file.data)) if isinstance(n, ast.Name) and n.id == "__file__"]
        if lines:
            found[root.name] = (file.path, min(lines))
    return found


def check_compiles(bundle: Bundle) -> None:
    """Compile every packed module as the kernel will, naming the original file and line on failure."""
    for file in bundle.files:
        if not file.is_module:
            continue
        try:
            compile(file.data, file.path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            where = f"{file.path}:{exc.lineno}" if exc.lineno else file.path
            raise UserError(f"{where}: syntax error: {exc.msg}; fix it before building") from None
        except ValueError as exc:  # NUL bytes on Python < 3.12
            raise UserError(f"{file.path}: cannot be compiled: {exc}") from None


# ---------------------------------------------------------------------------------------------------
# Literals: raw text where it stays exact, base64 otherwise


def text_obstacle(data: bytes) -> str | None:
    """Why `data` cannot travel as a raw text literal, or None when it can."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8 text"
    if data.isascii() and not data.translate(None, _PRINTABLE_ASCII):
        return None  # the common case, decided without a loop in Python
    seen = set()
    for ch in text:
        if ch in seen or ch in "\t\n":
            continue
        seen.add(ch)
        if ch == "\r":
            return "carriage returns"
        if ch == "\x00":
            return "NUL bytes"
        if ch == "\ufeff":
            return "a byte-order mark"
        if unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            return f"the control character U+{ord(ch):04X}"
    return None


def raw_literal(text: str) -> str | None:
    """A raw triple-quoted literal whose value is '\\n' + text (so the text starts on its own line),
    or None when no such literal reproduces the text exactly."""
    for quote in ("'''", '"""'):
        literal = f"r{quote}\n{text}{quote}"
        try:
            if ast.literal_eval(literal) == "\n" + text:
                return literal
        except (SyntaxError, ValueError):
            pass
    return _pieces_literal(text)


def _pieces_literal(text: str) -> str | None:
    """Raw literals implicitly concatenated around what a single raw literal cannot hold: each occurrence
    of the delimiter, and quotes or backslashes at the end of a piece. Still reads as the source text."""
    quote = "'''" if text.count("'''") <= text.count('"""') else '"""'
    pieces = []
    for i, part in enumerate(text.split(quote)):
        if i:
            pieces.append(repr(quote))
        part = "\n" + part if i == 0 else part
        core = part.rstrip(quote[0] + "\\")
        if core:
            pieces.append(f"r{quote}{core}{quote}")
        if part[len(core):]:
            pieces.append(repr(part[len(core):]))
    literal = " ".join(pieces)
    try:
        if ast.literal_eval(literal) == "\n" + text:
            return literal
    except (SyntaxError, ValueError):
        pass
    return None


def b64_literal(data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    lines = [encoded[i:i + _B64_LINE] for i in range(0, len(encoded), _B64_LINE)]
    return '"""\n' + "\n".join(lines) + ('\n"""' if lines else '"""')


@functools.lru_cache(maxsize=4096)
def encode(data: bytes) -> tuple[str, str, str | None]:
    """(method, literal, why base64) for one file: method 'text' or 'b64'."""
    obstacle = text_obstacle(data)
    if obstacle is None:
        literal = raw_literal(data.decode("utf-8"))
        if literal is not None:
            return "text", literal, None
        obstacle = "no raw literal holds it exactly"
    return "b64", b64_literal(data), obstacle


def decode(method: str, value: str) -> bytes:
    """What the kernel's loader does with a literal's value (kept in step with LOADER below)."""
    if method == "text":
        return value[1:].encode("utf-8")
    return base64.b64decode(value)


# ---------------------------------------------------------------------------------------------------
# Bytecode: the packed modules compiled by an interpreter of the kernel's Python version

BYTECODE_PROGRAM = r"""
import base64, importlib.util, json, marshal, sys, zlib
sources = json.load(sys.stdin)
code = {path: base64.b64encode(zlib.compress(marshal.dumps(compile(base64.b64decode(data), path, "exec",
                                                                   dont_inherit=True)), 9)).decode("ascii")
        for path, data in sorted(sources.items())}
json.dump({"magic": importlib.util.MAGIC_NUMBER.hex(), "code": code}, sys.stdout)
"""
BYTECODE_CACHE = Path("build") / ".bytecode-1"  # under the project root: compiled modules by interpreter and source


@dataclass(frozen=True)
class Bytecode:
    magic: str  # importlib.util.MAGIC_NUMBER of the compiling Python, hex
    python: str  # its version, e.g. 3.12.1
    blob: str  # base64 of marshal({packed path: zlib(marshal.dumps(code object))})


def compile_bytecode(bundle: Bundle, python: str, version: str, cache: Path | None = None) -> Bytecode | None:
    """Every packed module compiled by `python` (of `version`), in a fresh process with a fixed hash seed so the
    same sources give the same bytes; modules compiled before come from `cache`. None when compiling fails (the
    kernel then compiles the sources, as it would without bytecode)."""
    modules = [f for f in bundle.files if f.is_module]
    if not modules:
        return None
    folder = cache / f"cpython-{version}" if cache is not None else None
    key = {f.path: sha256(f.path.encode() + b"\0" + f.data) for f in modules}
    code: dict[str, bytes] = {}
    magic = None
    if folder is not None and (folder / "MAGIC").is_file():
        magic = (folder / "MAGIC").read_text().strip()
        for f in modules:
            kept = folder / f"{key[f.path]}.code"
            if kept.is_file():
                code[f.path] = kept.read_bytes()
    todo = {f.path: base64.b64encode(f.data).decode("ascii") for f in modules if f.path not in code}
    if todo:
        env = {"PYTHONHASHSEED": "0", "PATH": os.environ.get("PATH", "")}
        try:
            done = subprocess.run([python, "-I", "-S", "-c", BYTECODE_PROGRAM], input=json.dumps(todo),
                                  capture_output=True, text=True, timeout=600, env=env)
            answer = json.loads(done.stdout) if done.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, ValueError):
            answer = None
        if not answer or (magic and answer["magic"] != magic):
            return None
        magic = answer["magic"]
        fresh = {path: base64.b64decode(data) for path, data in answer["code"].items()}
        code.update(fresh)
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "MAGIC").write_text(magic + "\n")
                for path, data in fresh.items():
                    (folder / f"{key[path]}.code").write_bytes(data)
            except OSError:  # a read-only project builds all the same, compiling every time
                pass
    import marshal

    ordered = {path: code[path] for path in sorted(code)}
    return Bytecode(magic, version, base64.b64encode(marshal.dumps(ordered)).decode("ascii"))


@functools.lru_cache(maxsize=8)
def _interpreter(target) -> tuple[str, str] | None:
    from packager import wheels

    return wheels.bytecode_python(target)


def bytecode_for(cfg, root: Path, bundle: Bundle) -> Bytecode | None:
    """Bytecode for the configured backend's kernel Python when this machine has an interpreter of that version
    (the local Kaggle's kernels run on this one). KPACK_NO_BYTECODE=1 leaves it out."""
    if os.environ.get("KPACK_NO_BYTECODE", "").strip() not in ("", "0"):
        return None
    from packager import wheels

    found = _interpreter(wheels.target_for(cfg, root))
    return compile_bytecode(bundle, found[0], found[1], Path(root) / BYTECODE_CACHE) if found else None


# ---------------------------------------------------------------------------------------------------
# The loader, copied verbatim into every script (stdlib only; runs on the kernel's Python)

LOADER = r'''
import base64 as _kpack_base64
import importlib.machinery as _kpack_machinery
import importlib.util as _kpack_util
import io as _kpack_io
import linecache as _kpack_linecache
import marshal as _kpack_marshal
import os as _kpack_os
import re as _kpack_re
import sys as _kpack_sys


def _kpack_resource_classes():
    """Node and reader types for importlib.resources, made on first use (importing it costs startup time)."""
    global _kpack_resource_types
    try:
        return _kpack_resource_types
    except NameError:
        pass
    from importlib.resources.abc import Traversable, TraversableResources

    class KpackNode(Traversable):
        """A file or folder of the packed tree, for importlib.resources.files(...)."""

        def __init__(self, importer, path):
            self._importer, self._path = importer, path

        @property
        def name(self):
            return self._path.rpartition("/")[2]

        def is_file(self):
            return self._path in self._importer.files

        def is_dir(self):
            prefix = self._path + "/"
            return any(p.startswith(prefix) for p in self._importer.files)

        def iterdir(self):
            prefix = self._path + "/"
            names = sorted({p[len(prefix):].split("/", 1)[0] for p in self._importer.files if p.startswith(prefix)})
            return iter([KpackNode(self._importer, prefix + n) for n in names])

        def joinpath(self, *descendants):
            path = self._path
            for part in "/".join(str(d) for d in descendants).split("/"):
                if part in ("", "."):
                    continue
                path = path.rpartition("/")[0] if part == ".." else path + "/" + part
            return KpackNode(self._importer, path)

        def __truediv__(self, child):
            return self.joinpath(child)

        def read_bytes(self):
            try:
                return self._importer.files[self._path]
            except KeyError:
                raise FileNotFoundError(self._path) from None

        def read_text(self, encoding=None, errors=None):
            return self.read_bytes().decode(encoding or "utf-8", errors or "strict")

        def open(self, mode="r", *args, **kwargs):
            stream = _kpack_io.BytesIO(self.read_bytes())
            if "b" in mode:
                return stream
            kwargs.setdefault("encoding", "utf-8")
            return _kpack_io.TextIOWrapper(stream, *args, **kwargs)

        def __repr__(self):
            return f"<packed {self._path}>"

        __str__ = __repr__

    class KpackReader(TraversableResources):
        def __init__(self, node):
            self._node = node

        def files(self):
            return self._node

    _kpack_resource_types = KpackNode, KpackReader
    return _kpack_resource_types


def _kpack_distribution(importer, path):
    """An importlib.metadata distribution read from a packed *.dist-info folder."""
    from importlib.metadata import Distribution

    class KpackDistribution(Distribution):
        def read_text(self, filename):
            data = importer.files.get(path + "/" + filename)
            return None if data is None else data.decode("utf-8")

        def locate_file(self, name):
            return _kpack_resource_classes()[0](importer, path.rpartition("/")[0] + "/" + str(name))

    return KpackDistribution()


def _kpack_private_dir():
    """A private folder for packed files that must exist on disk, removed at exit by the process that made it.
    Under the kernel's temp dir (KPACK_KAGGLE_ROOT or /kaggle, then temp/), never working/ (saved as output);
    the system temp dir where there is no such root (the script run on a laptop)."""
    import atexit
    import shutil
    import tempfile

    root = _kpack_os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle"
    folder = None
    if _kpack_os.path.isdir(root):
        try:
            _kpack_os.makedirs(_kpack_os.path.join(root, "temp"), exist_ok=True)
            folder = tempfile.mkdtemp(prefix="kpack-files-", dir=_kpack_os.path.join(root, "temp"))
        except OSError:
            pass
    folder = folder or tempfile.mkdtemp(prefix="kpack-files-")
    owner = _kpack_os.getpid()  # a forked worker inherits the atexit handler: only the owner removes the folder
    atexit.register(lambda: _kpack_os.getpid() == owner and shutil.rmtree(folder, ignore_errors=True))
    return folder


def _kpack_norm(name):
    return _kpack_re.sub(r"[-_.]+", "_", name).lower()


class KpackImporter:
    """Serves the packed modules, package data and dist-info from memory; a package whose code names __file__
    from a copy written to a private temp folder on its first import (see on_disk)."""

    def __init__(self):
        self.files = {}  # packed path -> bytes
        self.roots = {}  # top-level import name -> packed path (a folder, or one .py file)
        self.dists = []  # packed *.dist-info folders
        self.disk_roots = {}  # packages whose code names __file__ -> False, then True once written to disk
        self.disk_dir = None  # the private folder they are written to, made on first use
        self.code = {}  # packed path -> marshalled code object, when the script's bytecode fits this Python

    # --- filled in by section 2
    def root(self, name, path):
        self.roots[name] = path

    def on_disk(self, name):
        self.disk_roots[name] = False

    def bytecode(self, magic, value):
        if _kpack_util.MAGIC_NUMBER.hex() == magic:  # the same bytecode format; another Python compiles the sources
            self.code = _kpack_marshal.loads(_kpack_base64.b64decode(value))

    def dist(self, path):
        self.dists.append(path)

    def text(self, path, value):
        self.files[path] = value[1:].encode("utf-8")

    def b64(self, path, value):
        self.files[path] = _kpack_base64.b64decode(value)

    def install(self):
        for name in self.roots:  # a copy from site-packages imported earlier must not shadow the packed one
            for loaded in [m for m in _kpack_sys.modules if m == name or m.startswith(name + ".")]:
                del _kpack_sys.modules[loaded]
        _kpack_sys.meta_path.insert(0, self)

    # --- meta-path finder
    def _locate(self, fullname):
        """(file or None, is package, folder) for a packed module, or None."""
        top, _, rest = fullname.partition(".")
        base = self.roots.get(top)
        if base is None:
            return None
        if base.endswith(".py"):
            return (base, False, base.rpartition("/")[0]) if not rest else None
        stem = base + ("/" + rest.replace(".", "/") if rest else "")
        if stem + "/__init__.py" in self.files:
            return stem + "/__init__.py", True, stem
        if rest and stem + ".py" in self.files:
            return stem + ".py", False, stem.rpartition("/")[0]
        if any(p.startswith(stem + "/") for p in self.files):
            return None, True, stem  # a folder without __init__.py: a namespace package
        return None

    def _disk_prefix(self, fullname):
        """'<private folder>/' for a package written to disk (written now, on its first import), else ''."""
        top = fullname.partition(".")[0]
        written = self.disk_roots.get(top)
        if written is None:
            return ""
        if not written:
            try:
                self._write(self.roots[top])
            except OSError:  # no writable temp dir: served from memory, as a package without __file__ is
                self.disk_roots[top] = None
                return ""
            self.disk_roots[top] = True
        return self.disk_dir + "/"

    def _write(self, base):
        if self.disk_dir is None:
            self.disk_dir = _kpack_private_dir()
        for path, data in self.files.items():
            if path == base or path.startswith(base + "/"):
                target = _kpack_os.path.join(self.disk_dir, path)
                _kpack_os.makedirs(_kpack_os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as out:
                    out.write(data)

    def find_spec(self, fullname, path=None, target=None):
        found = self._locate(fullname)
        if found is None:
            return None
        origin, is_package, folder = found
        prefix = self._disk_prefix(fullname)
        spec = _kpack_machinery.ModuleSpec(fullname, self, origin=origin and prefix + origin, is_package=is_package)
        spec.has_location = origin is not None
        if is_package and prefix:
            spec.submodule_search_locations = [prefix + folder]  # __path__ names the folder on disk
        return spec

    def find_distributions(self, context=None):
        wanted = getattr(context, "name", None)
        for path in self.dists:
            if not wanted or _kpack_norm(path.rpartition("/")[2].split("-")[0]) == _kpack_norm(wanted):
                yield _kpack_distribution(self, path)

    # --- loader
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(self.get_code(module.__spec__.name), module.__dict__)

    def is_package(self, fullname):
        return self._locate(fullname)[1]

    def get_filename(self, fullname):
        origin = self._locate(fullname)[0]
        return origin and self._disk_prefix(fullname) + origin

    def get_source(self, fullname):
        origin = self._locate(fullname)[0]
        return "" if origin is None else _kpack_util.decode_source(self.files[origin])

    def get_code(self, fullname):
        origin = self._locate(fullname)[0]
        if origin is None:
            return compile("", f"<namespace package {fullname}>", "exec")
        data = self.files[origin]
        lines = _kpack_io.StringIO(_kpack_util.decode_source(data)).readlines()
        _kpack_linecache.cache[origin] = (len(data), None, lines, origin)  # tracebacks show the packed text
        code = self.code.get(origin)
        if code is not None:
            import zlib

            return _kpack_marshal.loads(zlib.decompress(code))
        return compile(data, origin, "exec", dont_inherit=True)

    def get_data(self, path):
        key = _kpack_os.fspath(path).replace(_kpack_os.sep, "/")
        while key.startswith("./"):
            key = key[2:]
        if self.disk_dir and key.startswith(self.disk_dir + "/"):  # a path made from __file__ of a written package
            key = key[len(self.disk_dir) + 1:]
        try:
            return self.files[key]
        except KeyError:
            raise FileNotFoundError(path) from None

    def get_resource_reader(self, fullname):
        found = self._locate(fullname)
        if found is None:
            return None
        node, reader = _kpack_resource_classes()
        return reader(node(self, found[2]))


_kpack = KpackImporter()
'''.lstrip("\n")


# ---------------------------------------------------------------------------------------------------
# The script


@dataclass(frozen=True)
class Header:
    title: str  # e.g. kpack/digits-multilabel-train (train)
    lines: tuple[str, ...]  # free-form "key: value" lines for the banner
    rebuild: str  # the command that regenerates the script


def _comment(lines: list[str]) -> list[str]:
    return [("# " + line).rstrip() for line in lines]


def _describe(bundle: Bundle, file: PackedFile, method: str, why: str | None) -> str:
    module = bundle.module_name(file)
    kind = f"module {module}" if module else "data file"
    extra = f", base64: {why}" if method == "b64" else ""
    return f"{file.path}  ({kind}, {len(file.data):,} bytes{extra})"


def render(bundle: Bundle, config: dict, entry_module: str, header: Header, run_banner: str,
           bytecode: Bytecode | None = None) -> str:
    """The whole script as text (only '\\n' line ends)."""
    config_json = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=True)
    method, config_literal, _ = encode(config_json.encode())
    config_expr = (f"_kpack_json.loads({config_literal})" if method == "text"
                   else f"_kpack_json.loads(_kpack_base64.b64decode({config_literal}))")
    counts = _counts(bundle)
    out: list[str] = [
        RULE,
        f"# {header.title}",
        "#",
        *_comment(list(header.lines)),
        f"# packed: {counts}",
        "#",
        "# sections, each under a banner like this one:",
        "#   1. loader   serves the packed files below from memory (a package that names __file__: from a temp copy)",
        "#   2. packed   one banner per original file, its text verbatim below it (base64 when it must be)",
        *(["#   2b.         the same modules compiled, used when the kernel's Python has their bytecode format"]
          if bytecode else []),
        "#   3. config   the resolved project config this kernel runs with",
        "#   4. run      bootstrap the runtime, then main(config) of the entry",
        "#",
        f"# Generated: edit the sources and run `{header.rebuild}` instead of editing this file.",
        RULE,
        "",
        RULE,
        "# 1. loader",
        RULE,
        LOADER.rstrip("\n"),
        "",
        "",
        RULE,
        "# 2. packed files",
        RULE,
    ]
    for root in bundle.roots:
        out.append(f"_kpack.root({root.name!r}, {root.path!r})")
    for dist in bundle.dists:
        out.append(f"_kpack.dist({dist!r})")
    for name, (path, line) in sorted(file_users(bundle).items()):
        out.append(f"_kpack.on_disk({name!r})  # {path}:{line} names __file__: written to a temp folder on import")
    for file in bundle.files:
        method, literal, why = encode(file.data)
        out += ["", THIN_RULE, f"# {_describe(bundle, file, method, why)}", THIN_RULE,
                f"_kpack.{method}({file.path!r}, {literal})"]
    if bytecode is not None:
        lines = [bytecode.blob[i:i + _B64_LINE] for i in range(0, len(bytecode.blob), _B64_LINE)]
        out += ["", "", RULE,
                "# 2b. bytecode",
                f"# The modules above compiled by CPython {bytecode.python} (marshal, zlib, base64). A kernel whose",
                "# Python has the same bytecode magic number runs these instead of compiling the sources (start-up",
                "# time); any other Python compiles the sources. Tracebacks name the same files and lines either way.",
                RULE, f"_kpack.bytecode({bytecode.magic!r}, " + '"""', *lines, '""")']
    out += [
        "",
        "_kpack.install()",
        "",
        "",
        RULE,
        "# 3. config",
        RULE,
        "import json as _kpack_json",
        "",
        f"CONFIG = {config_expr}",
        "",
        "",
        RULE,
        "# 4. run",
        RULE,
        "def _kpack_run():",
        "    import importlib",
        "    import traceback",
        "",
        f"    print({run_banner!r}, flush=True)",
        "    try:",
        "        import kpack_runtime as rt",
        "",
        "        rt.bootstrap(CONFIG)",
        f"        entry = importlib.import_module({entry_module!r})",
        "        entry.main(CONFIG)",
        "    except SystemExit:",
        "        raise",
        "    except BaseException:",
        "        traceback.print_exc()",
        "        _kpack_sys.stderr.flush()",
        "        raise SystemExit(1)  # a non-zero exit: Kaggle marks the version ERROR",
        "",
        "",
        "if __name__ == \"__main__\":  # not in spawned workers (multiprocessing re-runs this file as __mp_main__)",
        "    _kpack_run()",
        "    # atexit handlers run (they close logs and writers, in milliseconds); the interpreter teardown after",
        "    # them is skipped: with torch loaded it takes seconds and could run past a session limit that the",
        "    # kit stopped in time for.",
        "    import atexit as _kpack_atexit",
        "    import os as _kpack_os",
        "",
        "    _kpack_atexit._run_exitfuncs()",
        "    _kpack_sys.stdout.flush()",
        "    _kpack_sys.stderr.flush()",
        "    _kpack_os._exit(0)",
        "",
    ]
    return "\n".join(out)


def _counts(bundle: Bundle) -> str:
    parts = []
    for root in bundle.roots:
        mine = [f for f in bundle.files if f.path == root.path or f.path.startswith(root.path + "/")]
        modules = sum(f.is_module for f in mine)
        data = len(mine) - modules
        parts.append(f"{root.name} ({modules} module{'s' * (modules != 1)}"
                     + (f", {data} data file{'s' * (data != 1)}" if data else "") + ")")
    return ", ".join(parts)


def verify(script: str, bundle: Bundle, config: dict) -> None:
    """Parse the finished script and check that every packed file and the config come back exactly."""
    tree = ast.parse(script)
    found: dict[str, bytes] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "_kpack"
                and node.func.attr in ("text", "b64")):
            path, value = (ast.literal_eval(arg) for arg in node.args)
            found[path] = decode(node.func.attr, value)
    expected = {f.path: f.data for f in bundle.files}
    if found != expected:
        bad = sorted(p for p in expected.keys() | found.keys() if found.get(p) != expected.get(p))
        raise RuntimeError(f"kpack bug: packed files do not round-trip: {bad[:5]}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "bytecode"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "_kpack"):
            import marshal

            code = marshal.loads(base64.b64decode(ast.literal_eval(node.args[1])))
            if sorted(code) != sorted(f.path for f in bundle.files if f.is_module):
                raise RuntimeError("kpack bug: the bytecode does not cover exactly the packed modules")
    namespace: dict = {}
    config_stmt = next(n for n in tree.body if isinstance(n, ast.Assign)
                       and any(isinstance(t, ast.Name) and t.id == "CONFIG" for t in n.targets))
    exec(compile(ast.Module([config_stmt], []), "<config>", "exec"),
         {"_kpack_json": json, "_kpack_base64": base64}, namespace)
    if namespace["CONFIG"] != config:
        raise RuntimeError("kpack bug: the embedded config does not round-trip")
    if "\r" in script:
        raise RuntimeError("kpack bug: a carriage return in the script")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
