"""The ledger: one row per run with code, config and scores; appends are whole lines; no secret is ever written."""
import json
import multiprocessing

from packager import ledger
from packager.config import parse_config

SECRET = "kaggle-key-0123456789abcdef"


def make_cfg():
    return parse_config({"competition": "digits-multilabel", "kaggle_user": "alice",
                         "kernels": {"train": {"entry": "kernel_src/train.py"}},
                         "notifications": {"telegram": {"token_env": "T_TOKEN", "chat_id_env": "T_CHAT"}}})


def test_row_has_code_config_and_cv_score(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "x" / "v1"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"cv_score": 0.91, "epochs": 3}))
    row = ledger.append(ledger.make_row(make_cfg(), kernel="alice/x", kind="train", version=1, session=1,
                                        status="COMPLETE", seconds=12.34, output=out), make_cfg())
    assert row["cv_score"] == 0.91 and row["metrics"]["epochs"] == 3
    assert row["config_hash"] == ledger.config_hash(make_cfg()) and len(row["config_hash"]) == 16
    assert {"git_commit", "git_dirty", "ts", "lb_score", "seconds"} <= set(row)
    assert ledger.read() == [row]


def test_oof_scores_mean(tmp_path):
    (tmp_path / "oof_scores.json").write_text(json.dumps([0.8, 0.9]))
    assert abs(ledger.read_metrics(tmp_path)[0] - 0.85) < 1e-9


def test_no_secret_in_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    monkeypatch.setenv("T_TOKEN", "tg-token-secret-value")
    row = ledger.make_row(make_cfg(), kernel="alice/x", kind="train", version=2, session=1, status="ERROR",
                          seconds=1, output=None, failure=f"Traceback: bad key {SECRET} / tg-token-secret-value")
    ledger.append(row, make_cfg())
    ledger.update({"version": 2}, {"lb_score": 0.5, "note": SECRET}, make_cfg())
    text = (tmp_path / "runs" / "ledger.jsonl").read_text()
    assert SECRET not in text and "tg-token-secret-value" not in text
    assert ledger.REDACTED in text and ledger.read()[0]["lb_score"] == 0.5


def _writer(path, n):
    for i in range(50):
        ledger.append({"kernel": f"w{n}", "i": i, "pad": "x" * 3000}, path=path)


