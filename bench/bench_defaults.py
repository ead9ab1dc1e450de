"""The kit's defaults against hand-tuned settings on generated competitions (bench/gencomp.py: shapes, longtail, noisy).

Per competition and config: 2 folds trained in-process (CPU, 1 torch thread, timm test_resnet from scratch), then
validate (OOF blend, searched threshold rule: kit.thresholds defaults), then infer; reported: test F2 of infer's
submission on the hidden solution (per-row F2, mean over all test rows), validate's honest cv_score and its
in-sample cv_score_in_sample, and both CV - test gaps.

    .venv/bin/python bench/bench_defaults.py [--n-train 600] [--n-test 300] [--epochs 12] [--kinds shapes,longtail,noisy]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KPACK_SESSION_SECONDS", "36000")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import gencomp  # noqa: E402
from kernel_src import infer, metrics, train, validate  # noqa: E402

CONFIGS = {"defaults": {}, "A_ema": {"ema": {"enabled": True}}, "B_batch16": {"optim": {"batch_size": 16}},
           "C_medium_aug": {"augment": {"train": "medium"}}}


def kit(size: int, epochs: int, extra: dict, fold: int | None = None) -> dict:
    k = {"data": {"image_size": size, "folds": 2, "num_workers": 0}, "model": {"name": "test_resnet"},
         "stages": [{"epochs": epochs}], "log_every_steps": 10**6}
    for section, values in extra.items():
        k[section] = {**k.get(section, {}), **values}
    if fold is not None:
        k["data"] = {**k["data"], "fold": fold}
    return k


def hot(cells, n: int) -> np.ndarray:
    y = np.zeros((len(cells), n), bool)
    for r, cell in enumerate(cells):
        for t in str(cell).split():
            y[r, int(t)] = True
    return y


def test_f2(submission: Path, comp: gencomp.Competition) -> float:
    sol = pd.read_csv(comp.solution_csv, dtype=str, keep_default_na=False).set_index("id")
    sub = pd.read_csv(submission, dtype=str, keep_default_na=False).set_index("id").loc[sol.index]
    n = len(comp.names)
    return metrics.fbeta_score(hot(sol["attribute_ids"], n), hot(sub["attribute_ids"], n))


def run_one(tmp: Path, comp: gencomp.Competition, slug: str, size: int, epochs: int, extra: dict) -> dict:
    root = tmp / "kaggle"
    shutil.rmtree(root, ignore_errors=True)
    (root / "input" / "competitions").mkdir(parents=True)
    (root / "working").mkdir()
    (root / "input" / "competitions" / slug).symlink_to(comp.data_dir)
    os.environ["KPACK_KAGGLE_ROOT"] = str(root)
    quiet = lambda s: None  # noqa: E731
    runs = tmp / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    for fold in (0, 1):  # trained outside input/: a mounted run would be taken for this one's resume
        train.main({"competition": slug, "kaggle_user": "kpack", "kernels": {},
                    "kit": kit(size, epochs, extra, fold)}, working=runs / f"train-f{fold}")
    for fold in (0, 1):
        shutil.copytree(runs / f"train-f{fold}", root / "input" / "notebooks" / "kpack" / f"train-f{fold}")
    cfg = {"competition": slug, "kaggle_user": "kpack", "kernels": {}, "kit": kit(size, epochs, extra)}
    scores = validate.run(cfg, working=root / "input" / "notebooks" / "kpack" / "validate", log=quiet)
    out = infer.run({**cfg, "kit": {**cfg["kit"], "infer": {"plan": "off"}}}, working=root / "working", log=quiet)
    f2 = test_f2(out, comp)
    cv, cv_in = scores["cv_score"], scores["cv_score_in_sample"]
    return {"test_f2": round(f2, 4), "cv": round(cv, 4), "cv_in_sample": round(cv_in, 4),
            "gap": round(cv - f2, 4), "gap_in_sample": round(cv_in - f2, 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--kinds", default=",".join(gencomp.KINDS))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    a = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="kpack-defaults-"))
    results: dict[str, dict[str, dict]] = {}
    started = time.time()
    for kind in a.kinds.split(","):
        comp = gencomp.generate(tmp / "comp" / kind, kind, seed=1, n_train=a.n_train, n_test=a.n_test)
        for name in a.configs.split(","):
            t = time.time()
            r = run_one(tmp, comp, f"gen-{kind}", gencomp.SIZES[kind], a.epochs, CONFIGS[name])
            r["seconds"] = round(time.time() - t, 1)
            results.setdefault(kind, {})[name] = r
            print(kind, name, json.dumps(r), flush=True)
    cols = ("test_f2", "cv", "cv_in_sample", "gap", "gap_in_sample")
    print(f"\n{'competition':10} {'config':13} " + " ".join(f"{c:>13}" for c in cols))
    for kind, rows in results.items():
        for name, r in rows.items():
            print(f"{kind:10} {name:13} " + " ".join(f"{r[c]:13.4f}" for c in cols))
    for name in a.configs.split(","):
        mean = {c: np.mean([results[k][name][c] for k in results]) for c in cols}
        print(f"{'mean':10} {name:13} " + " ".join(f"{mean[c]:13.4f}" for c in cols))
    for kind, rows in results.items():
        best = max(rows, key=lambda n: rows[n]["test_f2"])
        print(f"winner on {kind}: {best} (test F2 {rows[best]['test_f2']:.4f}, "
              f"defaults {rows['defaults']['test_f2']:.4f})" if "defaults" in rows else f"winner on {kind}: {best}")
    print(f"seconds: {time.time() - started:.0f}")
    print(json.dumps(results))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
