"""Validate and blend over a campaign: 2 variants x 2 folds.

Kernel side: four tiny timm models trained by the kit (variants a and b, folds 0 and 1), mounted as four train
outputs; validate groups them by variant (each variant's OOF covers both folds), blends the two variants and
searches the rule on the blend; infer applies it. Host side: a 2x2 campaign of tiny kernels on the local Kaggle
(two sessions per member, alternating slugs); validate and infer read every member's newest COMPLETE session
and their ledger rows name exactly those."""
import copy
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kernel_src import infer, validate
from packager import democomp

SLUG = "digits-multilabel"
KIT = {"seed": 0, "data": {"image_size": 32, "folds": 2, "fold": 0, "num_workers": 0},
       "augment": {"train": "none", "valid": "none", "tta": ["none"]},
       "model": {"name": "test_efficientnet", "channels_last": False},
       "optim": {"batch_size": 16, "lr": 3e-3}, "stages": [{"epochs": 1}], "log_every_steps": 1000,
       "thresholds": {"one_of": ["count"]}, "infer": {"batch_size": 16}}
VARIANTS = {"a": {}, "b": {"optim": {"batch_size": 16, "lr": 1e-2}}}


def _config(kit: dict) -> dict:
    return {"competition": SLUG, "kaggle_user": "kpack", "kernels": {}, "kit": kit}


def _member_kit(variant: str, fold: int) -> dict:
    kit = copy.deepcopy(KIT)
    kit.update(copy.deepcopy(VARIANTS[variant]))
    kit["data"]["fold"] = fold
    return kit


@pytest.fixture(scope="module")
def campaign_models(tmp_path_factory):
    from kernel_src import train

    base = tmp_path_factory.mktemp("campaign")
    comp = democomp.generate(base / "comp", seed=0, n_train=48, n_test=12, image_size=32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KPACK_SESSION_SECONDS", "3600")
        mp.setenv("KPACK_KAGGLE_ROOT", str(base / "train-root"))
        (base / "train-root" / "input").mkdir(parents=True)
        (base / "train-root" / "input" / SLUG).symlink_to(comp.data_dir)
        for variant in VARIANTS:
            for fold in (0, 1):
                train.main(_config(_member_kit(variant, fold)), working=base / "runs" / f"{variant}-f{fold}")
    return comp, base / "runs"


@pytest.mark.slow
def test_validate_blends_the_variants_of_a_2x2_campaign_and_infer_applies_it(campaign_models, tmp_path,
                                                                              monkeypatch):
    comp, runs = campaign_models
    root = tmp_path / "kaggle"
    (root / "input" / "competitions").mkdir(parents=True)
    (root / "working").mkdir()
    (root / "input" / "competitions" / SLUG).symlink_to(comp.data_dir)
    for member in ("a-f0", "a-f1", "b-f0", "b-f1"):  # as a campaign mounts them: one kernel source each
        shutil.copytree(runs / member, root / "input" / "notebooks" / "kpack" / f"imet-train-{member}-b")
    monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(root))
    lines: list[str] = []
    scores = validate.run(_config(KIT), log=lines.append)
    assert sum("OOF rows from" in line for line in lines) == 4  # every member's fold predicted
    assert len(scores["members"]) == 2 and scores["rows"] == scores["rows_total"] == 48
    assert [m["folds"] for m in scores["members"].values()] == [[0, 1], [0, 1]]
    assert all(m["rows"] == 48 for m in scores["members"].values())
    assert set(scores["blends"]) == {"mean", "weighted", "rank"}
    best = max(v["f2"] for v in scores["blends"].values())
    assert scores["blends"][scores["blend"]["method"]]["f2"] == best
    assert scores["blend"]["weights"] == scores["blends"][scores["blend"]["method"]]["weights"]
    assert {"fixed", "global", "per_class", "context", "top1", "global+fb2"} <= set(scores["candidates"])
    # the searched rule's in-sample F2; the recorded CV cross-fits the whole search (blend, rule, constraints)
    assert scores["cv_score_in_sample"] == scores["searched"]["f2"] == max(scores["candidates"].values())
    assert scores["cv_kind"].startswith("validate") and scores["cv_score"] < scores["cv_score_in_sample"]
    assert set(scores["constraints"]) == {"count"}
    decision = json.loads((root / "working" / "thresholds.json").read_text())
    assert decision["blend"] == {"method": scores["blend"]["method"], "members": list(scores["members"]),
                                 "weights": scores["blend"]["weights"]}
    assert decision["rule"]["one_of"] == ([[10, 11, 12, 13]] if scores["constraints"]["count"]["kept"] else [])

    shutil.copytree(root / "working", root / "input" / "notebooks" / "kpack" / "imet-validate")
    (root / "working" / "thresholds.json").unlink()
    lines.clear()
    out = infer.run(_config(KIT), log=lines.append)
    assert sum("member" in line and "model(s)" in line for line in lines) == 2
    assert any(decision["name"] in line for line in lines)  # validate's rule and blend, not the config's
    with open(out, newline="") as f, open(comp.data_dir / "sample_submission.csv", newline="") as g:
        rows, sample = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert [r["id"] for r in rows] == [r["id"] for r in sample] and list(rows[0]) == list(sample[0])


