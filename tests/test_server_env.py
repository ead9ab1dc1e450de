"""The local server that kpack starts gets only what it needs of the caller's environment: never the Telegram
token, the weights key or Kaggle credentials (a kernel's secrets come from the server's store instead)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import free_port

from packager.localkaggle import client_env

KPACK = str(Path(sys.executable).parent / "kpack")
SECRETS = {"TELEGRAM_BOT_TOKEN": "123456:telegram-token-value", "TELEGRAM_CHAT_ID": "987654321",
           "KPACK_WEIGHTS_KEY": "weights-key-value-0123456789", "KAGGLE_KEY": "kaggle-key-value-abcdef",
           "KAGGLE_USERNAME": "real-user", "KAGGLE_API_TOKEN": "KGAT_real-token", "AWS_SECRET_ACCESS_KEY": "aws"}


def test_the_server_kpack_starts_holds_none_of_the_callers_secrets(tmp_path):
    port, root = free_port(), tmp_path / "root"
    env = {**os.environ, **SECRETS, "HOME": str(tmp_path), "KPACK_SANDBOX": "none", "LC_ALL": "C.UTF-8",
           "KPACK_CONFIG": str(tmp_path / "missing.yaml")}
    done = subprocess.run([KPACK, "local", "env", "--start", "--port", str(port), "--root", str(root)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    try:
        answer = client_env.health(port)
        assert answer, (root / "server.log").read_text()
        raw = Path(f"/proc/{answer['pid']}/environ").read_bytes()
        server_env = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
        assert not set(SECRETS) & set(server_env), sorted(set(SECRETS) & set(server_env))
        assert not any(value.encode() in raw for value in SECRETS.values())
        # What it needs stays: where programs and home are, the locale, kpack's own non-secret settings.
        assert server_env["PATH"] == os.environ["PATH"] and server_env["HOME"] == str(tmp_path)
        assert server_env["LC_ALL"] == "C.UTF-8" and server_env["KPACK_SANDBOX"] == "none"
    finally:
        subprocess.run([KPACK, "local", "stop", "--port", str(port)], capture_output=True, env=env, cwd=tmp_path,
                       timeout=120)
