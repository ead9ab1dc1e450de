"""The kit's defaults against hand-tuned settings on generated competitions (bench/gencomp.py: shapes, longtail, noisy,
scenes; and `digits`, the demo's generator).

Per competition and config: 2 folds (--folds) trained in-process (CPU, 1 torch thread, timm test_resnet from
scratch, or with --pretrained from weights trained on another kind's competition), then validate (OOF blend,
searched threshold rule: kit.thresholds defaults), then infer; reported: test F2 of infer's submission on the
hidden solution (per-row F2, mean over all test rows; with --beta/--average, that F-beta: the kit is then
a copy whose metrics.py says so, as a competitor edits it), validate's honest cv_score and its in-sample
cv_score_in_sample, both CV - test gaps, and test_f2_one / gap_one: fold 0's model alone on the test (the CV
scores each row with one model, the submission blends the folds).
With the defaults among several configs, a last summary sets the defaults against the config a tuner would
keep by its CV (scored on the test) and against the best on the test itself.

    .venv/bin/python bench/bench_defaults.py [--n-train 600] [--n-test 300] [--epochs 12] [--folds 2] [--seeds 1,2]
        [--kinds shapes,longtail,noisy,scenes,digits (all five)] [--configs defaults,batch32,lr1e-3,...: the CONFIGS below] [--pretrained]
        [--beta 2] [--average samples|macro|micro]
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

KIT = Path(__file__).resolve().parents[1] / "kernel_src"


def load_kit(beta: float, average: str, tmp: Path) -> None:
    """Import the kit as infer, metrics, train, validate here; for another F-beta than the kit's own, from a copy
    whose metrics.py sets BETA and AVERAGE (import-time constants, the one edit a competitor makes)."""
    if (beta, average) != (2.0, "samples"):
        copy = tmp / "kit" / "kernel_src"
        shutil.copytree(KIT, copy, ignore=shutil.ignore_patterns("__pycache__"))
        text = (copy / "metrics.py").read_text()
        edited = text.replace("BETA = 2.0", f"BETA = {beta!r}", 1)
        edited = edited.replace('AVERAGE = "samples"', f"AVERAGE = {average!r}", 1)
        if edited.count(f"BETA = {beta!r}") != 1 or f"AVERAGE = {average!r}" not in edited:
            raise SystemExit("bench_defaults: kernel_src/metrics.py no longer reads BETA = 2.0 / AVERAGE = \"samples\"")
        (copy / "metrics.py").write_text(edited)
        sys.path.insert(0, str(copy.parent))
    import importlib
    for name in ("infer", "metrics", "train", "validate"):
        globals()[name] = importlib.import_module(f"kernel_src.{name}")

CONFIGS = {  # a mapping of kit sections merged over the defaults, or a function of the image size giving one
    "defaults": {},
    # batch size against step count, learning rate, schedule, EMA, augmentation, threshold method
    "batch8": {"optim": {"batch_size": 8}}, "batch16": {"optim": {"batch_size": 16}},
    "batch32": {"optim": {"batch_size": 32}}, "batch64": {"optim": {"batch_size": 64}},
    "lr1e-3": {"optim": {"lr": 1e-3}}, "lr3e-3": {"optim": {"lr": 3e-3}}, "lr1e-2": {"optim": {"lr": 1e-2}},
    "lr3e-4": {"optim": {"lr": 3e-4}},
    "onecycle": {"schedule": {"name": "onecycle"}}, "warmup": {"schedule": {"warmup_steps": 50}},
    "ema": {"ema": {"enabled": True}}, "medium_aug": {"augment": {"train": "medium"}},
    "thr_global": {"thresholds": {"method": "global"}},
    "one_of_scenes": {"thresholds": {"one_of": ["sky", "ground"]}},  # scenes only: the search keeps each or not
    # honest CV of the whole submission: a fifth of the rows held out of every fold (gap_holdout)
    "holdout": {"data": {"holdout": 0.2}},
    # the winners' techniques
    "label_smooth": {"stages": [{"label_smoothing": 0.1}]}, "mixup": {"mix": {"mixup_alpha": 0.4}},
    "cutmix": {"mix": {"cutmix_alpha": 1.0}}, "mining": {"mining": {"share": 0.2}},
    "multiscale": lambda size: {"data": {"train_sizes": [round(size * 0.75), size, round(size * 1.25)]}},
    "freeze": {"freeze": {"train_stages": 2, "unfreeze_every": 2, "lr_decay": 0.7}},  # for --pretrained
    # losses (the default is focal, gamma 2)
    "bce": {"stages": [{"loss": "bce"}]}, "bce_smooth": {"stages": [{"loss": "bce", "label_smoothing": 0.1}]},
    "soft_f2": {"stages": [{"loss": {"bce": 1.0, "soft_fbeta": 1.0}}]},
    "focal_g1": {"stages": [{"loss": {"focal": {"weight": 1.0, "gamma": 1.0}}}]},
    # for --average macro: focal plus a soft macro F1 (soft counts per label over the batch)
    "soft_f1_macro": {"stages": [{"loss": {"focal": 1.0, "soft_fbeta": {"beta": 1.0, "average": "macro"}}}]},
    "focal_g05": {"stages": [{"loss": {"focal": {"weight": 1.0, "gamma": 0.5}}}]},
}


MODEL = "test_resnet"  # --model


def kit(size: int, epochs: int, extra: dict, folds: int, fold: int | None = None) -> dict:
    k = {"data": {"image_size": size, "folds": folds, "num_workers": 0}, "model": {"name": MODEL},
         "stages": [{"epochs": epochs}], "log_every_steps": 10**6}
    for section, values in extra.items():
        if section == "stages":  # merged into the single stage, which keeps the run's epochs
            k["stages"] = [{**k["stages"][0], **values[0]}]
        else:
            k[section] = {**k.get(section, {}), **values}
    if fold is not None:
        k["data"] = {**k["data"], "fold": fold}
    return k


def test_f2(submission: Path, comp: gencomp.Competition) -> float:
    sol = pd.read_csv(comp.solution_csv, dtype=str, keep_default_na=False)
    sol = sol.set_index(sol.columns[0])
    sub = pd.read_csv(submission, dtype=str, keep_default_na=False).set_index(sol.index.name).loc[sol.index]
    n, column = len(comp.names), sol.columns[0]  # attribute_ids (Predicted in HPA's layout)
    return metrics.fbeta_score(gencomp.hot(sol[column], n), gencomp.hot(sub[column], n))


# the kinds of gencomp.py, and `digits`: the demo's generator (packager/democomp.py, 32 px, RGB)
KINDS = (*gencomp.KINDS, "digits")
SIZES = {**gencomp.SIZES, "digits": 32}


def generate(out: Path, kind: str, seed: int, n_train: int, n_test: int) -> gencomp.Competition:
    if kind != "digits":
        return gencomp.generate(out, kind, seed=seed, n_train=n_train, n_test=n_test)
    from packager import democomp
    demo = democomp.generate(out, seed=seed, n_train=n_train, n_test=n_test, image_size=32, mode="RGB")
    return gencomp.Competition("digits", demo.data_dir, demo.solution_csv, demo.data_dir / "train.csv",
                               democomp.label_names())


def mount(tmp: Path, comp: gencomp.Competition, slug: str) -> Path:
    """A fresh Kaggle root with `comp` mounted as competition `slug` (KPACK_KAGGLE_ROOT points at it)."""
    root = tmp / "kaggle"
    shutil.rmtree(root, ignore_errors=True)
    (root / "input" / "competitions").mkdir(parents=True)
    (root / "working").mkdir()
    (root / "input" / "competitions" / slug).symlink_to(comp.data_dir)
    os.environ["KPACK_KAGGLE_ROOT"] = str(root)
    return root


# --pretrained: weights learnt on another kind's task stand in for ImageNet's (features, not these labels)
PRETRAIN_SOURCE = {"shapes": "longtail", "longtail": "shapes", "noisy": "longtail", "digits": "longtail",
                   "scenes": "shapes", "cells": "shapes"}  # cells: the first conv adapted from 3 channels to 4


def pretrained_weights(tmp: Path, kind: str, epochs: int) -> Path:
    """model.pt of a test_resnet trained on all 2,400 rows of PRETRAIN_SOURCE[kind]'s competition (seed 99)."""
    source = PRETRAIN_SOURCE[kind]
    working = tmp / "pretrained" / source
    if not (working / "model.pt").exists():
        comp = gencomp.generate(tmp / "pretrain" / source, source, seed=99, n_train=2400, n_test=10)
        mount(tmp, comp, f"gen-{source}")
        train.main({"competition": f"gen-{source}", "kaggle_user": "kpack", "kernels": {},
                    "kit": kit(SIZES[source], epochs, {}, 2, -1)}, working=working)
    return working / "model.pt"


