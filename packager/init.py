"""`kpack init [DIR] --competition SLUG [--kit | --bare] [--entry PATH] [--user NAME]`: start a competition
repository, or add kpack to one that already holds training code.

    --kit    kpack.yaml (train, validate, infer kernels and a `kit:` section sized for a first run), Makefile,
             kernel_src/ (an editable copy of the training kit, from the installed package kpack_kit),
             models/README.md, requirements-kernel.txt (the kit's wheels), .gitignore, README.md
    --bare   the same without the kit: kernel_src/train.py, one entry of your own to fill in, and an empty
             requirements-kernel.txt; in a folder that already has training code (a .py file defining
             main(config), or --entry PATH), only kpack.yaml and the Makefile, pointing at that entry

Without --kit or --bare, a folder with training code is taken as --bare, and one without is refused. Every file
is rendered and every target checked before the first is written: existing files are named in one line and
nothing is written. Templates are package data (packager/templates/), read with importlib.resources.
"""
from __future__ import annotations

import ast
import os
import re
from importlib import resources
from pathlib import Path

import yaml

from packager.config import SLUG_RE, parse_config
from packager.errors import UserError
from packager.fsutil import atomic_write_bytes

KIT_PACKAGE = "kpack_kit"  # the training kit as installed with kpack (the repository's kernel_src/)
KIT_DIR = "kernel_src"
SKIP_DIRS = {"build", "runs", "node_modules", "site-packages", "__pycache__", "venv", "env"}
MAIN_RE = re.compile(rb"^def main\s*\(\s*[A-Za-z_]", re.M)
SIBLING_KINDS = ("validate", "infer")  # found beside your train entry as validate.py / infer.py
SLUG_ROOM = 11  # "-validate-b": the longest suffix a kernel slug gets (chain: alternate)


def template(name: str) -> str:
    return resources.files("packager").joinpath("templates", name).read_text(encoding="utf-8")


def render(name: str, **values: str) -> str:
    text = template(name)
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


# ------------------------------------------------------------------------------------------ your own code

def defines_main(path: Path) -> bool:
    """Whether the file has a top-level `def main(config)` (one positional parameter at least)."""
    try:
        data = path.read_bytes()
        if not MAIN_RE.search(data):
            return False
        tree = ast.parse(data)
    except (OSError, SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.FunctionDef) and node.name == "main" and (node.args.posonlyargs or node.args.args)
               for node in tree.body)


def find_entries(root: Path) -> list[Path]:
    """Python files under `root` defining main(config), relative to it; hidden folders, venvs and kpack's own
    outputs are not searched."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                         and not (Path(folder, d) / "pyvenv.cfg").exists())
        for name in sorted(files):
            path = Path(folder, name)
            if name.endswith(".py") and defines_main(path):
                found.append(path.relative_to(root))
    return found


def choose_entry(root: Path, found: list[Path]) -> Path:
    """The train entry among the files defining main(config): a train.py, or the only one."""
    trains = [p for p in found if p.name == "train.py"]
    if len(trains) == 1 or len(found) == 1:
        return (trains or found)[0]
    shown = ", ".join(p.as_posix() for p in (trains or found)[:6])
    raise UserError(f"{root}: several files define main(config) ({shown}); name the train kernel's with "
                    "--entry PATH")


def package_of(entry: Path) -> Path:
    """The folder packed with an entry: the top package holding it (the highest folder of an unbroken chain of
    __init__.py up from the entry), or the entry's own folder when it holds no __init__.py (a flat folder of
    modules: the entry's siblings)."""
    folder = entry.parent
    while (folder / "__init__.py").is_file() and (folder.parent / "__init__.py").is_file():
        folder = folder.parent
    return folder


def _entry_arg(root: Path, entry: str) -> Path:
    path = Path(entry)
    if not path.is_absolute():  # as the shell means it (from here), else from the repository's root
        path = Path.cwd() / path if (Path.cwd() / path).exists() or not (root / path).exists() else root / path
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        raise UserError(f"--entry {entry}: not inside {root}; the entry must be part of the repository") from None
    if rel.suffix != ".py" or not path.is_file():
        raise UserError(f"--entry {entry}: no such .py file")
    if not defines_main(path):
        raise UserError(f"--entry {entry}: defines no main(config); the kernel calls main(config) of its entry")
    return rel


# ------------------------------------------------------------------------------------------------ kpack.yaml

def _short(competition: str, room: int) -> str:
    """A slug base that leaves `room` characters of Kaggle's 50 for a suffix."""
    return competition if len(competition) + room <= 50 else competition[:50 - room].rstrip("-")


def _noted(line: str, note: str) -> str:
    return f"{line:<34} # {note}"


