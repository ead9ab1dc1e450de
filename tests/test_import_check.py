"""The build refuses an import in the packed code that resolves to nothing in the kernel (not packed, not in the
stdlib, not in the wheels dataset, not in the image), with one line naming file:line, the module and the fix;
it warns where that cannot be decided."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from packager import importcheck, inline
from packager.build import build_kernel
from packager.config import parse_config
from packager.errors import UserError

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "miniproj"
PROBED = "# source: probe\n# probed: 2026-11-30T10:00:00Z\n# python: 3.12.12\n"


@pytest.fixture
def proj(tmp_path) -> Path:
    root = tmp_path / "proj"
    shutil.copytree(FIXTURE, root)
    return root


def config(**overrides) -> dict:
    kernel = {"entry": "kernel_src/train.py", **overrides.pop("kernel", {})}
    return {"competition": "mini-comp", "kaggle_user": "alice", "kernels": {"train": kernel}, **overrides}


def build(root: Path, **overrides):
    return build_kernel(parse_config(config(**overrides)), "train", root=root)


def uses(tmp_path: Path, text: str, python=(3, 12, 1)) -> list[tuple[int, str, bool]]:
    pkg = tmp_path / "pkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(text)
    bundle = inline.collect(tmp_path, [("pkg", pkg)])
    return [(u.line, u.module, u.conditional) for u in importcheck.imports(bundle, python) if u.path == "pkg/mod.py"]


# -------------------------------------------------------------------------------------------------------
# which statements count


def test_finds_imports_at_top_level_and_in_functions_and_resolves_relative_ones(tmp_path):
    found = uses(tmp_path, "import os, numpy.linalg as la\nfrom . import sibling\nfrom .x.y import z\n"
                           "def f():\n    import lazy_thing\n    class C:\n        from deep import inner\n")
    assert found == [(1, "os", False), (1, "numpy.linalg", False), (2, "pkg", False), (3, "pkg.x.y", False),
                     (5, "lazy_thing", False), (7, "deep", False)]


def test_skips_guarded_imports_and_branches_the_kernel_never_runs(tmp_path):
    found = uses(tmp_path, """
import typing
from typing import TYPE_CHECKING
try:
    import optional_a
except ImportError:
    optional_a = None
try:
    import optional_b
except (AttributeError, ModuleNotFoundError):
    pass
try:
    import needed_c
except KeyError:
    pass
import contextlib
with contextlib.suppress(ImportError):
    import optional_d
if TYPE_CHECKING:
    import only_for_types
if typing.TYPE_CHECKING:
    import only_for_types_too
if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli
if sys.version_info[:2] < (3, 12):
    import old_python_only
if sys.platform == "win32":
    import winonly
if not sys.platform.startswith("linux"):
    import not_linux
if os.name == "posix" and SOME_FLAG:
    import maybe
