"""Distillation and pseudo-labelling (kit.teacher) against the same student without, on a generated demo competition.

A teacher (--teacher-folds, 5: a model per fold) is trained, validate writes its OOF blend (oof_probs.npz), infer its test blend (test_probs.npz);
then one student config is trained four ways (plain, distilled, pseudo-labelled, both) on fold 0 of 5 and scored on
the hidden test labels (solution.csv) at its own best validation threshold. CPU, 1 torch thread.

    .venv/bin/python bench/bench_teacher.py [--n-train 400] [--n-test 200] [--epochs 6] [--loss focal|bce] [--threshold 0.8] [--pseudo-max 0]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KPACK_SESSION_SECONDS", "36000")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from kernel_src import clock, data, engine, infer, metrics, settings, teacher, thresholds, validate  # noqa: E402
from packager import democomp  # noqa: E402

SLUG = "digits-multilabel"


def kit(root: Path, epochs: int, loss: str, **extra) -> dict:
    k = {"seed": 3, "log_every_steps": 10**6, "data": {"root": str(root), "image_size": 32, "channels": 1,
                                                      "num_workers": 0},
         "model": {"name": "test_resnet"}, "augment": {"train": "affine", "tta": ["none"]},
         "optim": {"batch_size": 16, "lr": 1e-2}, "schedule": {"name": "onecycle"},
         "stages": [{"epochs": epochs, "loss": loss}], "ema": {"enabled": True, "decay": 0.99}}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(k.get(key), dict):
            k[key] = {**k[key], **value}
        else:
            k[key] = value
    return k


def test_f2(working: Path, comp, test_ids: list[str]) -> float:
    model = infer.find_models("best", folders=[working], log=lambda s: None)[0]
    ev = infer.EvalSettings()
    probs = infer.predict(model, [comp.data_dir / "test" / f"{i}.png" for i in test_ids], ["none"], ev, model.kit)
    threshold = json.loads((working / "metrics.json").read_text())["best"]["threshold"]
    return metrics.fbeta_score(truth(comp, test_ids), probs >= threshold)


def truth(comp, test_ids: list[str]) -> np.ndarray:
    sol = pd.read_csv(comp.solution_csv, dtype=str, keep_default_na=False).set_index("id").loc[test_ids]
    y = np.zeros((len(test_ids), len(democomp.label_names(4))), bool)
    for r, cell in enumerate(sol["attribute_ids"]):
        for t in cell.split():
            y[r, int(t)] = True
    return y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--pseudo-max", type=int, default=0, help="most pseudo rows, the most confident first (0: all)")
    ap.add_argument("--teacher-folds", type=int, default=5)
    ap.add_argument("--loss", default="focal", help="the teacher's and the students' loss (the kit's default: focal)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="kpack-teacher-"))
    os.environ["KPACK_KAGGLE_ROOT"] = str(tmp / "kaggle")
    comp = democomp.generate(tmp / "comp", seed=1, n_train=a.n_train, n_test=a.n_test, image_size=32)
    root = comp.data_dir
    inputs = tmp / "kaggle" / "input" / "notebooks" / "kpack"
    inputs.mkdir(parents=True)
    started = time.time()
    folds = range(a.teacher_folds)
    for fold in folds:
        k = kit(root, a.epochs, a.loss, data={"folds": a.teacher_folds, "fold": fold})
        engine.run(settings.parse(k), None, tmp / f"t{fold}", clock.FixedSteps(10**9), log=lambda s: None)
    for fold in folds:
        shutil.copytree(tmp / f"t{fold}", inputs / f"t{fold}")
    cfg = {"competition": SLUG, "kernels": {}, "kit": kit(root, a.epochs, a.loss, data={"folds": a.teacher_folds})}
    validate.run(cfg, working=tmp / "validate", log=lambda s: None)
    infer.run({**cfg, "kit": {**cfg["kit"], "infer": {"plan": "off"}}}, working=tmp / "infer", log=lambda s: None)
    for fold in folds:
        shutil.rmtree(inputs / f"t{fold}")
    shutil.copytree(tmp / "validate", inputs / "validate")
    shutil.copytree(tmp / "infer", inputs / "infer")
    test_ids = data.read_test(settings.parse({}).data, root).ids
    teacher_probs = np.load(tmp / "infer" / teacher.TEST_FILE)["probs"]
    oof = np.load(tmp / "validate" / teacher.OOF_FILE)
    table = data.read_train(settings.parse({}).data, root)
    rows = [table.ids.index(i) for i in oof["ids"]]
    threshold = thresholds.best_global(oof["probs"], table.targets[rows].astype(bool))[0]
    results = {"teacher_test_rows_confident": int(len(teacher.confident(teacher_probs, a.threshold, a.pseudo_max))),
               "teacher_test_margin_max": round(float(teacher.margins(teacher_probs).max()), 4),
               "teacher_blend_test_f2": round(metrics.fbeta_score(truth(comp, test_ids), teacher_probs >= threshold), 4)}
    variants = {"plain": {}, "distill": {"oof": teacher.OOF_FILE, "weight": 0.5},
                "pseudo": {"test": teacher.TEST_FILE, "pseudo_threshold": a.threshold, "pseudo_max": a.pseudo_max,
                           "weight": 0.0},
                "both": {"oof": teacher.OOF_FILE, "test": teacher.TEST_FILE, "pseudo_threshold": a.threshold,
                         "pseudo_max": a.pseudo_max, "weight": 0.5}}
    for name, spec in variants.items():
        k = kit(root, a.epochs, a.loss, **({"teacher": spec} if spec else {}))
        state = engine.run(settings.parse(k), None, tmp / name, clock.FixedSteps(10**9), log=lambda s: None)
        results[name] = {"cv_f2": round(state["best_metric"], 4), "test_f2": round(test_f2(tmp / name, comp,
                                                                                          test_ids), 4)}
        print(name, results[name], flush=True)
    results["seconds"] = round(time.time() - started, 1)
    print(json.dumps(results, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
