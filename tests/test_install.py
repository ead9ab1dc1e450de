"""kpack as an installed tool: the core (`pip install kpack`, no extras) needs no torch, and the wheel installs
three top-level packages of kpack's own names (no kernel_src, no tests) with the data files it reads at run time."""
from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What only local kernels and the kit need (extra `local`): the host side must run without any of them.
HEAVY = ("torch", "torchvision", "timm", "albumentations", "pandas", "sklearn")

BLOCKED_CLI = f"""
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError("the core tool imported " + name)

sys.meta_path.insert(0, Blocked())
from packager.cli import main
sys.argv = ["kpack", *sys.argv[1:]]
main()
"""


def kpack_without_heavy(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "KAGGLE_"))}
    return subprocess.run([sys.executable, "-c", BLOCKED_CLI, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)


def test_help_build_and_check_run_with_no_torch_installed(tmp_path):
    (tmp_path / "kernel_src").mkdir()
    (tmp_path / "kernel_src" / "__init__.py").write_text("")
    (tmp_path / "kernel_src" / "train.py").write_text("def main(config):\n    print('ran')\n")
    (tmp_path / "kpack.yaml").write_text("competition: mini-comp\nkaggle_user: alice\nbackend: local\n"
                                         "kernels:\n  train: {entry: kernel_src/train.py, accelerator: 'None'}\n")
    for args in (["--help"], ["build", "train"], ["check", "train"]):
        done = kpack_without_heavy(tmp_path, *args)
        assert done.returncode == 0, f"kpack {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        assert "the core tool imported" not in done.stderr
    assert (tmp_path / "build" / "kernels" / "mini-comp-train" / "mini-comp-train.py").is_file()
    import importlib.metadata

    version = kpack_without_heavy(tmp_path, "--version")
    assert version.returncode == 0 and version.stdout == f"kpack {importlib.metadata.version('kpack')}\n"


def test_every_packager_module_imports_without_the_local_extra():
    code = ("import importlib, pkgutil, sys\nimport packager\n"
            "names = [m.name for m in pkgutil.walk_packages(packager.__path__, 'packager.')]\n"
            "for name in names:\n    importlib.import_module(name)\n"
            f"print(len(names), sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    count, heavy = done.stdout.split(" ", 1)
    assert int(count) > 20 and heavy.strip() == "[]", done.stdout


@pytest.mark.slow
def test_the_wheel_holds_kpacks_packages_and_data_only(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("kpack-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"packager", "kpack_runtime", "kpack_kit"}
    for needed in ("packager/cli.py", "packager/localkaggle/local-image-excludes.txt", "packager/templates/kpack.yaml",
                   "kpack_runtime/__init__.py", "kpack_runtime/sealed.py", "kpack_kit/train.py",
                   "kpack_kit/settings.py"):
        assert needed in names, needed
    meta = email.parser.Parser().parsestr(zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    core = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert not [r for r in core if r.split(">")[0].split("=")[0].split("<")[0].strip().lower() in
                ("torch", "torchvision", "timm", "albumentations", "pandas", "scikit-learn")], core
    assert "kaggle==2.2.4" in core
    assert "entry_points.txt" in "".join(names) and \
        "kpack = packager.cli:main" in zipfile.ZipFile(wheel).read(
            next(n for n in names if n.endswith("entry_points.txt"))).decode()
