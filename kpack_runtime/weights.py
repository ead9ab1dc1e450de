"""Inside the kernel: find the weights dataset, open sealed files, verify every file, say where each one is.

    from kpack_runtime import weights
    weights.prepare(config)                      # once, before building models
    weights.weights_path("resnet50.a1_in1k.pth") # -> Path to the verified plaintext
    weights.for_architecture("resnet50")         # -> Path or None

Plain files are used where they are mounted (read-only inputs, no copy). Sealed files are decrypted into
<kaggle temp>/weights/, outside working/, so plaintext weights never become part of the kernel's saved output.
The key comes from the environment variable named by datasets.weights.key_env (the local Kaggle passes user
secrets that way) or else from a Kaggle secret with that label. Every file is checked against the manifest's
sha256 (a plain file is hashed; a sealed one carries its plaintext's hash in a header that every chunk's tag
authenticates, see sealed.py). A failure (a damaged file, a wrong key) stops the kernel as the entries' errors
do: one line naming the file, exit code 2, no partial file; open_all() raises WeightsError instead.
"""
from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kpack_runtime import inputs, sealed

MANIFEST = "manifest.json"

_paths: dict[str, Path] = {}
_architectures: dict[str, str] = {}


class WeightsError(RuntimeError):
    """A weights problem, told in one line (never containing the key)."""


_get = inputs.config_value


def _spec(config) -> tuple[str, dict | object] | None:
    weights = _get(_get(config, "datasets"), "weights")
    if weights is None:
        return None
    return f"{_get(config, 'kaggle_user')}/{_get(weights, 'slug')}", weights


def find_dataset(ref: str) -> Path:
    """The mounted weights dataset folder: the usual mount places first, then any input with a kpack manifest."""
    found = inputs.find_input(ref, "dataset")
    if found is not None and (found / MANIFEST).is_file():
        return found
    slug = ref.rsplit("/", 1)[-1]
    for manifest in inputs.find_files(MANIFEST):
        if manifest.parent.name == slug:
            return manifest.parent
    raise WeightsError(f"weights dataset {ref} is not mounted under {inputs.input_dir()}: add it to the kernel's "
                       "dataset_sources (kpack does this for the configured weights dataset)")


def load_key(label: str) -> bytes:
    """The weights key: environment variable `label` first, else the Kaggle secret of that label."""
    text = os.environ.get(label)
    source = f"environment variable {label}"
    if not text:
        text, source = _kaggle_secret(label), f"Kaggle secret {label}"
    if not text:
        raise WeightsError(f"the weights are encrypted but no key was found: set the environment variable {label} "
                           f"or attach a Kaggle secret labelled {label} (Add-ons -> Secrets) holding the 32-byte key "
                           "in base64 or hex")
    try:
        return sealed.parse_key(text, source)
    except sealed.SealedError as exc:
        raise WeightsError(str(exc)) from None


def _kaggle_secret(label: str) -> str | None:
    try:
        from kaggle_secrets import UserSecretsClient
    except ImportError:
        return None
    try:
        return UserSecretsClient().get_secret(label)
    except Exception:  # noqa: BLE001 - no such secret, not attached, or no internet: all mean "not here"
        return None


_ENTRY_FIELDS = {"name": str, "stored": str, "size": int, "sha256": str}


def _manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        raise WeightsError(f"{path}: not a kpack weights manifest ({type(exc).__name__}); the dataset is "
                           "damaged, push it again") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list) or not all(
            isinstance(e, dict) and all(isinstance(e.get(k), t) for k, t in _ENTRY_FIELDS.items()) for e in files):
        raise WeightsError(f"{path}: not a kpack weights manifest (a list of files, each with "
                           f"{', '.join(_ENTRY_FIELDS)}); the dataset is damaged, push it again")
    return manifest


