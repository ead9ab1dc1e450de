"""Pre-flight checks (packager/preflight.py): the kit's settings and the weights files it names are checked on
this machine before anything is built or uploaded; `kpack check KIND` runs every check and prints one line each."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from packager import preflight
from packager.build import build_kernel
from packager.config import load_config
from packager.errors import UserError

REPO = Path(__file__).resolve().parents[1]
ENTRY = "def main(config):\n    print('trained')\n"
BASE = """competition: mini-comp
kaggle_user: alice
kernels:
  train: {entry: kernel_src/train.py, accelerator: 'None'}
  infer: {entry: kernel_src/train.py, accelerator: 'None'}
datasets:
  weights: {slug: mini-comp-weights, dir: models}
kit:
  model: {name: resnet18%s}
  optim: {lr: %s}
"""


def project(tmp_path: Path, model: str = "", lr: str = "1.0e-3", extra: str = "", settings: bool = True) -> Path:
    """A project using the kit (kernel_src/settings.py is the repository's) with models/resnet18.a1_in1k.pth."""
    root = tmp_path / "proj"
    (root / "kernel_src").mkdir(parents=True)
    (root / "kernel_src" / "__init__.py").write_text("")
    (root / "kernel_src" / "train.py").write_text(ENTRY)
    if settings:
        shutil.copy(REPO / "kernel_src" / "settings.py", root / "kernel_src" / "settings.py")
    (root / "models").mkdir()
    (root / "models" / "resnet18.a1_in1k.pth").write_bytes(b"weights")
    (root / "kpack.yaml").write_text(BASE % (model, lr) + extra)
    return root


def kpack(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "packager.cli", *args], cwd=root, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, timeout=120)


# --------------------------------------------------------------------------------------------- kit settings

def test_a_bad_kit_value_stops_the_build_before_anything_is_built(tmp_path):
    root = project(tmp_path, lr="fast")
    done = kpack(root, "build", "train")
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: kpack.yaml: line 10: kit.optim.lr: expected a number (got 'fast')"]
    assert not (root / "build").exists()


def test_an_unknown_kit_key_stops_the_build(tmp_path):
    root = project(tmp_path, extra="  optimiser: {lr: 0.1}\n")
    done = kpack(root, "build", "infer")  # every kernel that runs the kit validates it
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: kpack.yaml: line 11: kit.optimiser: unknown field; remove it or check its spelling"]
    assert not (root / "build").exists()


def test_a_project_without_the_kit_is_not_checked(tmp_path):
    root = project(tmp_path, lr="fast", settings=False)  # its own kernel_src validates its own settings
    cfg = load_config(root / "kpack.yaml")
    assert preflight.check_kit(cfg, "train", root).line == (
        "kit: not checked: kernel_src/settings.py is not in this project (its entries validate their own settings)")
    build_kernel(cfg, "train", root=root)


# --------------------------------------------------------------------------------------------- weights files

def test_a_weights_file_missing_from_the_weights_dataset_stops_the_build(tmp_path):
    root = project(tmp_path, model=", weights: resnet18.tv_in1k.pth")
    done = kpack(root, "build", "train")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: kpack.yaml: line 9: kit.model.weights: 'resnet18.tv_in1k.pth' is not in models/ (the weights "
        "dataset mini-comp-weights; it holds: resnet18.a1_in1k.pth); put the file there or fix the name"]
    assert not (root / "build").exists()


def test_pretrained_needs_a_file_for_the_architecture(tmp_path):
    root = project(tmp_path, model=", pretrained: true")
    cfg = load_config(root / "kpack.yaml")
    assert preflight.check_weights(cfg, "train", root).line == (
        "kit.model.pretrained: resnet18.a1_in1k.pth is in models/ (the weights dataset mini-comp-weights)")
    (root / "models" / "resnet18.a1_in1k.pth").rename(root / "models" / "backbone.pth")
    with pytest.raises(UserError) as err:
        build_kernel(cfg, "train", root=root)
    assert str(err.value) == (
        f"{root / 'kpack.yaml'}: line 9: kit.model.pretrained: a file for 'resnet18' is not in models/ (the weights "
        "dataset mini-comp-weights; it holds: backbone.pth); name it 'resnet18.<tag>.pth' or map it in "
        "models/models.yaml")
    (root / "models" / "models.yaml").write_text("backbone.pth: resnet18\n")  # the kit's own mapping
    assert preflight.check_weights(cfg, "train", root).line.startswith("kit.model.pretrained: backbone.pth is in")


def test_weights_found_by_name_build(tmp_path):
    # a path is looked up by its name in the kernel (kernel_src/models.py), so only the name must be there
    root = project(tmp_path, model=", weights: /kaggle/input/mini-comp-weights/resnet18.a1_in1k.pth")
    built = build_kernel(load_config(root / "kpack.yaml"), "train", root=root)
    assert built.warnings == ()


