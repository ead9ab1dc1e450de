"""How a client reaches the local Kaggle: the environment that points the unmodified `kaggle` client at it, and
`ensure_server`, which starts the server when nothing answers.

The environment (what `kpack local env` prints, and what `ensure_server` returns):

    KAGGLE_API_ENVIRONMENT=LOCALHOST     the client calls http://localhost/api/v1/...
    HTTP_PROXY / http_proxy=http://127.0.0.1:PORT   ... which requests sends to the server as a proxy
    NO_PROXY / no_proxy=                 empty: nothing bypasses it (localhost included)
    KAGGLE_USERNAME, KAGGLE_KEY          the local user's legacy key (HTTP Basic)
    KAGGLE_API_TOKEN                     the local user's access token: it wins over the key, and over a real
                                         ~/.kaggle/access_token, which the client would otherwise send here

The client reads KAGGLE_API_ENVIRONMENT when `kaggle` is first imported: set the environment before that.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from packager.errors import UserError
from packager.localkaggle.runner import PASS_THROUGH
from packager.localkaggle.store import Store, StoreError
from packager.secrets_scan import SECRET_NAME

DEFAULT_PORT = 8599
DEFAULT_ROOT = ".localkaggle"
DEFAULT_USER = "kpack"
START_TIMEOUT_S = 30.0
# What the server needs of the caller's environment, by name; everything else (Kaggle credentials, the
# Telegram token, the weights key, whatever else the shell holds) stays out. Local Kaggle Secrets live in
# the server's store (`kpack local secret set`), not in its environment.
SERVER_ENV = ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "LANG", "LANGUAGE", "PYTHONPATH") + PASS_THROUGH
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def health(port: int, timeout: float = 1.0) -> dict | None:
    """The server's health answer on 127.0.0.1:port, or None when nothing (or something else) answers."""
    try:
        with _NO_PROXY_OPENER.open(f"http://127.0.0.1:{port}/_kpack/health", timeout=timeout) as resp:
            data = json.loads(resp.read())
            return data if isinstance(data, dict) and data.get("ok") else None
    except (OSError, ValueError, urllib.error.URLError):
        return None


def port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def user_credentials(root: str | os.PathLike, user: str) -> dict:
    """The local user's record (made when missing): username, key, token."""
    try:
        return Store(root).ensure_user(user)
    except StoreError as err:
        raise UserError(f"local Kaggle user {user!r}: {err.message}") from None


def client_env(port: int, record: dict) -> dict[str, str]:
    proxy = f"http://127.0.0.1:{port}"
    return {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": proxy, "http_proxy": proxy,
            "NO_PROXY": "", "no_proxy": "", "KAGGLE_USERNAME": record["username"], "KAGGLE_KEY": record["key"],
            "KAGGLE_API_TOKEN": record["token"]}


def export_lines(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def _check_root(answer: dict, root: Path, port: int) -> None:
    if Path(answer.get("root", "")).resolve() != root.resolve():
        raise UserError(f"port {port} is serving the local Kaggle of {answer.get('root')}, not {root}; "
                        f"stop it or pick another port (kpack.yaml local.port)")


def server_environment(environ: dict[str, str]) -> dict[str, str]:
    """The server's environment: SERVER_ENV, the locale's LC_*, and kpack's own KPACK_* settings whose names
    do not say secret (KPACK_WEIGHTS_KEY does)."""
    return {k: v for k, v in environ.items()
            if k in SERVER_ENV or k.startswith("LC_") or (k.startswith("KPACK_") and not SECRET_NAME.search(k))}


def start_server(root: Path, port: int, extra_args: list[str] | None = None) -> subprocess.Popen:
    """`kpack local serve` detached from this process (its own session), logging to ROOT/server.log."""
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "server.log", "ab")
    env = server_environment(os.environ)
    command = [sys.executable, "-m", "packager.cli", "local", "serve", "--port", str(port), "--root", str(root),
               *(extra_args or [])]
    try:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, close_fds=True)
    finally:
        log.close()


def wait_healthy(port: int, root: Path, proc: subprocess.Popen | None = None,
                 timeout: float = START_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = health(port, timeout=0.5)
        if answer:
            _check_root(answer, root, port)
            return answer
        if proc is not None and proc.poll() is not None:
            answer = health(port, timeout=0.5)  # another process may have won the race for the port
            if answer:
                _check_root(answer, root, port)
                return answer
            raise UserError(f"the local Kaggle server exited with code {proc.returncode} while starting; "
                            f"see {root / 'server.log'}:\n{_tail(root / 'server.log')}")
        time.sleep(0.1)
    raise UserError(f"the local Kaggle server did not answer on port {port} within {timeout:g}s; "
                    f"see {root / 'server.log'}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def ensure_server(root: str | os.PathLike = DEFAULT_ROOT, port: int = DEFAULT_PORT,
                  user: str = DEFAULT_USER) -> dict[str, str]:
    """Start the local Kaggle for `root` on `port` unless it already runs there; return the client env for
    `user` (made when missing)."""
    root = Path(root).resolve()
    answer = health(port)
    if answer:
        _check_root(answer, root, port)
    else:
        if port_in_use(port):
            raise UserError(f"port {port} is taken by something that is not the local Kaggle; "
                            "pick another port (kpack.yaml local.port)")
        wait_healthy(port, root, start_server(root, port))
    return client_env(port, user_credentials(root, user))
