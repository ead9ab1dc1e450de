"""Single-file kernels: literals round-trip byte for byte, and the packed script runs where nothing is installed.

Every script runs in a subprocess as `python -I -S script.py` with an empty working directory: no site-packages,
no PYTHONPATH, no script directory on sys.path, so whatever it imports must come from the packed files.
"""
from __future__ import annotations

import ast
import hashlib
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from packager import inline
from packager.build import build_kernel
from packager.config import parse_config

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "miniproj"
# The interpreter the packed scripts run on (Kaggle's image runs Python 3.12): KPACK_KERNEL_PYTHON=python3.12
KERNEL_PYTHON = os.environ.get("KPACK_KERNEL_PYTHON") or sys.executable


def make_project(tmp_path: Path, kit: dict | None = None, **kernel) -> tuple[Path, object]:
    """A copy of the fixture project, and its config (the build packs kpack's own kpack_runtime)."""
    root = tmp_path / "proj"
    shutil.copytree(FIXTURE, root)
    data = {"competition": "mini-comp", "kaggle_user": "alice",
            "kernels": {"train": {"entry": "kernel_src/train.py", **kernel}}, "kit": kit or {}}
    return root, parse_config(data)


def run_script(script: Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run([KERNEL_PYTHON, "-I", "-S", str(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def built_script(tmp_path: Path, kit: dict | None = None, **kernel):
    root, cfg = make_project(tmp_path, kit, **kernel)
    return root, build_kernel(cfg, "train", root=root)


# -------------------------------------------------------------------------------------------------------
# literals

# (bytes, is it Python we can import, how it must travel or None when either is fine)
CASES = {
    "plain": (b"x = 1\n", True, "text"),
    "empty": (b"", True, "text"),
    "only_newline": (b"\n", True, "text"),
    "no_final_newline": (b"x = 1", True, "text"),
    "triple_single": (b"s = '''a\nb'''\n", True, "text"),
    "triple_double": (b's = """a\nb"""\n', True, "text"),
    "docstring_holding_other_triple": (b'"""Doc with \'\'\' inside."""\nx = 1\n', True, "text"),
    "both_triples": (b"a = '''x'''\nb = \"\"\"y\"\"\"\n", True, "text"),
    "backslashes": (b'p = "C:\\\\new\\\\table"\nr = r"\\d+\\s*"\nq = "\\\\"\nn = "\\n\\t"\n', True, "text"),
    "line_continuation": (b"x = 1 + \\\n    2\n", True, "text"),
    "ends_with_backslash": (b"x = 1\n# trailing \\", True, None),
    "ends_with_single_quote": (b"s = 'a'", True, "text"),
    "ends_with_double_quote": (b's = "a"', True, "text"),
    "ends_with_both_quotes": (b"s = 'a' + \"b\"", True, None),
    "escaped_quotes": (b"s = '\\'\\'\\''\nt = \"\\\"\\\"\\\"\"\n", True, None),
    "raw_string_quotes": (b"s = r'\\''\nt = r\"\\\"\"\n", True, None),
    "non_ascii": ("name = 'héllo wörld ✓ 日本語 😀 Ω'\n".encode(), True, "text"),
    "non_ascii_identifiers": ("café = 1\nπ = 3.14\n".encode(), True, "text"),
    "combining_and_zwj": ("s = 'e\u0301 👩\u200d💻'\n".encode(), True, "text"),
    "crlf": (b"x = 1\r\ny = 2\r\n", True, "b64"),
    "lone_cr": (b"x = 1\ry = 2\n", True, "b64"),
    "escaped_nul": (b's = "\\x00\\0"\nb = b"\\x00"\n', True, "text"),
    "tabs": (b"if True:\n\tx = 1\n", True, "text"),
    "form_feed": (b"\x0cx = 1\n", True, "b64"),
    "utf8_bom": (b"\xef\xbb\xbfx = 1\n", True, "b64"),
    "latin1_coding_cookie": ("# -*- coding: latin-1 -*-\ns = 'café'\n".encode("latin-1"), True, "b64"),
    "line_separator": ("s = 'a\u2028b'\n".encode(), True, "b64"),
    "c1_control": ("s = 'a\x85b'\n".encode(), True, "b64"),
    "fstrings": (b"x = 1\ns = f\"{x!r:>{3}} {'q'} {{braces}}\"\nt = f'''{x}'''\n", True, "text"),
    "kpack_lookalike": (b"# _kpack.install()\n# " + b"=" * 40 + b"\n_kpack = 'not the loader'\n", True, "text"),
    "unicode_escapes": (b's = "\\N{BULLET} \\u2022 \\U0001F600"\n', True, "text"),
    "quote_runs": (b"s = \"'\" * 3 + '\"' * 3\nt = \"''\"\nu = '\"\"'\n", True, "text"),
    "long_line": (b"x = '" + b"a" * 20000 + b"'\n", True, "text"),
    "future_import": (b'"""Doc."""\nfrom __future__ import annotations\n\ndef f(x: Undefined) -> Nope:\n    return x\n',
                      True, "text"),
    "binary_with_nul": (b"\x00\x01\x02\xff\xfe\x00", False, "b64"),
    "random_bytes": (random.Random(7).randbytes(4096), False, "b64"),
    "lone_backslash": (b"\\", False, None),
    "lone_triple_single": (b"'''", False, "text"),
    "lone_triple_double": (b'"""', False, "text"),
    "backslash_then_triple": (b"\\'''", False, None),
    "csv_crlf": (b"a,b\r\n1,2\r\n", False, "b64"),
    "invalid_utf8": (b"caf\xe9\n", False, "b64"),
    "surrogate_escape_bytes": (b"\xed\xa0\x80", False, "b64"),
    "private_use": ("x\ue000y".encode(), False, "b64"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_literal_round_trips_exactly(name):
    data, _, expected = CASES[name]
    method, literal, why = inline.encode(data)
    assert inline.decode(method, ast.literal_eval(literal)) == data
    assert "\r" not in literal  # the kaggle client reads the script in text mode: a \r would turn into \n
    literal.encode("utf-8")  # the script must be valid UTF-8 text
    if expected:
        assert method == expected, why
    assert (why is None) == (method == "text")


def test_every_case_survives_a_whole_script_and_the_clients_text_read(tmp_path):
    """All cases packed into one script: the file the client reads in text mode gives back every byte."""
    root, cfg = make_project(tmp_path)
    tricky = root / "kernel_src" / "tricky"
    tricky.mkdir()
    for name, (data, _, _) in CASES.items():
        (tricky / f"{name}.{'py' if CASES[name][1] else 'bin'}").write_bytes(data)
    built = build_kernel(cfg, "train", root=root)
    with open(built.script, encoding="utf-8") as f:  # what kernels_push does
        text = f.read()
    assert text.encode("utf-8") == built.script.read_bytes()
    packed = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("text", "b64"):
            path, value = (ast.literal_eval(a) for a in node.args)
            packed[path] = inline.decode(node.func.attr, value)
    for name, (data, is_py, _) in CASES.items():
        assert packed[f"kernel_src/tricky/{name}.{'py' if is_py else 'bin'}"] == data, name


def test_tricky_modules_import_and_read_back_in_the_kernel(tmp_path):
    expected = {}
    root, _ = make_project(tmp_path)
    tricky = root / "kernel_src" / "tricky"
    tricky.mkdir()
    for name, (data, is_py, _) in CASES.items():
        file = f"{name}.{'py' if is_py else 'bin'}"
        (tricky / file).write_bytes(data)
        expected[file] = hashlib.sha256(data).hexdigest()
    (root / "kernel_src" / "check.py").write_text(
        "import hashlib, importlib, importlib.resources\n"
        "def main(config):\n"
        "    folder = importlib.resources.files('kernel_src.tricky')\n"
        "    for file, digest in sorted(config['kit']['expected'].items()):\n"
        "        got = hashlib.sha256(folder.joinpath(file).read_bytes()).hexdigest()\n"
        "        assert got == digest, file\n"
        "        if file.endswith('.py'):\n"
        "            importlib.import_module('kernel_src.tricky.' + file[:-3])\n"
        "    assert sorted(p.name for p in folder.iterdir()) == sorted(config['kit']['expected'])\n"
        "    print('checked', len(config['kit']['expected']))\n")
    cfg = parse_config({"competition": "mini-comp", "kaggle_user": "alice",
                        "kernels": {"train": {"entry": "kernel_src/check.py"}}, "kit": {"expected": expected}})
    built = build_kernel(cfg, "train", root=root)
    done = run_script(built.script, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    assert f"checked {len(CASES)}" in done.stdout


# -------------------------------------------------------------------------------------------------------
# the packed script at run time


def test_script_runs_without_the_sources_installed_and_writes_nothing(tmp_path):
    _, built = built_script(tmp_path)
    work = tmp_path / "work"
    done = run_script(built.script, work)
    assert done.returncode == 0, done.stderr
    assert "kind=train value=42 depth=2" in done.stdout  # relative imports, a namespace subpackage
    assert 'labels={"labels": ["a", "b"]} nested=deep data raw=True' in done.stdout  # package data, nested
    assert "annotations={'return': 'int'}" in done.stdout  # from __future__ import annotations kept
    assert list(work.iterdir()) == []  # nothing extracted, no __pycache__


def test_modules_know_their_original_paths(tmp_path):
    root, cfg = make_project(tmp_path)
    (root / "kernel_src" / "probe.py").write_text(
        "import inspect, sys, kernel_src, kernel_src.pkg.sub as sub, kernel_src.pkg.deep as deep\n"
        "def main(config):\n"
        "    print(kernel_src.__file__, sub.__file__, type(kernel_src.__spec__.loader).__name__)\n"
        "    print('namespace', getattr(deep, '__file__', None), deep.__name__)\n"
        "    print('source', inspect.getsource(sub.value).splitlines()[0])\n"
        "    print('other-kinds', sys.modules.get('kernel_src.check'))\n")
    cfg = parse_config({"competition": "mini-comp", "kaggle_user": "alice",
                        "kernels": {"train": {"entry": "kernel_src/probe.py"}}})
    built = build_kernel(cfg, "train", root=root)
    done = run_script(built.script, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    assert "kernel_src/__init__.py kernel_src/pkg/sub.py KpackImporter" in done.stdout
    assert "namespace None kernel_src.pkg.deep" in done.stdout
    assert "source def value() -> int:" in done.stdout  # inspect (and torch.compile) can read packed source


def test_traceback_names_the_original_file_line_and_text(tmp_path):
    root, built = built_script(tmp_path, kit={"fail": "on purpose"})
    done = run_script(built.script, tmp_path / "work")
    assert done.returncode == 1
    lines = (root / "kernel_src" / "pkg" / "sub.py").read_text().splitlines()
    lineno = next(i for i, line in enumerate(lines, 1) if "raise RuntimeError" in line)
    assert f'File "kernel_src/pkg/sub.py", line {lineno}, in fail' in done.stderr
    assert 'raise RuntimeError(f"fixture failure: {message}")' in done.stderr  # the source text, via linecache
    assert 'File "kernel_src/train.py"' in done.stderr
    assert done.stderr.rstrip().endswith("RuntimeError: fixture failure: on purpose")


def test_system_exit_code_passes_through(tmp_path):
    _, built = built_script(tmp_path, kit={"exit": 3})
    assert run_script(built.script, tmp_path / "work").returncode == 3


def test_bootstrap_activates_wheels_then_weights_when_configured(tmp_path):
    """kpack's own runtime is packed whatever the project holds: its bootstrap readies the wheels first, then the
    weights (neither dataset is mounted here, so each stops the kernel with its own line, before the entry)."""
    root, _ = make_project(tmp_path)
    both = {"wheels": {"slug": "mini-wheels"}, "weights": {"slug": "mini-weights"}}
    for datasets, expected in [(both, "wheels dataset alice/mini-wheels is not mounted"),
                               ({"weights": both["weights"]}, "alice/mini-weights")]:
        cfg = parse_config({"competition": "mini-comp", "kaggle_user": "alice",
                            "kernels": {"train": {"entry": "kernel_src/train.py"}}, "datasets": datasets})
        built = build_kernel(cfg, "train", root=root)
        assert "kpack_runtime/__init__.py" in built.script.read_text()
        done = run_script(built.script, tmp_path / "work")
        assert done.returncode != 0 and expected in done.stderr, done.stderr
        assert "mini-wheels" not in done.stderr or "mini-weights" not in done.stderr


def test_packed_copy_wins_over_an_installed_one(tmp_path):
    """A packed package shadows one of the same name on sys.path (and one imported earlier)."""
    root, _ = make_project(tmp_path)
    other = tmp_path / "elsewhere" / "helperpkg"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("WHO = 'installed'\n")
    packed = root / "vendor" / "helperpkg"
    packed.mkdir(parents=True)
    (packed / "__init__.py").write_text("WHO = 'packed'\n")
    (root / "kernel_src" / "who.py").write_text(
        "import helperpkg\ndef main(config):\n    print('who', helperpkg.WHO, helperpkg.__file__)\n")
    cfg = parse_config({"competition": "mini-comp", "kaggle_user": "alice",
                        "kernels": {"train": {"entry": "kernel_src/who.py", "packages": ["vendor/helperpkg"]}}})
    built = build_kernel(cfg, "train", root=root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {
        "PYTHONPATH": str(other.parent)}
    done = subprocess.run([sys.executable, "-S", str(built.script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "who packed vendor/helperpkg/__init__.py" in done.stdout


# -------------------------------------------------------------------------------------------------------
# a real third-party package from PyPI

PYPI = {"attrs": "26.1.0", "more-itertools": "10.5.0"}


@pytest.fixture(scope="session")
def pypi_packages(tmp_path_factory) -> Path:
    """Pure-Python wheels downloaded once per session and unpacked side by side (packages + dist-info)."""
    wheels = tmp_path_factory.mktemp("wheels")
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(wheels)]
    done = subprocess.run(pip + [f"{n}=={v}" for n, v in PYPI.items()], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"pip download failed (is the package index reachable?): {done.stderr[-500:]}")
    site = tmp_path_factory.mktemp("unpacked")
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
    return site


def test_inlines_real_pypi_packages(tmp_path, pypi_packages):
    root, _ = make_project(tmp_path)
    (root / "kernel_src" / "uses_pypi.py").write_text(
        "import importlib.metadata\n"
        "import attr, attrs, more_itertools\n"
        "from more_itertools import chunked, windowed\n"
        "\n"
        "@attrs.define\n"
        "class Point:\n"
        "    x: int\n"
        "    y: int = attr.ib(default=0)\n"
        "\n"
        "def main(config):\n"
        "    print('chunks', list(chunked(range(7), 3)), list(windowed('abcd', 2))[0])\n"
        "    print('point', Point(1), attrs.asdict(Point(2, 3)), attr.__file__)\n"
        "    print('versions', attr.__version__, importlib.metadata.version('more-itertools'))\n")
    site = pypi_packages
    cfg = parse_config({"competition": "mini-comp", "kaggle_user": "alice",
                        "kernels": {"train": {"entry": "kernel_src/uses_pypi.py", "packages": [
                            str(site / "attr"), str(site / "attrs"), str(site / "more_itertools")]}}})
    built = build_kernel(cfg, "train", root=root)
    text = built.script.read_text()
    packed_part = text.split("# 3. config")[0]  # the config holds the paths as the user wrote them
    assert str(site) not in packed_part  # no absolute path of the build machine in the packed files
    assert "# attr/_make.py  (module attr._make" in text  # readable, under its import name
    work = tmp_path / "work"
    done = run_script(built.script, work)
    assert done.returncode == 0, done.stderr
    assert "chunks [[0, 1, 2], [3, 4, 5], [6]] ('a', 'b')" in done.stdout
    assert "point Point(x=1, y=0) {'x': 2, 'y': 3} attr/__init__.py" in done.stdout
    assert f"versions {PYPI['attrs']} {PYPI['more-itertools']}" in done.stdout  # packed dist-info metadata
    assert list(work.iterdir()) == []


def test_pypi_package_traceback_names_its_file(tmp_path, pypi_packages):
    root, _ = make_project(tmp_path)
    (root / "kernel_src" / "bad_attrs.py").write_text(
        "import attrs\n\n@attrs.frozen\nclass P:\n    x: int\n\ndef main(config):\n    P(1).x = 2\n")
    cfg = parse_config({"competition": "mini-comp", "kaggle_user": "alice",
                        "kernels": {"train": {"entry": "kernel_src/bad_attrs.py",
                                              "packages": [str(pypi_packages / n) for n in ("attr", "attrs")]}}})
    built = build_kernel(cfg, "train", root=root)
    done = run_script(built.script, tmp_path / "work")
    assert done.returncode == 1
    assert 'File "kernel_src/bad_attrs.py", line 8, in main' in done.stderr
    assert 'File "attr/_make.py", line' in done.stderr
    assert "FrozenInstanceError" in done.stderr


# -------------------------------------------------------------------------------------------------------
# other interpreters: Kaggle's image runs Python 3.12, the build machine may not


def _interpreters() -> list[str]:
    found = []
    for minor in ("3.12", "3.13"):
        pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
        candidates = [shutil.which(f"python{minor}"),
                      *sorted(str(p) for p in pyenv.glob(f"{minor}*/bin/python{minor}"))]
        for candidate in filter(None, candidates):
            if subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
                found.append(candidate)
                break
    return found


@pytest.mark.parametrize("python", _interpreters() or [pytest.param(None, marks=pytest.mark.skip(
    reason="no python3.12/3.13 here; set KPACK_KERNEL_PYTHON to run every kernel test on one"))])
def test_kernel_runs_on_the_kaggle_python(tmp_path, python, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "KERNEL_PYTHON", python)
    root, built = built_script(tmp_path, kit={"fail": "late"})
    done = run_script(built.script, tmp_path / "work")
    assert done.returncode == 1
    assert "kind=train value=42 depth=2" in done.stdout and "raw=True" in done.stdout
    assert 'File "kernel_src/pkg/sub.py", line 11, in fail' in done.stderr
    assert 'raise RuntimeError(f"fixture failure: {message}")' in done.stderr
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_worker_processes_import_packed_modules_and_do_not_rerun_main(tmp_path, method):
    """DataLoader-style workers: a spawned child re-runs the script as __mp_main__; it must get the packed
    modules (to unpickle kernel_src functions) and must not start main() again."""
    root, _ = make_project(tmp_path)
    (root / "kernel_src" / "work.py").write_text(
        "import multiprocessing\n"
        "def square(x):\n"
        "    return x * x\n"
        "def main(config):\n"
        "    print('main runs', flush=True)\n"
        f"    with multiprocessing.get_context({method!r}).Pool(2) as pool:\n"
        "        print('squares', pool.map(square, range(5)), flush=True)\n")
    cfg = parse_config({"competition": "mini-comp", "kaggle_user": "alice",
                        "kernels": {"train": {"entry": "kernel_src/work.py"}}})
    built = build_kernel(cfg, "train", root=root)
    done = run_script(built.script, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("main runs") == 1 and "squares [0, 1, 4, 9, 16]" in done.stdout


# -------------------------------------------------------------------------------------------------------
# package data found through __file__

DATAPKG = {
    "__init__.py": "import os, pkgutil\n"
                   "from pathlib import Path\n"
                   "import importlib.resources\n"
                   "\n"
                   "HERE = Path(__file__).parent\n"
                   "\n"
                   "def words():\n"
                   "    return (HERE / 'data' / 'words.txt').read_text().split()\n"
                   "\n"
                   "def table():\n"
                   "    with open(os.path.join(os.path.dirname(__file__), 'data', 'table.json')) as f:\n"
                   "        return f.read().strip()\n"
                   "\n"
                   "def via_resources():\n"
                   "    return importlib.resources.files(__name__).joinpath('data/table.json').read_text().strip()\n"
                   "\n"
                   "def via_get_data():\n"
                   "    return pkgutil.get_data(__name__, 'data/words.txt').decode().strip()\n"
                   "\n"
                   "def fail():\n"
                   "    raise ValueError('datapkg failure')\n",
    "sub/__init__.py": "",
    "sub/reader.py": "from pathlib import Path\n\nNOTE = Path(__file__).with_name('note.txt').read_text().strip()\n",
    "sub/note.txt": "beside the module\n",
    "data/words.txt": "alpha beta\n",
    "data/table.json": '{"a": 1}\n',
}


def test_package_data_read_through_file_works_in_the_kernel(tmp_path):
    """Path(__file__).parent, os.path.dirname(__file__) and pkgutil.get_data find the packed data files (before:
    FileNotFoundError, __file__ named a path with nothing behind it), from a copy under the kernel's temp dir:
    nothing lands in working/, the copy is gone at exit, tracebacks still name the original file."""
    root, _ = make_project(tmp_path)
    for name, text in DATAPKG.items():
        (root / "vendor" / "datapkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "vendor" / "datapkg" / name).write_text(text)
    (root / "kernel_src" / "usedata.py").write_text(
        "import os, kernel_src, datapkg\n"
        "from datapkg.sub import reader\n"
        "def main(config):\n"
        "    print('words', datapkg.words(), datapkg.table(), datapkg.via_resources(), datapkg.via_get_data())\n"
        "    print('note', reader.NOTE)\n"
        "    print('file', datapkg.__file__, datapkg.__path__[0], sorted(os.listdir(datapkg.__path__[0])))\n"
        "    print('in memory', kernel_src.__file__)\n"
        "    datapkg.fail()\n")
    cfg = parse_config({"competition": "mini-comp", "kaggle_user": "alice",
                        "kernels": {"train": {"entry": "kernel_src/usedata.py", "packages": ["vendor/datapkg"]}}})
    built = build_kernel(cfg, "train", root=root)
    assert build_kernel(cfg, "train", root=root).sha256 == built.sha256  # still deterministic
    text = built.script.read_text()
    assert "_kpack.on_disk('datapkg')  # vendor/datapkg/__init__.py:5 names __file__" in text
    assert "_kpack.on_disk('kernel_src')" not in text  # kernel_src does not name __file__: it stays in memory

    kaggle = tmp_path / "kaggle"
    (kaggle / "working").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {"KPACK_KAGGLE_ROOT": str(kaggle)}
    done = subprocess.run([KERNEL_PYTHON, "-I", "-S", str(built.script)], cwd=kaggle / "working", env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "words ['alpha', 'beta'] {\"a\": 1} {\"a\": 1} alpha beta" in done.stdout
    assert "note beside the module" in done.stdout
    copy = str(kaggle / "temp") + os.sep + "kpack-files-"
    line = next(line for line in done.stdout.splitlines() if line.startswith("file "))
    assert line.startswith(f"file {copy}") and line.endswith("vendor/datapkg ['__init__.py', 'data', 'sub']")
    assert "in memory kernel_src/__init__.py" in done.stdout
    assert 'File "vendor/datapkg/__init__.py", line 21, in fail' in done.stderr
    assert "raise ValueError('datapkg failure')" in done.stderr
    assert list((kaggle / "working").iterdir()) == []  # working/ is saved as output: nothing written there
    assert list((kaggle / "temp").iterdir()) == []  # the copy is removed at exit


# -------------------------------------------------------------------------------------------------------
# bytecode: compiled at build time by an interpreter of the kernel's Python version

BYTECODE_PROBE = ("import __main__, builtins\n"
                  "def main(config):\n"
                  "    import kernel_src.pkg.sub\n"
                  "    print('bytecode', len(__main__._kpack.code) > 0, kernel_src.pkg.sub.value())\n")


def test_modules_run_from_the_scripts_bytecode_and_another_python_compiles_the_sources(tmp_path, monkeypatch):
    root, cfg = make_project(tmp_path, entry="kernel_src/probe.py")
    (root / "kernel_src" / "probe.py").write_text(BYTECODE_PROBE)
    built = build_kernel(cfg, "train", root=root)
    assert "# 2b. bytecode" in built.script.read_text()
    done = run_script(built.script, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    assert "bytecode True 42" in done.stdout  # this Python's magic number: the compiled modules are used
    other = _interpreters()
    if other:
        monkeypatch.setattr(sys.modules[__name__], "KERNEL_PYTHON", other[0])
        done = run_script(built.script, tmp_path / "work-other")
        assert done.returncode == 0, done.stderr
        assert "bytecode False 42" in done.stdout  # another magic number: the sources are compiled

    monkeypatch.setenv("KPACK_NO_BYTECODE", "1")
    plain = build_kernel(cfg, "train", root=root, out_dir=tmp_path / "plain")
    assert "# 2b. bytecode" not in plain.script.read_text()
    assert "bytecode False 42" in run_script(plain.script, tmp_path / "work-plain").stdout


@pytest.mark.skipif(not _interpreters() or not _interpreters()[0].endswith("3.12"),
                    reason="no python3.12 here to compile Kaggle's bytecode")
def test_kaggle_backend_ships_bytecode_for_kaggles_python(tmp_path, monkeypatch):
    root, _ = make_project(tmp_path)
    (root / "kernel_src" / "probe.py").write_text(BYTECODE_PROBE)
    cfg = parse_config({"competition": "mini-comp", "kaggle_user": "alice", "backend": "kaggle",
                        "kernels": {"train": {"entry": "kernel_src/probe.py"}}})
    built = build_kernel(cfg, "train", root=root)
    assert "compiled by CPython 3.12." in built.script.read_text()
    monkeypatch.setattr(sys.modules[__name__], "KERNEL_PYTHON", _interpreters()[0])
    done = run_script(built.script, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    assert "bytecode True 42" in done.stdout


@pytest.mark.slow
def test_package_data_read_through_file_works_on_the_local_kaggle(tmp_path, run_kaggle, local_kaggle):
    """The same package pushed with the unmodified kaggle client and run by the local Kaggle's sandboxed runner:
    the copy lands in the kernel's temp folder, and nothing in its output."""
    import json
    import uuid

    root, _ = make_project(tmp_path)
    for name, text in DATAPKG.items():
        (root / "vendor" / "datapkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "vendor" / "datapkg" / name).write_text(text)
    (root / "kernel_src" / "usedata.py").write_text(
        "import datapkg\nfrom datapkg.sub import reader\n"
        "def main(config):\n    print('words', datapkg.words(), datapkg.table(), reader.NOTE)\n")
    slug = f"file-data-{uuid.uuid4().hex[:8]}"
    cfg = parse_config({"competition": "mini-comp", "kaggle_user": "alice",
                        "kernels": {"train": {"entry": "kernel_src/usedata.py", "packages": ["vendor/datapkg"]}}})
    built = build_kernel(cfg, "train", root=root, slug=slug)
    done = run_kaggle("kernels", "push", "-p", str(built.folder))
    assert done.returncode == 0 and "successfully pushed" in done.stdout, done.stdout + done.stderr
    record = local_kaggle.wait_kernel("alice", slug, 1, timeout=300)
    target = tmp_path / "out"
    assert run_kaggle("kernels", "output", f"alice/{slug}", "-p", str(target)).returncode == 0
    log = json.loads((target / f"{slug}.log").read_text())
    assert record["status"] == "COMPLETE", log
    stdout = "".join(e["data"] for e in log if e["stream_name"] == "stdout")
    assert "words ['alpha', 'beta'] {\"a\": 1} beside the module" in stdout
    assert sorted(p.name for p in target.iterdir()) == [f"{slug}.log"]