# --------------------------------------------------------------------------------------------- host side

# A validate kernel that records which train outputs are mounted (the member, as its CV says, and the session)
VALIDATE_ENTRY = '''import json
import os
from pathlib import Path


def main(config):
    root = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle")
    seen = []
    for state in sorted((root / "input").rglob("state.json")):
        metrics = json.loads((state.parent / "metrics.json").read_text())
        seen.append({"path": str(state.parent.relative_to(root / "input")), "cv": metrics["cv_score"],
                     "session": json.loads(state.read_text())["session"]})
    work = root / "working"
    (work / "seen.json").write_text(json.dumps(seen))
    (work / "oof_scores.json").write_text(json.dumps({"cv_score": 0.9}))
    (work / "thresholds.json").write_text("{}")
'''


@pytest.fixture
def two_gpus(tmp_path):
    from conftest import LocalKaggleServer

    server = LocalKaggleServer(tmp_path / "root", None, 0, 120, "--gpu-sessions", "2").start()
    yield server
    server.stop()


def _rows_of(kind: str) -> list[dict]:
    from packager import ledger

    return [r for r in ledger.read() if r.get("kind") == kind]


@pytest.mark.slow
def test_validate_and_infer_read_every_members_newest_complete_session(two_gpus, tmp_path, monkeypatch):
    from test_campaign import campaign_project, kpack, member_rows, tick_until_done

    project = campaign_project(tmp_path, two_gpus, monkeypatch)
    project.write_entry(VALIDATE_ENTRY, "validate_entry.py")
    project.write_entry("from kernel_src.validate_entry import main  # noqa: F401\n", "infer_entry.py")
    config = project.root / "kpack.yaml"
    kernels = (f"  validate: {{entry: kernel_src/validate_entry.py, slug: {project.prefix}-validate, "
               "accelerator: 'None', session_hours: 0.02}\n"
               f"  infer: {{entry: kernel_src/infer_entry.py, slug: {project.prefix}-infer, accelerator: 'None', "
               "session_hours: 0.02}\n")
    text = config.read_text().replace("notifications:", kernels + "notifications:")
    config.write_text(text)
    pushed = kpack(project, "push", "train", "--no-wait")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    tick_until_done(project)
    # every member ran two sessions, <slug> then <slug>-b: session 1 is stale, session 2 (-b) the newest
    newest = {r["member"]: r for r in member_rows(project) if r["session"] == 2 and r["status"] == "COMPLETE"}
    assert sorted(newest) == ["a:0", "a:1", "b:0", "b:1"]
    expected = sorted(f"{r['kernel']}/{r['version']}" for r in newest.values())
    assert all(k.split("/")[1].endswith("-b") for k in expected)

    # a third variant without a session: validate is refused in one line, nothing pushed
    with_c = text.replace("b: {seed: 2}}", "b: {seed: 2}, c: {seed: 3}}")
    assert with_c != text
    config.write_text(with_c)
    refused = kpack(project, "push", "validate")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        f"error: validate: campaign {project.train_slug}: member(s) c:0, c:1 have no COMPLETE session in the "
        "ledger; let them finish (kpack tick, kpack ledger --campaign), or blend the others with KPACK_PARTIAL=1 "
        "kpack push validate"], refused.stderr
    assert not _rows_of("validate") and not project.kernel_versions(f"{project.prefix}-validate")

    config.write_text(text)
    done = kpack(project, "push", "validate")
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = _rows_of("validate")
    assert row["status"] == "COMPLETE" and sorted(row["sources"]) == expected
    seen = json.loads((Path(row["output"]) / "seen.json").read_text())
    # each member's session 2 (the local Kaggle mounts a source in both layouts: each seen twice)
    assert sorted({(s["session"], round(s["cv"], 3)) for s in seen}) == [(2, 0.512), (2, 0.522), (2, 0.612),
                                                                         (2, 0.622)]

    config.write_text(with_c)  # KPACK_PARTIAL=1: the members that have a COMPLETE session, and a warning
    monkeypatch.setenv("KPACK_PARTIAL", "1")
    partial = kpack(project, "push", "infer")
    assert partial.returncode == 0, partial.stdout + partial.stderr
    assert "member(s) c:0, c:1 have no COMPLETE session in the ledger; infer reads the other 4" in partial.stdout
    (row,) = _rows_of("infer")
    validate_row = _rows_of("validate")[0]
    assert sorted(row["sources"]) == sorted(expected + [f"{validate_row['kernel']}/{validate_row['version']}"])
