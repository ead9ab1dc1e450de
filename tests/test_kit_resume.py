"""Exact resume: training stopped (by the clock, or by kill -9) and resumed ends with the same weights, bit for bit,
as training straight through. Deterministic mode, tiny model and data (see kit_support)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import kit_support
from kit_support import kit_env  # noqa: F401  (autouse: own Kaggle root, one thread)
from kernel_src import atomic, checkpoint, clock, engine, settings


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return kit_support.make_demo(tmp_path_factory.mktemp("demo"), n_train=64, n_test=8)


def quiet(_: str) -> None:
    pass


def train(kit: dict, working, steps: int = 10**9, **kw) -> dict:
    return engine.run(settings.parse(kit), None, working, clock.FixedSteps(steps), log=quiet, **kw)


@pytest.fixture(scope="module")
def straight(demo, tmp_path_factory):
    """The reference: each config trained straight through, once per module."""
    done = {}

    def get(kit: dict):
        key = json.dumps(kit, sort_keys=True)
        if key not in done:
            working = tmp_path_factory.mktemp("straight")
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            started = time.monotonic()
            summary = train(kit, working)
            summary["wall_s"] = time.monotonic() - started  # FixedSteps measures no time
            torch.set_num_threads(threads)
            done[key] = (working, summary)
        return done[key]
    return get


@pytest.mark.parametrize("stops", [[1], [3], [2, 5], [1, 1, 1, 1]], ids=["mid-epoch", "epoch-end", "two", "many"])
def test_stopped_and_resumed_equals_straight(demo, straight, tmp_path, stops):
    kit = kit_support.tiny_kit(demo)
    ref_dir, ref = straight(kit)
    working = tmp_path / "w"
    positions = []
    for steps in stops:
        summary = train(kit, working, steps)
        assert not summary["done"] and summary["stopped_by"] == "clock"
        positions.append((summary["epoch"], summary["batch"]))
    summary = train(kit, working)
    assert summary["done"] and summary["step"] == ref["step"] == ref["total_steps"]
    assert kit_support.same_weights(kit_support.final_weights(working), kit_support.final_weights(ref_dir))
    assert json.loads((working / "metrics.json").read_text()) == json.loads((ref_dir / "metrics.json").read_text())
    assert (working / "oof.npy").read_bytes() == (ref_dir / "oof.npy").read_bytes()
    if stops == [1]:
        assert positions == [(0, 2)]  # stopped inside the first epoch: 1 step = 2 accumulated batches


def test_batch_size_auto_trains_and_resumes_as_its_number(demo, straight, tmp_path):
    """auto resolves from the fold's rows (51 here: 8) before anything is hashed or saved: stopped and resumed it
    ends bit for bit where the explicit 8 ends straight through, and kit.json records the number."""
    ref_dir, ref = straight(kit_support.tiny_kit(demo))
    kit = kit_support.tiny_kit(demo, **{"optim.batch_size": "auto"})
    said = []
    summary = engine.run(settings.parse(kit), None, tmp_path, clock.FixedSteps(2), log=said.append)
    assert not summary["done"] and any(line.startswith("[kpack] optim.batch_size auto: 8 per process") for line in said)
    summary = train(kit, tmp_path)
    assert summary["done"] and summary["step"] == ref["step"]
    assert kit_support.same_weights(kit_support.final_weights(tmp_path), kit_support.final_weights(ref_dir))
    assert json.loads((tmp_path / "kit.json").read_text())["optim"]["batch_size"] == 8


SGD_AND_OTHER_LOSSES = {
    "optim": {"name": "sgd", "lr": 0.05, "batch_size": 8, "grad_clip": 1.0},
    "schedule": {"name": "onecycle"}, "ema": {"enabled": False},
    "stages": [{"epochs": 1, "loss": {"focal": 1.0, "forgiving": {"weight": 0.5, "w": 2.0}}},
               {"epochs": 1, "loss": "soft_fbeta", "lr_scale": 0.5}]}
WORKERS = {"data.num_workers": 2}
CACHE = {"data.cache": True, "data.num_workers": 2}  # the demo's images are already 32 px: resizing changes nothing


@pytest.mark.parametrize("trained,reference,stops", [
    (SGD_AND_OTHER_LOSSES, SGD_AND_OTHER_LOSSES, [3]),
    (WORKERS, {}, [4]),          # runtime-only settings: the same run as with no workers
    (CACHE, {}, []),
], ids=["sgd-onecycle-clip-focal-forgiving", "workers", "cache"])
def test_variants_end_with_their_straight_runs_weights(demo, straight, tmp_path, trained, reference, stops):
    ref_dir, _ = straight(kit_support.tiny_kit(demo, **reference))
    kit = kit_support.tiny_kit(demo, **trained)
    for steps in stops:
        train(kit, tmp_path / "w", steps)
    assert train(kit, tmp_path / "w")["done"]
    assert kit_support.same_weights(kit_support.final_weights(tmp_path / "w"), kit_support.final_weights(ref_dir))
    if trained is CACHE:  # the cache lives in the temp dir, never in the output
        assert list((tmp_path / "kaggle" / "temp" / "kpack-cache").glob("*.u8"))
        assert not [p for p in (tmp_path / "w").iterdir() if p.suffix == ".u8"]


class NoTimeToValidate(clock.FixedSteps):
    """Refuses the first validation, as a clock short of time would."""

    def can_validate(self, checkpoint_bytes: int = 0) -> bool:
        return False


def test_stop_before_validation_then_validate_on_resume(demo, straight, tmp_path):
    kit = kit_support.tiny_kit(demo)
    ref_dir, _ = straight(kit)
    first = engine.run(settings.parse(kit), None, tmp_path / "w", NoTimeToValidate(10**9), log=quiet)
    assert not first["done"] and first["epoch"] == 0 and first["best_metric"] is None
    assert train(kit, tmp_path / "w")["done"]
    assert kit_support.same_weights(kit_support.final_weights(tmp_path / "w"), kit_support.final_weights(ref_dir))


def test_next_session_resumes_from_inputs_and_carries_outputs(demo, straight, tmp_path):
    """Session 2 sees session 1's output only as a read-only input (a kernel source), as on Kaggle."""
    kit = kit_support.tiny_kit(demo)
    ref_dir, _ = straight(kit)
    root = tmp_path / "kaggle"
    first = train(kit, root / "working", 4)
    assert first["epoch"] == 1  # one epoch validated: oof/metrics/best written
    mounted = root / "input" / "notebooks" / "alice" / "demo-train"
    mounted.parent.mkdir(parents=True)
    (root / "working").rename(mounted)
    session2 = tmp_path / "session2"
    summary = train(kit, session2, 1)  # no validation in this session: the earlier files are carried over
    assert summary["session"]["resumed_from"] == str(mounted / checkpoint.NAME)
    for name in ("oof.npy", "oof.csv", "metrics.json", "best.pt", "classes.json", "checkpoint.pt", "state.json"):
        assert (session2 / name).is_file(), name
    session3 = tmp_path / "session3"
    mounted3 = root / "input" / "notebooks" / "alice" / "demo-train-2"
    session2.rename(mounted3)
    assert train(kit, session3)["done"]
    assert kit_support.same_weights(kit_support.final_weights(session3), kit_support.final_weights(ref_dir))