def test_weights_may_come_from_another_dataset_source_with_a_warning(tmp_path):
    root = project(tmp_path, model=", weights: convnext.pth")
    text = (root / "kpack.yaml").read_text().replace(
        "accelerator: 'None'}", "accelerator: 'None', sources: {datasets: [bob/convnext-weights]}}", 1)
    (root / "kpack.yaml").write_text(text)
    built = build_kernel(load_config(root / "kpack.yaml"), "train", root=root)
    assert built.warnings == (
        "kit.model.weights: 'convnext.pth' is not in models/ (the weights dataset mini-comp-weights; it holds: "
        "resnet18.a1_in1k.pth); put the file there or fix the name; unless bob/convnext-weights holds it",)


def test_no_weights_dataset_at_all(tmp_path):
    root = project(tmp_path, model=", weights: resnet18.a1_in1k.pth")
    text = (root / "kpack.yaml").read_text().replace("datasets:\n  weights: {slug: mini-comp-weights, dir: models}\n", "")
    (root / "kpack.yaml").write_text(text)
    with pytest.raises(UserError) as err:
        build_kernel(load_config(root / "kpack.yaml"), "train", root=root)
    assert str(err.value) == (
        f"{root / 'kpack.yaml'}: line 7: kit.model.weights: 'resnet18.a1_in1k.pth' is in no dataset of the kernel: "
        f"add datasets.weights to {root / 'kpack.yaml'} with a dir holding it")


def test_validate_and_infer_do_not_need_the_pretrained_file(tmp_path):
    root = project(tmp_path, model=", weights: gone.pth")
    cfg = load_config(root / "kpack.yaml")
    assert preflight.check_weights(cfg, "infer", root).line == (
        "kit weights: not needed by the infer kernel (it loads the trained models)")
    build_kernel(cfg, "infer", root=root)


# --------------------------------------------------------------------------------------------- kpack check

def test_kpack_check_prints_one_line_per_check(tmp_path):
    root = project(tmp_path, model=", weights: resnet18.a1_in1k.pth")
    done = kpack(root, "check", "train")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ok: kpack.yaml: valid",
        "ok: kernels.train.entry: kernel_src/train.py defines main(config)",
        "ok: kernels.train.accelerator: None (CPU only); session_hours 12 of 12 h",
        "ok: kernels.train: kernel-metadata.json for alice/mini-comp-train ('Mini Comp Train') as the kaggle "
        "client accepts it",
        "ok: kit: valid for kernel_src/settings.py",
        "ok: kit.model.weights: resnet18.a1_in1k.pth is in models/ (the weights dataset mini-comp-weights)",
    ]
    assert not (root / "build").exists()  # it builds nothing


def test_kpack_check_reports_every_failure_and_exits_2(tmp_path):
    root = project(tmp_path, lr="fast")
    text = (root / "kpack.yaml").read_text().replace("accelerator: 'None'}", "accelerator: NvidiaK80}", 1)
    (root / "kpack.yaml").write_text(text)
    (root / "kernel_src" / "train.py").write_text("def run(config):\n    pass\n")
    done = kpack(root, "check", "train")
    assert done.returncode == 2
    assert done.stdout.splitlines() == [
        "ok: kpack.yaml: valid",
        "error: kernel_src/train.py: no main(config) function; the kernel calls main(config) of its entry",
        "ok: kernels.train.accelerator: NvidiaK80 (not in kpack's table: taken for a GPU); session_hours 12 "
        "of 12 h",
        "warning: kernels.train.accelerator: 'NvidiaK80' is not a machine shape kpack knows (None, NvidiaTeslaT4, "
        "NvidiaTeslaT4Highmem, NvidiaL4, NvidiaL4X1, NvidiaTeslaA100, NvidiaH100, NvidiaRtxPro6000, TpuV38, "
        "Tpu1VmV38, TpuV5E8, TpuV6E8); it is pushed as given, and Kaggle refuses names it does not know",
        "ok: kernels.train: kernel-metadata.json for alice/mini-comp-train ('Mini Comp Train') as the kaggle "
        "client accepts it",
        "error: kpack.yaml: line 10: kit.optim.lr: expected a number (got 'fast')",
        "ok: kit weights: not checked: the kit settings are invalid",
    ]
    assert done.stderr.splitlines() == ["error: kpack check train: 2 of 6 checks failed"]


# --------------------------------------------------------------------------------------------- kpack push

def test_push_with_a_bad_kit_uploads_nothing(local_kaggle, tmp_path, monkeypatch):
    from packager.push import push_kernel
    from pushkit import isolate, make_project

    isolate(monkeypatch, tmp_path)
    proj = make_project(tmp_path, local_kaggle)
    shutil.copy(REPO / "kernel_src" / "settings.py", proj.root / "kernel_src" / "settings.py")
    with open(proj.root / "kpack.yaml", "a") as f:
        f.write("kit:\n  optim: {lr: fast}\n")
    monkeypatch.chdir(proj.root)
    local_kaggle.reset_stats()
    with pytest.raises(UserError, match=r"kpack.yaml: line \d+: kit.optim.lr: expected a number \(got 'fast'\)$"):
        push_kernel(proj.cfg(), "train", wait=False)
    assert proj.dataset() is None and proj.kernel_versions() == []
    assert not (proj.root / "build").exists()  # neither the kernel nor the weights dataset was built
