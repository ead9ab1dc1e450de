"""Training-loop throughput, the kit against a timm train.py-style loop; and work lost at a session boundary.

1. Images per second of the kit's loop (kernel_src.engine: uint8 batches from OpenCV + albumentations,
   normalisation on the device, channels_last, fp16 autocast + GradScaler on CUDA, fused/foreach AdamW,
   pure-function lr) against the baseline: timm's own train.py loop as timm 1.0 writes it, rebuilt from
   timm's public pieces because train.py does not ship in the wheel: timm.data.create_loader (PIL +
   torchvision transforms, timm's prefetcher on CUDA), timm.optim.create_optimizer_v2, timm.scheduler
   step_update per optimizer step, timm.loss.BinaryCrossEntropy (dense multi-label targets), and
   train_one_epoch's body (loss.item() every step, zero_grad, optional NativeScaler with --amp). Same
   model, data, batch size, workers, threads, steps; similar augmentation (--aug medium: kit "medium",
   random resized crop, flip, affine, brightness/contrast, against timm's defaults, random resized crop,
   flip, colour jitter 0.4; --aug light: kit "light", resize and flip, against timm without jitter).
   Both train without validation (fold -1) for the same epochs; runs alternate, the median is reported.

2. Work lost at a session boundary: `python -m kernel_src.train` runs under KPACK_SESSION_SECONDS=budget
   (a long training, so the clock stops it), then a second session resumes. Lost share =
   (budget - time spent in training steps) / budget, split into start-up (imports, data, model,
   checkpoint load), the stop tail (unused time + final save) and saves/validation; also extrapolated to
   Kaggle's 12 h session (fixed costs per boundary / 43200 s).

    .venv/bin/python bench/bench_train.py                    # CPU, the defaults below
    .venv/bin/python bench/bench_train.py --device cuda --model resnet18 --size 128 --n-train 2000 --batch 128
    .venv/bin/python bench/bench_train.py --device cuda --decode device   # JPEGs decoded on the GPU (nvJPEG)
    .venv/bin/python bench/bench_train.py --device cuda --images jpg      # the same JPEGs, decoded by the workers
    .venv/bin/python bench/bench_train.py --device cuda --decode device --size 128 --source-size 384 --batch 128

--decode device (kit.data.decode, kernel_src/gpudecode.py) trains on the demo's images re-encoded as JPEG
(quality 90) with the kit's "light" pipeline; --images jpg gives the workers' path (and the baseline) the same files.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kernel_src import clock, data, engine, settings  # noqa: E402


def to_jpeg(root: Path) -> None:
    """The demo's PNGs re-encoded as JPEG (quality 90), in place."""
    from PIL import Image

    for png in list(root.glob("*/*.png")):
        Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=90)
        png.unlink()


def kit_config(root: Path, a) -> dict:
    return {
        "seed": 0, "log_every_steps": 10**6, "amp": "auto" if a.amp else "off",
        "data": {"root": str(root), "image_size": a.size, "fold": -1, "num_workers": a.workers,
                 "decode": a.decode, "image_ext": f".{a.images}"},
        "model": {"name": a.model, "channels_last": "auto" if a.channels_last is None else a.channels_last},
        "augment": {"train": a.aug},
        "optim": {"batch_size": a.batch, "lr": 1e-3, "weight_decay": 1e-4},
        "schedule": {"name": "cosine", "warmup_steps": 5},
        "stages": [{"epochs": a.epochs, "loss": "bce"}],
        "session": {"checkpoint_every_minutes": 10**6},
    }


def run_kit(root: Path, a, out: Path) -> tuple[float, int]:
    """Seconds for the whole training loop (after model and data setup), images trained."""
    kit = settings.parse(kit_config(root, a))
    run = engine.Run(kit, None, out, clock.FixedSteps(10**9), log=lambda s: None)
    started = time.perf_counter()
    run.train()
    if a.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, run.step * a.batch


