"""kpack's single-file inliner beside stickytape (the best-known Python inliner), on the same scripts.

Two cases, each a plain script run from an "installed" site folder (sources plus compiled bytecode) as the
original, then packed by each tool and run with nothing installed (`python -I -S`, empty working directory):

- click: a click command driven by click.testing.CliRunner (a real third-party package, 17 modules);
- data: a small package reading its data files through `Path(__file__).parent` and importlib.resources.

Reported: build time (kpack: the whole `build_kernel`, with the import check and the __file__ scan;
stickytape: `stickytape.script` plus writing the file), and start-up overhead = packed run time - original run
time, per round (rounds interleave the three runs, so a load spike hits all three alike). The target: kpack's
overhead at most half of stickytape's in every round, every case passing. stickytape packs only .py files, so a
case that reads package data fails there; that is reported, not hidden. A third kpack variant writes every
packed package to disk at start-up (as stickytape does), to measure what materialising costs against writing
only the packages the build saw naming __file__.

    .venv/bin/python bench/bench_inline.py            # KPACK_BENCH_REPEAT rounds (default 10)
"""
from __future__ import annotations

import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import click  # noqa: E402
import stickytape  # noqa: E402

from packager import inline  # noqa: E402
from packager.build import build_kernel  # noqa: E402
from packager.config import parse_config  # noqa: E402

REPEAT = int(os.environ.get("KPACK_BENCH_REPEAT", 10))

CLICK_BODY = '''
import click
from click.testing import CliRunner


@click.command()
@click.option("--count", default=1, type=int, help="how many greetings")
@click.argument("name")
def hello(count, name):
    for _ in range(count):
        click.echo(f"hello {name}")


def run():
    runner = CliRunner()
    result = runner.invoke(hello, ["--count", "2", "world"])
    assert result.exit_code == 0, result.output
    shown = runner.invoke(hello, ["--help"])
    assert "how many greetings" in shown.output, shown.output
    print("ok", result.output.count("hello world"))
'''

DATA_BODY = '''
import datapkg


def run():
    assert datapkg.words() == ["alpha", "beta", "gamma"]
    assert datapkg.table() == {"a": 1, "b": 2}
    print("ok", len(datapkg.words()), len(datapkg.table()))
'''

DATAPKG = {
    "__init__.py": "import importlib.resources\nimport json\nfrom pathlib import Path\n\n"
                   "HERE = Path(__file__).parent\n\n\n"
                   "def words():\n    return (HERE / 'data' / 'words.txt').read_text().split()\n\n\n"
                   "def table():\n    return json.loads(importlib.resources.files(__name__).joinpath("
                   "'data/table.json').read_text())\n",
    "data/words.txt": "alpha beta gamma\n",
    "data/table.json": '{"a": 1, "b": 2}\n',
}


def median(values):
    return statistics.median(values)


