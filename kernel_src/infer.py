"""Inference kernel entry: `main(config)` writes submission.csv from the trained models in the kernel's inputs.

Steps: find every trained model the train kernels wrote (best.pt / model.pt, searched under the inputs), group
them into ensemble members (a member is one training config; its models differ only in the fold), predict the
test images with TTA, average each member's folds, blend the members, turn probabilities into labels with the
rule the validate kernel searched (thresholds.json, when one is mounted) or the config's fixed threshold, and
write `submission.csv` in sample_submission order.

Shared with validate.py: `kit_settings`, `find_models`, `predict`, `EvalSettings`.

config["kit"] keys read here (besides the training kit's data/augment/model/amp/seed):
    augment.tta          test-time views (kernel_src.tta)
    infer.checkpoint     best | final: best.pt (best validation epoch) or model.pt, else whichever exists
    infer.batch_size     images per forward pass
    without a mounted thresholds.json (which carries validate's rule and blend) the config decides:
    thresholds.fixed     one threshold for every label, with at least one label per row unless
                         thresholds.min_labels is [0]
    thresholds.one_of    label groups with exactly one label per row
    blend.method, blend.weights    weights for the members in name order; none: the plain mean

Local use: python -m kernel_src.infer kpack.yaml   [KPACK_KAGGLE_ROOT=... for the folders]
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from . import augment, blend, checkpoint, data, entrypoint, models, settings, tta
from .atomic import write_text as atomic_write_text
from kpack_runtime import inputs
from .thresholds import Rule

MODEL_FILES = {"best": "best.pt", "final": "model.pt"}
THRESHOLDS_FILE = "thresholds.json"
SUBMISSION = "submission.csv"


# ----------------------------------------------------------------------------------------- settings

@dataclass
class ThresholdSettings:
    method: Literal["auto", "fixed", "global", "per_class", "top_k"] = "auto"
    fixed: float = 0.5
    min_labels: list[int] = field(default_factory=lambda: [0, 1])
    top_k: list[int] = field(default_factory=lambda: [1, 2, 3])
    one_of: list[str] = field(default_factory=list)
    grid_step: float = 0.01
    rounds: int = 3


@dataclass
class BlendSettings:
    method: Literal["mean", "weighted", "rank"] = "mean"
    weights: Optional[list[float]] = None


@dataclass
class InferSettings:
    checkpoint: Literal["best", "final"] = "best"
    batch_size: int = 64


@dataclass
class EvalSettings:
    thresholds: ThresholdSettings = field(default_factory=ThresholdSettings)
    blend: BlendSettings = field(default_factory=BlendSettings)
    infer: InferSettings = field(default_factory=InferSettings)


def _check(ev: EvalSettings) -> None:
    t = ev.thresholds
    problems = [
        (0 < t.fixed < 1, "thresholds.fixed", "expected a number in (0, 1)", t.fixed),
        (0 < t.grid_step < 0.5, "thresholds.grid_step", "expected a number in (0, 0.5)", t.grid_step),
        (t.rounds >= 1, "thresholds.rounds", "expected 1 or more", t.rounds),
        (all(k >= 0 for k in t.min_labels), "thresholds.min_labels", "expected counts of 0 or more", t.min_labels),
        (all(k >= 1 for k in t.top_k), "thresholds.top_k", "expected counts of 1 or more", t.top_k),
        (ev.infer.batch_size >= 1, "infer.batch_size", "expected 1 or more", ev.infer.batch_size),
    ]
    for ok, name, what, got in problems:
        if not ok:
            raise settings.SettingsError(f"kit.{name}: {what} (got {got!r})")


def kit_settings(config: dict) -> tuple[settings.KitSettings, EvalSettings]:
    """The training kit's settings and the evaluation sections (thresholds, blend, infer) of config["kit"].

    Sections settings.KitSettings does not know yet are taken out before it parses the rest."""
    kit_raw = dict(config.get("kit") or {})
    known = {f.name for f in dataclasses.fields(settings.KitSettings)}
    ours = {f.name: kit_raw.pop(f.name) for f in dataclasses.fields(EvalSettings)
            if f.name in kit_raw and f.name not in known}
    kit = settings.parse(kit_raw)
    ev = settings._build(EvalSettings, ours, "kit")
    for f in dataclasses.fields(EvalSettings):
        if f.name in known:
            setattr(ev, f.name, getattr(kit, f.name))
    _check(ev)
    return kit, ev


# ------------------------------------------------------------------------------------------- models

@dataclass
class TrainedModel:
    path: Path
    kit: settings.KitSettings
    labels: data.Labels
    state: Optional[dict]       # backbone weights; dropped once the network is built
    step: int

    @property
    def fold(self) -> int:
        return self.kit.data.fold

    @property
    def member(self) -> str:
        """Ensemble member: the model name and a hash of every training setting except the fold."""
        plain = settings.to_dict(self.kit, runtime=False)
        plain["data"].pop("fold", None)
        digest = hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.kit.model.name}-{digest}"


def find_models(prefer: str = "best", folders: Optional[list[Path]] = None, log=print) -> list[TrainedModel]:
    """Every trained model under the inputs (or `folders`): per folder the preferred file, else the other.
    The same training (same settings and fold) mounted twice, e.g. from chained sessions, counts once:
    the copy with the most steps."""
    names = [MODEL_FILES[prefer]] + [n for k, n in MODEL_FILES.items() if k != prefer]
    if folders is None:
        folders = sorted({p.parent for n in names for p in inputs.find_files(n)})
    best: dict[str, TrainedModel] = {}
    for folder in folders:
        path = next((Path(folder) / n for n in names if (Path(folder) / n).is_file()), None)
        if path is None:
            continue
        saved = checkpoint.load_model(path)
        if not isinstance(saved, dict) or "kit" not in saved or "labels" not in saved:
            log(f"[kpack] skipping {path}: not a model file the train kernel wrote")
            continue
        kit = settings.parse(saved["kit"])
        model = TrainedModel(path, kit, data.Labels.from_json(saved["labels"]), saved["model"],
                             int(saved.get("step") or 0))
        key = settings.training_hash(kit)
        if key not in best or model.step > best[key].step:
            best[key] = model
    models = sorted(best.values(), key=lambda m: (m.member, m.fold, str(m.path)))
    if not models:
        where = folders if folders else [inputs.input_dir()]
        raise FileNotFoundError(f"no trained model ({' or '.join(names)}) under {', '.join(map(str, where))}: "
                                "add the train kernel(s) to this kernel's sources")
    ids = models[0].labels.ids
    for m in models[1:]:
        if m.labels.ids != ids:
            raise ValueError(f"{m.path} was trained on another label space than {models[0].path}")
    return models


def predict(model: TrainedModel, paths: list[Path], tta_names: list[str], ev: EvalSettings,
            kit: settings.KitSettings) -> np.ndarray:
    """TTA probabilities (rows: `paths`, columns: the model's labels) from one trained model; frees its state."""
    device = models.device_for(0)
    mk = model.kit
    net = models.build_model(mk.model, len(model.labels), mk.data.channels, pretrained=False)
    net.backbone.load_state_dict(model.state)
    model.state = None
    net.to(device).eval()
    dataset = data.ImageDataset(paths, None, augment.build(mk.augment.valid, mk.data.image_size), seed=mk.seed,
                                channels=mk.data.channels)
    sampler = data.EpochBatchSampler(len(paths), ev.infer.batch_size, mk.seed, shuffle=False, drop_last=False)
    loader = data.make_loader(dataset, sampler, kit.data.num_workers, pin_memory=device.type == "cuda",
                              persistent=False)
    amp = device.type == "cuda" and kit.amp != "off"
    with torch.autocast("cuda", dtype=torch.float16) if amp else nullcontext():
        return tta.predict(net, loader, tta_names, device)


def member_groups(models: list[TrainedModel]) -> dict[str, list[TrainedModel]]:
    groups: dict[str, list[TrainedModel]] = {}
    for m in models:
        groups.setdefault(m.member, []).append(m)
    return groups


def one_of_columns(names: list[str], labels: data.Labels) -> tuple[tuple[int, ...], ...]:
    unknown = [n for n in names if n not in labels.groups]
    if unknown:
        raise settings.SettingsError(f"kit.thresholds.one_of: no label group {unknown[0]!r} "
                                     f"(groups: {', '.join(labels.groups)})")
    return tuple(tuple(labels.groups[n]) for n in names)


# ------------------------------------------------------------------------------------------- entry

def _decision(ev: EvalSettings, labels: data.Labels, members: list[str], log) -> tuple[Rule, str, list[float] | None]:
    """(rule, blend method, blend weights): validate's thresholds.json when mounted, else the config."""
    found = inputs.find_files(THRESHOLDS_FILE)
    if found:
        if len(found) > 1:
            log(f"[kpack] {len(found)} {THRESHOLDS_FILE} files mounted; using {found[0]}")
        saved = json.loads(found[0].read_text())
        if saved.get("labels") != labels.ids:
            raise ValueError(f"{found[0]} was searched for another label space than the models'")
        rule = Rule.from_dict(saved["rule"])
        mix = saved.get("blend") or {}
        if mix.get("members") == members:
            log(f"[kpack] rule {saved.get('name')} from {found[0]} (OOF F2 {saved.get('f2', float('nan')):.4f})")
            return rule, mix["method"], mix["weights"]
        log(f"[kpack] {found[0]} was blended over members {mix.get('members')}, these are {members}: "
            "its rule is used, the members are averaged")
        return rule, "mean", None
    t = ev.thresholds
    rule = Rule.constant(len(labels), t.fixed, min_labels=min(1, max(t.min_labels, default=0)),
                         one_of=one_of_columns(t.one_of, labels))
    log(f"[kpack] no {THRESHOLDS_FILE} mounted: threshold {t.fixed} from kit.thresholds.fixed")
    weights = ev.blend.weights if ev.blend.weights and len(ev.blend.weights) == len(members) else None
    return rule, ev.blend.method if weights or ev.blend.method == "rank" else "mean", weights


def run(config: dict, working: Optional[Path] = None, log=print) -> Path:
    """Write submission.csv into `working` (default: the kernel's working dir); returns its path."""
    kit, ev = kit_settings(config)
    working = Path(working or inputs.working_dir())
    working.mkdir(parents=True, exist_ok=True)
    models = find_models(ev.infer.checkpoint, log=log)
    labels = models[0].labels
    root = data.data_root(kit, config)
    test = data.read_test(kit.data, root, labels)
    groups = member_groups(models)
    rule, method, weights = _decision(ev, labels, list(groups), log)
    member_probs = []
    for name, fold_models in groups.items():
        probs = [predict(m, test.paths, kit.augment.tta, ev, kit) for m in fold_models]
        member_probs.append(np.mean(probs, axis=0))
        log(f"[kpack] member {name}: {len(fold_models)} model(s), folds {[m.fold for m in fold_models]}")
    probs = blend.blend(member_probs, method, weights)
    pred = rule.apply(probs)
    sample = root / "sample_submission.csv"
    header = (sample.open().readline().strip() if sample.is_file()
              else f"{kit.data.id_column},{kit.data.labels_column}")
    rows = "".join(f"{i},{' '.join(labels.decode(row))}\n" for i, row in zip(test.ids, pred))
    out = working / SUBMISSION
    atomic_write_text(out, f"{header}\n{rows}")
    log(f"[kpack] wrote {out}: {len(test.ids)} rows, {pred.sum(axis=1).mean():.2f} labels per row")
    return out


def main(config: dict) -> Path:
    return entrypoint.one_line_errors(lambda: run(config), also=(ValueError,))


if __name__ == "__main__":
    entrypoint.from_command_line(main)