def _kernel(kind: str, entry: Path, competition: str, slug: str | None, packed: str | None, note: str) -> str:
    lines = [f"  {kind}:", _noted(f"    entry: {entry.as_posix()}", note)]
    if packed is not None:  # the build packs it by itself (build.py): said here so that the reader knows
        lines.append(f"    # packed with it: {packed}; packages: [FOLDER, ...] adds more")
    if kind == "train":
        lines += ["    accelerator: NvidiaTeslaT4     # a Kaggle machine shape (NvidiaTeslaT4, NvidiaL4, ...; "
                  "None: CPU)",
                  "    session_hours: 12              # Kaggle's limit; state.json done: false in the output: a next "
                  "session"]
    lines.append(f"    sources: {{competitions: [{competition}]}}")
    if slug:
        lines.append(f"    slug: {slug}")
    return "\n".join(lines) + "\n"


def _datasets(wheels_slug: str, weights_slug: str, wheels: bool, weights: bool) -> str:
    """The datasets section; a dataset whose files the repository lacks (own code: no requirements-kernel.txt,
    no models/) is left commented out, to switch on once they exist."""
    lines = render("datasets.yaml", wheels_slug=wheels_slug, weights_slug=weights_slug).splitlines()
    on = {"wheels": wheels, "weights": weights}
    out, active = [], False
    for line in lines:
        name = line.strip().split(":")[0]
        if name in on and not on[name]:
            what = "requirements-kernel.txt" if name == "wheels" else "models/"
            line = f"  # {line.strip()}   (add {what}, then uncomment)"
        active |= name in on and on[name]
        out.append(line)
    return ("datasets:\n" if active else "# datasets:\n") + "\n".join(out) + "\n"


def render_config(competition: str, user: str, mode: str, entries: dict[str, Path] | None = None,
                  packed: str | None = None, wheels: bool = True, weights: bool = True) -> str:
    """kpack.yaml's text. mode: kit (the training kit), bare (the starter entry), own (`entries` by kind);
    wheels / weights: whether the repository has requirements-kernel.txt / models/ for those datasets."""
    base = _short(competition, SLUG_ROOM)
    slugs = {kind: (None if base == competition else f"{base}-{kind}") for kind in ("train", "validate", "infer")}
    if mode == "kit":
        kernels = render("kernels-kit.yaml", competition=competition,
                         **{f"slug_{k}": f"\n    slug: {s}" if s else "" for k, s in slugs.items()})
    else:
        entries = entries or {"train": Path(KIT_DIR) / "train.py"}
        notes = {"train": "your entry: the kernel calls its main(config)",
                 "validate": "scores from the train kernel's output (mounted as an input)",
                 "infer": "writes submission.csv from the train kernel's output"}
        kernels = "".join(_kernel(kind, entries[kind], competition, slugs[kind], packed, notes[kind])
                          for kind in ("train", "validate", "infer") if kind in entries)
        missing = [kind for kind in SIBLING_KINDS if kind not in entries]
        if missing:
            kernels += "".join(f"  # {kind}: {{entry: {(entries['train'].parent / f'{kind}.py').as_posix()}, "
                               f"sources: {{competitions: [{competition}]}}}}\n" for kind in missing)
    base_ds = _short(competition, len("-weights"))
    text = render("kpack.yaml", competition=competition, user=user, kernels=kernels,
                  datasets=_datasets(f"{base_ds}-wheels", f"{base_ds}-weights", wheels, weights),
                  kit=template("kit.yaml") if mode == "kit" else "")
    parse_config(yaml.safe_load(text), "kpack.yaml (generated)")  # a template that does not validate is a bug
    return text


# ------------------------------------------------------------------------------------------------- the files

