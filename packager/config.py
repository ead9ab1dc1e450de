"""The project config: one YAML file at the repo root (`kpack.yaml`), validated with pydantic.

Secrets never live here: the config names environment variables (or Kaggle secret labels) that hold them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from packager import shapes
from packager.errors import UserError

CONFIG_FILE = "kpack.yaml"
KERNEL_KINDS = ("train", "validate", "infer")
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,48}[a-z0-9]$")


def _check_slug(value: str) -> str:
    if not SLUG_RE.match(value):
        raise ValueError("a slug of 3-50 lowercase letters, digits and hyphens, e.g. 'imet-train'")
    return value


def _check_ref(value: str) -> str:
    """owner/slug, as Kaggle names datasets and kernels."""
    if value.count("/") != 1 or not all(value.split("/")):
        raise ValueError("'owner/slug', e.g. 'alice/imet-weights'")
    return value


class Strict(BaseModel):
    # strict: `private: 'yes'` or `session_hours: '9'` is refused, not read as true / 9
    model_config = ConfigDict(extra="forbid", strict=True)


def _check_model_source(value: str) -> str:
    """owner/model/framework/variation/version as kernel-metadata's model_sources names one (the version may be
    left out: the newest, pinned when kpack pushes, since the kaggle client accepts only the full form)."""
    parts = value.split("/")
    if len(parts) not in (4, 5) or not all(parts) or (len(parts) == 5 and not parts[4].isdigit()):
        raise ValueError("'owner/model-slug/framework/variation-slug/version-number', e.g. "
                         "'google/efficientnet/pytorch/b0/1' (leave out the version for the newest)")
    return value


class Sources(Strict):
    datasets: list[str] = []
    kernels: list[str] = []
    competitions: list[str] = []
    models: list[str] = []  # Kaggle Models, mounted under /kaggle/input/ (models_push.py pins the version)

    _refs = field_validator("datasets", "kernels")(lambda cls, v: [_check_ref(x) for x in v])
    _models = field_validator("models")(lambda cls, v: [_check_model_source(x) for x in v])


class KernelConfig(Strict):
    # anywhere in the project; the build packs the package holding it (or its folder's modules: build.py)
    entry: str = Field(description="the .py file, relative to the project root, whose main(config) the kernel runs")
    slug: str | None = None
    title: str | None = None
    # a Kaggle machine shape (packager/shapes.py); one kpack does not know is pushed as given, with a warning
    accelerator: str = shapes.DEFAULT_GPU
    internet: bool = False  # the kaggle client's own default is on; competitions need it off
    private: bool = True
    session_hours: float | None = Field(None, gt=0, description="default: the shape's limit (12 h GPU/CPU, 9 h TPU)")
    sources: Sources = Sources()
    packages: list[str] = Field([], description="more pure-Python package folders (or .py modules) to pack, "
                                "relative to the project root; the entry's own package is always packed")
    chain: Literal["alternate", "distinct"] = "alternate"  # session slugs: <slug>/<slug>-b, or <slug>-sN (chain.py)
    members: "Members | None" = None  # train only: the campaign's grid of folds x variants (packager/campaign.py)

    _slug = field_validator("slug")(lambda cls, v: v if v is None else _check_slug(v))


class Members(Strict):
    """A campaign's grid: each (variant, fold) is one member, its own chain <slug>-<variant>-f<fold>."""
    folds: list[int] | Literal["all"] = Field([0], description="validation folds, or all of kit.data.folds")
    variants: dict[str, dict] = Field({}, description="name -> kit overrides (deep-merged); none: one variant")

    @field_validator("variants")
    @classmethod
    def _names(cls, value: dict) -> dict:
        for name in value:
            if not re.match(r"^[a-z0-9]+(?:-[a-z0-9]+)*$", name):
                raise ValueError(f"variant {name!r}: lowercase letters, digits and single hyphens (it goes in a slug)")
        return value


class Campaign(Strict):
    """How many sessions a campaign keeps going at once (Kaggle's account caps), and the weekly GPU quota."""
    gpu_sessions: int = Field(2, ge=1)
    cpu_sessions: int = Field(5, ge=1)
    weekly_gpu_hours: float = Field(30.0, gt=0)
    epoch_minutes: float | None = Field(None, gt=0, description="a measured epoch time, for the forecast")


class WheelsDataset(Strict):
    slug: str
    requirements: str = "requirements-kernel.txt"
    install: Literal["site", "uv", "pip"] = "site"  # site: a folder installed ahead, put on sys.path
    delete_old_versions: bool = False  # each new version removes the files of the older ones (quota)

    _slug = field_validator("slug")(lambda cls, v: _check_slug(v))


