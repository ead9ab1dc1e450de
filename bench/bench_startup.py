"""Kernel start-up until the bundled dependencies are ready: kpack's site folder vs offline installs.

The default set (requirements-kernel.txt: timm, albumentations and what they pull in that the image lacks;
never torch) is built as a wheels dataset for the LOCAL target in each install mode, mounted under a fresh
fake Kaggle root per run (a new session: empty temp/), and started as the local Kaggle starts kernels:
`python -S` with only the image's site farm importable. Each run does `deps.activate(config)` (which also
checks every pinned version) and then `import timm, albumentations`.

    site (folder)  the site folder unpacked by the server (the local Kaggle unpacks uploaded zips): sys.path only
    site (zip)     site.zip extracted into temp/ first (where a server keeps the zip as it is)
    uv             uv (from its wheel in the dataset) installs the wheels offline into temp/
    pip            pip install --no-index --no-deps of the same wheels into temp/

"deps ready" is from process spawn to activate() returning (interpreter start included); "imported" adds
`import timm, albumentations` (mostly torch's own import; the site brings precompiled bytecode, the
installs compile on import), the best of two runs per mode, wall and CPU. Medians of KPACK_BENCH_REPEAT runs (default 3) of wall and CPU seconds (the
kernel process and what it spawns: CPU time is the steadier figure on a shared machine). Wheels come from
build/wheel-cache/ (downloaded once).

    .venv/bin/python bench/bench_startup.py
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from packager import wheels  # noqa: E402
from packager.config import parse_config  # noqa: E402
from packager.localkaggle.image import image_site  # noqa: E402

REPEAT = int(os.environ.get("KPACK_BENCH_REPEAT", 3))
OWNER, SLUG = "kpack", "bench-startup-wheels"

CHILD = """
import sys, time
from kpack_runtime import deps
info = deps.activate({config!r})
ready = time.time()
imported = cpu = None
if {do_import!r}:
    cpu = time.process_time()
    import timm, albumentations
    assert timm.__version__ == "1.0.31" and albumentations.__version__ == "2.0.8"
    imported, cpu = time.time(), time.process_time() - cpu