def test_changed_config_refuses_the_checkpoint(demo, tmp_path):
    kit = kit_support.tiny_kit(demo)
    train(kit, tmp_path / "w", 1)
    with pytest.raises(checkpoint.CheckpointError, match="written by another training config"):
        train(kit_support.tiny_kit(demo, **{"optim.lr": 1e-2}), tmp_path / "w")
    # runtime-only settings may change between sessions
    assert train(kit_support.tiny_kit(demo, **{"data.num_workers": 1, "session.margin_seconds": 2}),
                 tmp_path / "w")["done"]


# ------------------------------------------------------------------------------- the real clock

LONG = {"stages": [{"epochs": 12, "loss": "bce"}, {"epochs": 2, "loss": "soft_fbeta"}]}


def stop_midway(session, budget: float) -> tuple[dict, float, int]:
    """Run session(attempt, budget) until the clock stops one mid-way: this shared machine's speed drifts,
    so a budget sized from the straight run may let a try finish (halve it) or stop before step 1 (raise it).
    Returns that session's summary, its budget and attempt number."""
    for attempt in range(4):
        summary = session(attempt, budget)
        if not (summary["done"] or summary["step"] == 0):
            break
        budget *= 0.5 if summary["done"] else 1.5
    return summary, budget, attempt


def test_session_clock_stops_in_time_and_resume_is_exact(demo, straight, tmp_path):
    kit = kit_support.tiny_kit(demo, **LONG)
    ref_dir, ref = straight(kit)
    # half the straight run's time, whatever this machine's speed, plus what the clock keeps back for the
    # first save before it has timed one (clock.SAVE_BYTES_PER_S: about 1.5 s here)
    def session(attempt: int, budget: float) -> dict:
        run = engine.Run(settings.parse(kit), None, tmp_path / f"w{attempt}", clock.SessionClock(budget, margin_s=0.1),
                         log=quiet)
        run.clock.start = time.monotonic()
        return run.train()

    summary, budget, attempt = stop_midway(session, 0.5 * ref["wall_s"] + 1.6)
    working = tmp_path / f"w{attempt}"
    assert summary["stopped_by"] == "clock" and 0 < summary["step"] < ref["total_steps"]
    assert summary["session"]["elapsed_s"] < budget  # the checkpoint is written before the limit
    assert train(kit, working)["done"]
    assert kit_support.same_weights(kit_support.final_weights(working), kit_support.final_weights(ref_dir))


