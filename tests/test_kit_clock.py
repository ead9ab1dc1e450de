"""The session clock: it counts from the container's start where /proc shows one, and keeps back the time that
saving working/ will take, growing with what working/ holds."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import kit_support
from kit_support import kit_env  # noqa: F401  (autouse: own Kaggle root, one thread)
from kernel_src import clock, engine, settings

HZ = 100.0
IN_CONTAINER = 4026532200  # any PID namespace but the host's
ON_HOST = clock.HOST_PID_NAMESPACE


def readings(uptime: float, self_started: float, pid1_started, namespace) -> clock.ProcReadings:
    """Readings as /proc gives them: start times in ticks since boot."""
    pid1 = None if pid1_started is None else int(pid1_started * HZ)
    return clock.ProcReadings(uptime, int(self_started * HZ), pid1, namespace, HZ)


def test_inside_a_container_the_clock_counts_from_its_init():
    # a container started 100 s after boot, the kernel's python 40 s later (image start, pip, ...), now 150 s
    process, container = clock.start_ages(readings(150.0, 140.0, 100.0, IN_CONTAINER))
    assert process == pytest.approx(10.0) and container == pytest.approx(50.0)
    now = 1000.0
    start, what = clock.choose_start(12 * 3600, now - process, now - container, now)
    assert start == pytest.approx(now - 50.0) and what == "container start (PID 1)"


def test_on_a_host_pid_1_is_the_hosts_init_and_the_process_start_counts():
    # PID 1 booted with the machine (young or old): outside a container of our own it says nothing of the session
    for pid1 in (0.2, 3 * 86400.0 - 100):
        process, container = clock.start_ages(readings(3 * 86400.0, 3 * 86400.0 - 7, pid1, ON_HOST))
        assert process == pytest.approx(7.0) and container is None
    assert clock.start_ages(readings(500.0, 450.0, 10.0, None)) == (pytest.approx(50.0), None)  # namespace unknown
    assert clock.start_ages(readings(500.0, 450.0, None, IN_CONTAINER)) == (pytest.approx(50.0), None)
    assert clock.start_ages(None) == (0.0, None)  # no /proc at all


def test_a_container_older_than_the_session_limit_is_not_this_sessions():
    now = 10_000.0
    start, what = clock.choose_start(3600.0, now - 5.0, now - 7200.0, now)
    assert start == now - 5.0 and what == "process start"
    # a PID 1 "started" after this process (it cannot have: the reading is wrong) is ignored too
    assert clock.start_ages(readings(100.0, 50.0, 60.0, IN_CONTAINER))[1] is None


def test_proc_readings_are_parsed_from_the_files(tmp_path):
    """A fake /proc: field 22 of stat is the start time, after a command name that may hold spaces and ')'."""
    proc = tmp_path / "proc"
    for pid, ticks in (("self", 14_000), ("1", 10_000)):
        (proc / pid / "ns").mkdir(parents=True)
        rest = ["S"] + ["0"] * 18 + [str(ticks)] + ["0"] * 30
        (proc / pid / "stat").write_text(f"{pid} (odd) name) " + " ".join(rest) + "\n")
    (proc / "self" / "ns" / "pid").write_text("")  # its inode stands for a namespace that is not the host's
    (proc / "uptime").write_text("150.00 300.00\n")
    hz = os.sysconf("SC_CLK_TCK")
    r = clock.read_proc(proc)
    assert (r.self_ticks, r.pid1_ticks, r.uptime_s) == (14_000, 10_000, 150.0)
    process, container = clock.start_ages(r)
    assert process == pytest.approx(max(0.0, 150 - 14_000 / hz))
    assert container == pytest.approx(max(process, 150 - 10_000 / hz))
    assert clock.read_proc(tmp_path / "no-proc") is None


def test_the_session_clock_takes_the_container_start_when_it_fits(monkeypatch):
    now = time.monotonic()
    monkeypatch.setattr(clock, "STARTED", now - 2.0)
    monkeypatch.setattr(clock, "CONTAINER_STARTED", now - 60.0)
    c = clock.SessionClock(3600.0, 0.0)
    assert c.started_from == "container start (PID 1)" and c.elapsed() >= 60.0
    c = clock.SessionClock(30.0, 0.0)  # a container older than this limit: not this session's
    assert c.started_from == "process start" and 2.0 <= c.elapsed() < 30.0
    monkeypatch.setattr(clock, "CONTAINER_STARTED", None)
    assert clock.SessionClock(3600.0, 0.0).started_from == "process start"


class Fake:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def sparse(path, nbytes: int) -> None:
    """A file of `nbytes` (its size is what counts) that takes no disk."""
    with open(path, "wb") as f:
        f.truncate(nbytes)


def test_the_margin_grows_with_what_working_holds(tmp_path, monkeypatch):
    monkeypatch.delenv(clock.ENV_OUTPUT_RATE, raising=False)
    now = Fake()
    c = clock.SessionClock(1000.0, 0.0, start=0.0, now=now)
    assert c.output_save_seconds() == 0.0  # no output folder tracked
    c.track_output(tmp_path, pending_bytes=10**9)
    assert c.output_save_seconds() == pytest.approx(clock.OUTPUT_SECONDS_PER_GB)  # 1 GB still to come
    c.record_save(0.01, 10**8)  # a first save: measured fast enough that the (slower) guess counts
    sparse(tmp_path / "best.pt", 4 * 10**9)
    assert c.output_save_seconds() == pytest.approx(5 * clock.OUTPUT_SECONDS_PER_GB)
    assert c.output_save_seconds(checkpoint_bytes=10**9) == pytest.approx(6 * clock.OUTPUT_SECONDS_PER_GB)
    # between saves working/ is walked again only after OUTPUT_REMEASURE_S
    sparse(tmp_path / "oof.npy", 10**9)
    assert c.output_save_seconds() == pytest.approx(5 * clock.OUTPUT_SECONDS_PER_GB)
    now.t += clock.OUTPUT_REMEASURE_S
    assert c.output_save_seconds() == pytest.approx(6 * clock.OUTPUT_SECONDS_PER_GB)
    # a local write slower than the guess is what counts
    c.record_save(10.0, 10**8)  # 10 MB/s: 100 s per GB
    assert c.output_save_seconds() == pytest.approx(6 * 100.0)
    monkeypatch.setenv(clock.ENV_OUTPUT_RATE, "200")
    assert clock.SessionClock(1.0, 0.0).output_s_per_gb == 200.0


def test_a_bigger_working_folder_stops_training_earlier(tmp_path, monkeypatch):
    monkeypatch.delenv(clock.ENV_OUTPUT_RATE, raising=False)
    now = Fake()
    c = clock.SessionClock(1000.0, 10.0, start=0.0, now=now)
    c.track_output(tmp_path)
    c.record_step(1.0)
    c.record_save(2.0)
    now.t = 900.0  # 100 s left: 2 steps, 1.5 saves and the margin need 15 s
    assert not c.should_stop() and c.can_validate()
    sparse(tmp_path / "checkpoint.pt", 3 * 10**9)  # 3 GB to save at 30 s/GB: 90 s more
    c.record_save(2.0)  # a save: working/ is measured again
    assert c.should_stop() and not c.can_validate()


def test_a_run_checks_working_before_it_trains(tmp_path, monkeypatch):
    """Through the training loop: the same budget trains with an empty working/, and stops at once when
    working/ already holds more than the session could save."""
    monkeypatch.delenv(clock.ENV_OUTPUT_RATE, raising=False)
    demo = kit_support.make_demo(tmp_path / "demo", n_train=32, n_test=4)
    kit = settings.parse(kit_support.tiny_kit(demo, **{"stages": [{"epochs": 1, "loss": "bce"}]}))

    def run(working):
        return engine.run(kit, None, working, clock.SessionClock(1000.0, 1.0, start=time.monotonic()),
                          log=lambda s: None)

    free = run(tmp_path / "free")
    assert free["done"] and free["session"]["output_save_s"] > 0
    full = tmp_path / "full"
    full.mkdir()
    sparse(full / "big.bin", 40 * 10**9)  # 1200 s to save at 30 s/GB, more than the whole budget
    stopped = run(full)
    assert not stopped["done"] and stopped["stopped_by"] == "clock" and stopped["step"] == 0
    assert stopped["session"]["output_save_s"] >= 40 * clock.OUTPUT_SECONDS_PER_GB


def test_a_local_kernel_counts_from_its_sandboxs_start(tmp_path):
    """Through the local Kaggle's runner: in its sandbox (a PID namespace of its own, as a Kaggle container)
    PID 1 is the sandbox's init, so the kit's clock starts there; without a sandbox, at the process start."""
    import json

    from packager.localkaggle import runner

    script = tmp_path / "k.py"  # clock.py needs only the standard library: it runs as the kernel itself
    script.write_text(Path(clock.__file__).read_text()
                      + "\nimport json\nprint('AGES', json.dumps(start_ages(read_proc())))\n")
    started = time.monotonic()
    result = runner.run_kernel(script, tmp_path / "run", [], enable_internet=False, timeout_s=120)
    wall = time.monotonic() - started
    log = [e["data"] for e in json.loads(result.log_path.read_text())]
    assert result.status == "COMPLETE", log
    process, container = json.loads(next(line for line in log if "AGES" in line).split("AGES", 1)[1])
    sandboxed = any("sandbox bwrap" in line or "sandbox unshare" in line for line in log)
    if sandboxed:
        assert container is not None and process <= container <= wall, (process, container, wall)
    else:
        assert container is None
