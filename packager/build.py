"""`kpack build KIND`: kpack_runtime + the entry's package + the resolved config -> build/kernels/<slug>/<slug>.py.

Beside the script go kernel-metadata.json (so a plain `kaggle kernels push -p build/kernels/<slug>` works)
and build.json (the script's sha256, the inputs' sha256, what was packed). Everything is checked and
rendered in memory first, then written into a temporary folder that is renamed into place: a refused
build leaves no half-written folder and an earlier build stays as it was. Same inputs give the same bytes:
sorted walks, no timestamps, no absolute paths of the build machine.
"""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import kpack_runtime
from packager import importcheck, inline, metadata, preflight
from packager.errors import UserError

log = logging.getLogger("kpack")

KERNEL_SRC = "kernel_src"
RUNTIME = "kpack_runtime"  # kpack's kernel-side half, packed into every script from the installed kpack
RUNTIME_DIR = Path(kpack_runtime.__file__).parent
BUILD_JSON = "build.json"
LARGE_SCRIPT = 1 << 20  # warn above this: code pages and SaveKernel requests are not meant for data
FORMAT = 1  # bump when the script layout changes, so the inputs hash changes with it


@dataclass(frozen=True)
class BuiltKernel:
    kind: str
    slug: str
    ref: str  # owner/slug, as Kaggle names the kernel
    folder: Path  # build/kernels/<slug>: what `kaggle kernels push -p` takes
    script: Path  # build/kernels/<slug>/<slug>.py
    metadata: Path  # build/kernels/<slug>/kernel-metadata.json
    size: int  # bytes of the script
    sha256: str  # sha256 of the script
    inputs_sha256: str  # sha256 of everything the script is made from
    config_sha256: str  # sha256 of the embedded config (canonical JSON)
    warnings: tuple[str, ...] = field(default=())


def kpack_version() -> str:
    try:
        from importlib.metadata import version

        return version("kpack")
    except Exception:  # running from a checkout that is not installed
        return "0+unknown"


def resolved_config(cfg, kind: str) -> dict:
    """The config the kernel runs with: the validated project config plus which kernel this is."""
    return cfg.model_dump(mode="json") | {"kernel": kind}


def canonical_json(data) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_describe(root: Path, paths: list[str]) -> str | None:
    """The commit the packed code comes from, '+dirty' when a packed path has uncommitted changes."""
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return None
    inside = [p for p in paths if not Path(p).is_absolute() and not p.startswith("..")]
    dirty = inside and _git(root, "status", "--porcelain", "--", *inside)
    return commit + ("+dirty" if dirty else "")


def _entry_package(entry: str, kind: str, root: Path) -> tuple[str, list[Path]]:
    """The import name of kernels.<kind>.entry and what packs it: the outermost package folder holding it (walking
    up while __init__.py exists: kernel_src/train.py -> kernel_src, src/mycomp/train.py -> mycomp rooted at src/),
    or, for a module in a folder without __init__.py, that folder's modules, each packed as a top-level module."""
    where = f"kernels.{kind}.entry"
    rel = Path(entry)
    if rel.is_absolute() or ".." in rel.parts or rel.suffix != ".py":
        raise UserError(f"{where}: '{entry}' must be a .py file inside the project, relative to its root "
                        f"(e.g. {KERNEL_SRC}/train.py or src/mycomp/train.py)")
    path = root / rel
    if not path.is_file():
        raise UserError(f"{where}: {entry} does not exist")
    top = path.parent
    while (top / "__init__.py").is_file() and top.parent != top and top != root:
        top = top.parent
    names = path.relative_to(top).with_suffix("").parts
    bad = next((n for n in names if not n.isidentifier()), None)
    if bad is not None:
        raise UserError(f"{where}: '{bad}' in {entry} is not an importable name; rename it (letters, digits, _)")
    if top == path.parent:  # a flat folder of modules
        return names[0], sorted(p for p in top.glob("*.py") if p.stem.isidentifier())
    return ".".join(names), [top / names[0]]


