"""The local kernel runner: mounts, network cut, session limit, cancel, log, output, image, environment."""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import stat
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import pytest

from packager.localkaggle import runner, sandbox
from packager.localkaggle.runner import Mount, list_output, read_log, run_kernel

REPO = Path(__file__).resolve().parents[1]
# The sandboxes this machine has: each sandboxed test runs in every one (bwrap and kpack's own unshare).
SANDBOXES = [pytest.param(mode, marks=pytest.mark.skipif(sandbox.probe(mode) is not None,
                                                         reason=f"{mode}: {sandbox.probe(mode)}"))
             for mode in ("bwrap", "unshare")]


def kernel(tmp: Path, body: str, name: str = "kernel.py") -> Path:
    script = tmp / name
    script.write_text(textwrap.dedent(body))
    return script


def log_entries(path: Path) -> list[dict]:
    return json.loads(read_log(path))


def make_wheel(folder: Path) -> None:
    """A minimal pure-Python wheel, as a wheels dataset would hold."""
    folder.mkdir(parents=True)
    files = {
        "tinypkg/__init__.py": "ANSWER = 42\n",
        "tinypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        "tinypkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in [*files, "tinypkg-1.0.dist-info/RECORD"])
    with zipfile.ZipFile(folder / "tinypkg-1.0-py3-none-any.whl", "w") as whl:
        for name, text in {**files, "tinypkg-1.0.dist-info/RECORD": record}.items():
            whl.writestr(name, text)


@pytest.fixture(scope="module")
def host_listener():
    """A TCP listener on the host's loopback: a kernel without internet must not reach it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


# One offline kernel checks most of the sandbox at once: it reports what it saw into working/report.json.
REPORT_KERNEL = """
    import errno, json, os, socket, subprocess, sys, time
    sys.path.insert(0, os.path.join(os.environ["KPACK_KAGGLE_ROOT"], "input", "datasets", "alice", "ksrc"))
    from kpack_runtime import inputs

    report = {{"env": dict(os.environ), "cwd": os.getcwd(), "executable": sys.executable}}
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
        report["host_port"] = "connected"
    except OSError as exc:
        report["host_port"] = repr(exc)
    try:
        socket.getaddrinfo("www.kaggle.com", 443)
        report["dns"] = "resolved"
    except OSError as exc:
        report["dns"] = repr(exc)
    report["write_input"] = {{}}
    for rel in ("mycomp/new.csv", "competitions/mycomp/train.csv", "datasets/alice/myds/new.txt"):
        try:
            with open(inputs.input_dir() / rel, "a") as f:
                f.write("x")
            report["write_input"][rel] = 0
        except OSError as exc:
            report["write_input"][rel] = exc.errno
    report["found"] = {{
        "competition": str(inputs.find_input("mycomp", "competition")),
        "dataset": str(inputs.find_input("alice/myds", "dataset")),
        "notebook": str(inputs.find_input("alice/prev-session", "notebook")),
        "legacy": sorted(p.name for p in inputs.input_dir().iterdir()),
        "checkpoint": [str(p) for p in inputs.find_files("ckpt.pt")],
    }}
    report["train_csv"] = (inputs.find_input("mycomp", "competition") / "train.csv").read_text()
    try:
        import timm
        report["timm"] = "imported"
    except ImportError as exc:
        report["timm"] = repr(exc)
    import numpy, pandas, PIL, sklearn, cryptography, yaml, torch
    report["torch"] = torch.__version__
    wheels = inputs.find_input("alice/mywheels", "dataset")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
                          "--disable-pip-version-check", "-q", "tinypkg"], capture_output=True, text=True)
    report["pip"] = pip.returncode, pip.stderr[-2000:]
    import tinypkg
    report["tinypkg"] = tinypkg.ANSWER, tinypkg.__file__

    os.makedirs("nested/deeper", exist_ok=True)
    with open("nested/deeper/weights.bin", "wb") as f:
        f.write(b"\\0" * 10)
    (inputs.temp_dir() / "scratch.txt").write_text("not output")
    with open("report.json", "w") as f:
        json.dump(report, f)
    for i in range(3):
        print(f"out {{i}}")
        time.sleep(0.05)
        print(f"err {{i}}", file=sys.stderr)
        time.sleep(0.05)
