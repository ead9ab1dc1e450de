"""validate and infer entries end to end: a tiny demo competition, tiny timm models trained by the kit's own
train entry for a step or two, mounted as kernel outputs in a fake Kaggle root (KPACK_KAGGLE_ROOT)."""
import copy
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kernel_src import infer, settings, validate
from kit_support import train_in_process
from packager import democomp
from packager.localkaggle.scoring import score_submission

SLUG = "digits-multilabel"
KIT = {"seed": 0, "data": {"image_size": 32, "folds": 2, "fold": 0, "num_workers": 0},
       "augment": {"train": "none", "valid": "none", "tta": ["none", "shift_left"]},
       "model": {"name": "test_efficientnet", "channels_last": False},
       "optim": {"batch_size": 16, "lr": 3e-3}, "stages": [{"epochs": 1}], "log_every_steps": 1000}
EVAL = {"thresholds": {"one_of": ["count"]}, "infer": {"batch_size": 8}}


def _config(kit: dict) -> dict:
    return {"competition": SLUG, "kaggle_user": "kpack", "kernels": {}, "kit": kit}


def _kit(**changes) -> dict:
    kit = copy.deepcopy(KIT)
    for section, values in changes.items():
        kit[section] = {**kit.get(section, {}), **values} if isinstance(values, dict) else values
    return kit


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three trained models: member A folds 0 and 1, member B (another lr) fold 0 only."""
    base = tmp_path_factory.mktemp("entries")
    comp = democomp.generate(base / "comp", seed=0, n_train=48, n_test=12, image_size=32)
    runs = {"a-f0": _kit(), "a-f1": _kit(data={"fold": 1}), "b-f0": _kit(optim={"lr": 1e-2})}
    return comp, train_in_process(base, comp.data_dir, SLUG, {name: _config(kit) for name, kit in runs.items()})


def _root(tmp_path: Path, monkeypatch, comp, runs: Path, members: list[str], extra: dict | None = None) -> Path:
    root = tmp_path / "kaggle"
    (root / "input" / "competitions").mkdir(parents=True)
    (root / "working").mkdir()
    (root / "input" / "competitions" / SLUG).symlink_to(comp.data_dir)
    for name in members:
        shutil.copytree(runs / name, root / "input" / "notebooks" / "kpack" / f"train-{name}")
    for name, folder in (extra or {}).items():
        shutil.copytree(folder, root / "input" / "notebooks" / "kpack" / name)
    monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(root))
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_submission(path: Path, comp, one_of: bool = True) -> None:
    rows = _rows(path)
    assert [r["id"] for r in rows] == [r["id"] for r in _rows(comp.data_dir / "sample_submission.csv")]
    names = democomp.label_names(4)
    for r in rows:
        labels = [names[int(i)] for i in r["attribute_ids"].split()]
        if one_of:  # kit.thresholds.one_of: [count] (validate keeps it only where it scores better)
            assert sum(n.startswith("count::") for n in labels) == 1
    score = score_submission(path.read_bytes(), comp.solution_csv)
    assert 0 <= score.public <= 1 and 0 <= score.private <= 1


@pytest.mark.slow
def test_validate_then_infer(trained, tmp_path, monkeypatch):
    comp, runs = trained
    root = _root(tmp_path, monkeypatch, comp, runs, ["a-f0", "a-f1"])
    scores = validate.main(_config(_kit(**EVAL)))
    saved = json.loads((root / "working" / "oof_scores.json").read_text())
    assert saved == json.loads(json.dumps(scores))
    assert saved["rows"] == saved["rows_total"] == 48
    assert set(saved["at_0.5"]["groups"]) == set(saved["searched"]["groups"]) == {"digit", "count"}
    assert saved["searched"]["f2"] >= saved["at_0.5"]["f2"]
    assert saved["searched"]["f2"] == max(saved["candidates"].values())
    assert saved["cv_score_in_sample"] == saved["searched"]["f2"]  # the rule infer applies, scored in-sample
    assert saved["cv_kind"].startswith("validate:") and saved["cv_score"] != saved["cv_score_in_sample"]
    for name in ("a-f0", "a-f1"):  # the train kernel's CV: half B at the epoch half A chose
        metrics = json.loads((runs / name / "metrics.json").read_text())
        chosen = max(metrics["history"], key=lambda h: h["f2_a_alone"])
        assert metrics["best"] == chosen and metrics["cv_score"] == chosen["f2_b"]
        assert metrics["cv_kind"].startswith("train:") and metrics["cv_score_in_sample"] == chosen["f2_in_sample"]
    decision = json.loads((root / "working" / "thresholds.json").read_text())
    assert decision["labels"] == [str(i) for i in range(14)]
    kept = saved["constraints"]["count"]["kept"]
    assert decision["rule"]["one_of"] == ([[10, 11, 12, 13]] if kept else [])
    assert len(decision["rule"]["thresholds"]) == 14
    assert decision["blend"] == {"method": "mean", "members": list(saved["members"]), "weights": [1.0]}

    # the validate kernel's output mounted beside the train outputs: infer applies its rule
    shutil.copytree(root / "working", root / "input" / "notebooks" / "kpack" / "validate")
    (root / "working" / "thresholds.json").unlink()
    lines: list[str] = []
    out = infer.run(_config(_kit(**EVAL)), log=lines.append)
    assert out == root / "working" / "submission.csv"
    assert any("thresholds.json" in line and decision["name"] in line for line in lines)
    _check_submission(out, comp, kept)


@pytest.mark.slow
def test_infer_without_thresholds_uses_the_config(trained, tmp_path, monkeypatch):
    comp, runs = trained
    _root(tmp_path, monkeypatch, comp, runs, ["a-f0"])
    lines: list[str] = []
    kit = _kit(thresholds={"one_of": ["count"], "fixed": 0.4}, augment={"tta": ["none"]})
    out = infer.run(_config(kit), log=lines.append)
    assert any("kit.thresholds.fixed" in line for line in lines)
    _check_submission(out, comp)
    assert all(r["attribute_ids"] for r in _rows(out))  # at least one label per row


@pytest.mark.slow
def test_two_members_blend_on_the_rows_both_cover(trained, tmp_path, monkeypatch):
    comp, runs = trained
    root = _root(tmp_path, monkeypatch, comp, runs, ["a-f0", "a-f1", "b-f0"])
    scores = validate.run(_config(_kit(**EVAL, blend={"method": "weighted"})))
    assert len(scores["members"]) == 2
    assert 0 < scores["rows"] < scores["rows_total"]  # member B has fold 0 only
    weights = scores["blend"]["weights"]
    assert scores["blend"]["method"] == "weighted" and len(weights) == 2 and sum(weights) == pytest.approx(1)
    decision = json.loads((root / "working" / "thresholds.json").read_text())
    assert decision["blend"]["members"] == list(scores["members"])
    shutil.copytree(root / "working", root / "input" / "notebooks" / "kpack" / "validate")
    lines: list[str] = []
    out = infer.run(_config(_kit(**EVAL)), log=lines.append)
    assert sum("member" in line and "model(s)" in line for line in lines) == 2
    _check_submission(out, comp, scores["constraints"]["count"]["kept"])


@pytest.mark.slow
def test_the_same_training_mounted_twice_counts_once(trained, tmp_path, monkeypatch):
    comp, runs = trained
    root = _root(tmp_path, monkeypatch, comp, runs, ["a-f0"], extra={"train-a-f0-copy": runs / "a-f0"})
    found = infer.find_models("best")
    assert len(found) == 1 and found[0].path.name == "best.pt"
    assert len(infer.find_models("final")) == 1 and infer.find_models("final")[0].path.name == "model.pt"
    assert (root / "input" / "notebooks" / "kpack" / "train-a-f0-copy" / "best.pt").is_file()


def test_no_models_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(tmp_path))
    (tmp_path / "input").mkdir()
    with pytest.raises(SystemExit) as exc:
        infer.main(_config({}))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "no trained model" in err and len(err.splitlines()) == 1


def test_eval_settings_are_validated():
    kit, ev = infer.kit_settings(_config({"thresholds": {"method": "global", "one_of": ["count"]},
                                          "blend": {"method": "rank", "weights": [1, 2]}, "seed": 3}))
    assert (kit.seed, ev.thresholds.method, ev.thresholds.one_of, ev.blend.weights) == (3, "global", ["count"], [1.0, 2.0])
    assert ev.infer.checkpoint == "best" and ev.thresholds.min_labels == [0, 1]
    with pytest.raises(settings.SettingsError, match=r"kit\.thresholds\.method"):
        infer.kit_settings(_config({"thresholds": {"method": "best"}}))
    with pytest.raises(settings.SettingsError, match=r"kit\.thresholds\.treshold: unknown field"):
        infer.kit_settings(_config({"thresholds": {"treshold": 0.3}}))
    with pytest.raises(settings.SettingsError, match=r"kit\.thresholds\.fixed"):
        infer.kit_settings(_config({"thresholds": {"fixed": 1.5}}))
    with pytest.raises(settings.SettingsError, match=r"kit\.infer\.batch_size"):
        infer.kit_settings(_config({"infer": {"batch_size": 0}}))


def test_one_of_names_a_known_group():
    from kernel_src.data import Labels

    labels = Labels(["0", "1", "2"], ["digit::0", "count::1", "count::2"], {"digit": [0], "count": [1, 2]})
    assert infer.one_of_columns(["count"], labels) == ((1, 2),)
    with pytest.raises(settings.SettingsError, match="no label group 'culture'"):
        infer.one_of_columns(["culture"], labels)
    assert np.array_equal(infer.one_of_columns([], labels), ())
