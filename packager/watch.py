"""Watching kernels: status of one version, polling until it ends, and downloading its output.

A kernel is named on the command line as a kind from kpack.yaml (train|validate|infer: the latest session the
ledger knows for it, else the configured slug) or as owner/slug[/N]. Every status request names its version
(`version_label` "vN"): without it Kaggle answers for the latest version, which right after a push can be an
older run than the one just pushed (kaggle-cli PR #1177); the kernel's current version number is checked too.

Outputs land in runs/<slug>/v<N>/: downloaded into a temp folder beside it and renamed into place, so a
folder there is always a whole download.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import requests

from packager import kaggle_api, ledger
from packager.config import KERNEL_KINDS
from packager.errors import UserError, env_number

RUNS = Path("runs")
TERMINAL = ("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED", "CANCEL_REQUESTED")
POLL_MIN_S = env_number("KPACK_POLL_MIN_S", 2.0)
POLL_MAX_S = env_number("KPACK_POLL_MAX_S", 60.0)
LOCAL_POLL_MAX_S = 5.0  # the local Kaggle is cheap to ask
OFFLINE_WAIT_S = env_number("KPACK_OFFLINE_WAIT_S", 12 * 3600.0)


@dataclass
class KernelRef:
    owner: str
    slug: str
    version: int | None = None
    kind: str | None = None
    session: int = 1

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    def __str__(self) -> str:
        return self.ref + (f" v{self.version}" if self.version else "")


@dataclass
class Outcome:
    status: str
    failure: str
    seconds: float


def resolve(cfg, kernel: str, version: int | None = None) -> KernelRef:
    """train|validate|infer or owner/slug[/N]. A kind names the latest session of its chain that the ledger
    knows (else the configured slug); a kind with an explicit version names that version of the configured
    slug (version numbers belong to one slug, and a chain's sessions each have their own)."""
    if kernel in KERNEL_KINDS:
        kcfg = cfg.kernel(kernel)
        if version is not None:
            return KernelRef(cfg.kaggle_user, kcfg.slug, version, kernel)
        row = ledger.latest(kind=kernel, backend=cfg.backend, base_slug=kcfg.slug)
        if row and row.get("kernel"):
            owner, slug = row["kernel"].split("/", 1)
            return KernelRef(owner, slug, None, kernel, row.get("session") or 1)
        return KernelRef(cfg.kaggle_user, kcfg.slug, None, kernel)
    parts = kernel.strip("/").split("/")
    if len(parts) == 3 and parts[2].lstrip("v").isdigit():
        return KernelRef(parts[0], parts[1], int(parts[2].lstrip("v")))
    if len(parts) == 2 and all(parts):
        return KernelRef(parts[0], parts[1])
    raise UserError(f"{kernel!r}: name a kernel as train, validate, infer or owner/slug[/version]")


NO_VERSION = object()  # GetKernel answered, without currentVersionNumber
_told_no_version: set[str] = set()


def current_version(api, ref: KernelRef):
    """The kernel's current version number; None when the kernel does not exist; NO_VERSION when GetKernel
    answers without currentVersionNumber (Kaggle fills it today; code must not rely on it forever)."""
    kernel = kaggle_api.get_kernel(api, ref.owner, ref.slug)
    if kernel is None or kernel.metadata is None:
        return None
    number = kernel.metadata.current_version_number
    return number if number else NO_VERSION


def latest_version(api, ref: KernelRef) -> int:
    version = current_version(api, ref)
    if version is None:
        where = "the local Kaggle" if "--local" in api.args else "Kaggle"
        raise UserError(f"kernel {ref.ref} not found on {where}; push it first: kpack push {ref.kind or 'KIND'}",
                        exit_code=1)
    if version is NO_VERSION:
        raise UserError(f"kernel {ref.ref}: the server's answer names no current version (currentVersionNumber); "
                        f"name the version: kpack status {ref.ref}/N", exit_code=1)
    return version


def status_of(api, ref: KernelRef) -> tuple[str, str]:
    """(status, failure message) of ref.version, or ("PENDING", "") while the server does not list it yet."""
    current = current_version(api, ref)
    if current is NO_VERSION and ref.version is not None:
        # Nothing says whether the push is visible yet; the status request names its version, so it cannot be
        # another run's: go by it (said once per kernel).
        if ref.ref not in _told_no_version:
            _told_no_version.add(ref.ref)
            print(f"{ref}: the server's GetKernel answer has no currentVersionNumber; following v{ref.version} by "
                  "its own status", flush=True)
        try:
            return kaggle_api.kernel_status(api, ref.owner, ref.slug, ref.version)
        except kaggle_api.KaggleCallError as err:
            if err.status == 404:
                return "PENDING", ""
            raise
    if current is None or current is NO_VERSION or (ref.version is not None and current < ref.version):
        return "PENDING", ""  # the push is not visible yet: whatever status there is belongs to an older run
    return kaggle_api.kernel_status(api, ref.owner, ref.slug, ref.version)


def run_seconds(out: Path | None, slug: str) -> float | None:
    """A session's own run time: the last timestamp in its log (`<slug>.log`; Kaggle's log entries carry
    `time`, seconds since the session started). None without a readable log."""
    try:
        entries = json.loads((Path(out) / f"{slug}.log").read_text()) if out else None
    except (OSError, ValueError):
        return None
    times = [e["time"] for e in entries or [] if isinstance(e, dict) and isinstance(e.get("time"), (int, float))]
    return float(max(times)) if times else None


class Outage:
    """Kaggle out of reach while only watching. A kernel runs on whatever happens here, so a watch waits an
    outage out (a laptop asleep, a train, a 503 spell) for up to KPACK_OFFLINE_WAIT_S (12 h), saying so every
    KPACK_WAIT_EVERY_S, instead of stopping after one call's retries. Not the local Kaggle gone: it ran them."""

    def __init__(self, wait):
        self.wait, self.since = wait, None

    @staticmethod
    def waitable(err: kaggle_api.KaggleCallError) -> bool:
        """Whether err is an outage a watch (or a later tick) waits out: retries ran out on something worth
        retrying, and not the local Kaggle gone (it has stopped, and its sessions with it)."""
        return err.exhausted and not (err.unreachable and kaggle_api.on_local())

    def failed(self, err: kaggle_api.KaggleCallError) -> None:
        """Returns when it is worth polling again; raises err when it is not an outage or has lasted too long."""
        now = time.monotonic()
        self.since = self.since or now
        if not self.waitable(err) or now - self.since > OFFLINE_WAIT_S:
            raise err
        self.wait.tick(f"Kaggle out of reach: {err.unreachable or str(err).removeprefix('kaggle: ')}")

    def reached(self) -> None:
        from packager import progress

        if self.since is not None:
            self.wait.say(f"Kaggle answers again, after {progress.duration(time.monotonic() - self.since)}")
            self.since = None


def wait_for(api, ref: KernelRef, timeout_s: float | None = None, max_delay_s: float | None = None,
             session_s: float | None = None) -> Outcome:
    """Poll (with backoff up to max_delay_s) until ref.version ends; prints each status change with how long it
    has waited, and while it runs the newest line of its log (fetched at most every KPACK_LOG_EVERY_S seconds;
    session_s: the session's limit, for the time left)."""
    from packager import logs, progress

    start, delay, last = time.monotonic(), POLL_MIN_S, None
    max_delay_s = min(max_delay_s or POLL_MAX_S, POLL_MAX_S)
    deadline = start + timeout_s if timeout_s else None
    wait, tail = progress.Wait(str(ref), "the kernel to end"), logs.Tail(api, ref, session_s)
    outage = Outage(wait)
    while True:
        try:
            status, failure = status_of(api, ref)
        except kaggle_api.KaggleCallError as err:
            outage.failed(err)
            kaggle_api.sleep(max_delay_s)
            continue
        outage.reached()
        if status != last:
            last, delay = status, POLL_MIN_S
            if status in TERMINAL:  # "after" only when this wait saw it run; a tick finds it ended
                wait.say(f"{status} (after {progress.duration(wait.waited())})" if wait.state else status)
        if status not in TERMINAL:
            wait.tick(status)
        if status == "RUNNING":
            line = tail.poll()
            if line:
                wait.say(f"log: {line}")
        if status in TERMINAL:
            return Outcome(status, failure, time.monotonic() - start)
        if deadline is not None and time.monotonic() > deadline:
            raise UserError(f"{ref}: still {status} after {timeout_s:.0f}s; check later with "
                            f"`kpack status {ref.ref}/{ref.version}`", exit_code=1)
        kaggle_api.sleep(delay)
        delay = min(max_delay_s, delay * 1.5)


# --------------------------------------------------------------------------------------------- output

def output_dir(slug: str, version: int) -> Path:
    return RUNS / slug / f"v{version}"


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise UserError(f"kernel output holds a file with an unsafe name {name!r}; not downloading it", exit_code=1)
    return path


def _fetch(url: str, dest: Path, label: str = "download") -> int:
    """GET one output file (a plain unauthenticated URL) with retries; returns its size. A file of at least
    KPACK_PROGRESS_MIN_BYTES (1 MB) shows its progress (packager.progress)."""
    from packager import progress

    def once():
        with requests.get(url, stream=True, timeout=60) as response:
            response.raise_for_status()
            dest.parent.mkdir(parents=True, exist_ok=True)
            total = int(response.headers.get("Content-Length") or 0) or None
            shown = progress.Transfer(f"{label} {dest.name}", total) if (total or 0) >= progress.MIN_BYTES else None
            with open(dest, "wb") as f, (shown or nullcontext()) as bar:
                for chunk in response.iter_content(1 << 20):
                    f.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        return dest.stat().st_size

    return kaggle_api.call(f"download {dest.name}", once)


def download(api, ref: KernelRef, dest: Path | None = None) -> Path:
    """Download ref.version's output (and its log as <slug>.log) to runs/<slug>/v<N>/; returns the folder."""
    from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

    if ref.version is None:
        ref.version = latest_version(api, ref)
    dest = Path(dest or output_dir(ref.slug, ref.version))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        token, log, count = None, None, 0
        while True:
            request = ApiListKernelSessionOutputRequest()
            request.user_name, request.kernel_slug = ref.owner, ref.slug
            request.version_label = kaggle_api.version_label(ref.version)
            request.page_size = 100
            if token:
                request.page_token = token
            response = kaggle_api.rpc(api, f"list output of {ref}", "kernels.kernels_api_client",
                                      "list_kernel_session_output", request)
            for item in response.files or []:
                _fetch(item.url, tmp / _safe_name(item.file_name), f"{ref}: download")
                count += 1
            log = log or response.log
            token = response.next_page_token
            if not token:
                break
        if log:
            (tmp / f"{ref.slug}.log").write_text(log)
            decoded = tmp / f"{ref.slug}.txt"  # the same log as plain text, beside Kaggle's raw JSON
            if not decoded.exists():
                from packager import logs

                decoded.write_text(logs.plain(logs.decode(log)))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"{ref}: {count} output files in {dest}")
    from packager import report

    made = report.write_quietly(dest, f"{ref} ({ref.kind or 'kernel'}, session {ref.session})", ref.ref, ref.version)
    if made is not None:
        print(f"{ref}: report {made}")
    return dest


