"""Shared fixtures: a running local Kaggle and the unmodified `kaggle` CLI pointed at it.

    local_kaggle      (session) one `kpack local serve` subprocess on a free port with a temp root
                      (Kaggle's session caps on: 2 GPU, 5 CPU; --session-limit 120; dataset versions
                      processing 0.1 s + 0.2 s/MB); see LocalKaggleServer
    kaggle_env        (function) the environment for a `kaggle` subprocess: the server's endpoint and the
                      credentials of user `alice`, plus a fresh HOME, TMPDIR and KAGGLE_CONFIG_DIR under
                      tmp_path, and no stray KAGGLE_* of the caller
    run_kaggle        (function) run_kaggle("kernels", "status", "alice/x") -> CompletedProcess (text)

A test that needs its own server (a restart, a one-session cap) makes one with `LocalKaggleServer(root, ...)`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KAGGLE = str(BIN / "kaggle")
USER = "alice"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Kaggle's dataset processing stays on in tests, short: kpack's wait-until-ready runs in every push.
SMALL_DATASET_PROCESSING = ("--dataset-processing-s", "0.1", "--dataset-processing-s-per-mb", "0.2")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalKaggleServer:
    """A `kpack local serve` subprocess and helpers to talk to its admin endpoints."""

    def __init__(self, root: Path, port: int | None = None, max_sessions: int = 0, session_limit: float = 120,
                 *serve_args: str):
        """serve_args: more `kpack local serve` switches, e.g. "--gpu-sessions", "1" (the last of a switch wins)."""
        self.root, self.port = Path(root), port or free_port()
        self.args = ["--max-sessions", str(max_sessions), "--session-limit", str(session_limit),
                     *SMALL_DATASET_PROCESSING, *serve_args]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> "LocalKaggleServer":
        from packager.localkaggle import client_env

        self.root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
        self.log = open(self.root.parent / f"server-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "packager.cli", "local", "serve", "--port", str(self.port), "--root",
             str(self.root), *self.args], cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        client_env.wait_healthy(self.port, self.root, self.proc, timeout=timeout)
        return self

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (a clean stop) or SIGKILL (a crash), then wait for the process."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def admin(self, method: str, path: str, data=None) -> dict:
        body = None if data is None else json.dumps(data).encode()
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers={"Content-Type": "application/json"})
        with _NO_PROXY.open(request, timeout=10) as resp:
            return json.loads(resp.read() or b"{}")

    def faults(self, *rules: dict) -> dict:
        return self.admin("POST", "/_kpack/faults", list(rules))

    def clear_faults(self) -> None:
        self.admin("DELETE", "/_kpack/faults")

    def stats(self) -> dict:
        return self.admin("GET", "/_kpack/stats")

    def reset_stats(self) -> None:
        self.admin("POST", "/_kpack/stats/reset", {})

    def env(self, user: str = USER) -> dict[str, str]:
        from packager.localkaggle import client_env

        return client_env.client_env(self.port, client_env.user_credentials(self.root, user))

    def wait_kernel(self, owner: str, slug: str, version: int | None = None, timeout: float = 120,
                    until=("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED")) -> dict:
        """Poll the store until the version's status is in `until`; its record."""
        from packager.localkaggle.store import Store

        store, deadline = Store(self.root), time.monotonic() + timeout
        while True:
            record = store.kernel_version(owner, slug, version)
            if record and record["status"] in until:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"{owner}/{slug} v{version}: still {record and record['status']}")
            time.sleep(0.2)


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory) -> Path:
    """One XDG_CACHE_HOME for the whole run, though tests give each its own HOME: kpack's cached timm model
    names (preflight.check_model) are listed once, not by every test that builds the kit."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def local_kaggle(tmp_path_factory) -> LocalKaggleServer:
    server = LocalKaggleServer(tmp_path_factory.mktemp("localkaggle") / "root").start()
    yield server
    server.stop()


@pytest.fixture
def kaggle_env(local_kaggle: LocalKaggleServer, tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k.lower() not in
           ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    env.update(HOME=str(home), TMPDIR=str(tmp_path / "tmp"), KAGGLE_CONFIG_DIR=str(home / ".kaggle"))
    env.update(local_kaggle.env(USER))
    local_kaggle.clear_faults()
    return env


@pytest.fixture
def run_kaggle(kaggle_env: dict[str, str], tmp_path: Path):
    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([KAGGLE, *args], env=env or kaggle_env, cwd=cwd or tmp_path, text=True,
                              capture_output=True, timeout=timeout)
    return run
