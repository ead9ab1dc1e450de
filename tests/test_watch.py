"""`kpack status` and `kpack output` against the local Kaggle: status per version (never an older run's),
non-zero exit on ERROR with the failure message, outputs in runs/<slug>/v<N>/."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from packager import kaggle_api, watch
from packager.errors import UserError
from packager.push import push_kernel
from pushkit import FAIL_ENTRY, project  # noqa: F401 (project: a fixture)

KPACK = str(Path(sys.executable).parent / "kpack")


def pushed(project, local_kaggle, entry=None) -> int:
    if entry:
        project.write_entry(entry)
    version = push_kernel(project.cfg(), "train", wait=False).ref.version
    local_kaggle.wait_kernel("alice", project.train_slug, version)
    return version


def test_resolve_names():
    from packager.config import parse_config

    cfg = parse_config({"competition": "digits-multilabel", "kaggle_user": "alice",
                        "kernels": {"train": {"entry": "kernel_src/train.py"}}})
    assert watch.resolve(cfg, "alice/some-kernel/3") == watch.KernelRef("alice", "some-kernel", 3)
    assert watch.resolve(cfg, "alice/some-kernel") == watch.KernelRef("alice", "some-kernel")
    assert watch.resolve(cfg, "train", 2) == watch.KernelRef("alice", "digits-multilabel-train", 2, "train")
    with pytest.raises(UserError, match="owner/slug"):
        watch.resolve(cfg, "nonsense")


def test_status_of_each_version_and_error_exit(project, local_kaggle, capsys):
    good = pushed(project, local_kaggle)
    bad = pushed(project, local_kaggle, FAIL_ENTRY)
    cfg = project.cfg()
    with pytest.raises(UserError) as err:
        watch.show_status(cfg, "train")           # the latest: v2, which failed
    assert err.value.exit_code == 1 and "the model diverged" in str(err.value)
    out = capsys.readouterr().out
    assert f"v{bad}: ERROR" in out and "failure message: " in out and "the model diverged" in out
    # an older version is asked for by number, and answered for that version, not the latest
    assert watch.show_status(cfg, f"alice/{project.train_slug}/{good}") == "COMPLETE"


def test_a_version_the_server_does_not_list_yet_is_pending(project, local_kaggle):
    version = pushed(project, local_kaggle)
    api = kaggle_api.connect(project.cfg())
    ref = watch.KernelRef("alice", project.train_slug, version + 1)
    assert watch.status_of(api, ref) == ("PENDING", "")   # not the COMPLETE of the older run


def test_cli_status_exits_non_zero_on_error(project, local_kaggle):
    pushed(project, local_kaggle, FAIL_ENTRY)
    kaggle_api._restore_env()
    done = subprocess.run([KPACK, "status", "train"], cwd=project.root, env=dict(os.environ), text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "ERROR" in done.stdout and "the model diverged" in done.stdout + done.stderr


def test_output_lands_in_runs(project, local_kaggle):
    first = pushed(project, local_kaggle)
    pushed(project, local_kaggle)
    cfg = project.cfg()
    path = watch.download_output(cfg, "train", first)
    assert path == Path("runs") / project.train_slug / f"v{first}"
    assert (path / "state.json").is_file() and (path / "sub" / "note.txt").is_file()
    (path / "stale.txt").write_text("from an earlier download")
    again = watch.download_output(cfg, f"alice/{project.train_slug}")   # latest: v2, a fresh folder
    assert again.name == "v2" and (again / "metrics.json").is_file()
    assert watch.download_output(cfg, "train", first) == path and not (path / "stale.txt").exists()
    leftovers = [p for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    with pytest.raises(UserError, match="not found"):
        watch.download_output(cfg, "train", 99)


def test_cli_output(project, local_kaggle):
    version = pushed(project, local_kaggle)
    kaggle_api._restore_env()
    done = subprocess.run([KPACK, "output", "train", "-v", str(version)], cwd=project.root, env=dict(os.environ),
                          text=True, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"runs/{project.train_slug}/v{version}")
    assert (project.root / "runs" / project.train_slug / f"v{version}" / "state.json").is_file()


@pytest.fixture
def no_current_version(local_kaggle):
    """The server's GetKernel answers leave currentVersionNumber out (Kaggle fills it today)."""
    local_kaggle.admin("POST", "/_kpack/omit", {"method": "GetKernel", "fields": ["currentVersionNumber"]})
    yield
    local_kaggle.admin("POST", "/_kpack/omit", {"method": "GetKernel", "fields": []})


