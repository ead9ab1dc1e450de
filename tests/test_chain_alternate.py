"""Session chains: alternating between two kernel slugs (the default) or one slug per session, secrets attached
per kernel as in Kaggle's web UI, and a chain session whose previous kernel is no longer its newest COMPLETE
version (rule: Kaggle mounts a source kernel only when its newest version is COMPLETE)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from conftest import KAGGLE, REPO
from packager import chain, kaggle_api, ledger, push
from packager.config import parse_config
from packager.errors import UserError
from packager.push import push_kernel, watch_kernel
from packager.localkaggle.store import Store
from pushkit import isolate, make_project
import kpack_runtime as runtime


def test_session_slugs_alternate_by_default_or_are_distinct():
    assert [chain.session_slug("x-train", k) for k in range(1, 6)] == [
        "x-train", "x-train-b", "x-train", "x-train-b", "x-train"]
    assert [chain.session_slug("x-train", k, "distinct") for k in range(1, 4)] == ["x-train", "x-train-s2", "x-train-s3"]
    long = "a" * 50
    assert len(chain.session_slug(long, 2)) == 50 and chain.session_slug(long, 2).endswith("-b")


def test_the_kernel_names_the_same_two_kernels_the_chain_pushes_to():
    for slug, mode in (("x-train", "alternate"), ("a" * 50, "alternate"), ("x-train", "distinct")):
        cfg = parse_config({"competition": "comp-x", "kaggle_user": "alice", "datasets": {"weights": {
            "slug": "w-weights", "encrypt": True}}, "kernels": {"train": {"entry": "kernel_src/train.py",
                                                                          "slug": slug, "chain": mode}}})
        named = runtime.kernels_to_attach(cfg.model_dump(mode="json") | {"kernel": "train"})
        for session in (1, 2, 3):
            assert f"alice/{chain.session_slug(slug, session, mode)}" in named
    with pytest.raises(UserError, match="chain"):
        parse_config({"competition": "comp-x", "kaggle_user": "alice",
                      "kernels": {"train": {"entry": "kernel_src/train.py", "chain": "sometimes"}}})


def test_a_missing_secret_stops_the_bootstrap_before_anything_is_imported(tmp_path):
    config = {"kaggle_user": "alice", "kernel": "train", "kernels": {"train": {"slug": "x-train"}},
              "datasets": {"weights": {"slug": "x-weights", "encrypt": True, "key_env": "MY_KEY"},
                           "wheels": {"slug": "x-wheels"}}}
    code = ("import json, sys\nfrom kpack_runtime import bootstrap\n"
            f"try:\n    bootstrap(json.loads({json.dumps(json.dumps(config))}))\n"
            "except SystemExit as exc:\n"
            "    print(exc.code, sorted(m for m in sys.modules if m.startswith(('torch', 'kpack_runtime.'))))\n")
    env = {k: v for k, v in os.environ.items() if k != "MY_KEY"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env | {"PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "2 []", done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "[kpack] error: Kaggle secret MY_KEY is not attached to this kernel: attach it (Add-ons -> Secrets) to "
        "alice/x-train and alice/x-train-b (the two kernels its sessions alternate between)"]


@pytest.fixture
def project(local_kaggle, tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    local_kaggle.clear_faults()
    proj = make_project(tmp_path, local_kaggle, sessions=3, datasets=False, infer=True)
    monkeypatch.chdir(proj.root)
    yield proj
    kaggle_api._restore_env()


@pytest.mark.slow
def test_a_three_session_chain_alternates_between_two_kernels(project, local_kaggle):
    result = push_kernel(project.cfg(), "train", wait=True)
    slug, other = project.train_slug, f"{project.train_slug}-b"
    assert result.status == "COMPLETE"
    assert [(r.slug, r.version, r.session) for r in result.sessions] == [(slug, 1, 1), (other, 1, 2), (slug, 2, 3)]
    store = Store(local_kaggle.root)
    assert store.kernel_version("alice", other, 1)["metadata"]["kernel_data_sources"] == [f"alice/{slug}"]
    assert store.kernel_version("alice", slug, 2)["metadata"]["kernel_data_sources"] == [f"alice/{other}"]
    assert json.loads((result.output / "state.json").read_text()) == {"done": True, "session": 3}
    assert store.kernel("alice", f"{slug}-s2") is None and store.kernel("alice", f"{slug}-s3") is None
    assert push.upstream_sources(project.cfg(), "infer") == [f"alice/{slug}"]  # the last COMPLETE session


@pytest.mark.slow
def test_distinct_slugs_stay_an_option(project, local_kaggle):
    config = project.root / "kpack.yaml"
    config.write_text(config.read_text().replace("session_hours: 0.02}", "session_hours: 0.02, chain: distinct}"))
    result = push_kernel(project.cfg(), "train", wait=True)
    slug = project.train_slug
    assert [(r.slug, r.version) for r in result.sessions] == [(slug, 1), (f"{slug}-s2", 1), (f"{slug}-s3", 1)]
    assert push.upstream_sources(project.cfg(), "infer") == [f"alice/{slug}-s3"]


@pytest.mark.slow
def test_encrypted_weights_need_the_secret_on_both_kernels(local_kaggle, tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    project = make_project(tmp_path, local_kaggle, sessions=2)
    monkeypatch.chdir(project.root)
    label = "KEY_" + project.prefix.replace("-", "_")
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv(label, key)
    config = project.root / "kpack.yaml"
    config.write_text(config.read_text().replace("dir: models}", f"dir: models, encrypt: true, key_env: {label}}}"))
    slug, other = project.train_slug, f"{project.train_slug}-b"
    kpack = [sys.executable, "-m", "packager.cli", "local", "secret", "set", label, "--root", str(local_kaggle.root)]
    try:
        with pytest.raises(UserError, match=f"Kaggle secret {label} is not attached"):  # a new kernel: none yet
            push_kernel(project.cfg(), "train", wait=True)
        done = subprocess.run(kpack + ["--kernel", f"alice/{slug}"], input=key, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        with pytest.raises(UserError) as err:  # session 1 again; session 2 runs on the other kernel: no secret
            push.retry_session(project.cfg(), "train")
        line = (f"Kaggle secret {label} is not attached to this kernel: attach it (Add-ons -> Secrets) to "
                f"alice/{slug} and alice/{other}")
        assert line in str(err.value)
        log = (project.root / "runs" / other / "v1" / f"{other}.log").read_text()
        kernel = [e["data"] for e in json.loads(log) if not e["data"].startswith("kpack local runner")]
        # the script's banner (stdout) and that line (stderr), in either order: no traceback
        assert len(kernel) == 2 and any(line in k for k in kernel) and "Traceback" not in "".join(kernel), kernel
        assert [(r["session"], r["status"]) for r in ledger.read()] == [(1, "ERROR"), (1, "COMPLETE"), (2, "ERROR")]

        assert "push session 2 again with `kpack watch train --retry`" in str(err.value)
        with pytest.raises(UserError, match="ended ERROR: .*kpack watch train --retry"):
            watch_kernel(project.cfg(), "train")  # a plain watch only says so again: it pushes nothing

        done = subprocess.run(kpack + ["--kernel", f"alice/{other}"], input=key, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        result = push.retry_session(project.cfg(), "train")  # attached to both: session 2 again, not the chain
        assert result.status == "COMPLETE" and [(r.slug, r.version, r.session) for r in result.sessions] == [
            (other, 2, 2)]
        store = Store(local_kaggle.root)
        assert store.kernel_version("alice", other, 2)["metadata"]["kernel_data_sources"] == [f"alice/{slug}"]
        assert store.kernel("alice", slug)["versions"] == [1, 2]  # session 1 (v2) was not trained a third time
        assert json.loads((result.output / "state.json").read_text()) == {"done": True, "session": 2}
        with pytest.raises(UserError, match="nothing to retry: .* is COMPLETE"):
            push.retry_session(project.cfg(), "train")
    finally:
        kaggle_api._restore_env()


# --------------------------------------------------------------------------------------------- sources

def _cli_env(local_kaggle, tmp_path):
    home = tmp_path / "cli-home"
    (home / ".kaggle").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k.lower() not in
           ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    return env | {"HOME": str(home), "KAGGLE_CONFIG_DIR": str(home / ".kaggle")} | local_kaggle.env("alice")


def _push_over(local_kaggle, tmp_path, slug: str, code: str) -> None:
    """Someone pushes the chain's kernel again, by hand (the kaggle CLI), while the chain waits."""
    folder = tmp_path / "by-hand"
    folder.mkdir(exist_ok=True)
    (folder / "k.py").write_text(code)
    (folder / "kernel-metadata.json").write_text(json.dumps({
        "id": f"alice/{slug}", "title": slug.replace("-", " ").title(), "code_file": "k.py", "language": "python",
        "kernel_type": "script", "enable_internet": False}))
    done = subprocess.run([KAGGLE, "kernels", "push", "-p", str(folder)], env=_cli_env(local_kaggle, tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "error" not in done.stdout.lower(), done.stdout + done.stderr


def _save_kernel_calls(local_kaggle) -> int:
    return local_kaggle.stats()["calls"].get("SaveKernel", 0)


@pytest.mark.slow
def test_a_previous_kernel_pushed_again_stops_the_chain_before_pushing(project, local_kaggle, tmp_path):
    slug = project.train_slug
    first = push_kernel(project.cfg(), "train", wait=False).ref
    local_kaggle.wait_kernel("alice", slug, first.version)
    _push_over(local_kaggle, tmp_path, slug, "print('another run')\n")
    local_kaggle.reset_stats()
    for _ in range(2):  # and again: `kpack watch` never pushes a session that could not see the checkpoint
        with pytest.raises(UserError, match=f"not pushing session 2: alice/{slug} was pushed again since session 1 "
                                            r"\(its newest version is v2, the session was v1\)"):
            watch_kernel(project.cfg(), "train")
    assert _save_kernel_calls(local_kaggle) == 0
    assert Store(local_kaggle.root).kernel("alice", f"{slug}-b") is None


@pytest.mark.slow
def test_a_session_made_without_its_source_is_marked_and_never_pushed_again(project, local_kaggle, tmp_path,
                                                                            monkeypatch):
    slug = project.train_slug
    monkeypatch.setattr(push, "_check_chain_source", lambda *a: None)  # the push races the hand-made version
    first = push_kernel(project.cfg(), "train", wait=False).ref
    local_kaggle.wait_kernel("alice", slug, first.version)
    _push_over(local_kaggle, tmp_path, slug, "import time\ntime.sleep(60)\n")  # v2 RUNNING: not mountable
    local_kaggle.wait_kernel("alice", slug, 2, until=("RUNNING",))
    try:
        with pytest.raises(UserError) as err:
            watch_kernel(project.cfg(), "train")
        message = str(err.value)
        assert f"session 2 (alice/{slug}-b v1) was made without session 1's output" in message
        assert f"alice/{slug}: its newest version v2 is RUNNING, not COMPLETE" in message
        assert "kpack.yaml" not in message and "kpack push train" in message
        row = ledger.latest(base_slug=slug)
        assert (row["kernel"], row["version"], row["session"], row["status"]) == (
            f"alice/{slug}-b", 1, 2, "SOURCES_INVALID")
        local_kaggle.reset_stats()
        for _ in range(2):
            with pytest.raises(UserError, match="was made without session 1's output"):
                watch_kernel(project.cfg(), "train")
        assert _save_kernel_calls(local_kaggle) == 0
    finally:
        local_kaggle.admin("POST", "/_kpack/cancel", {"kernel": f"alice/{slug}", "version": 2})


@pytest.mark.slow
def test_infer_names_the_kernel_source_that_is_not_complete(project, local_kaggle, tmp_path):
    slug = project.train_slug
    push_kernel(project.cfg(), "train", wait=True)             # sessions on slug v1, slug-b v1, slug v2
    _push_over(local_kaggle, tmp_path, slug, "import time\ntime.sleep(60)\n")   # slug v3, RUNNING
    local_kaggle.wait_kernel("alice", slug, 3, until=("RUNNING",))
    try:
        with pytest.raises(UserError) as err:
            push_kernel(project.cfg(), "infer", wait=True)
        message = str(err.value)
        assert f"alice/{slug}: its newest version v3 is RUNNING, not COMPLETE (Kaggle mounts only that one)" in message
        assert "wait for that kernel to end COMPLETE, then push again" in message and "kpack.yaml" not in message
    finally:
        local_kaggle.admin("POST", "/_kpack/cancel", {"kernel": f"alice/{slug}", "version": 3})
