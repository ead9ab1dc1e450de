"""The training loop: one run of `kit` settings, resumable at any optimizer step, across any number of sessions.

    result = run(kit, config, working=Path(...), clock=SessionClock(...))

Reading order: Dist (one process or a torchrun rank) -> Run.__init__ (data, model, optimizer, resume) ->
Run.train (the loop) -> Run.validate / Run.save / Run.finish (outputs). Exactness rests on three things:
the lr is a function of the step (schedules.py), the data order and augmentation are functions of
(seed, epoch, index) (data.py), and a checkpoint holds everything else that changes: weights, optimizer,
scaler, EMA, RNG states, the position in the epoch.

Files written into `working` (rank 0):
    checkpoint.pt, checkpoint-prev.pt   the resumable state (checkpoint.py)
    state.json     {"done", "step", "total_steps", "epoch", "epochs", "best_metric", "session": {...}}
    metrics.json   per-epoch validation history and the best epoch
    oof.npy        validation-fold probabilities (rows: oof.csv order, columns: classes.json ids)
    oof.csv        id,attribute_ids (the true labels) of the validation fold, in oof.npy row order
    classes.json   {"ids", "names", "groups"}: the label space
    best.pt        weights of the best validation epoch (EMA weights when EMA is on); model.pt: final ones
    kit.json       the resolved kit settings
Files from earlier sessions that this one did not rewrite are carried over from the resumed checkpoint's
folder, so the last session's output is always complete. Every file is written whole or not at all, through
a temp file that never ships as output (atomic.py).
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import (atomic, augment, checkpoint, data, folds, freezing, gpudecode, losses, mining, mixing, models, schedules,
               settings, teacher)
from .metrics import AVERAGE, BETA, NAME as METRIC, fbeta_score
from .settings import KitSettings
from .thresholds import cross_fit_global

# what the train kernel's recorded CV is (validate's differs: kernel_src/validate.py CV_KIND)
CV_KIND = "train: one fold, half B, global threshold from half A, epoch chosen on half A, no TTA"
CARRIED = ("oof.npy", "oof.csv", "metrics.json", "best.pt", "classes.json")


# ------------------------------------------------------------------------------------------ processes

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls) -> "Dist":
        """One process, or a torchrun rank (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        device = models.device_for(local)
        if world > 1 and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world, local, device)

    def any(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over the ranks (a stop that one rank's clock decides stops them all)."""
        if self.world == 1:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v > 0) for v in t.tolist()]

    def gather(self, obj: Any) -> list:
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


# ------------------------------------------------------------------------------------------------ EMA