def test_an_answer_without_the_current_version_does_not_poll_forever(project, local_kaggle, no_current_version,
                                                                      capsys):
    version = pushed(project, local_kaggle)
    api = kaggle_api.connect(project.cfg())
    ref = watch.KernelRef("alice", project.train_slug, version)
    outcome = watch.wait_for(api, ref, timeout_s=20)   # before: PENDING until the timeout, forever without one
    assert outcome.status == "COMPLETE"
    out = capsys.readouterr().out
    assert out.count("has no currentVersionNumber; following v1 by its own status") == 1, out
    with pytest.raises(UserError, match=r"names no current version \(currentVersionNumber\); name the version: "
                                        f"kpack status alice/{project.train_slug}/N"):
        watch.show_status(project.cfg(), f"alice/{project.train_slug}")
    assert watch.show_status(project.cfg(), f"alice/{project.train_slug}/{version}") == "COMPLETE"


@pytest.fixture
def short_retries(monkeypatch, local_kaggle):
    monkeypatch.setattr(kaggle_api, "policy", kaggle_api.RetryPolicy(attempts=2, base_s=0.05))
    local_kaggle.clear_faults()
    yield
    local_kaggle.clear_faults()


def test_a_watch_waits_out_kaggle_out_of_reach(project, local_kaggle, short_retries, capsys):
    """A 503 spell longer than one call's retries (two calls' worth here): the kernel runs on regardless, so the
    watch says Kaggle is out of reach, keeps polling and follows the run to its end, instead of stopping."""
    version = pushed(project, local_kaggle)
    local_kaggle.faults({"method": "GetKernelSessionStatus", "kind": "503", "times": 4})
    api = kaggle_api.connect(project.cfg())
    outcome = watch.wait_for(api, watch.KernelRef("alice", project.train_slug, version), max_delay_s=0.1)
    assert outcome.status == "COMPLETE"
    out = capsys.readouterr().out
    assert f"alice/{project.train_slug} v{version}: waiting for the kernel to end (Kaggle out of reach: status of " \
           f"alice/{project.train_slug} v{version} failed after 2 attempts: HTTP 503" in out, out
    assert "Kaggle answers again, after" in out and "COMPLETE" in out
    assert local_kaggle.stats()["faults_fired"]["GetKernelSessionStatus:503"] == 4


def test_an_outage_longer_than_the_offline_wait_stops_the_watch(project, local_kaggle, short_retries,
                                                                 monkeypatch):
    version = pushed(project, local_kaggle)
    monkeypatch.setattr(watch, "OFFLINE_WAIT_S", 0.0)
    local_kaggle.faults({"method": "GetKernelSessionStatus", "kind": "503", "times": 0})
    api = kaggle_api.connect(project.cfg())
    with pytest.raises(kaggle_api.KaggleCallError, match="failed after 2 attempts: HTTP 503") as err:
        watch.wait_for(api, watch.KernelRef("alice", project.train_slug, version), max_delay_s=0.1)
    assert err.value.exhausted


def test_a_refused_request_is_no_outage(project, local_kaggle, short_retries):
    """A 4xx says the request itself is wrong: waiting would not mend it."""
    version = pushed(project, local_kaggle)
    local_kaggle.faults({"method": "GetKernelSessionStatus", "kind": "403", "times": 0})
    api = kaggle_api.connect(project.cfg())
    with pytest.raises(kaggle_api.KaggleCallError, match="HTTP 403") as err:
        watch.wait_for(api, watch.KernelRef("alice", project.train_slug, version), max_delay_s=0.1)
    assert not err.value.exhausted


def test_the_local_kaggle_gone_stops_the_watch_in_one_line(tmp_path, monkeypatch):
    """The local Kaggle ran the session: once it stops answering nothing comes back by waiting, so the watch
    ends in one line naming it, not after a 12 h wait."""
    from conftest import LocalKaggleServer
    from pushkit import isolate, make_project

    server = LocalKaggleServer(tmp_path / "root", None, 0, 120).start()
    try:
        isolate(monkeypatch, tmp_path)
        monkeypatch.setattr(kaggle_api, "policy", kaggle_api.RetryPolicy(attempts=2, base_s=0.05))
        project = make_project(tmp_path, server, datasets=False)
        project.write_entry("import time\n\n\ndef main(config):\n    time.sleep(60)\n")
        monkeypatch.chdir(project.root)
        ref = push_kernel(project.cfg(), "train", wait=False).ref
        api = kaggle_api.connect(project.cfg())
        server.stop()
        with pytest.raises(kaggle_api.KaggleCallError) as err:
            watch.wait_for(api, ref, max_delay_s=0.1)
    finally:
        server.stop()
        kaggle_api._restore_env()
    assert f"the local Kaggle (http://127.0.0.1:{server.port}) does not answer; any kpack command starts it " \
           "again" in str(err.value), err.value


def test_looking_at_a_run_before_any_push_says_what_to_push(project):
    status = subprocess.run([KPACK, "status", "train"], cwd=project.root, capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and status.stderr == (
        f"error: kernel alice/{project.train_slug} not found on the local Kaggle; push it first: kpack push train\n")
    report = subprocess.run([KPACK, "report", "train"], cwd=project.root, capture_output=True, text=True, timeout=60)
    assert report.returncode == 2 and report.stderr == (
        "error: no train run in runs/ledger.jsonl on the local backend yet; push one first: kpack push train\n")
