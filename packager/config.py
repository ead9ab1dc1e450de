"""The project config: one YAML file at the repo root (`kpack.yaml`), validated with pydantic.

Secrets never live here: the config names environment variables (or Kaggle secret labels) that hold them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from packager.errors import UserError

CONFIG_FILE = "kpack.yaml"
KERNEL_KINDS = ("train", "validate", "infer")
ACCELERATORS = (
    "None", "NvidiaTeslaT4", "NvidiaTeslaP100", "NvidiaL4", "NvidiaTeslaA100", "NvidiaH100", "TpuV5E8", "TpuV6E8",
)
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
    model_config = ConfigDict(extra="forbid")


class Sources(Strict):
    datasets: list[str] = []
    kernels: list[str] = []
    competitions: list[str] = []

    _refs = field_validator("datasets", "kernels")(lambda cls, v: [_check_ref(x) for x in v])


class KernelConfig(Strict):
    entry: str = Field(description="file inside kernel_src/ whose main(config) the kernel runs")
    slug: str | None = None
    title: str | None = None
    accelerator: Literal[ACCELERATORS] = "NvidiaTeslaT4"  # type: ignore[valid-type]
    internet: bool = False  # the kaggle client's own default is on; competitions need it off
    private: bool = True
    session_hours: float = Field(12.0, gt=0, le=12)
    sources: Sources = Sources()
    packages: list[str] = Field([], description="extra local pure-Python package folders to inline")

    _slug = field_validator("slug")(lambda cls, v: v if v is None else _check_slug(v))


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


class Telegram(Strict):
    token_env: str = "TELEGRAM_BOT_TOKEN"
    chat_id_env: str = "TELEGRAM_CHAT_ID"


class Notifications(Strict):
    telegram: Telegram | None = None


class LocalBackend(Strict):
    port: int = Field(8599, ge=1, le=65535)
    root: str = ".localkaggle"


class ProjectConfig(Strict):
    competition: str
    kaggle_user: str
    backend: Literal["local", "kaggle"] = "local"
    local: LocalBackend = LocalBackend()
    kernels: dict[Literal[KERNEL_KINDS], KernelConfig]  # type: ignore[valid-type]
    datasets: Datasets = Datasets()
    notifications: Notifications = Notifications()
    kit: dict = Field({}, description="the training kit's own settings, validated by kernel_src")

    _competition = field_validator("competition")(lambda cls, v: _check_slug(v))

    @model_validator(mode="after")
    def _default_slugs(self) -> "ProjectConfig":
        for kind, kernel in self.kernels.items():
            kernel.slug = kernel.slug or f"{self.competition}-{kind}"
            kernel.title = kernel.title or kernel.slug
        return self

    def kernel(self, kind: str) -> KernelConfig:
        if kind not in self.kernels:
            raise UserError(f"{CONFIG_FILE}: no kernels.{kind} section; add one with at least 'entry:'")
        return self.kernels[kind]


def _describe(error: dict) -> str:
    field = ".".join(str(p) for p in error["loc"] if p != "[key]") or "(top level)"
    message = error["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
    if error["type"] == "extra_forbidden":
        message = "unknown field; remove it or check its spelling"
    elif error["type"] == "missing":
        message = "required field is missing"
    got = error.get("input")
    shown = "" if error["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
    return f"{field}: {message}{shown}"


def parse_config(data: object, source: str = CONFIG_FILE) -> ProjectConfig:
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of settings at the top level")
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {_describe(exc.errors()[0])}") from None


def find_config(path: str | os.PathLike | None = None) -> Path:
    candidate = Path(path or os.environ.get("KPACK_CONFIG") or CONFIG_FILE)
    if not candidate.is_file():
        raise UserError(f"{candidate}: no project config here; run kpack from the repo root or pass --config")
    return candidate


def load_config(path: str | os.PathLike | None = None) -> ProjectConfig:
    file = find_config(path)
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{file}:{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, str(file))
