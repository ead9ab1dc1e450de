"""Checks that run on this machine before anything is built or uploaded, so what would fail minutes into a
Kaggle session fails here with one line: one function per check, each returning what it found (a UserError
when the check fails). `kpack build` and `kpack push` run `before_build`, `kpack push` also `before_upload`;
`kpack check KIND` runs them all.

The kit's settings are validated by the project's own `kernel_src/settings.py` (stdlib only, the module the
kernel validates them with), loaded here by file path: a project whose kernel_src has no settings.py does not
use the kit, and its settings are not checked.

Two checks ask the backend (one API call per source, through the kaggle client as every other call): that each
dataset, kernel, model and competition source kernels.<kind>.sources names exists, and, for a code competition,
that the infer kernel can be submitted. A source kpack makes itself in this push (the wheels and weights datasets,
the model instance, the chain's own sessions) is not looked up.
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType

from packager import metadata, shapes
from packager.errors import UserError

# how the kit may average F-beta, as kernel_src/metrics.py has them (the project's copy is not imported)
AVERAGES = ("samples", "macro", "micro")

SETTINGS = "settings.py"  # beside the entry, in the package that packs it (kernel_src/, src/mycomp/, ...)
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
    settings, note = _kit_module(cfg, kind, root)
    if settings is None:
        return Found(f"kit: not checked: {note}")
    _kit_settings(cfg, kind, settings)
    return Found(f"kit: valid for {_settings_path(cfg, kind, root).relative_to(root)}")


def check_weights(cfg, kind: str, root: Path) -> Found:
    """Every weights file the kit names (kit.model.weights, or kit.model.pretrained's file for the model) is in
    the weights dataset's folder, where the kernel will look for it (kernel_src/models.py resolve_weights)."""
    if kind != "train":
        return Found(f"kit weights: not needed by the {kind} kernel (it loads the trained models)")
    settings, note = _kit_module(cfg, kind, root)
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


def check_model(cfg, kind: str, root: Path) -> Found:
    """kit.model.name is an architecture the kernel's timm can build offline: in the registry of the timm here
    (its names cached per version: importing timm takes seconds), or registered by the project's own code. An
    unknown name is refused when the kernel pins this timm version, else it is a warning."""
    settings, note = _kit_module(cfg, kind, root)
    if settings is None:
        return Found(f"kit.model.name: not checked: {note}")
    try:
        name = getattr(getattr(_kit_settings(cfg, kind, settings), "model", None), "name", None)
    except UserError:  # check_kit says what
        return Found("kit.model.name: not checked: the kit settings are invalid")
    if not isinstance(name, str):
        return Found("kit.model.name: not checked: the kit has no model name")
    where = cfg.where("kit", "model", "name")
    if name.startswith(("hf-hub:", "hf_hub:", "timm/")):
        raise UserError(f"{where}kit.model.name: {name!r} is read from the Hugging Face hub, which a Kaggle kernel "
                        "without internet cannot reach; name the architecture (e.g. 'resnet50') and put its "
                        "weights in the weights dataset (kit.model.weights)")
    arch = name.split(".", 1)[0]  # timm's arch.tag: the tag names pretrained weights, the arch the model
    own = _registered_by_project(_settings_path(cfg, kind, root).parent, arch)
    if own is not None:
        shown = own.relative_to(root) if own.is_relative_to(root) else own
        return Found(f"kit.model.name: {name} is registered by {shown}")
    known = _timm_models()
    if known is None:
        return Found("kit.model.name: not checked: timm is not installed here (install kpack[local])")
    version, names = known
    if arch in names:
        return Found(f"kit.model.name: {name} is a timm {version} model")
    import difflib

    close = difflib.get_close_matches(arch, sorted(names), n=3, cutoff=0.75)
    message = (f"kit.model.name: timm {version} has no model {name!r}" +
               (f" (did you mean {', '.join(close)}?)" if close else "; see timm.list_models()"))
    pinned = _kernel_timm(cfg, root)
    if pinned == version:
        raise UserError(f"{where}{message}")
    return Found(f"kit.model.name: {name} is not a model of timm {version} here",
                 [f"{message}; the kernel imports timm {pinned or 'of an unknown version'}, which may know it"])


def check_imports(cfg, kind: str, root: Path) -> Found:
    """Every import of the packed code resolves in the kernel (packager/importcheck.py, as `kpack build` runs it)."""
    from packager import importcheck, inline
    from packager.build import _sources

    bundle = inline.collect(Path(root), _sources(cfg, kind, Path(root)))
    inline.check_compiles(bundle)
    warnings = importcheck.check_build(cfg, kind, Path(root), bundle)
    return Found("imports: every import of the packed code resolves (packed, standard library, wheels dataset or "
                 "image)", warnings)


def check_sources(cfg, kind: str, backend: "Backend") -> Found:
    """Every dataset, kernel, model and competition source of kernels.<kind> exists on the backend (Kaggle would
    answer it in invalid*Sources after the push, and the kernel would run without it)."""
    sources = cfg.kernel(kind).sources
    own = _own_sources(cfg, kind)
    wanted = [("dataset", r) for r in sources.datasets] + [("kernel", r) for r in sources.kernels] + \
        [("model", r) for r in getattr(sources, "models", [])] + [("competition", c) for c in sources.competitions]
    ours = [(what, ref) for what, ref in wanted if (ref if what != "model" else "/".join(ref.split("/")[:4])) in own]
    skipped = [ref for _, ref in ours]
    wanted = [pair for pair in wanted if pair not in ours]
    made = f" ({', '.join(skipped)}: made by kpack in this push)" if skipped else ""
    if not wanted:
        return Found(f"kernels.{kind}.sources: none to look up{made}")
    missing = [f"{what} {ref}" for what, ref in wanted if not backend.exists(what, ref)]
    if missing:
        raise UserError(f"{cfg.where('kernels', kind, 'sources')}kernels.{kind}.sources: not on {backend.name} (or "
                        f"not visible to {cfg.kaggle_user}): {', '.join(missing)}; fix the name or create it first")
    counts = ", ".join(f"{n} {what}{'s' if n > 1 else ''}" for what in ("dataset", "kernel", "model", "competition")
                       if (n := sum(w == what for w, _ in wanted)))
    return Found(f"kernels.{kind}.sources: {counts} found on {backend.name}{made}")


def check_code_competition(cfg, kind: str, backend: "Backend") -> Found:
    """A code competition reruns the infer kernel offline: its internet must be off and its session must fit the
    competition's run-time limit (competition_limits.runtime_hours; the config refuses a session_hours over it)."""
    if kind != "infer":
        return Found(f"code competition: not checked for the {kind} kernel (only infer is submitted)")
    competition, warnings = cfg.competition, []
    if cfg.competition_type is not None:
        code, said = cfg.competition_type == "code", f"competition_type: {cfg.competition_type}"
    else:
        code = backend.is_code_competition(competition)
        said = f"{backend.name}'s metadata"
        if code is None:
            return Found(f"code competition: {competition} not found on {backend.name}; not checked",
                         [f"competition: {competition} is not on {backend.name}: set competition_type: code (or "
                          "file) in kpack.yaml, or fix the slug"])
        if not code and backend.name != "the local Kaggle":  # whether Kaggle fills the flag is a guess
            warnings.append(f"competition: {backend.name} does not say {competition} takes notebook submissions "
                            "only; if it does, set competition_type: code")
    if not code:
        return Found(f"code competition: {competition} is not one ({said}); the infer kernel is not submitted",
                     warnings)
    kernel = cfg.kernel(kind)
    if kernel.internet:
        raise UserError(f"{cfg.where('kernels', kind, 'internet')}kernels.infer.internet: {competition} is a code "
                        f"competition ({said}): Kaggle takes submissions only from notebooks with the internet off; "
                        "set internet: false (ship packages in the wheels dataset)")
    runtime = cfg.competition_limits.runtime_hours
    if runtime is None:
        return Found(f"code competition: {competition} ({said}): internet off; session_hours "
                     f"{kernel.session_hours:g}",
                     warnings + [f"competition_limits.runtime_hours is not set: {competition} reruns the infer "
                                 "kernel under its own run-time limit (see its rules, often 9 h); set it to have "
                                 "kernels.infer.session_hours checked against it"])
    return Found(f"code competition: {competition} ({said}): internet off; session_hours {kernel.session_hours:g} "
                 f"fits its {runtime:g} h run-time limit", warnings)


def check_metric(cfg, kind: str, root: Path, backend: "Backend") -> Found:
    """A kit project on a competition scored by another metric than the one the kit maximises (F-beta with BETA
    and AVERAGE from the kit's metrics.py): a warning, since its CV is then not the leaderboard's number and its
    thresholds and blend weights are chosen for another score. Kaggle's metric names are free text: read as a
    guess. An AVERAGE the kit does not know is an error: the kernel would stop on it."""
    settings = _kit_module(cfg, kind, root)[0]
    if settings is None:
        return Found("metric: not checked: the project does not use the kit (its code scores itself)")
    path = _settings_path(cfg, kind, root).with_name("metrics.py")
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    text = path.read_text() if path.is_file() else ""
    said = re.search(r"^BETA\s*=\s*([\d.]+)", text, re.M)
    if said is None:
        return Found(f"metric: not checked: {shown} does not say the kit's BETA")
    beta = float(said.group(1))
    said = re.search(r"^AVERAGE\s*=\s*[\"']([^\"']*)[\"']", text, re.M)
    average = said.group(1) if said else "samples"  # kits from before AVERAGE: per sample
    if average not in AVERAGES:
        raise UserError(f"{shown}: AVERAGE is {average!r}; set one of {', '.join(AVERAGES)}")
    warnings = _loss_terms(cfg, kind, settings, beta, average, shown)
    found = backend.competition(cfg.competition)
    named = getattr(found, "evaluation_metric", "") or ""
    kit = _fscore_name(beta, average)
    if not named:
        return Found(f"metric: {backend.name} names no metric for {cfg.competition}; the kit maximises {kit}",
                     warnings)
    named_average, named_beta = _read_fbeta(named)
    if named_average == average and named_beta in (None, beta):
        return Found(f"metric: {cfg.competition} is scored by {named!r}, read as the kit's {kit}", warnings)
    if named_average is None:
        fix = "score that metric in the kit"
    else:
        fix = "set " + " and ".join(([f"BETA = {named_beta:g}"] if named_beta not in (None, beta) else []) +
                                    ([f'AVERAGE = "{named_average}"'] if named_average != average else [])) + " there"
    return Found(f"metric: {cfg.competition} is scored by {named!r}",
                 [f"metric: {cfg.competition} is scored by {named!r}, not by what the kit maximises ({kit}, "
                  f"BETA and AVERAGE in {shown}): its CV is not the leaderboard's number, and its thresholds and "
                  f"blend weights are chosen for {kit}; {fix}, or ignore this if the metric's name misleads"]
                 + warnings)


def _fscore_name(beta: float, average: str) -> str:
    return f"F{beta:g} per sample" if average == "samples" else f"{average} F{beta:g}"


def _loss_terms(cfg, kind: str, settings: ModuleType, beta: float, average: str, shown) -> list[str]:
    """A soft_fbeta loss term (kit.stages[i].loss) whose own beta or average is not the kit's BETA or AVERAGE
    trains for another metric."""
    try:
        kit = _kit_settings(cfg, kind, settings)
    except UserError:  # check_kit says what
        return []
    found = []
    for i, stage in enumerate(getattr(kit, "stages", [])):
        for term in stage.loss:
            term_average = getattr(term, "average", "samples")  # a kit from before the term's average
            if term.name == "soft_fbeta" and (term.beta, term_average) != (beta, average):
                fix = ", ".join(([f"beta: {beta:g}"] if term.beta != beta else []) +
                                ([f"average: {average}"] if term_average != average else []))
                found.append(f"kit.stages[{i}].loss: soft_fbeta is {_fscore_name(term.beta, term_average)}, the "
                             f"kit's metric ({shown}) is {_fscore_name(beta, average)}: that stage trains for "
                             f"another score; set the term's {fix}")
    return found


def _read_fbeta(named: str) -> tuple[str | None, float | None]:
    """(how a metric's name reads as an averaged F-score: samples, macro or micro, or None for another metric or
    an average the kit does not score, such as 'weighted'; the beta it names or None): 'Mean F-Score' reads as
    per sample without a beta."""
    text = named.lower()
    fscore = re.search(r"\bf[-_ ]?(\d+(?:\.\d+)?)\b|\bf[-_ ]?(?:beta|score|measure)|fscore|fbeta", text)
    if fscore is None or "weighted" in text:
        return None, None
    average = next((a for a in ("macro", "micro") if a in text), "samples")
    return average, float(fscore.group(1)) if fscore.group(1) else None


class Unreachable(UserError):
    """The backend could not be connected to: a check after the first that said so is not checked."""


class Backend:
    """The backend the checks look things up on: connected on first use, one API call per question."""

    def __init__(self, cfg, api=None):
        self.cfg, self._api = cfg, api  # api: a caller's connection (push has one already)
        self._competitions: dict[str, object] = {}  # slug -> the answer: the sources and code checks ask once
        self.name = "the local Kaggle" if cfg.backend == "local" else "Kaggle"

    failed: str | None = None  # why the connection failed: said once, by the first check that needed it

    @property
    def api(self):
        if self.failed is not None:
            raise Unreachable(self.failed)
        if self._api is None:
            from packager import kaggle_api

            try:
                self._api = kaggle_api.connect(self.cfg)
            except UserError as exc:
                self.failed = str(exc)
                raise
        return self._api

    def exists(self, what: str, ref: str) -> bool:
        from packager import kaggle_api

        if what == "dataset":
            return self.dataset_exists(ref)
        if what == "kernel":
            return kaggle_api.get_kernel(self.api, *ref.split("/")) is not None
        if what == "model":  # owner/model/framework/variation[/version]: the instance (GetModelInstance)
            from packager.models_push import instance_version

            return instance_version(self.api, "/".join(ref.split("/")[:4])) is not None
        return self.competition(ref) is not None

    def dataset_exists(self, ref: str) -> bool:
        """GetDatasetStatus, the call `kaggle datasets status` makes (a deleted dataset does not count)."""
        from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetStatusRequest

        from packager import kaggle_api

        request = ApiGetDatasetStatusRequest()
        request.owner_slug, request.dataset_slug = ref.split("/")
        try:
            answer = kaggle_api.rpc(self.api, f"dataset status {ref}", "datasets.dataset_api_client",
                                    "get_dataset_status", request)
        except kaggle_api.KaggleCallError as err:
            if err.status in (403, 404):
                return False
            raise
        return str(getattr(answer.status, "name", answer.status)).lower() != "deleted"

    def competition(self, slug: str):
        """The competition's ApiCompetition as ListCompetitions gives it (the call `kaggle competitions list -s`
        makes), True when only ListDataFiles finds it (an ended one may not be listed: a guess), else None."""
        if slug not in self._competitions:
            self._competitions[slug] = self._look_up_competition(slug)
        return self._competitions[slug]

    def _look_up_competition(self, slug: str):
        from kagglesdk.competitions.types.competition_api_service import (ApiListCompetitionsRequest,
                                                                         ApiListDataFilesRequest)

        from packager import kaggle_api

        request = ApiListCompetitionsRequest()
        request.search = slug
        answer = kaggle_api.rpc(self.api, f"look up competition {slug}", "competitions.competition_api_client",
                                "list_competitions", request)
        for item in answer.competitions or []:
            if (item.ref or "").rstrip("/").split("/")[-1] == slug:
                return item
        files = ApiListDataFilesRequest()
        files.competition_name = slug
        try:
            kaggle_api.rpc(self.api, f"data files of competition {slug}", "competitions.competition_api_client",
                           "list_data_files", files)
        except kaggle_api.KaggleCallError as err:
            if err.status == 404:
                return None
            if err.status != 403:  # 403: it exists, its rules are not accepted
                raise
        return True

    def is_code_competition(self, slug: str) -> bool | None:
        found = self.competition(slug)
        if found is None:
            return None
        return bool(getattr(found, "is_kernels_submissions_only", False))


# --------------------------------------------------------------------------------------------- running them

def before_build(cfg, kind: str, root: Path) -> list[str]:
    """The checks `kpack build` and `kpack push` run before building anything; returns their warnings."""
    warnings: list[str] = []
    for check in (check_kit, check_model, check_weights):
        warnings += check(cfg, kind, root).warnings
    return warnings


def before_upload(cfg, kind: str, api) -> list[str]:
    """The backend checks `kpack push` runs on its own connection before anything is uploaded: every source exists,
    a code competition's infer kernel is offline, and the kit maximises the competition's metric; returns their
    warnings."""
    backend = Backend(cfg, api)
    return (check_sources(cfg, kind, backend).warnings + check_code_competition(cfg, kind, backend).warnings
            + check_metric(cfg, kind, Path.cwd(), backend).warnings)


def run_all(cfg, kind: str, root: Path) -> list[tuple[str, str]]:
    """Every check, each as ("ok" | "warning" | "error", line); a failed check does not stop the others."""
    backend = Backend(cfg)
    checks = [("entry", lambda: check_entry(cfg, kind, root)), ("shape", lambda: check_shape(cfg, kind)),
              ("metadata", lambda: check_metadata(cfg, kind)), ("kit", lambda: check_kit(cfg, kind, root)),
              ("model", lambda: check_model(cfg, kind, root)), ("weights", lambda: check_weights(cfg, kind, root)),
              ("imports", lambda: check_imports(cfg, kind, root)),
              (f"kernels.{kind}.sources", lambda: check_sources(cfg, kind, backend)),
              ("code competition", lambda: check_code_competition(cfg, kind, backend)),
              ("metric", lambda: check_metric(cfg, kind, root, backend))]
    lines: list[tuple[str, str]] = [("ok", f"{cfg._source}: valid")]
    for what, check in checks:
        try:
            found = check()
        except Unreachable:
            lines.append(("ok", f"{what}: not checked: {backend.name} was not reached (see above)"))
            continue
        except UserError as exc:
            lines.append(("error", str(exc)))
            continue
        lines.append(("ok", found.line))
        lines += [("warning", w) for w in found.warnings]
    return lines


# --------------------------------------------------------------------------------------------- helpers

def _settings_path(cfg, kind: str, root: Path) -> Path:
    """settings.py in the package that packs kernels.<kind>.entry (the kit's, wherever the project put it)."""
    from packager.build import _entry_package

    root = Path(root)
    try:
        packed = _entry_package(cfg.kernel(kind).entry, kind, root)[1]
    except UserError:  # check_entry says what
        return root / "kernel_src" / SETTINGS
    folder = packed[0] if len(packed) == 1 and packed[0].is_dir() else (root / cfg.kernel(kind).entry).parent
    return folder / SETTINGS


def _kit_module(cfg, kind: str, root: Path) -> tuple[ModuleType | None, str]:
    """The project's settings.py beside its entry as a module (loaded by path: a project's kit is not kpack's),
    or (None, why it is not checked)."""
    path = _settings_path(cfg, kind, root)
    shown = path.relative_to(Path(root)) if path.is_relative_to(Path(root)) else path
    if not path.is_file():
        return None, f"{shown} is not in this project (its entries validate their own settings)"
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
        return None, f"{shown} does not load here ({type(exc).__name__}: {exc})"
    if not (hasattr(module, "from_config") and hasattr(module, "SettingsError")):
        return None, f"{shown} is not the kit's (no from_config)"
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


def _own_sources(cfg, kind: str) -> set[str]:
    """What kpack itself makes in this push: the wheels and weights datasets, the sessions of the kernels whose
    output this kind reads (they are pushed before it)."""
    from packager import chain

    own = {f"{cfg.kaggle_user}/{d.slug}" for d in (cfg.datasets.wheels, cfg.datasets.weights) if d is not None}
    models = getattr(cfg, "models", None)
    if models is not None and getattr(models, "weights", None) is not None:  # the project's own model instance
        from packager.models_push import instance_ref

        own.add(instance_ref(cfg))
    for source in {"validate": ("train",), "infer": ("train", "validate")}.get(kind, ()):
        if source in cfg.kernels:
            own |= {f"{cfg.kaggle_user}/{slug}" for slug in chain.chain_slugs(cfg, source)}
    return own


def _registered_by_project(folder: Path, arch: str) -> Path | None:
    """The project's module that registers `arch` with timm (`@register_model` over `def arch(`), if any."""
    for path in sorted(Path(folder).rglob("*.py")) if Path(folder).is_dir() else []:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if "register_model" in text and f"def {arch}(" in text:
            return path
    return None


def _timm_models() -> tuple[str, frozenset[str]] | None:
    """(timm's version here, its architecture names), or None without timm; cached per version in
    ~/.cache/kpack (XDG_CACHE_HOME), since listing them imports torch."""
    import os
    from importlib import metadata as importlib_metadata

    try:
        version = importlib_metadata.version("timm")
    except importlib_metadata.PackageNotFoundError:
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kpack" / f"timm-{version}-models.txt"
    try:
        return version, frozenset(cache.read_text().split())
    except OSError:
        pass
    try:
        import timm
    except Exception:  # noqa: BLE001 - a broken torch install: the kernel will say; nothing to check against
        return None
    names = frozenset(timm.list_models())
    try:
        from packager.fsutil import atomic_write_text

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, "\n".join(sorted(names)) + "\n")
    except OSError:
        pass  # a read-only home: list them again next time
    return version, names


def _kernel_timm(cfg, root: Path) -> str | None:
    """The timm version the kernel imports: the wheels dataset's pin, else the image's (this venv on the local
    backend, the probed snapshot's on Kaggle); None when not known."""
    from importlib import metadata as importlib_metadata

    from packager.wheels import KAGGLE_SNAPSHOT, read_requirements, read_snapshot

    spec = getattr(cfg.datasets, "wheels", None)
    try:
        pins = read_requirements(Path(root) / spec.requirements) if spec is not None else []
    except UserError:  # the wheels build says what
        pins = []
    pinned = next((p.version for p in pins if p.name == "timm"), None)
    if pinned or cfg.backend != "local":
        return pinned or read_snapshot(Path(root) / KAGGLE_SNAPSHOT)[0].get("timm")
    try:
        return importlib_metadata.version("timm")
    except importlib_metadata.PackageNotFoundError:
        return None


def _weight_files(root: Path, spec) -> dict[str, Path]:
    if spec is None:
        return {}
    from packager.weights import weight_files

    return {p.name: p for p in weight_files(Path(root) / spec.dir)}