"""


@pytest.fixture(scope="module", params=SANDBOXES)
def offline(request, tmp_path_factory, host_listener):
    tmp = tmp_path_factory.mktemp(f"offline-{request.param}")
    comp, data, prev = tmp / "src-comp", tmp / "src-data", tmp / "src-prev"
    for folder in (comp, data, prev):
        folder.mkdir()
    (comp / "train.csv").write_text("id,label\n1,0\n")
    (data / "readme.txt").write_text("data")
    (prev / "ckpt.pt").write_bytes(b"ckpt")
    make_wheel(tmp / "src-wheels")
    shutil.copytree(REPO / "kpack_runtime", tmp / "src-ksrc" / "kpack_runtime",  # the repository is out of a kernel's sight
                    ignore=shutil.ignore_patterns("__pycache__"))
    mounts = [Mount("competition", None, "mycomp", comp), Mount("dataset", "alice", "myds", data),
              Mount("notebook", "alice", "prev-session", prev),
              Mount("dataset", "alice", "mywheels", tmp / "src-wheels"), Mount("dataset", "alice", "ksrc", tmp / "src-ksrc")]
    script = kernel(tmp, REPORT_KERNEL.format(port=host_listener))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(sandbox.MODE_ENV, request.param)
        mp.setenv("KAGGLE_KEY", "host-secret-key")
        mp.setenv("KAGGLE_USERNAME", "host-user")
        mp.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
        result = run_kernel(script, tmp / "run", mounts, enable_internet=False, timeout_s=300,
                            env={"KPACK_WEIGHTS_KEY": "user-secret"})
    report_path = result.output_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return result, report, tmp


def test_offline_kernel_completes(offline):
    result, report, _ = offline
    assert result.status == "COMPLETE", (result.failure_message, read_log(result.log_path)[-3000:])
    assert result.failure_message == "" and report is not None


def test_internet_off_cannot_reach_host_or_dns(offline):
    _, report, _ = offline
    assert report["host_port"] != "connected"
    assert report["dns"] != "resolved"


def test_inputs_are_read_only_in_both_layouts(offline):
    _, report, tmp = offline
    assert set(report["write_input"].values()) <= {errno.EROFS, errno.EACCES}, report["write_input"]
    assert (tmp / "src-comp" / "train.csv").read_text() == "id,label\n1,0\n"
    assert not (tmp / "src-comp" / "new.csv").exists()


def test_both_layouts_resolve_through_runtime_inputs(offline):
    _, report, tmp = offline
    root = Path("/kaggle/input")  # the run root is /kaggle inside the sandbox, as on Kaggle
    found = report["found"]
    assert found["competition"] == str(root / "competitions" / "mycomp")
    assert found["dataset"] == str(root / "datasets" / "alice" / "myds")
    assert found["notebook"] == str(root / "notebooks" / "alice" / "prev-session")
    assert {"mycomp", "myds", "prev-session", "competitions", "datasets", "notebooks"} <= set(found["legacy"])
    # one file in both layouts is found once, by its newer-layout path (code written for Kaggle's one layout
    # that expects a single hit must not fail here)
    assert found["checkpoint"] == [str(root / "notebooks" / "alice" / "prev-session" / "ckpt.pt")]
    assert report["train_csv"] == "id,label\n1,0\n"


def test_kernel_environment_is_built_not_inherited(offline):
    _, report, tmp = offline
    env = report["env"]
    assert "KAGGLE_KEY" not in env and "KAGGLE_USERNAME" not in env and "HTTPS_PROXY" not in env
    assert env["KPACK_WEIGHTS_KEY"] == "user-secret"
    assert env["KPACK_KAGGLE_ROOT"] == "/kaggle" and env["HOME"] == "/root"
    assert env["KAGGLE_KERNEL_RUN_TYPE"] == "Batch"
    assert report["cwd"] == "/kaggle/working"


def test_image_hides_the_wheels_and_pip_installs_into_the_run(offline):
    _, report, tmp = offline
    assert "No module named 'timm'" in report["timm"]
    assert report["torch"]
    assert report["pip"][0] == 0, report["pip"][1]
    answer, where = report["tinypkg"]
    assert answer == 42 and where.startswith(sandbox.VENV_INSIDE + "/")
    with pytest.raises(ImportError):
        import tinypkg  # noqa: F401  (the tools' venv never sees what a kernel installed)


def test_working_is_the_output_and_temp_is_not(offline):
    result, _, tmp = offline
    assert result.output_dir == tmp / "run" / "working"
    assert list_output(result.output_dir) == ["nested/deeper/weights.bin", "report.json"]
    assert (tmp / "run" / "temp" / "scratch.txt").read_text() == "not output"
    assert not (tmp / "run" / runner.SANDBOX).exists(), "the run's interpreter and HOME are thrown away"


def test_log_is_kaggles_json_array_in_order(offline):
    result, _, _ = offline
    text = result.log_path.read_text()
    assert text.startswith("[{") and text.endswith("}]") and "\n,{" in text
    entries = json.loads(text)
    assert all(set(e) == {"stream_name", "time", "data"} for e in entries)
    ours = [(e["stream_name"], e["data"]) for e in entries if e["data"][:4] in ("out ", "err ")]
    assert ours == [(s, f"{tag} {i}\n") for i in range(3) for s, tag in (("stdout", "out"), ("stderr", "err"))]
    times = [e["time"] for e in entries]
    assert times == sorted(times) and times[-1] > 0


def test_internet_on_reaches_the_host(tmp_path, host_listener):
    script = kernel(tmp_path, f"""
        import socket
        socket.create_connection(("127.0.0.1", {host_listener}), timeout=5).close()
        print("connected")
    """)
    result = run_kernel(script, tmp_path / "run", [], enable_internet=True, timeout_s=60)
    assert result.status == "COMPLETE", read_log(result.log_path)


def test_session_limit_kills_the_kernel_and_keeps_its_log(tmp_path):
    script = kernel(tmp_path, """
        import time
        print("before the limit", flush=True)
        time.sleep(60)
    """)
    result = run_kernel(script, tmp_path / "run", [], enable_internet=False, timeout_s=2)
    assert result.status == "ERROR"
    assert result.failure_message == runner.TIME_LIMIT_MESSAGE.format(limit=2)
    assert "session limit of 2 seconds" in result.failure_message
    assert 2 <= result.seconds < 10
    data = [e["data"] for e in log_entries(result.log_path)]
    assert "before the limit\n" in data and data[-1] == result.failure_message + "\n"


def host_processes_running(marker: str) -> list[int]:
    """Host pids whose command line holds `marker` (a kernel's own pids are its PID namespace's)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes() and \
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("mode", ["none", *SANDBOXES])
def test_session_limit_kills_the_whole_group_even_when_sigterm_is_ignored(tmp_path, monkeypatch, mode):
    monkeypatch.setattr(runner, "KILL_GRACE_S", 0.5)
    monkeypatch.setenv(sandbox.MODE_ENV, mode)
    marker = f"{time.time_ns() % 10**9}.25"
    script = kernel(tmp_path, f"""
        import signal, subprocess, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", "{marker}"])
        print("child started", flush=True)
        time.sleep(120)
    """)
    result = run_kernel(script, tmp_path / "run", [], enable_internet=False, timeout_s=2)
    assert result.status == "ERROR" and result.seconds < 10, read_log(result.log_path)
    assert "child started\n" in [e["data"] for e in log_entries(result.log_path)]
    time.sleep(0.2)
    assert host_processes_running(marker) == [], "the kernel's child survived"


