"""Both GPUs: the train entry starts one process per device itself (kpack_runtime/launch.py, fork), here two gloo
processes on the CPU (KPACK_PROCESSES=2) standing in for a T4 x2: both ranks train, a stop after a session's
steps resumes to the straight run's weights, and a failing rank ends the launch with one line and exit 2."""
from __future__ import annotations

import json

import pytest

import kit_support
from kit_support import kit_env  # noqa: F401  (autouse: own Kaggle root, one thread)
from kernel_src import train


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return kit_support.make_demo(tmp_path_factory.mktemp("demo"), n_train=48, n_test=4)


def _config(kit: dict) -> dict:
    return {"competition": "demo", "kaggle_user": "kpack", "kernels": {}, "kit": kit}


def _kit(demo, **overrides) -> dict:
    return kit_support.tiny_kit(demo, **{"stages": [{"epochs": 2, "loss": "bce"}], **overrides})


def test_two_processes_train_and_resume_to_the_straight_runs_weights(demo, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("KPACK_SESSION_SECONDS", "3600")
    monkeypatch.setenv("KPACK_PROCESSES", "2")
    kit = _kit(demo)
    straight = train.main(_config(kit), working=tmp_path / "straight")
    assert straight["done"] and straight["world"] == 2
    out = capfd.readouterr().out
    assert "[kpack] 2 processes (one per device), ranks 0-1" in out
    assert out.count("[kpack] train: session budget") == 1  # rank 0 speaks for both

    stopped = train.main(_config(_kit(demo, **{"session.max_steps": 1})), working=tmp_path / "w")
    assert not stopped["done"] and stopped["step"] == 1 and stopped["world"] == 2
    resumed = train.main(_config(kit), working=tmp_path / "w")
    assert resumed["done"] and resumed["step"] == straight["step"] == straight["total_steps"]
    assert kit_support.same_weights(kit_support.final_weights(tmp_path / "w"),
                                    kit_support.final_weights(tmp_path / "straight"))
    state = json.loads((tmp_path / "w" / "state.json").read_text())
    assert state["world"] == 2 and state["session"]["resumed_from"]


def test_one_process_is_this_process_and_differs_from_two(demo, tmp_path, monkeypatch, capfd):
    """KPACK_PROCESSES=1 (or one device): no launch; each rank sees half the batches, so the runs differ."""
    monkeypatch.setenv("KPACK_SESSION_SECONDS", "3600")
    monkeypatch.setenv("KPACK_PROCESSES", "1")
    kit = _kit(demo, **{"stages": [{"epochs": 1, "loss": "bce"}]})
    one = train.main(_config(kit), working=tmp_path / "one")
    assert one["world"] == 1 and "processes (one per device)" not in capfd.readouterr().out
    monkeypatch.setenv("KPACK_PROCESSES", "2")
    two = train.main(_config(kit), working=tmp_path / "two")
    assert two["world"] == 2 and two["total_steps"] < one["total_steps"]


def test_a_failing_rank_is_one_line_and_exit_2(demo, tmp_path, monkeypatch, capfd):
    """Resuming a 1-process checkpoint with 2 processes fails on both ranks alike: the line is printed once."""
    monkeypatch.setenv("KPACK_SESSION_SECONDS", "3600")
    monkeypatch.setenv("KPACK_PROCESSES", "1")
    train.main(_config(_kit(demo, **{"session.max_steps": 1})), working=tmp_path / "w")
    capfd.readouterr()
    monkeypatch.setenv("KPACK_PROCESSES", "2")
    with pytest.raises(SystemExit) as exc:
        train.main(_config(_kit(demo)), working=tmp_path / "w")
    assert exc.value.code == 2
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("[kpack] error: ") and "trained with 1 processes" in err[0], err


def test_a_bad_process_count_is_one_line(monkeypatch, capfd):
    monkeypatch.setenv("KPACK_PROCESSES", "two")
    with pytest.raises(SystemExit) as exc:
        train.main(_config({}))
    assert exc.value.code == 2
    assert capfd.readouterr().err.strip().startswith("[kpack] error: KPACK_PROCESSES='two': use auto or")


@pytest.mark.parametrize("how", ["setting", "env"])
def test_the_packed_script_launches_two_processes(demo, tmp_path, monkeypatch, how):
    """The single-file kernel script itself (built as kpack push builds it): kit.processes: 2 in the config, no
    environment variable (as on Kaggle); or KPACK_PROCESSES=2 overriding a config's 1."""
    import shutil
    import subprocess
    import sys

    from packager.build import build_kernel
    from packager.config import parse_config

    root = tmp_path / "project"
    shutil.copytree(kit_support.REPO / "kernel_src", root / "kernel_src", ignore=shutil.ignore_patterns("__pycache__"))
    kit = _kit(demo, **{"stages": [{"epochs": 1, "loss": "bce"}], "processes": 2 if how == "setting" else 1})
    cfg = parse_config({"competition": "demo", "kaggle_user": "kpack",
                        "kernels": {"train": {"entry": "kernel_src/train.py", "slug": "ddp-train"}}, "kit": kit})
    monkeypatch.setenv("KPACK_IMPORT_CHECK", "warn")  # torch, timm: this venv's, as the kernel image's would be
    built = build_kernel(cfg, "train", root=root)
    kaggle = tmp_path / "kaggle"
    (kaggle / "working").mkdir(parents=True)
    env = kit_support.train_env(kaggle, KPACK_SESSION_SECONDS="3600")
    env.pop("KPACK_PROCESSES", None)
    if how == "env":
        env["KPACK_PROCESSES"] = "2"
    env.pop("PYTHONPATH")  # the script brings its own modules
    done = subprocess.run([sys.executable, str(built.script)], env=env, cwd=tmp_path, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "[kpack] 2 processes (one per device), ranks 0-1" in done.stdout
    state = json.loads((kaggle / "working" / "state.json").read_text())
    assert state["done"] and state["world"] == 2


def test_auto_is_one_process_per_visible_gpu(monkeypatch):
    import torch

    from kpack_runtime import launch

    monkeypatch.delenv("KPACK_PROCESSES", raising=False)
    monkeypatch.setattr(torch.cuda, "_is_compiled", lambda: True)  # a CPU-only torch in CI too
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: 2)
    assert launch.process_count() == 2
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: 0)
    assert launch.process_count() == 1
    monkeypatch.setenv("KPACK_PROCESSES", "3")
    assert launch.process_count() == 3


