"""Knowledge distillation and pseudo-labelling (kernel_src/teacher.py): the targets, the refusals, the pseudo rows,
exact resume, and the chain train -> validate (oof_probs.npz) -> infer (test_probs.npz) -> a student."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import kit_support
from kit_support import kit_env  # noqa: F401  (autouse: own Kaggle root, one thread)
from kernel_src import clock, data, engine, folds, infer, settings, teacher, validate


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return kit_support.make_demo(tmp_path_factory.mktemp("demo"), n_train=64, n_test=16)


def table_of(demo):
    return data.read_train(settings.parse({"data": {"root": str(demo)}}).data, demo)


def the_test_ids(demo) -> list[str]:
    return data.read_test(settings.parse({}).data, demo).ids


def crafted(tmp_path, demo, kind="oof", rows=None, classes=None, seed=0):
    """A teacher file over the demo's training (or test) ids with random probabilities."""
    table = table_of(demo)
    ids = (table.ids if kind == "oof" else the_test_ids(demo)) if rows is None else rows
    classes = table.labels.ids if classes is None else classes
    probs = np.random.default_rng(seed).random((len(ids), len(classes)), dtype=np.float32)
    path = tmp_path / f"{kind}-{seed}.npz"
    teacher.write_probs(path, ids, classes, probs, kind)
    return path, ids, probs


def run_of(kit: dict, working, steps=10**9) -> engine.Run:
    return engine.Run(settings.parse(kit), None, working, clock.FixedSteps(steps), log=quiet)


def test_teacher_settings_are_checked_and_hashed_only_when_set():
    assert not teacher.active(settings.parse({}).teacher)
    assert "teacher" not in settings._hashed(settings.parse({}))
    for kit, message in [({"teacher": {"weight": 2}}, "kit.teacher.weight: expected a number in [0, 1]"),
                         ({"teacher": {"test": "t.npz", "pseudo_threshold": 0.3}},
                          "kit.teacher.pseudo_threshold: expected 0 (off) or a number in [0.5, 1)"),
                         ({"teacher": {"test": "t.npz"}}, "kit.teacher.test: pseudo-labelling needs both"),
                         ({"teacher": {"oof": "o.npz", "weight": 0}}, "kit.teacher.oof: unused with weight 0")]:
        with pytest.raises(settings.SettingsError) as err:
            settings.parse(kit)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert settings.training_hash(settings.parse({"teacher": {"oof": "o.npz"}})) != \
        settings.training_hash(settings.parse({}))


def test_distillation_targets_are_the_formula_and_validation_stays_hard(demo, tmp_path):
    path, ids, probs = crafted(tmp_path, demo)
    kit = kit_support.tiny_kit(demo, teacher={"oof": str(path), "weight": 0.3})
    run = run_of(kit, tmp_path / "w")
    table = table_of(demo)
    train_idx, valid_idx = folds.split(folds.assign(table.targets, 5, kit["seed"]), 0)
    got = run.train_loader.dataset.targets
    want = 0.7 * table.targets[train_idx] + 0.3 * probs[train_idx]  # the file's rows are the table's
    assert got.dtype == np.float32 and np.allclose(got, want, atol=1e-6)
    assert np.array_equal(run.valid_targets, table.targets[valid_idx])  # scored on the hard labels
    assert np.array_equal(run.valid_loader.dataset.targets, table.targets[valid_idx])
    plain = run_of(kit_support.tiny_kit(demo), tmp_path / "p")
    assert run.hash != plain.hash
    path.write_bytes(path.read_bytes())  # the same bytes: the same hash; other bytes: another
    assert run_of(kit, tmp_path / "w2").hash == run.hash
    crafted(tmp_path, demo, seed=1)[0].replace(path)
    assert run_of(kit, tmp_path / "w3").hash != run.hash


def test_teacher_files_of_the_wrong_kind_or_table_are_refused_in_one_line(demo, tmp_path):
    table = table_of(demo)
    cases = [
        (crafted(tmp_path, demo, kind="test")[0], "oof", "holds kind 'test' predictions; training rows need "
         "out-of-fold predictions (validate's oof_probs.npz): in-sample teacher predictions would leak the labels"),
        (crafted(tmp_path, demo, rows=table.ids[:5] + ["nope"], seed=2)[0], "oof", "has 1 ids the training table "
         "lacks (first: 'nope')"),
        (crafted(tmp_path, demo, classes=table.labels.ids[:-1], seed=3)[0], "oof", "has 13 classes, the training "
         "table 14"),
        (crafted(tmp_path, demo, kind="test", rows=["t-nope"], seed=4)[0], "test", "has 1 ids that are not test "
         "images (first: 't-nope')"),
    ]
    for path, field, message in cases:
        spec = {"oof": str(path)} if field == "oof" else {"test": str(path), "pseudo_threshold": 0.9}
        with pytest.raises(settings.SettingsError) as err:
            run_of(kit_support.tiny_kit(demo, teacher=spec), tmp_path / "w")
        text = str(err.value)
        assert text.startswith(f"kit.teacher.{field}: {path}") and message in text and "\n" not in text, text
    with pytest.raises(FileNotFoundError, match="kit.teacher.oof: 'missing.npz' is neither a file nor found"):
        run_of(kit_support.tiny_kit(demo, teacher={"oof": "missing.npz"}), tmp_path / "w")