def _entry_module(entry: str, kind: str, root: Path) -> str:
    """The import name of kernels.<kind>.entry, after checking it is a project file defining main(config)."""
    module = _entry_package(entry, kind, root)[0]
    path = root / entry
    try:
        tree = ast.parse(path.read_bytes(), filename=entry)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        raise UserError(f"{entry}{f':{line}' if line else ''}: syntax error: {getattr(exc, 'msg', exc)}") from None
    main = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "main":
            main = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((alias.asname or alias.name) == "main" for alias in node.names):
                main = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "main" for t in targets):
                main = node
    if main is None:
        raise UserError(f"{entry}: no main(config) function; the kernel calls main(config) of its entry")
    if isinstance(main, ast.AsyncFunctionDef):
        raise UserError(f"{entry}:{main.lineno}: main must be a plain function, not async")
    if isinstance(main, ast.FunctionDef):
        args = main.args
        if not (args.posonlyargs or args.args or args.vararg):
            raise UserError(f"{entry}:{main.lineno}: main() takes no argument; the kernel calls main(config)")
    return module


def _file_readers(bundle: inline.Bundle) -> list[str]:
    """One line per packed package whose code names __file__, at its first use: the kernel writes that package
    to a temp folder on its first import (so paths made from __file__ exist), which importlib.resources avoids."""
    found = []
    for name, (path, line) in inline.file_users(bundle).items():
        root = next(r for r in bundle.roots if r.name == name)
        mine = [f for f in bundle.files if inline.root_of(bundle, f) == root]
        size = sum(len(f.data) for f in mine)
        found.append(f"{path}:{line} uses __file__: the kernel writes {name} ({len(mine)} files, {size:,} bytes) to "
                     f"a temp folder on its first import so that paths made from __file__ exist; "
                     f"importlib.resources.files({name!r}) reads packed data from memory without that")
    return found


def _sources(cfg, kind: str, root: Path) -> list[tuple[str, Path]]:
    """kpack's own kernel runtime first (always packed, from this kpack), then the entry's package (or its
    folder's modules) and the packages kernels.<kind>.packages lists."""
    kernel = cfg.kernel(kind)
    sources = [(f"kernels.{kind}.entry ({kernel.entry}): {_label(path, root)}", path)
               for path in _entry_package(kernel.entry, kind, root)[1]]
    for i, package in enumerate(kernel.packages):
        path = Path(package).expanduser()
        path = path if path.is_absolute() else root / path
        if not any(path.resolve() == known.resolve() for _, known in sources):  # the entry's own, listed again
            sources.append((f"kernels.{kind}.packages[{i}] ({package})", path))
    for what, path in sources:
        if (path.stem if path.suffix == ".py" else path.name) == RUNTIME:
            raise UserError(f"{what}: a packed package or module named {RUNTIME} would shadow kpack's kernel "
                            f"runtime, which every kernel packs from kpack itself; rename yours")
    return [(f"kpack's kernel runtime ({RUNTIME})", RUNTIME_DIR), *sources]


