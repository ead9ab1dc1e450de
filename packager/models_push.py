"""models/ as a Kaggle Model instance (config `models.weights`), and the kernels' model sources.

The instance is <kaggle_user>/<slug>/<framework>/<variation>. Its content is built exactly as the weights
dataset's (packager.weights: manifest.json, optional sealing, sub-folders kept) into build/models/<slug>/, and
published through the client's model calls: `model_create_new` once, `model_instance_create` once, then
`model_instance_version_create` per content change. The unchanged rule is the datasets' one (content hash in
pushed.json per backend, and the server still holding that version): unchanged uploads nothing. Before any
upload the folder goes through the same secrets scan; after it, kpack waits until the instance reports the
new version (the client has no status call for model versions; Kaggle's processing of them is a guess).

The kaggle client accepts model_sources only as owner/model/framework/variation/version; a source configured
without a version, and the project's own instance, are pinned to the instance's current version when kpack
pushes a kernel (pin_sources), so a plain `kaggle kernels push` of a built kernel works too once pinned.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from packager import datasets, kaggle_api
from packager.errors import UserError
from packager.fsutil import atomic_write_text

BUILD_ROOT = Path("build") / "models"
MODEL_METADATA = "model-metadata.json"
INSTANCE_METADATA = "model-instance-metadata.json"


def framework_path(framework: str) -> str:
    """A framework as model paths and sources spell it: PyTorch -> pytorch, Other -> other."""
    return framework.replace("_", "").replace("-", "").lower()


def instance_ref(cfg) -> str | None:
    spec = cfg.models.weights
    if spec is None:
        return None
    return f"{cfg.kaggle_user}/{spec.slug}/{framework_path(spec.framework)}/{spec.variation}"


def _folder(cfg) -> Path:
    return BUILD_ROOT / cfg.models.weights.slug


def kernel_model_sources(cfg, kind: str) -> list[str]:
    """kernels.<kind>.sources.models, then the project's own instance (at its last pushed version when known)."""
    sources = list(cfg.kernel(kind).sources.models)
    own = instance_ref(cfg)
    if own is not None:
        record = datasets.read_record(cfg, SimpleNamespace(path=_folder(cfg)))
        version = (record or {}).get("version")
        sources.append(f"{own}/{version}" if version else own)
    return sources


# --------------------------------------------------------------------------------------------- server state

def remote_version(api, ref: str) -> tuple[bool, int | None]:
    """(model exists, instance's current version or None when the instance does not exist) for
    owner/model/framework/variation."""
    owner, slug = ref.split("/")[:2]
    try:
        kaggle_api.call(f"get model {owner}/{slug}", api.model_get, f"{owner}/{slug}")
    except kaggle_api.KaggleCallError as err:
        if err.status in (403, 404):
            return False, None
        raise
    return True, instance_version(api, ref)


def instance_version(api, ref: str) -> int | None:
    """The current version of instance owner/model/framework/variation, None where there is none: one call, for
    the sources checks (remote_version also asks for the model, which only publishing needs to know)."""
    try:
        instance = kaggle_api.call(f"get model instance {ref}", api.model_instance_get, ref)
    except kaggle_api.KaggleCallError as err:
        if err.status in (403, 404):
            return None
        raise
    return getattr(instance, "version_number", None) or None


def wait_ready(api, ref: str, at_least: int, timeout_s: float | None = None) -> int:
    """Poll until the instance reports version `at_least` or later; one error line past the timeout
    (KPACK_DATASET_READY_TIMEOUT_S, shared with datasets)."""
    timeout_s = datasets.READY_TIMEOUT_S if timeout_s is None else timeout_s
    began, delay, said = time.monotonic(), 0.5, None
    while True:
        _, version = remote_version(api, ref)
        waited = time.monotonic() - began
        if version is not None and version >= at_least:
            return version
        if waited > timeout_s:
            raise UserError(f"model {ref}: v{at_least} still not there after {waited:.0f}s (the server reports "
                            f"v{version}); nothing was pushed after it: check the model's page, then push again "
                            f"(or raise KPACK_DATASET_READY_TIMEOUT_S, now {timeout_s:g})", exit_code=1)
        if said is None or waited - said >= datasets.PROGRESS_EVERY_S:
            print(f"model {ref}: waiting for v{at_least} ({waited:.0f}s so far, at most {timeout_s:.0f}s)",
                  flush=True)
            said = waited
        kaggle_api.sleep(min(delay, max(0.1, timeout_s - waited)))
        delay = 1.0 if waited < 30 else min(10.0, delay * 1.5)


# --------------------------------------------------------------------------------------------- build, publish

def build(cfg):
    """The instance's content (a DatasetBuild) in build/models/<slug>/, or None without models.weights."""
    spec = cfg.models.weights
    if spec is None:
        return None
    from packager.weights import build_weights_dataset

    return build_weights_dataset(cfg, _folder(cfg), spec=spec)


@dataclass
class PushedModel:
    ref: str                # owner/model/framework/variation
    version: int
    uploaded: bool          # False: unchanged, nothing went up
    bytes: int = 0


