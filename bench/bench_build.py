"""Single-file kernel build: time and bytes for the real kernel_src, beside a naive base64-of-a-zip single file.

For each kernel kind in kpack.yaml, the repo's kernel_src is copied into a temporary project (a stub entry
stands in for an entry that does not exist yet) and built KPACK_BENCH_REPEAT times (default 5); the median
build time is reported with the script's bytes, how many files travel as readable text, and its gzip size.
The baseline packs the same files into a deflated zip (fixed timestamps), base64-encodes it into one script
and imports it with zipimport from a temp file: smaller, but nothing on Kaggle's code page can be read, and
tracebacks name a temp path. Startup is `python -I -S script` until a no-op main(config) returns.

    .venv/bin/python bench/bench_build.py
"""
from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The bench builds without the datasets section, so timm and albumentations resolve to no wheel: warn, not refuse.
os.environ.setdefault("KPACK_IMPORT_CHECK", "warn")
sys.path.insert(0, str(REPO))

from packager import inline  # noqa: E402
from packager.build import build_kernel  # noqa: E402
from packager.config import KERNEL_KINDS, load_config, parse_config  # noqa: E402

REPEAT = int(os.environ.get("KPACK_BENCH_REPEAT", 5))

BASELINE_STUB = '''import base64, json, os, sys, tempfile, traceback, zipimport
_ZIP = """{zip}"""
CONFIG = json.loads({config!r})
fd, path = tempfile.mkstemp(suffix=".zip")
os.write(fd, base64.b64decode(_ZIP)); os.close(fd)
sys.path.insert(0, path)
try:
    import kpack_runtime as rt
    rt.bootstrap(CONFIG)
    __import__({entry!r}, fromlist=["main"]).main(CONFIG)
except Exception:
    traceback.print_exc(); sys.exit(1)
'''


def baseline(bundle: inline.Bundle, config: dict, entry_module: str) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for file in bundle.files:
            info = zipfile.ZipInfo(file.path, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, file.data)
    encoded = base64.b64encode(buf.getvalue()).decode()
    wrapped = "\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))
    return BASELINE_STUB.format(zip=wrapped, config=json.dumps(config, sort_keys=True), entry=entry_module)


def gz(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def median_time(fn, repeat: int = REPEAT) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def startup(script: Path, cwd: Path) -> float:
    def once():
        done = subprocess.run([sys.executable, "-I", "-S", str(script)], cwd=cwd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
    once()  # warm the OS file cache
    return median_time(once)[0]


def project(tmp: Path, kind: str, raw: dict) -> tuple[Path, object, bool]:
    """A temporary copy of the repo's kernel_src; a stub entry when the configured one is missing.
    The datasets section is dropped so the startup run needs no wheels or weights mounted."""
    root = tmp / kind
    shutil.copytree(REPO / "kernel_src", root / "kernel_src", ignore=shutil.ignore_patterns("__pycache__"))
    entry = raw["kernels"][kind]["entry"]
    stub = not (root / entry).is_file()
    data = json.loads(json.dumps(raw))
    data.pop("datasets", None)
    if stub:
        (root / "kernel_src" / "_bench_entry.py").write_text("def main(config):\n    pass\n")
        data["kernels"][kind]["entry"] = "kernel_src/_bench_entry.py"
    return root, parse_config(data), stub


def no_op_entry(root: Path, cfg, kind: str):
    """The same bundle with a no-op entry, so startup measures the loader and not the training kit."""
    (root / "kernel_src" / "_bench_noop.py").write_text("def main(config):\n    pass\n")
    data = cfg.model_dump(mode="json")
    data["kernels"][kind]["entry"] = "kernel_src/_bench_noop.py"
    return parse_config(data)


def main() -> None:
    import yaml

    raw = yaml.safe_load((REPO / "kpack.yaml").read_text())
    load_config(REPO / "kpack.yaml")  # the real config must validate
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for kind in KERNEL_KINDS:
            if kind not in raw.get("kernels", {}):
                continue
            root, cfg, stub = project(tmp, kind, raw)
            out = tmp / f"out-{kind}"
            def one_build():
                inline.encode.cache_clear()  # each CLI build is a fresh process
                return build_kernel(cfg, kind, root=root, out_dir=out)

            t_build, built = median_time(one_build)
            script = built.script.read_bytes()
            bundle = inline.collect(root, [("kernel_src/", root / "kernel_src")])
            methods = [inline.encode(f.data)[0] for f in bundle.files]
            config = cfg.model_dump(mode="json") | {"kernel": kind}
            entry_module = ".".join(Path(cfg.kernel(kind).entry).with_suffix("").parts)
            t_base, base = median_time(lambda: baseline(bundle, config, entry_module))
            base_bytes = base.encode()

            noop = no_op_entry(root, cfg, kind)
            noop_built = build_kernel(noop, kind, root=root, out_dir=tmp / f"noop-{kind}")
            bundle_noop = inline.collect(root, [("kernel_src/", root / "kernel_src")])
            base_script = tmp / f"baseline-{kind}.py"
            base_script.write_text(baseline(bundle_noop, noop.model_dump(mode="json") | {"kernel": kind},
                                            "kernel_src._bench_noop"))
            work = tmp / "work"
            work.mkdir(exist_ok=True)
            s_kpack, s_base = startup(noop_built.script, work), startup(base_script, work)
            source_bytes = sum(len(f.data) for f in bundle.files)
            rows.append((kind + (" (stub entry)" if stub else ""), len(bundle.files), source_bytes,
                         methods.count("text"), methods.count("b64"), t_build, len(script), gz(script),
                         t_base, len(base_bytes), gz(base_bytes), s_kpack, s_base))

    print(f"single-file kernel build (median of {REPEAT}; Python {sys.version.split()[0]})")
    head = ("kernel", "files", "src B", "text/b64", "build ms", "script B", "gz B",
            "base ms", "base B", "base gz B", "B ratio", "gz ratio", "start ms", "base start ms")
    print(" | ".join(head))
    for (kind, nfiles, src, ntext, nb64, tb, sb, sgz, tbase, bb, bgz, sk, sbase) in rows:
        print(" | ".join(str(x) for x in (
            kind, nfiles, f"{src:,}", f"{ntext}/{nb64}", f"{tb * 1000:.1f}", f"{sb:,}", f"{sgz:,}",
            f"{tbase * 1000:.1f}", f"{bb:,}", f"{bgz:,}", f"{sb / bb:.2f}x", f"{sgz / bgz:.2f}x",
            f"{sk * 1000:.0f}", f"{sbase * 1000:.0f}")))
    print("B ratio: kpack script bytes / baseline bytes; gz ratio: the same after gzip -9.")


if __name__ == "__main__":
    main()
