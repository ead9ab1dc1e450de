"""Start-up of a local kernel by sandbox: bubblewrap, kpack's own namespaces (unshare + pivot_root), none.

Each round runs the same kernel through `run_kernel` in every sandbox in turn (so the shared machine's load
falls on each alike), and prints the median wall seconds from `run_kernel` called to returned: a kernel
that prints one line, and one that imports numpy and torch from the local image. Sandboxes this machine
lacks are left out.

    .venv/bin/python bench/bench_sandbox.py        [KPACK_BENCH_REPEAT=N rounds, default 5]
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from packager.localkaggle import sandbox  # noqa: E402
from packager.localkaggle.runner import run_kernel  # noqa: E402

REPEAT = int(os.environ.get("KPACK_BENCH_REPEAT", 5))
KERNELS = {"print": "print('hi')\n", "import torch": "import numpy, torch\nprint(torch.__version__)\n"}


def main() -> None:
    modes = [m for m in ("none", "bwrap", "unshare") if m == "none" or sandbox.probe(m) is None]
    with tempfile.TemporaryDirectory(prefix="kpack-bench-sandbox-") as tmp:
        tmp = Path(tmp)
        for label, body in KERNELS.items():
            script = tmp / f"kernel_{len(label)}.py"
            script.write_text(body)
            times: dict[str, list[float]] = {m: [] for m in modes}
            for i in range(REPEAT + 1):  # round 0 warms the caches
                for mode in modes:
                    os.environ[sandbox.MODE_ENV] = mode
                    start = time.perf_counter()
                    result = run_kernel(script, tmp / f"run-{len(label)}-{mode}-{i}", [], enable_internet=False,
                                        timeout_s=300)
                    if result.status != "COMPLETE":
                        raise SystemExit(f"{mode} {label}: {result.failure_message}")
                    if i:
                        times[mode].append(time.perf_counter() - start)
            print(f"{label:13s} " + "  ".join(f"{m} {statistics.median(v):.3f}s" for m, v in times.items()),
                  flush=True)


if __name__ == "__main__":
    main()