print("BENCH", ready, imported, cpu, info["mode"])
"""


def build(project: Path, mode: str) -> Path:
    cfg = parse_config({"competition": "digits-multilabel", "kaggle_user": OWNER, "backend": "local",
                        "kernels": {"train": {"entry": "kernel_src/train.py"}},
                        "datasets": {"wheels": {"slug": SLUG, "install": mode}}})
    out = project / "build" / mode
    built = wheels.build_wheels_dataset(cfg, out, root=project,
                                        cache_dir=REPO / wheels.CACHE_DIR / wheels.local_target().key)
    return built.path


def kernel_src_copy(where: Path) -> Path:
    shutil.copytree(REPO / "kpack_runtime", where / "kpack_runtime", ignore=shutil.ignore_patterns("__pycache__"))
    return where


def mount(dataset: Path, kaggle: Path, unpack: bool) -> None:
    dest = kaggle / "input" / "datasets" / OWNER / SLUG
    dest.parent.mkdir(parents=True)
    shutil.copytree(dataset, dest)
    if unpack and (dest / "site.zip").is_file():  # as the local Kaggle stores an uploaded zip
        with zipfile.ZipFile(dest / "site.zip") as zf:
            zf.extractall(dest / "site")
        (dest / "site.zip").unlink()


def run_once(dataset: Path, unpack: bool, ksrc: Path, farm: Path, scratch: Path, do_import: bool):
    kaggle = Path(tempfile.mkdtemp(dir=scratch, prefix="kaggle-"))
    mount(dataset, kaggle, unpack)
    (kaggle / "working").mkdir()
    config = {"kaggle_user": OWNER, "datasets": {"wheels": {"slug": SLUG}}}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(kaggle), "KPACK_KAGGLE_ROOT": str(kaggle),
           "PYTHONPATH": os.pathsep.join([str(farm), str(ksrc)])}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    done = subprocess.run([sys.executable, "-S", "-c", CHILD.format(config=config, do_import=do_import)],
                          capture_output=True, text=True, env=env, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"bench kernel failed:\n{done.stdout}\n{done.stderr}")
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("BENCH"))
    _, ready, imported, import_cpu, _mode = line.split()
    shutil.rmtree(kaggle, ignore_errors=True)
    if imported == "None":
        return float(ready) - start, None, cpu
    return float(ready) - start, (float(imported) - start, float(import_cpu)), cpu


def main() -> None:
    farm = image_site()
    with tempfile.TemporaryDirectory(prefix="kpack-bench-startup-") as tmp:
        tmp = Path(tmp)
        project = tmp / "project"
        project.mkdir()
        shutil.copy(REPO / "requirements-kernel.txt", project / "requirements-kernel.txt")
        t = time.perf_counter()
        datasets = {mode: build(project, mode) for mode in ("site", "uv", "pip")}
        build_s = time.perf_counter() - t
        manifest = json.loads((datasets["site"] / wheels.MANIFEST).read_text())
        shipped = manifest["shipped"]
        size = {m: sum(p.stat().st_size for p in d.iterdir() if p.name != "dataset-metadata.json")
                for m, d in datasets.items()}
        ksrc = kernel_src_copy(tmp / "ksrc")
        variants = [("site (folder)", "site", True), ("site (zip)", "site", False), ("uv", "uv", False),
                    ("pip", "pip", False)]
        results = {}
        for label, mode, unpack in variants:
            ready, cpu, imports = [], [], []
            imports.append(run_once(datasets[mode], unpack, ksrc, farm, tmp, do_import=True)[1])  # + warms caches
            for i in range(REPEAT):
                r, _, c = run_once(datasets[mode], unpack, ksrc, farm, tmp, do_import=False)
                ready.append(r)
                cpu.append(c)
            imports.append(run_once(datasets[mode], unpack, ksrc, farm, tmp, do_import=True)[1])
            imported = min(w for w, _ in imports)
            import_cpu = min(c for _, c in imports)
            results[label] = (statistics.median(ready), statistics.median(cpu), imported, import_cpu)
            print(f"  {label:14s} deps ready {statistics.median(ready):6.2f}s wall, {statistics.median(cpu):5.2f}s "
                  f"CPU (runs: {', '.join(f'{x:.2f}' for x in ready)}); until timm+albumentations imported "
                  f"{imported:6.2f}s wall, import {import_cpu:5.2f}s CPU", flush=True)

    print()
    print(f"kernel start-up with {len(shipped)} shipped packages ({', '.join(sorted(shipped))}); "
          f"local target cp{sys.version_info.major}{sys.version_info.minor}; datasets built in {build_s:.1f}s; "
          f"dataset bytes: site {size['site'] / 1e6:.1f} MB, uv {size['uv'] / 1e6:.1f} MB, pip {size['pip'] / 1e6:.1f} MB")
    base, base_cpu = results["site (folder)"][:2]
    print(f"{'mode':14s} {'deps ready':>11s} {'x site':>7s} {'CPU':>7s} {'x site':>7s} {'imported':>9s} "
          f"{'import CPU':>11s}")
    for label, (ready, cpu, imported, import_cpu) in results.items():
        print(f"{label:14s} {ready:10.2f}s {ready / base:6.1f}x {cpu:6.2f}s {cpu / base_cpu:6.1f}x {imported:8.2f}s "
              f"{import_cpu:10.2f}s")
    pip_s, uv_s, zip_s = results["pip"][0], results["uv"][0], results["site (zip)"][0]
    print(f"site folder: deps ready in {base:.2f}s, {pip_s / base:.0f}x faster than pip ({pip_s:.2f}s), "
          f"{uv_s / base:.0f}x faster than uv ({uv_s:.2f}s); site.zip extracted first: {zip_s:.2f}s")


if __name__ == "__main__":
    main()
