"""Checks that run on this machine before anything is built or uploaded, so what would fail minutes into a
Kaggle session fails here with one line: one function per check, each returning what it found (a UserError
when the check fails). `kpack build` and `kpack push` run `before_build`; `kpack check KIND` runs them all.

The kit's settings are validated by the project's own `kernel_src/settings.py` (stdlib only, the module the
kernel validates them with), loaded here by file path: a project whose kernel_src has no settings.py does not
use the kit, and its settings are not checked.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType

from packager import metadata, shapes
from packager.errors import UserError

SETTINGS = Path("kernel_src") / "settings.py"
_loaded: dict[tuple, ModuleType] = {}  # (path, size, mtime) -> the module: one load per build, reloaded when edited


@dataclass
class Found:
    """A passed check: one line saying what was checked, and warnings that do not stop a build."""
    line: str
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- the checks

def check_entry(cfg, kind: str, root: Path) -> Found:
    from packager.build import _entry_module

    entry = cfg.kernel(kind).entry
    _entry_module(entry, kind, root)
    return Found(f"kernels.{kind}.entry: {entry} defines main(config)")


def check_shape(cfg, kind: str) -> Found:
    """The machine shape and the session limit (the config refused session_hours over it already)."""
    kernel = cfg.kernel(kind)
    shape = shapes.guess(kernel.accelerator)
    warning = metadata.accelerator_warning(kernel.accelerator)
    if shapes.known(shape.name) is None:
        what = f"not in kpack's table: taken for a {shape.kind.upper()}"
    else:
        what = shape.label if shape.kind == "cpu" else f"{shape.label}, {shape.kind.upper()}"
    return Found(f"kernels.{kind}.accelerator: {shape.name} ({what}); session_hours {kernel.session_hours:g} of "
                 f"{shape.limit_hours:g} h",
                 [f"kernels.{kind}.accelerator: {warning}"] if warning else [])


def check_metadata(cfg, kind: str) -> Found:
    kernel = cfg.kernel(kind)
    own = [f"{cfg.kaggle_user}/{d.slug}" for d in (cfg.datasets.wheels, cfg.datasets.weights) if d is not None]
    meta = metadata.kernel_metadata(cfg, kind, f"{kernel.slug}.py", [*kernel.sources.datasets, *own],
                                    kernel.sources.kernels)
    return Found(f"kernels.{kind}: kernel-metadata.json for {meta['id']} ('{meta['title']}') as the kaggle client "
                 "accepts it")


def check_kit(cfg, kind: str, root: Path) -> Found:
    """config["kit"] through the project's kernel_src/settings.py, as the kernel will validate it."""
    settings, note = _kit_module(root)
    if settings is None:
        return Found(f"kit: not checked: {note}")
    _kit_settings(cfg, kind, settings)
    return Found(f"kit: valid for {SETTINGS}")


def check_weights(cfg, kind: str, root: Path) -> Found:
    """Every weights file the kit names (kit.model.weights, or kit.model.pretrained's file for the model) is in
    the weights dataset's folder, where the kernel will look for it (kernel_src/models.py resolve_weights)."""
    if kind != "train":
        return Found(f"kit weights: not needed by the {kind} kernel (it loads the trained models)")
    settings, note = _kit_module(root)
    if settings is None:
        return Found(f"kit weights: not checked: {note}")
    try:
        model = getattr(_kit_settings(cfg, kind, settings), "model", None)
    except UserError:  # check_kit says what
        return Found("kit weights: not checked: the kit settings are invalid")
    ref, pretrained = getattr(model, "weights", None), getattr(model, "pretrained", False)
    if not ref and not pretrained:
        return Found("kit.model: no pretrained weights asked for (a fresh initialisation)")
    spec = cfg.datasets.weights
    files = _weight_files(root, spec)
    if ref:
        # The kernel finds a weights file by name: in the weights dataset, else in any input (models.py).
        name, field_name = PurePosixPath(ref).name, "weights"
        found = name if name in files else None
        wanted = f"'{ref}'"
    else:
        from packager.weights import _architectures, architecture_of

        mapping = _architectures(root / spec.dir) if spec else {}
        found = next((n for n in sorted(files) if architecture_of(n, mapping) == model.name), None)
        field_name, wanted = "pretrained", f"a file for {model.name!r}"
    if found:
        return Found(f"kit.model.{field_name}: {found} is in {spec.dir}/ (the weights dataset {spec.slug})")
    kernel = cfg.kernel(kind)
    others = [*kernel.sources.datasets, *kernel.sources.kernels]
    where = cfg.where("kit", "model", field_name)
    if spec is None:
        missing = f"kit.model.{field_name}: {wanted} is in no dataset of the kernel: add datasets.weights to " \
                  f"{cfg._source} with a dir holding it"
    else:
        held = ", ".join(sorted(files)) or "no weight files"
        hint = f"name it '{model.name}.<tag>.pth' or map it in {spec.dir}/models.yaml" if not ref else \
            "put the file there or fix the name"
        missing = f"kit.model.{field_name}: {wanted} is not in {spec.dir}/ (the weights dataset " \
                  f"{spec.slug}; it holds: {held}); {hint}"
    if others:  # it may be in one of those: they cannot be looked into from here
        return Found(f"kit.model.{field_name}: looked for {wanted} in the weights dataset only",
                     [f"{missing}; unless {', '.join(others)} holds it"])
    raise UserError(f"{where}{missing}")


