"""The session runner: every accepted version starts at once (QUEUED -> RUNNING; how many may be accepted is
SaveKernel's concurrent-session cap, as on Kaggle, which refuses rather than queues), each ends COMPLETE, ERROR
or CANCEL_ACKNOWLEDGED with its output and log kept in the version's folder. `max_sessions` > 0 bounds how many
run at once on this machine (the others wait QUEUED); 0, the default, bounds nothing.

A restarted server re-queues what was QUEUED (in push order) and marks what was RUNNING as ERROR ("the local
Kaggle server restarted while this session ran"): the old process and its session are gone, and a rerun could
repeat side effects the user did not ask for. A server that stops cleanly ends its running sessions the same way.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Callable

from packager.localkaggle.store import Store, now_iso

log = logging.getLogger("kpack.localkaggle")

RESTARTED = "the local Kaggle server restarted while this session ran"
STOPPED = "the local Kaggle server stopped while this session ran"


class Scheduler:
    def __init__(self, store: Store, max_sessions: int = 0, default_limit_s: float = 12 * 3600,
                 on_finished: Callable[[str, str, dict], None] | None = None):
        self.store = store
        self.max_sessions = max(0, int(max_sessions))  # 0: a thread per session, none waits
        self.default_limit_s = float(default_limit_s)
        self.on_finished = on_finished
        self._queue: queue.Queue = queue.Queue()
        self._cancel: dict[tuple[str, str, int], threading.Event] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False

    # ----------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        queued = []
        for owner, slug, version in self.store.all_kernel_versions():
            if version.get("status") in ("RUNNING", "CANCEL_REQUESTED"):
                run = Path(version["dir"]) / "run"
                self.store.update_kernel_version(owner, slug, version["number"], status="ERROR",
                                                 failure_message=RESTARTED, ended=now_iso(),
                                                 output_dir=str(run / "working"), log_path=str(run / "kernel.log"))
                self._finished(owner, slug, version["number"])
            elif version.get("status") == "QUEUED":
                queued.append((version.get("created", ""), owner, slug, version["number"]))
        for _, owner, slug, number in sorted(queued):
            self.submit(owner, slug, number)
        for i in range(self.max_sessions):
            self._spawn(self._work, f"kernel-worker-{i}")
        self._started = True
        while self.max_sessions == 0 and not self._queue.empty():  # re-queued before the start
            self._spawn(self._one, "kernel-session", self._queue.get())

    def _spawn(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work and end running sessions (ERROR, 'server stopped'); queued ones stay queued."""
        self._stopping.set()
        with self._lock:
            events = list(self._cancel.values())
        for event in events:
            event.set()
        with self._lock:
            threads = list(self._threads)
        for _ in range(self.max_sessions):
            self._queue.put(None)
        deadline = time.time() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.time()))

    def submit(self, owner: str, slug: str, number: int) -> None:
        with self._lock:
            self._cancel[(owner, slug, number)] = threading.Event()
        if self.max_sessions == 0 and self._started:
            self._spawn(self._one, f"kernel-{slug}-v{number}", (owner, slug, number))
        else:
            self._queue.put((owner, slug, number))

    def cancel(self, owner: str, slug: str, number: int) -> bool:
        """Ask a queued or running version to stop; False when it has already ended."""
        with self._lock:
            event = self._cancel.get((owner, slug, number))
        if event is None:
            return False
        with self.store.locked():
            version = self.store.kernel_version(owner, slug, number)
            if version is None or version["status"] not in ("QUEUED", "RUNNING"):
                return False
            if version["status"] == "QUEUED":
                self.store.update_kernel_version(owner, slug, number, status="CANCEL_ACKNOWLEDGED",
                                                 failure_message="cancelled before it started", ended=now_iso())
            else:
                self.store.update_kernel_version(owner, slug, number, status="CANCEL_REQUESTED")
        event.set()
        return True

    # ----------------------------------------------------------------------------------------- work

    def _work(self) -> None:
        while not self._stopping.is_set():
            item = self._queue.get()
            if item is None:
                return
            self._one(item)

    def _one(self, item: tuple[str, str, int]) -> None:
        owner, slug, number = item
        try:
            self._run(owner, slug, number)
        except Exception as exc:  # noqa: BLE001 - a broken session must not kill the worker
            log.exception("session %s/%s v%s failed in the server", owner, slug, number)
            self.store.update_kernel_version(owner, slug, number, status="ERROR", ended=now_iso(),
                                             failure_message=f"local Kaggle error: {exc}")
        finally:
            with self._lock:
                self._cancel.pop((owner, slug, number), None)
            self._finished(owner, slug, number)

    def _finished(self, owner: str, slug: str, number: int) -> None:
        if self.on_finished:
            version = self.store.kernel_version(owner, slug, number)
            if version and version.get("status") not in ("QUEUED", "RUNNING", "CANCEL_REQUESTED"):
                try:
                    self.on_finished(owner, slug, version)
                except Exception:  # noqa: BLE001
                    log.exception("after-session hook failed for %s/%s v%s", owner, slug, number)

    def mounts_for(self, version: dict):
        from packager.localkaggle.runner import Mount

        mounts = []
        for m in version.get("mounts", []):
            if m["kind"] == "dataset":
                source = self.store.dataset_version(m["owner"], m["slug"], m["version"])
                path = Path(source["files_dir"]) if source else None
            elif m["kind"] == "model":
                from packager.localkaggle.models_api import framework_name

                source = self.store.model_instance_version(m["owner"], m["model"], framework_name(m["framework"]),
                                                           m["variation"], m["version"])
                path = Path(source["files_dir"]) if source else None
            elif m["kind"] == "competition":
                source = self.store.competition(m["slug"])
                path = Path(source["data_dir"]) if source else None
            else:
                source = self.store.kernel_version(m["owner"], m["slug"], m["version"])
                path = Path(source["output_dir"]) if source and source.get("output_dir") else None
            if path is None or not path.is_dir():
                raise FileNotFoundError(f"input {m['kind']} {m['owner'] or ''}/{m['slug']} is gone from the store")
            mounts.append(Mount(kind=m["kind"], owner=m["owner"], slug=m["slug"], source=path))
        return mounts

    def _run(self, owner: str, slug: str, number: int) -> None:
        from packager.localkaggle.runner import run_kernel

        with self._lock:
            cancel = self._cancel.get((owner, slug, number)) or threading.Event()
        with self.store.locked():
            version = self.store.kernel_version(owner, slug, number)
            if version is None or version["status"] != "QUEUED" or self._stopping.is_set():
                return
            version = self.store.update_kernel_version(owner, slug, number, status="RUNNING", started=now_iso())
        folder = Path(version["dir"])
        limit = version.get("session_timeout_seconds") or self.default_limit_s
        env = dict(self.store.secrets_of(owner, slug))  # attached to this kernel only, as in the web UI
        try:
            mounts = self.mounts_for(version)
        except FileNotFoundError as exc:
            self.store.update_kernel_version(owner, slug, number, status="ERROR", failure_message=str(exc),
                                             ended=now_iso())
            return
        result = run_kernel(folder / "script.py", folder / "run", mounts,
                            enable_internet=bool(version["metadata"].get("enable_internet", True)),
                            timeout_s=float(limit), env=env, cancel=cancel)
        status, message = result.status, result.failure_message or ""
        if self._stopping.is_set() and status != "COMPLETE":
            status, message = "ERROR", STOPPED
        self.store.update_kernel_version(
            owner, slug, number, status=status, failure_message=message, ended=now_iso(),
            output_dir=str(result.output_dir), log_path=str(result.log_path), seconds=round(result.seconds, 3))