def test_pseudo_rows_are_the_confident_ones_capped_and_never_validated(demo, tmp_path):
    table = table_of(demo)
    ids = the_test_ids(demo)
    probs = np.full((len(ids), len(table.labels)), 0.5, dtype=np.float32)  # unsure everywhere ...
    probs[[1, 4, 6, 9, 12]] = np.where(np.arange(len(table.labels)) % 3 == 0, 0.97, 0.02)  # ... but these
    probs[4, 0], probs[12, 0] = 0.95, 0.92  # row margins (least confident class): .97 .95 .97 .97 .92
    path = tmp_path / "test_probs.npz"
    teacher.write_probs(path, ids, table.labels.ids, probs, "test")
    assert list(teacher.confident(probs, 0.9)) == [1, 4, 6, 9, 12]
    assert list(teacher.confident(probs, 0.9, limit=3)) == [1, 6, 9]  # ties in file order
    assert list(teacher.confident(probs, 0.96)) == [1, 6, 9]
    # found by name among the inputs, as a mounted infer kernel's output: in both layouts, as Kaggle and the
    # local Kaggle mount a source (the same file twice is one file)
    for mounted in (tmp_path / "kaggle" / "input" / "notebooks" / "kpack" / "infer", tmp_path / "kaggle" / "input" / "infer"):
        mounted.mkdir(parents=True)
        shutil.copy(path, mounted / teacher.TEST_FILE)
    other = tmp_path / "kaggle" / "input" / "notebooks" / "kpack" / "infer-2"  # another teacher of that name
    other.mkdir(parents=True)
    teacher.write_probs(other / teacher.TEST_FILE, ids, table.labels.ids, probs * 0.5, "test")
    with pytest.raises(settings.SettingsError, match="kit.teacher.test: 2 different files named test_probs.npz"):
        teacher.resolve(teacher.TEST_FILE, "kit.teacher.test")
    shutil.rmtree(other)
    kit = kit_support.tiny_kit(demo, teacher={"test": teacher.TEST_FILE, "pseudo_threshold": 0.9, "pseudo_max": 3,
                                             "weight": 0.0})
    run = run_of(kit, tmp_path / "w")
    plain = run_of(kit_support.tiny_kit(demo), tmp_path / "p")
    ds, base = run.train_loader.dataset, plain.train_loader.dataset
    assert ds.paths[:len(base.paths)] == base.paths
    assert ds.paths[len(base.paths):] == [demo / "test" / f"{ids[r]}.png" for r in (1, 6, 9)]
    assert np.array_equal(ds.targets[len(base.paths):], (probs[[1, 6, 9]] >= 0.5).astype(np.float32))  # weight 0
    assert run.valid_loader.dataset.paths == plain.valid_loader.dataset.paths  # never in the validation fold
    soft = run_of({**kit, "teacher": {**kit["teacher"], "weight": 0.5, "pseudo_max": 0}}, tmp_path / "s")
    extra = soft.train_loader.dataset.targets[len(base.paths):]
    assert len(extra) == 5 and np.allclose(extra, 0.5 * (probs[[1, 4, 6, 9, 12]] >= 0.5) + 0.5 * probs[[1, 4, 6, 9, 12]])
    # a threshold no row reaches is one line before training, with the best row's confidence to choose by
    with pytest.raises(settings.SettingsError) as err:
        run_of({**kit, "teacher": {**kit["teacher"], "pseudo_threshold": 0.98}}, tmp_path / "none")
    text = str(err.value)
    assert text.startswith("kit.teacher.pseudo_threshold: no test row of ") and "\n" not in text, text
    assert "p >= 0.98 or <= 0.02" in text and "least confident class: 0.970" in text and "pseudo_max" in text, text


