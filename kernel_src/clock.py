"""The session clock: when to stop training so that the checkpoint is written and the output saved before the limit.

Kaggle's session limit counts from the container's start, and saving /kaggle/working at the end takes time in
proportion to its size. So the clock starts at the container's start where the OS shows it: process 1's start
time (/proc/1/stat), used when this process runs in a PID namespace of its own (a container: its PID 1 is the
container's init) and that start lies within the session limit; else (a dev machine, where PID 1 is the host's
init, started days ago) at this process's start. Both are read at this module's import.

The budget is the session limit (kernels.<kind>.session_hours, or KPACK_SESSION_SECONDS for tests and local
runs) minus a margin (kit.session.margin_seconds, at most 2% of the budget) minus the time to save the output:
the bytes working/ holds (measured, at most every OUTPUT_REMEASURE_S and after each save) plus those still to
come, at the slower of the measured local write rate and OUTPUT_SECONDS_PER_GB (a guess for Kaggle's upload of
the output; KPACK_OUTPUT_SECONDS_PER_GB overrides it). The loop measures its own steps, validations and
checkpoint saves, and stops when one more step, then a save, might not fit:

    elapsed + 2 * max(step) + 1.5 * max(save) + margin + output_save > budget

where max(step) is over the last RECENT_STEPS steps (a load spike long past does not keep stopping early).
Before the first save is measured, a save is estimated from the checkpoint's size at a pessimistic
SAVE_BYTES_PER_S.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

HOST_PID_NAMESPACE = 0xEFFFFFFC  # the inode of the first PID namespace (PROC_PID_INIT_INO): not a container


@dataclass(frozen=True)
class ProcReadings:
    """What /proc says about when this process and PID 1 started (ticks since boot, as in /proc/<pid>/stat)."""
    uptime_s: float
    self_ticks: int
    pid1_ticks: Optional[int]
    pid_namespace: Optional[int]  # inode of /proc/self/ns/pid
    ticks_per_s: float


def _start_ticks(stat: str) -> int:
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22 (starttime); the name in (...) may hold spaces


def read_proc(proc: Path = Path("/proc")) -> Optional[ProcReadings]:
    """The readings, or None where /proc cannot tell (not Linux)."""
    try:
        uptime = float((proc / "uptime").read_text().split()[0])
        self_ticks = _start_ticks((proc / "self" / "stat").read_text())
        hz = float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None
    try:
        pid1 = _start_ticks((proc / "1" / "stat").read_text())
    except (OSError, ValueError, IndexError):
        pid1 = None
    try:
        namespace = os.stat(proc / "self" / "ns" / "pid").st_ino
    except OSError:
        namespace = None
    return ProcReadings(uptime, self_ticks, pid1, namespace, hz)


def start_ages(readings: Optional[ProcReadings]) -> tuple[float, Optional[float]]:
    """Seconds since this process started, and since its container's PID 1 started (None when this process is
    not in a container of its own, or PID 1's start is unknown)."""
    if readings is None:
        return 0.0, None
    r = readings
    process = max(0.0, r.uptime_s - r.self_ticks / r.ticks_per_s)
    in_container = r.pid_namespace is not None and r.pid_namespace != HOST_PID_NAMESPACE
    if not in_container or r.pid1_ticks is None or r.pid1_ticks > r.self_ticks:
        return process, None
    return process, max(process, r.uptime_s - r.pid1_ticks / r.ticks_per_s)


def _process_age() -> float:
    """Seconds since this process started (Linux /proc), or 0 where that cannot be read."""
    return start_ages(read_proc())[0]


_process, _container = start_ages(read_proc())
_now = time.monotonic()
STARTED = _now - _process  # the process's start, imports included (tests reset it for a forked child)
CONTAINER_STARTED = None if _container is None else _now - _container  # PID 1's start, in a container
ENV_SECONDS = "KPACK_SESSION_SECONDS"
ENV_OUTPUT_RATE = "KPACK_OUTPUT_SECONDS_PER_GB"
MAX_MARGIN_SHARE = 0.02
SAVE_BYTES_PER_S = 50e6
# A guess: Kaggle does not say how fast it saves /kaggle/working after the script ends. 30 s per GB (33 MB/s)
# is slower than a cloud VM's disk or upload usually is, so the guess errs towards stopping early.
OUTPUT_SECONDS_PER_GB = 30.0
OUTPUT_REMEASURE_S = 30.0  # working/ is walked at most this often (and after each save)
RECENT_STEPS = 100  # the step estimate follows the machine's current speed, not a spike long past


def choose_start(budget_s: float, process_started: float, container_started: Optional[float],
                 now: float) -> tuple[float, str]:
    """The clock's start (a time.monotonic() value) and what it is: the container's when known and within
    the session limit (an older one cannot be this session's: it would leave no time at all), else the process's."""
    if container_started is not None and container_started <= process_started and now - container_started <= budget_s:
        return container_started, "container start (PID 1)"
    return process_started, "process start"