@pytest.mark.parametrize("mode", SANDBOXES)
def test_sandboxed_kernel_gets_its_sigterm_grace(tmp_path, monkeypatch, mode):
    """The sandbox's own process (bwrap, unshare) is spared the SIGTERM, which would end the sandbox at once."""
    monkeypatch.setattr(runner, "KILL_GRACE_S", 3)
    monkeypatch.setenv(sandbox.MODE_ENV, mode)
    script = kernel(tmp_path, """
        import signal, sys, time
        def saved(*_):
            time.sleep(0.3)
            open("saved.txt", "w").write("saved on SIGTERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, saved)
        print("waiting", flush=True)
        time.sleep(60)
    """)
    result = run_kernel(script, tmp_path / "run", [], enable_internet=False, timeout_s=2)
    assert result.status == "ERROR" and result.seconds < 5
    assert (result.output_dir / "saved.txt").read_text() == "saved on SIGTERM"


def test_non_zero_exit_names_the_code_and_the_exception(tmp_path):
    script = kernel(tmp_path, """
        print("working")
        raise ValueError("bad fold count: 0")
    """)
    result = run_kernel(script, tmp_path / "run", [], enable_internet=False, timeout_s=60)
    assert result.status == "ERROR"
    assert result.failure_message == "Notebook Threw Exception: the kernel exited with code 1: ValueError: bad fold count: 0"


