"""Helpers for the training-kit tests: a tiny demo competition and a tiny, fast kit config.

Tiny means: 32 px grey digits images, timm's `test_resnet` (0.4 M parameters), one torch thread (two
busy cores spin-wait badly with two), deterministic algorithms.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernel_src import checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def kit_env(monkeypatch, tmp_path):
    """Autouse where imported: each test gets its own Kaggle root (inputs, working, temp) and one torch thread."""
    monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(tmp_path / "kaggle"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_demo(out: Path, n_train: int = 80, n_test: int = 16, size: int = 32, seed: int = 0) -> Path:
    """The demo competition's data folder (train.csv, labels.csv, train/, test/)."""
    from packager import democomp

    return democomp.generate(out, seed=seed, n_train=n_train, n_test=n_test, image_size=size).data_dir


def tiny_kit(root: Path, **overrides) -> dict:
    """config["kit"] for a fast deterministic run with dropout, EMA, accumulation and a loss switch."""
    kit = {
        "seed": 3, "deterministic": True, "log_every_steps": 1000,
        "data": {"root": str(root), "image_size": 32, "num_workers": 0},
        "model": {"name": "test_resnet", "drop_rate": 0.2},
        "augment": {"train": "medium"},
        "optim": {"batch_size": 8, "accum_steps": 2, "lr": 2e-3},
        "schedule": {"name": "cosine", "warmup_steps": 2},
        "stages": [{"epochs": 2, "loss": "bce"}, {"epochs": 1, "loss": {"soft_fbeta": 1.0, "bce": 0.5}}],
        "ema": {"enabled": True, "decay": 0.9},
        "session": {"margin_seconds": 1.0},
    }
    for dotted, value in overrides.items():
        node = kit
        *path, last = dotted.split(".")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = copy.deepcopy(value)
    return kit


def train_in_process(base: Path, comp_dir: Path, slug: str, configs: dict[str, dict]) -> Path:
    """Train each config (run name: whole config) in this process into base/runs/NAME, with only the
    competition mounted (no other inputs: every run starts fresh); returns base/runs."""
    from kernel_src import train

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KPACK_SESSION_SECONDS", "3600")
        mp.setenv("KPACK_KAGGLE_ROOT", str(base / "train-root"))
        (base / "train-root" / "input").mkdir(parents=True)
        (base / "train-root" / "input" / slug).symlink_to(comp_dir)
        for name, config in configs.items():
            train.main(config, working=base / "runs" / name)
    return base / "runs"


def final_weights(working: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load_model(working / "model.pt")["model"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bitwise equality of two state dicts."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train_env(kaggle_root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KPACK_SESSION_SECONDS",)}
    env.update(KPACK_KAGGLE_ROOT=str(kaggle_root), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(REPO), NO_ALBUMENTATIONS_UPDATE="1", **extra)
    return env


def train_command(config_file: Path) -> list[str]:
    return [sys.executable, "-m", "kernel_src.train", str(config_file)]


def run_train(config_file: Path, kaggle_root: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(config_file), env=train_env(kaggle_root, **env), cwd=REPO, text=True,
                          capture_output=True, timeout=timeout)


FORKER = r"""
import json, os, sys, time, traceback
from kernel_src import clock, engine, train  # noqa: F401  (the heavy imports, once)
import yaml

config = yaml.safe_load(open(sys.argv[1]))
print("ready", flush=True)
for line in sys.stdin:
    env = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.environ.update(env)
        clock.STARTED = time.monotonic()  # this child is the "process": its clock starts now
        if env.get("SLOW_SAVE"):  # seconds per write call: kills then often land inside a save
            from kernel_src import checkpoint
            write = checkpoint._Hashing.write
            checkpoint._Hashing.write = lambda self, b: (time.sleep(float(env["SLOW_SAVE"])), write(self, b))[1]
        code = 0
        try:
            train.main(config)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(f"child {pid}", flush=True)
    _, status = os.waitpid(pid, 0)
    print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)
"""


class Forker:
    """A process that imports the kit once, then forks one training process per `start()`: each child is a
    real process to SIGKILL, without paying torch's and timm's import time on every restart."""

    def __init__(self, config_file: Path, kaggle_root: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", FORKER, str(config_file)], env=train_env(kaggle_root),
                                     cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: list[str] = []
        self.wait_for("ready")

    def wait_for(self, prefix: str) -> str:
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError("forker ended early:\n" + "".join(self.lines[-40:]))

    def start(self, **env: str) -> int:
        """Fork a training process; returns its pid once its entry has started."""
        self.proc.stdin.write(json.dumps(env) + "\n")
        self.proc.stdin.flush()
        return int(self.wait_for("child ").split()[1])

    def wait_exit(self) -> int:
        return int(self.wait_for("exit ").split()[1])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