def run_one(tmp: Path, comp: gencomp.Competition, slug: str, size: int, epochs: int, extra: dict,
            folds: int = 2) -> dict:
    root = mount(tmp, comp, slug)
    extra = {**extra, "data": {**comp.kit_data, **extra.get("data", {})}}  # the layout's columns and channels
    quiet = lambda s: None  # noqa: E731
    runs = tmp / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    for fold in range(folds):  # trained outside input/: a mounted run would be taken for this one's resume
        train.main({"competition": slug, "kaggle_user": "kpack", "kernels": {},
                    "kit": kit(size, epochs, extra, folds, fold)}, working=runs / f"train-f{fold}")
    for fold in range(folds):
        shutil.copytree(runs / f"train-f{fold}", root / "input" / "notebooks" / "kpack" / f"train-f{fold}")
    cfg = {"competition": slug, "kaggle_user": "kpack", "kernels": {}, "kit": kit(size, epochs, extra, folds)}
    scores = validate.run(cfg, working=root / "input" / "notebooks" / "kpack" / "validate", log=quiet)
    infer_cfg = {**cfg, "kit": {**cfg["kit"], "infer": {"plan": "off"}}}
    f2 = test_f2(infer.run(infer_cfg, working=root / "working", log=quiet), comp)
    # the CV scores each row with one fold's model; the submission blends all folds. Fold 0's model alone on the
    # test (validate's rule) tells the blend's gain apart from the CV's own bias
    for fold in range(1, folds):
        shutil.rmtree(root / "input" / "notebooks" / "kpack" / f"train-f{fold}")
    f2_one = test_f2(infer.run(infer_cfg, working=root / "working-one", log=quiet), comp)
    cv, cv_in = scores["cv_score"], scores["cv_score_in_sample"]
    held = {"holdout": round(scores["holdout_score"], 4), "gap_holdout": round(scores["holdout_score"] - f2, 4)} \
        if "holdout_score" in scores else {}
    return {"test_f2": round(f2, 4), "cv": round(cv, 4), "cv_in_sample": round(cv_in, 4),
            "gap": round(cv - f2, 4), "gap_in_sample": round(cv_in - f2, 4), "test_f2_one": round(f2_one, 4),
            "gap_one": round(cv - f2_one, 4), **held}


