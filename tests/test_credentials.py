"""backend: kaggle without credentials: one line saying where kpack looked and how to fix it, before anything is
built, and never the kaggle client's 15-line sign-up banner (packager/kaggle_api.py check_credentials)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from packager import kaggle_api
from packager.config import parse_config
from packager.errors import UserError

KPACK = str(Path(sys.executable).parent / "kpack")


def bare_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k.lower() not in
           ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    return {**env, "HOME": str(home), "TMPDIR": str(home), **extra}


def kaggle_project(root: Path) -> Path:
    """backend kaggle, with a weights dataset: before the fix it was built before the credentials were looked at."""
    (root / "kernel_src").mkdir(parents=True)
    (root / "kernel_src" / "entry.py").write_text("def main(config):\n    pass\n")
    (root / "models").mkdir()
    (root / "models" / "w.pth").write_bytes(b"\0" * 1024)
    (root / "kpack.yaml").write_text(
        "competition: digits-c\nkaggle_user: alice\nbackend: kaggle\n"
        "kernels:\n  train: {entry: kernel_src/entry.py, accelerator: 'None'}\n"
        "datasets:\n  weights: {slug: digits-c-weights, dir: models}\n")
    return root / "kpack.yaml"


@pytest.mark.parametrize("config_dir", [True, False])
def test_push_without_credentials_is_one_line_and_builds_nothing(tmp_path, config_dir):
    home = tmp_path / "home"
    home.mkdir()
    config = kaggle_project(tmp_path / "project")
    where = home / "cfg" if config_dir else home / ".config" / "kaggle"  # the client's XDG fallback on Linux
    env = bare_env(home, **({"KAGGLE_CONFIG_DIR": str(where)} if config_dir else {}))
    done = subprocess.run([KPACK, "push", "train", "--config", str(config)], cwd=config.parent, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"error: no Kaggle credentials (backend: kaggle): none in KAGGLE_API_TOKEN, KAGGLE_USERNAME/KAGGLE_KEY, "
        f"{where}/kaggle.json or {home}/.kaggle/access_token; put the kaggle.json of https://www.kaggle.com/settings "
        f"(API, Create New Token) in {where}/ (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY\n")
    assert not (config.parent / "build").exists() and not (config.parent / "runs").exists()


def test_no_credentials_found_anywhere(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("KAGGLE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert kaggle_api.find_credentials() is None
    cfg = parse_config({"competition": "digits-c", "kaggle_user": "alice", "backend": "kaggle",
                        "kernels": {"train": {"entry": "kernel_src/train.py"}}})
    with pytest.raises(UserError, match="no Kaggle credentials"):
        kaggle_api.check_credentials(cfg)
    kaggle_api.check_credentials(cfg.model_copy(update={"backend": "local"}))  # the local Kaggle has its own


@pytest.mark.parametrize("where", ["token env", "access_token", "kaggle.json", "user+key env", "json+key env",
                                   "oauth"])
def test_each_place_the_client_reads_is_found(tmp_path, monkeypatch, where):
    for key in list(os.environ):
        if key.startswith("KAGGLE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    dot = tmp_path / ".kaggle"
    dot.mkdir()
    if where == "token env":
        monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_x")
        expected = "KAGGLE_API_TOKEN"
    elif where == "access_token":
        (dot / "access_token").write_text("KGAT_x\n")
        expected = str(dot / "access_token")
    elif where == "kaggle.json":
        (dot / "kaggle.json").write_text(json.dumps({"username": "alice", "key": "k"}))
        expected = str(dot / "kaggle.json")
    elif where == "user+key env":
        monkeypatch.setenv("KAGGLE_USERNAME", "alice")
        monkeypatch.setenv("KAGGLE_KEY", "k")
        expected = "KAGGLE_USERNAME and KAGGLE_KEY"
    elif where == "json+key env":  # the client lays the variables over kaggle.json key by key
        (dot / "kaggle.json").write_text(json.dumps({"username": "alice"}))
        monkeypatch.setenv("KAGGLE_KEY", "k")
        expected = str(dot / "kaggle.json")
    else:
        (dot / "credentials.json").write_text(json.dumps({"refresh_token": "r"}))
        expected = str(dot / "credentials.json")
    assert kaggle_api.find_credentials() == expected


def test_half_a_key_or_an_empty_token_file_is_not_credentials(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("KAGGLE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "access_token").write_text("")
    (tmp_path / ".kaggle" / "kaggle.json").write_text("[not a dict]")
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    assert kaggle_api.find_credentials() is None


def test_kaggle_out_of_reach_is_one_short_line(tmp_path):
    """backend kaggle with credentials but no way out (a proxy that refuses): the image probe's first call says
    so in a line, and does not suggest skipping the probe, since the push would fail the same way."""
    home = tmp_path / "home"
    home.mkdir()
    config = kaggle_project(tmp_path / "project")
    env = bare_env(home, KAGGLE_USERNAME="alice", KAGGLE_KEY="0" * 32, HTTPS_PROXY="http://127.0.0.1:1",
                   KPACK_RETRY_ATTEMPTS="2", KPACK_RETRY_BASE_S="0.01")
    done = subprocess.run([KPACK, "push", "train", "--config", str(config)], cwd=config.parent, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    cause = "cannot reach api.kaggle.com: the proxy (HTTP(S)_PROXY) refused or failed"
    assert done.stderr.splitlines() == [
        f"kaggle: get kernel alice/kpack-image-probe: {cause}; retry 1/1 in 0.0s",
        f"error: kaggle: get kernel alice/kpack-image-probe failed after 2 attempts: {cause}"]


def test_credentials_of_another_user_are_one_line_before_anything_is_pushed(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    config = kaggle_project(tmp_path / "project")  # kaggle_user: alice
    env = bare_env(home, KAGGLE_USERNAME="bob", KAGGLE_KEY="0" * 32, HTTPS_PROXY="http://127.0.0.1:1")
    done = subprocess.run([KPACK, "push", "train", "--config", str(config)], cwd=config.parent, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("error: kpack.yaml: kaggle_user is 'alice' but the kaggle credentials belong to 'bob'; "
                           "set kaggle_user: bob\n")  # not "or push without the probe": the push needs them too
