"""Backbone stages: training only the last ones, gradual unfreezing, discriminative learning rates.

Stages are timm's coarse parameter groups (`backbone.group_matcher(coarse=True)`, as timm's layer-decay
optimizer uses them): for a ResNet the stem, layer1..layer4 and, last, the head. Counted from the head
(distance 0), stage d trains from epoch 0 when d <= train_stages, and from epoch (d - train_stages) *
unfreeze_every with gradual unfreezing; its learning rate is lr * lr_decay**d. The head always trains.
Which stages train is a function of the epoch alone, so resume needs no state of its own. Frozen parameters
stay in the optimizer (its state keeps one layout across sessions); without a gradient it skips them.
BatchNorm layers of frozen stages keep updating their running statistics (the model stays in train mode).

    groups = param_groups(kit.freeze, model, weight_decay)   # optimizer groups carrying "lr_scale"
    set_trainable(kit.freeze, model, epoch)                 # requires_grad per stage for this epoch
"""
from __future__ import annotations

from timm.models import group_parameters
from torch import nn

from .settings import FreezeSettings


class FreezeError(ValueError):
    """One line: the backbone has no stages to freeze."""


def active(freeze: FreezeSettings) -> bool:
    return freeze.train_stages > 0 or freeze.lr_decay != 1.0


def stages(model: nn.Module) -> list[list[nn.Parameter]]:
    """The backbone's parameters by stage, input side first, the head last."""
    backbone = getattr(model, "backbone", model)
    matcher = getattr(backbone, "group_matcher", None)
    groups = group_parameters(backbone, matcher(coarse=True)) if matcher else {}
    if len(groups) < 2:
        raise FreezeError(f"kit.freeze: timm's {type(backbone).__name__} has no stages (group_matcher) to freeze "
                          "or to give learning rates of their own; remove kit.freeze or choose another model")
    params = dict(backbone.named_parameters())
    return [[params[name] for name in names] for _, names in sorted(groups.items())]


def lr_scales(freeze: FreezeSettings, count: int) -> list[float]:
    return [freeze.lr_decay ** (count - 1 - i) for i in range(count)]


def trainable(freeze: FreezeSettings, count: int, epoch: int) -> list[bool]:
    """Per stage (input side first): whether it trains in `epoch` (0-based)."""
    if freeze.train_stages <= 0:
        return [True] * count
    opened = freeze.train_stages + (epoch // freeze.unfreeze_every if freeze.unfreeze_every else 0)
    return [count - 1 - i <= opened for i in range(count)]


def param_groups(freeze: FreezeSettings, model: nn.Module, weight_decay: float) -> list[dict]:
    """Per stage: no weight decay on biases and norm weights (1-d tensors), the stage's lr_scale on both."""
    groups = []
    per_stage = stages(model)
    for params, scale in zip(per_stage, lr_scales(freeze, len(per_stage))):
        groups.append({"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale})
        groups.append({"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, "lr_scale": scale})
    return [g for g in groups if g["params"]]


def set_trainable(freeze: FreezeSettings, model: nn.Module, epoch: int) -> None:
    per_stage = stages(model)
    for params, on in zip(per_stage, trainable(freeze, len(per_stage), epoch)):
        for p in params:
            p.requires_grad_(on)

