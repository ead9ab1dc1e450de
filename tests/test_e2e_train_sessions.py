"""End to end: a training kernel on the local Kaggle with a short session limit stops cleanly before it, and the
next session resumes from the first one's output, until training is done.

Everything goes through the product's own path: a project folder with kpack.yaml, the repository's kernel_src
(the real training entry, kernel_src/train.py), a wheels dataset (timm and albumentations shipped as a site
folder for the local target), a demo competition registered on the session's local Kaggle, then
`packager.push.push_kernel(cfg, "train", wait=True)`: build, dataset upload, SaveKernel with the session limit,
the server's runner (which kills a session at its limit), output download, and session chaining.

The chained run's final weights are then compared, bit for bit, with the same kit config trained straight
through in this process (deterministic mode, CPU).

Timing: the kernel pays torch's and timm's imports each session (tens of seconds on a busy 2-core machine), so
the session limit is SESSION_S and the run's length is sized from a short timed run in this process, so that one
session cannot finish it and two usually can. A run the machine's changing load mis-sized (one session did it
all, or MAX_SESSIONS did not) is sized again once from the kernel's own measured speed and run again.

A session that the kit stopped in time but whose process was still tearing down at the limit (killed: ERROR,
"Notebook Timeout") fails with its own message: see .notes/I-findings.md #1 (the interpreter's exit after main()
takes seconds with torch loaded, and the session clock does not reserve it).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest

from pushkit import isolate

REPO = Path(__file__).resolve().parents[1]
USER = "alice"
SESSION_S = 45
SESSION_HOURS = SESSION_S / 3600   # whole seconds both ways: the server gets int(hours * 3600), the kit the float
N_TRAIN, N_TEST, IMAGE = 48, 16, 32
# a chain that never finishes must not run 20 sessions here; on a loaded 2-core CI machine the kernel was
# seen training 3-4x slower per step than the sizing run (7-8 sessions), on a quiet one 2-4 sessions do
MAX_SESSIONS = 10
# Sizing the run: epochs are timed in this process first (same config, same machine) and the fastest one counts,
# as near the machine's uncontended speed as this process can see. The run is made OVERSIZE times what one
# session could train at that speed if the kernel's imports took only IMPORT_GUESS_S (they take 7-20 s): one
# session cannot finish it. Two can when the kernel runs about as fast as the fastest epoch here; other loads
# on a shared machine can slow a kernel several-fold, so up to MAX_SESSIONS are allowed.
IMPORT_GUESS_S, RESERVE_S, OVERSIZE = 5.0, 3.0, 1.25


# a list, not the {soft_fbeta: 1.0, bce: 0.5} shorthand: the packed config's keys are sorted (see I-findings #3)
LAST_LOSS = [{"name": "soft_fbeta", "weight": 1.0}, {"name": "bce", "weight": 0.5}]


def kit_config(epochs: int, data_root: str | None = None) -> dict:
    kit = {
        "seed": 7, "deterministic": True, "log_every_steps": 20,
        "data": {"image_size": IMAGE, "num_workers": 0, "folds": 5, "fold": 0},
        "model": {"name": "test_resnet", "drop_rate": 0.1},
        "augment": {"train": "light"},
        "optim": {"batch_size": 8, "lr": 2e-3},
        "schedule": {"name": "cosine", "warmup_steps": 4},
        "stages": [{"epochs": epochs - 1, "loss": "bce"}, {"epochs": 1, "loss": LAST_LOSS}],
        "session": {"margin_seconds": 2.0},   # capped at 2% of the budget by the kit's clock
    }
    if data_root:
        kit["data"]["root"] = data_root   # a runtime-only field: not part of the training hash
    return kit


def read_log(path: Path) -> str:
    """The kernel log Kaggle serves: a JSON array of {stream_name, time, data}; the lines joined."""
    return "".join(entry["data"] for entry in json.loads(path.read_text()))


def write_project(root: Path, server, prefix: str, epochs: int) -> dict:
    import yaml

    (root / "build").mkdir(parents=True)
    shutil.copytree(REPO / "kernel_src", root / "kernel_src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(REPO / "requirements-kernel.txt", root / "requirements-kernel.txt")
    # one wheel download for every run: the repository's wheel cache (build/wheel-cache/<target>/)
    cache = REPO / "build" / "wheel-cache"
    cache.mkdir(parents=True, exist_ok=True)
    (root / "build" / "wheel-cache").symlink_to(cache, target_is_directory=True)
    comp = f"{prefix}-comp"
    config = {
        "competition": comp, "kaggle_user": USER, "backend": "local",
        "local": {"port": server.port, "root": str(server.root)},
        "kernels": {"train": {"entry": "kernel_src/train.py", "slug": f"{prefix}-train", "accelerator": "None",
                              "session_hours": SESSION_HOURS, "chain": "distinct", "sources": {"competitions": [comp]}}},
        "datasets": {"wheels": {"slug": f"{prefix}-wheels", "requirements": "requirements-kernel.txt"}},
        "kit": kit_config(epochs),
    }
    (root / "kpack.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


class TimedSteps:
    """A clock for the sizing run: stops after `steps` optimizer steps and times them (validations included)."""

    def __init__(self, steps: int):
        from kernel_src import clock

        self.inner = clock.FixedSteps(steps)
        self.stamps: list[float] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def record_step(self, seconds: float) -> None:
        self.stamps.append(time.monotonic())
        self.inner.record_step(seconds)

    def fastest_epoch(self, steps_per_epoch: int) -> float:
        """Seconds a step in the fastest whole epoch (its validation included), the first two left out (warm-up)."""
        ends = self.stamps[steps_per_epoch - 1::steps_per_epoch]
        return min(b - a for a, b in zip(ends[2:], ends[3:])) / steps_per_epoch


def chain_of(store, slug: str) -> list[tuple[str, dict]]:
    """Every session the chain pushed (slug, its version 1 record), in order, read from the server's store."""
    from packager.chain import session_slug

    found = []
    for session in range(1, MAX_SESSIONS + 2):
        record = store.kernel_version(USER, session_slug(slug, session, "distinct"), 1)
        if record is None:
            break
        found.append((session_slug(slug, session, "distinct"), record))
    return found


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_stops_before_the_session_limit_and_the_next_session_resumes(local_kaggle, tmp_path, monkeypatch):
    import torch

    from kernel_src import checkpoint, clock, data as kdata, engine, folds, settings
    from packager import democomp, kaggle_api
    from packager.config import load_config
    from packager.errors import UserError
    from packager.localkaggle.store import Store
    from packager.push import push_kernel

    started = time.monotonic()
    isolate(monkeypatch, tmp_path)
    monkeypatch.setenv("KPACK_MAX_SESSIONS", str(MAX_SESSIONS))
    monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(tmp_path / "here"))  # the in-process runs' /kaggle
    assert "OMP_NUM_THREADS" not in os.environ, "the kernel runs with torch's default threads: so must this process"
    local_kaggle.clear_faults()
    prefix = f"e2e{os.getpid() % 10000}"
    demo = democomp.generate(tmp_path / "demo", seed=0, n_train=N_TRAIN, n_test=N_TEST, image_size=IMAGE)
    store = Store(local_kaggle.root)

    # ---- size the run from this machine's speed now
    probe = settings.parse(kit_config(10, str(demo.data_dir)))
    table = kdata.read_train(probe.data, demo.data_dir)
    train_idx, _ = folds.split(folds.assign(table.targets, probe.data.folds, probe.seed), probe.data.fold)
    steps_per_epoch = len(train_idx) // probe.optim.batch_size
    timer = TimedSteps(8 * steps_per_epoch)
    engine.run(probe, None, tmp_path / "sizing", timer, log=lambda s: None)
    per_step = timer.fastest_epoch(steps_per_epoch)

    def run_chain(attempt: str, per_step: float, imports_s: float = IMPORT_GUESS_S, oversize: float = OVERSIZE):
        """Size the run from per_step, push it as its own project and kernels, and read back every session."""
        one_session = (SESSION_S - imports_s - RESERVE_S) / per_step
        epochs = max(3, math.ceil(oversize * one_session / steps_per_epoch))
        print(f"e2e{attempt}: {per_step:.3f} s a step -> {epochs} epochs, {epochs * steps_per_epoch} steps; "
              f"session limit {SESSION_S} s")
        name = f"{prefix}{attempt}"
        store.create_competition(f"{name}-comp", demo.data_dir, demo.solution_csv, code=True)
        root = tmp_path / f"project{attempt}"
        write_project(root, local_kaggle, name, epochs)
        monkeypatch.chdir(root)
        result, failure = None, None
        try:
            result = push_kernel(load_config(root / "kpack.yaml"), "train", wait=True)
            assert result.status == "COMPLETE"
        except UserError as err:
            failure = str(err)
        finally:
            kaggle_api._restore_env()
        sessions = chain_of(store, f"{name}-train")
        outputs = [root / "runs" / s / "v1" for s, _ in sessions]
        states = [json.loads((out / "state.json").read_text()) if (out / "state.json").is_file() else None
                  for out in outputs]
        return name, epochs, result, failure, sessions, outputs, states

    def kernel_speed(states) -> float | None:
        """Seconds a step as the kernel trained: its clock's elapsed time over its steps (the median session)."""
        rates = [st["session"]["elapsed_s"] / st["session"]["steps"] for st in states if st and st["session"]["steps"]]
        return sorted(rates)[len(rates) // 2] if rates else None

    name, epochs, result, failure, sessions, outputs, states = run_chain("", per_step)
    # The sizing here and the kernel run at different times: a load that came or went between them (another job
    # on a shared machine) makes one session finish it all, or MAX_SESSIONS not enough. Sized again once from the
    # kernel's own speed (whose elapsed time holds its imports: none guessed, and 1.6 sessions' worth so that the
    # load changing again by a third either way still takes two), the run tests what it is for, not the load.
    missized = (failure is None and len(sessions) < 2) or (failure and "not done after" in failure)
    if missized and kernel_speed(states):
        per_step = kernel_speed(states)
        name, epochs, result, failure, sessions, outputs, states = run_chain("r", per_step, 0.0, 1.6)
    slug, total = f"{name}-train", epochs * steps_per_epoch
    pushed_at = time.monotonic()

    logs = [read_log(out / f"{s}.log") if (out / f"{s}.log").is_file() else "" for (s, _), out in
            zip(sessions, outputs)]
    summary = [(s, v["status"], v.get("seconds"), v.get("failure_message") or None,
                st and (st["step"], st["done"], st["session"]["elapsed_s"])) for (s, v), st in zip(sessions, states)]
    print("sessions (slug, status, seconds, failure, (step, done, kit's elapsed s)):\n" +
          "\n".join(json.dumps(row) for row in summary))
    for (s, _), text in zip(sessions, logs):
        print(f"---- {s}\n" + "".join(line + "\n" for line in text.splitlines()
                                      if "[kpack]" in line or "Error" in line or "Timeout" in line))

    for k, ((s, version), text) in enumerate(zip(sessions, logs), 1):
        if version["status"] != "COMPLETE" and "Notebook Timeout" in (version.get("failure_message") or "") \
                and "stopped before the session limit" in text:
            pytest.fail(f"session {k} ({s}): the kit stopped training in time and wrote its checkpoint "
                        f"(state.json elapsed {states[k - 1] and round(states[k - 1]['session']['elapsed_s'], 1)} s "
                        f"of {SESSION_S} s), but the process had not exited at the limit and was killed "
                        f"(ERROR, {version.get('failure_message')!r}): the interpreter's teardown after main() is "
                        "not reserved by the session clock; see .notes/I-findings.md #1")
    if failure and "not done after" in failure:
        pytest.fail(f"every session stopped cleanly and resumed, but {MAX_SESSIONS} sessions did not finish the "
                    f"{total} steps: the kernel ran far slower than the sizing run here ({per_step:.3f} s a step; "
                    f"a machine whose load changed); sessions {summary}")
    assert failure is None, f"the chain failed: {failure}; sessions {summary}"
    assert sessions, "nothing was pushed"
    if len(sessions) < 2:
        pytest.fail(f"the first session finished the whole run ({total} steps) within {SESSION_S} s: the kernel "
                    f"trained faster than the sizing run here ({per_step:.3f} s a step), so nothing was resumed; "
                    f"sessions {summary}")

    # ---- session 1: stopped by its own clock, cleanly, before the limit; left a checkpoint and done=false
    (slug1, first), first_out, state1 = sessions[0], outputs[0], states[0]
    assert slug1 == slug and result.sessions[0].slug == slug
    assert first["session_timeout_seconds"] == SESSION_S  # the push carried the limit to the server
    assert first["status"] == "COMPLETE" and not first.get("failure_message"), summary
    assert first["seconds"] < SESSION_S, f"session 1 ran {first['seconds']} s of its {SESSION_S} s"
    assert (first_out / "checkpoint.pt").is_file(), sorted(p.name for p in first_out.iterdir())
    assert state1["done"] is False and state1["stopped_by"] == "clock", state1
    assert 0 < state1["step"] < state1["total_steps"] == total, state1
    assert state1["session"]["resumed_from"] is None  # the first session started from nothing
    assert state1["session"]["elapsed_s"] < SESSION_S
    assert "stopped before the session limit" in logs[0]

    # ---- session 2: pushed by the chain with session 1 as its kernel source, resumed at session 1's step
    (slug2, second), state2 = sessions[1], states[1]
    assert slug2 == f"{slug}-s2" and [(r.slug, r.session) for r in result.sessions][:2] == [(slug, 1), (slug2, 2)]
    assert second["metadata"]["kernel_data_sources"] == [f"{USER}/{slug}"]
    assert "resumed from" in logs[1] and f"step {state1['step']}" in logs[1], logs[1][-3000:]
    resumed = state2["session"]["resumed_from"]
    assert resumed and "/input/" in resumed and resumed.endswith(".pt"), resumed
    assert state2["step"] - state2["session"]["steps"] == state1["step"], (state1, state2)  # not from step 0

    # every later session went on from the one before it, and each ended COMPLETE under the limit
    for k in range(1, len(states)):
        assert states[k]["step"] - states[k]["session"]["steps"] == states[k - 1]["step"], summary
        assert states[k - 1]["done"] is False, summary
        assert sessions[k][1]["status"] == "COMPLETE" and sessions[k][1]["seconds"] < SESSION_S, summary
    assert len(result.sessions) == len(sessions)

    # ---- the chain's end: done, at the configured number of steps
    final = states[-1]
    assert final["done"] is True and final["stopped_by"] == "done", final
    assert final["step"] == final["total_steps"] == total, final
    assert (outputs[-1] / "model.pt").is_file()
    assert result.output.resolve() == outputs[-1].resolve()
    checked_at = time.monotonic()

    # ---- bitwise: the same config trained straight through in this process
    kit = settings.parse(kit_config(epochs, str(demo.data_dir)))
    assert settings.training_hash(kit) == final["training_hash"]
    straight = tmp_path / "straight"
    ref = engine.run(kit, None, straight, clock.FixedSteps(10**9), log=lambda s: None)
    assert ref["done"] and ref["step"] == final["step"]
    a = checkpoint.load_model(outputs[-1] / "model.pt")["model"]
    b = checkpoint.load_model(straight / "model.pt")["model"]
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    print(f"e2e: {len(sessions)} sessions, steps per session {[s['session']['steps'] for s in states]}; "
          f"sizing + chain {pushed_at - started:.0f} s, checks {checked_at - pushed_at:.0f} s, straight run "
          f"{time.monotonic() - checked_at:.0f} s")
    assert not differ, f"{len(differ)} of {len(a)} tensors differ from the straight run, e.g. {differ[:3]}"