def tuned_vs_defaults(results: dict[str, dict[str, dict]]) -> None:
    """Per competition, the defaults against tuning: `by CV` is the config a careful tuner keeps (the highest
    validate CV among those tried, the defaults included), scored on the test; `by test` peeks at the test, so
    with many noisy configs it is above the defaults by selection alone and bounds what tuning could reach."""
    by_cv, by_test = [], []
    for kind, rows in results.items():
        chosen = max(rows, key=lambda n: rows[n]["cv"])
        oracle = max(rows, key=lambda n: rows[n]["test_f2"])
        base = rows["defaults"]["test_f2"]
        by_cv.append(base - rows[chosen]["test_f2"])
        by_test.append(base - rows[oracle]["test_f2"])
        print(f"{kind}: defaults {base:.4f}; tuned by CV: {chosen} {rows[chosen]['test_f2']:.4f} "
              f"({by_cv[-1]:+.4f}); by test: {oracle} {rows[oracle]['test_f2']:.4f} ({by_test[-1]:+.4f})")
    print(f"defaults minus tuned, mean over {len(by_cv)}: by CV {np.mean(by_cv):+.4f} "
          f"(defaults ahead or level on {sum(d >= 0 for d in by_cv)}), by test {np.mean(by_test):+.4f}")
    for col in ("gap", "gap_one"):  # a single gap is mostly sampling noise at these sizes: the mean is the figure
        gaps = [rows["defaults"][col] for rows in results.values()]
        print(f"defaults' {col}: mean {np.mean(gaps):+.4f} (standard error {np.std(gaps, ddof=1) / len(gaps) ** .5:.4f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--configs", default="defaults,bce,label_smooth,ema", help=",".join(CONFIGS))
    ap.add_argument("--seeds", default="1", help="data seeds: each kind is generated once per seed")
    ap.add_argument("--pretrained", action="store_true",
                    help="start every run from weights trained on another kind's competition (PRETRAIN_SOURCE)")
    ap.add_argument("--model", default=MODEL, help="a timm architecture, from scratch (or --pretrained)")
    ap.add_argument("--beta", type=float, default=2.0, help="the metric's beta (kernel_src/metrics.py BETA)")
    ap.add_argument("--average", default="samples", choices=("samples", "macro", "micro"),
                    help="how the metric averages F-beta (kernel_src/metrics.py AVERAGE)")
    a = ap.parse_args()
    globals()["MODEL"] = a.model
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="kpack-defaults-"))
    load_kit(a.beta, a.average, tmp)
    print(f"scores (test_f2, cv, ...) are the kit's {metrics.NAME}", flush=True)
    results: dict[str, dict[str, dict]] = {}
    started = time.time()
    seeds, names = [int(s) for s in a.seeds.split(",")], a.configs.split(",")
    for kind in a.kinds.split(","):
        for seed in seeds:
            row = kind if len(seeds) == 1 else f"{kind}/s{seed}"
            comp = generate(tmp / "comp" / row, kind, seed, a.n_train, a.n_test)
            weights = {"model": {"weights": str(pretrained_weights(tmp, kind, a.epochs))}} if a.pretrained else {}
            for name in names:
                t = time.time()
                size, extra = SIZES[kind], CONFIGS[name]
                extra = extra(size) if callable(extra) else extra
                r = run_one(tmp, comp, f"gen-{kind}", size, a.epochs, {**weights, **extra}, a.folds)
                r["seconds"] = round(time.time() - t, 1)
                results.setdefault(row, {})[name] = r
                print(row, name, json.dumps(r), flush=True)
    cols = ("test_f2", "cv", "cv_in_sample", "gap", "gap_in_sample", "test_f2_one", "gap_one")
    print(f"\n{'competition':10} {'config':13} " + " ".join(f"{c:>13}" for c in cols))
    for kind, rows in results.items():
        for name, r in rows.items():
            print(f"{kind:10} {name:13} " + " ".join(f"{r[c]:13.4f}" for c in cols))
    for name in names:
        mean = {c: np.mean([results[k][name][c] for k in results]) for c in cols}
        print(f"{'mean':10} {name:13} " + " ".join(f"{mean[c]:13.4f}" for c in cols))
    for name in names:  # kit.data.holdout: the whole submission scored on rows no fold trained on, minus test
        gaps = [results[k][name]["gap_holdout"] for k in results if "gap_holdout" in results[k][name]]
        if len(gaps) > 1:
            print(f"{name}: gap_holdout mean {np.mean(gaps):+.4f} (standard error "
                  f"{np.std(gaps, ddof=1) / len(gaps) ** .5:.4f}, {len(gaps)} competitions)")
    if "defaults" in names and len(names) > 1:
        tuned_vs_defaults(results)
    print(f"seconds: {time.time() - started:.0f}")
    print(json.dumps(results))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