class WeightsDataset(Strict):
    slug: str
    dir: str = "models"
    encrypt: bool = False
    key_env: str = "KPACK_WEIGHTS_KEY"  # also the Kaggle secret label the kernel reads
    public: bool = False
    delete_old_versions: bool = False

    _slug = field_validator("slug")(lambda cls, v: _check_slug(v))


class Datasets(Strict):
    wheels: WheelsDataset | None = None
    weights: WeightsDataset | None = None


class ModelWeights(Strict):
    """models/ published as a Kaggle Model instance (packager/models_push.py), beside or instead of
    datasets.weights: <kaggle_user>/<slug>/<framework>/<variation>, a new instance version per content change."""
    slug: str
    framework: str = "PyTorch"  # a kaggle client framework name: PyTorch, Transformers, Other, ...
    variation: str = "default"
    dir: str = "models"
    encrypt: bool = False
    key_env: str = "KPACK_WEIGHTS_KEY"  # also the Kaggle secret label the kernel reads
    public: bool = False
    license: str = "Apache 2.0"

    _slug = field_validator("slug")(lambda cls, v: _check_slug(v))
    @field_validator("variation")
    @classmethod
    def _variation(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$", value) or len(value) > 50:
            raise ValueError("a variation slug: lowercase letters and digits, single '-' or '_' between, e.g. 'b0'")
        return value

    @field_validator("framework")
    @classmethod
    def _framework(cls, value: str) -> str:
        from kagglesdk.models.types.model_enums import ModelFramework

        wanted = value.replace("_", "").replace("-", "").lower()
        if not any(f.name.removeprefix("MODEL_FRAMEWORK_").replace("_", "").lower() == wanted and f.value
                   for f in ModelFramework):
            raise ValueError("a Kaggle Models framework, e.g. PyTorch, Transformers, Jax, Keras, Other")
        return value


class Models(Strict):
    weights: ModelWeights | None = None


class Telegram(Strict):
    token_env: str = "TELEGRAM_BOT_TOKEN"
    chat_id_env: str = "TELEGRAM_CHAT_ID"


class Notifications(Strict):
    telegram: Telegram | None = None


class LocalBackend(Strict):
    port: int = Field(8599, ge=1, le=65535)
    root: str = ".localkaggle"


class CompetitionLimits(Strict):
    # A code competition's own run-time limit for the notebook it reruns on the hidden test set (kernels.infer),
    # often below the session limit ("GPU Notebook <= 9 hours run-time").
    runtime_hours: float | None = Field(None, gt=0)


class ProjectConfig(Strict):
    competition: str
    kaggle_user: str
    backend: Literal["local", "kaggle"] = "local"
    local: LocalBackend = LocalBackend()
    kernels: dict[Literal[KERNEL_KINDS], KernelConfig]  # type: ignore[valid-type]
    datasets: Datasets = Datasets()
    models: Models = Models()
    notifications: Notifications = Notifications()
    kit: dict = Field({}, description="the training kit's own settings, validated by kernel_src")
    competition_limits: CompetitionLimits = CompetitionLimits()
    campaign: Campaign = Campaign()
    # code: notebook submissions only (the infer kernel is rerun offline); unset: the backend's metadata says
    competition_type: Literal["code", "file"] | None = None
    # which way a CV or leaderboard score is better; unset: lower where the competition's evaluation metric, as
    # the backend names it, is an error, a loss or a distance (higher_is_better), else higher
    score_direction: Literal["higher", "lower"] | None = None
    _source: str = PrivateAttr(CONFIG_FILE)  # the file it was read from, for error lines
    _lines: dict = PrivateAttr(default_factory=dict)  # field path -> line in that file
    _member: dict | None = PrivateAttr(None)  # a campaign member's cfg: its variant, fold (campaign.py)

    _competition = field_validator("competition")(lambda cls, v: _check_slug(v))

    @model_validator(mode="after")
    def _default_slugs(self) -> "ProjectConfig":
        for kind, kernel in self.kernels.items():
            kernel.slug = kernel.slug or f"{self.competition}-{kind}"
            kernel.title = kernel.title or kernel.slug
            if kernel.session_hours is None:
                kernel.session_hours = min(h for h, _ in session_limits(self, kind))
        return self

    def kernel(self, kind: str) -> KernelConfig:
        if kind not in self.kernels:
            raise UserError(f"{self._source}: no kernels.{kind} section; add one with at least 'entry:'")
        return self.kernels[kind]

    def where(self, *loc) -> str:
        """'kpack.yaml: line N: ' for the field at path `loc` (or its nearest section the file has)."""
        return f"{self._source}: {_line_of(tuple(loc), self._lines)}"


# Evaluation metric names where lower is better (a guess from the name: the API says nothing about direction).
LOWER_IS_BETTER = re.compile(r"error|loss|\b(r?mse|rmsle|mae|mape|smape)\b|distance|deviation", re.IGNORECASE)


def higher_is_better(cfg: ProjectConfig, metric_name: str = "") -> bool:
    """score_direction when set; else guessed from the competition's evaluation metric name (higher without one)."""
    if cfg.score_direction is not None:
        return cfg.score_direction == "higher"
    return not LOWER_IS_BETTER.search(metric_name or "")


def session_limits(cfg: ProjectConfig, kind: str) -> list[tuple[float, str]]:
    """(hours, what sets them) that bound kernels.<kind>.session_hours: the machine shape's session limit and,
    for the submitted notebook (infer), the competition's run-time limit when the config names one."""
    shape = shapes.guess(cfg.kernels[kind].accelerator)
    limits = [(shape.limit_hours, f"the {shape.limit_hours:g} h session limit of {shape.name} "
                                  f"({shape.kind.upper()}) sessions")]
    runtime = cfg.competition_limits.runtime_hours
    if kind == "infer" and runtime is not None:
        limits.append((runtime, f"the competition's {runtime:g} h run-time limit (competition_limits.runtime_hours)"))
    return limits


def _check_session_hours(cfg: ProjectConfig) -> tuple[tuple, str] | None:
    """(field path, what is wrong) for the first session_hours over one of its limits, else None."""
    for kind, kernel in cfg.kernels.items():
        for hours, what in session_limits(cfg, kind):
            if kernel.session_hours > hours:
                return (("kernels", kind, "session_hours"),
                        f"{kernel.session_hours:g} h is over {what}; use {hours:g} or less")
    return None


def _line_of(loc: tuple, lines: dict[tuple, int]) -> str:
    """'line N: ' for the deepest part of `loc` the file has (a missing field: its section's line), or ''."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return f"line {lines[loc[:end]]}: "
    return ""


def _describe(error: dict, lines: dict[tuple, int]) -> str:
    loc = tuple(p for p in error["loc"] if p != "[key]")
    field = ".".join(str(p) for p in loc) or "(top level)"
    message = error["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
    if error["type"] == "extra_forbidden":
        message = "unknown field; remove it or check its spelling"
    elif error["type"] == "missing":
        message = "required field is missing"
    elif error["type"] == "bool_type":
        message = "expected true or false, unquoted"
    got = error.get("input")
    shown = "" if error["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
    return f"{_line_of(loc, lines)}{field}: {message}{shown}"


def parse_config(data: object, source: str = CONFIG_FILE, lines: dict[tuple, int] | None = None) -> ProjectConfig:
    """The validated config; `lines` (field path -> line in `source`) lets an error line name the line."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of settings at the top level")
    try:
        cfg = ProjectConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {_describe(exc.errors()[0], lines)}") from None
    cfg._source, cfg._lines = source, lines
    problem = _check_session_hours(cfg)
    if problem:
        loc, message = problem
        raise UserError(f"{source}: {_line_of(loc, lines)}{'.'.join(loc)}: {message}")
    return cfg


