"""The weights dataset: every file under `models/` (plain, or sealed as `<name>.enc`) plus `manifest.json`.

Deterministic: the same weights and key give the same dataset content hash, so re-pushing unchanged weights
uploads nothing. Sealing draws a fresh random nonce prefix per file (see kpack_runtime/sealed.py), so
encrypting the same file twice gives different bytes; instead of making the nonce a function of the content
(which would repeat nonces if a derivation ever collided, and leaks plaintext equality), the builder keeps its
output folder between builds and reuses a sealed file whose plaintext sha256, size, key id and chunk size
are unchanged and which was not touched since it was written (size, mtime and inode recorded in
`.<slug>.sealed.json` beside the folder). Only changed files are sealed anew, each with a new nonce prefix,
so no nonce is ever used under one key for two different plaintexts.

Architecture names come from `models/models.yaml` (`file: architecture`) where it lists the file, else from
the naming convention `<timm-arch>.<tag>.<ext>` (e.g. `resnet50.a1_in1k.pth` -> `resnet50`), else none.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from kpack_runtime import sealed
from packager.datasets import METADATA, PUSHED
from packager.errors import UserError
from packager.fsutil import HashCache, atomic_write_text, tree_hash
from packager.wheels import DatasetBuild

MANIFEST = "manifest.json"
MAPPING = "models.yaml"
FORMAT = "kpack-weights/1"
SEALED_SUFFIX = ".enc"
SKIPPED = {"README.md", MAPPING}  # documentation and the mapping itself are not weights


def load_key(env_name: str) -> bytes:
    """The 32-byte weights key from the environment variable `env_name` (64 hex digits or base64)."""
    text = os.environ.get(env_name, "")
    if not text.strip():
        raise UserError(f"datasets.weights.encrypt is on but {env_name} is not set: export {env_name} with a "
                        f"32-byte key (64 hex digits or base64), kept out of the repository; {sealed.KEY_HINT}")
    try:
        return sealed.parse_key(text, env_name)
    except sealed.SealedError as exc:
        raise UserError(str(exc)) from None


def _architectures(models: Path) -> dict[str, str]:
    mapping_file = models / MAPPING
    if not mapping_file.is_file():
        return {}
    try:
        data = yaml.safe_load(mapping_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{mapping_file}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise UserError(f"{mapping_file}: expected a mapping of file name -> architecture, e.g. "
                        "'backbone.pth: convnext_tiny'")
    return data


def architecture_of(name: str, mapping: dict[str, str]) -> str | None:
    """`name` is relative to models/ (a sub-folder's file: 'folder/file'); the convention reads the file name."""
    if name in mapping:
        return mapping[name]
    parts = name.rsplit("/", 1)[-1].split(".")
    return parts[0] if len(parts) >= 3 and parts[0] else None


def weight_files(models: Path) -> list[Path]:
    """The weight files under `models/`, sorted; sub-folders (a Hugging Face folder: config.json +
    model.safetensors) are kept: each top-level folder goes up as one archive that Kaggle unpacks into a
    folder of that name (datasets.py, dir_mode zip)."""
    if not models.is_dir():
        raise UserError(f"{models}: no weights folder; create it and put the weight files in it, or remove "
                        "datasets.weights from kpack.yaml")
    files = []
    for path in sorted(models.rglob("*")):
        rel = path.relative_to(models)
        if any(part.startswith(".") for part in rel.parts) or (len(rel.parts) == 1 and path.name in SKIPPED):
            continue
        if path.is_dir() or not path.is_file():
            continue
        if path.name in (MANIFEST, METADATA, PUSHED) or path.name.endswith(SEALED_SUFFIX):
            raise UserError(f"{path}: this name is reserved for the dataset's own files; rename it")
        files.append(path)
    return files


def _cache_file(out_dir: Path) -> Path:
    """What the builder knows about the sealed files it left in `out_dir`: beside the folder, not in it
    (everything in it is uploaded)."""
    return out_dir.parent / f".{out_dir.name}.sealed.json"


def _read_cache(out_dir: Path) -> dict[str, dict]:
    try:
        return dict(json.loads(_cache_file(out_dir).read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def _file_id(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _reusable(cached: dict | None, stored: Path, entry: dict) -> bool:
    """The sealed file from an earlier build holds this plaintext under this key, and was not touched since
    (same size, modification time and inode as when it was written)."""
    if not cached or not stored.is_file():
        return False
    same = all(cached.get(k) == entry.get(k) for k in ("sha256", "size", "key_id", "chunk_size", "sealed_format"))
    return same and cached.get("file") == _file_id(stored)


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _same_plain_file(src: Path, stored: Path, digest: str, hashes: HashCache) -> bool:
    if not stored.is_file():
        return False
    if os.path.samefile(src, stored):  # the hard link from the previous build
        return True
    return stored.stat().st_size == src.stat().st_size and hashes.sha256(stored) == digest


def _place_plain(src: Path, dst: Path) -> None:
    """A plain weight file in the dataset folder: a hard link where the file system allows, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def build_weights_dataset(cfg, out_dir: Path, spec=None) -> DatasetBuild:
    """Write `manifest.json` and the weight files (sealed when datasets.weights.encrypt) into `out_dir`, which
    is kept between builds; `dataset-metadata.json` there is left alone (the metadata step writes it).
    `spec`: another section with slug, dir, encrypt and key_env (models.weights: models_push.py)."""
    spec = spec or cfg.datasets.weights
    if spec is None:
        raise UserError("kpack.yaml: no datasets.weights section; add one with at least 'slug:'")
    models, out_dir = Path(spec.dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mapping = _architectures(models)
    key = load_key(spec.key_env) if spec.encrypt else None
    kid = sealed.key_id(key) if key else None
    cache = _read_cache(out_dir)
    hashes = HashCache(out_dir.parent / f".{out_dir.name}.hashes.json")

    entries, keep = [], {MANIFEST, METADATA, PUSHED}
    for src in weight_files(models):
        before = _stamp(src)
        digest, size = hashes.sha256(src), before[0]
        name = src.relative_to(models).as_posix()
        entry = {"name": name, "stored": name + (SEALED_SUFFIX if key else ""), "sha256": digest,
                 "size": size, "architecture": architecture_of(name, mapping), "encrypted": bool(key)}
        stored = out_dir / entry["stored"]
        if key:
            stored.parent.mkdir(parents=True, exist_ok=True)
            entry.update(key_id=kid, chunk_size=sealed.DEFAULT_CHUNK, sealed_format=sealed.VERSION)
            if not _reusable(cache.get(entry["stored"]), stored, entry):
                sealed.encrypt_file(src, stored, key, sealed.DEFAULT_CHUNK, sha256=digest)
            cache[entry["stored"]] = {**entry, "file": _file_id(stored)}
        elif not _same_plain_file(src, stored, digest, hashes):
            _place_plain(src, stored)
        if _stamp(src) != before:
            raise UserError(f"{src}: changed while the weights dataset was being built; build again")
        entry["stored_size"] = stored.stat().st_size
        entries.append(entry)
        keep.add(entry["stored"])

    # The folder is this builder's: drop weights removed from models/, the other form (plain/sealed) after the
    # encrypt setting changed, and temp files a killed build left.
    for stale in sorted(out_dir.rglob("*"), reverse=True):  # a folder's files before the folder
        rel = stale.relative_to(out_dir).as_posix()
        if stale.is_dir() and not stale.is_symlink():
            if not any(k.startswith(rel + "/") for k in keep):
                shutil.rmtree(stale)
        elif rel not in keep:
            stale.unlink()

    manifest = {"format": FORMAT, "encrypted": bool(key), "key_id": kid, "files": entries}
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    atomic_write_text(_cache_file(out_dir), json.dumps({k: v for k, v in cache.items() if k in keep}, indent=1,
                                                       sort_keys=True) + "\n")
    content_hash = tree_hash(out_dir, exclude=(METADATA, PUSHED), sha256=hashes.sha256)
    hashes.save()
    return DatasetBuild(slug=spec.slug, title=_title(spec.slug), path=out_dir, content_hash=content_hash,
                        files=sorted([MANIFEST] + [e["stored"] for e in entries]))


def _title(slug: str) -> str:
    from packager.metadata import title_for

    title = title_for(slug)
    return title if len(title) >= 6 else f"{title} Weights"  # Kaggle wants 6-50 characters