def _label(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() + ("/" if path.is_dir() else "")
    except ValueError:
        return str(path)


def _generator_sha256() -> str:
    """The code that writes the script is an input too: a changed generator changes the inputs hash."""
    digest = hashlib.sha256()
    for module in (inline, metadata):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def _inputs_sha256(bundle: inline.Bundle, config: dict, entry: str, meta: dict, header_lines: tuple,
                   bytecode: inline.Bytecode | None) -> str:
    digest = hashlib.sha256()
    digest.update(f"kpack-build {FORMAT} {kpack_version()} {_generator_sha256()}\n".encode())
    for root in bundle.roots:
        digest.update(f"root {root.name} {root.path}\n".encode())
    for dist in bundle.dists:
        digest.update(f"dist {dist}\n".encode())
    for file in bundle.files:
        digest.update(f"file {file.path} {inline.sha256(file.data)}\n".encode())
    digest.update(b"config " + canonical_json(config) + b"\n")
    digest.update(b"metadata " + canonical_json(meta) + b"\n")
    digest.update(f"entry {entry}\n".encode())
    digest.update("\n".join(header_lines).encode())
    if bytecode is not None:  # compiled by the kernel's interpreter: another patch release, other bytes
        digest.update(f"\nbytecode {bytecode.magic} {bytecode.python}".encode())
    return digest.hexdigest()


def _replace_dir(staged: Path, target: Path) -> None:
    """Move a finished build folder into place; an earlier build is swapped out, then removed."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    try:
        os.replace(staged, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_kernel(cfg, kind: str, *, root: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
                 slug: str | None = None, kernel_sources: tuple[str, ...] | list[str] = ()) -> BuiltKernel:
    """Build kernels.<kind> into <out_dir>/<slug>/ (default build/kernels under the project root = cwd).

    `slug` overrides the configured slug (a chained session gets its own); `kernel_sources` are added to the
    configured ones (a chained session reads the previous session's output).
    """
    root = Path(root or Path.cwd())
    kernel = cfg.kernel(kind)
    slug = slug or kernel.slug
    title = None if slug == kernel.slug else metadata.title_for(slug)
    entry = kernel.entry
    entry_module = _entry_module(entry, kind, root)
    checked = preflight.before_build(cfg, kind, root)  # the kit and its weights files, before anything is built

    bundle = inline.collect(root, _sources(cfg, kind, root))
    inline.check_compiles(bundle)
    checked += importcheck.check_build(cfg, kind, root, bundle)  # every import resolves in the kernel

    config = resolved_config(cfg, kind)
    config_sha = hashlib.sha256(canonical_json(config)).hexdigest()

    code_file = f"{slug}.py"
    datasets = list(kernel.sources.datasets)
    for own in (cfg.datasets.wheels, cfg.datasets.weights):
        if own is not None:
            datasets.append(f"{cfg.kaggle_user}/{own.slug}")
    meta = metadata.kernel_metadata(cfg, kind, code_file, datasets, [*kernel.sources.kernels, *kernel_sources],
                                    slug=slug, title=title)
    warnings = [f"kernels.{kind}.accelerator: {w}" for w in [metadata.accelerator_warning(kernel.accelerator)] if w]
    warnings += checked
    warnings += _file_readers(bundle)

    version = kpack_version()
    commit = git_describe(root, [r.path for r in bundle.roots]) or "unknown (no git commit)"
    header_lines = (
        f"kind: {kind}; entry: {entry} -> main(config)",
        f"built by kpack {version} from git {commit}",
        f"config sha256: {config_sha}",
    )
    bytecode = inline.bytecode_for(cfg, root, bundle)  # start-up: no compile in the kernel
    inputs_sha = _inputs_sha256(bundle, config, entry, meta, header_lines, bytecode)
    header = inline.Header(title=f"kpack single-file kernel: {meta['id']}", lines=header_lines,
                           rebuild=f"kpack build {kind}")
    run_banner = f"kpack kernel {meta['id']} ({kind}), git {commit}, config {config_sha[:12]}, inputs {inputs_sha[:12]}"
    script = inline.render(bundle, config, entry_module, header, run_banner, bytecode=bytecode)
    inline.verify(script, bundle, config)
    data = script.encode("utf-8")
    script_sha = inline.sha256(data)
    if len(data) > LARGE_SCRIPT:
        biggest = max(bundle.files, key=lambda f: len(f.data))
        warnings.append(f"the kernel script is {len(data) / 2**20:.1f} MiB (largest packed file: {biggest.path}, "
                        f"{len(biggest.data):,} bytes); large data belongs in a dataset")
    for warning in warnings:
        log.warning(f"warning: {warning}")

    record = {
        "kind": kind,
        "id": meta["id"],
        "script": code_file,
        "size": len(data),
        "sha256": script_sha,
        "inputs_sha256": inputs_sha,
        "config_sha256": config_sha,
        "kpack_version": version,
        "git": commit,
        "entry": entry,
        "roots": [{"name": r.name, "path": r.path} for r in bundle.roots],
        "files": [{"path": f.path, "bytes": len(f.data), "sha256": inline.sha256(f.data),
                   "as": inline.encode(f.data)[0]} for f in bundle.files],
    }

    out = Path(out_dir) if out_dir is not None else root / "build" / "kernels"
    out.mkdir(parents=True, exist_ok=True)
    target = out / slug
    staged = Path(tempfile.mkdtemp(prefix=f".{slug}.", suffix=".tmp", dir=out))
    try:
        (staged / code_file).write_bytes(data)
        (staged / metadata.KERNEL_METADATA).write_text(json.dumps(meta, indent=2) + "\n")
        (staged / BUILD_JSON).write_text(json.dumps(record, indent=2) + "\n")
        os.chmod(staged, 0o755)
        _replace_dir(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return BuiltKernel(kind=kind, slug=slug, ref=meta["id"], folder=target, script=target / code_file,
                       metadata=target / metadata.KERNEL_METADATA, size=len(data), sha256=script_sha,
                       inputs_sha256=inputs_sha, config_sha256=config_sha, warnings=tuple(warnings))