def find_config(path: str | os.PathLike | None = None) -> Path:
    candidate = Path(path or os.environ.get("KPACK_CONFIG") or CONFIG_FILE)
    if not candidate.is_file():
        raise UserError(f"{candidate}: no project config here; run kpack from the repo root or pass --config")
    return candidate


class _DuplicateKey(Exception):
    def __init__(self, key, line: int, first: int):
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


class _Loader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
                seen[key] = line
            except TypeError:  # an unhashable key: the base class says so
                break
        return super().construct_mapping(node, deep)


def _key_lines(node, path: tuple = ()) -> dict[tuple, int]:
    """field path -> 1-based line of its key (or list item) in the file."""
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        items = [(k.value, k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]
    elif isinstance(node, yaml.SequenceNode):
        items = [(i, v, v) for i, v in enumerate(node.value)]
    else:
        return lines
    for name, where, value in items:
        lines[path + (name,)] = where.start_mark.line + 1
        lines.update(_key_lines(value, path + (name,)))
    return lines


def read_yaml(file: Path) -> tuple[object, dict[tuple, int]]:
    """The parsed YAML of `file` and the line of each field; one-line UserErrors for text that is not UTF-8,
    not YAML, or has a key twice."""
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = file.read_bytes()[:exc.start].count(b"\n") + 1
        raise UserError(f"{file}: line {line} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save the file "
                        "as UTF-8") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _DuplicateKey as dup:
        raise UserError(f"{file}: line {dup.line}: duplicate key '{dup.key}' (first on line {dup.first}); "
                        "keep one: YAML would silently use the last") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{file}:{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    finally:
        loader.dispose()
    return data, _key_lines(node)


def load_config(path: str | os.PathLike | None = None) -> ProjectConfig:
    file = find_config(path)
    data, lines = read_yaml(file)
    return parse_config(data, str(file), lines)