# ---------------------------------------------------------------------------------- real processes

def write_config(path, kit: dict) -> None:
    path.write_text(yaml.safe_dump({"competition": "demo", "kit": kit}))


@pytest.mark.slow
def test_process_stops_before_its_session_limit_and_the_next_session_resumes(demo, straight, tmp_path):
    kit = kit_support.tiny_kit(demo, **LONG)
    ref_dir, ref = straight(kit)
    config = tmp_path / "kpack.yaml"
    write_config(config, kit)
    forker = kit_support.Forker(config, tmp_path / "s1")
    took = {}

    def session(attempt: int, budget: float) -> dict:
        forker.start(KPACK_SESSION_SECONDS=f"{budget:.2f}", KPACK_KAGGLE_ROOT=str(tmp_path / f"s1-{attempt}"))
        started = time.monotonic()
        assert forker.wait_exit() == 0, "".join(forker.lines[-30:])
        took[attempt] = time.monotonic() - started
        return json.loads((tmp_path / f"s1-{attempt}" / "working" / "state.json").read_text())

    # the child's setup and first-save reserve, then half the training
    state, budget, attempt = stop_midway(session, 3 + 0.5 * ref["wall_s"])
    forker.close()
    root1, took = tmp_path / f"s1-{attempt}", took[attempt]
    assert state["done"] is False and state["stopped_by"] == "clock", state
    assert 0 < state["step"] < ref["total_steps"]
    assert state["session"]["elapsed_s"] < budget and took < budget + 5  # checkpointed and gone in time
    # session 2: a fresh `python -m kernel_src.train`, session 1's output mounted as a kernel source
    root2 = tmp_path / "s2"
    (root2 / "input" / "notebooks" / "alice").mkdir(parents=True)
    (root1 / "working").rename(root2 / "input" / "notebooks" / "alice" / "demo-train")
    second = kit_support.run_train(config, root2, KPACK_SESSION_SECONDS="900")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "resumed from" in second.stdout
    assert json.loads((root2 / "working" / "state.json").read_text())["done"] is True
    assert kit_support.same_weights(kit_support.final_weights(root2 / "working"),
                                    kit_support.final_weights(ref_dir))


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_ends_the_same(demo, straight, tmp_path):
    kit = kit_support.tiny_kit(demo, **{"stages": [{"epochs": 5, "loss": "bce"}, {"epochs": 1, "loss": "soft_fbeta"}],
                                        "session.checkpoint_every_steps": 1})
    ref_dir, ref = straight(kit)
    config = tmp_path / "kpack.yaml"
    write_config(config, kit)
    working = tmp_path / "kaggle" / "working"
    training_hash = settings.training_hash(settings.parse(kit))
    rng = random.Random(1234)
    forker = kit_support.Forker(config, tmp_path / "kaggle")
    steps, mid_save = [], 0
    for _ in range(5):
        pid = forker.start(SLOW_SAVE="0.0003")  # a save takes ~0.4 s instead of ~0.03 s
        time.sleep(rng.uniform(0.5, 4.0))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended (and was reaped) before the kill
            pass
        code = forker.wait_exit()
        assert code in (0, -signal.SIGKILL), "".join(forker.lines[-30:])
        scratch = tmp_path / "kaggle" / "temp" / atomic.SCRATCH
        mid_save += any(scratch.glob(f"{atomic.TEMP_PREFIX}checkpoint.pt.*"))  # killed while writing a checkpoint
        assert not atomic.temp_files(working), "a killed write's temp file would ship as output"
        found = checkpoint.latest(checkpoint.candidates([working]), training_hash, log=quiet)
        if steps:  # once one checkpoint exists, a valid one always does, never older than the last
            assert found is not None and found.meta["step"] >= steps[-1]
        if found is not None:
            steps.append(found.meta["step"])
        if code == 0:  # it finished before the kill
            break
    forker.start()
    assert forker.wait_exit() == 0, "".join(forker.lines[-30:])
    forker.close()
    assert steps, "no kill landed after the first checkpoint: the test is too quick to say anything"
    assert json.loads((working / "state.json").read_text())["done"] is True
    assert kit_support.same_weights(kit_support.final_weights(working), kit_support.final_weights(ref_dir))
    print(f"checkpoints found after kills at steps {steps}; {mid_save} kill(s) landed inside a save")


