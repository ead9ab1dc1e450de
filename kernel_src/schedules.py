"""Learning-rate schedules as pure functions of the global optimizer step (nanoGPT's get_lr(it)).

Nothing to save or restore: a resumed run asks for the lr of its step and gets what the straight run got.

    lr = lr_at(step, total_steps, kit.schedule, kit.optim.lr)
"""
from __future__ import annotations

import math

from .settings import ScheduleSettings


def _cos(start: float, end: float, pct: float) -> float:
    """Cosine from `start` (pct 0) to `end` (pct 1)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def warmup_cosine(step: int, total_steps: int, lr: float, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """Linear warmup over `warmup_steps` (from lr/warmup to lr), then cosine down to `min_lr` at the last step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - 1 - warmup_steps)
    return _cos(lr, min_lr, min(1.0, (step - warmup_steps) / decay_steps))


def constant(step: int, lr: float, warmup_steps: int = 0) -> float:
    return lr * (step + 1) / warmup_steps if step < warmup_steps else lr


def one_cycle(step: int, total_steps: int, max_lr: float, pct_start: float = 0.25, div_factor: float = 25.0,
              final_div_factor: float = 1e4) -> float:
    """torch.optim.lr_scheduler.OneCycleLR (cosine, two phases) as a function of the step."""
    initial = max_lr / div_factor
    final = initial / final_div_factor
    peak = float(pct_start * total_steps) - 1
    if step <= peak:
        return _cos(initial, max_lr, step / peak if peak > 0 else 1.0)
    last = total_steps - 1
    return _cos(max_lr, final, min(1.0, (step - peak) / (last - peak)) if last > peak else 1.0)


def lr_at(step: int, total_steps: int, schedule: ScheduleSettings, lr: float) -> float:
    if schedule.name == "cosine":
        return warmup_cosine(step, total_steps, lr, schedule.warmup_steps, lr * schedule.min_lr_ratio)
    if schedule.name == "onecycle":
        return one_cycle(step, total_steps, lr, schedule.pct_start, schedule.div_factor, schedule.final_div_factor)
    if schedule.name == "constant":
        return constant(step, lr, schedule.warmup_steps)
    raise ValueError(f"unknown schedule {schedule.name!r}")