def _write_metadata(cfg, folder: Path) -> None:
    """The two files the client reads from the folder (it never uploads them)."""
    from packager.metadata import title_for

    spec = cfg.models.weights
    title = title_for(spec.slug)
    model = {"ownerSlug": cfg.kaggle_user, "slug": spec.slug, "title": title if len(title) >= 5 else f"{title} Model",
             "isPrivate": not spec.public, "description": f"Weights published by kpack from {spec.dir}/."}
    instance = {"ownerSlug": cfg.kaggle_user, "modelSlug": spec.slug, "instanceSlug": spec.variation,
                "framework": spec.framework, "licenseName": spec.license, "overview": "", "usage": ""}
    atomic_write_text(folder / MODEL_METADATA, json.dumps(model, indent=2) + "\n")
    atomic_write_text(folder / INSTANCE_METADATA, json.dumps(instance, indent=2) + "\n")


def publish(api, cfg, built, check_uploads=None, message: str | None = None) -> PushedModel:
    """Create or version the instance when its content hash changed; `check_uploads` (the secrets scan) gets
    the folder before anything is uploaded."""
    ref, path = instance_ref(cfg), Path(built.path)
    record = datasets.read_record(cfg, built)
    exists, version = remote_version(api, ref)
    if (record is not None and record.get("content_hash") == built.content_hash and version is not None
            and record.get("version") in (None, version)):
        print(f"model {ref}: unchanged (v{version}), nothing uploaded")
        return PushedModel(ref, version, uploaded=False)
    if check_uploads is not None:
        check_uploads([path])
    _write_metadata(cfg, path)
    entries = datasets._top_level(api, path)
    if not entries:
        raise UserError(f"model {ref}: {path} has no files to upload", exit_code=1)
    size = datasets._size(entries)
    datasets._guard_uploads(api, str(path), entries)
    owner_model = "/".join(ref.split("/")[:2])
    if not exists:
        print(f"model {owner_model}: creating")
        response = kaggle_api.call(f"create model {owner_model}", api.model_create_new, str(path),
                                   done=lambda: "created" if remote_version(api, ref)[0] else None)
        if not isinstance(response, str):
            datasets._check_response(f"model {owner_model}", response)
    upload = dict(quiet=True, dir_mode="zip", ignore_patterns=datasets.IGNORE)
    if version is None:
        print(f"model {ref}: creating the instance ({len(entries)} files, {size} bytes)")
        response = kaggle_api.call(f"create model instance {ref}", api.model_instance_create, str(path),
                                   done=lambda: "created" if remote_version(api, ref)[1] else None, **upload)
    else:
        print(f"model {ref}: content changed, new version ({len(entries)} files, {size} bytes)")
        before = version
        response = kaggle_api.call(
            f"version model instance {ref}", api.model_instance_version_create, ref, str(path),
            message or f"kpack content {built.content_hash[:12]}",
            done=lambda: "versioned" if (remote_version(api, ref)[1] or 0) > before else None, **upload)
    if not isinstance(response, str):
        datasets._check_response(f"model {ref}", response)
    datasets.forget_uploads(str(path), entries)  # the version landed: its upload tokens are used up
    new_version = wait_ready(api, ref, at_least=1 if version is None else version + 1)
    datasets.write_record(cfg, built, new_version)
    print(f"model {ref}: v{new_version} ready")
    return PushedModel(ref, new_version, uploaded=True, bytes=size)


# --------------------------------------------------------------------------------------------- kernel sources

def check_sources(api, cfg, kind: str) -> None:
    """Before anything is uploaded: every model source kernels.<kind>.sources.models names is an instance on
    the backend with that version (Kaggle would only drop it from the kernel after the push: invalidModelSources)."""
    for source in cfg.kernel(kind).sources.models:
        parts = source.split("/")
        newest = instance_version(api, "/".join(parts[:4]))
        where = f"{cfg.where('kernels', kind, 'sources', 'models')}kernels.{kind}.sources.models"
        if newest is None:
            raise UserError(f"{where}: {'/'.join(parts[:4])} is not a model instance on {cfg.backend} (or not "
                            f"visible to {cfg.kaggle_user}); check owner/model/framework/variation", exit_code=1)
        if len(parts) == 5 and int(parts[4]) > newest:
            raise UserError(f"{where}: {source}: the instance has no version {parts[4]} (newest v{newest}); pin "
                            f"an existing version or leave the version out for the newest", exit_code=1)


def pin_sources(api, cfg, kind: str, folder: Path) -> None:
    """Give each unversioned model source in the kernel folder's metadata, and the project's own instance,
    the instance's current version; one line naming a source that does not exist. Rewrites the file only
    when a version changed."""
    from packager.metadata import KERNEL_METADATA

    path = Path(folder) / KERNEL_METADATA
    meta = json.loads(path.read_text())
    if not meta.get("model_sources"):
        return  # nothing to pin (and a kernel kpack makes for itself, like the image probe, has no models section)
    own, pinned = instance_ref(cfg), []
    for source in meta.get("model_sources") or []:
        parts = source.split("/")
        base = "/".join(parts[:4])
        if len(parts) == 5 and base != own:
            pinned.append(source)
            continue
        version = instance_version(api, base)
        if version is None:
            raise UserError(f"kernels.{kind}.sources.models: {base} is not a model instance on the backend "
                            f"({cfg.backend}); check the name (owner/model/framework/variation) or publish it "
                            "first", exit_code=1)
        pinned.append(f"{base}/{version}")
    if pinned != list(meta.get("model_sources") or []):
        meta["model_sources"] = pinned
        atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