class CsvImages(torch.utils.data.Dataset):
    """What timm's ImageDataset does for a folder: PIL open + convert('RGB'), then self.transform."""

    def __init__(self, paths, targets):
        self.paths, self.targets, self.transform = paths, targets, None

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image
        with open(self.paths[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, torch.from_numpy(self.targets[i].astype(np.float32))


def run_timm(root: Path, a) -> tuple[float, int]:
    """timm train.py's setup and train_one_epoch, for the same steps; seconds and images."""
    import timm
    from timm.data import create_loader, resolve_data_config
    from timm.loss import BinaryCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import NativeScaler

    torch.manual_seed(0)
    table = data.read_train(settings.parse({"data": {"image_ext": f".{a.images}"}}).data, root)
    device = torch.device(a.device)
    model = timm.create_model(a.model, pretrained=False, num_classes=len(table.labels)).to(device)
    if a.timm_channels_last:
        model = model.to(memory_format=torch.channels_last)
    data_config = resolve_data_config({"input_size": (3, a.size, a.size)}, model=model)
    dataset = CsvImages(table.paths, table.targets)
    prefetcher = device.type == "cuda"
    loader = create_loader(dataset, input_size=data_config["input_size"], batch_size=a.batch, is_training=True,
                           use_prefetcher=prefetcher, device=device, interpolation=data_config["interpolation"],
                           mean=data_config["mean"], std=data_config["std"], num_workers=a.workers,
                           color_jitter=0.4 if a.aug == "medium" else 0.0,
                           pin_memory=prefetcher, persistent_workers=True)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=1e-4)
    steps_per_epoch = len(table.paths) // a.batch
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=a.epochs, warmup_epochs=0,
                                       step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    loss_fn = BinaryCrossEntropy(smoothing=0.0).to(device)
    amp = a.amp and device.type == "cuda"
    amp_autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if amp else None
    loss_scaler = NativeScaler() if amp else None
    model.train()
    num_updates, images = 0, 0
    started = time.perf_counter()
    for epoch in range(a.epochs):
        for batch_idx, (input, target) in enumerate(loader):
            if batch_idx >= steps_per_epoch:  # the kit drops the last partial batch; so does this
                break
            if not prefetcher:
                input, target = input.to(device), target.to(device)
            if a.timm_channels_last:
                input = input.contiguous(memory_format=torch.channels_last)
            if amp_autocast:
                with amp_autocast():
                    output = model(input)
                    loss = loss_fn(output, target)
            else:
                output = model(input)
                loss = loss_fn(output, target)
            losses = loss.item()  # train.py: losses_m.update(loss.item() * accum_steps, input.size(0))
            if loss_scaler is not None:
                loss_scaler(loss, optimizer, parameters=model.parameters())
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad()
            num_updates += 1
            images += input.size(0)
            scheduler.step_update(num_updates=num_updates, metric=losses)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, images


def throughput(root: Path, a, work: Path) -> dict:
    """Kit and baseline run back to back, in alternating order; on a shared machine the load drifts, so the
    figure is the median of each adjacent pair's ratio (the rates are medians too)."""
    kit_rates, timm_rates, ratios = [], [], []
    for r in range(a.repeats):
        rates = {}
        for name in (("kit", "timm") if r % 2 == 0 else ("timm", "kit")):
            seconds, images = run_kit(root, a, work / f"kit{r}") if name == "kit" else run_timm(root, a)
            rates[name] = images / seconds
            print(f"  {name:4s} run {r + 1}: {rates[name]:8.1f} img/s ({images} images, {seconds:.1f} s)", flush=True)
        kit_rates.append(rates["kit"])
        timm_rates.append(rates["timm"])
        ratios.append(rates["kit"] / rates["timm"])
    return {"kit_img_s": round(statistics.median(kit_rates), 1), "timm_img_s": round(statistics.median(timm_rates), 1),
            "speedup": round(statistics.median(ratios), 3), "pair_ratios": [round(x, 3) for x in ratios]}


def session_boundary(root: Path, a, work: Path) -> dict:
    """Two real sessions; the first stopped by the clock at `budget` seconds, the second resumes."""
    cfg = kit_config(root, a)
    cfg["data"]["fold"] = 0
    cfg["stages"] = [{"epochs": 10**3, "loss": "bce"}]  # more than any budget here
    cfg["session"] = {"margin_seconds": a.margin}
    import yaml
    config_file = work / "kpack.yaml"
    config_file.write_text(yaml.safe_dump({"competition": "bench", "kit": cfg}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "KPACK_SESSION_SECONDS": str(a.budget)}
    env1 = {**env, "KPACK_KAGGLE_ROOT": str(work / "s1")}
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "kernel_src.train", str(config_file)], env=env1, check=True,
                   capture_output=True, cwd=REPO)
    wall1 = time.monotonic() - started
    s1 = json.loads((work / "s1" / "working" / "state.json").read_text())["session"]
    mounted = work / "s2" / "input" / "notebooks" / "me" / "bench-train"
    mounted.parent.mkdir(parents=True)
    (work / "s1" / "working").rename(mounted)
    env2 = {**env, "KPACK_KAGGLE_ROOT": str(work / "s2"), "KPACK_SESSION_SECONDS": str(min(a.budget, 60))}
    subprocess.run([sys.executable, "-m", "kernel_src.train", str(config_file)], env=env2, check=True,
                   capture_output=True, cwd=REPO)
    s2 = json.loads((work / "s2" / "working" / "state.json").read_text())["session"]
    useful = s1["train_step_s"] + s1["validate_s"]  # training steps and the epochs' validations
    tail = a.budget - s1["elapsed_s"]
    saves = s1["elapsed_s"] - s1["loop_started_s"] - useful  # periodic saves, loader restarts
    per_boundary = tail + s2["loop_started_s"]  # what one session boundary costs: the stop, the next start
    return {
        "budget_s": a.budget, "process_wall_s": round(wall1, 2),
        "lost_share": round((a.budget - useful) / a.budget, 4),
        "startup_s": round(s1["loop_started_s"], 2), "stop_tail_s": round(tail, 2),
        "saves_and_restarts_s": round(saves, 2), "validate_s": round(s1["validate_s"], 2),
        "resume_startup_s": round(s2["loop_started_s"], 2),
        "per_boundary_s": round(per_boundary, 2), "per_boundary_share_of_12h": round(per_boundary / 43200, 5),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--source-size", type=int, default=0,
                   help="side of the generated images (0: --size); larger ones give the decode and the resize work")
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="the kit's channels_last (default: the kit's own choice, on for CUDA only)")
    p.add_argument("--timm-channels-last", action=argparse.BooleanOptionalAction, default=False,
                   help="give the baseline channels_last too (train.py's --channels-last; off by default there)")
    p.add_argument("--aug", choices=("medium", "light"), default=None,
                   help="medium: kit 'medium' vs timm's defaults (colour jitter 0.4); light: kit 'light' (resize, "
                        "flip) vs timm without colour jitter (random resized crop, flip). Default: medium, "
                        "light with --decode device (the pipelines it offers are none and light)")
    p.add_argument("--decode", choices=("workers", "device"), default="workers",
                   help="kit.data.decode: workers (OpenCV + albumentations) or device (decode_jpeg on --device)")
    p.add_argument("--images", choices=("png", "jpg"), default=None,
                   help="the demo's image files (default png; jpg with --decode device, which reads JPEGs only)")
    p.add_argument("--budget", type=float, default=120.0, help="session seconds for the boundary measurement")
    p.add_argument("--margin", type=float, default=1.0)
    p.add_argument("--skip-boundary", action="store_true")
    p.add_argument("--json", help="also write the figures here")
    a = p.parse_args()
    a.aug = a.aug or ("light" if a.decode == "device" else "medium")
    a.images = a.images or ("jpg" if a.decode == "device" else "png")
    if a.decode == "device" and (a.aug != "light" or a.images != "jpg"):
        p.error("--decode device trains with --aug light on --images jpg")
    if a.threads:
        torch.set_num_threads(a.threads)
    from packager import democomp

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["KPACK_KAGGLE_ROOT"] = str(work / "kaggle")
        root = democomp.generate(work / "demo", seed=0, n_train=a.n_train, n_test=8,
                                 image_size=a.source_size or a.size).data_dir
        if a.images == "jpg":
            to_jpeg(root)
        device = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU x{os.cpu_count()}"
        print(f"training loop: {a.model} {a.size}px batch {a.batch}, {a.n_train} images x {a.epochs} epochs, "
              f"{a.workers} workers, {torch.get_num_threads()} threads, aug {a.aug}, decode {a.decode} ({a.images}), "
              f"{device}, amp={a.amp and a.device == 'cuda'}, "
              f"kit channels_last={'auto' if a.channels_last is None else a.channels_last} "
              f"(baseline: {a.timm_channels_last})", flush=True)
        figures = {"device": device, "model": a.model, "size": a.size, "batch": a.batch, "decode": a.decode,
                   "images": a.images,
                   "throughput": throughput(root, a, work)}
        t = figures["throughput"]
        print(f"kit {t['kit_img_s']} img/s, timm-style {t['timm_img_s']} img/s: {t['speedup']}x", flush=True)
        if not a.skip_boundary:
            b = figures["boundary"] = session_boundary(root, a, work)
            print(f"session boundary, {a.budget:.0f} s budget: {100 * b['lost_share']:.2f}% of the budget not spent "
                  f"in training steps or validation (start-up {b['startup_s']} s, saves {b['saves_and_restarts_s']} s, "
                  f"stop tail {b['stop_tail_s']} s); one boundary costs {b['per_boundary_s']} s = "
                  f"{100 * b['per_boundary_share_of_12h']:.3f}% of a 12 h session", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
