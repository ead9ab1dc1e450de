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
    infer.plan           warn | refuse | off: before the run, time every member with its TTA (kernel_src.planner)
                         and warn, or stop with what to drop, when the whole run will not fit the session limit
    infer.plan_only      only the timing: write plan.json and stop (`kpack push infer --plan` sets it)
    infer.plan_batches   batches timed per member (after one warm-up batch)
    infer.hidden_test_factor   the hidden test set's size over the public one's (code/two-stage competitions)
    without a mounted thresholds.json (which carries validate's rule and blend) the config decides:
    thresholds.fixed     one threshold for every label, with at least one label per row unless
                         thresholds.min_labels is [0]
    thresholds.one_of    label groups with exactly one label per row
    blend.method, blend.weights    weights for the members in name order; none: the plain mean

Writes plan.json (the plan, its predicted_s and the measured actual_s of the run) beside submission.csv, and
test_probs.npz (the blend's probabilities before the rule, kind test: a teacher, teacher.py).
submission.csv has sample_submission.csv's columns and ids, in its order; anything else stops in one line.

Local use: python -m kernel_src.infer kpack.yaml   [KPACK_KAGGLE_ROOT=... for the folders]
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from . import (augment, blend, checkpoint, clock, data, entrypoint, gpudecode, metrics, models, planner, settings,
               teacher, tta)
from .atomic import write_text as atomic_write_text
from kpack_runtime import inputs
from .thresholds import Rule

MODEL_FILES = {"best": "best.pt", "final": "model.pt"}
THRESHOLDS_FILE = "thresholds.json"
SUBMISSION = "submission.csv"
PLAN_FILE = "plan.json"
PLAN_WARMUP = 1  # batches run before the timed ones (first-forward allocations, cudnn's kernel choice)


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
    plan: Literal["warn", "refuse", "off"] = "warn"
    plan_only: bool = False
    plan_batches: int = 5
    hidden_test_factor: float = 1.0


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
        (ev.infer.plan_batches >= 1, "infer.plan_batches", "expected 1 or more", ev.infer.plan_batches),
        (ev.infer.hidden_test_factor > 0, "infer.hidden_test_factor", "expected a number above 0 (the hidden "
         "test set's size over the public one's)", ev.infer.hidden_test_factor),
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


def _network(model: TrainedModel, device: torch.device) -> torch.nn.Module:
    mk = model.kit
    net = models.build_model(mk.model, len(model.labels), mk.data.channels, pretrained=False)
    net.backbone.load_state_dict(model.state)
    return net.to(device).eval()


def _loader(model: TrainedModel, paths: list[data.ImageRef], ev: EvalSettings, kit: settings.KitSettings, device):
    mk = model.kit
    sampler = data.EpochBatchSampler(len(paths), ev.infer.batch_size, mk.seed, shuffle=False, drop_last=False)
    if mk.data.decode == "device":  # decoded as trained: on this device, as the training's validation was
        return gpudecode.loader(paths, None, mk.augment.valid, sampler, mk.data, mk.seed, device,
                                kit.data.num_workers, persistent=False)
    pipeline = augment.build(mk.augment.valid, mk.data.image_size, mk.data.reduced_decode)  # decoded as trained
    dataset = data.ImageDataset(paths, None, pipeline, seed=mk.seed, channels=mk.data.channels)
    return data.make_loader(dataset, sampler, kit.data.num_workers, pin_memory=device.type == "cuda",
                            persistent=False)


def _autocast(device: torch.device, kit: settings.KitSettings):
    amp = device.type == "cuda" and kit.amp != "off"
    return torch.autocast("cuda", dtype=torch.float16) if amp else nullcontext()


def predict(model: TrainedModel, paths: list[data.ImageRef], tta_names: list[str], ev: EvalSettings,
            kit: settings.KitSettings) -> np.ndarray:
    """TTA probabilities (rows: `paths`, columns: the model's labels) from one trained model; frees its state."""
    device = models.device_for(0)
    net = _network(model, device)
    model.state = None
    loader = _loader(model, paths, ev, kit, device)
    with _autocast(device, kit):
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

class PlanError(ValueError):
    """The plan does not fit the session limit and kit.infer.plan is refuse."""


def _decision(ev: EvalSettings, labels: data.Labels, members: list[str],
              log) -> tuple[Rule, str, list[float] | None, list[str]]:
    """(rule, blend method, blend weights, the members blended): validate's thresholds.json when mounted (its
    members, method and weights; a mounted member it does not name is left out), else the config's."""
    found = inputs.find_files(THRESHOLDS_FILE)
    if found:
        if len(found) > 1:
            log(f"[kpack] {len(found)} {THRESHOLDS_FILE} files mounted; using {found[0]}")
        saved = json.loads(found[0].read_text())
        if saved.get("labels") != labels.ids:
            raise ValueError(f"{found[0]} was searched for another label space than the models'")
        rule = Rule.from_dict(saved["rule"])
        mix = saved.get("blend") or {}
        named = list(mix.get("members") or [])
        if named:
            missing = [m for m in named if m not in members]
            if missing:
                raise ValueError(f"{found[0]} blends member {missing[0]}, which no mounted model is (mounted: "
                                 f"{', '.join(members)}): add its train kernel to kernels.infer.sources, or "
                                 "run validate again over the models mounted here")
            left_out = [m for m in members if m not in named]
            if left_out:
                log(f"[kpack] member(s) {', '.join(left_out)} not in {found[0]}'s blend: left out")
            log(f"[kpack] rule {saved.get('name')} from {found[0]} (OOF {metrics.NAME} "
                f"{saved.get('f2', float('nan')):.4f}), blend {mix.get('method')} over {len(named)} member(s)")
            return rule, mix.get("method") or "mean", mix.get("weights"), named
        log(f"[kpack] {found[0]} names no blend members: its rule is used, the members are averaged")
        return rule, "mean", None, members
    t = ev.thresholds
    rule = Rule.constant(len(labels), t.fixed, min_labels=min(1, max(t.min_labels, default=0)),
                         one_of=one_of_columns(t.one_of, labels))
    log(f"[kpack] no {THRESHOLDS_FILE} mounted: threshold {t.fixed} from kit.thresholds.fixed")
    weights = ev.blend.weights if ev.blend.weights and len(ev.blend.weights) == len(members) else None
    return rule, ev.blend.method if weights or ev.blend.method == "rank" else "mean", weights, members


def _submission(header: str, ids: list[str], labels: data.Labels, pred: np.ndarray, sample: Path) -> str:
    """submission.csv's text, checked against sample_submission.csv: its two columns, its ids in its order."""
    columns = header.split(",")
    if len(columns) != 2:
        raise ValueError(f"{sample} has columns {columns}: infer writes two (the id and the labels); "
                         "a competition with another layout needs its own infer entry")
    if sample.is_file():
        import pandas as pd

        expected = pd.read_csv(sample, dtype=str, keep_default_na=False).iloc[:, 0].str.strip().tolist()
        if ids != expected:
            extra = sorted(set(ids) - set(expected))[:1] or sorted(set(expected) - set(ids))[:1]
            raise ValueError(f"the test ids differ from {sample}'s (first difference: {extra or 'the order'})")
    rows = "".join(f"{i},{' '.join(labels.decode(row))}\n" for i, row in zip(ids, pred))
    return f"{header}\n{rows}"


def _time_writing(working: Path, rows: int, labels: data.Labels, rule: Rule, method: str,
                  weights: list[float] | None, members: int, header: str) -> float:
    """Seconds to blend, threshold and write `rows` rows: done once on random probabilities, then removed."""
    start = time.perf_counter()
    probs = np.random.default_rng(0).random((rows, len(labels)), dtype=np.float32)
    pred = rule.apply(blend.blend([probs] * members, method, weights))
    text = "".join(f"t{i},{' '.join(labels.decode(row))}\n" for i, row in enumerate(pred))
    probe = working / f".{SUBMISSION}.timing"
    atomic_write_text(probe, f"{header}\n{text}")
    probe.unlink()
    return time.perf_counter() - start


def make_plan(config: dict, kit: settings.KitSettings, ev: EvalSettings, groups: dict[str, list[TrainedModel]],
              paths: list[data.ImageRef], weights: list[float] | None, write_s: float) -> planner.Plan:
    """Time PLAN_WARMUP + plan_batches batches of each member's first model with the TTA views, on the test
    images the run reads first, and predict the whole run."""
    device = models.device_for(0)
    views = list(kit.augment.tta) or ["none"]
    timed_paths = paths[:(PLAN_WARMUP + ev.infer.plan_batches) * ev.infer.batch_size]
    plans = []
    for k, (name, fold_models) in enumerate(groups.items()):
        first = fold_models[0]
        start = time.perf_counter()
        net = _network(first, device)
        load_s = time.perf_counter() - start
        timing = planner.time_member(net, _loader(first, timed_paths, ev, kit, device),
                                     dict(zip(views, tta.views(views))), device,
                                     batches=ev.infer.plan_batches, warmup=PLAN_WARMUP,
                                     autocast=lambda: _autocast(device, kit))
        del net
        plans.append(planner.MemberPlan(name, len(fold_models), load_s, timing.start_s,
                                        timing.batch_load_s, timing.view_s,
                                        float(weights[k]) if weights else 1.0))
    session_s = clock.session_seconds(config, "infer")
    start, _ = clock.choose_start(session_s, clock.STARTED, clock.CONTAINER_STARTED, time.monotonic())
    return planner.Plan.make(plans, views=views, rows=len(paths), batch_size=ev.infer.batch_size,
                             hidden_test_factor=ev.infer.hidden_test_factor, write_s=write_s,
                             session_s=session_s, elapsed_s=time.monotonic() - start,
                             margin_s=min(kit.session.margin_seconds, clock.MAX_MARGIN_SHARE * session_s),
                             timed_batches=timing.batches)


def _write_plan(working: Path, plan: planner.Plan, actual_s: float | None = None) -> Path:
    out = working / PLAN_FILE
    atomic_write_text(out, json.dumps(plan.as_dict(actual_s), indent=2) + "\n")
    return out


def run(config: dict, working: Optional[Path] = None, log=print) -> Path:
    """Write submission.csv into `working` (default: the kernel's working dir); returns its path
    (plan.json's with kit.infer.plan_only)."""
    kit, ev = kit_settings(config)
    working = Path(working or inputs.working_dir())
    working.mkdir(parents=True, exist_ok=True)
    models = find_models(ev.infer.checkpoint, log=log)
    labels = models[0].labels
    root = data.data_root(kit, config)
    test = data.read_test(kit.data, root, labels)
    groups = member_groups(models)
    rule, method, weights, chosen = _decision(ev, labels, list(groups), log)
    groups = {name: groups[name] for name in chosen}
    sample = root / "sample_submission.csv"
    header = (sample.open().readline().strip() if sample.is_file()
              else f"{kit.data.id_column},{kit.data.labels_column}")
    plan = None
    if ev.infer.plan != "off" or ev.infer.plan_only:
        write_s = _time_writing(working, len(test.ids), labels, rule, method, weights, len(groups), header)
        plan = make_plan(config, kit, ev, groups, test.paths, weights, write_s)
        log(f"[kpack] {plan.summary()}")
        if not plan.fits:
            line = (f"the plan does not fit: {plan.predicted_hidden_s:.0f} s predicted, {plan.available_s():.0f} s "
                    f"left of the {plan.session_s:.0f} s session; {plan.drop_line()}")
            if ev.infer.plan_only:
                log(f"[kpack] {line}")
            elif ev.infer.plan == "refuse":
                _write_plan(working, plan)
                raise PlanError(f"{line} (kit.infer.plan: warn runs it anyway)")
            else:
                log(f"[kpack] warning: {line}")
        if ev.infer.plan_only:
            out = _write_plan(working, plan)
            log(f"[kpack] wrote {out} (kit.infer.plan_only: nothing predicted)")
            return out
    started = time.perf_counter()
    member_probs = []
    for name, fold_models in groups.items():
        probs = [predict(m, test.paths, kit.augment.tta, ev, kit) for m in fold_models]
        member_probs.append(np.mean(probs, axis=0))
        log(f"[kpack] member {name}: {len(fold_models)} model(s), folds {[m.fold for m in fold_models]}")
    probs = blend.blend(member_probs, method, weights)
    teacher.write_probs(working / teacher.TEST_FILE, test.ids, labels.ids,
                        teacher.blend_probs(member_probs, method, weights), "test")  # a teacher (teacher.py)
    pred = rule.apply(probs)
    out = working / SUBMISSION
    atomic_write_text(out, _submission(header, test.ids, labels, pred, sample))
    actual_s = time.perf_counter() - started
    log(f"[kpack] wrote {out}: {len(test.ids)} rows, {pred.sum(axis=1).mean():.2f} labels per row")
    if plan is not None:
        _write_plan(working, plan, actual_s)
        log(f"[kpack] plan: {plan.predicted_s:.1f} s predicted, {actual_s:.1f} s taken "
            f"({100 * (plan.predicted_s - actual_s) / actual_s:+.1f}%)")
    return out


def main(config: dict) -> Path:
    return entrypoint.one_line_errors(lambda: run(config), also=(ValueError,))


if __name__ == "__main__":
    entrypoint.from_command_line(main)
