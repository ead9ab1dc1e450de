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


def open_all(config) -> dict[str, Path]:
    """Make every weight file of the configured weights dataset available and verified; returns name -> path.
    No weights dataset configured: nothing to do, {}. Raises WeightsError (one line, never the key)."""
    spec = _spec(config)
    if spec is None:
        return {}
    ref, section = spec
    folder = find_dataset(ref)
    manifest = _manifest(folder)
    label = _get(section, "key_env") or "KPACK_WEIGHTS_KEY"
    key = load_key(label) if any(e.get("encrypted") for e in manifest["files"]) else None
    out_dir = inputs.temp_dir() / "weights"
    paths, architectures, plain = {}, {}, []
    for entry in manifest["files"]:
        name, stored = entry["name"], folder / entry["stored"]
        if Path(name).name != name or Path(entry["stored"]).name != entry["stored"]:
            raise WeightsError(f"{folder / MANIFEST}: bad file name {name!r}")
        if not stored.is_file():
            raise WeightsError(f"{stored}: listed in the weights manifest but missing from the dataset")
        if entry.get("encrypted"):
            target = out_dir / name
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
    with ThreadPoolExecutor(sealed.WORKERS) as pool:  # hashing releases the GIL: an ensemble's files at once
        list(pool.map(lambda job: _verify_plain(*job), plain))
    _paths.clear()
    _paths.update(paths)
    _architectures.clear()
    _architectures.update(architectures)
    print(f"[kpack] weights: {len(paths)} file(s) verified from {folder}", flush=True)
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
    """The verified local path of weight file `name` (its name in models/); prepare() must have run."""
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
