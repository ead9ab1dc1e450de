"""Kaggle's concurrent-session cap through kpack's real client path: a push over it is refused (no version) and
kpack waits for a slot, then pushes again, without losing a chain session or making a duplicate version."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from conftest import KAGGLE, LocalKaggleServer
from packager import chain, kaggle_api, ledger
from packager.push import push_kernel
from packager.localkaggle.store import Store
from pushkit import isolate, make_project

SLEEPY_ENTRY = '''import json
import os
import time
from pathlib import Path


def main(config):
    time.sleep({seconds})
    work = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle") / "working"
    (work / "state.json").write_text(json.dumps({{"done": True}}))
'''


@pytest.fixture
def one_gpu(tmp_path):
    server = LocalKaggleServer(tmp_path / "root", None, 0, 120, "--gpu-sessions", "1").start()
    yield server
    server.stop()


def gpu_project(tmp_path, server, monkeypatch, **kw):
    isolate(monkeypatch, tmp_path)
    project = make_project(tmp_path, server, datasets=False, **kw)
    config = project.root / "kpack.yaml"
    config.write_text(config.read_text().replace("accelerator: 'None'", "accelerator: NvidiaTeslaT4"))
    monkeypatch.chdir(project.root)
    monkeypatch.setenv("KPACK_SLOT_WAIT_S", "120")
    return project


def kaggle_cli_env(server, tmp_path) -> dict[str, str]:
    home = tmp_path / "cli-home"
    (home / ".kaggle").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k.lower() not in
           ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    env.update(HOME=str(home), TMPDIR=str(tmp_path), KAGGLE_CONFIG_DIR=str(home / ".kaggle"), **server.env("alice"))
    return env


def test_infer_pushed_while_training_runs_waits_for_the_slot_then_goes(one_gpu, tmp_path, monkeypatch, capsys):
    project = gpu_project(tmp_path, one_gpu, monkeypatch, infer=True)
    project.write_entry(SLEEPY_ENTRY.format(seconds=3))
    try:
        train = push_kernel(project.cfg(), "train", wait=False).ref
        one_gpu.wait_kernel("alice", train.slug, 1, until=("RUNNING",), timeout=60)
        one_gpu.reset_stats()
        infer = push_kernel(project.cfg(), "infer", wait=True)
    finally:
        kaggle_api._restore_env()
    out = capsys.readouterr().out
    waits = [line for line in out.splitlines() if "Maximum batch GPU session count of 1 reached." in line]
    assert len(waits) == 1 and "Waiting for a running session to end" in waits[0], out
    assert infer.status == "COMPLETE" and infer.ref.version == 1
    assert one_gpu.stats()["calls"]["SaveKernel"] >= 2  # refused at least once, then accepted
    store = Store(one_gpu.root)
    trained, inferred = store.kernel_version("alice", train.slug, 1), store.kernel_version("alice", infer.ref.slug)
    assert store.kernel("alice", infer.ref.slug)["versions"] == [1]  # the refusals made no version
    assert inferred["created"] >= trained["ended"]  # it went only once training had ended


def test_a_chain_session_refused_for_the_cap_waits_and_is_not_lost(one_gpu, tmp_path, monkeypatch, capsys):
    project = gpu_project(tmp_path, one_gpu, monkeypatch, sessions=2)
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "k.py").write_text("import time\ntime.sleep(3)\n")
    (blocker / "kernel-metadata.json").write_text(
        '{"id": "alice/gpu-blocker", "title": "Gpu Blocker", "code_file": "k.py", "language": "python", '
        '"kernel_type": "script", "enable_gpu": true, "enable_internet": false}')
    prepare = chain.prepare_session

    def prepare_with_the_slot_taken(*args, **kwargs):  # another GPU session starts right before session 2's push
        done = subprocess.run([KAGGLE, "kernels", "push", "-p", str(blocker)], env=kaggle_cli_env(one_gpu, tmp_path),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Maximum" not in done.stdout, done.stdout + done.stderr
        one_gpu.wait_kernel("alice", "gpu-blocker", 1, until=("RUNNING",), timeout=60)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(chain, "prepare_session", prepare_with_the_slot_taken)
    try:
        result = push_kernel(project.cfg(), "train", wait=True)
    finally:
        kaggle_api._restore_env()
    out = capsys.readouterr().out
    assert out.count("Maximum batch GPU session count of 1 reached.") == 1, out
    assert result.status == "COMPLETE" and [(r.session, r.version) for r in result.sessions] == [(1, 1), (2, 1)]
    second = result.sessions[1].slug
    assert Store(one_gpu.root).kernel("alice", second)["versions"] == [1]  # one version: no duplicate
    rows = [(r["session"], r["status"]) for r in ledger.read() if r.get("base_slug") == project.train_slug]
    assert rows == [(1, "COMPLETE"), (2, "COMPLETE")]


def test_the_slot_wait_is_bounded(one_gpu, tmp_path, monkeypatch):
    from packager.errors import UserError

    project = gpu_project(tmp_path, one_gpu, monkeypatch, infer=True)
    project.write_entry(SLEEPY_ENTRY.format(seconds=30))
    monkeypatch.setenv("KPACK_SLOT_WAIT_S", "1")
    try:
        train = push_kernel(project.cfg(), "train", wait=False).ref
        one_gpu.wait_kernel("alice", train.slug, 1, until=("RUNNING",), timeout=60)
        started = time.monotonic()
        with pytest.raises(UserError, match="Still no free session after 1s .KPACK_SLOT_WAIT_S.") as err:
            push_kernel(project.cfg(), "infer", wait=True)
        assert time.monotonic() - started < 30 and "Maximum batch GPU session count of 1 reached." in str(err.value)
    finally:
        one_gpu.admin("POST", "/_kpack/cancel", {"kernel": f"alice/{train.slug}", "version": 1})
        kaggle_api._restore_env()
    assert Store(one_gpu.root).kernel("alice", f"{project.prefix}-infer") is None
