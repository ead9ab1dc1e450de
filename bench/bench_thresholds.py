"""The threshold search's time at a competition's size: per-sample F-beta (iMet's) against macro F-beta (HPA's),
side by side on the same synthetic out-of-fold probabilities.

Labels get Zipf-like frequencies (about 4.5 per row, as iMet's 1,103 culture/tag labels); a true label's
probability is drawn from Beta(3, 2), an absent one's from Beta(1, 30). Each search is kit.thresholds.search with
its defaults (method auto: fixed, global, per-class, fallbacks, top-k, context), the one validate runs once on all
OOF rows and once per cross-fit split (six in all). Prints seconds per search and their ratio per row count.

    .venv/bin/python bench/bench_thresholds.py [--labels 1103] [--rows 5000,20000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_src import thresholds  # noqa: E402


def oof(rows: int, labels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    freq = 1.0 / np.arange(1, labels + 1) ** 0.9
    freq *= 4.5 / freq.sum()
    y = rng.random((rows, labels)) < freq
    return np.where(y, rng.beta(3, 2, (rows, labels)), rng.beta(1, 30, (rows, labels))), y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", type=int, default=1103)
    ap.add_argument("--rows", default="5000,20000")
    a = ap.parse_args()
    print(f"{'rows':>7} {'samples s':>10} {'macro s':>8} {'macro/samples':>14}  rules chosen")
    for rows in (int(r) for r in a.rows.split(",")):
        p, y = oof(rows, a.labels)
        took, chosen = {}, {}
        for average in ("samples", "macro"):
            t = time.perf_counter()
            chosen[average] = thresholds.search(p, y, average=average).name
            took[average] = time.perf_counter() - t
        print(f"{rows:>7} {took['samples']:>10.1f} {took['macro']:>8.1f} {took['macro'] / took['samples']:>13.2f}x"
              f"  {chosen['samples']}, {chosen['macro']}", flush=True)


if __name__ == "__main__":
    main()