class Ema:
    """Exponential moving average of a model's floating-point state; integer buffers are copied."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        # state_dict tensors share storage with the modules (load_state_dict copies in place): pair them once
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        self.floats = ([e for e, _ in pairs if e.dtype.is_floating_point],
                       [v for e, v in pairs if e.dtype.is_floating_point])
        self.others = [(e, v) for e, v in pairs if not e.dtype.is_floating_point]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        torch._foreach_lerp_(self.floats[0], self.floats[1], 1.0 - d)
        for e, v in self.others:
            e.copy_(v)


# ------------------------------------------------------------------------------------------ RNG state

def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def set_deterministic(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on


# -------------------------------------------------------------------------------------------- the run

def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (1-d tensors), as timm's optimizer factory does."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def build_optimizer(kit: KitSettings, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    groups = (freezing.param_groups(kit.freeze, model, kit.optim.weight_decay) if freezing.active(kit.freeze)
              else _param_groups(model, kit.optim.weight_decay))
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if kit.optim.name == "sgd":
        return torch.optim.SGD(groups, lr=kit.optim.lr, momentum=kit.optim.momentum,
                               nesterov=kit.optim.nesterov, **fast)
    return torch.optim.AdamW(groups, lr=kit.optim.lr, betas=tuple(kit.optim.betas), **fast)


AUTO_BATCH_SIZES = (32, 16, 8)
# Optimizer steps a run should get: on generated competitions of 300-1,200 images a fold, test F2 rose with the
# step count at equal epochs (batch 8 > 16 > 32 > 64, up to 1,800 steps; README, bench_defaults.py); a floor
# that leaves folds of thousands of rows at 32.
AUTO_BATCH_STEPS = 1000


def resolve_batch_size(kit: KitSettings, rows: int, world: int, log: Callable[[str], None]) -> KitSettings:
    """`optim.batch_size: auto`: the largest of AUTO_BATCH_SIZES whose epochs give AUTO_BATCH_STEPS optimizer
    steps (per process, as the sampler deals them), else the smallest; a number is kept as it is."""
    if kit.optim.batch_size != "auto":
        return kit

    def steps(size: int) -> int:
        batches = len(data.EpochBatchSampler(rows, size, kit.seed, rank=0, world=world))
        return math.ceil(batches / kit.optim.accum_steps) * kit.epochs

    size = next((b for b in AUTO_BATCH_SIZES if steps(b) >= AUTO_BATCH_STEPS), AUTO_BATCH_SIZES[-1])
    log(f"[kpack] optim.batch_size auto: {size} per process ({steps(size)} optimizer steps over {kit.epochs} "
        f"epochs of {rows} rows; 32 would give {steps(32)})")
    return replace(kit, optim=replace(kit.optim, batch_size=size))


class Run:
    def __init__(self, kit: KitSettings, config: Optional[dict], working: Path, clock,
                 log: Callable[[str], None] = print, search: Optional[list[Path]] = None):
        self.kit, self.working, self.clock, self.log = kit, Path(working), clock, log
        self.dist = dd = Dist.setup()
        set_deterministic(kit.deterministic)
        torch.manual_seed(kit.seed)  # the same initial weights on every rank
        np.random.seed(kit.seed % 2**32)
        random.seed(kit.seed)
        if dd.main:
            self.working.mkdir(parents=True, exist_ok=True)
            checkpoint.clean_temp(self.working)

        # data: the table, this fold's split, datasets and their batch samplers
        d = kit.data
        root = data.data_root(kit, config)
        table = data.read_train(d, root)
        self.labels = table.labels
        fold_of = folds.assign(table.targets, d.folds, kit.seed, d.holdout)
        train_idx, self.valid_idx = folds.split(fold_of, d.fold)
        self.valid_ids = [table.ids[i] for i in self.valid_idx]
        self.valid_targets = table.targets[self.valid_idx]
        paths, train_targets = table.paths, table.targets[train_idx]
        taught = None
        if teacher.active(kit.teacher):  # soft targets and pseudo rows (test images appended to paths)
            taught = teacher.prepare(kit, root, table, train_idx, log if dd.main else lambda s: None)
            paths, train_idx, train_targets = taught.paths, taught.rows, taught.targets
        # batch_size auto becomes its number before the hash: the checkpoint, kit.json and infer see the number,
        # and a run that resolves to 32 keeps the hash it had when 32 was the default
        self.kit = kit = resolve_batch_size(kit, len(train_idx), dd.world, log if dd.main else lambda s: None)
        self.hash = settings.training_hash(kit)
        if taught is not None:
            self.hash = taught.hash(self.hash)
        cache = data.ImageCache(paths, d.image_size, d.channels, reduced=d.reduced_decode) if d.cache else None
        pin = dd.device.type == "cuda"

        def loader(idx: np.ndarray, targets: np.ndarray, pipeline: str, sampler: data.EpochBatchSampler,
                   persistent: bool = True):
            rows = [paths[i] for i in idx]
            if d.decode == "device":  # workers read the JPEG bytes; this process decodes them on its device
                return gpudecode.loader(rows, targets, pipeline, sampler, d, kit.seed, dd.device, d.num_workers,
                                        persistent)
            dataset = data.ImageDataset(rows, targets, augment.build(pipeline, d.image_size, d.reduced_decode),
                                        seed=kit.seed, channels=d.channels,
                                        cache=_Subset(cache, idx) if cache is not None else None)
            return data.make_loader(dataset, sampler, d.num_workers, pin, persistent)

        self.train_sampler = data.EpochBatchSampler(len(train_idx), kit.optim.batch_size, kit.seed,
                                                    shuffle=True, drop_last=True, rank=dd.rank, world=dd.world)
        self.train_loader = loader(train_idx, train_targets, kit.augment.train, self.train_sampler)
        self.valid_sampler = data.EpochBatchSampler(len(self.valid_idx), kit.optim.batch_size * 2, kit.seed,
                                                    shuffle=False, drop_last=False, rank=dd.rank, world=dd.world)
        self.valid_loader = loader(self.valid_idx, self.valid_targets, kit.augment.valid, self.valid_sampler,
                                   persistent=False)
        self.miner = mining.Miner(len(train_idx), kit.mining.share, kit.seed) if kit.mining.share > 0 else None
        if self.miner:
            self.train_sampler.order_fn = self.miner.order
        self.batches_per_epoch = len(self.train_sampler)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / kit.optim.accum_steps)
        self.total_steps = self.steps_per_epoch * kit.epochs

        # model, optimizer, scaler, EMA
        self.model = models.build_model(kit.model, len(self.labels), d.channels).to(dd.device)
        self.ema = Ema(self.model, kit.ema.decay, kit.ema.warmup) if kit.ema.enabled else None
        self.amp = kit.amp != "off" and dd.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.optimizer = build_optimizer(kit, self.model, dd.device)
        self.net = self.model
        if dd.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dd.device.index] if dd.device.type == "cuda" else None,
                find_unused_parameters=kit.freeze.train_stages > 0)  # frozen stages get no gradient
        self.loss_fns = [losses.build(stage.loss) for stage in kit.stages]
        weights_bytes = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        self.ckpt_bytes = weights_bytes * (4 if self.ema else 3)  # weights, 2 optimizer moments, EMA

        # position: epoch, batches done in it, optimizer steps done; validation record
        self.epoch, self.batch, self.step = 0, 0, 0
        self.validated = -1          # the last epoch whose validation is done
        self.best = -math.inf
        self.best_epoch = -1
        self.history: list[dict] = []
        self.written: set[str] = set()
        self.resumed_from: Optional[Path] = None
        torch.manual_seed(kit.seed + 1 + dd.rank)  # dropout & co: a stream of its own per rank
        self._resume(search or [])
        # saving working/ at the session's end counts against its limit: model.pt and the carried files too
        self.clock.track_output(self.working, weights_bytes + self._carry_bytes())

    # ---- checkpoints

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "position": {"epoch": self.epoch, "batch": self.batch, "step": self.step, "validated": self.validated},
            "best": {"metric": self.best, "epoch": self.best_epoch},
            "history": self.history,
            "rng": self.dist.gather(rng_state()),
            "mining": self.dist.gather(self.miner.state()) if self.miner else None,
            "world": self.dist.world,
            "kit": settings.to_dict(self.kit),
        }

    def save(self) -> None:
        state = self.state()  # every rank takes part in gathering the RNG states
        if self.dist.main:
            meta = {"step": self.step, "epoch": self.epoch, "batch": self.batch, "training_hash": self.hash,
                    "written": time.time(), "world": self.dist.world}
            seconds = checkpoint.save(self.working / checkpoint.NAME, state, meta,
                                      keep_previous=self.kit.session.keep_previous)
            self.clock.record_save(seconds, (self.working / checkpoint.NAME).stat().st_size)
            self.written.add(checkpoint.NAME)
            self.saved_at = (self.step, time.monotonic())
        self.dist.barrier()

    def _resume(self, search: list[Path]) -> None:
        from kpack_runtime import inputs
        paths = checkpoint.candidates([self.working] + search,
                                      inputs.find_files(checkpoint.NAME) + inputs.find_files(checkpoint.PREVIOUS))
        found = checkpoint.latest(paths, self.hash, log=self.log if self.dist.main else lambda s: None,
                                  world=self.dist.world)
        self.saved_at = (0, time.monotonic())
        if found is None:
            return
        s = found.state
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        if s["scaler"]:  # empty when saved without AMP (a CPU session): a CUDA session starts a fresh scale
            self.scaler.load_state_dict(s["scaler"])
        if self.ema:
            self.ema.module.load_state_dict(s["ema"])
        pos = s["position"]
        self.epoch, self.batch, self.step, self.validated = pos["epoch"], pos["batch"], pos["step"], pos["validated"]
        self.best, self.best_epoch = s["best"]["metric"], s["best"]["epoch"]
        self.history = s["history"]
        set_rng_state(s["rng"][self.dist.rank])
        if self.miner:
            self.miner.load(s["mining"][self.dist.rank])
        self.resumed_from = found.path
        self.saved_at = (self.step, time.monotonic())
        if self.dist.main:
            self.log(f"[kpack] resumed from {found.path}: epoch {self.epoch} batch {self.batch} step {self.step}")

    # ---- the loop

    def _lr(self) -> float:
        _, stage = self.kit.stage_at(self.epoch)
        return schedules.lr_at(self.step, self.total_steps, self.kit.schedule, self.kit.optim.lr) * stage.lr_scale

    def _begin_epoch_part(self) -> None:
        """Per-epoch state of the techniques, re-derived on resume: trainable stages, the mining record."""
        if self.kit.freeze.train_stages > 0:
            freezing.set_trainable(self.kit.freeze, self.model, self.epoch)
        if self.miner:
            self.miner.begin(self.epoch, self.dist.gather)

    def _batch_transforms(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Label smoothing, multi-scale, mixup/cutmix (each a no-op unless configured; mixing.py)."""
        kit = self.kit
        targets = losses.smooth(targets, kit.stage_at(self.epoch)[1].label_smoothing)
        images = mixing.resize(images, mixing.train_size(kit.data, kit.seed, self.epoch, self.batch))
        mix = mixing.draw(kit.mix, len(images), images.shape[-2], images.shape[-1], kit.seed, self.epoch,
                          self.batch, self.dist.rank)
        return mixing.mix_batch(images, targets, mix)

    def _checkpoint_due(self) -> bool:
        s = self.kit.session
        step0, t0 = self.saved_at
        by_steps = s.checkpoint_every_steps > 0 and self.step - step0 >= s.checkpoint_every_steps
        return by_steps or time.monotonic() - t0 >= s.checkpoint_every_minutes * 60

    def train_epoch_part(self) -> bool:
        """Train from the current batch to the end of the epoch; False when the clock stopped it first."""
        kit, dev = self.kit, self.dist.device
        accum = kit.optim.accum_steps
        stage_index, _ = kit.stage_at(self.epoch)
        loss_fn = self.loss_fns[stage_index]
        self.net.train()
        self._begin_epoch_part()
        self.train_sampler.set_epoch(self.epoch, self.batch)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
        t_step = time.monotonic()
        seen = 0
        for images, targets, index in self.train_loader:
            if self.batch % accum == 0:
                lr = self._lr()
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
            images = images.to(dev, non_blocking=True)
            targets = targets.to(dev, non_blocking=True)
            images, targets = self._batch_transforms(images, targets)
            last_micro = (self.batch + 1) % accum == 0 or self.batch + 1 == self.batches_per_epoch
            sync = nullcontext() if last_micro or self.dist.world == 1 else self.net.no_sync()
            with sync:
                with autocast:
                    logits = self.net(images)
                    loss = loss_fn(logits, targets)
                self.scaler.scale(loss / accum).backward()
            if self.miner:
                self.miner.record(index.numpy(), losses.per_sample_bce(logits.detach(), targets).cpu().numpy())
            self.batch += 1
            seen += len(images)
            if not last_micro:
                continue
            if kit.optim.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), kit.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            if self.ema:
                self.ema.update(self.step)
            now = time.monotonic()
            self.clock.record_step(now - t_step)
            if self.dist.main and self.step % kit.log_every_steps == 0:
                self.log(f"[kpack] epoch {self.epoch + 1}/{kit.epochs} step {self.step}/{self.total_steps} "
                         f"loss {loss.item():.4f} lr {lr:.2e} {seen * self.dist.world / max(1e-9, now - t_step):.0f} img/s")
            if self.batch < self.batches_per_epoch:
                stop, due = self.dist.any(self.clock.should_stop(self.ckpt_bytes), self._checkpoint_due())
                if stop:
                    return False
                if due:
                    self.save()
            seen = 0
            t_step = time.monotonic()
        return True

    @torch.no_grad()
    def predict_valid(self) -> np.ndarray:
        """Logits of the validation fold, in valid_idx order (every rank gets them)."""
        net = self.ema.module if self.ema else self.model
        net.eval()
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
        self.valid_sampler.set_epoch(0)
        index, outs = [], []
        for images, _, idx in self.valid_loader:
            with autocast:
                logits = net(images.to(self.dist.device, non_blocking=True))
            outs.append(logits.float().cpu().numpy())
            index.append(idx.numpy())
        parts = self.dist.gather((np.concatenate(index) if index else np.zeros(0, np.int64),
                                  np.concatenate(outs) if outs else np.zeros((0, len(self.labels)), np.float32)))
        out = np.zeros((len(self.valid_idx), len(self.labels)), dtype=np.float32)
        for idx, p in parts:
            out[idx] = p
        return out

    def validate(self) -> None:
        started = time.monotonic()
        logits = torch.from_numpy(self.predict_valid())
        y = self.valid_targets
        stage_index, _ = self.kit.stage_at(self.epoch)
        loss = float(self.loss_fns[stage_index](logits, torch.from_numpy(y.astype(np.float32))))
        probs = torch.sigmoid(logits).numpy()
        f2_half = fbeta_score(y, probs >= 0.5)
        # honest CV (thresholds.cross_fit_global): the fold's two seeded halves A and B; the best epoch is
        # chosen on A alone (threshold searched and scored on A), and the CV recorded is B's (threshold searched
        # on A), so neither the epoch choice nor the threshold search has seen the labels that score it
        fit = cross_fit_global(probs, y, self.kit.seed)
        threshold, f2_best = fit["threshold"], fit["f2_a_alone"]
        record = {"epoch": self.epoch + 1, "step": self.step, "loss": loss, "f2@0.5": f2_half, **fit}
        self.history.append(record)
        self.validated = self.epoch
        self.clock.record_validate(time.monotonic() - started)
        improved = f2_best > self.best
        if improved:
            self.best, self.best_epoch = f2_best, self.epoch + 1
        if self.dist.main:
            self.log(f"[kpack] epoch {self.epoch + 1}/{self.kit.epochs} valid loss {loss:.4f} "
                     f"{METRIC}@0.5 {f2_half:.4f} {METRIC} {fit['f2']:.4f} cross-fitted, "
                     f"{fit['f2_in_sample']:.4f} in-sample (threshold {threshold:.2f})")
            if improved:
                self._write_model("best.pt", self.epoch + 1)
                atomic.save_npy(self.working / "oof.npy", probs)
                rows = "".join(f"{i},{' '.join(self.labels.decode(t))}\n" for i, t in zip(self.valid_ids, y))
                atomic.write_text(self.working / "oof.csv", "id,attribute_ids\n" + rows)
                self.written |= {"best.pt", "oof.npy", "oof.csv"}
            self._write_metrics()

    def _write_model(self, name: str, epoch: int) -> None:
        """`epoch`: the epochs the weights have trained (1 after the first)."""
        weights = (self.ema.module if self.ema else self.model).backbone.state_dict()
        checkpoint.save_model(self.working / name, weights, {
            "kit": settings.to_dict(self.kit), "labels": self.labels.to_json(), "epoch": epoch,
            "step": self.step, "metric": self.history[-1] if self.history else None})
        self.written.add(name)

    def _best_record(self) -> tuple[Optional[dict], Optional[float]]:
        """The chosen epoch's history record and the CV recorded for it (half B: unseen by the epoch choice)."""
        best = next((h for h in self.history if h["epoch"] == self.best_epoch), None)
        return best, best.get("f2_b", best.get("f2")) if best else None

    def _write_metrics(self) -> None:
        best, cv = self._best_record()
        atomic.write_text(self.working / "metrics.json", json.dumps(
            {"cv_score": cv, "cv_score_in_sample": best.get("f2_in_sample") if best else None, "cv_kind": CV_KIND,
             "beta": BETA, "average": AVERAGE,  # every "f2" key below is this F-beta (a report reads it)
             "best": best, "last": self.history[-1] if self.history else None, "history": self.history},
            indent=1))
        self.written.add("metrics.json")

    def train(self) -> dict:
        """Train until done or until the clock says stop; always leaves a checkpoint and state.json."""
        kit, stopped = self.kit, None
        self.loop_started = self.clock.elapsed()
        if self.dist.main:
            atomic.write_text(self.working / "kit.json", json.dumps(settings.to_dict(kit), indent=1))
            atomic.write_text(self.working / "classes.json", json.dumps(self.labels.to_json()))
            self.written |= {"kit.json", "classes.json"}
        if self.epoch < kit.epochs and self.dist.any(self.clock.should_stop(self.ckpt_bytes))[0]:
            return self.finish("clock")  # no time for even one step: the checkpoint found is carried over
        while self.epoch < kit.epochs and stopped is None:
            if self.batch < self.batches_per_epoch and not self.train_epoch_part():
                stopped = "clock"
                break
            if self.validated < self.epoch and len(self.valid_idx):
                if self.dist.any(not self.clock.can_validate(self.ckpt_bytes))[0]:
                    stopped = "clock"
                    break
                self.validate()
            self.epoch, self.batch = self.epoch + 1, 0
            if self.epoch < kit.epochs:
                stop, due = self.dist.any(self.clock.should_stop(self.ckpt_bytes), self._checkpoint_due())
                if stop:
                    stopped = "clock"
                elif due:
                    self.save()
        self.save()
        return self.finish(stopped or "done")

    def finish(self, stopped: str) -> dict:
        done = stopped == "done"
        clock = self.clock
        summary = {
            "done": done, "stopped_by": stopped, "step": self.step, "total_steps": self.total_steps,
            "epoch": self.epoch, "epochs": self.kit.epochs, "batch": self.batch,
            "best_metric": self.best if self.best > -math.inf else None, "best_epoch": self.best_epoch,
            "cv_score": self._best_record()[1],  # best_metric is half A's F2, which chose the epoch
            "training_hash": self.hash, "world": self.dist.world,
            "session": {"budget_s": clock.budget, "elapsed_s": clock.elapsed(), "loop_started_s": self.loop_started,
                        "started_from": clock.started_from, "output_save_s": clock.output_save_seconds(),
                        "train_step_s": clock.step_total, "validate_s": clock.validate_total, "steps": clock.steps,
                        "checkpoint_save_s": clock.save_total,
                        "resumed_from": str(self.resumed_from) if self.resumed_from else None},
        }
        self._stop_workers()
        if self.dist.main:
            if done:
                self._write_model("model.pt", self.epoch)  # the loop has moved past its last epoch
            self._carry_over()
            atomic.write_text(self.working / "state.json", json.dumps(summary, indent=1))
        self.dist.barrier()
        if self.dist.main:
            why = ("training done" if done else "stopped at the session's step limit (kit.session.max_steps)"
                   if clock.max_steps and clock.steps >= clock.max_steps else "stopped before the session limit")
            self.log(f"[kpack] {why}: step {self.step}/"
                     f"{self.total_steps}, epoch {self.epoch}/{self.kit.epochs}"
                     + (f", CV {METRIC} {summary['cv_score']:.4f} (epoch {self.best_epoch}, half B of the "
                        "validation fold)" if summary["cv_score"] is not None else ""))
        return summary

    def _stop_workers(self) -> None:
        """End the loaders' worker processes now, not whenever the interpreter gets round to it."""
        for loader in (self.train_loader, self.valid_loader):
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            loader._iterator = None

    def _carry_source(self) -> Optional[Path]:
        """The folder earlier sessions' files are carried over from (None: working/ itself, or a fresh start)."""
        if self.resumed_from is None or self.resumed_from.parent.resolve() == self.working.resolve():
            return None
        return self.resumed_from.parent

    def _carry_bytes(self) -> int:
        source = self._carry_source()
        return sum((source / n).stat().st_size for n in CARRIED if (source / n).is_file()) if source else 0

    def _carry_over(self) -> None:
        """Copy what earlier sessions wrote and this one did not, from the resumed checkpoint's folder;
        the checkpoint itself too when this session saved none (it stopped before its first step)."""
        source = self._carry_source()
        if source is None:
            return
        copies = {name: source / name for name in CARRIED}
        copies[checkpoint.NAME] = self.resumed_from  # the valid one, whatever its name
        for name, path in copies.items():
            if name not in self.written and path.is_file():
                atomic.copy(path, self.working / name)


class _Subset:
    """The rows `idx` of an ImageCache, indexed 0..len(idx)-1."""

    def __init__(self, cache: data.ImageCache, idx: np.ndarray):
        self.cache, self.idx = cache, idx

    def __getitem__(self, i: int) -> np.ndarray:
        return self.cache[int(self.idx[i])]


def run(kit: KitSettings, config: Optional[dict], working: Path, clock, log: Callable[[str], None] = print,
        search: Optional[list[Path]] = None) -> dict:
    """Train (or go on training) and return the state summary (also written to working/state.json)."""
    return Run(kit, config, working, clock, log, search).train()