def output_bytes(folder: Path) -> int:
    """Bytes of every file under `folder` (what Kaggle saves as the output)."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:  # removed while walking (a temp file replaced into place)
                pass
    return total


def session_seconds(config: Optional[dict] = None, kind: str = "train") -> float:
    """KPACK_SESSION_SECONDS if set, else kernels.<kind>.session_hours (default 12 h, Kaggle's limit)."""
    if os.environ.get(ENV_SECONDS):
        return float(os.environ[ENV_SECONDS])
    kernel = ((config or {}).get("kernels") or {}).get(kind) or {}
    # whole seconds, as the push hands the limit to Kaggle (sessionTimeoutSeconds)
    return float(int(float(kernel.get("session_hours") or 12.0) * 3600))


def output_seconds_per_gb() -> float:
    """KPACK_OUTPUT_SECONDS_PER_GB if set, else OUTPUT_SECONDS_PER_GB."""
    return float(os.environ.get(ENV_OUTPUT_RATE) or OUTPUT_SECONDS_PER_GB)


class SessionClock:
    def __init__(self, budget_s: float, margin_s: float = 300.0, *, start: Optional[float] = None,
                 now: Callable[[], float] = time.monotonic, max_steps: int = 0):
        self.budget = float(budget_s)
        self.max_steps = max_steps  # > 0: also stop after this many steps (smoke runs)
        self.margin = min(float(margin_s), MAX_MARGIN_SHARE * self.budget)
        if start is None:
            self.start, self.started_from = choose_start(self.budget, STARTED, CONTAINER_STARTED, now())
        else:
            self.start, self.started_from = start, "given"
        self.now = now
        self.recent: deque[float] = deque(maxlen=RECENT_STEPS)  # step times; their max is the estimate
        self.max_save = 0.0
        self.save_total = 0.0   # seconds spent writing checkpoints this session (the run report's time budget)
        self.max_validate = 0.0
        self.validate_total = 0.0
        self.step_total = 0.0   # seconds spent in training steps this session (for the work-lost figure)
        self.steps = 0
        self.output_dir: Optional[Path] = None  # the folder saved as output (track_output)
        self.output_pending = 0                 # bytes still to land there by the session's end
        self.output_measured = 0                # bytes found there at the last walk
        self.output_measured_at = -float("inf")
        self.write_bytes_per_s = 0.0            # the slowest local write rate measured (0: none yet)
        self.output_s_per_gb = output_seconds_per_gb()

    def elapsed(self) -> float:
        return self.now() - self.start

    def remaining(self) -> float:
        return self.budget - self.elapsed()

    @property
    def max_step(self) -> float:
        return max(self.recent, default=0.0)

    def record_step(self, seconds: float) -> None:
        # the session's first step pays for warm-up (allocations, loader start): it counts only until a second
        if self.steps == 1:
            self.recent.clear()
        self.recent.append(seconds)
        self.step_total += seconds
        self.steps += 1

    def record_save(self, seconds: float, nbytes: int = 0) -> None:
        self.max_save = max(self.max_save, seconds)
        self.save_total += seconds
        if nbytes and seconds > 0:
            rate = nbytes / seconds
            self.write_bytes_per_s = min(self.write_bytes_per_s or rate, rate)
        self.output_measured_at = -float("inf")  # the output changed: walk it again at the next question

    def record_validate(self, seconds: float) -> None:
        self.max_validate = max(self.max_validate, seconds)
        self.validate_total += seconds

    def track_output(self, folder: Path, pending_bytes: int = 0) -> None:
        """Count the time to save `folder` (plus `pending_bytes` still to come) against the budget."""
        self.output_dir, self.output_pending = Path(folder), int(pending_bytes)
        self.output_measured_at = -float("inf")

    def output_save_seconds(self, checkpoint_bytes: int = 0) -> float:
        """The time saving the output may take once the session ends, with one more checkpoint in it."""
        if self.output_dir is None:
            return 0.0
        if self.now() - self.output_measured_at >= OUTPUT_REMEASURE_S:
            self.output_measured = output_bytes(self.output_dir)
            self.output_measured_at = self.now()
        seconds_per_byte = self.output_s_per_gb / 1e9
        if self.write_bytes_per_s:
            seconds_per_byte = max(seconds_per_byte, 1.0 / self.write_bytes_per_s)
        return (self.output_measured + self.output_pending + checkpoint_bytes) * seconds_per_byte

    def _save_estimate(self, checkpoint_bytes: int) -> float:
        return self.max_save or (1.0 + checkpoint_bytes / SAVE_BYTES_PER_S)

    def _reserve(self, checkpoint_bytes: int) -> float:
        """What must stay free after the next piece of work: the checkpoint, the margin, the output's save."""
        return 1.5 * self._save_estimate(checkpoint_bytes) + self.margin + self.output_save_seconds(checkpoint_bytes)

    def should_stop(self, checkpoint_bytes: int = 0) -> bool:
        """True when another training step and then a checkpoint might not fit in the budget."""
        if self.max_steps and self.steps >= self.max_steps:
            return True
        return self.elapsed() + 2 * self.max_step + self._reserve(checkpoint_bytes) > self.budget

    def can_validate(self, checkpoint_bytes: int = 0) -> bool:
        """True when a validation (as long as the longest so far), then a checkpoint, fits."""
        return self.elapsed() + 1.5 * self.max_validate + self._reserve(checkpoint_bytes) <= self.budget


class FixedSteps(SessionClock):
    """A clock for tests and smoke runs: no time limit, stops after `steps` training steps this session."""

    def __init__(self, steps: int):
        super().__init__(float("inf"), 0.0, start=time.monotonic(), max_steps=steps)

    def output_save_seconds(self, checkpoint_bytes: int = 0) -> float:
        return 0.0  # no limit to save it before: no need to walk the output
