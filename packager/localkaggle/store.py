"""The local Kaggle's state on disk: every read goes to the files, every write is atomic.

Nothing is cached in memory, so a `kpack local ...` command may write (a competition, a user, a secret) while
the server runs, and a restarted server has everything it had. Layout under the root:

    users/<name>.json                          username, key (HTTP Basic) and token (Bearer)
    secrets/<name>/<kernel-slug>.json          mode 0600; label -> value, passed as env to that kernel's sessions only
    uploads/<token>.json, <token>.part         one blob upload: what was announced, the bytes received so far
    datasets/<owner>/<slug>/dataset.json       title, license, privacy ...
    datasets/<owner>/<slug>/versions/<N>/      version.json (notes, tokens, file list, when processing ends)
                                               and files/ (gone once deleteOldVersions deleted the version)
    kernels/<owner>/<slug>/kernel.json         id, title, created
    kernels/<owner>/<slug>/versions/<N>/       version.json (metadata, status, mounts), the pushed source,
                                               script.py (what runs) and run/ (the runner's root: output, log)
    competitions/<slug>/                       competition.json, data/ (what kernels mount), solution.csv
    submissions/<competition>/<ref>.json
    counters.json                              the last id handed out per kind

A version directory is built under a temporary name and renamed into place: the rename is the commit, so a
crash leaves either the whole version or none of it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets as _secrets
import shutil
import tarfile
import threading
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from packager.fsutil import atomic_write_text

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
TERMINAL = ("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED")
ACTIVE = ("QUEUED", "RUNNING", "CANCEL_REQUESTED")  # what counts against the concurrent-session cap
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
# kagglesdk's DatabundleVersionStatus stages a new dataset version passes through before READY (which of them
# kaggle.com shows, and for how long, is a guess): reported in turn over its processing time.
PROCESSING_STAGES = ("BLOBS_RECEIVED", "BLOBS_DECOMPRESSED", "BLOBS_COPIED_TO_SDS", "INDIVIDUAL_BLOBS_COMPRESSED")


def solution_in_data(data_dir: Path, solution: Path) -> Path | None:
    """A file of data_dir that is the solution: the same file, or one with the same bytes (a copy)."""
    real, size, digest = solution.resolve(), solution.stat().st_size, None
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        if path.resolve() == real:
            return path
        if path.stat().st_size == size:
            digest = digest or hashlib.sha256(solution.read_bytes()).digest()
            if hashlib.sha256(path.read_bytes()).digest() == digest:
                return path
    return None


class StoreError(Exception):
    """A request the state refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value: str | None) -> datetime | None:
    """A naive UTC datetime (kagglesdk serialises naive datetimes with a 'Z')."""
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")


def check_name(value: str | None, what: str) -> str:
    """A user, slug or file-name component that is safe as one path component."""
    if not value or not NAME_RE.match(value) or ".." in value:
        raise StoreError(400, f"invalid {what}: {value!r}")
    return value


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _version_numbers(versions_dir: Path) -> list[int]:
    if not versions_dir.is_dir():
        return []
    return sorted(int(p.name) for p in versions_dir.iterdir()
                  if p.name.isdigit() and (p / "version.json").is_file())


def dataset_version_status(version: dict, now: float | None = None) -> str:
    """A DatabundleVersionStatus name: DELETED once its files are gone, a processing stage until its ready_at
    (versions made before processing existed have none: READY), then READY."""
    if version.get("deleted"):
        return "DELETED"
    ready_at, began = version.get("ready_at"), version.get("processing_from")
    now = time.time() if now is None else now
    if ready_at is None or now >= ready_at:
        return "READY"
    share = (now - (began or now)) / max(ready_at - (began or now), 1e-9)
    return PROCESSING_STAGES[min(len(PROCESSING_STAGES) - 1, int(share * len(PROCESSING_STAGES)))]


def list_files(folder: Path) -> list[tuple[str, int]]:
    """(relative posix name, size) of every regular file under folder, sorted; symlinks are left out."""
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out.append((path.relative_to(folder).as_posix(), path.stat().st_size))
    return out


