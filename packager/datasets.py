"""Datasets the kernels read (wheels, weights): build, then create or version each one only when its content changed.

For each configured dataset: build it into `build/datasets/<slug>/` (packager.wheels / packager.weights), write
its dataset-metadata.json, and compare its content hash with the one last pushed, recorded in `pushed.json`
beside the built files (per backend, with the version number). The server is asked too: a dataset deleted
there, or never made on this backend, is created again. Unchanged means no call that uploads anything: 0 bytes.

A new version goes up with dir_mode "zip" (top-level folders as archives). Two guards keep a version whole:
every top-level file must have finished uploading before CreateDatasetVersion is sent (the client would
otherwise drop an unfinished file from the version silently), and a retry first asks the server whether the
lost attempt already made the version. The kernel is pushed only once every new version reports "ready":
Kaggle processes a new version first (minutes for large files), and the waiting says what it waits for.

The client keeps each file's resumable upload (its token) in `$TMPDIR/.kaggle/uploads/` and deletes it only
when the whole call succeeds. A version whose answer was lost leaves tokens the server has already used, and
the client resumes them forever ("expired", the file dropped): kpack removes this folder's entries once a
version landed, and the entry of a file whose upload did not finish, so the next try starts it afresh.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from packager import kaggle_api, progress
from packager.errors import UserError, env_number
from packager.fsutil import atomic_write_text

BUILD_ROOT = Path("build") / "datasets"
PUSHED = "pushed.json"
METADATA = "dataset-metadata.json"
IGNORE = [PUSHED]
READY_TIMEOUT_S = env_number("KPACK_DATASET_READY_TIMEOUT_S", 1800)
PROGRESS_EVERY_S = 15.0  # while waiting for a version to be ready, a line this often


@dataclass
class PushedDataset:
    ref: str
    version: int | None
    uploaded: bool          # False: unchanged, nothing went up
    bytes: int = 0          # bytes of the files handed to the client (0 when unchanged)
    files: list[str] = field(default_factory=list)


class IncompleteUpload(ConnectionError):
    """Some file did not finish uploading; the version must not be made without it (retried as transient)."""


def backend_key(cfg) -> str:
    return "kaggle" if cfg.backend == "kaggle" else f"local:{Path(cfg.local.root).resolve()}"


# --------------------------------------------------------------------------------------------- build

def build_all(cfg) -> list:
    """Build every configured dataset; returns DatasetBuild objects (slug, title, path, content_hash, files).

    A builder may replace its folder whole: the push record (pushed.json) is carried across the build."""
    builders = []
    if cfg.datasets.wheels is not None:
        from packager.wheels import build_wheels_dataset

        builders.append((cfg.datasets.wheels.slug, build_wheels_dataset))
    if cfg.datasets.weights is not None:
        from packager.weights import build_weights_dataset

        builders.append((cfg.datasets.weights.slug, build_weights_dataset))
    builds = []
    for slug, builder in builders:
        folder = BUILD_ROOT / slug
        try:
            record = (folder / PUSHED).read_bytes()
        except OSError:
            record = None
        build = builder(cfg, folder)
        if record is not None and not (Path(build.path) / PUSHED).exists():
            (Path(build.path) / PUSHED).write_bytes(record)
        builds.append(build)
    return builds


def write_metadata(cfg, build) -> Path:
    """dataset-metadata.json for a build (packager.metadata owns its content)."""
    from packager.metadata import dataset_metadata

    path = Path(build.path) / METADATA
    data = dataset_metadata(cfg, build)
    if not isinstance(data, (str, bytes)):
        data = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write_text(path, data if isinstance(data, str) else data.decode())
    return path


def _dataset_config(cfg, build):
    return next((d for d in (cfg.datasets.wheels, cfg.datasets.weights) if d is not None and d.slug == build.slug),
                None)


def _is_public(cfg, build) -> bool:
    return bool(getattr(_dataset_config(cfg, build), "public", False))


def _delete_old_versions(cfg, build) -> bool:
    return bool(getattr(_dataset_config(cfg, build), "delete_old_versions", False))


# --------------------------------------------------------------------------------------------- records

def record_path(build) -> Path:
    return Path(build.path) / PUSHED


def read_record(cfg, build) -> dict | None:
    try:
        return json.loads(record_path(build).read_text()).get(backend_key(cfg))
    except (OSError, ValueError, AttributeError):
        return None


def write_record(cfg, build, version: int | None) -> None:
    path = record_path(build)
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        records = {}
    records[backend_key(cfg)] = {"ref": f"{cfg.kaggle_user}/{build.slug}", "content_hash": build.content_hash,
                                 "version": version, "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_text(path, json.dumps(records, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------- server state

def remote_state(api, ref: str) -> tuple[str | None, int | None]:
    """(status, current version) of a dataset on the server; (None, None) when it does not exist."""
    from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetRequest, ApiGetDatasetStatusRequest

    owner, slug = ref.split("/")
    status_req = ApiGetDatasetStatusRequest()
    status_req.owner_slug, status_req.dataset_slug = owner, slug
    try:
        status = kaggle_api.rpc(api, f"dataset status {ref}", "datasets.dataset_api_client", "get_dataset_status",
                                status_req)
    except kaggle_api.KaggleCallError as err:
        if err.status in (403, 404):
            return None, None
        raise
    name = status.status.name.lower() if hasattr(status.status, "name") else str(status.status).lower()
    if name == "deleted":
        return None, None
    get_req = ApiGetDatasetRequest()
    get_req.owner_slug, get_req.dataset_slug = owner, slug
    try:
        dataset = kaggle_api.rpc(api, f"get dataset {ref}", "datasets.dataset_api_client", "get_dataset", get_req)
        version = dataset.current_version_number
    except kaggle_api.KaggleCallError as err:
        if err.status not in (400, 404, 501):
            raise
        version = None  # a server without GetDataset: the version is then unknown, status still counts
    return name, version


def wait_ready(api, ref: str, at_least: int | None = None, timeout_s: float | None = None) -> int | None:
    """Poll until the dataset's current version is ready (and, when `at_least` is given and the server reports
    version numbers, is at least that version: right after CreateDatasetVersion the server may still describe
    the previous one); returns that version number. Says what it waits for, then every PROGRESS_EVERY_S how
    long it has waited; past timeout_s (KPACK_DATASET_READY_TIMEOUT_S) one error line."""
    timeout_s = READY_TIMEOUT_S if timeout_s is None else timeout_s
    began, delay = time.monotonic(), 0.5
    what = f"v{at_least}" if at_least else "its current version"
    wait = progress.Wait(f"dataset {ref}", f"{what} to be ready", every_s=PROGRESS_EVERY_S)
    while True:
        status, version = remote_state(api, ref)
        waited = time.monotonic() - began
        if status == "ready" and (at_least is None or version is None or version >= at_least):
            return version
        if status in ("failed", "error"):
            raise UserError(f"dataset {ref}: the server failed to process {what} (status {status}); fix the "
                            "files and push again", exit_code=1)
        if waited > timeout_s:
            raise UserError(f"dataset {ref}: {what} still not ready after {waited:.0f}s (status {status}); "
                            f"nothing was pushed after it: check the dataset's page, then push again (or raise "
                            f"KPACK_DATASET_READY_TIMEOUT_S, now {timeout_s:g})", exit_code=1)
        wait.tick(f"status {status}", f"at most {progress.duration(timeout_s)}")
        kaggle_api.sleep(min(delay, max(0.1, timeout_s - waited)))
        delay = 1.0 if waited < 30 else min(10.0, delay * 1.5)  # a short wait ends within a second of ready


# --------------------------------------------------------------------------------------------- upload

def _top_level(api, path: Path) -> list[Path]:
    """The entries the client will upload from `path`, chosen by the client's own rules (so counts agree)."""
    from kaggle.api.kaggle_api_extended import DEFAULT_IGNORE_PATTERNS, should_ignore

    skip = {api.DATASET_METADATA_FILE, api.OLD_DATASET_METADATA_FILE, *api.DATASET_COVER_IMAGE_FILES,
            api.KERNEL_METADATA_FILE, api.MODEL_METADATA_FILE, api.MODEL_INSTANCE_METADATA_FILE}
    patterns = DEFAULT_IGNORE_PATTERNS + IGNORE
    return sorted(p for p in path.iterdir() if p.name not in skip and (p.is_file() or p.is_dir())
                  and not should_ignore(p.name, p.is_dir(), patterns))


