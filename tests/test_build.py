"""`kpack build`: one script plus kernel-metadata.json and build.json; deterministic; refusals in one line."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
import sys
from pathlib import Path

import pytest

from packager import inline
from packager.build import BuiltKernel, build_kernel
from packager.config import parse_config
from packager.errors import UserError

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "miniproj"


def config(**overrides) -> dict:
    kernel = {"entry": "kernel_src/train.py", **overrides.pop("kernel", {})}
    return {"competition": "mini-comp", "kaggle_user": "alice", "kernels": {"train": kernel}, **overrides}


def make_project(where: Path) -> Path:
    shutil.copytree(FIXTURE, where)
    return where


@pytest.fixture
def proj(tmp_path) -> Path:
    return make_project(tmp_path / "proj")


def build(root: Path, **overrides) -> BuiltKernel:
    return build_kernel(parse_config(config(**overrides)), "train", root=root)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -------------------------------------------------------------------------------------------------------
# what a build writes


def test_build_writes_script_metadata_and_record(proj):
    built = build(proj)
    folder = proj / "build" / "kernels" / "mini-comp-train"
    assert built.folder == folder and built.script == folder / "mini-comp-train.py"
    assert built.metadata == folder / "kernel-metadata.json"
    assert sorted(p.name for p in folder.iterdir()) == ["build.json", "kernel-metadata.json", "mini-comp-train.py"]
    assert [p.name for p in folder.parent.iterdir()] == ["mini-comp-train"]  # no temp folders left behind
    data = built.script.read_bytes()
    assert built.size == len(data) and built.sha256 == inline.sha256(data)
    assert built.ref == "alice/mini-comp-train"
    record = json.loads((folder / "build.json").read_text())
    assert record["sha256"] == built.sha256 and record["inputs_sha256"] == built.inputs_sha256
    assert record["script"] == "mini-comp-train.py" and record["entry"] == "kernel_src/train.py"
    assert {f["path"] for f in record["files"]} >= {"kernel_src/train.py", "kernel_src/assets/labels.json"}
    meta = json.loads(built.metadata.read_text())
    assert meta["id"] == "alice/mini-comp-train" and meta["code_file"] == "mini-comp-train.py"


def test_script_layout_is_readable(proj):
    text = build(proj).script.read_text()
    sections = [line for line in text.splitlines() if line.startswith("# ") and line[2:3].isdigit()]
    assert sections == ["# 1. loader", "# 2. packed files", "# 2b. bytecode", "# 3. config", "# 4. run"]
    assert "# kernel_src/pkg/sub.py  (module kernel_src.pkg.sub, " in text
    assert "# kernel_src/assets/labels.json  (data file, " in text
    sub = (proj / "kernel_src" / "pkg" / "sub.py").read_text()
    assert f"_kpack.text('kernel_src/pkg/sub.py', r'''\n{sub}''')" in text  # the source, verbatim
    assert "config sha256: " in text and "built by kpack " in text
    tail = text.rstrip().split("if __name__ == \"__main__\":", 1)[1]
    assert tail.splitlines()[1] == "    _kpack_run()" and tail.endswith("_kpack_os._exit(0)")
    assert "\r" not in text and str(proj) not in text


def test_embedded_config_is_the_resolved_config(proj):
    cfg = parse_config(config(kit={"lr": 0.1}))
    built = build_kernel(cfg, "train", root=proj)
    text = built.script.read_text()
    namespace: dict = {}
    start = text.index("CONFIG = ")
    exec("import json as _kpack_json\n" + text[start:text.index("\n\n\n", start)], namespace)
    assert namespace["CONFIG"] == cfg.model_dump(mode="json") | {"kernel": "train"}


def test_metadata_adds_the_projects_own_datasets(proj):
    built = build(proj, kernel={"sources": {"datasets": ["bob/extra-data"], "competitions": ["mini-comp"],
                                            "kernels": ["bob/some-kernel"]}},
                  datasets={"wheels": {"slug": "mini-wheels"}, "weights": {"slug": "mini-weights"}})
    meta = json.loads(built.metadata.read_text())
    assert meta["dataset_sources"] == ["bob/extra-data", "alice/mini-wheels", "alice/mini-weights"]
    assert meta["competition_sources"] == ["mini-comp"] and meta["kernel_sources"] == ["bob/some-kernel"]
    assert meta["enable_internet"] is False


def test_chained_session_slug_and_kernel_source(proj):
    cfg = parse_config(config())
    built = build_kernel(cfg, "train", root=proj, slug="mini-comp-train-s2", kernel_sources=["alice/mini-comp-train"])
    assert built.script == proj / "build" / "kernels" / "mini-comp-train-s2" / "mini-comp-train-s2.py"
    meta = json.loads(built.metadata.read_text())
    assert meta["id"] == "alice/mini-comp-train-s2" and meta["title"] == "Mini Comp Train S2"
    assert meta["kernel_sources"] == ["alice/mini-comp-train"]


def test_cli_build_prints_one_line(proj):
    (proj / "kpack.yaml").write_text(json.dumps(config()))
    done = subprocess.run([sys.executable, "-m", "packager.cli", "build", "train"], cwd=proj, capture_output=True,
                          text=True, timeout=120, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("built ") and "mini-comp-train.py" in done.stdout and "sha256 " in done.stdout


# -------------------------------------------------------------------------------------------------------
# determinism


def test_same_inputs_same_bytes_anywhere(tmp_path):
    one = make_project(tmp_path / "a" / "proj")
    two = make_project(tmp_path / "somewhere" / "else" / "proj")
    first, again, elsewhere = build(one), build(one), build(two)
    assert first.sha256 == again.sha256 == elsewhere.sha256
    assert first.inputs_sha256 == again.inputs_sha256 == elsewhere.inputs_sha256
    assert snapshot(first.folder) == snapshot(elsewhere.folder)


def test_bytecode_of_another_interpreter_changes_the_inputs_hash(proj, monkeypatch):
    """The packed bytecode is made by the kernel's Python: the same sources under another patch release are
    other inputs (a build cache keyed on the inputs must not hand out the old script)."""
    from packager import inline

    before = build(proj)
    made = inline.bytecode_for
    monkeypatch.setattr(inline, "bytecode_for", lambda *a: dataclasses.replace(made(*a), python="3.12.99"))
    after = build(proj)
    assert after.inputs_sha256 != before.inputs_sha256 and after.config_sha256 == before.config_sha256


def test_a_changed_module_changes_the_hashes(proj):
    before = build(proj)
    with open(proj / "kernel_src" / "pkg" / "deep" / "mod.py", "a") as f:
        f.write("# one more line\n")
    after = build(proj)
    assert after.sha256 != before.sha256 and after.inputs_sha256 != before.inputs_sha256
    assert after.config_sha256 == before.config_sha256


def test_a_changed_config_changes_the_hashes(proj):
    before, after = build(proj), build(proj, kit={"lr": 0.2})
    assert after.config_sha256 != before.config_sha256 and after.sha256 != before.sha256


def test_build_litter_is_not_packed(proj):
    before = build(proj)
    cache = proj / "kernel_src" / "pkg" / "__pycache__"
    cache.mkdir()
    (cache / "sub.cpython-311.pyc").write_bytes(b"\x00junk")
    (proj / "kernel_src" / ".DS_Store").write_bytes(b"junk")
    (proj / "kernel_src" / "pkg" / "sub.pyi").write_text("def value() -> int: ...\n")
    assert build(proj).sha256 == before.sha256


# -------------------------------------------------------------------------------------------------------
# refusals: one line, nothing half-written, an earlier build left as it was


def refuse(root: Path, match: str, **overrides) -> str:
    folder = root / "build" / "kernels"
    before = snapshot(folder) if folder.exists() else None
    with pytest.raises(UserError) as info:
        build(root, **overrides)
    message = str(info.value)
    assert "\n" not in message
    assert match in message, message
    if before is None:
        assert not (folder / "mini-comp-train").exists()
    else:
        assert snapshot(folder) == before
    if folder.exists():
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    return message


def test_refuses_a_c_extension(proj):
    build(proj)  # an earlier good build must survive the refused one
    (proj / "kernel_src" / "pkg" / "_fast.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    message = refuse(proj, "kernel_src/pkg/_fast.cpython-311-x86_64-linux-gnu.so: a compiled extension")
    assert "wheels dataset" in message


def test_refuses_a_c_extension_in_an_extra_package(proj):
    extra = proj / "vendor" / "fastlib"
    extra.mkdir(parents=True)
    (extra / "__init__.py").write_text("")
    (extra / "_speed.pyd").write_bytes(b"MZ")
    refuse(proj, "vendor/fastlib/_speed.pyd: a compiled extension", kernel={"packages": ["vendor/fastlib"]})


def test_refuses_a_syntax_error_naming_file_and_line(proj):
    build(proj)
    (proj / "kernel_src" / "pkg" / "broken.py").write_text("x = 1\n\ndef f(:\n    pass\n")
    refuse(proj, "kernel_src/pkg/broken.py:3: syntax error")


def test_refuses_nul_bytes_in_a_module(proj):
    (proj / "kernel_src" / "nul.py").write_bytes(b"x = 1\x00\n")
    refuse(proj, "kernel_src/nul.py")


def test_refuses_a_missing_entry(proj):
    refuse(proj, "kernels.train.entry: kernel_src/nope.py does not exist", kernel={"entry": "kernel_src/nope.py"})


def test_refuses_an_entry_outside_the_project(proj):
    (proj.parent / "run.py").write_text("def main(config):\n    pass\n")
    refuse(proj, "must be a .py file inside the project", kernel={"entry": "../run.py"})
    refuse(proj, "must be a .py file inside the project", kernel={"entry": "kernel_src/assets/labels.json"})


def test_refuses_an_entry_without_main(proj):
    (proj / "kernel_src" / "nomain.py").write_text("def run(config):\n    pass\n")
    refuse(proj, "kernel_src/nomain.py: no main(config) function", kernel={"entry": "kernel_src/nomain.py"})


def test_refuses_a_main_that_takes_no_config(proj):
    (proj / "kernel_src" / "noarg.py").write_text("def main():\n    pass\n")
    refuse(proj, "kernel_src/noarg.py:1: main() takes no argument", kernel={"entry": "kernel_src/noarg.py"})


def test_accepts_an_imported_main(proj):
    (proj / "kernel_src" / "alias.py").write_text("from kernel_src.train import main\n")
    assert build(proj, kernel={"entry": "kernel_src/alias.py"}).size > 0


def test_refuses_a_missing_package_folder(proj):
    refuse(proj, "kernels.train.packages[0] (vendor/missing): no such package folder",
           kernel={"packages": ["vendor/missing"]})


def test_refuses_a_folder_without_python(proj):
    (proj / "vendor" / "notpy").mkdir(parents=True)
    (proj / "vendor" / "notpy" / "README").write_text("hi")
    refuse(proj, "no Python modules in this folder", kernel={"packages": ["vendor/notpy"]})


def test_refuses_two_packages_with_one_name(proj):
    for where in ("a", "b"):
        (proj / where / "dup").mkdir(parents=True)
        (proj / where / "dup" / "__init__.py").write_text("")
    refuse(proj, "a second package called 'dup'", kernel={"packages": ["a/dup", "b/dup"]})


def test_refuses_a_title_that_slugifies_elsewhere(proj):
    refuse(proj, "becomes the slug 'something-else' on Kaggle", kernel={"title": "Something Else"})


def test_cli_refusal_is_one_line(proj):
    (proj / "kpack.yaml").write_text(json.dumps(config(kernel={"entry": "kernel_src/nope.py"})))
    done = subprocess.run([sys.executable, "-m", "packager.cli", "build", "train"], cwd=proj, capture_output=True,
                          text=True, timeout=120, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: kernels.train.entry")
    assert not (proj / "build" / "kernels" / "mini-comp-train").exists()


def test_extra_single_module_package(proj):
    (proj / "vendor").mkdir()
    (proj / "vendor" / "tinymod.py").write_text("ANSWER = 42\n")
    (proj / "kernel_src" / "usemod.py").write_text(
        "import tinymod\n\ndef main(config):\n    print('answer', tinymod.ANSWER, tinymod.__file__)\n")
    built = build(proj, kernel={"entry": "kernel_src/usemod.py", "packages": ["vendor/tinymod.py"]})
    work = proj.parent / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, "-I", "-S", str(built.script)], cwd=work, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "answer 42 vendor/tinymod.py" in done.stdout


def test_warns_about_a_large_script(proj):
    (proj / "kernel_src" / "assets" / "big.bin").write_bytes(bytes(range(256)) * 5000)
    built = build(proj)
    assert any("kernel_src/assets/big.bin" in w and "belongs in a dataset" in w for w in built.warnings)


# -------------------------------------------------------------------------------------------------------
# end to end: the unmodified kaggle client pushes the build to the local Kaggle, whose runner runs it


@pytest.mark.slow
def test_built_kernel_runs_on_the_local_kaggle(proj, run_kaggle, local_kaggle, tmp_path):
    import hashlib
    import uuid

    tricky = {"crlf.py": b"x = 1\r\ny = 2\r\n", "quotes.py": b"a = '''x'''\nb = \"\"\"y\"\"\"\n",
              "unicode.py": "s = 'héllo ✓ 日本語'\n".encode(), "trailing.py": b"x = 1\n# \\",
              "blob.bin": bytes(range(256))}
    (proj / "kernel_src" / "tricky").mkdir()
    for name, data in tricky.items():
        (proj / "kernel_src" / "tricky" / name).write_bytes(data)
    (proj / "kernel_src" / "check.py").write_text(
        "import hashlib, importlib, importlib.resources, os\n"
        "def main(config):\n"
        "    folder = importlib.resources.files('kernel_src.tricky')\n"
        "    for name, digest in sorted(config['kit']['expected'].items()):\n"
        "        assert hashlib.sha256(folder.joinpath(name).read_bytes()).hexdigest() == digest, name\n"
        "        if name.endswith('.py'):\n"
        "            importlib.import_module('kernel_src.tricky.' + name[:-3])\n"
        "    print('checked', len(config['kit']['expected']), 'cwd files', sorted(os.listdir('.')))\n"
        "    raise RuntimeError('end of the check')\n")
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in tricky.items()}
    slug = f"inline-e2e-{uuid.uuid4().hex[:8]}"
    cfg = parse_config(config(kernel={"entry": "kernel_src/check.py"}, kit={"expected": expected}))
    built = build_kernel(cfg, "train", root=proj, slug=slug)
    done = run_kaggle("kernels", "push", "-p", str(built.folder))
    assert done.returncode == 0 and "successfully pushed" in done.stdout, done.stdout + done.stderr
    record = local_kaggle.wait_kernel("alice", slug, 1, timeout=300)
    assert record["status"] == "ERROR"  # the check ends with an exception on purpose: a traceback to read

    target = tmp_path / "out"
    assert run_kaggle("kernels", "output", f"alice/{slug}", "-p", str(target)).returncode == 0
    assert sorted(p.name for p in target.iterdir()) == [f"{slug}.log"]  # nothing written into working/
    log = json.loads((target / f"{slug}.log").read_text())
    stdout = "".join(e["data"] for e in log if e["stream_name"] == "stdout")
    stderr = "".join(e["data"] for e in log if e["stream_name"] == "stderr")
    assert f"checked {len(tricky)} cwd files []" in stdout
    assert 'File "kernel_src/check.py", line 9, in main' in stderr
    assert "raise RuntimeError('end of the check')" in stderr

    pulled = tmp_path / "pulled"
    assert run_kaggle("kernels", "pull", f"alice/{slug}", "-p", str(pulled)).returncode == 0
    assert (pulled / built.script.name).read_bytes() == built.script.read_bytes()  # exact over the wire


def test_warns_about_file_relative_paths_in_kernel_src(proj):
    assert build(proj).warnings == ()
    (proj / "kernel_src" / "paths.py").write_text("from pathlib import Path\n\n# __file__ in a comment\n"
                                                  "HERE = Path(__file__).parent\n")
    (warning,) = build(proj).warnings
    assert warning.startswith("kernel_src/paths.py:4 uses __file__: the kernel writes kernel_src (8 files, ")
    assert "to a temp folder on its first import" in warning and "importlib.resources.files('kernel_src')" in warning


def test_file_warning_covers_every_packed_package_and_names_its_first_line(proj):
    """Packages given with kernels.<kind>.packages are checked too, and the line named is the first use (a use
    inside a function, above a top-level one, comes first), once per package."""
    vendor = proj / "vendor" / "datapkg"
    vendor.mkdir(parents=True)
    (vendor / "__init__.py").write_text("import os\ndef where():\n    return os.path.dirname(os.path.dirname("
                                        "__file__))\n\n\nHERE = os.path.dirname(__file__)\n")
    (vendor / "more.py").write_text("X = __file__\n")
    (proj / "vendor" / "single.py").write_text("import os\n\nHERE = os.path.dirname(__file__)\n")
    warnings = build(proj, kernel={"packages": ["vendor/datapkg", "vendor/single.py"]}).warnings
    assert [w.split(" uses __file__")[0] for w in warnings] == ["vendor/datapkg/__init__.py:3", "vendor/single.py:3"]
    assert "the kernel writes datapkg (2 files, " in warnings[0]


SLOW_TEARDOWN = """import atexit, builtins, time
from pathlib import Path


class SlowToDelete:  # deleted when the interpreter tears down its modules, as torch's objects are
    def __del__(self):
        time.sleep(30)


def main(config):
    builtins.kept = SlowToDelete()
    atexit.register(lambda: Path("atexit-ran.txt").write_text("closed"))
    print("done")
"""


def test_script_runs_atexit_handlers_but_skips_the_interpreter_teardown(proj):
    """A kit that stopped in time must not be killed at the session limit while Python tears down torch:
    once main returns, atexit handlers run (a log or writer is closed), output is flushed and the process
    ends without the teardown."""
    (proj / "kernel_src" / "slowexit.py").write_text(SLOW_TEARDOWN)
    built = build(proj, kernel={"entry": "kernel_src/slowexit.py"})
    work = proj.parent / "work"
    work.mkdir()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-I", "-S", str(built.script)], cwd=work, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("done")
    assert (work / "atexit-ran.txt").read_text() == "closed"
    assert time.monotonic() - started < 20