# --------------------------------------------------------------------------------------------- running them

def before_build(cfg, kind: str, root: Path) -> list[str]:
    """The checks `kpack build` and `kpack push` run before building anything; returns their warnings."""
    warnings: list[str] = []
    for check in (check_kit, check_weights):
        warnings += check(cfg, kind, root).warnings
    return warnings


def run_all(cfg, kind: str, root: Path) -> list[tuple[str, str]]:
    """Every check, each as ("ok" | "warning" | "error", line); a failed check does not stop the others."""
    checks = [lambda: check_entry(cfg, kind, root), lambda: check_shape(cfg, kind), lambda: check_metadata(cfg, kind),
              lambda: check_kit(cfg, kind, root), lambda: check_weights(cfg, kind, root)]
    lines: list[tuple[str, str]] = [("ok", f"{cfg._source}: valid")]
    for check in checks:
        try:
            found = check()
        except UserError as exc:
            lines.append(("error", str(exc)))
            continue
        lines.append(("ok", found.line))
        lines += [("warning", w) for w in found.warnings]
    return lines


# --------------------------------------------------------------------------------------------- helpers

def _kit_module(root: Path) -> tuple[ModuleType | None, str]:
    """The project's kernel_src/settings.py as a module (loaded by path: a project's kernel_src is not kpack's),
    or (None, why it is not checked)."""
    path = Path(root) / SETTINGS
    if not path.is_file():
        return None, f"{SETTINGS} is not in this project (its entries validate their own settings)"
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _loaded:
        return _loaded[key], ""
    name = "_kpack_project_settings_" + hashlib.sha256(key[0].encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and typing.get_type_hints look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - a project's own module that needs the kernel to import
        sys.modules.pop(name, None)
        return None, f"{SETTINGS} does not load here ({type(exc).__name__}: {exc})"
    if not (hasattr(module, "from_config") and hasattr(module, "SettingsError")):
        return None, f"{SETTINGS} is not the kit's (no from_config)"
    _loaded[key] = module
    return module, ""


def _kit_settings(cfg, kind: str, settings: ModuleType):
    from packager.build import resolved_config

    try:
        return settings.from_config(resolved_config(cfg, kind))
    except settings.SettingsError as exc:
        message = str(exc)
        raise UserError(f"{cfg.where(*_path_of(message))}{message}") from None


def _path_of(message: str) -> tuple:
    """('kit', 'optim', 'lr') from 'kit.optim.lr: expected ...'; list items ('stages[0]') become numbers."""
    parts: list = []
    for part in message.split(":", 1)[0].split("."):
        name, _, rest = part.partition("[")
        parts.append(name)
        parts += [int(i) for i in rest.replace("]", "[").split("[") if i.isdigit()]
    return tuple(parts)


def _weight_files(root: Path, spec) -> dict[str, Path]:
    if spec is None:
        return {}
    from packager.weights import weight_files

    return {p.name: p for p in weight_files(Path(root) / spec.dir)}
