"""kit.data.holdout: a stratified share of the rows no fold trains on, so validate can score the whole
submission (each member's models averaged, the blend, the rule) out of sample, as the test set will."""
import copy
import csv
import json
import shutil

import numpy as np
import pytest

from kernel_src import data, folds, infer, metrics, settings, validate
from kit_support import train_in_process
from packager import democomp, ledger

SLUG = "digits-multilabel"
HOLDOUT = 0.25
KIT = {"seed": 4, "data": {"image_size": 32, "folds": 2, "fold": 0, "num_workers": 0, "holdout": HOLDOUT},
       "augment": {"train": "none", "valid": "none", "tta": ["none", "shift_left"]},
       "model": {"name": "test_efficientnet", "channels_last": False},
       "optim": {"batch_size": 8, "lr": 3e-3}, "stages": [{"epochs": 1}], "log_every_steps": 1000,
       "thresholds": {"one_of": ["count"]}, "infer": {"batch_size": 8, "plan": "off"}}


def _config(kit: dict) -> dict:
    return {"competition": SLUG, "kaggle_user": "kpack", "kernels": {}, "kit": kit}


def _kit(fold: int = 0, lr: float = 3e-3) -> dict:
    kit = copy.deepcopy(KIT)
    kit["data"]["fold"], kit["optim"]["lr"] = fold, lr
    return kit


def test_the_holdout_is_a_stratified_share_no_fold_trains_or_validates_on():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 20)) < np.linspace(0.03, 0.3, 20)).astype(np.uint8)
    fold_of = folds.assign(y, 5, seed=3, holdout=0.2)
    held = folds.held_out(fold_of)
    assert abs(len(held) - 80) <= 4 and (fold_of[held] == folds.HELD_OUT).all()  # as near as the folds
    spread = np.abs(y[held].sum(0) - y.sum(0) * 0.2)  # rare labels first, as near as can be; the rest near
    assert spread[y.sum(0) <= 60].max() <= 1.0 and spread.max() <= 4
    for fold in range(-1, 5):
        train, valid = folds.split(fold_of, fold)
        assert not set(held) & (set(train) | set(valid))
        assert len(train) + len(valid) + len(held) == 400
    assert len(folds.split(fold_of, -1)[0]) == 400 - len(held)
    # the same rows whatever the fold count (another seed draws others); without one, no row is held out
    assert (folds.held_out(folds.assign(y, 2, seed=3, holdout=0.2)) == held).all()
    assert set(folds.held_out(folds.assign(y, 5, seed=4, holdout=0.2))) != set(held)
    assert len(folds.held_out(folds.assign(y, 5, seed=3))) == 0


def test_the_holdout_setting_is_checked_and_hashed_only_when_set():
    with pytest.raises(settings.SettingsError, match=r"^kit\.data\.holdout: expected 0 \(off\) or a share"):
        settings.parse({"data": {"holdout": 0.8}})
    plain = settings.training_hash(settings.parse({}))
    assert settings.training_hash(settings.parse({"data": {"holdout": 0.0}})) == plain
    assert settings.training_hash(settings.parse({"data": {"holdout": 0.1}})) != plain


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Member a: folds 0 and 1 and one model on every row but the holdout (fold -1); member b (another lr):
    folds 0 and 1. All hold out the same quarter of the 64 rows."""
    base = tmp_path_factory.mktemp("holdout")
    comp = democomp.generate(base / "comp", seed=2, n_train=64, n_test=8, image_size=32)
    runs = {"a-f0": _kit(0), "a-f1": _kit(1), "a-all": _kit(-1), "b-f0": _kit(0, 1e-2), "b-f1": _kit(1, 1e-2)}
    train_in_process(base, comp.data_dir, SLUG, {name: _config(kit) for name, kit in runs.items()})
    return comp, base


def _mount(root, comp_dir, runs, extra=()):
    (root / "input" / "competitions").mkdir(parents=True)
    (root / "working").mkdir()
    (root / "input" / "competitions" / SLUG).symlink_to(comp_dir)
    for name in list(runs.iterdir()) + list(extra):
        shutil.copytree(name, root / "input" / "notebooks" / "kpack" / name.name)


@pytest.mark.slow
def test_validate_scores_the_submission_on_the_holdout_as_infer_makes_it(trained, tmp_path, monkeypatch):
    comp, base = trained
    table = data.read_train(settings.parse({"data": KIT["data"]}).data, comp.data_dir)
    held = folds.held_out(folds.assign(table.targets, 2, KIT["seed"], HOLDOUT))
    n = len(held)
    assert abs(n - 16) <= 2
    for name, fold in (("a-f0", 0), ("a-all", -1)):  # the train kernel left the holdout out (batches: 8 rows)
        state = json.loads((base / "runs" / name / "state.json").read_text())
        assert state["total_steps"] == len(folds.split(folds.assign(table.targets, 2, 4, HOLDOUT), fold)[0]) // 8
        assert state["total_steps"] < (64 if fold < 0 else 32) // 8

    monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(tmp_path / "validate"))
    _mount(tmp_path / "validate", comp.data_dir, base / "runs")
    lines: list[str] = []
    scores = validate.run(_config(_kit()), log=lines.append)
    assert scores["rows"] == 64 - n and scores["holdout_rows"] == n
    assert scores["holdout_kind"].startswith("holdout:") and 0 <= scores["holdout_score"] <= 1
    assert any(f"fold -1: {n} held-out rows" in line for line in lines)  # infer averages it in, so validate does
    assert f"held-out rows {scores['holdout_score']:.4f}" in lines[-1]
    saved = tmp_path / "validate" / "working"
    assert json.loads((saved / "oof_scores.json").read_text())["holdout_score"] == scores["holdout_score"]

    # a competition whose test set is the held-out rows: infer's submission there scores what validate said
    test_comp = tmp_path / "test-comp"
    shutil.copytree(comp.data_dir, test_comp, ignore=shutil.ignore_patterns("test"))
    (test_comp / "test").mkdir()
    for i in held:
        shutil.copy(table.paths[i], test_comp / "test" / table.paths[i].name)
    (test_comp / "sample_submission.csv").write_text(
        "id,attribute_ids\n" + "".join(f"{table.ids[i]},0\n" for i in held))
    monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(tmp_path / "infer"))
    validated = tmp_path / "validate-out"
    shutil.copytree(saved, validated)
    _mount(tmp_path / "infer", test_comp, base / "runs", [validated])
    out = infer.run(_config(_kit()), log=lambda s: None)
    with open(out, newline="") as f:
        submitted = {r["id"]: r["attribute_ids"].split() for r in csv.DictReader(f)}
    pred = np.zeros((len(held), len(table.labels.ids)), dtype=bool)
    for row, i in enumerate(held):
        for label in submitted[table.ids[i]]:
            pred[row, table.labels.ids.index(label)] = True
    assert metrics.fbeta_score(table.targets[held].astype(bool), pred) == pytest.approx(scores["holdout_score"],
                                                                                        abs=1e-12)

    # the ledger shows it beside the CV, and the campaign table gives it its own line
    row = {"kind": "validate", "kernel": "kpack/validate", "version": 1, "status": "complete",
           "cv_score": scores["cv_score"], "cv_kind": scores["cv_kind"], "metrics": scores}
    assert ledger.cv_cell(row) == f"{scores['cv_score']:.5f} (v), holdout {scores['holdout_score']:.5f}"
    assert "blend, held out" in ledger.campaign_table([row]) and f"{n} rows no fold trained on" in \
        ledger.campaign_table([row])
