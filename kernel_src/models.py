"""Models: any timm backbone by name, pretrained weights only from a local file, normalisation on the device.

    model = build_model(kit.model, num_classes=len(labels), channels=kit.data.channels)
    logits = model(images_uint8)          # (N, C, H, W) uint8 or float in 0..255; returns (N, num_classes)

Kernels run offline, so timm never downloads: `weights` is a file path, or a file name in the weights
dataset (kpack_runtime.weights, after weights.prepare(config)), the kernel's inputs or ./models.
`pretrained: true` without `weights` takes the weights dataset's file for the architecture, and fails with
one line where there is none.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import timm
import torch
from torch import nn

from .settings import ModelSettings


class WeightsError(RuntimeError):
    """One line: what weights were asked for and why they cannot be used."""


class Classifier(nn.Module):
    """A timm backbone behind device-side normalisation: inputs are raw pixel values (uint8 or float)."""

    def __init__(self, backbone: nn.Module, channels: int, channels_last: bool = True):
        super().__init__()
        self.backbone = backbone
        self.channels_last = channels_last
        cfg = getattr(backbone, "pretrained_cfg", {}) or {}
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
        if channels != len(mean):
            mean, std = mean.mean().repeat(channels), std.mean().repeat(channels)
        # x / 255 then (x - mean) / std, folded into one multiply-add
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean / std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(self.shift, x.float(), self.scale)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)


def _weights_dataset():
    """kpack_runtime.weights (the verified weights dataset), or None where it is not shipped."""
    try:
        from kpack_runtime import weights
    except ImportError:
        return None
    return weights


def resolve_weights(ref: str) -> Path:
    """A weights file by path or by name: the weights dataset and the model sources (after weights.prepare),
    the inputs, ./models."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    dataset = _weights_dataset()
    if dataset is not None and ref in dataset.available():
        return dataset.weights_path(ref)
    from kpack_runtime import inputs
    hits = inputs.find_files(path.name)
    if hits:
        return hits[0]
    local = Path("models") / ref
    if local.is_file():
        return local
    raise WeightsError(f"kit.model.weights: {ref!r} is neither a file nor found in the weights dataset, "
                       f"the model sources, the kernel inputs or ./models")


def pretrained_for(model: ModelSettings) -> Optional[Path]:
    """The weights file the settings ask for: `weights`, else (pretrained: true) the weights dataset's file
    for this architecture; None for a fresh init. A hub download is never an option: it fails with one line."""
    if model.weights:
        return resolve_weights(model.weights)
    if not model.pretrained:
        return None
    dataset = _weights_dataset()
    found = dataset.for_architecture(model.name) if dataset is not None else None
    if found is None:
        raise WeightsError(f"kit.model.pretrained: true, but neither the weights dataset nor a model source has a "
                           f"file for {model.name!r} "
                           "and a hub download is impossible offline; set kit.model.weights to a local file or a "
                           "weights-dataset name")
    return Path(found)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from .safetensors, or a torch file holding one (possibly under state_dict/model)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise WeightsError(f"kit.model.weights: {path} holds no state dict")
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}


def load_backbone_weights(backbone: nn.Module, path: Path) -> list[str]:
    """Load pretrained weights into a timm backbone; the classifier head may differ (new classes) and
    the first conv is adapted to the channel count. Returns the keys left at their fresh init."""
    state = read_state_dict(path)
    cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    own = backbone.state_dict()
    first_conv = cfg.get("first_conv")
    if first_conv and f"{first_conv}.weight" in state and f"{first_conv}.weight" in own:
        key = f"{first_conv}.weight"
        if state[key].shape[1] != own[key].shape[1]:
            state[key] = timm.models.adapt_input_conv(own[key].shape[1], state[key])
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    kept = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    fresh = [k for k in own if k not in kept]
    not_head = [k for k in fresh if not any(k.startswith(h + ".") for h in heads)]
    if not_head:
        raise WeightsError(f"kit.model.weights: {path.name} does not fit this backbone: {len(not_head)} "
                           f"tensors missing or of another shape, e.g. {not_head[0]}")
    backbone.load_state_dict(kept, strict=False)
    return fresh


def build_model(model: ModelSettings, num_classes: int, channels: int = 3, *,
                pretrained: bool = True) -> Classifier:
    """The configured backbone with `num_classes` outputs, with its pretrained weights loaded unless
    pretrained=False (inference loads trained weights afterwards and needs none)."""
    try:
        backbone = timm.create_model(model.name, pretrained=False, num_classes=num_classes, in_chans=channels,
                                     drop_rate=model.drop_rate)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise WeightsError(f"kit.model.name: timm {timm.__version__} has no model {model.name!r}") from None
        raise
    weights = pretrained_for(model) if pretrained else None
    if weights is not None:
        load_backbone_weights(backbone, weights)
    channels_last = torch.cuda.is_available() if model.channels_last == "auto" else model.channels_last
    net = Classifier(backbone, channels, channels_last)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def device_for(local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


__all__ = ["Classifier", "WeightsError", "build_model", "device_for", "load_backbone_weights",
           "pretrained_for", "read_state_dict", "resolve_weights"]