def test_teacher_stopped_and_resumed_equals_straight(demo, tmp_path):
    oof, _, _ = crafted(tmp_path, demo)
    test, _, _ = crafted(tmp_path, demo, kind="test")
    kit = kit_support.tiny_kit(demo, teacher={"oof": str(oof), "test": str(test), "pseudo_threshold": 0.5})
    straight = engine.run(settings.parse(kit), None, tmp_path / "straight", clock.FixedSteps(10**9), log=quiet)
    assert straight["done"]
    for steps in (1, 3):
        assert not engine.run(settings.parse(kit), None, tmp_path / "w", clock.FixedSteps(steps), log=quiet)["done"]
    assert engine.run(settings.parse(kit), None, tmp_path / "w", clock.FixedSteps(10**9), log=quiet)["done"]
    assert kit_support.same_weights(kit_support.final_weights(tmp_path / "w"),
                                    kit_support.final_weights(tmp_path / "straight"))


def test_chain_train_validate_infer_then_a_student(demo, tmp_path, monkeypatch):
    """The teacher's train -> validate writes oof_probs.npz -> infer writes test_probs.npz -> a student reads both."""
    from kernel_src import train as entry

    monkeypatch.setenv("KPACK_SESSION_SECONDS", "3600")
    root = tmp_path / "kaggle"
    (root / "input" / "competitions").mkdir(parents=True)
    (root / "input" / "competitions" / "digits-multilabel").symlink_to(demo)
    base = {"competition": "digits-multilabel", "kaggle_user": "kpack", "kernels": {}}
    kit = kit_support.tiny_kit(demo, **{"data.folds": 2, "augment.tta": ["none"]})
    for fold in (0, 1):
        fkit = kit_support.tiny_kit(demo, **{"data.folds": 2, "data.fold": fold, "augment.tta": ["none"]})
        assert entry.main({**base, "kit": fkit}, working=tmp_path / f"train-f{fold}")["done"]
    for fold in (0, 1):  # mounted after both trained (a mounted checkpoint of another fold is refused)
        shutil.copytree(tmp_path / f"train-f{fold}", root / "input" / "notebooks" / "kpack" / f"train-f{fold}")
    validate.run({**base, "kit": {**kit, "infer": {"batch_size": 16}}}, working=tmp_path / "validate", log=quiet)
    oof = np.load(tmp_path / "validate" / teacher.OOF_FILE)
    table = table_of(demo)
    assert str(oof["kind"]) == "oof" and list(oof["ids"]) == table.ids and list(oof["classes"]) == table.labels.ids
    shutil.copytree(tmp_path / "validate", root / "input" / "notebooks" / "kpack" / "validate")
    infer.run({**base, "kit": {**kit, "infer": {"batch_size": 16, "plan": "off"}}}, working=tmp_path / "infer",
              log=quiet)
    test = np.load(tmp_path / "infer" / teacher.TEST_FILE)
    assert str(test["kind"]) == "test" and list(test["ids"]) == the_test_ids(demo)
    assert test["probs"].shape == (16, 14) and ((0 <= test["probs"]) & (test["probs"] <= 1)).all()
    shutil.copytree(tmp_path / "infer", root / "input" / "notebooks" / "kpack" / "infer")
    for folder in ("train-f0", "train-f1"):  # the student's own inputs: the validate and infer outputs
        shutil.rmtree(root / "input" / "notebooks" / "kpack" / folder)

    threshold = float(np.sort(np.maximum(test["probs"], 1 - test["probs"]).min(1))[-4])  # the 4 surest rows
    student = kit_support.tiny_kit(demo, teacher={"oof": teacher.OOF_FILE, "test": teacher.TEST_FILE,
                                                  "weight": 0.5, "pseudo_threshold": max(0.5, threshold)})
    lines: list[str] = []
    run = engine.Run(settings.parse(student), base, tmp_path / "student", clock.FixedSteps(10**9), log=lines.append)
    plain = run_of(kit_support.tiny_kit(demo), tmp_path / "plain")
    n = len(plain.train_loader.dataset)
    ds = run.train_loader.dataset
    pseudo = len(teacher.confident(test["probs"], max(0.5, threshold)))
    assert pseudo >= 4 and len(ds) == n + pseudo
    train_idx = folds.split(folds.assign(table.targets, 5, student["seed"]), 0)[0]
    assert np.allclose(ds.targets[:n], 0.5 * table.targets[train_idx] + 0.5 * oof["probs"][train_idx], atol=1e-6)
    assert any(f"{n} of {n} training rows distilled" in line and f"{pseudo} pseudo rows" in line for line in lines)
    assert run.train()["done"]
    assert torch.isfinite(torch.tensor(run.best))
