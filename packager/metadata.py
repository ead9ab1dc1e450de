"""kernel-metadata.json and dataset-metadata.json, written so the `kaggle` client accepts them as they are.

The rules are the client's own (kaggle/api/kaggle_api_extended.py: kernels_push, dataset_create_new,
validate_kernel_string, validate_dataset_string), checked here at build time so a bad value is refused with
one line before anything is uploaded. Two choices differ from the client's defaults on purpose:
`enable_internet` is always written (the client's default is ON, and competitions need it off), and the
kernel title must slugify to the kernel slug (the client only prints a warning, and Kaggle then files the
kernel under a slug nobody asked for).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable

from slugify import slugify

from packager import shapes
from packager.errors import UserError

log = logging.getLogger("kpack")

KERNEL_METADATA = "kernel-metadata.json"
DATASET_METADATA = "dataset-metadata.json"
# The client's slug syntax (_validate_slug_syntax) and its length rules for kernels and datasets.
SLUG_SYNTAX = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
OWNER_SYNTAX = re.compile(r"^[A-Za-z0-9]+(?:[_-][A-Za-z0-9]+)*$")
KERNEL_SLUG_MIN = 5
TITLE_MIN = 5
DATASET_LEN = (6, 50)
SUBTITLE_LEN = (20, 80)


def title_for(slug: str) -> str:
    """A readable title that slugifies back to `slug`: 'digits-multilabel-train' -> 'Digits Multilabel Train'."""
    title = " ".join(word.capitalize() for word in slug.split("-"))
    return title if slugify(title) == slug else slug


def _check_owner(owner: str, what: str) -> None:
    if not owner or not OWNER_SYNTAX.match(owner):
        raise UserError(f"{what}: '{owner}' is not a Kaggle user name (letters, digits, '-' or '_')")


def _check_ref(ref: str, what: str, min_slug: int = 1) -> None:
    """owner/slug or owner/slug/version, as validate_dataset_string and validate_kernel_string accept."""
    parts = ref.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UserError(f"{what}: '{ref}' is not 'owner/slug' (or 'owner/slug/version')")
    if len(parts[1]) < min_slug:
        raise UserError(f"{what}: '{ref}': the slug must be at least {min_slug} characters")


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def accelerator_flags(shape: str) -> dict[str, Any]:
    """enable_gpu / enable_tpu / machine_shape for a configured accelerator ('None' means CPU only). A name
    packager/shapes.py does not know is written as given (GPU unless it starts with 'Tpu'); build warns."""
    kind = shapes.guess(shape).kind
    if kind == "cpu":
        return {"enable_gpu": False, "enable_tpu": False}
    return {"enable_gpu": kind == "gpu", "enable_tpu": kind == "tpu", "machine_shape": shape}


def accelerator_warning(shape: str) -> str | None:
    """One line for a retired shape (runs as another) or a name kpack does not know; None for the rest."""
    return shapes.warning(shape)


def read_kernel_metadata(folder: str | Path) -> dict[str, Any]:
    """A built kernel folder's kernel-metadata.json (possibly edited by hand), with one-line UserErrors for a
    missing or unreadable file, invalid JSON, or an `id` / `code_file` the kaggle client cannot use."""
    path = Path(folder) / KERNEL_METADATA
    fix = "fix it, or rebuild it with `kpack build KIND`"
    try:
        text = path.read_bytes().decode("utf-8-sig")
        meta = json.loads(text)
    except FileNotFoundError:
        raise UserError(f"{path}: missing; build the kernel first with `kpack build KIND`") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                        f"{fix}") from None
    except ValueError as exc:  # json.JSONDecodeError
        where = f"line {exc.lineno} column {exc.colno}: " if hasattr(exc, "lineno") else ""
        raise UserError(f"{path}: not valid JSON ({where}{getattr(exc, 'msg', exc)}); {fix}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: expected a JSON object of kernel settings, got {_json_kind(meta)}; {fix}")
    for key, example in (("id", "'owner/kernel-slug'"), ("code_file", "the script's file name, e.g. 'train.py'")):
        value = meta.get(key)
        if not isinstance(value, str) or not value.strip():
            got = "missing" if key not in meta else f"got {_json_kind(value)} {json.dumps(value)}"
            raise UserError(f"{path}: {key}: expected a string, {example} ({got}); {fix}")
    if meta["id"].count("/") != 1 or not all(meta["id"].split("/")):
        raise UserError(f"{path}: id: '{meta['id']}' is not 'owner/kernel-slug'; {fix}")
    if Path(meta["code_file"]).name != meta["code_file"]:
        raise UserError(f"{path}: code_file: '{meta['code_file']}' must be a file name inside {folder}; {fix}")
    return meta


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def kernel_metadata(cfg, kind: str, code_file: str, dataset_sources: Iterable[str] = (),
                    kernel_sources: Iterable[str] = (), *, slug: str | None = None,
                    title: str | None = None) -> dict[str, Any]:
    """kernel-metadata.json for kernels.<kind>; `dataset_sources` and `kernel_sources` are the full lists
    (the caller adds the project's own datasets and a chained session's previous kernel). `slug` and
    `title` override the configured ones (a chained session gets its own slug). Refuses, with one line,
    anything the kaggle client or Kaggle would reject or misfile."""
    kernel = cfg.kernel(kind)
    slug = slug or kernel.slug
    where = f"kernels.{kind}"
    _check_owner(cfg.kaggle_user, "kaggle_user")
    if not SLUG_SYNTAX.match(slug) or len(slug) < KERNEL_SLUG_MIN or len(slug) > 50:
        raise UserError(f"{where}.slug: '{slug}' must be {KERNEL_SLUG_MIN}-50 lowercase letters, digits and single "
                        "hyphens (the kaggle client refuses shorter kernel slugs)")
    if title is None:
        title = kernel.title if kernel.title and kernel.title != slug else title_for(slug)
    if len(title) < TITLE_MIN:
        raise UserError(f"{where}.title: '{title}' is shorter than {TITLE_MIN} characters; Kaggle refuses it")
    if slugify(title) != slug:
        raise UserError(f"{where}.title: '{title}' becomes the slug '{slugify(title)}' on Kaggle, not '{slug}'; "
                        f"use a title like '{title_for(slug)}' or leave title unset")
    if not code_file or "/" in code_file or not code_file.endswith(".py"):
        raise UserError(f"{where}: code file '{code_file}' must be a .py file name inside the kernel folder")
    datasets = _unique(dataset_sources)
    kernels = _unique(kernel_sources)
    competitions = _unique(kernel.sources.competitions)
    for ref in datasets:
        _check_ref(ref, f"{where}.sources.datasets")
    for ref in kernels:
        _check_ref(ref, f"{where}.sources.kernels", min_slug=KERNEL_SLUG_MIN)
    for comp in competitions:
        if not comp or "/" in comp:
            raise UserError(f"{where}.sources.competitions: '{comp}' is not a competition slug")
    own = f"{cfg.kaggle_user}/{slug}"
    if own in kernels or any(k.startswith(own + "/") for k in kernels):
        raise UserError(f"{where}.sources.kernels: the kernel cannot read its own output ({own}); "
                        "a chained session needs a slug of its own")
    meta: dict[str, Any] = {
        "id": own,
        "title": title,
        "code_file": code_file,
        "language": "python",
        "kernel_type": "script",
        "is_private": bool(kernel.private),
        "enable_internet": bool(kernel.internet),  # always explicit: the client's default is ON
        **accelerator_flags(kernel.accelerator),
        "dataset_sources": datasets,
        "competition_sources": competitions,
        "kernel_sources": kernels,
        "model_sources": _model_sources(cfg, kind),
    }
    return meta


def _model_sources(cfg, kind: str) -> list[str]:
    """kernels.<kind>.sources.models plus the models.weights instance (models_push pins unversioned ones)."""
    from packager.models_push import kernel_model_sources

    return _unique(kernel_model_sources(cfg, kind))


def dataset_metadata(owner, slug, title: str | None = None, is_private: bool = True, license: str = "CC0-1.0",
                     *, subtitle: str | None = None, description: str | None = None,
                     keywords: Iterable[str] = ()) -> dict[str, Any]:
    """dataset-metadata.json for owner/slug, as dataset_create_new accepts it: title 6-50 characters (the
    default is read off the slug and slugifies back to it), exactly one license, subtitle 20-80 characters.

    Also callable as dataset_metadata(cfg, build) with a ProjectConfig and a dataset build (anything with
    .slug and optionally .title): owner is cfg.kaggle_user, and only a weights dataset marked public is public.
    """
    if hasattr(owner, "kaggle_user"):  # (cfg, build)
        cfg, build = owner, slug
        slug = build.slug
        title = title or getattr(build, "title", None)
        weights = cfg.datasets.weights
        is_private = not (weights is not None and weights.slug == slug and weights.public)
        owner = cfg.kaggle_user
    _check_owner(owner, "kaggle_user")
    lo, hi = DATASET_LEN
    if not SLUG_SYNTAX.match(slug) or not lo <= len(slug) <= hi:
        raise UserError(f"dataset slug '{slug}' must be {lo}-{hi} lowercase letters, digits and single hyphens "
                        "(the kaggle client refuses other lengths)")
    title = title or title_for(slug)
    if not lo <= len(title) <= hi:
        raise UserError(f"dataset title '{title}' must be {lo}-{hi} characters (the kaggle client refuses it)")
    if title in ("INSERT_TITLE_HERE",) or slug == "INSERT_SLUG_HERE":
        raise UserError("dataset metadata still holds the client's template values")
    if not license:
        raise UserError("a dataset needs exactly one license, e.g. CC0-1.0")
    meta: dict[str, Any] = {
        "id": f"{owner}/{slug}",
        "title": title,
        "licenses": [{"name": license}],
        "isPrivate": bool(is_private),
    }
    if subtitle is not None:
        slo, shi = SUBTITLE_LEN
        if not slo <= len(subtitle) <= shi:
            raise UserError(f"dataset subtitle must be {slo}-{shi} characters (got {len(subtitle)})")
        meta["subtitle"] = subtitle
    if description:
        meta["description"] = description
    if keywords:
        meta["keywords"] = _unique(keywords)
    return meta
