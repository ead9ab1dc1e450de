"""The entry anywhere in the project, in any package layout, and kpack's kernel runtime (kpack_runtime) always
packed from kpack itself: a `src/mycomp/` package and a flat folder of modules, each pushed with kpack and run
on the local Kaggle; a user package named kpack_runtime refused; an installed copy never shadowing the packed
one; the training kit working under any package name it is copied to."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from packager.build import build_kernel
from packager.config import parse_config
from packager.errors import UserError
from packager.push import push_kernel
from pushkit import REPO, project  # noqa: F401 (project: a fixture)

# Reads the kernel's own inputs through kpack_runtime, as any user code may; the state says done (one session).
ENTRY_BODY = '''
def main(config):
    import os
    from pathlib import Path

    from kpack_runtime import inputs

    work = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle") / "working"
    (work / "state.json").write_text('{"done": true, "session": 1}')
    print("layout", __name__, GREETING, inputs.__name__, flush=True)
'''

LAYOUTS = {
    # entry -> files: a package under src/ (relative imports, a sub-package) ...
    "src/mycomp/train.py": {
        "src/mycomp/__init__.py": "",
        "src/mycomp/helpers.py": "def greet():\n    return 'hello from ' + __name__\n",
        "src/mycomp/sub/__init__.py": "",
        "src/mycomp/sub/deep.py": "from ..helpers import greet\n\nVALUE = greet() + ' via ' + __name__\n",
        "src/mycomp/train.py": "from .sub.deep import VALUE as GREETING\n" + ENTRY_BODY,
    },
    # ... and a flat folder of modules (no __init__.py): each is a top-level module in the kernel
    "scripts/train.py": {
        "scripts/utils.py": "def greet():\n    return 'hello from ' + __name__\n",
        "scripts/train.py": "import utils\n\nGREETING = utils.greet()\n" + ENTRY_BODY,
    },
}
EXPECTED = {
    "src/mycomp/train.py": ("layout mycomp.train hello from mycomp.helpers via mycomp.sub.deep kpack_runtime.inputs",
                            {"kpack_runtime": "kpack_runtime", "mycomp": "src/mycomp"}),
    "scripts/train.py": ("layout train hello from utils kpack_runtime.inputs",
                         {"kpack_runtime": "kpack_runtime", "train": "scripts/train.py", "utils": "scripts/utils.py"}),
}


def write_layout(root: Path, entry: str) -> None:
    for rel, text in LAYOUTS[entry].items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    config = root / "kpack.yaml"
    config.write_text(config.read_text().replace("entry: kernel_src/entry.py", f"entry: {entry}"))


@pytest.mark.parametrize("entry", sorted(LAYOUTS))
def test_an_entry_in_its_own_layout_runs_on_the_local_kaggle(project, entry):
    """kpack push of a project whose code is not kernel_src/: the kernel runs the entry as its module (relative
    imports work), with kpack's runtime packed beside it and nothing else of the project."""
    write_layout(project.root, entry)
    line, roots = EXPECTED[entry]
    result = push_kernel(project.cfg(), "train", wait=True)
    log = json.loads((result.output / f"{project.train_slug}.log").read_text())
    stdout = "".join(e["data"] for e in log if e["stream_name"] == "stdout")
    assert result.status == "COMPLETE", stdout + "".join(e["data"] for e in log if e["stream_name"] == "stderr")
    assert line in stdout.splitlines()
    record = json.loads((project.root / "build" / "kernels" / project.train_slug / "build.json").read_text())
    assert {r["name"]: r["path"] for r in record["roots"]} == roots  # kernel_src/ (also in the project) is not packed


def tiny_project(tmp_path: Path, files: dict[str, str], **kernel) -> tuple[Path, object]:
    root = tmp_path / "proj"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    cfg = parse_config({"competition": "mini-comp", "kaggle_user": "alice",
                        "kernels": {"train": {"entry": "kernel_src/train.py", **kernel}}})
    return root, cfg


MAIN = "def main(config):\n    print('the entry ran')\n"