""")
    modules = {module: conditional for _, module, conditional in found}
    assert set(modules) == {"typing", "contextlib", "needed_c", "tomllib", "maybe"}
    assert modules["maybe"] is True and modules["tomllib"] is False


# -------------------------------------------------------------------------------------------------------
# the build refuses what resolves to nothing


def test_build_refuses_an_import_that_resolves_to_nothing(proj):
    (proj / "kernel_src" / "typo.py").write_text("import json\n\n\ndef main(config):\n    import nmupy_typo\n")
    (proj / "kpack.yaml").write_text(json.dumps(config(kernel={"entry": "kernel_src/typo.py"})))
    done = subprocess.run([sys.executable, "-m", "packager.cli", "build", "train"], cwd=proj, capture_output=True,
                          text=True, timeout=120, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    line = done.stderr
    assert line.startswith("error: kernel_src/typo.py:5: `import nmupy_typo` resolves to nothing in the kernel")
    assert "not in the local image" in line and "kernels.train.packages" in line
    assert "add a wheels dataset (datasets.wheels)" in line
    assert not (proj / "build" / "kernels").exists() or not any((proj / "build" / "kernels").iterdir())


def test_a_core_only_install_is_told_to_install_the_local_extra(proj, monkeypatch):
    """kpack without [local] has no torch in the local image: the refusal says how to get it there."""
    (proj / "kernel_src" / "net.py").write_text("def main(config):\n    import timm\n")
    monkeypatch.setattr(importcheck.LocalImage, "has", lambda self, top, thorough=True: top != "timm")
    with pytest.raises(UserError, match=r"`import timm` resolves to nothing .*`pip install 'kpack\[local\]'`"):
        build(proj, kernel={"entry": "kernel_src/net.py"})


def test_refuses_a_missing_packed_submodule_and_names_every_failure(proj):
    (proj / "kernel_src" / "bad.py").write_text(
        "from kernel_src.pkg import sub\nfrom kernel_src.pkg.nothere import x\nimport missing_one\nimport missing_two\n"
        "def main(config):\n    pass\n")
    with pytest.raises(UserError) as err:
        build(proj, kernel={"entry": "kernel_src/bad.py"})
    message = str(err.value)
    assert message.startswith("kernel_src/bad.py:2: `kernel_src.pkg.nothere`: kernel_src is packed but has no module")
    assert "also: missing_one (kernel_src/bad.py:3), missing_two (kernel_src/bad.py:4)" in message
    assert "\n" not in message


def test_a_pinned_wheel_resolves_its_import_names(proj):
    """timm is not in the local image (the kernel gets it from the wheels dataset): refused without the pin,
    accepted with it; a package the pin pulls in (safetensors, via timm) is accepted too."""
    (proj / "kernel_src" / "uses_timm.py").write_text(
        "import timm\nimport safetensors\nimport torch\nimport numpy\nfrom PIL import Image\n"
        "def main(config):\n    pass\n")
    with pytest.raises(UserError, match=r"kernel_src/uses_timm.py:1: `import timm` resolves to nothing"):
        build(proj, kernel={"entry": "kernel_src/uses_timm.py"})
    (proj / "requirements-kernel.txt").write_text("timm==1.0.31\n")
    built = build(proj, kernel={"entry": "kernel_src/uses_timm.py"},
                  datasets={"wheels": {"slug": "mini-wheels", "requirements": "requirements-kernel.txt"}})
    assert not [w for w in built.warnings if "import" in w]


def test_kaggle_snapshot_maps_distribution_names_to_import_names(proj):
    """A probed snapshot is taken at its word: its distributions' import names differ from their names
    (pillow -> PIL, opencv-python -> cv2, scikit-learn -> sklearn, PyYAML -> yaml); a package it lacks is refused."""
    (proj / "datasets_meta").mkdir()
    (proj / "datasets_meta" / "kaggle-image-packages.txt").write_text(
        PROBED + "pillow==11.0.0\nopencv-python==4.10.0.84\nscikit-learn==1.6.0\nPyYAML==6.0.2\nnumpy==2.1.0\n")
    (proj / "kernel_src" / "vision.py").write_text(
        "import PIL.Image, cv2, sklearn.metrics, yaml, numpy\ndef main(config):\n    import lightgbm\n")
    with pytest.raises(UserError) as err:
        build(proj, backend="kaggle", kernel={"entry": "kernel_src/vision.py"})
    assert str(err.value).startswith("kernel_src/vision.py:3: `import lightgbm` resolves to nothing in the kernel")
    assert "datasets_meta/kaggle-image-packages.txt (probed 2026-11-30)" in str(err.value)
    assert "also" not in str(err.value)  # PIL, cv2, sklearn and yaml resolved


def test_a_guessed_snapshot_warns_for_a_real_package_it_does_not_list(proj):
    """A guess may miss what the image has: a package installed here but not in the guess is a warning; a name
    that exists nowhere is still refused."""
    (proj / "datasets_meta").mkdir()
    (proj / "datasets_meta" / "kaggle-image-packages.txt").write_text("# source: guess\nnumpy==2.1.0\n")
    (proj / "kernel_src" / "guess.py").write_text("import numpy\nimport click\ndef main(config):\n    pass\n")
    built = build(proj, backend="kaggle", kernel={"entry": "kernel_src/guess.py"})
    (warning,) = [w for w in built.warnings if "import" in w]
    assert warning.startswith("kernel_src/guess.py:2: `import click` may fail in the kernel") and "a guess" in warning
    (proj / "kernel_src" / "guess.py").write_text("import numpy\nimport nowhere_at_all\ndef main(config):\n    pass\n")
    with pytest.raises(UserError, match="`import nowhere_at_all` resolves to nothing"):
        build(proj, backend="kaggle", kernel={"entry": "kernel_src/guess.py"})


def test_without_any_snapshot_an_image_package_is_a_warning_that_says_the_push_probes_first(proj):
    (proj / "kernel_src" / "nosnap.py").write_text("import click\ndef main(config):\n    pass\n")
    built = build(proj, backend="kaggle", kernel={"entry": "kernel_src/nosnap.py"})
    (warning,) = [w for w in built.warnings if "`import " in w]
    assert warning.startswith("kernel_src/nosnap.py:1: `import click` may fail in the kernel: click is not packed, "
                              "no wheels dataset, no image snapshot; add a wheels dataset"), warning
    assert warning.endswith("(no image snapshot to check against: `kpack push` probes the image first)")


def test_warns_where_the_build_cannot_decide(proj):
    (proj / "kernel_src" / "maybe.py").write_text(
        "import os\nif os.environ.get('X'):\n    import only_sometimes\ndef main(config):\n    pass\n")
    built = build(proj, kernel={"entry": "kernel_src/maybe.py"})
    (warning,) = [w for w in built.warnings if "import" in w]
    assert warning.startswith("kernel_src/maybe.py:3: `import only_sometimes` may fail in the kernel")
    assert warning.endswith("(it sits under an `if` the build cannot decide)")


def test_a_real_package_packs_cleanly(proj):
    """click (installed here) packed whole: its Windows-only and optional imports are not refused."""
    import click

    built = build(proj, kernel={"packages": [str(Path(click.__file__).parent)]})
    assert not [w for w in built.warnings if "resolves" in w]


def test_the_switch_turns_the_refusal_into_a_warning(proj, monkeypatch):
    (proj / "kernel_src" / "typo.py").write_text("def main(config):\n    import nmupy_typo\n")
    monkeypatch.setenv("KPACK_IMPORT_CHECK", "warn")
    built = build(proj, kernel={"entry": "kernel_src/typo.py"})
    assert any(w.startswith("kernel_src/typo.py:2: `import nmupy_typo` resolves to nothing") for w in built.warnings)


def test_the_local_image_answers_as_the_folder_local_kernels_import_from():
    from packager.localkaggle.image import image_site

    cheap, exact = importcheck.LocalImage(), importcheck.Folder("the local image", image_site)
    for name in ("torch", "numpy", "yaml", "PIL", "click", "timm", "albumentations", "pytest", "uv", "kernel_src",
                 "packager", "nowhere_at_all"):
        assert cheap.has(name) == exact.has(name), name
    assert cheap.has("torch") and not cheap.has("timm")  # timm comes from the wheels dataset only


def test_a_wheel_in_the_cache_names_its_import_names(tmp_path):
    """A pinned distribution not installed here: its wheel's top_level.txt (else its file list) says what it
    installs, e.g. a distribution whose import name is nothing like its name."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "odd_dist-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("odd_dist-1.0.dist-info/top_level.txt", "weirdname\n")
        zf.writestr("weirdname/__init__.py", "")
    with zipfile.ZipFile(tmp_path / "plain_dist-2.0-py3-none-any.whl", "w") as zf:
        zf.writestr("plain_dist-2.0.dist-info/METADATA", "Name: plain-dist\n")
        zf.writestr("otherpkg/__init__.py", "")
        zf.writestr("single_module.py", "")
    wheels = importcheck.Provider("the wheels dataset", {"odd-dist", "plain-dist"}, tmp_path)
    assert not wheels.has("weirdname", thorough=False)
    assert wheels.has("weirdname") and wheels.has("otherpkg") and wheels.has("single_module")
    assert not wheels.has("odd_distx")
