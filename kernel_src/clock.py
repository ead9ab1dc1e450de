"""The session clock: when to stop training so that the checkpoint is safely written before the limit.

The clock starts at process start (read from /proc at this module's import; the import time elsewhere). The
budget is the session limit (kernels.<kind>.session_hours, or KPACK_SESSION_SECONDS for tests and local
runs) minus a margin (kit.session.margin_seconds, at most 2% of the budget). The loop measures its own
steps, validations and checkpoint saves, and stops when one more step, then a save, might not fit:

    elapsed + 2 * max(step) + 1.5 * max(save) + margin > budget

where max(step) is over the last RECENT_STEPS steps (a load spike long past does not keep stopping early).
Before the first save is measured, a save is estimated from the checkpoint's size at a pessimistic
SAVE_BYTES_PER_S.
"""
from __future__ import annotations

import os
import time
from collections import deque
from typing import Callable, Optional



def _process_age() -> float:
    """Seconds since this process started (Linux /proc), or 0 where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


STARTED = time.monotonic() - _process_age()  # the clock runs from process start, imports included
ENV_SECONDS = "KPACK_SESSION_SECONDS"
MAX_MARGIN_SHARE = 0.02
SAVE_BYTES_PER_S = 50e6
RECENT_STEPS = 100  # the step estimate follows the machine's current speed, not a spike long past


def session_seconds(config: Optional[dict] = None, kind: str = "train") -> float:
    """KPACK_SESSION_SECONDS if set, else kernels.<kind>.session_hours (default 12 h, Kaggle's limit)."""
    if os.environ.get(ENV_SECONDS):
        return float(os.environ[ENV_SECONDS])
    kernel = ((config or {}).get("kernels") or {}).get(kind) or {}
    # whole seconds, as the push hands the limit to Kaggle (sessionTimeoutSeconds)
    return float(int(float(kernel.get("session_hours") or 12.0) * 3600))


class SessionClock:
    def __init__(self, budget_s: float, margin_s: float = 300.0, *, start: Optional[float] = None,
                 now: Callable[[], float] = time.monotonic, max_steps: int = 0):
        self.budget = float(budget_s)
        self.max_steps = max_steps  # > 0: also stop after this many steps (smoke runs)
        self.margin = min(float(margin_s), MAX_MARGIN_SHARE * self.budget)
        self.start = STARTED if start is None else start
        self.now = now
        self.recent: deque[float] = deque(maxlen=RECENT_STEPS)  # step times; their max is the estimate
        self.max_save = 0.0
        self.max_validate = 0.0
        self.validate_total = 0.0
        self.step_total = 0.0   # seconds spent in training steps this session (for the work-lost figure)
        self.steps = 0

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

    def record_save(self, seconds: float) -> None:
        self.max_save = max(self.max_save, seconds)

    def record_validate(self, seconds: float) -> None:
        self.max_validate = max(self.max_validate, seconds)
        self.validate_total += seconds

    def _save_estimate(self, checkpoint_bytes: int) -> float:
        return self.max_save or (1.0 + checkpoint_bytes / SAVE_BYTES_PER_S)

    def should_stop(self, checkpoint_bytes: int = 0) -> bool:
        """True when another training step and then a checkpoint might not fit in the budget."""
        if self.max_steps and self.steps >= self.max_steps:
            return True
        need = 2 * self.max_step + 1.5 * self._save_estimate(checkpoint_bytes) + self.margin
        return self.elapsed() + need > self.budget

    def can_validate(self, checkpoint_bytes: int = 0) -> bool:
        """True when a validation (as long as the longest so far), then a checkpoint, fits."""
        need = 1.5 * self.max_validate + 1.5 * self._save_estimate(checkpoint_bytes) + self.margin
        return self.elapsed() + need <= self.budget


class FixedSteps(SessionClock):
    """A clock for tests and smoke runs: no time limit, stops after `steps` training steps this session."""

    def __init__(self, steps: int):
        super().__init__(float("inf"), 0.0, start=time.monotonic(), max_steps=steps)
