"""bench/gencomp.py: generated competitions are deterministic, differ by kind, and read by the kit."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gencomp  # noqa: E402

from kernel_src import data, settings  # noqa: E402


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hot(csv: Path, n: int) -> np.ndarray:
    return gencomp.hot(pd.read_csv(csv, dtype=str, keep_default_na=False)["attribute_ids"], n)


@pytest.mark.parametrize("kind", gencomp.KINDS)
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, kind):
    a = gencomp.generate(tmp_path / "a", kind, seed=4, n_train=12, n_test=5)
    b = gencomp.generate(tmp_path / "b", kind, seed=4, n_train=12, n_test=5)
    c = gencomp.generate(tmp_path / "c", kind, seed=5, n_train=12, n_test=5)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")
    assert not list(a.data_dir.rglob("solution*")) and a.solution_csv.parent == a.data_dir.parent
    usage = pd.read_csv(a.solution_csv)["Usage"]
    assert set(usage) == {"Public", "Private"}


@pytest.mark.parametrize("kind,groups", [("shapes", {"shape", "colour"}), ("longtail", {"texture"}),
                                         ("noisy", {"shape", "colour"}), ("scenes", {"sky", "ground", "object"})])
def test_the_kit_reads_the_groups(tmp_path, kind, groups):
    comp = gencomp.generate(tmp_path / kind, kind, seed=0, n_train=10, n_test=4)
    table = data.read_train(settings.parse({}).data, comp.data_dir)
    assert set(table.labels.groups) == groups and len(table.ids) == 10
    assert table.targets.shape == (10, len(comp.names))
    assert len(data.read_test(settings.parse({}).data, comp.data_dir).ids) == 4
    from PIL import Image
    assert Image.open(comp.data_dir / "train" / f"{table.ids[0]}.png").size == (gencomp.SIZES[kind],) * 2


def test_longtail_is_long_tailed_and_shapes_is_not(tmp_path):
    long = gencomp.generate(tmp_path / "l", "longtail", seed=0, n_train=400, n_test=2, image_size=16)
    counts = _hot(long.data_dir / "train.csv", len(long.names)).sum(0)
    assert counts.max() >= 5 * np.median(counts)
    shapes = gencomp.generate(tmp_path / "s", "shapes", seed=0, n_train=400, n_test=2, image_size=16)
    shape_counts = _hot(shapes.data_dir / "train.csv", len(shapes.names)).sum(0)[:len(gencomp.SHAPES)]
    assert shape_counts.max() < 2 * np.median(shape_counts)


def test_scenes_has_one_sky_one_ground_and_rarer_and_rarer_objects(tmp_path):
    comp = gencomp.generate(tmp_path / "s", "scenes", seed=0, n_train=1000, n_test=2, image_size=24)
    y = _hot(comp.data_dir / "train.csv", len(comp.names))
    skies, grounds = len(gencomp.SKIES), len(gencomp.GROUNDS)
    assert (y[:, :skies].sum(1) == 1).all() and (y[:, skies:skies + grounds].sum(1) == 1).all()
    objects = y[:, skies + grounds:].mean(0)
    expected = np.array([freq for _, _, freq in gencomp.OBJECTS.values()])
    assert np.abs(objects - expected).max() < 0.05 and objects[0] > 5 * objects[-1]


def test_noisy_train_labels_are_corrupted_at_the_set_rates(tmp_path):
    comp = gencomp.generate(tmp_path / "n", "noisy", seed=0, n_train=600, n_test=2, image_size=16)
    clean, noisy = _hot(comp.train_clean_csv, len(comp.names)), _hot(comp.data_dir / "train.csv", len(comp.names))
    missing = (clean & ~noisy).sum() / clean.sum()
    spurious = (~clean & noisy).sum() / (~clean).sum()
    assert abs(missing - gencomp.MISSING) < 0.03 and abs(spurious - gencomp.SPURIOUS) < 0.01
    shapes = gencomp.generate(tmp_path / "s", "shapes", seed=0, n_train=20, n_test=2, image_size=16)
    assert (_hot(shapes.train_clean_csv, 11) == _hot(shapes.data_dir / "train.csv", 11)).all()


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        gencomp.generate(tmp_path, "stars")


def test_cells_is_hpas_layout_and_the_kit_trains_validates_and_infers_it(tmp_path, monkeypatch):
    """Four grey PNGs per image, `Id,Target` without labels.csv, `Id,Predicted`: kit.data's channel_files and
    column names read it (Competition.kit_data), the model sees 4 channels, and the submission is HPA's."""
    import shutil

    from kernel_src import infer, validate
    from kit_support import final_weights, train_in_process
    from packager.localkaggle.scoring import score_submission

    comp = gencomp.generate(tmp_path / "c", "cells", seed=0, n_train=24, n_test=8, image_size=24)
    train_csv = pd.read_csv(comp.data_dir / "train.csv", dtype=str)
    assert list(train_csv.columns) == ["Id", "Target"] and not (comp.data_dir / "labels.csv").exists()
    assert sorted(p.name for p in (comp.data_dir / "train").iterdir()) == sorted(
        f"{i}_{c}.png" for i in train_csv["Id"] for c in gencomp.CHANNEL_FILES)
    kit = {"data": {**comp.kit_data, "image_size": 24, "folds": 2, "num_workers": 0},
           "model": {"name": "test_resnet"}, "stages": [{"epochs": 1}], "log_every_steps": 1000}
    config = lambda fold=None: {"competition": "gen-cells", "kaggle_user": "kpack", "kernels": {},  # noqa: E731
                                "kit": {**kit, "data": {**kit["data"], **({} if fold is None else {"fold": fold})}}}
    runs = train_in_process(tmp_path, comp.data_dir, "gen-cells", {"f0": config(0), "f1": config(1)})
    first_conv = next(v for v in final_weights(runs / "f0").values() if v.ndim == 4)
    assert first_conv.shape[1] == 4
    root = tmp_path / "kaggle"
    (root / "input" / "competitions").mkdir(parents=True)
    (root / "input" / "competitions" / "gen-cells").symlink_to(comp.data_dir)
    for name in ("f0", "f1"):
        shutil.copytree(runs / name, root / "input" / "notebooks" / "kpack" / f"train-{name}")
    monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(root))
    assert validate.run(config(), working=root / "input" / "notebooks" / "kpack" / "validate")["rows"] == 24
    submission = infer.run(config(), working=root / "working")
    written = pd.read_csv(submission, dtype=str, keep_default_na=False)
    assert list(written.columns) == ["Id", "Predicted"]
    assert written["Id"].tolist() == pd.read_csv(comp.data_dir / "sample_submission.csv", dtype=str)["Id"].tolist()
    score = score_submission(submission.read_bytes(), comp.solution_csv, "f1-macro")
    assert 0 <= score.public <= 1 and 0 <= score.private <= 1