def kit_files() -> dict[str, bytes]:
    """The training kit's files (relative path -> bytes) from the installed package kpack_kit (an editable
    install maps it onto the repository's kernel_src/)."""
    try:
        top = resources.files(KIT_PACKAGE)
    except ModuleNotFoundError:
        raise UserError(f"the training kit ({KIT_PACKAGE}) is not installed with this kpack; reinstall kpack, or "
                        "use --bare") from None
    files: dict[str, bytes] = {}

    def walk(node, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir():
                if child.name != "__pycache__" and not child.name.startswith("."):
                    walk(child, f"{prefix}{child.name}/")
            elif not child.name.endswith((".pyc", ".pyo")):
                files[f"{prefix}{child.name}"] = child.read_bytes()

    walk(top, "")
    if "train.py" not in files:
        raise UserError(f"the training kit ({KIT_PACKAGE}) has no train.py; reinstall kpack")
    return files


def plan(root: Path, competition: str, mode: str, user: str, entry: str | None = None) -> dict[str, bytes]:
    """Every file `kpack init` writes under `root` (relative path -> bytes); mode: kit, bare or None (own code
    when `root` has some, else refused)."""
    if not SLUG_RE.match(competition):
        raise UserError(f"--competition {competition!r}: expected the competition's slug as in its URL "
                        "(kaggle.com/competitions/<slug>): 3-50 lowercase letters, digits and hyphens, e.g. "
                        "'imet-2019-fgvc6'")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]*$", user):
        raise UserError(f"--user {user!r}: expected your Kaggle user name (letters, digits, '-' or '_')")
    if entry is not None and mode == "kit":
        raise UserError("--entry names your own training code; it goes with --bare (or alone), not --kit")
    own: Path | None = _entry_arg(root, entry) if entry is not None else None
    if own is None and mode != "kit":
        found = find_entries(root) if root.is_dir() else []
        if found:
            own = choose_entry(root, found)
    if own is None and mode is None:
        raise UserError(f"{root}: no training code here (no .py file defining main(config)); pass --kit for the "
                        "training kit, --bare for one entry of your own to start from, or --entry PATH")

    code = "kernel_src/ holds the training kit (your copy: edit it)" if mode == "kit" else \
        "the kernels run your code's main(config)"
    files = {"Makefile": render("Makefile", competition=competition)}
    if own is not None:  # a repository with training code: only the config and the Makefile
        entries = {"train": own}
        for kind in SIBLING_KINDS:
            sibling = own.parent / f"{kind}.py"
            if defines_main(root / sibling):
                entries[kind] = sibling
        package = package_of(root / own)
        packed = (f"{package.relative_to(root).as_posix()}/ (the package holding the entry)"
                  if (package / "__init__.py").is_file() else "the modules beside the entry")
        files["kpack.yaml"] = render_config(competition, user, "own", entries, packed,
                                            wheels=(root / "requirements-kernel.txt").is_file(),
                                            weights=(root / "models").is_dir())
        return _encoded(files)
    files["kpack.yaml"] = render_config(competition, user, mode)
    files[".gitignore"] = template("gitignore")
    files["README.md"] = render("README.md", competition=competition, code=code)
    files["models/README.md"] = template("models-README.md")
    if mode == "kit":
        files["requirements-kernel.txt"] = template("requirements-kit.txt")
        files.update({f"{KIT_DIR}/{name}": data for name, data in kit_files().items()})
    else:
        files["requirements-kernel.txt"] = template("requirements-bare.txt")
        files[f"{KIT_DIR}/train.py"] = template("bare-train.py")
    return _encoded(files)


def _encoded(files: dict[str, str | bytes]) -> dict[str, bytes]:
    return {name: data.encode() if isinstance(data, str) else data for name, data in files.items()}


def write_all(root: Path, files: dict[str, bytes]) -> None:
    """Write every file, or none: existing ones are refused in one line before anything is written, and a
    failed write removes what this call wrote."""
    taken = [name for name in sorted(files) if os.path.lexists(root / name)]
    if taken:
        raise UserError(f"{root}: kpack init would overwrite {', '.join(taken)}; move them away or init elsewhere "
                        "(nothing was written)")
    folders = {root, *root.parents} | {root / parent for name in files for parent in Path(name).parents}
    blocked = sorted(str(folder) for folder in folders if folder.exists() and not folder.is_dir())
    if blocked:
        raise UserError(f"{', '.join(blocked)}: a file where kpack init writes a folder (nothing was written)")
    umask = os.umask(0)
    os.umask(umask)
    created = [folder for folder in folders if not folder.exists()]  # removed again if a write fails
    written: list[Path] = []
    try:
        for name, data in files.items():
            path = root / name
            atomic_write_bytes(path, data)
            written.append(path)
            os.chmod(path, 0o666 & ~umask)  # a normal file, not the temp file's 0600
    except BaseException as exc:
        for path in written:
            path.unlink(missing_ok=True)
        for folder in sorted(created, key=lambda d: len(d.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise UserError(f"{exc.filename or root}: cannot write: {exc.strerror or exc} (nothing was written)") \
                from None
        raise


def default_user() -> str:
    return os.environ.get("KAGGLE_USERNAME", "").strip() or "kpack"


def init(directory: str | os.PathLike, competition: str, mode: str | None, user: str | None = None,
         entry: str | None = None) -> list[str]:
    """Write the repository; the lines to print."""
    root = Path(directory)
    files = plan(root, competition, mode, user or default_user(), entry)
    write_all(root, files)
    where = "." if root == Path(".") else str(root)
    shown = sorted({name.split("/")[0] + ("/" if "/" in name else "") for name in files})
    lines = [f"{where}: wrote {', '.join(shown)} for competition {competition}"]
    if ".gitignore" not in files:  # your repository: only the config and the Makefile were added
        ignored = (root / ".gitignore").read_text(errors="replace").split() if (root / ".gitignore").is_file() else []
        missing = [p for p in ("build/", "runs/", ".localkaggle/") if p not in ignored and p.rstrip("/") not in ignored]
        if missing:
            lines.append(f"note: add {', '.join(missing)} to .gitignore (kpack's builds, downloaded runs and the "
                         "local Kaggle's state)")
    config = yaml.safe_load(files["kpack.yaml"])
    for kind, kernel in config["kernels"].items():
        lines.append(f"  kernels.{kind}: {kernel['entry']}")
    lines.append(f"next: {'cd ' + where + '; ' if where != '.' else ''}kpack local competition create {competition} "
                 "--data DATA_DIR --solution SOLUTION.csv; make push-train")
    return lines