def test_concurrent_appends_stay_whole_lines(tmp_path):
    path = tmp_path / "ledger.jsonl"
    procs = [multiprocessing.Process(target=_writer, args=(path, n)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 200 and all(json.loads(line)["pad"] for line in lines)


def test_update_and_latest(tmp_path):
    path = tmp_path / "l.jsonl"
    for v in (1, 2):
        ledger.append({"kernel": "a/b", "version": v, "status": "COMPLETE", "lb_score": None}, path=path)
    assert ledger.update({"kernel": "a/b", "version": 2}, {"lb_score": 0.7}, path=path) == 1
    assert ledger.latest(path, kernel="a/b")["lb_score"] == 0.7
    assert ledger.latest(path, kernel="a/b", version=1)["lb_score"] is None


def test_cv_score_from_the_kits_best_block(tmp_path):
    data = {"best": {"epoch": 5, "loss": 0.49, "f2": 0.626}, "last": {"f2": 0.6}, "history": [{"f2": 0.1}] * 50}
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    score, metrics = ledger.read_metrics(tmp_path)
    assert score == 0.626 and "history" not in metrics and metrics["best"]["f2"] == 0.626


def test_kpack_ledger_prints_the_newest_rows_as_a_table(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from packager.cli import cli

    monkeypatch.chdir(tmp_path)
    assert "no runs in runs/ledger.jsonl yet" in CliRunner().invoke(cli, ["ledger"]).output
    for version, kind, status, cv, lb in ((1, "train", "COMPLETE", 0.81163, None), (2, "train", "ERROR", None, None),
                                          (1, "infer", "COMPLETE", None, 0.8021)):
        ledger.append({"ts": "2026-12-01T20:00:00Z", "kernel": f"alice/digits-{kind}", "kind": kind,
                       "version": version, "status": status, "seconds": 90, "cv_score": cv, "lb_score": lb,
                       "git_commit": "0123456789abcdef", "git_dirty": version == 2})
    done = CliRunner().invoke(cli, ["ledger", "-n", "2"])
    assert done.exit_code == 0
    lines = done.output.splitlines()
    assert lines[0].split() == ["when", "(UTC)", "kernel", "status", "min", "cv", "lb", "commit"]
    assert lines[1].split() == ["2026-12-01", "20:00:00", "digits-train", "v2", "ERROR", "1.5", "-", "-",
                                "0123456789+dirty"]
    assert lines[2].split() == ["2026-12-01", "20:00:00", "digits-infer", "v1", "COMPLETE", "1.5", "-", "0.80210",
                                "0123456789"]
    assert len(lines) == 3 and lines[1].index("ERROR") == lines[2].index("COMPLETE")  # aligned columns
    only_train = CliRunner().invoke(cli, ["ledger", "--kind", "train"]).output.splitlines()
    assert [line.split()[4] for line in only_train[1:]] == ["COMPLETE", "ERROR"]
    assert "0.81163" in only_train[1]


# --------------------------------------------------------------------------------------------- through a push

SLOW_ENTRY = '''import json
import os
import time
from pathlib import Path


def main(config):
    work = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle") / "working"
    time.sleep(2.5)
    (work / "metrics.json").write_text(json.dumps({"cv_score": 0.77}))
    (work / "state.json").write_text(json.dumps({"done": True}))
    print("trained", flush=True)
'''


import pytest  # noqa: E402


@pytest.mark.parametrize("status_first", [False, True], ids=["watch", "status-then-watch"])
def test_a_no_wait_push_followed_later_keeps_cv_and_the_kernels_own_run_time(local_kaggle, tmp_path, monkeypatch,
                                                                             status_first):
    from packager import kaggle_api, watch
    from packager.localkaggle.store import Store
    from packager.push import push_kernel, watch_kernel
    from pushkit import isolate, make_project

    isolate(monkeypatch, tmp_path)
    project = make_project(tmp_path, local_kaggle, datasets=False)
    project.write_entry(SLOW_ENTRY)
    monkeypatch.chdir(project.root)
    try:
        ref = push_kernel(project.cfg(), "train", wait=False).ref
        ran = local_kaggle.wait_kernel("alice", ref.slug, ref.version)   # it ended while nobody watched
        if status_first:
            watch.show_status(project.cfg(), "train")                     # `kpack status train` saw the end
        watch_kernel(project.cfg(), "train")                              # `kpack watch train`, later
    finally:
        kaggle_api._restore_env()
    row = ledger.latest(kernel=ref.ref, version=ref.version)
    assert row["status"] == "COMPLETE" and row["cv_score"] == 0.77
    assert Store(local_kaggle.root).kernel_version("alice", ref.slug, ref.version)["seconds"] == ran["seconds"]
    assert 2.5 <= row["seconds"] <= ran["seconds"] + 0.1  # the kernel's own time (its log), not the watcher's ~0 s


# --------------------------------------------------------------------------------------------- campaigns

def _grid_rows(path):
    """A 2 variants x 2 folds campaign, each member two sessions (the second finished with its CV), a validate
    row (the blend's CV), an infer row (LB public and private, the sessions it read) and one row written before
    campaigns (no member fields)."""
    ledger.append({"ts": "2026-11-30T10:00:00Z", "kernel": "alice/old-train", "kind": "train", "version": 3,
                   "session": 1, "base_slug": "old-train", "status": "COMPLETE", "cv_score": 0.5}, path=path)
    cvs = {("b0", 0): 0.61, ("b0", 1): 0.62, ("b3", 0): 0.71, ("b3", 1): 0.72}
    for session in (1, 2):
        for (variant, fold), cv in cvs.items():
            slug = f"camp-train-{variant}-f{fold}"
            ledger.append({"ts": f"2026-12-01T1{session}:00:00Z", "kernel": f"alice/{slug}" + ("-b" if session == 2
                           else ""), "kind": "train", "version": 1, "session": session, "base_slug": slug,
                           "status": "COMPLETE", "cv_score": cv if session == 2 else None, "campaign": "camp-train",
                           "member": f"{variant}:{fold}", "variant": variant, "fold": fold}, path=path)
    reads = [f"alice/camp-train-{v}-f{f}-b/1" for v, f in cvs]
    ledger.append({"ts": "2026-12-01T12:30:00Z", "kernel": "alice/camp-train-b5-f0", "kind": "train", "version": None,
                   "session": 1, "base_slug": "camp-train-b5-f0", "status": "WAITING", "campaign": "camp-train",
                   "member": "b5:0", "variant": "b5", "fold": 0}, path=path)  # queued: no slot yet, no version
    ledger.append({"ts": "2026-12-01T13:00:00Z", "kernel": "alice/camp-validate", "kind": "validate", "version": 1,
                   "session": 1, "status": "COMPLETE", "cv_score": 0.7345, "sources": reads}, path=path)
    ledger.append({"ts": "2026-12-01T14:00:00Z", "kernel": "alice/camp-infer", "kind": "infer", "version": 2,
                   "session": 1, "status": "COMPLETE", "lb_score": 0.701, "private_score": 0.699,
                   "sources": reads + ["alice/camp-validate/1"], "metrics": {"best": {"f2": 0.7}}}, path=path)
    return cvs, reads


def test_campaign_view_one_line_per_member_with_the_blend_and_the_lb(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from packager.cli import cli

    monkeypatch.chdir(tmp_path)
    cvs, reads = _grid_rows(None)
    done = CliRunner().invoke(cli, ["ledger", "--campaign"])
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[0].split() == ["member", "variant", "fold", "kernel", "session", "status", "cv", "lb", "private",
                                "note"]
    members = [line.split() for line in lines[1:5]]  # the newest campaign's: not the plain old-train chain
    assert [(m[0], m[1], m[2], m[3], m[5], m[7]) for m in members] == [
        (f"{v}:{f}", v, str(f), f"camp-train-{v}-f{f}-b", "2", f"{cv:.5f}") for (v, f), cv in cvs.items()]
    assert lines[5].split() == ["b5:0", "b5", "0", "camp-train-b5-f0", "1", "WAITING", "-", "-", "-"]
    assert lines[6].split() == ["blend", "-", "-", "camp-validate", "v1", "-", "COMPLETE", "0.73450", "-", "-"]
    assert lines[7].split() == ["submission", "-", "-", "camp-infer", "v2", "-", "COMPLETE", "-", "0.70100", "0.69900"]
    assert lines[8] == "infer read: " + ", ".join(reads + ["alice/camp-validate/1"])
    assert len(lines) == 9
    named = CliRunner().invoke(cli, ["ledger", "--campaign", "camp-train"]).output.splitlines()
    assert named == lines
    assert "old-train" not in "".join(named)


def test_campaign_view_of_a_ledger_from_before_campaigns_lists_its_train_chains(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from packager.cli import cli

    monkeypatch.chdir(tmp_path)
    for slug, cv in (("old-train", 0.5), ("other-train", 0.6)):
        ledger.append({"ts": "2026-11-30T10:00:00Z", "kernel": f"alice/{slug}", "kind": "train", "version": 1,
                       "session": 1, "base_slug": slug, "status": "COMPLETE", "cv_score": cv})
    lines = CliRunner().invoke(cli, ["ledger", "--campaign"]).output.splitlines()
    assert [line.split()[0] for line in lines] == ["member", "old-train", "other-train"]


def test_csv_has_every_field_in_a_stable_order_and_parses_back(tmp_path, monkeypatch):
    import csv
    import io

    from click.testing import CliRunner

    from packager.cli import cli

    monkeypatch.chdir(tmp_path)
    _grid_rows(None)
    ledger.append({"kernel": "alice/x", "kind": "train", "version": 9, "zz_extra": "a,b \"quoted\"\nnewline"})
    done = CliRunner().invoke(cli, ["ledger", "--csv"])
    assert done.exit_code == 0
    parsed = list(csv.DictReader(io.StringIO(done.output)))
    rows = ledger.read()
    header = next(csv.reader(io.StringIO(done.output)))
    assert tuple(header[:len(ledger.CSV_FIELDS)]) == ledger.CSV_FIELDS and header[len(ledger.CSV_FIELDS):] == [
        "zz_extra"]
    assert len(parsed) == len(rows) == 13
    for row, back in zip(rows, parsed):
        for key in header:
            value = row.get(key)
            if value is None:
                assert back[key] == ""
            elif isinstance(value, (dict, list, bool)):
                assert json.loads(back[key]) == value
            else:
                assert back[key] == str(value)
    assert parsed[-1]["zz_extra"] == "a,b \"quoted\"\nnewline"
    assert json.loads(parsed[-2]["sources"])[-1] == "alice/camp-validate/1"


def test_note_on_a_run_is_stored_in_its_row_and_shown(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    _grid_rows(None)

    def kpack(*args):  # the real command line: its exit status and its error line on stderr
        return subprocess.run([sys.executable, "-c", "from packager.cli import main; main()", *args],
                              capture_output=True, text=True, cwd=tmp_path)

    done = kpack("note", "infer", "tta x8, thresholds per class")
    assert done.returncode == 0 and done.stdout == "note on alice/camp-infer v2: tta x8, thresholds per class\n"
    done = kpack("note", "b3:1", "-v", "1", f"lr 3e-4, key {SECRET}")
    assert done.returncode == 0, done.stderr
    rows = ledger.read()
    assert len(rows) == 12  # a row update, not a new row
    assert ledger.latest(kind="infer")["note"] == "tta x8, thresholds per class"
    assert ledger.latest(member="b3:1")["note"] == f"lr 3e-4, key {ledger.REDACTED}"
    assert ledger.latest(member="b3:1", session=1).get("note") is None  # the newest row of b3:1 only
    assert SECRET not in (tmp_path / "runs" / "ledger.jsonl").read_text()
    grouped = kpack("ledger", "--campaign").stdout.splitlines()
    assert grouped[-2].endswith("tta x8, thresholds per class") and grouped[4].endswith(f"key {ledger.REDACTED}")
    assert kpack("ledger", "-n", "1").stdout.splitlines()[1].endswith("tta x8, thresholds per class")
    missing = kpack("note", "nosuch", "x")
    assert missing.returncode == 2 and missing.stderr == ("error: no run in runs/ledger.jsonl matches nosuch; see "
                                                         "the runs with: kpack ledger\n")
    assert len(ledger.read()) == 12


def test_an_infer_push_records_the_train_sessions_it_read(local_kaggle, tmp_path, monkeypatch):
    from packager import kaggle_api
    from packager.localkaggle.store import Store
    from packager.push import push_kernel
    from pushkit import isolate, make_project

    isolate(monkeypatch, tmp_path)
    project = make_project(tmp_path, local_kaggle, sessions=2, datasets=False, infer=True)
    monkeypatch.chdir(project.root)
    try:
        trained = push_kernel(project.cfg(), "train", wait=True)
        infer = push_kernel(project.cfg(), "infer", wait=False).ref
    finally:
        kaggle_api._restore_env()
    last = trained.sessions[-1]
    assert (last.slug, last.version, last.session) == (f"{project.train_slug}-b", 1, 2)  # the chain's 2nd session
    row = ledger.latest(kernel=infer.ref, version=infer.version)
    assert row["sources"] == [f"alice/{project.train_slug}-b/1"]
    mounted = Store(local_kaggle.root).kernel_version("alice", infer.slug, infer.version)["metadata"]
    assert mounted["kernel_data_sources"] == [f"alice/{project.train_slug}-b"]
    assert ledger.latest(kernel=f"alice/{project.train_slug}")["sources"] == []  # train read no kernel


MEMBER_ENTRY = '''import json
import os
from pathlib import Path


def main(config):
    root = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle")
    earlier = sorted((root / "input").rglob("state.json")) if (root / "input").is_dir() else []
    session = 1 + max([json.loads(p.read_text())["session"] for p in earlier] or [0])
    work, fold = root / "working", config["kit"]["data"]["fold"]
    (work / "state.json").write_text(json.dumps({"done": session >= 2, "session": session}))
    (work / "metrics.json").write_text(json.dumps({"cv_score": 0.5 + fold / 10 + session / 1000}))
'''


@pytest.mark.slow
def test_a_real_campaign_shows_every_members_cv(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from conftest import LocalKaggleServer
    from pushkit import isolate, make_project

    server = LocalKaggleServer(tmp_path / "root", None, 0, 120, "--gpu-sessions", "2").start()
    try:
        isolate(monkeypatch, tmp_path)
        project = make_project(tmp_path, server, datasets=False)
        project.write_entry(MEMBER_ENTRY)
        config = project.root / "kpack.yaml"
        text = config.read_text().replace("accelerator: 'None'", "accelerator: NvidiaTeslaT4")
        config.write_text(text.replace("session_hours: 0.02}", "session_hours: 0.02, members: {folds: [0, 1]}}")
                          + "kit: {data: {folds: 2}}\n")
        env = {**os.environ, "KPACK_POLL_MIN_S": "0.2", "KPACK_POLL_MAX_S": "1", "KPACK_TICK_S": "0.5"}

        def kpack(*args):
            return subprocess.run([sys.executable, "-m", "packager.cli", *args], cwd=project.root, env=env,
                                  capture_output=True, text=True, timeout=180)

        pushed = kpack("push", "train")  # the campaign, ticked to its end
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        assert kpack("note", ":1", "fold 1: a note").returncode == 0
        shown = kpack("ledger", "--campaign", project.train_slug)
    finally:
        server.stop()
    assert shown.returncode == 0, shown.stderr
    lines = [line.split() for line in shown.stdout.splitlines()]
    assert lines[0][:3] == ["member", "variant", "fold"] and len(lines) == 3
    assert lines[1][:8] == [":0", "-", "0", f"{project.train_slug}-f0-b", "v1", "2", "COMPLETE", "0.50200"]
    assert lines[2][:8] == [":1", "-", "1", f"{project.train_slug}-f1-b", "v1", "2", "COMPLETE", "0.60200"]
    assert lines[2][-4:] == ["fold", "1:", "a", "note"]


def test_the_table_shows_each_cvs_kind_and_an_infer_rows_plan(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from packager.cli import cli

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"cv_score": 0.7, "cv_kind": "train: one fold, half B"}))
    row = ledger.make_row(make_cfg(), kernel="alice/digits-train", kind="train", version=1, session=1,
                          status="COMPLETE", seconds=60, output=out)
    assert row["cv_kind"] == "train: one fold, half B"
    ledger.append(row)
    ledger.append({"kernel": "alice/digits-validate", "kind": "validate", "version": 1, "status": "COMPLETE",
                   "cv_score": 0.71, "cv_kind": "validate: all folds' OOF"})
    ledger.append({"kernel": "alice/digits-infer", "kind": "infer", "version": 1, "status": "COMPLETE",
                   "plan": {"predicted_s": 120.4, "actual_s": 131.0, "predicted_hidden_s": 400.0, "fits": True}})
    ledger.append({"kernel": "alice/digits-infer", "kind": "infer", "version": 2, "status": "COMPLETE",
                   "plan": {"predicted_s": 0.188, "actual_s": 0.253, "predicted_hidden_s": 0.564, "fits": False}})
    lines = CliRunner().invoke(cli, ["ledger"]).output.splitlines()
    assert "pred 0.2s act 0.3s hidden 0.6s TOO SLOW" in lines[4]
    assert "0.70000 (t)" in lines[1] and "0.71000 (v)" in lines[2]
    assert ledger.cv_cell({"kind": "train", "cv_score": 0.1}) == "0.10000 (t)"  # own code: no cv_kind, no claim
    assert lines[0].split()[-1] == "plan" and "pred 120s act 131s hidden 400s fits" in lines[3]