def sync_ledger(cfg, ref: KernelRef, status: str, failure: str = "", out: Path | None = None) -> None:
    """Bring the ledger row of ref.version up to date when a later `kpack status`/`kpack output` sees how it
    ended (the watch that pushed it may have been interrupted)."""
    if status not in TERMINAL or ref.version is None:
        return
    row = ledger.latest(kernel=ref.ref, version=ref.version, backend=cfg.backend)
    if row is None or (row.get("status") == status and (out is None or row.get("output"))):
        return
    fields: dict = {"status": status, "failure": (failure or "")[:2000]}
    if out is not None:
        cv, metrics = ledger.read_metrics(out)
        fields.update(output=str(out), cv_score=cv, metrics=metrics, seconds=run_seconds(out, ref.slug))
    ledger.update({"kernel": ref.ref, "version": ref.version, "backend": cfg.backend}, fields, cfg)


# --------------------------------------------------------------------------------------------- commands

def show_status(cfg, kernel: str) -> str:
    """`kpack status KERNEL`: prints the status (and failure message); exits non-zero on ERROR."""
    api = kaggle_api.connect(cfg)
    ref = resolve(cfg, kernel)
    if ref.version is None:
        ref.version = latest_version(api, ref)
    status, failure = status_of(api, ref)
    print(f"{ref}: {status}")
    if failure:
        print(f"failure message: {failure}")
    sync_ledger(cfg, ref, status, failure)
    if status in ("ERROR", "CANCEL_ACKNOWLEDGED", "CANCEL_REQUESTED"):
        raise UserError(f"{ref} ended {status}" + (f": {failure}" if failure else ""), exit_code=1)
    return status


def download_output(cfg, kernel: str, version: int | None = None) -> Path:
    """`kpack output KERNEL [-v N]`: downloads that version's output (default: the latest) to runs/<slug>/v<N>/."""
    api = kaggle_api.connect(cfg)
    ref = resolve(cfg, kernel, version)
    if version is not None:
        ref.version = version
    out = download(api, ref)
    status, failure = kaggle_api.kernel_status(api, ref.owner, ref.slug, ref.version)
    sync_ledger(cfg, ref, status, failure, out)
    return out