def _size(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        total += p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


def _upload_records(folder: str, entries: list[Path]) -> dict[str, Path]:
    """file name -> the client's resumable-upload record of it (named by the client's own rule from the folder
    string it was given). Folders go up as archives made in a fresh temp folder: no record outlives them."""
    from kaggle.api.kaggle_api_extended import ResumableUploadContext

    context = ResumableUploadContext()
    return {p.name: Path(context.get_upload_info_file_path(os.path.join(folder, p.name)))
            for p in entries if p.is_file()}


def _recorded_token(record: Path) -> str | None:
    try:
        return (json.loads(record.read_text()).get("start_blob_upload_response") or {}).get("token")
    except (OSError, ValueError, AttributeError):
        return None


def forget_uploads(folder: str, entries: list[Path]) -> None:
    """Drop the client's upload records of these files: once a version landed, their tokens are used up."""
    for record in _upload_records(folder, entries).values():
        record.unlink(missing_ok=True)


def _guard_uploads(api, folder: str, entries: list[Path]) -> None:
    """Make the client refuse to send Create* unless every top-level entry finished uploading. A file that did
    not finish loses its upload record, so the retry starts it afresh: the client has already resumed it up to
    10 times, and a token the server no longer knows (used by a version whose answer was lost) fails forever."""
    original = type(api).upload_files
    expected = len(entries)

    def guarded(request, *args, **kwargs):
        original(api, request, *args, **kwargs)
        got = len(request.files or [])
        if got != expected:
            sent = {f.token for f in request.files or []}
            records = _upload_records(folder, entries)
            stuck = [name for name, record in records.items()
                     if record.exists() and _recorded_token(record) not in sent]
            for name in stuck:
                records[name].unlink(missing_ok=True)
            again = f"; starting {', '.join(stuck)} afresh" if stuck else ""
            raise IncompleteUpload(f"{expected - got} of {expected} files did not finish uploading{again}")

    api.upload_files = guarded


def _check_response(what: str, response) -> None:
    if response is None:
        raise UserError(f"kaggle: {what}: no answer from the server", exit_code=1)
    error = getattr(response, "error", None)
    if error:
        raise UserError(f"kaggle: {what}: {error}", exit_code=1)
    invalid = getattr(response, "invalid_tags", None)
    if invalid:
        print(f"kaggle: {what}: tags not accepted: {', '.join(invalid)}", file=sys.stderr)


@dataclass
class RemoteState:
    """What the server has of a built dataset, asked before anything is uploaded."""
    status: str | None      # None: not on the server
    version: int | None
    unchanged: bool         # the server holds this exact content: nothing to upload


def remote_state_of(api, cfg, build) -> RemoteState:
    """Writes the build's dataset-metadata.json, then compares its content hash with the push record and the
    server's current version."""
    write_metadata(cfg, build)
    record = read_record(cfg, build)
    status, version = remote_state(api, f"{cfg.kaggle_user}/{build.slug}")
    unchanged = (record is not None and record.get("content_hash") == build.content_hash and status is not None
                 and (version is None or record.get("version") in (None, version)))
    return RemoteState(status, version, unchanged)


@dataclass
class Pending:
    """A version sent to the server and not yet ready (Kaggle processes it first)."""
    ref: str
    at_least: int | None    # the version number it will have, when the server reports numbers
    bytes: int
    files: list[str]


def send_dataset(api, cfg, build, state: RemoteState, message: str | None = None) -> PushedDataset | Pending:
    """Create or version one built dataset when its content hash changed (`state`: remote_state_of it); an
    unchanged one is waited for only when it is still processing."""
    ref = f"{cfg.kaggle_user}/{build.slug}"
    path = Path(build.path)
    status, version = state.status, state.version
    if state.unchanged:
        if status != "ready":
            version = wait_ready(api, ref)
        print(f"dataset {ref}: unchanged (v{version}), nothing uploaded")
        return PushedDataset(ref, version, uploaded=False)

    entries = _top_level(api, path)
    if not entries:
        raise UserError(f"dataset {ref}: {path} has no files to upload", exit_code=1)
    size = _size(entries)
    _guard_uploads(api, str(path), entries)
    progress.show_client_uploads(api, f"dataset {ref}: upload")
    notes = message or f"kpack content {build.content_hash[:12]}"
    if status is None:
        print(f"dataset {ref}: creating ({len(entries)} files, {size} bytes)")

        def created():
            st, v = remote_state(api, ref)
            return ("created", v) if st is not None else None

        response = kaggle_api.call(f"create dataset {ref}", api.dataset_create_new, str(path),
                                   public=_is_public(cfg, build), quiet=True, dir_mode="zip",
                                   ignore_patterns=IGNORE, done=created)
    else:
        delete_old = _delete_old_versions(cfg, build)
        print(f"dataset {ref}: content changed, new version ({len(entries)} files, {size} bytes"
              f"{'; older versions deleted once it is ready' if delete_old else ''})")
        before = version

        def versioned():
            st, v = remote_state(api, ref)
            return ("versioned", v) if v is not None and before is not None and v > before else None

        response = kaggle_api.call(f"version dataset {ref}", api.dataset_create_version, str(path), notes,
                                   quiet=True, delete_old_versions=delete_old, dir_mode="zip",
                                   ignore_patterns=IGNORE, done=versioned)
    if not isinstance(response, tuple):
        _check_response(f"dataset {ref}", response)
    forget_uploads(str(path), entries)  # the version landed: its tokens are used up (lost answers included)
    at_least = 1 if status is None else (version + 1 if version else None)
    return Pending(ref, at_least, size, [p.name for p in entries])


def finish_dataset(api, cfg, build, sent: PushedDataset | Pending) -> PushedDataset:
    """Wait until a sent version is ready, then record it as pushed."""
    if isinstance(sent, PushedDataset):
        return sent
    began = time.monotonic()
    new_version = wait_ready(api, sent.ref, at_least=sent.at_least)
    write_record(cfg, build, new_version)
    waited = time.monotonic() - began
    print(f"dataset {sent.ref}: v{new_version} ready" + (f" (waited {waited:.1f}s)" if waited >= 0.1 else ""))
    return PushedDataset(sent.ref, new_version, uploaded=True, bytes=sent.bytes, files=sent.files)


def push_all(api, cfg, builds, check_uploads=None) -> list[PushedDataset]:
    """Push every build; `check_uploads` (the secrets scan) first gets the folders of those that will be
    uploaded, before any is: what the server already holds is not read again. Every new version is sent
    before any is waited for, so they are processed at the same time."""
    states = [remote_state_of(api, cfg, build) for build in builds]
    if check_uploads is not None:
        check_uploads([Path(b.path) for b, state in zip(builds, states) if not state.unchanged])
    sent = [send_dataset(api, cfg, build, state) for build, state in zip(builds, states)]
    return [finish_dataset(api, cfg, build, one) for build, one in zip(builds, sent)]