def run_script(script: Path, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-I", "-S", str(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    return time.perf_counter() - start, done


def passed(done: subprocess.CompletedProcess) -> bool:
    return done.returncode == 0 and done.stdout.strip().splitlines()[-1:] and \
        done.stdout.strip().splitlines()[-1].startswith("ok")


def why(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}"


def setup(tmp: Path, name: str, body: str, package: str) -> dict:
    """site/ (the installed package, with bytecode), original.py, a kpack project packing the same package."""
    site = tmp / name / "site"
    if package == "click":
        shutil.copytree(Path(click.__file__).parent, site / "click", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        for rel, text in DATAPKG.items():
            (site / "datapkg" / rel).parent.mkdir(parents=True, exist_ok=True)
            (site / "datapkg" / rel).write_text(text)
    compileall.compile_dir(str(site), quiet=1)
    original = tmp / name / "original.py"
    original.write_text(f"import sys\nsys.path.insert(0, {str(site)!r})\n{body}\nrun()\n")
    plain = tmp / name / "plain.py"  # what stickytape reads: the same script, its imports found on add_python_paths
    plain.write_text(f"{body}\nrun()\n")

    proj = tmp / name / "proj"
    (proj / "kernel_src").mkdir(parents=True)
    (proj / "kernel_src" / "__init__.py").write_text("")
    (proj / "kernel_src" / "app.py").write_text(f"{body}\n\ndef main(config):\n    run()\n")
    cfg = parse_config({"competition": "bench-inline", "kaggle_user": "bench",
                        "kernels": {"train": {"entry": "kernel_src/app.py", "packages": [str(site / package)]}}})
    return {"site": site, "original": original, "plain": plain, "proj": proj, "cfg": cfg, "package": package}


def build_both(case: dict, out: Path) -> dict:
    kpack_times, sticky_times = [], []
    sticky_script = out / "stickytape.py"
    for _ in range(max(3, REPEAT // 2)):
        inline.encode.cache_clear()  # each CLI build is a fresh process
        start = time.perf_counter()
        built = build_kernel(case["cfg"], "train", root=case["proj"], out_dir=out / "kpack")
        kpack_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        sticky_script.write_text(stickytape.script(str(case["plain"]), add_python_paths=[str(case["site"])]))
        sticky_times.append(time.perf_counter() - start)
    eager = out / "kpack-eager.py"  # every packed package written to disk at start-up, for comparison
    text = built.script.read_text()
    roots = [r.name for r in inline.collect(case["proj"], [("k", case["proj"] / "kernel_src"),
                                                          ("p", case["site"] / case["package"])]).roots]
    extra = "".join(f"_kpack.on_disk({r!r})\n" for r in roots if f"_kpack.on_disk({r!r})" not in text)
    eager.write_text(text.replace("\n_kpack.install()\n", f"\n{extra}_kpack.install()\n", 1))
    return {"kpack": built.script, "stickytape": sticky_script, "eager": eager, "kpack_build": kpack_times,
            "sticky_build": sticky_times, "warnings": built.warnings}


def main() -> None:
    print(f"kpack inliner vs stickytape {stickytape_version()} (Python {sys.version.split()[0]}, "
          f"click {click.__version__}, {REPEAT} rounds)")
    failures = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        work = tmp / "work"
        work.mkdir()
        for name, body, package in (("click", CLICK_BODY, "click"), ("data", DATA_BODY, "datapkg")):
            case = setup(tmp, name, body, package)
            scripts = build_both(case, tmp / name / "out")
            times = {k: [] for k in ("original", "kpack", "stickytape", "eager")}
            status = {}
            for variant in times:  # a warm-up round: the OS file cache, bytecode of the original
                status[variant] = run_script(case["original"] if variant == "original" else scripts[variant], work)[1]
            for _ in range(REPEAT):
                for variant in times:
                    took, done = run_script(case["original"] if variant == "original" else scripts[variant], work)
                    times[variant].append(took)
                    status[variant] = done if not passed(done) else status[variant]
            ok = {v: passed(d) for v, d in status.items()}
            over = {v: [t - o for t, o in zip(times[v], times["original"])] for v in ("kpack", "stickytape", "eager")}
            print(f"\ncase {name}: original {median(times['original']) * 1000:.1f} ms (median)")
            kb, sb = scripts["kpack_build"], scripts["sticky_build"]
            print(f"  build: kpack {median(kb) * 1000:.1f} ms (first, nothing cached: {kb[0] * 1000:.1f}), "
                  f"stickytape {median(sb) * 1000:.1f} ms")
            for variant in ("kpack", "eager", "stickytape"):
                label = {"kpack": "kpack", "eager": "kpack, all packages on disk", "stickytape": "stickytape"}[variant]
                state = "pass" if ok[variant] else f"FAIL: {why(status[variant])}"
                print(f"  {label}: run {median(times[variant]) * 1000:.1f} ms, overhead median "
                      f"{median(over[variant]) * 1000:.1f} ms (min {min(over[variant]) * 1000:.1f}, max "
                      f"{max(over[variant]) * 1000:.1f}); {state}")
            if not ok["kpack"] or not ok["eager"]:
                failures.append(f"kpack fails the {name} case: {why(status['kpack'])}")
            if ok["stickytape"]:
                ratios = [k / s if s > 0 else float("inf") for k, s in zip(over["kpack"], over["stickytape"])]
                worst = max(ratios)
                print(f"  overhead ratio kpack/stickytape per round: median {median(ratios):.2f}, worst {worst:.2f} "
                      f"(target <= 0.50 in every round: {'met' if worst <= 0.5 else 'NOT met'})")
                if worst > 0.5:
                    failures.append(f"{name}: kpack's overhead was {worst:.2f}x stickytape's in one round")
            else:
                print("  overhead ratio: none (stickytape fails this case)")
    if failures:
        print("\n" + "\n".join(failures))
        raise SystemExit(1)


def stickytape_version() -> str:
    from importlib.metadata import version

    return version("stickytape")


if __name__ == "__main__":
    main()