def test_a_crashing_rank_stops_the_one_waiting_for_it(demo, tmp_path, monkeypatch, capfd):
    """Rank 1 raises (a bug, not a user's mistake) while rank 0 waits in a collective: rank 0 is stopped,
    the launch exits 1 with rank 1's traceback, and nothing waits for a timeout."""
    import os
    import time

    from kernel_src import engine

    monkeypatch.setenv("KPACK_SESSION_SECONDS", "3600")
    monkeypatch.setenv("KPACK_PROCESSES", "2")
    train_loop = engine.Run.train

    def broken(self):
        if os.environ["RANK"] == "1":
            raise RuntimeError("rank 1 broke")
        return train_loop(self)
    monkeypatch.setattr(engine.Run, "train", broken)
    started = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        train.main(_config(_kit(demo)), working=tmp_path / "w")
    assert exc.value.code == 1 and time.monotonic() - started < 60
    err = capfd.readouterr().err
    assert "RuntimeError: rank 1 broke" in err and not (tmp_path / "w" / "state.json").exists()


def test_kit_processes_is_validated_before_any_fork_and_the_env_var_overrides(monkeypatch, capfd):
    from kpack_runtime import launch

    monkeypatch.delenv("KPACK_PROCESSES", raising=False)
    with pytest.raises(SystemExit) as exc:
        train.main(_config({"processes": "two"}))
    assert exc.value.code == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("[kpack] error: kit.processes: expected one of 'auto', 1, 2") and "\n" not in err
    assert launch.process_count(3) == 3
    monkeypatch.setenv("KPACK_PROCESSES", "1")
    assert launch.process_count(3) == 1
