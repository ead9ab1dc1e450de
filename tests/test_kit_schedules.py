"""Learning-rate schedules: pure functions of the step, checked against hand values and torch's OneCycleLR."""
from __future__ import annotations

import math

import pytest
import torch

from kernel_src import schedules, settings


def test_warmup_cosine_hand_values():
    lr, total, warm, low = 1.0, 110, 10, 0.01
    assert schedules.warmup_cosine(0, total, lr, warm, low) == pytest.approx(0.1)
    assert schedules.warmup_cosine(9, total, lr, warm, low) == pytest.approx(1.0)
    assert schedules.warmup_cosine(10, total, lr, warm, low) == pytest.approx(1.0)
    # halfway through the decay: the mean of lr and min_lr
    mid = 10 + (total - 1 - 10) / 2
    assert schedules.warmup_cosine(mid, total, lr, warm, low) == pytest.approx((1.0 + 0.01) / 2)
    assert schedules.warmup_cosine(total - 1, total, lr, warm, low) == pytest.approx(0.01)
    quarter = 10 + (total - 1 - 10) / 4
    assert schedules.warmup_cosine(quarter, total, lr, warm, low) == pytest.approx(
        0.01 + 0.99 * (1 + math.cos(math.pi / 4)) / 2)


def test_cosine_without_warmup_starts_at_lr_and_never_rises():
    values = [schedules.warmup_cosine(s, 50, 3e-4, 0, 0.0) for s in range(50)]
    assert values[0] == pytest.approx(3e-4)
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(0.0, abs=1e-12)


def test_constant_with_warmup():
    assert [schedules.constant(s, 2.0, 4) for s in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("total,pct", [(100, 0.25), (37, 0.3), (10, 0.5)])
def test_one_cycle_matches_torch(total, pct):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total, pct_start=pct,
                                              div_factor=25.0, final_div_factor=1e4, anneal_strategy="cos",
                                              cycle_momentum=False)
    for step in range(total):
        ours = schedules.one_cycle(step, total, 0.1, pct, 25.0, 1e4)
        assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15), step
        opt.step()
        ref.step()


def test_lr_at_dispatches_and_is_pure():
    for name in ("cosine", "onecycle", "constant"):
        sched = settings.parse({"schedule": {"name": name, "warmup_steps": 3}}).schedule
        first = [schedules.lr_at(s, 40, sched, 1e-3) for s in range(40)]
        again = [schedules.lr_at(s, 40, sched, 1e-3) for s in reversed(range(40))][::-1]
        assert first == again  # order of asking changes nothing: no hidden state to checkpoint
        assert all(v > 0 for v in first)
