"""`make demo` (= `kpack demo`): the repository's own project, end to end on the embedded local Kaggle.

Runs the real command in a copy of the project (its kpack.yaml, kernel_src, requirements) with the kit cut
to a few epochs, on a private port and state folder: the local Kaggle is started, the demo competition made,
train, validate and infer pushed and waited for, the submission scored, and the ledger printed.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_kpack_demo_runs_the_whole_flow(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("kernel_src", "models"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "requirements-kernel.txt", project)
    cache = REPO / "build" / "wheel-cache"
    if cache.is_dir():  # reuse the wheels a build here already downloaded; a fresh clone downloads them
        (project / "build").mkdir()
        (project / "build" / "wheel-cache").symlink_to(cache)
    config = yaml.safe_load((REPO / "kpack.yaml").read_text())
    port = free_port()
    config["local"] = {"port": port, "root": str(tmp_path / "localkaggle")}
    config["kit"]["stages"] = [{"epochs": 2, "loss": "bce"}, {"epochs": 1, "loss": "soft_fbeta"}]
    (project / "kpack.yaml").write_text(yaml.safe_dump(config))

    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAGGLE_", "TELEGRAM_")) and k.lower() not in ("http_proxy", "no_proxy")}
    # 45 steps in all (2 + 1 epochs of 15): sessions of 20, 20 and 5 steps
    env.update(HOME=str(home), KAGGLE_CONFIG_DIR=str(home / ".kaggle"), PYTHONPATH=str(REPO),
               KPACK_DEMO_SESSION_STEPS="20")
    try:
        done = subprocess.run([sys.executable, "-m", "packager.cli", "demo"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=900)
    finally:
        _stop_server(port)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert f"competition {config['competition']}: created on the local Kaggle" in out
    assert "demo: each train session stops after 20 steps" in out
    assert "training not done (state.json); pushing session 3" in out
    for kind in ("train", "validate", "infer"):
        assert f"kpack/{config['competition']}-{kind} v1: COMPLETE" in out, out[-3000:]
    assert "submission.csv" in out and "public score" in out

    rows = [json.loads(line) for line in (project / "runs" / "ledger.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["session"], r["status"]) for r in rows] == [
        ("train", 1, "COMPLETE"), ("train", 2, "COMPLETE"), ("train", 3, "COMPLETE"), ("validate", 1, "COMPLETE"),
        ("infer", 1, "COMPLETE")]
    assert 0 < rows[3]["cv_score"] <= 1 and 0 <= rows[4]["lb_score"] <= 1
    # sessions alternate between two kernels: session 2 is <slug>-b v1, session 3 is <slug> v2
    states = [json.loads((project / "runs" / slug / f"v{v}" / "state.json").read_text())
              for slug, v in ((f"{config['competition']}-train-b", 1), (f"{config['competition']}-train", 2))]
    assert [(s["step"], s["session"]["steps"], s["done"]) for s in states] == [(40, 20, False), (45, 5, True)]
    first = f"{config['competition']}-train"
    log = (project / "runs" / first / "v1" / f"{first}.log").read_text()
    assert "stopped at the session's step limit (kit.session.max_steps): step 20/45" in log
    submission = (project / "runs" / f"{config['competition']}-infer" / "v1" / "submission.csv").read_text()
    assert submission.splitlines()[0] == "id,attribute_ids" and len(submission.splitlines()) > 1


def _stop_server(port: int) -> None:
    """The demo leaves its local Kaggle running for `kpack status|output`; a test must not."""
    from packager.localkaggle.client_env import health

    pid = (health(port) or {}).get("pid")
    if pid:
        os.kill(pid, signal.SIGTERM)