def prepare(config) -> dict[str, Path]:
    """The kernel's start-up step (runtime.bootstrap): open_all(), or one line on stderr and exit code 2."""
    try:
        return open_all(config)
    except WeightsError as exc:
        print(f"[kpack] error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def model_source_folders(config) -> list[tuple[str, Path]]:
    """(source, mounted folder) of the kernel's Kaggle Models sources (kernels.<kind>.sources.models and
    models.weights): input/models/<owner>/<model>/<framework>/<variation>/<version>/ or, legacy,
    input/<model>/<framework>/<variation>/<version>/; without a version, the newest mounted one."""
    own = _get(_get(config, "models"), "weights")
    refs = list(_get(_get(_get(_get(config, "kernels"), _get(config, "kernel")), "sources"), "models") or [])
    if own is not None:
        framework = str(_get(own, "framework") or "PyTorch").replace("_", "").replace("-", "").lower()
        refs.append(f"{_get(config, 'kaggle_user')}/{_get(own, 'slug')}/{framework}/{_get(own, 'variation')}")
    found = []
    for ref in dict.fromkeys(refs):
        owner, model, framework, variation, *version = ref.split("/")
        for base in (inputs.input_dir() / "models" / owner, inputs.input_dir()):
            instance = base / model / framework.lower() / variation
            numbers = sorted((p for p in instance.glob("*") if p.name.isdigit() and p.is_dir()),
                             key=lambda p: int(p.name)) if instance.is_dir() else []
            picked = [p for p in numbers if p.name == version[0]] if version else numbers[-1:]
            if picked:
                found.append((ref, picked[-1]))
                break
    return found


def _safe_name(folder: Path, name: str) -> bool:
    """A manifest name is a relative path inside the folder (a sub-folder's file: 'folder/file')."""
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def _stored(folder: Path, name: str) -> Path:
    """Where a stored file is: in the mount, else inside `<top folder>.zip` where Kaggle did not unpack that
    folder's archive (extracted once into temp)."""
    path = folder / name
    top = Path(name).parts[0]
    archive = folder / f"{top}.zip"
    if path.is_file() or len(Path(name).parts) == 1 or not archive.is_file():
        return path
    import zipfile

    unpacked = inputs.temp_dir() / "weights-archives" / folder.name / top
    if not unpacked.is_dir():
        with zipfile.ZipFile(archive) as zf:
            if not all(_safe_name(unpacked, n) for n in zf.namelist()):
                raise WeightsError(f"{archive}: a member points outside the archive")
            zf.extractall(unpacked.with_name(top + ".part"))
        unpacked.with_name(top + ".part").rename(unpacked)
    return unpacked / Path(name).relative_to(top)


def _open_manifest(folder: Path, section, key_cache: dict) -> tuple[dict, dict, list]:
    """name -> verified path, architecture -> name, and the plain files still to hash, of one kpack folder."""
    manifest = _manifest(folder)
    label = _get(section, "key_env") or "KPACK_WEIGHTS_KEY"
    if any(e.get("encrypted") for e in manifest["files"]) and label not in key_cache:
        key_cache[label] = load_key(label)
    key = key_cache.get(label)
    out_dir = inputs.temp_dir() / "weights"
    paths, architectures, plain = {}, {}, []
    for entry in manifest["files"]:
        name = entry["name"]
        if not _safe_name(folder, name) or not _safe_name(folder, entry["stored"]):
            raise WeightsError(f"{folder / MANIFEST}: bad file name {name!r}")
        stored = _stored(folder, entry["stored"])
        if not stored.is_file():
            raise WeightsError(f"{stored}: listed in the weights manifest but missing from the dataset")
        if entry.get("encrypted"):
            target = out_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            # Decrypted earlier in this session (e.g. a second prepare()): verify instead of decrypting again.
            if not (target.is_file() and target.stat().st_size == entry["size"]
                    and sealed.file_sha256(target) == entry["sha256"]):
                target.unlink(missing_ok=True)
                try:
                    sealed.decrypt_file(stored, target, key, entry["sha256"], name=entry["stored"])
                except sealed.SealedError as exc:
                    raise WeightsError(f"weights {exc}") from None
                except OSError as exc:  # e.g. no space left in temp/
                    raise WeightsError(f"weights {entry['stored']}: cannot decrypt into {out_dir}: "
                                       f"{exc.strerror or exc}") from None
        else:
            target = stored
            plain.append((stored, entry))
        paths[name] = target
        if entry.get("architecture"):
            architectures.setdefault(entry["architecture"], name)
    return paths, architectures, plain


def open_all(config) -> dict[str, Path]:
    """Make every weight file of the configured weights dataset and model sources available (kpack's own
    verified against their manifests; another owner's model files as mounted); returns name -> path, a
    sub-folder's files as 'folder/file' and the folder itself by its name. Nothing configured: {}.
    Raises WeightsError (one line, never the key)."""
    spec = _spec(config)
    folders = [(spec[0], find_dataset(spec[0]), spec[1])] if spec is not None else []
    own = _get(_get(config, "models"), "weights")
    models = model_source_folders(config)
    if own is not None and not any(ref.count("/") == 3 and ref.split("/")[1] == _get(own, "slug")
                                   for ref, _ in models):
        raise WeightsError(f"model {_get(config, 'kaggle_user')}/{_get(own, 'slug')} (models.weights) is not "
                           f"mounted under {inputs.input_dir()}: add it to the kernel's model_sources (kpack "
                           "does this for models.weights)")
    folders += [(ref, folder, own) for ref, folder in models if (folder / MANIFEST).is_file()]
    paths, architectures, plain, keys = {}, {}, [], {}
    for _, folder, section in folders:
        more_paths, more_arch, more_plain = _open_manifest(folder, section, keys)
        for name, path in more_paths.items():
            paths.setdefault(name, path)
        for arch, name in more_arch.items():
            architectures.setdefault(arch, name)
        plain += more_plain
    for ref, folder in models:  # another owner's model: its files by their names in the version's folder
        if (folder / MANIFEST).is_file():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = path.relative_to(folder).as_posix()
            paths.setdefault(name, path)
            parts = path.name.split(".")
            if len(parts) >= 3 and parts[0]:  # the naming convention <timm-arch>.<tag>.<ext>
                architectures.setdefault(parts[0], name)
    files = len(paths)
    for name in list(paths):  # a sub-folder (a Hugging Face folder) by its own name too
        for depth in range(1, len(Path(name).parts)):
            folder_name = "/".join(Path(name).parts[:depth])
            paths.setdefault(folder_name, Path(str(paths[name])[: -len(name)] + folder_name))
    with ThreadPoolExecutor(sealed.WORKERS) as pool:  # hashing releases the GIL: an ensemble's files at once
        list(pool.map(lambda job: _verify_plain(*job), plain))
    _paths.clear()
    _paths.update(paths)
    _architectures.clear()
    _architectures.update(architectures)
    if folders or models:
        where = ", ".join(dict.fromkeys([str(f) for _, f, _ in folders] + [str(f) for _, f in models]))
        print(f"[kpack] weights: {files} file(s) verified from {where}", flush=True)
    return dict(paths)


def _verify_plain(stored: Path, entry: dict) -> None:
    size = stored.stat().st_size
    if size != entry["size"]:  # found without reading gigabytes
        raise WeightsError(f"weights {entry['stored']}: {size} bytes where the manifest lists {entry['size']}; "
                           "the dataset is damaged, push it again")
    got = sealed.file_sha256(stored)
    if got != entry["sha256"]:
        raise WeightsError(f"weights {entry['stored']}: sha256 mismatch (expected {entry['sha256'][:12]}..., "
                           f"got {got[:12]}...); the dataset is damaged, push it again")


def weights_path(name: str) -> Path:
    """The verified local path of weight file `name` (its name in models/, or in a model source's version
    folder; a sub-folder by its name gives the folder); prepare() must have run."""
    try:
        return _paths[name]
    except KeyError:
        known = ", ".join(sorted(_paths)) or "none; was weights.prepare(config) called?"
        raise WeightsError(f"no weight file {name!r} (known: {known})") from None


def for_architecture(architecture: str) -> Path | None:
    """The first weight file whose manifest architecture is `architecture`, or None."""
    name = _architectures.get(architecture)
    return _paths[name] if name else None


def available() -> dict[str, Path]:
    return dict(_paths)