def test_cancel_stops_a_running_kernel(tmp_path):
    script = kernel(tmp_path, """
        import time
        print("started", flush=True)
        time.sleep(60)
    """)
    cancel, box = threading.Event(), {}
    worker = threading.Thread(target=lambda: box.update(result=run_kernel(
        script, tmp_path / "run", [], enable_internet=False, timeout_s=120, cancel=cancel)))
    worker.start()
    deadline = time.monotonic() + 30
    while "started" not in read_log(tmp_path / "run" / runner.LOG_NAME) and time.monotonic() < deadline:
        time.sleep(0.05)  # the log streams while the kernel runs
    cancel.set()
    worker.join(30)
    result = box["result"]
    assert result.status == "CANCEL_ACKNOWLEDGED" and result.seconds < 30
    assert "started\n" in [e["data"] for e in log_entries(result.log_path)]


def test_bad_input_source_is_an_error_not_an_exception(tmp_path):
    script = kernel(tmp_path, "print('never')\n")
    result = run_kernel(script, tmp_path / "run", [Mount("dataset", "a", "gone", tmp_path / "missing")],
                        enable_internet=False, timeout_s=60)
    assert result.status == "ERROR" and "is not a folder" in result.failure_message


WRITE_INPUT = """
    import os
    path = os.path.join(os.environ["KPACK_KAGGLE_ROOT"], "input", "myds", "data.txt")
    print(open(path).read())
    try:
        open(path, "a").write("x")
        print("write: ok")
    except OSError as exc:
        print("write:", exc.errno)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="non-root runs always take the user-namespace path")
@pytest.mark.skipif(sandbox.probe("unshare") is not None, reason="kpack's own sandbox does not work here")
def test_user_namespace_path_mounts_read_only_too(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "USE_USERNS", True)
    monkeypatch.setenv(sandbox.MODE_ENV, "unshare")
    source = tmp_path / "src"
    source.mkdir()
    (source / "data.txt").write_text("hello")
    result = run_kernel(kernel(tmp_path, WRITE_INPUT), tmp_path / "run", [Mount("dataset", "a", "myds", source)],
                        enable_internet=False, timeout_s=60)
    data = [e["data"] for e in log_entries(result.log_path)]
    assert result.status == "COMPLETE", data
    assert f"write: {errno.EROFS}\n" in data and (source / "data.txt").read_text() == "hello"


def test_without_a_sandbox_inputs_are_read_only_copies_and_it_says_so_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(sandbox.MODE_ENV, "none")
    monkeypatch.setattr(runner, "_announced", set())
    source = tmp_path / "src"
    source.mkdir()
    (source / "data.txt").write_text("hello")
    mounts = [Mount("dataset", "a", "myds", source)]
    caplog.set_level(logging.INFO, logger=runner.__name__)
    results = [run_kernel(kernel(tmp_path, WRITE_INPUT), tmp_path / f"run{i}", mounts, enable_internet=False,
                          timeout_s=60) for i in range(2)]
    for result in results:
        data = [e["data"] for e in log_entries(result.log_path)]
        assert result.status == "COMPLETE", data
        assert data[0].startswith("kpack local runner: WARNING: no sandbox (KPACK_SANDBOX=none)")
        assert "internet off run WITH network access" in data[0]
        copy = result.log_path.parent / "input" / "myds" / "data.txt"
        assert not stat.S_IMODE(copy.stat().st_mode) & 0o222
        if os.geteuid() != 0:  # root ignores permission bits
            assert f"write: {errno.EACCES}\n" in data
    assert (source / "data.txt").read_text() == "hello"
    warnings = [r.getMessage() for r in caplog.records if "no sandbox" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once in the server log, not per run


def test_kernel_runs_on_this_python(tmp_path):
    script = kernel(tmp_path, "import sys; print(sys.version_info[:2])\n")
    result = run_kernel(script, tmp_path / "run", [], enable_internet=False, timeout_s=60)
    assert f"{tuple(sys.version_info[:2])}\n" in [e["data"] for e in log_entries(result.log_path)]
