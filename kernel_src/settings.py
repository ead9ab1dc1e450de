"""The training kit's settings: `config["kit"]` validated into dataclasses, stdlib only.

Every field has a default, so `kit: {}` is a valid (small) run. A wrong value fails with one line that
names the field, e.g. `kit.optim.lr: expected a number (got 'fast')`. Fields marked `runtime` may differ
between the sessions of one training run (worker count, cache, session margin); every other field is
part of the training hash, and a checkpoint written under another hash is refused.

Example (YAML, under `kit:` in kpack.yaml):

    seed: 42
    data: {style: imet, image_size: 64, folds: 5, fold: 0, num_workers: 2}
    augment: {train: light, valid: none, tta: [none, hflip]}
    model: {name: resnet18, weights: resnet18.pth}
    optim: {name: adamw, lr: 1.0e-3, batch_size: 64}
    schedule: {name: cosine, warmup_steps: 100}
    stages:
      - {epochs: 6, loss: {bce: 1.0}}
      - {epochs: 2, loss: {soft_fbeta: 1.0}, lr_scale: 0.1}

The winners' techniques, each off unless set (mixing.py, freezing.py, mining.py):

    stages: [{epochs: 6, loss: bce, label_smoothing: 0.1}]
    data: {train_sizes: [48, 64, 80], train_sizes_per: batch}      # multi-scale training
    data: {decode: device, image_ext: .jpg}     # JPEGs decoded on the training GPU (gpudecode.py; none/light only)
    mix: {mixup_alpha: 0.4, cutmix_alpha: 1.0, prob: 1.0, switch_prob: 0.5}
    freeze: {train_stages: 2, unfreeze_every: 1, lr_decay: 0.7}    # last stages first, one more per epoch
    mining: {share: 0.2}                                           # last epoch's hardest 20% drawn twice
    teacher: {oof: oof_probs.npz, test: test_probs.npz, weight: 0.5, pseudo_threshold: 0.9}  # teacher.py
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

RUNTIME = {"runtime": True}  # field metadata: may change between sessions without breaking resume
# field metadata of the optional techniques: hashed only when set, so runs without them keep their old hash
OPTIONAL = {"optional": True}
DEVICE_PIPELINES = ("none", "light")  # the augmentations kit.data.decode: device offers (gpudecode.py)
COLOUR_PIPELINES = ("heavy",)  # augment.py's pipelines with a hue shift: 1 or 3 channels only


class SettingsError(ValueError):
    """A one-line message naming the field, e.g. `kit.optim.lr: expected a number (got 'x')`."""


@dataclass
class DataSettings:
    style: Literal["imet", "inclusive"] = "imet"
    root: Optional[str] = field(default=None, metadata=RUNTIME)  # folder holding the CSVs; default: the mounted competition
    competition: Optional[str] = None       # competition slug to search the inputs for; default: config["competition"]
    train_csv: str = "train.csv"
    labels_csv: Optional[str] = "labels.csv"  # attribute_id,attribute_name; names `group::x` make label groups
    id_column: str = "id"
    labels_column: str = "attribute_ids"    # Inclusive Images: e.g. "labels"
    label_sep: str = " "
    train_images: str = "train"             # folder of training images, relative to root
    test_images: str = "test"
    image_ext: str = ".png"
    # one grey file per channel (Human Protein Atlas: [red, green, blue, yellow]): an image is the files
    # `{id}_{name}{image_ext}` stacked in this order, and channels is their count
    channel_files: list[str] = field(default_factory=list, metadata=OPTIONAL)
    image_size: int = 64
    channels: int = 3                       # 1 (grey) or 3 (RGB); with channel_files, their count
    folds: int = 5
    fold: int = 0                           # the validation fold; -1 trains on everything, no validation
    # a stratified share of the rows no fold trains on: validate scores the whole submission (every member's
    # folds averaged, the blend, the rule) on it, the one CV that predicts the blend's test score (folds.py)
    holdout: float = field(default=0.0, metadata=OPTIONAL)
    max_samples: Optional[int] = None       # first N training rows only (smoke runs)
    num_workers: int = field(default=2, metadata=RUNTIME)
    cache: bool = field(default=False, metadata=RUNTIME)  # pre-resized uint8 cache in the temp dir
    # auto: a JPEG at least 2x the image size is decoded at 1/2, 1/4 or 1/8 scale before the resize (pipelines
    # none/light/affine); off: full decode. Pixels differ a little, so off is hashed (auto keeps older hashes)
    decode_scale: Literal["auto", "off"] = field(default="auto", metadata=OPTIONAL)
    # multi-scale training: each training batch resized to one of these sizes, a new one every batch or epoch
    train_sizes: list[int] = field(default_factory=list, metadata=OPTIONAL)
    train_sizes_per: Literal["batch", "epoch"] = field(default="batch", metadata=OPTIONAL)
    # workers: the loader's workers decode (OpenCV) and augment (albumentations); device: they only read the JPEG
    # bytes and the training process decodes each batch on its device (nvJPEG on CUDA), resizes and flips it
    # there (gpudecode.py). Pixels differ a little, so device is hashed (workers keeps older hashes)
    decode: Literal["workers", "device"] = field(default="workers", metadata=OPTIONAL)

    @property
    def reduced_decode(self) -> bool:
        """JPEGs may be decoded at a reduced scale (decode_scale auto): training, the cache, validate, infer."""
        return self.decode_scale == "auto"


@dataclass
class AugmentSettings:
    train: str = "light"
    valid: str = "none"
    tta: list[str] = field(default_factory=lambda: ["none"])


@dataclass
class ModelSettings:
    name: str = "resnet18"
    weights: Optional[str] = None           # a file path, or a name inside the weights dataset / inputs
    pretrained: bool = False                # true without `weights` asks for a hub download: refused
    drop_rate: float = 0.0
    channels_last: Literal["auto", True, False] = "auto"  # auto: on CUDA (tensor cores), off on CPU (slower there)


@dataclass
class LossTerm:
    name: Literal["bce", "focal", "soft_fbeta", "forgiving"] = "bce"
    weight: float = 1.0
    gamma: float = 2.0    # focal
    alpha: float = -1.0   # focal; < 0: no class balancing
    beta: float = 2.0     # soft_fbeta
    # soft_fbeta: soft counts per sample (samples), per label over the batch (macro) or over every cell (micro)
    average: Literal["samples", "macro", "micro"] = field(default="samples", metadata=OPTIONAL)
    w: float = 1.0        # forgiving: BCE + w * BCE(logits * y, y)


@dataclass
class StageSettings:
    epochs: int = 1
    # focal by default: it beat BCE on the generated competitions with unbalanced labels (bench_defaults, README)
    loss: list[LossTerm] = field(default_factory=lambda: [LossTerm(name="focal")])
    lr_scale: float = 1.0
    label_smoothing: float = field(default=0.0, metadata=OPTIONAL)  # training targets y -> y (1 - eps) + eps / 2


@dataclass
class MixSettings:
    """Mixup / cutmix of each training batch with a shuffled copy of itself; targets mixed by the same weight."""
    mixup_alpha: float = 0.0    # > 0: lambda ~ Beta(alpha, alpha); 0: off
    cutmix_alpha: float = 0.0   # > 0: box area share ~ Beta(alpha, alpha); 0: off
    prob: float = 1.0           # share of batches mixed
    switch_prob: float = 0.5    # both on: share of mixed batches that use cutmix


@dataclass
class FreezeSettings:
    """Per backbone stage (timm's group_matcher: stem, stages, head): frozen stages, their learning rates."""
    train_stages: int = 0       # > 0: only the last N stages (and the head) train at first; 0: all
    unfreeze_every: int = 0     # > 0: one more stage trains every N epochs (gradual unfreezing)
    lr_decay: float = 1.0       # stage i from the head: lr * lr_decay**i (discriminative learning rates)


@dataclass
class MiningSettings:
    share: float = 0.0          # > 0: the hardest share of last epoch's samples is drawn twice as often


@dataclass
class TeacherSettings:
    """Distillation and pseudo-labelling from a teacher's predictions (teacher.py; validate/infer write the files)."""
    oof: Optional[str] = None       # oof_probs.npz (validate): training targets (1 - weight) y + weight p
    test: Optional[str] = None      # test_probs.npz (infer): confident test rows join the training rows
    weight: float = 0.5
    pseudo_threshold: float = 0.0   # > 0: test rows whose every p >= t or <= 1 - t; 0: off
    pseudo_max: int = 0             # most pseudo rows, the most confident first (0: all)


@dataclass
class OptimSettings:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-3                        # measured: README, Defaults against tuned settings
    weight_decay: float = 1e-4
    momentum: float = 0.9                   # sgd
    nesterov: bool = True                   # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    # per process; auto: the largest of 32, 16, 8 that gives the run AUTO_BATCH_STEPS optimizer steps (engine.py)
    batch_size: Union[Literal["auto"], int] = "auto"
    accum_steps: int = 1
    grad_clip: float = 0.0                  # 0: off


@dataclass
class ScheduleSettings:
    name: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_steps: int = 0                   # cosine/constant: linear warmup from 0
    min_lr_ratio: float = 0.01              # cosine: final lr = lr * min_lr_ratio
    pct_start: float = 0.25                 # onecycle: share of steps rising
    div_factor: float = 25.0                # onecycle: start lr = lr / div_factor
    final_div_factor: float = 1e4           # onecycle: final lr = start lr / final_div_factor


@dataclass
class EmaSettings:
    enabled: bool = False
    decay: float = 0.999
    warmup: bool = True                     # decay ramps as min(decay, (1 + step) / (10 + step))


@dataclass
class SessionSettings:
    margin_seconds: float = field(default=300.0, metadata=RUNTIME)   # kept free before the session limit
    checkpoint_every_minutes: float = field(default=30.0, metadata=RUNTIME)
    checkpoint_every_steps: int = field(default=0, metadata=RUNTIME)  # 0: off; tests use it
    keep_previous: bool = field(default=True, metadata=RUNTIME)
    max_steps: int = field(default=0, metadata=RUNTIME)  # stop this session after N steps (0: off; smoke runs)


@dataclass
class KitSettings:
    seed: int = 42
    data: DataSettings = field(default_factory=DataSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    stages: list[StageSettings] = field(default_factory=lambda: [StageSettings(epochs=5)])
    optim: OptimSettings = field(default_factory=OptimSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    ema: EmaSettings = field(default_factory=EmaSettings)
    mix: MixSettings = field(default_factory=MixSettings, metadata=OPTIONAL)
    freeze: FreezeSettings = field(default_factory=FreezeSettings, metadata=OPTIONAL)
    mining: MiningSettings = field(default_factory=MiningSettings, metadata=OPTIONAL)
    teacher: TeacherSettings = field(default_factory=TeacherSettings, metadata=OPTIONAL)
    amp: Literal["auto", "fp16", "off"] = "auto"      # auto: fp16 + GradScaler on CUDA, fp32 on CPU
    deterministic: bool = False                       # torch.use_deterministic_algorithms(True)
    log_every_steps: int = field(default=50, metadata=RUNTIME)
    # training processes: auto = one per visible GPU (one on a CPU), or a number (2 on a CPU: two gloo
    # processes); KPACK_PROCESSES overrides it. Resume needs the same count (the data order depends on it)
    processes: Literal["auto", 1, 2, 3, 4, 5, 6, 7, 8] = field(default="auto", metadata=RUNTIME)
    session: SessionSettings = field(default_factory=SessionSettings)

    @property
    def epochs(self) -> int:
        return sum(stage.epochs for stage in self.stages)

    def stage_at(self, epoch: int) -> tuple[int, StageSettings]:
        """The stage (index, settings) that epoch `epoch` (0-based) belongs to."""
        end = 0
        for index, stage in enumerate(self.stages):
            end += stage.epochs
            if epoch < end:
                return index, stage
        return len(self.stages) - 1, self.stages[-1]


# ----------------------------------------------------------------------------------------- validation

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        args = typing.get_args(tp)
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(value, options[0], where)
        for inner in options:  # e.g. Union[Literal["auto"], int]: the first that takes the value
            try:
                return _convert(value, inner, where)
            except SettingsError:
                pass
        raise SettingsError(f"{where}: expected {_type_name(tp)} (got {value!r})")
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
    elif origin is list:
        if tp == list[LossTerm]:
            value = _loss_terms(value, where)
        if isinstance(value, (list, tuple)):
            return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, where)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    raise SettingsError(f"{where}: expected {_type_name(tp)}{shown}")


def _loss_terms(value: Any, where: str) -> Any:
    """Shorthands: `bce`, `{bce: 1.0, soft_fbeta: 0.5}`, `{focal: {weight: 1, gamma: 2}}`, or a list of terms."""
    if isinstance(value, str):
        return [{"name": value}]
    if isinstance(value, dict):
        terms = []
        # sorted: the packed config's JSON sorts keys, and term order is part of the training hash
        for name, spec in sorted(value.items()):
            if isinstance(spec, dict):
                terms.append({"name": name, **spec})
            elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
                terms.append({"name": name, "weight": spec})
            else:
                raise SettingsError(f"{where}.{name}: expected a weight or a mapping (got {spec!r})")
        return terms
    return value


def _build(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise SettingsError(f"{where}.{key}: unknown field; remove it or check its spelling")
    values = {key: _convert(value, hints[key], f"{where}.{key}") for key, value in data.items()}
    obj = cls(**values)
    _check(obj, where)
    return obj


def _check(obj: Any, where: str) -> None:
    """Range checks that the types alone do not say."""
    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise SettingsError(f"{where}.{name}: {what} (got {getattr(obj, name)!r})")

    if isinstance(obj, DataSettings):
        need(obj.image_size >= 8, "image_size", "expected at least 8")
        need(obj.folds >= 2, "folds", "expected at least 2")
        need(-1 <= obj.fold < obj.folds, "fold", f"expected -1 (no validation) or 0..{obj.folds - 1}")
        need(obj.num_workers >= 0, "num_workers", "expected 0 or more")
        need(obj.max_samples is None or obj.max_samples > 0, "max_samples", "expected a positive count")
        need(obj.image_ext.startswith("."), "image_ext", "expected an extension with its dot, e.g. '.png'")
        need(all(n >= 8 for n in obj.train_sizes), "train_sizes", "expected sizes of at least 8")
        need(0 <= obj.holdout <= 0.5, "holdout", "expected 0 (off) or a share of the rows up to 0.5, e.g. 0.1")
        if obj.channel_files:
            need(len(set(obj.channel_files)) == len(obj.channel_files) and all(obj.channel_files), "channel_files",
                 "expected distinct file-name suffixes, e.g. [red, green, blue, yellow]")
            need(obj.channels == len(obj.channel_files), "channels",
                 f"expected {len(obj.channel_files)}, one per channel file (channel_files: {obj.channel_files})")
            need(obj.decode == "workers", "decode", "device decoding reads one file per image; use decode: workers "
                 "with channel_files")
        else:
            need(obj.channels in (1, 3), "channels", "expected 1 (grey) or 3 (RGB); more need channel_files")
        if obj.decode == "device":
            need(obj.image_ext.lower() in (".jpg", ".jpeg"), "decode",
                 f"device decoding reads JPEG files only (image_ext is {obj.image_ext!r}); use decode: workers")
            need(not obj.cache, "decode", "device decoding has no cache (kit.data.cache stores the workers' "
                 "decoded pixels); set cache: false or use decode: workers")
    elif isinstance(obj, OptimSettings):
        need(obj.lr > 0, "lr", "expected a positive learning rate")
        need(obj.weight_decay >= 0, "weight_decay", "expected 0 or more")
        need(obj.batch_size == "auto" or obj.batch_size >= 1, "batch_size", "expected auto or 1 or more")
        need(obj.accum_steps >= 1, "accum_steps", "expected 1 or more")
        need(obj.grad_clip >= 0, "grad_clip", "expected 0 (off) or more")
        need(len(obj.betas) == 2 and all(0 <= b < 1 for b in obj.betas), "betas", "expected two numbers in [0, 1)")
    elif isinstance(obj, ScheduleSettings):
        need(obj.warmup_steps >= 0, "warmup_steps", "expected 0 or more")
        need(0 <= obj.min_lr_ratio <= 1, "min_lr_ratio", "expected a number in [0, 1]")
        need(0 < obj.pct_start < 1, "pct_start", "expected a number in (0, 1)")
    elif isinstance(obj, StageSettings):
        need(obj.epochs >= 1, "epochs", "expected 1 or more")
        need(len(obj.loss) >= 1, "loss", "expected at least one loss term")
        need(obj.lr_scale > 0, "lr_scale", "expected a positive number")
        need(0 <= obj.label_smoothing < 1, "label_smoothing", "expected a number in [0, 1)")
    elif isinstance(obj, MixSettings):
        need(obj.mixup_alpha >= 0, "mixup_alpha", "expected 0 (off) or more")
        need(obj.cutmix_alpha >= 0, "cutmix_alpha", "expected 0 (off) or more")
        need(0 <= obj.prob <= 1, "prob", "expected a number in [0, 1]")
        need(0 <= obj.switch_prob <= 1, "switch_prob", "expected a number in [0, 1]")
    elif isinstance(obj, FreezeSettings):
        need(obj.train_stages >= 0, "train_stages", "expected 0 (all) or more")
        need(obj.unfreeze_every >= 0, "unfreeze_every", "expected 0 (off) or more")
        need(obj.unfreeze_every == 0 or obj.train_stages > 0, "unfreeze_every",
             "expected 0 unless train_stages is set (all stages already train)")
        need(0 < obj.lr_decay <= 1, "lr_decay", "expected a number in (0, 1]")
    elif isinstance(obj, MiningSettings):
        need(0 <= obj.share < 1, "share", "expected a number in [0, 1)")
    elif isinstance(obj, TeacherSettings):
        need(0 <= obj.weight <= 1, "weight", "expected a number in [0, 1]")
        need(obj.pseudo_threshold == 0 or 0.5 <= obj.pseudo_threshold < 1, "pseudo_threshold",
             "expected 0 (off) or a number in [0.5, 1)")
        need(obj.pseudo_max >= 0, "pseudo_max", "expected 0 (all) or more")
        need(obj.oof is None or obj.weight > 0, "oof", "unused with weight 0: set weight above 0 or drop it")
        need((obj.test is None) == (obj.pseudo_threshold == 0), "test" if obj.test else "pseudo_threshold",
             "pseudo-labelling needs both test and pseudo_threshold")
    elif isinstance(obj, EmaSettings):
        need(0 < obj.decay < 1, "decay", "expected a number in (0, 1)")
    elif isinstance(obj, LossTerm):
        need(obj.beta > 0, "beta", "expected a positive number")
        need(obj.gamma >= 0, "gamma", "expected 0 or more")
    elif isinstance(obj, SessionSettings):
        need(obj.margin_seconds >= 0, "margin_seconds", "expected 0 or more")
        need(obj.checkpoint_every_minutes > 0, "checkpoint_every_minutes", "expected a positive number")
        need(obj.checkpoint_every_steps >= 0, "checkpoint_every_steps", "expected 0 (off) or more")
        need(obj.max_steps >= 0, "max_steps", "expected 0 (off) or more")
    elif isinstance(obj, KitSettings):
        need(len(obj.stages) >= 1, "stages", "expected at least one stage")
        need(obj.log_every_steps >= 1, "log_every_steps", "expected 1 or more")
        for part in ("train", "valid"):
            name = getattr(obj.augment, part)
            if obj.data.channels not in (1, 3) and name in COLOUR_PIPELINES:
                raise SettingsError(f"{where}.augment.{part}: {name} shifts hue and saturation, which needs 1 or 3 "
                                    f"channels (data.channels is {obj.data.channels}); choose none, light, affine "
                                    "or medium")
            if obj.data.decode == "device" and name not in DEVICE_PIPELINES:
                raise SettingsError(f"{where}.data.decode: device decoding supports the none and light pipelines; "
                                    f"use decode: workers for {name} ({where}.augment.{part})")


def parse(kit: Any, where: str = "kit") -> KitSettings:
    """Validate `config["kit"]` (None or a mapping) into KitSettings; raises SettingsError with one line."""
    if kit is None:
        kit = {}
    if not isinstance(kit, dict):
        raise SettingsError(f"{where}: expected a mapping of settings (got {kit!r})")
    return _build(KitSettings, kit, where)


# Sections of config["kit"] that the evaluation entries (validate/infer) own and validate themselves
# (kernel_src.infer.EvalSettings); training skips them, so they are not part of the training hash either.
EVAL_SECTIONS = ("thresholds", "blend", "infer")


def from_config(config: dict) -> KitSettings:
    """The training settings of a whole resolved project config (the dict a kernel entry gets)."""
    kit = config.get("kit")
    if isinstance(kit, dict):
        kit = {k: v for k, v in kit.items() if k not in EVAL_SECTIONS}
    return parse(kit)


def to_dict(settings: Any, *, runtime: bool = True) -> Any:
    """Plain data (JSON/YAML-ready); runtime=False drops fields that may change between sessions."""
    if dataclasses.is_dataclass(settings):
        return {f.name: to_dict(getattr(settings, f.name), runtime=runtime)
                for f in dataclasses.fields(settings) if runtime or not f.metadata.get("runtime")}
    if isinstance(settings, list):
        return [to_dict(v, runtime=runtime) for v in settings]
    return settings


def _hashed(settings: Any) -> Any:
    """to_dict(runtime=False), less the optional techniques' fields left at their default (off)."""
    if dataclasses.is_dataclass(settings):
        out = {}
        for f in dataclasses.fields(settings):
            value = getattr(settings, f.name)
            if f.metadata.get("runtime"):
                continue
            if f.metadata.get("optional"):
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                if value == default:
                    continue
            out[f.name] = _hashed(value)
        return out
    if isinstance(settings, list):
        return [_hashed(v) for v in settings]
    return settings


def training_hash(settings: KitSettings) -> str:
    """sha256 of everything that shapes the trained weights; checkpoints carry it and resume checks it."""
    text = json.dumps(_hashed(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
