"""GPU-idle time between a session's end and its chain's next session's start, on the local Kaggle.

Three ways a chain is kept going, each on its own local Kaggle (a temporary root and a free port, Kaggle's
caps and dataset processing delays at their defaults: 2 GPU sessions, 2 s + 0.05 s/MB), with kpack's own
poll settings at their defaults:
- baseline: `kpack push train` of one plain chain, the watcher following it (polls back off to 5 s on local);
- campaign: `kpack push train` of 2 members (the watch is `kpack tick` every KPACK_TICK_S, 5 s on local);
- cron: the same campaign pushed with --no-wait and kept going by `kpack tick` run every --cron-s seconds
  (default 30), as a scheduled CI job would (GitHub's own schedule adds its queueing on top: minutes).
Each chain has --sessions sessions of --run-s seconds of work. The gap is the store's `started` of session
k+1 minus the `ended` of session k (the server's own timestamps), so the watcher's start-up does not count.
Reuses the tests' LocalKaggleServer and throwaway project (tests/conftest.py, tests/pushkit.py).

    .venv/bin/python bench/bench_idle.py [--sessions 3] [--run-s 2] [--cron-s 30]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import LocalKaggleServer  # noqa: E402
from pushkit import make_project  # noqa: E402

ENTRY = '''import json
import os
import time
from pathlib import Path


def main(config):
    root = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle")
    inputs = root / "input"
    earlier = sorted(inputs.rglob("state.json")) if inputs.is_dir() else []
    session = 1 + max([json.loads(p.read_text())["session"] for p in earlier] or [0])
    time.sleep({run_s})
    (root / "working" / "state.json").write_text(json.dumps({{"done": session >= {sessions}, "session": session,
                                                              "step": session}}))
'''


def when(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def gaps(server, prefix: str) -> list[float]:
    """Per chain (a slug and its -b), started[k+1] - ended[k] in push order."""
    from packager.localkaggle.store import Store

    store, chains = Store(server.root), {}
    for folder in sorted((Path(server.root) / "kernels" / "alice").glob(f"{prefix}-*")):
        base = folder.name.removesuffix("-b")
        for number in store.kernel("alice", folder.name)["versions"]:
            chains.setdefault(base, []).append(store.kernel_version("alice", folder.name, number))
    found = []
    for records in chains.values():
        records.sort(key=lambda r: when(r["started"]))
        found += [when(b["started"]) - when(a["ended"]) for a, b in zip(records, records[1:])]
    return found


def run(mode: str, args, base: Path) -> list[float]:
    server = LocalKaggleServer(base / "root", None, 0, 600, "--dataset-processing-s", "2.0",
                               "--dataset-processing-s-per-mb", "0.05").start()  # the server's defaults
    try:
        project = make_project(base, server, datasets=False)
        project.write_entry(ENTRY.format(run_s=args.run_s, sessions=args.sessions))
        config = project.root / "kpack.yaml"
        text = config.read_text().replace("accelerator: 'None'", "accelerator: NvidiaTeslaT4")
        if mode != "baseline":
            text = text.replace("session_hours: 0.02}", "session_hours: 0.05, members: {folds: [0, 1]}}")
        config.write_text(text.replace("session_hours: 0.02}", "session_hours: 0.05}"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
        env.update(HOME=str(base / "home"), TMPDIR=str(base), KAGGLE_CONFIG_DIR=str(base / "home" / ".kaggle"))
        (base / "home" / ".kaggle").mkdir(parents=True, exist_ok=True)
        kpack = [sys.executable, "-m", "packager.cli"]
        quiet = {"cwd": project.root, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        if mode == "cron":
            subprocess.run([*kpack, "push", "train", "--no-wait"], check=True, **quiet)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                done = subprocess.run([*kpack, "tick"], cwd=project.root, env=env, capture_output=True, text=True)
                summary = done.stdout.split("tick:")[-1]
                if not any(word in summary for word in ("open", "next", "waiting")):
                    break
                time.sleep(args.cron_s)
        else:
            subprocess.run([*kpack, "push", "train"], check=True, timeout=600, **quiet)
        return gaps(server, project.prefix)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--run-s", type=float, default=2.0)
    parser.add_argument("--cron-s", type=float, default=30.0)
    args = parser.parse_args()
    print(f"{args.sessions} sessions of {args.run_s:g} s per chain; gap = next session's start - this one's end")
    print(f"{'how the chain is kept going':58} {'gaps':>5} {'median s':>9} {'max s':>7}")
    labels = {"baseline": "baseline: kpack push train, one chain, its watcher",
              "campaign": "campaign: kpack push train, 2 members, tick loop",
              "cron": f"cron: push --no-wait, then kpack tick every {args.cron_s:g} s"}
    for mode, label in labels.items():
        with tempfile.TemporaryDirectory(prefix=f"bench-idle-{mode}-") as tmp:
            found = run(mode, args, Path(tmp))
        print(f"{label:58} {len(found):>5} {statistics.median(found):>9.1f} {max(found):>7.1f}", flush=True)


if __name__ == "__main__":
    main()