@pytest.mark.parametrize("files, kernel, named", [
    ({"vendor/kpack_runtime/__init__.py": "def bootstrap(config):\n    pass\n"},
     {"packages": ["vendor/kpack_runtime"]}, "kernels.train.packages[0] (vendor/kpack_runtime)"),
    ({"flat/kpack_runtime.py": "def bootstrap(config):\n    pass\n", "flat/train.py": MAIN},
     {"entry": "flat/train.py"}, "kernels.train.entry (flat/train.py): flat/kpack_runtime.py"),
    ({"kpack_runtime/__init__.py": "", "kpack_runtime/train.py": MAIN},
     {"entry": "kpack_runtime/train.py"}, "kernels.train.entry (kpack_runtime/train.py): kpack_runtime/"),
])
def test_a_user_package_named_kpack_runtime_is_refused(tmp_path, files, kernel, named):
    root, cfg = tiny_project(tmp_path, {"kernel_src/__init__.py": "", "kernel_src/train.py": MAIN, **files}, **kernel)
    with pytest.raises(UserError) as info:
        build_kernel(cfg, "train", root=root)
    message = str(info.value)
    assert message.startswith(f"{named}: a packed package or module named kpack_runtime would shadow kpack's "
                              "kernel runtime"), message
    assert "\n" not in message and not (root / "build" / "kernels" / "mini-comp-train").exists()


def test_an_entry_name_that_cannot_be_imported_is_refused(tmp_path):
    root, cfg = tiny_project(tmp_path, {"src/my-comp/__init__.py": "", "src/my-comp/train.py": MAIN},
                             entry="src/my-comp/train.py")
    with pytest.raises(UserError, match=r"^kernels.train.entry: 'my-comp' in src/my-comp/train.py is not an "
                                        r"importable name"):
        build_kernel(cfg, "train", root=root)


def test_packages_naming_the_entrys_own_package_pack_it_once(tmp_path):
    root, cfg = tiny_project(tmp_path, {"kernel_src/__init__.py": "", "kernel_src/train.py": MAIN,
                                        "vendor/extra/__init__.py": ""},
                             packages=["kernel_src", "vendor/extra"])
    built = build_kernel(cfg, "train", root=root)
    record = json.loads((built.folder / "build.json").read_text())
    assert [r["name"] for r in record["roots"]] == ["kpack_runtime", "kernel_src", "extra"]


def test_an_installed_kpack_runtime_never_shadows_the_packed_one(tmp_path):
    """kpack_runtime on the kernel's sys.path (a dataset, an image package, imported before the script's code):
    the packed copy from kpack is the one that runs."""
    entry = "import kpack_runtime\n\ndef main(config):\n    print('runtime', kpack_runtime.__spec__.origin)\n"
    root, cfg = tiny_project(tmp_path, {"kernel_src/__init__.py": "", "kernel_src/train.py": entry})
    fake = tmp_path / "elsewhere" / "kpack_runtime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("def bootstrap(config):\n    raise SystemExit('the fake runtime ran')\n")
    built = build_kernel(cfg, "train", root=root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {"PYTHONPATH": str(fake.parent)}
    code = f"import kpack_runtime\nexec(open({str(built.script)!r}).read())"  # the installed copy imported first
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "the fake runtime ran" not in done.stderr
    assert "runtime kpack_runtime/__init__.py" in done.stdout, done.stdout


def test_the_kit_imports_itself_relatively(tmp_path):
    """The training kit is user code: no module names kernel_src (so a copy under any package name works), and
    a copy at src/mycomp imports its entries with kernel_src nowhere on the path."""
    for path in sorted((REPO / "kernel_src").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not any(n.split(".")[0] == "kernel_src" for n in names), f"{path.name}:{node.lineno}"
    shutil.copytree(REPO / "kernel_src", tmp_path / "src" / "mycomp", ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys\nimport mycomp.train, mycomp.validate, mycomp.infer\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'kernel_src', 'kpack_kit', 'mycomp'}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {
        "PYTHONPATH": str(tmp_path / "src"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "['mycomp']"
