"""The runtime planner's error: predicted against measured inference time, over several ensemble sizes.

Trains tiny timm models with the kit (one fold per member, each member its own learning rate, 1 epoch on the
demo competition), then for each ensemble size runs kernel_src.infer over the first N members with TTA in a
fake Kaggle root: the plan (kit.infer.plan_batches timed batches per member after one warm-up) predicts the
run, the run is timed, and both are printed side by side. Each size is run --repeats times; the table shows
every error and the median. The prediction for the public test set is compared (the hidden-test factor only
scales the rows, which the multiplier test in tests/test_planner.py checks).

    .venv/bin/python bench/bench_planner.py                       # CPU, test_resnet, 32 px, 1200 test images
    .venv/bin/python bench/bench_planner.py --sizes 1 2 4 --n-test 3000 --model resnet18 --size 128
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SLUG = "digits-multilabel"


def _kit(args, lr: float) -> dict:
    return {"seed": 0, "data": {"image_size": args.size, "folds": 2, "fold": 0, "num_workers": args.workers},
            "augment": {"train": "none", "valid": "none", "tta": args.tta},
            "model": {"name": args.model, "channels_last": False},
            "optim": {"batch_size": 16, "lr": lr}, "stages": [{"epochs": 1}], "log_every_steps": 1000,
            "infer": {"batch_size": args.batch, "plan_batches": args.plan_batches}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3, 4], help="ensemble sizes (members)")
    p.add_argument("--model", default="test_resnet")
    p.add_argument("--size", type=int, default=32, help="image side, px")
    p.add_argument("--n-test", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--plan-batches", type=int, default=20)
    p.add_argument("--tta", nargs="+", default=["none", "hflip"])
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from kernel_src import infer, train
    from packager import democomp

    base = Path(tempfile.mkdtemp(prefix="bench-planner-"))
    try:
        comp = democomp.generate(base / "comp", seed=0, n_train=48, n_test=args.n_test, image_size=args.size)
        os.environ["KPACK_SESSION_SECONDS"] = "3600"
        os.environ["KPACK_KAGGLE_ROOT"] = str(base / "train-root")
        (base / "train-root" / "input").mkdir(parents=True)
        (base / "train-root" / "input" / SLUG).symlink_to(comp.data_dir)
        lrs = [3e-3 * (1.5 ** i) for i in range(max(args.sizes))]
        for i, lr in enumerate(lrs):
            train.main({"competition": SLUG, "kaggle_user": "kpack", "kernels": {}, "kit": _kit(args, lr)},
                       working=base / "runs" / f"m{i}")
        del os.environ["KPACK_SESSION_SECONDS"]
        print(f"{args.model} {args.size} px, {args.n_test} test images, batch {args.batch}, TTA {args.tta}, "
              f"{args.plan_batches} timed batches per member, {args.threads} torch thread(s), "
              f"{args.workers} loader worker(s), {os.cpu_count()} CPUs, device "
              f"{'cuda' if torch.cuda.is_available() else 'cpu'}")
        print(f"{'members':>7}  {'predicted s':>11}  {'actual s':>8}  {'error':>7}")
        medians = []
        for n in args.sizes:
            root = base / f"root-{n}"
            (root / "input" / "competitions").mkdir(parents=True)
            (root / "working").mkdir()
            (root / "input" / "competitions" / SLUG).symlink_to(comp.data_dir)
            for i in range(n):
                shutil.copytree(base / "runs" / f"m{i}", root / "input" / "notebooks" / "kpack" / f"train-m{i}")
            os.environ["KPACK_KAGGLE_ROOT"] = str(root)
            errors = []
            for _ in range(args.repeats):
                infer.run({"competition": SLUG, "kaggle_user": "kpack", "kernels": {}, "kit": _kit(args, 1e-3)},
                          log=lambda line: None)
                plan = json.loads((root / "working" / infer.PLAN_FILE).read_text())
                error = (plan["predicted_s"] - plan["actual_s"]) / plan["actual_s"]
                errors.append(error)
                print(f"{n:>7}  {plan['predicted_s']:>11.2f}  {plan['actual_s']:>8.2f}  {100 * error:>+6.1f}%",
                      flush=True)
            medians.append((n, statistics.median(abs(e) for e in errors)))
        print("median |error| per size: " + ", ".join(f"{n} member(s) {100 * e:.1f}%" for n, e in medians))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
