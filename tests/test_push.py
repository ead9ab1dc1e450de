"""The push pipeline against the local Kaggle: first push, unchanged re-push (0 bytes), code-only change,
a deleted remote dataset, session chaining, failure handling, secrets, notifications and the ledger."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from packager import kaggle_api, ledger, watch
from packager.errors import UserError
from packager.push import push_kernel, watch_kernel
from pushkit import FAIL_ENTRY, CHAIN_ENTRY, TelegramStub, isolate, make_project

SECRET = "s3cr3t-kaggle-key-value-0123456789"


@pytest.fixture
def project(local_kaggle, tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    local_kaggle.clear_faults()
    proj = make_project(tmp_path, local_kaggle)
    monkeypatch.chdir(proj.root)
    yield proj
    kaggle_api._restore_env()
    local_kaggle.clear_faults()


@pytest.fixture
def telegram(monkeypatch):
    stub = TelegramStub()
    monkeypatch.setenv("KPACK_TELEGRAM_API", stub.url)
    monkeypatch.setenv("T_TOKEN", "999:telegram-token-secret")
    monkeypatch.setenv("T_CHAT", "4242")
    yield stub
    stub.close()


@pytest.mark.slow
def test_push_then_unchanged_then_code_only(project, local_kaggle, telegram):
    weights = sum(p.stat().st_size for p in (project.root / "models").iterdir())

    local_kaggle.reset_stats()
    first = push_kernel(project.cfg(), "train", wait=True)
    stats = local_kaggle.stats()
    assert first.status == "COMPLETE" and first.ref.version == 1
    assert stats["uploaded_bytes"] >= weights  # the weights and their manifest went up
    out = project.root / "runs" / project.train_slug / "v1"
    assert first.output.resolve() == out.resolve()
    assert json.loads((out / "state.json").read_text())["done"] is True
    assert (out / "sub" / "note.txt").read_text() == "rev1\n"  # nested output names make folders
    assert (out / f"{project.train_slug}.log").is_file()
    assert any("COMPLETE" in t for t in telegram.texts())

    local_kaggle.reset_stats()
    again = push_kernel(project.cfg(), "train", wait=False)
    stats = local_kaggle.stats()
    assert stats["uploaded_bytes"] == 0
    assert "StartBlobUpload" not in stats["calls"] and "CreateDatasetVersion" not in stats["calls"]
    assert stats["calls"]["SaveKernel"] == 1 and again.ref.version == 2
    assert project.dataset()["versions"] == [1]
    local_kaggle.wait_kernel("alice", project.train_slug, 2)

    project.write_entry(CHAIN_ENTRY.format(sessions=1, mark="rev2"))
    local_kaggle.reset_stats()
    changed = push_kernel(project.cfg(), "train", wait=True)
    stats = local_kaggle.stats()
    assert stats["uploaded_bytes"] == 0 and stats["calls"]["SaveKernel"] == 1
    assert changed.ref.version == 3 and project.dataset()["versions"] == [1]
    assert (changed.output / "sub" / "note.txt").read_text() == "rev2\n"

    rows = [r for r in ledger.read() if r["kernel"] == f"alice/{project.train_slug}"]
    assert [(r["version"], r["status"]) for r in rows] == [(1, "COMPLETE"), (2, "QUEUED"), (3, "COMPLETE")]
    assert rows[0]["cv_score"] == pytest.approx(0.51) and rows[0]["config_hash"]


def test_changed_weights_make_one_new_version(project, local_kaggle):
    push_kernel(project.cfg(), "train", wait=False)
    (project.root / "models" / "head.tiny.pth").write_bytes(b"new head" * 1000)
    local_kaggle.reset_stats()
    push_kernel(project.cfg(), "train", wait=False)
    stats = local_kaggle.stats()
    assert 8000 <= stats["uploaded_bytes"] and stats["calls"]["CreateDatasetVersion"] == 1
    assert project.dataset()["versions"] == [1, 2]
    pushed = json.loads((project.root / "build" / "datasets" / project.weights_slug / "pushed.json").read_text())
    assert [r["version"] for r in pushed.values()] == [2]


def test_deleted_remote_dataset_is_created_again(project, local_kaggle):
    from packager.localkaggle.store import Store

    push_kernel(project.cfg(), "train", wait=False)
    local_kaggle.wait_kernel("alice", project.train_slug, 1)
    shutil.rmtree(Store(local_kaggle.root).dataset_dir("alice", project.weights_slug))
    local_kaggle.reset_stats()
    push_kernel(project.cfg(), "train", wait=False)
    assert local_kaggle.stats()["calls"].get("CreateDataset") == 1
    assert project.dataset()["versions"] == [1]


@pytest.mark.slow
def test_chain_of_two_sessions(local_kaggle, tmp_path, monkeypatch, telegram):
    isolate(monkeypatch, tmp_path)
    project = make_project(tmp_path, local_kaggle, sessions=2)
    monkeypatch.chdir(project.root)
    try:
        result = push_kernel(project.cfg(), "train", wait=True)
    finally:
        kaggle_api._restore_env()
    assert result.status == "COMPLETE"
    assert [(r.slug, r.version, r.session) for r in result.sessions] == [
        (project.train_slug, 1, 1), (f"{project.train_slug}-b", 1, 2)]
    second = project.kernel_versions(f"{project.train_slug}-b")[0]
    assert second["metadata"]["kernel_data_sources"] == [f"alice/{project.train_slug}"]
    state = json.loads((result.output / "state.json").read_text())
    assert state == {"done": True, "session": 2}
    rows = [r for r in ledger.read() if r.get("base_slug") == project.train_slug]
    assert [(r["session"], r["status"]) for r in rows] == [(1, "COMPLETE"), (2, "COMPLETE")]
    assert len(telegram.received) == 2


@pytest.fixture
def chain_project(local_kaggle, tmp_path, monkeypatch):
    """A project whose train kernel needs two sessions."""
    isolate(monkeypatch, tmp_path)
    project = make_project(tmp_path, local_kaggle, sessions=2)
    monkeypatch.chdir(project.root)
    yield project
    kaggle_api._restore_env()


def chain_rows(project) -> list[tuple]:
    return [(r["session"], r["status"]) for r in ledger.read() if r.get("base_slug") == project.train_slug]


@pytest.mark.slow
def test_watch_follows_a_no_wait_push_and_goes_on_with_the_chain(chain_project):
    push_kernel(chain_project.cfg(), "train", wait=False)
    result = watch_kernel(chain_project.cfg(), "train")
    assert result.status == "COMPLETE" and json.loads((result.output / "state.json").read_text())["done"]
    assert [(r.slug, r.session) for r in result.sessions] == [
        (chain_project.train_slug, 1), (f"{chain_project.train_slug}-b", 2)]
    assert chain_rows(chain_project) == [(1, "COMPLETE"), (2, "COMPLETE")]
    built = chain_project.root / "build" / "kernels" / chain_project.train_slug / f"{chain_project.train_slug}.py"
    assert {r["script_sha256"] for r in ledger.read()} == {hashlib.sha256(built.read_bytes()).hexdigest()}


@pytest.mark.slow
def test_watch_goes_on_from_a_session_whose_end_is_recorded(chain_project):
    """The watcher was stopped right after session 1 ended and was recorded, before session 2 was pushed."""
    from packager import push

    cfg = chain_project.cfg()
    first = push_kernel(cfg, "train", wait=False)
    push.watch_session(kaggle_api.connect(cfg), cfg, first.ref, chain_project.train_slug)
    assert chain_rows(chain_project) == [(1, "COMPLETE")]
    assert watch_kernel(cfg, "train").status == "COMPLETE"
    assert chain_rows(chain_project) == [(1, "COMPLETE"), (2, "COMPLETE")]


@pytest.mark.slow
def test_a_watch_that_loses_kaggle_says_so_and_kpack_watch_goes_on(chain_project, local_kaggle, telegram,
                                                                    monkeypatch):
    cfg = chain_project.cfg()
    push_kernel(cfg, "train", wait=False)
    monkeypatch.setattr(kaggle_api.policy, "attempts", 2)
    monkeypatch.setattr(kaggle_api.policy, "base_s", 0.01)
    monkeypatch.setattr(watch, "OFFLINE_WAIT_S", 0.0)  # out of reach for longer than the watch waits
    local_kaggle.faults({"method": "GetKernel", "kind": "503", "times": 0})  # Kaggle out of reach
    try:
        with pytest.raises(UserError) as err:
            watch_kernel(cfg, "train")
    finally:
        local_kaggle.clear_faults()
    assert "may still be running: go on following it (and its chain) with: kpack watch train" in str(err.value)
    assert any("FAILED" in t and "kpack watch train" in t for t in telegram.texts())
    assert watch_kernel(cfg, "train").status == "COMPLETE"
    assert chain_rows(chain_project)[-2:] == [(1, "COMPLETE"), (2, "COMPLETE")]


@pytest.mark.slow
def test_infer_warns_when_train_stopped_mid_chain(local_kaggle, tmp_path, monkeypatch, capsys):
    from packager import push

    isolate(monkeypatch, tmp_path)
    project = make_project(tmp_path, local_kaggle, sessions=2, infer=True)
    monkeypatch.chdir(project.root)
    try:
        cfg = project.cfg()
        first = push_kernel(cfg, "train", wait=False)
        push.watch_session(kaggle_api.connect(cfg), cfg, first.ref, project.train_slug)  # session 1 of 2 ended
        capsys.readouterr()
        assert push.upstream_sources(cfg, "infer") == [f"alice/{project.train_slug}"]
        assert (f"warning: alice/{project.train_slug} stopped mid-training (its state.json says not done): infer "
                "reads that checkpoint; for the final model, let the chain finish first (kpack watch train)"
                in capsys.readouterr().out)
        watch_kernel(cfg, "train")
        capsys.readouterr()
        assert push.upstream_sources(cfg, "infer") == [f"alice/{project.train_slug}-b"]
        assert "warning" not in capsys.readouterr().out
    finally:
        kaggle_api._restore_env()


def test_a_push_beside_a_running_one_warns(chain_project, capsys):
    cfg = chain_project.cfg()
    chain_project.write_entry("import time\n\n\ndef main(config):\n    time.sleep(8)\n")
    first = push_kernel(cfg, "train", wait=False)
    chain_project.write_entry(CHAIN_ENTRY.format(sessions=1, mark="a fix"))
    capsys.readouterr()
    push_kernel(cfg, "train", wait=False)
    out = capsys.readouterr().out
    assert f"warning: {first.ref.ref} v1 (session 1 of the last train push) is still " in out, out
    assert "this push starts another run beside it" in out and "kpack watch train" in out


def test_watch_refuses_an_empty_ledger_and_a_rebuilt_script(chain_project):
    from packager.build import build_kernel

    cfg = chain_project.cfg()
    with pytest.raises(UserError, match=f"has no run of {chain_project.train_slug} on the local backend; "
                                        "start one with: kpack push train"):
        watch_kernel(cfg, "train")
    push_kernel(cfg, "train", wait=False)
    chain_project.write_entry(CHAIN_ENTRY.format(sessions=2, mark="edited after the push"))
    build_kernel(cfg, "train")
    with pytest.raises(UserError, match=r"not the script .* runs \(rebuilt since, or missing\); the next session "
                                        "must run the same code"):
        watch_kernel(cfg, "train")


# Session 1 trains three steps; every later session finds no time to train and leaves the step where it was.
STALLED_ENTRY = '''import json
import os
from pathlib import Path


def main(config):
    root = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle")
    earlier = sorted((root / "input").rglob("state.json")) if (root / "input").is_dir() else []
    session = 1 + len(earlier)
    (root / "working" / "state.json").write_text(json.dumps({"done": False, "step": 3, "epoch": 0,
                                                            "session": session}))
'''


@pytest.mark.slow
def test_chain_stops_when_a_session_makes_no_progress(project, local_kaggle, telegram):
    project.write_entry(STALLED_ENTRY)
    with pytest.raises(UserError) as err:
        push_kernel(project.cfg(), "train", wait=True)
    assert str(err.value) == ("train: session 2 ended without a training step (step 3): start-up left no time to "
                              "train; raise kernels.train.session_hours")
    rows = [r for r in ledger.read() if r.get("base_slug") == project.train_slug]
    assert [(r["session"], r["status"]) for r in rows] == [(1, "COMPLETE"), (2, "COMPLETE")]
    assert any("FAILED" in t and "without a training step" in t for t in telegram.texts())


# Uses the weights the way a kit does: prepare() finds, decrypts and verifies them; the kernel then reports
# each file's sha256 as it reads it, and where it was found.
WEIGHTS_ENTRY = '''import hashlib
import json
import os
from pathlib import Path

from kpack_runtime import weights


def main(config):
    paths = weights.prepare(config)
    work = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle") / "working"
    seen = {name: [hashlib.sha256(path.read_bytes()).hexdigest(), str(path)] for name, path in paths.items()}
    (work / "weights.json").write_text(json.dumps(seen))
    (work / "state.json").write_text(json.dumps({"done": True}))
'''


@pytest.mark.slow
def test_encrypted_weights_open_in_the_kernel_with_the_users_secret(project, local_kaggle, monkeypatch):
    from packager.localkaggle.store import Store

    label = "KEY_" + project.prefix.replace("-", "_")  # this test's own secret: the server is shared
    key_text = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv(label, key_text)
    config = project.root / "kpack.yaml"
    config.write_text(config.read_text().replace("dir: models}", f"dir: models, encrypt: true, key_env: {label}}}"))
    project.write_entry(WEIGHTS_ENTRY)
    Store(local_kaggle.root).set_secret("alice", label, key_text, project.train_slug)

    result = push_kernel(project.cfg(), "train", wait=True)
    assert result.status == "COMPLETE"
    seen = json.loads((result.output / "weights.json").read_text())
    plain = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (project.root / "models").iterdir()}
    assert {name: digest for name, (digest, _) in seen.items()} == plain
    assert all("/temp/weights/" in where and "/working/" not in where for _, where in seen.values())
    assert sorted(p.name for p in result.output.rglob("*") if p.is_file()) == sorted(
        ["state.json", "weights.json", f"{project.train_slug}.log", f"{project.train_slug}.txt", "report.html"])  # no plaintext weights in the output
    for path in result.output.rglob("*"):
        assert not path.is_file() or key_text not in path.read_text(errors="replace")

    Store(local_kaggle.root).set_secret("alice", label, base64.b64encode(os.urandom(32)).decode(), project.train_slug)
    with pytest.raises(UserError, match="sealed with another key"):  # the kernel stops at the first file
        push_kernel(project.cfg(), "train", wait=True)


@pytest.mark.slow
def test_failed_session_stops_with_failure_message(project, local_kaggle, telegram, capsys):
    project.write_entry(FAIL_ENTRY)
    with pytest.raises(UserError) as err:
        push_kernel(project.cfg(), "train", wait=True)
    assert err.value.exit_code == 1 and "ERROR" in str(err.value)
    assert "the model diverged" in str(err.value)
    assert str(err.value).endswith("once its cause is fixed, push it again: `kpack push train` (the code fixed) or "
                                   "`kpack watch train --retry` (a secret attached, the quota refreshed)")
    row = ledger.latest(kernel=f"alice/{project.train_slug}")
    assert row["status"] == "ERROR" and "the model diverged" in row["failure"]
    assert any("FAILED" in t and "the model diverged" in t for t in telegram.texts())
    log = project.root / "runs" / project.train_slug / "v1" / f"{project.train_slug}.log"
    assert "RuntimeError" in log.read_text()


@pytest.mark.slow
def test_no_secret_reaches_the_ledger(project, local_kaggle, telegram, monkeypatch):
    monkeypatch.setenv("MY_API_TOKEN", SECRET)
    push_kernel(project.cfg(), "train", wait=True)
    text = (project.root / "runs" / "ledger.jsonl").read_text()
    env = local_kaggle.env("alice")
    for value in (SECRET, env["KAGGLE_KEY"], env["KAGGLE_API_TOKEN"], "telegram-token-secret"):
        assert value not in text


def test_secret_in_the_sources_blocks_every_upload(project, local_kaggle, monkeypatch):
    monkeypatch.setenv("MY_API_TOKEN", SECRET)
    (project.root / "kernel_src" / "leak.py").write_text(f'KEY = "{SECRET}"\n')
    local_kaggle.reset_stats()
    with pytest.raises(UserError, match="holds a secret value"):
        push_kernel(project.cfg(), "train", wait=True)
    calls = local_kaggle.stats()["calls"]
    assert not {"SaveKernel", "StartBlobUpload", "CreateDataset"} & set(calls)
    assert project.kernel_versions() == [] and project.dataset() is None


@pytest.mark.slow
def test_weights_are_scanned_when_they_go_up_and_not_when_the_server_holds_them(project, local_kaggle,
                                                                                monkeypatch):
    push_kernel(project.cfg(), "train", wait=False)
    weights = project.root / "models" / "backbone.tiny.pth"
    # a key whose bytes the weights happen to hold: the scan looks for a hex key's raw bytes in binary files
    monkeypatch.setenv("MY_API_TOKEN", weights.read_bytes()[1000:1016].hex())
    project.write_entry(CHAIN_ENTRY.format(sessions=1, mark="rev2"))
    local_kaggle.reset_stats()
    push_kernel(project.cfg(), "train", wait=False)  # code only: the weights already on the server are not read
    assert local_kaggle.stats()["uploaded_bytes"] < 100_000 and project.dataset()["versions"] == [1]

    with weights.open("ab") as f:  # changed weights go up, so they are scanned, before anything is uploaded
        f.write(b"more")
    project.write_entry(CHAIN_ENTRY.format(sessions=1, mark="rev3"))
    local_kaggle.reset_stats()
    with pytest.raises(UserError, match=r"backbone\.tiny\.pth: holds a secret value"):
        push_kernel(project.cfg(), "train", wait=False)
    assert not {"SaveKernel", "StartBlobUpload", "CreateDatasetVersion"} & set(local_kaggle.stats()["calls"])
    assert project.dataset()["versions"] == [1] and len(project.kernel_versions()) == 2


def test_refused_push_is_one_error(project, local_kaggle):
    cfg = project.cfg()
    cfg.kernels["train"].sources.datasets.append("alice/no-such-dataset")
    with pytest.raises(UserError) as err:
        push_kernel(cfg, "train", wait=False)
    # refused by the pre-upload source check: nothing went up (Kaggle would only drop the source after the push)
    assert ("kernels.train.sources: not on the local Kaggle (or not visible to alice): dataset alice/no-such-dataset; "
            "fix the name or create it first") in str(err.value)
    assert err.value.exit_code == 2 and "\n" not in str(err.value)
    assert project.dataset() is None and project.kernel_versions() == []


# --------------------------------------------------------------------------------------------- submit

@pytest.fixture
def with_infer(local_kaggle, tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    local_kaggle.clear_faults()
    proj = make_project(tmp_path, local_kaggle, datasets=False, infer=True)
    monkeypatch.chdir(proj.root)
    yield proj
    kaggle_api._restore_env()
    local_kaggle.clear_faults()


@pytest.mark.slow
def test_submit_latest_complete_infer_and_record_score(with_infer, local_kaggle):
    from packager.submit import submit

    proj = with_infer
    good = push_kernel(proj.cfg(), "infer", wait=True)
    proj.write_entry(FAIL_ENTRY, "infer_entry.py")
    with pytest.raises(UserError):
        push_kernel(proj.cfg(), "infer", wait=True)              # v2 fails: not submittable
    local_kaggle.reset_stats()
    local_kaggle.faults({"method": "CreateCodeSubmission", "kind": "drop", "when": "after"})
    result = submit(proj.cfg(), "first try")
    assert (result["kernel"], result["version"]) == (good.ref.ref, 1)
    assert result["public_score"] == pytest.approx(1.0) and result["private_score"] == pytest.approx(0.5)
    row = ledger.latest(kernel=good.ref.ref, version=1)
    assert row["lb_score"] == pytest.approx(1.0) and row["submission_status"] == "COMPLETE"
    from packager.localkaggle.store import Store
    made = [s for s in Store(local_kaggle.root).submissions(f"{proj.prefix}-comp")]
    assert len(made) == 1, "the lost answer must not make a second submission"
    assert local_kaggle.stats()["faults_fired"].get("CreateCodeSubmission:drop") == 1

    # `kpack scores` brings a row left pending (submit stopped waiting) up to date from ListSubmissions
    match = {"kernel": good.ref.ref, "version": 1, "backend": "local"}
    ledger.update(match, {"lb_score": None, "private_score": None, "submission_status": "PENDING"})
    done = subprocess.run([sys.executable, "-m", "packager.cli", "scores"], cwd=proj.root, capture_output=True,
                          text=True)
    assert done.returncode == 0 and done.stdout.strip() == "1 ledger row(s) updated with leaderboard scores"
    row = ledger.latest(kernel=good.ref.ref, version=1)
    assert row["lb_score"] == pytest.approx(1.0) and row["private_score"] == pytest.approx(0.5)
    assert row["submission_status"] == "COMPLETE"


@pytest.mark.slow
def test_a_submission_answer_without_a_ref_is_not_a_refusal(with_infer, local_kaggle, capsys):
    from packager.submit import submit

    good = push_kernel(with_infer.cfg(), "infer", wait=True)
    local_kaggle.admin("POST", "/_kpack/omit", {"method": "CreateCodeSubmission", "fields": ["ref"]})
    try:
        result = submit(with_infer.cfg(), "no ref in the answer")
    finally:
        local_kaggle.admin("POST", "/_kpack/omit", {"method": "CreateCodeSubmission", "fields": []})
    assert result["public_score"] == pytest.approx(1.0) and result["ref"]
    assert "the answer named no ref; found it in the competition's submissions" in capsys.readouterr().out
    assert ledger.latest(kernel=good.ref.ref, version=1)["submission_ref"] == result["ref"]


def test_submit_without_a_complete_infer_is_one_error(with_infer):
    from packager.submit import submit

    with pytest.raises(UserError, match="no infer kernel .*; push it first: kpack push infer"):
        submit(with_infer.cfg(), None)


def test_connect_after_the_client_was_imported_for_production(project, local_kaggle):
    """The client reads its environment at import: a process that imported it for kaggle.com first still
    reaches the local Kaggle, and a later connect to kaggle.com does not keep the local proxy."""
    import os
    import subprocess
    import sys

    kaggle_api._restore_env()
    script = (
        "import os\n"
        "from kaggle.api.kaggle_api_extended import KaggleApi\n"
        "assert '--local' not in KaggleApi.args\n"
        "from packager import kaggle_api\n"
        "from packager.config import load_config\n"
        "cfg = load_config('kpack.yaml')\n"
        "api = kaggle_api.connect(cfg)\n"
        "assert api.args == ['--local'], api.args\n"
        "print('status', kaggle_api.current_kernel_version(api, 'alice', 'no-such-kernel'))\n"
        "kaggle_api._restore_env()\n"
        "assert 'HTTP_PROXY' not in os.environ and 'KAGGLE_API_TOKEN' not in os.environ\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and "proxy" not in k.lower()}
    env["KAGGLE_CONFIG_DIR"] = os.environ["KAGGLE_CONFIG_DIR"]
    done = subprocess.run([sys.executable, "-c", script], cwd=project.root, env=env, text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "status None" in done.stdout


def test_demo_competition_is_made_once(tmp_path, monkeypatch):
    from packager.config import parse_config
    from packager.demo import ensure_competition
    from packager.localkaggle.store import Store

    monkeypatch.chdir(tmp_path)
    cfg = parse_config({"competition": "digits-multilabel", "kaggle_user": "alice",
                        "local": {"root": str(tmp_path / "lk")}, "kernels": {"train": {"entry": "kernel_src/x.py"}}})
    assert ensure_competition(cfg) is True
    made = Store(tmp_path / "lk").competition("digits-multilabel")
    assert made and made["code"] is True
    assert ensure_competition(cfg) is False


def test_demo_session_steps_reach_the_kit_and_a_bad_value_is_one_error(monkeypatch, capsys):
    from packager.config import parse_config
    from packager.demo import with_short_train_sessions

    cfg = parse_config({"competition": "comp", "kaggle_user": "alice", "kit": {"session": {"margin_seconds": 30}},
                        "kernels": {"train": {"entry": "kernel_src/x.py"}}})
    monkeypatch.setenv("KPACK_DEMO_SESSION_STEPS", "7")
    assert with_short_train_sessions(cfg).kit["session"] == {"margin_seconds": 30, "max_steps": 7}
    assert cfg.kit["session"] == {"margin_seconds": 30}  # the loaded config is left as it was
    monkeypatch.setenv("KPACK_DEMO_SESSION_STEPS", "0")
    assert with_short_train_sessions(cfg) is cfg
    monkeypatch.setenv("KPACK_DEMO_SESSION_STEPS", "ten")
    with pytest.raises(UserError, match="KPACK_DEMO_SESSION_STEPS='ten': expected a whole number"):
        with_short_train_sessions(cfg)

