"""Kit losses against hand computation; soft F2 keeps finite gradients where a hard F2 has none."""
from __future__ import annotations

import math

import pytest
import torch

from kernel_src import losses, settings


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


LOGITS = torch.tensor([[2.0, -1.0, 0.0], [-3.0, 0.5, 1.5]])
TARGETS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])


def hand_bce() -> float:
    total = 0.0
    for row, ys in zip(LOGITS.tolist(), TARGETS.tolist()):
        for x, y in zip(row, ys):
            p = sig(x)
            total += -(y * math.log(p) + (1 - y) * math.log(1 - p))
    return total / 6


def test_bce_matches_hand_computation():
    assert losses.bce(LOGITS, TARGETS).item() == pytest.approx(hand_bce(), rel=1e-6)


def test_focal_matches_hand_computation_and_reduces_to_bce_at_gamma_zero():
    assert losses.focal(LOGITS, TARGETS, gamma=0.0).item() == pytest.approx(hand_bce(), rel=1e-6)
    total = 0.0
    for row, ys in zip(LOGITS.tolist(), TARGETS.tolist()):
        for x, y in zip(row, ys):
            p_t = sig(x) if y else 1 - sig(x)
            alpha = 0.25 if y else 0.75
            total += -alpha * (1 - p_t) ** 2 * math.log(p_t)
    assert losses.focal(LOGITS, TARGETS, gamma=2.0, alpha=0.25).item() == pytest.approx(total / 6, rel=1e-5)


def test_focal_gives_no_loss_where_the_prediction_meets_a_soft_target():
    soft = torch.tensor([[0.05, 0.95, 0.3], [0.7, 0.5, 0.05]])  # smoothed or mixed targets
    at_target = torch.log(soft / (1 - soft))  # logits whose sigmoid is the target
    assert losses.focal(at_target, soft).item() < 1e-9
    assert losses.bce(at_target, soft).item() > 0.3  # BCE's floor there is the targets' entropy
    assert losses.focal(at_target + 1.0, soft).item() > 1e-3


def test_soft_fbeta_matches_hand_computation():
    scores = []
    for row, ys in zip(LOGITS.tolist(), TARGETS.tolist()):
        p = [sig(x) for x in row]
        tp = sum(pi * y for pi, y in zip(p, ys))
        fp = sum(pi * (1 - y) for pi, y in zip(p, ys))
        fn = sum((1 - pi) * y for pi, y in zip(p, ys))
        scores.append(5 * tp / (5 * tp + 4 * fn + fp))
    expected = 1 - sum(scores) / len(scores)
    assert losses.soft_fbeta(LOGITS, TARGETS, beta=2.0).item() == pytest.approx(expected, rel=1e-5)


def test_soft_fbeta_is_near_zero_for_confident_right_answers_and_near_one_for_wrong():
    y = TARGETS
    assert losses.soft_fbeta((y * 2 - 1) * 30, y).item() < 1e-6
    assert losses.soft_fbeta((1 - y * 2) * 30, y).item() > 1 - 1e-6


@pytest.mark.parametrize("logits", [
    torch.zeros(4, 5),                            # undecided
    torch.full((4, 5), 80.0),                     # saturated sigmoid, all claimed
    torch.full((4, 5), -80.0),                    # saturated, nothing claimed
    torch.linspace(-1e4, 1e4, 20).view(4, 5),     # extreme values
])
@pytest.mark.parametrize("all_negative", [False, True])
def test_soft_f2_gradients_are_finite(logits, all_negative):
    targets = torch.zeros(4, 5) if all_negative else (torch.arange(20).view(4, 5) % 3 == 0).float()
    x = logits.clone().requires_grad_(True)
    loss = losses.soft_fbeta(x, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    x16 = logits.half().clone().requires_grad_(True)  # logits as AMP produces them
    losses.soft_fbeta(x16, targets).backward()
    assert torch.isfinite(x16.grad.float()).all()


def test_soft_f2_gradient_pushes_positives_up_and_negatives_down():
    x = torch.zeros(1, 4, requires_grad=True)
    losses.soft_fbeta(x, torch.tensor([[1.0, 1.0, 0.0, 0.0]])).backward()
    g = x.grad[0]
    assert (g[:2] < 0).all() and (g[2:] > 0).all()  # descent raises the positives' logits


def test_forgiving_is_bce_plus_weighted_bce_of_masked_logits():
    w = 0.7
    masked = 0.0
    for row, ys in zip(LOGITS.tolist(), TARGETS.tolist()):
        for x, y in zip(row, ys):
            p = sig(x * y)
            masked += -(y * math.log(p) + (1 - y) * math.log(1 - p))
    expected = hand_bce() + w * masked / 6
    assert losses.forgiving(LOGITS, TARGETS, w=w).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_sum_from_config_shorthands():
    kit = settings.parse({"stages": [{"loss": {"bce": 0.5, "soft_fbeta": 2.0, "focal": {"weight": 1.0, "gamma": 0}}}]})
    fn = losses.build(kit.stages[0].loss)
    expected = 0.5 * hand_bce() + 2.0 * losses.soft_fbeta(LOGITS, TARGETS).item() + hand_bce()
    assert fn(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)
    assert fn(LOGITS.half(), TARGETS).dtype == torch.float32
    assert "0.5*bce" in repr(fn)


def test_soft_fbeta_macro_and_micro_count_over_the_batch():
    p, y = torch.sigmoid(LOGITS.float()), TARGETS.float()
    for average, dims in (("macro", (0,)), ("micro", (0, 1))):
        tp, fp, fn = (p * y).sum(dims), (p * (1 - y)).sum(dims), ((1 - p) * y).sum(dims)
        expected = 1 - (5 * tp / (5 * tp + 4 * fn + fp + 1e-7)).mean().item()
        assert losses.soft_fbeta(LOGITS, TARGETS, beta=2.0, average=average).item() == pytest.approx(expected, rel=1e-5)
    assert losses.soft_fbeta(LOGITS, TARGETS, average="macro").item() != pytest.approx(
        losses.soft_fbeta(LOGITS, TARGETS).item())