def _archive_stem(name: str) -> str | None:
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _extract(archive: Path, name: str, dest: Path) -> None:
    """Unpack the zip or tar `name` (stored at archive) into dest, refusing members that would land outside it."""
    dest.mkdir(parents=True)
    root = dest.resolve()

    def safe(member: str) -> Path:
        target = (dest / member).resolve()
        if target != root and root not in target.parents:
            raise StoreError(400, f"{name}: member {member!r} points outside the archive")
        return target

    if name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                safe(info.filename)
            zf.extractall(dest)
    else:
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                safe(member.name)
                if member.issym() or member.islnk():
                    raise StoreError(400, f"{name}: links are not supported ({member.name})")
            tf.extractall(dest, filter="data")


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0
        self._lock_file = None

    # ----------------------------------------------------------------------------------------- locking

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time: threads of this process (RLock) and other processes (flock on .lock)."""
        with self._lock:
            if self._depth == 0:
                self._lock_file = open(self.root / ".lock", "a")
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                    self._lock_file.close()
                    self._lock_file = None

    def next_id(self, kind: str) -> int:
        with self.locked():
            path = self.root / "counters.json"
            counters = read_json(path) or {}
            counters[kind] = int(counters.get(kind, 0)) + 1
            write_json(path, counters)
            return counters[kind]

    def _tmp_dir(self, parent: Path, label: str) -> Path:
        parent.mkdir(parents=True, exist_ok=True)
        path = parent / f".tmp-{label}-{_secrets.token_hex(4)}"
        path.mkdir()
        return path

    # ----------------------------------------------------------------------------------------- users

    def user(self, name: str) -> dict | None:
        if not name or not NAME_RE.match(name):
            return None
        return read_json(self.root / "users" / f"{name}.json")

    def ensure_user(self, name: str) -> dict:
        check_name(name, "user name")
        with self.locked():
            existing = self.user(name)
            if existing:
                return existing
            record = {"username": name, "key": _secrets.token_hex(16), "token": "kpl_" + _secrets.token_hex(20),
                      "created": now_iso(), "id": self.next_id("user")}
            path = self.root / "users" / f"{name}.json"
            write_json(path, record)
            os.chmod(path, 0o600)
            return record

    def user_by_token(self, token: str) -> dict | None:
        folder = self.root / "users"
        if not token or not folder.is_dir():
            return None
        for path in folder.glob("*.json"):
            record = read_json(path)
            if record and _secrets.compare_digest(record.get("token", ""), token):
                return record
        return None

    # ----------------------------------------------------------------------------------------- secrets

    def set_secret(self, user: str, label: str, value: str, kernel: str) -> None:
        """Attach secret LABEL to the user's kernel KERNEL (its slug), as Kaggle's web UI does per notebook."""
        check_name(user, "user name")
        check_name(kernel, "kernel slug")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", label or ""):
            raise StoreError(400, f"secret label {label!r}: use letters, digits and _ (it becomes an env var)")
        with self.locked():
            path = self.root / "secrets" / user / f"{kernel}.json"
            for folder in (path.parent.parent, path.parent):
                folder.mkdir(exist_ok=True)
                os.chmod(folder, 0o700)
            data = read_json(path) or {}
            data[label] = value
            fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(path.with_suffix(".tmp"), path)

    def secrets_of(self, user: str, kernel: str) -> dict[str, str]:
        """The secrets attached to the user's kernel KERNEL (none to any other kernel of theirs)."""
        if not user or not NAME_RE.match(user) or not kernel or not NAME_RE.match(kernel):
            return {}
        return read_json(self.root / "secrets" / user / f"{kernel}.json") or {}

    # ----------------------------------------------------------------------------------------- uploads

    def _upload_paths(self, token: str) -> tuple[Path, Path]:
        check_name(token, "upload token")
        folder = self.root / "uploads"
        return folder / f"{token}.json", folder / f"{token}.part"

    def new_upload(self, user: str, kind: str, name: str, length: int, **extra: Any) -> str:
        name = os.path.basename(name or "")
        check_name(name, "file name")
        if length < 0:
            raise StoreError(400, "contentLength must not be negative")
        token = "blob" + _secrets.token_hex(16)
        meta, part = self._upload_paths(token)
        meta.parent.mkdir(parents=True, exist_ok=True)
        part.touch()
        write_json(meta, {"token": token, "user": user, "kind": kind, "name": name, "length": int(length),
                          "created": now_iso(), **extra})
        return token

    def upload(self, token: str) -> dict | None:
        try:
            meta, part = self._upload_paths(token)
        except StoreError:
            return None
        info = read_json(meta)
        if info is not None:
            info["received"] = part.stat().st_size if part.exists() else 0
        return info

    def upload_part(self, token: str) -> Path:
        return self._upload_paths(token)[1]

    def prune_uploads(self, max_age_s: float = 7 * 86400) -> int:
        """Drop uploads nobody finished or used within max_age_s (the client resumes for 6 days at most)."""
        folder, cutoff, dropped = self.root / "uploads", time.time() - max_age_s, 0
        with self.locked():
            for meta in folder.glob("*.json") if folder.is_dir() else []:
                if meta.stat().st_mtime < cutoff:
                    part = meta.with_suffix(".part")
                    if not part.exists() or part.stat().st_mtime < cutoff:
                        part.unlink(missing_ok=True)
                        meta.unlink(missing_ok=True)
                        dropped += 1
        return dropped

    def _take_uploads(self, tokens: list[str], user: str) -> list[dict]:
        """The finished uploads behind tokens, or a StoreError naming the first that is not."""
        infos, names = [], set()
        if not tokens:
            raise StoreError(400, "a dataset version needs at least one file (were all uploads skipped?)")
        if len(set(tokens)) != len(tokens):
            raise StoreError(400, "the same upload token is listed twice")
        for token in tokens:
            info = self.upload(token)
            if info is None or info.get("user") != user:
                raise StoreError(400, f"unknown upload token {token!r} (expired, already used, or not yours)")
            if info["received"] != info["length"]:
                raise StoreError(400, f"upload of {info['name']} is incomplete: {info['received']} of "
                                      f"{info['length']} bytes received; finish the upload and try again")
            if info["name"] in names:
                raise StoreError(400, f"two files are named {info['name']!r}")
            names.add(info["name"])
            infos.append(info)
        return infos

    def _place_uploads(self, infos: list[dict], files_dir: Path) -> None:
        """Move uploaded blobs into files_dir; archives are unpacked into a folder named after them."""
        files_dir.mkdir(parents=True, exist_ok=True)
        for info in infos:
            part = self.upload_part(info["token"])
            stem = _archive_stem(info["name"])
            if stem:
                try:
                    _extract(part, info["name"], files_dir / stem)
                except (zipfile.BadZipFile, tarfile.TarError) as exc:
                    raise StoreError(400, f"{info['name']}: not a readable archive ({exc})") from None
                continue
            try:  # a hard link: no copy, and the upload stays whole until the version is committed
                os.link(part, files_dir / info["name"])
            except OSError:
                shutil.copyfile(part, files_dir / info["name"])

    def _consume_uploads(self, infos: list[dict]) -> None:
        for info in infos:
            meta, part = self._upload_paths(info["token"])
            part.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)

    # ----------------------------------------------------------------------------------------- datasets

    def dataset_dir(self, owner: str, slug: str) -> Path:
        return self.root / "datasets" / check_name(owner, "owner") / check_name(slug, "dataset slug")

    def dataset(self, owner: str, slug: str) -> dict | None:
        try:
            folder = self.dataset_dir(owner, slug)
        except StoreError:
            return None
        info = read_json(folder / "dataset.json")
        if info is None:
            return None
        info["versions"] = _version_numbers(folder / "versions")
        return info

    def dataset_version(self, owner: str, slug: str, number: int | None = None) -> dict | None:
        info = self.dataset(owner, slug)
        if not info or not info["versions"]:
            return None
        number = info["versions"][-1] if number is None else int(number)
        folder = self.dataset_dir(owner, slug) / "versions" / str(number)
        version = read_json(folder / "version.json")
        if version is not None:
            version["files_dir"] = str(folder / "files")
        return version

    def _find_dataset_version_by_tokens(self, owner: str, slug: str, tokens: list[str]) -> dict | None:
        info = self.dataset(owner, slug)
        if not info or not tokens:
            return None
        for number in reversed(info["versions"]):
            version = self.dataset_version(owner, slug, number)
            if version and sorted(version.get("tokens", [])) == sorted(tokens):
                return version
        return None

    def _write_dataset_version(self, parent: Path, number: int, infos: list[dict], notes: str | None,
                               processing: tuple[float, float], delete_old: bool = False) -> Path:
        """processing: (seconds, seconds per MB uploaded) the version stays in processing, as on Kaggle."""
        staging = self._tmp_dir(parent, f"v{number}")
        self._place_uploads(infos, staging / "files")
        files = [{"name": n, "size": s} for n, s in list_files(staging / "files")]
        size = sum(int(i["length"]) for i in infos)
        began = time.time()
        write_json(staging / "version.json", {"number": number, "notes": notes or "", "created": now_iso(),
                                              "tokens": [i["token"] for i in infos], "files": files,
                                              "bytes": size, "processing_from": began,
                                              "ready_at": began + processing[0] + processing[1] * size / 1e6,
                                              "delete_old": bool(delete_old)})
        return staging

    def dataset_statuses(self, owner: str, slug: str) -> dict[int, str]:
        """Each version's status now (dataset_version_status); the versions before one made with
        deleteOldVersions are DELETED once it is READY (until then kernels still mount them)."""
        info = self.dataset(owner, slug)
        out, now, superseded = {}, time.time(), False
        for number in reversed(info["versions"] if info else []):
            version = self.dataset_version(owner, slug, number) or {}
            out[number] = "DELETED" if superseded else dataset_version_status(version, now)
            superseded = superseded or (out[number] == "READY" and bool(version.get("delete_old")))
        return dict(sorted(out.items()))

    def ready_dataset_versions(self, owner: str, slug: str) -> list[int]:
        return [n for n, status in self.dataset_statuses(owner, slug).items() if status == "READY"]

    def reap_old_dataset_versions(self, owner: str, slug: str) -> list[int]:
        """Remove the files of versions that deleteOldVersions made DELETED; their numbers stay taken."""
        reaped = []
        with self.locked():
            for number, status in self.dataset_statuses(owner, slug).items():
                folder = self.dataset_dir(owner, slug) / "versions" / str(number)
                record = read_json(folder / "version.json")
                if status != "DELETED" or record is None or record.get("deleted"):
                    continue
                record["deleted"] = now_iso()
                write_json(folder / "version.json", record)
                shutil.rmtree(folder / "files", ignore_errors=True)
                (folder / "download.zip").unlink(missing_ok=True)
                reaped.append(number)
        return reaped

    def create_dataset(self, user: str, owner: str, slug: str, meta: dict, tokens: list[str],
                       processing: tuple[float, float] = (0.0, 0.0)) -> tuple[dict, bool]:
        """(dataset, created) - created False when this exact request already made it (a client retry)."""
        with self.locked():
            if self.dataset(owner, slug):
                if self._find_dataset_version_by_tokens(owner, slug, tokens):
                    return self.dataset(owner, slug), False
                raise StoreError(409, f"dataset {owner}/{slug} already exists; use `kaggle datasets version`")
            infos = self._take_uploads(tokens, user)
            final = self.dataset_dir(owner, slug)
            staging = self._tmp_dir(final.parent, slug)
            try:
                version_dir = self._write_dataset_version(staging / "versions", 1, infos, "Initial release",
                                                          processing)
                version_dir.rename(staging / "versions" / "1")
                write_json(staging / "dataset.json", {**meta, "owner": owner, "slug": slug, "created": now_iso(),
                                                      "id": self.next_id("dataset")})
                staging.rename(final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._consume_uploads(infos)
            return self.dataset(owner, slug), True

    def create_dataset_version(self, user: str, owner: str, slug: str, tokens: list[str], notes: str | None,
                               delete_old: bool = False, meta: dict | None = None,
                               processing: tuple[float, float] = (0.0, 0.0)) -> tuple[dict, bool]:
        """delete_old: the older versions' files go once this one is READY (reap_old_dataset_versions)."""
        with self.locked():
            info = self.dataset(owner, slug)
            if not info:
                raise StoreError(404, f"dataset {owner}/{slug} not found; create it first with "
                                      "`kaggle datasets create`")
            again = self._find_dataset_version_by_tokens(owner, slug, tokens)
            if again:
                return again, False
            infos = self._take_uploads(tokens, user)
            folder = self.dataset_dir(owner, slug)
            number = (info["versions"][-1] if info["versions"] else 0) + 1
            staging = self._write_dataset_version(folder / "versions", number, infos, notes, processing, delete_old)
            try:
                staging.rename(folder / "versions" / str(number))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._consume_uploads(infos)
            if meta:
                base = read_json(folder / "dataset.json") or {}
                base.update({k: v for k, v in meta.items() if v})
                write_json(folder / "dataset.json", base)
            self.reap_old_dataset_versions(owner, slug)
            return self.dataset_version(owner, slug, number), True

    def datasets(self) -> list[dict]:
        out = []
        base = self.root / "datasets"
        for path in sorted(base.glob("*/*/dataset.json")) if base.is_dir() else []:
            info = self.dataset(path.parent.parent.name, path.parent.name)
            if info:
                out.append(info)
        return out

    # ----------------------------------------------------------------------------------------- kernels

    def kernel_dir(self, owner: str, slug: str) -> Path:
        return self.root / "kernels" / check_name(owner, "owner") / check_name(slug, "kernel slug")

    def kernel(self, owner: str, slug: str) -> dict | None:
        try:
            folder = self.kernel_dir(owner, slug)
        except StoreError:
            return None
        info = read_json(folder / "kernel.json")
        if info is None:
            return None
        info["versions"] = _version_numbers(folder / "versions")
        return info

    def kernel_by_id(self, kernel_id: int) -> dict | None:
        for info in self.kernels():
            if info.get("id") == kernel_id:
                return info
        return None

    def kernels(self) -> list[dict]:
        base = self.root / "kernels"
        out = []
        for path in sorted(base.glob("*/*/kernel.json")) if base.is_dir() else []:
            info = self.kernel(path.parent.parent.name, path.parent.name)
            if info:
                out.append(info)
        return out

    def version_dir(self, owner: str, slug: str, number: int) -> Path:
        return self.kernel_dir(owner, slug) / "versions" / str(int(number))

    def kernel_version(self, owner: str, slug: str, number: int | None = None) -> dict | None:
        info = self.kernel(owner, slug)
        if not info or not info["versions"]:
            return None
        number = info["versions"][-1] if number is None else int(number)
        version = read_json(self.version_dir(owner, slug, number) / "version.json")
        if version is not None:
            version["dir"] = str(self.version_dir(owner, slug, number))
        return version

    def latest_complete_version(self, owner: str, slug: str) -> dict | None:
        info = self.kernel(owner, slug)
        for number in reversed(info["versions"] if info else []):
            version = self.kernel_version(owner, slug, number)
            if version and version.get("status") == "COMPLETE" and version.get("output_dir"):
                return version
        return None

    def create_kernel_version(self, owner: str, slug: str, title: str, source_name: str, source: str,
                              script: str, record: dict) -> dict:
        """Commit a new version (number = last + 1) with its source and record; the kernel is made if new."""
        with self.locked():
            folder = self.kernel_dir(owner, slug)
            info = self.kernel(owner, slug)
            if info is None:
                folder.mkdir(parents=True, exist_ok=True)
                write_json(folder / "kernel.json", {"id": self.next_id("kernel"), "owner": owner, "slug": slug,
                                                    "title": title, "created": now_iso()})
                info = self.kernel(owner, slug)
            elif title and title != info.get("title"):
                base = read_json(folder / "kernel.json")
                base["title"] = title
                write_json(folder / "kernel.json", base)
            number = (info["versions"][-1] if info["versions"] else 0) + 1
            staging = self._tmp_dir(folder / "versions", f"v{number}")
            try:
                (staging / source_name).write_text(source)
                (staging / "script.py").write_text(script)
                (staging / "run").mkdir()
                write_json(staging / "version.json", {**record, "number": number, "source_file": source_name,
                                                      "created": now_iso(), "session_id": self.next_id("session")})
                staging.rename(folder / "versions" / str(number))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            return self.kernel_version(owner, slug, number)

    def update_kernel_version(self, owner: str, slug: str, number: int, **fields: Any) -> dict:
        with self.locked():
            path = self.version_dir(owner, slug, number) / "version.json"
            record = read_json(path)
            if record is None:
                raise StoreError(404, f"kernel {owner}/{slug} has no version {number}")
            record.update(fields)
            write_json(path, record)
            record["dir"] = str(path.parent)
            return record

    def active_sessions(self, owner: str) -> list[dict]:
        """The owner's versions that hold a session slot (QUEUED, RUNNING, CANCEL_REQUESTED)."""
        return [v for o, _, v in self.all_kernel_versions() if o == owner and v.get("status") in ACTIVE]

    def all_kernel_versions(self) -> Iterator[tuple[str, str, dict]]:
        for info in self.kernels():
            for number in info["versions"]:
                version = self.kernel_version(info["owner"], info["slug"], number)
                if version:
                    yield info["owner"], info["slug"], version

    # ----------------------------------------------------------------------------------------- competitions

    def competition_dir(self, slug: str) -> Path:
        return self.root / "competitions" / check_name(slug, "competition slug")

    def competition(self, slug: str) -> dict | None:
        try:
            folder = self.competition_dir(slug)
        except StoreError:
            return None
        info = read_json(folder / "competition.json")
        if info is not None:
            info["data_dir"] = str(folder / "data")
            info["solution"] = str(folder / info.get("solution_file", "solution.csv"))
        return info

    def competitions(self) -> list[dict]:
        base = self.root / "competitions"
        return [c for c in (self.competition(p.parent.name)
                            for p in sorted(base.glob("*/competition.json")) if base.is_dir()) if c]

    def create_competition(self, slug: str, data_dir: Path, solution: Path, code: bool = False,
                           title: str | None = None, replace: bool = False, metric: str = "f2-samples") -> dict:
        data_dir, solution = Path(data_dir), Path(solution)
        if not data_dir.is_dir():
            raise StoreError(400, f"{data_dir}: not a folder of competition data files")
        if not solution.is_file():
            raise StoreError(400, f"{solution}: solution file not found")
        leaked = solution_in_data(data_dir, solution)
        if leaked is not None:  # data/ is mounted whole in every kernel: the answers would be readable there
            copy = "" if leaked.resolve() == solution.resolve() else f", a copy of {solution}"
            raise StoreError(400, f"the data folder holds the solution file ({leaked}{copy}): every kernel mounts "
                                  f"{data_dir} whole; move the solution out of the data folder")
        final = self.competition_dir(slug)
        with self.locked():
            if final.exists() and not replace:
                raise StoreError(409, f"competition {slug} already exists (pass --replace to rebuild it)")
            staging = self._tmp_dir(final.parent, slug)
            try:
                shutil.copytree(data_dir, staging / "data")
                shutil.copyfile(solution, staging / "solution.csv")
                write_json(staging / "competition.json", {
                    "slug": slug, "title": title or slug.replace("-", " ").title(), "code": bool(code),
                    "created": now_iso(), "id": self.next_id("competition"), "solution_file": "solution.csv",
                    "metric": metric})
                if final.exists():
                    old = final.with_name(f".old-{slug}-{_secrets.token_hex(4)}")
                    final.rename(old)
                    staging.rename(final)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    staging.rename(final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return self.competition(slug)

    # ----------------------------------------------------------------------------------------- submissions

    def submissions_dir(self, competition: str) -> Path:
        return self.root / "submissions" / check_name(competition, "competition slug")

    def create_submission(self, competition: str, record: dict) -> dict:
        with self.locked():
            ref = self.next_id("submission")
            record = {**record, "ref": ref, "competition": competition, "date": now_iso()}
            write_json(self.submissions_dir(competition) / f"{ref}.json", record)
            return record

    def update_submission(self, competition: str, ref: int, **fields: Any) -> dict:
        with self.locked():
            path = self.submissions_dir(competition) / f"{int(ref)}.json"
            record = read_json(path)
            if record is None:
                raise StoreError(404, f"submission {ref} not found")
            record.update(fields)
            write_json(path, record)
            return record

    def submissions(self, competition: str | None = None) -> list[dict]:
        base = self.root / "submissions"
        pattern = f"{check_name(competition, 'competition slug')}/*.json" if competition else "*/*.json"
        out = [read_json(p) for p in base.glob(pattern)] if base.is_dir() else []
        return sorted((r for r in out if r), key=lambda r: r["ref"])

    def submission(self, ref: int) -> dict | None:
        for record in self.submissions():
            if record["ref"] == int(ref):
                return record
        return None


    # ----------------------------------------------------------------------------------------- models
    # models/<owner>/<slug>/model.json; instances/<framework>/<instance>/instance.json; .../versions/<n>/files/

    def model_dir(self, owner: str, slug: str) -> Path:
        return self.root / "models" / check_name(owner, "owner") / check_name(slug, "model slug")

    def model(self, owner: str, slug: str) -> dict | None:
        try:
            return read_json(self.model_dir(owner, slug) / "model.json")
        except StoreError:
            return None

    def create_model(self, owner: str, slug: str, meta: dict) -> dict:
        with self.locked():
            if self.model(owner, slug):
                raise StoreError(409, f"model {owner}/{slug} already exists")
            record = {**meta, "owner": owner, "slug": slug, "created": now_iso(), "id": self.next_id("model")}
            write_json(self.model_dir(owner, slug) / "model.json", record)
            return record

    def instance_dir(self, owner: str, slug: str, framework: str, instance: str) -> Path:
        return self.model_dir(owner, slug) / "instances" / check_name(framework, "framework") / \
            check_name(instance, "instance slug")

    def model_instance(self, owner: str, slug: str, framework: str, instance: str) -> dict | None:
        try:
            folder = self.instance_dir(owner, slug, framework, instance)
        except StoreError:
            return None
        info = read_json(folder / "instance.json")
        if info is not None:
            info["versions"] = _version_numbers(folder / "versions")
        return info

    def model_instances(self, owner: str, slug: str) -> list[dict]:
        base = self.model_dir(owner, slug) / "instances"
        found = [self.model_instance(owner, slug, f.parent.name, f.name)
                 for f in sorted(base.glob("*/*")) if (f / "instance.json").is_file()] if base.is_dir() else []
        return [i for i in found if i]

    def model_instance_version(self, owner: str, slug: str, framework: str, instance: str,
                               number: int | None = None) -> dict | None:
        info = self.model_instance(owner, slug, framework, instance)
        if not info or not info["versions"]:
            return None
        number = info["versions"][-1] if number is None else int(number)
        folder = self.instance_dir(owner, slug, framework, instance) / "versions" / str(number)
        version = read_json(folder / "version.json")
        if version is not None:
            version["files_dir"] = str(folder / "files")
        return version

    def create_model_instance_version(self, user: str, owner: str, slug: str, framework: str, instance: str,
                                      tokens: list[str], notes: str | None, meta: dict | None = None
                                      ) -> tuple[dict, bool]:
        """A new version of the instance (the instance itself made first when `meta` is given: a create);
        (version, created) - created False when this exact request already made it (a client retry)."""
        with self.locked():
            if not self.model(owner, slug):
                raise StoreError(404, f"model {owner}/{slug} not found; create it first with `kaggle models create`")
            info = self.model_instance(owner, slug, framework, instance)
            for number in reversed(info["versions"] if info else []):
                version = self.model_instance_version(owner, slug, framework, instance, number)
                if version and tokens and sorted(version.get("tokens", [])) == sorted(tokens):
                    return version, False
            if meta is not None and info:
                raise StoreError(409, f"model instance {owner}/{slug}/{framework}/{instance} already exists; use "
                                      "`kaggle models instances versions create`")
            if meta is None and not info:
                raise StoreError(404, f"model instance {owner}/{slug}/{framework}/{instance} not found; create it "
                                      "first with `kaggle models instances create`")
            infos = self._take_uploads(tokens, user)
            folder = self.instance_dir(owner, slug, framework, instance)
            if meta is not None:
                write_json(folder / "instance.json", {**meta, "owner": owner, "model": slug, "framework": framework,
                                                      "slug": instance, "created": now_iso(),
                                                      "id": self.next_id("model_instance")})
            number = (info["versions"][-1] if info and info["versions"] else 0) + 1
            (folder / "versions").mkdir(parents=True, exist_ok=True)
            staging = self._tmp_dir(folder / "versions", f"v{number}")
            try:
                self._place_uploads(infos, staging / "files")
                write_json(staging / "version.json", {
                    "number": number, "notes": notes or "", "created": now_iso(), "id": self.next_id("model_version"),
                    "tokens": [i["token"] for i in infos], "bytes": sum(int(i["length"]) for i in infos),
                    "files": [{"name": n, "size": s} for n, s in list_files(staging / "files")]})
                staging.rename(folder / "versions" / str(number))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._consume_uploads(infos)
            return self.model_instance_version(owner, slug, framework, instance, number), True
