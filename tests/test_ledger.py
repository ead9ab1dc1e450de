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