@pytest.mark.slow
def test_two_process_ddp_trains_and_resumes_exactly(demo, tmp_path):
    """torchrun, two CPU processes (gloo): each trains its shard of the same epoch order, rank 0 writes;
    stopped after 3 steps and resumed, the run ends with the weights of the straight two-process run."""
    kit = kit_support.tiny_kit(demo)
    config = tmp_path / "kpack.yaml"
    write_config(config, kit)
    stop_early = tmp_path / "stop.yaml"
    write_config(stop_early, kit_support.tiny_kit(demo, **{"session.max_steps": 3}))

    def torchrun(cfg, root):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "kernel_src.train", str(cfg)], env=kit_support.train_env(root),
                              cwd=kit_support.REPO, text=True, capture_output=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return json.loads((root / "working" / "state.json").read_text()), done.stdout

    straight_state, _ = torchrun(config, tmp_path / "straight")
    assert straight_state["done"] and straight_state["world"] == 2
    first, _ = torchrun(stop_early, tmp_path / "resumed")
    assert not first["done"] and first["step"] == 3
    second, out = torchrun(config, tmp_path / "resumed")
    assert second["done"] and "resumed from" in out
    assert kit_support.same_weights(kit_support.final_weights(tmp_path / "resumed" / "working"),
                                    kit_support.final_weights(tmp_path / "straight" / "working"))


KILL_WHILE_WRITING = r"""
import json, os, signal, sys, time, traceback
from pathlib import Path
from kernel_src import checkpoint, clock, train
import yaml

config, target = yaml.safe_load(open(sys.argv[1])), sys.argv[2]
save = checkpoint.save


def dies_writing_the_target(path, *args, **kwargs):
    if Path(path).name == target:  # the first bytes of the target kill the process, as kill -9 would
        checkpoint._Hashing.write = lambda self, b: os.kill(os.getpid(), signal.SIGKILL)
    return save(path, *args, **kwargs)


for kill in (True, False):  # the killed session, then the next one in the same working/
    pid = os.fork()
    if pid == 0:
        clock.STARTED = time.monotonic()
        if kill:
            checkpoint.save = dies_writing_the_target
        code = 1
        try:
            train.main(config)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    working = Path(os.environ["KPACK_KAGGLE_ROOT"]) / "working"
    print("exit", json.dumps([os.waitstatus_to_exitcode(status), sorted(p.name for p in working.iterdir())]),
          flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("target", ["best.pt", "model.pt"])
def test_kill_9_while_writing_a_model_file_leaves_no_temp_file_and_the_restart_ends_the_same(
        demo, straight, tmp_path, target):
    """Killed in the first write of best.pt (epoch 1) or of model.pt (after the last checkpoint): what the
    session leaves in working/ (its output) holds no temp file, and the next session's files are the straight
    run's, byte for byte (model.pt saying the epochs the run has)."""
    kit = kit_support.tiny_kit(demo, **{"session.checkpoint_every_steps": 1})
    ref_dir, ref = straight(kit)
    config = tmp_path / "kpack.yaml"
    write_config(config, kit)
    done = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, str(config), target],
                          env=kit_support.train_env(tmp_path / "kaggle"), cwd=kit_support.REPO, text=True,
                          capture_output=True, timeout=600)
    exits = [json.loads(line[5:]) for line in done.stdout.splitlines() if line.startswith("exit ")]
    assert done.returncode == 0 and len(exits) == 2, done.stdout[-3000:] + done.stderr[-3000:]
    (killed, left_by_kill), (restarted, _) = exits
    assert killed == -signal.SIGKILL and restarted == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not [n for n in left_by_kill if n.startswith(".")], f"temp files would ship as output: {left_by_kill}"
    working = tmp_path / "kaggle" / "working"
    assert not [p.name for p in working.iterdir() if p.name.startswith(".")]
    for name in ("model.pt", "best.pt", "oof.npy", "metrics.json"):
        assert (working / name).read_bytes() == (ref_dir / name).read_bytes(), name
    assert checkpoint.load_model(working / "model.pt")["epoch"] == ref["epochs"] == 3
