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
    assert scores["cv_score"] == scores["searched"]["f2"] == max(scores["candidates"].values())
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
