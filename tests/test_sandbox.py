"""A local kernel sees only what a Kaggle kernel sees: the image, /kaggle and a private /tmp, in every sandbox.

One kernel per sandbox (bubblewrap, kpack's own unshare + pivot_root) tries to read and write what it must not
and what it must, and reports into working/report.json."""
from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from packager.localkaggle import runner, sandbox
from packager.localkaggle.image import image_site
from packager.localkaggle.runner import Mount, read_log, run_kernel
from test_runner import host_processes_running

REPO = Path(__file__).resolve().parents[1]
SANDBOXES = [pytest.param(mode, marks=pytest.mark.skipif(sandbox.probe(mode) is not None,
                                                         reason=f"{mode}: {sandbox.probe(mode)}"))
             for mode in ("bwrap", "unshare")]

PROBE = """
import errno, json, os, sys

def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))

def read(path):
    return lambda: open(path, "rb").read()

def write(path):
    return lambda: open(path, "w").write("x")

paths = json.loads(os.environ["PROBE_PATHS"])
report = {"read": {k: attempt(read(p)) for k, p in paths["read"].items()},
          "list": {k: sorted(os.listdir(p)) if os.path.isdir(p) else attempt(lambda p=p: os.listdir(p))
                   for k, p in paths["list"].items()},
          "write": {k: attempt(write(p)) for k, p in paths["write"].items()},
          "uid": os.getuid(), "home": os.path.expanduser("~")}
report["write"]["working"] = attempt(write("/kaggle/working/mine.txt"))
report["write"]["temp"] = attempt(write("/kaggle/temp/scratch.txt"))
report["write"]["private tmp"] = attempt(write("/tmp/private.txt"))
report["write"]["home"] = attempt(write(os.path.expanduser("~/.cache-probe")))
status = open("/proc/self/status").read()
report["cap_eff"] = next(l.split()[1] for l in status.splitlines() if l.startswith("CapEff"))
report["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
report["gpu_env"] = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")}
report["gpu_nodes"] = sorted(n for n in os.listdir("/dev") if n.startswith("nvidia"))
import numpy, torch
report["torch"] = torch.__version__
report["cuda"] = torch.cuda.is_available()
if report["cuda"]:
    report["cuda_sum"] = float((torch.ones(4, device="cuda") * 2).sum())
json.dump(report, open("/kaggle/working/report.json", "w"))
"""


@pytest.fixture(scope="module", params=SANDBOXES)
def probed(request, tmp_path_factory):
    """Run the probe kernel once per sandbox against a host with secrets lying about."""
    tmp = tmp_path_factory.mktemp(f"sandbox-{request.param}")
    (tmp / "other-run" / "working").mkdir(parents=True)  # another run of the same server
    (tmp / "other-run" / "working" / "model.pt").write_text("someone else's output")
    (tmp / "home" / ".kaggle").mkdir(parents=True)  # the user's real credentials, outside the kernel
    (tmp / "home" / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "secret"}')
    host_tmp = Path(tempfile.mkdtemp(prefix="kpack-host-tmp-", dir="/tmp"))
    (host_tmp / "upload.json").write_text("a kaggle client's upload cache")
    data = tmp / "src-data"
    data.mkdir()
    (data / "train.csv").write_text("id\n1\n")
    paths = {
        "read": {"repo": str(REPO / "pyproject.toml"), "other run": str(tmp / "other-run" / "working" / "model.pt"),
                 "shadow": "/etc/shadow", "kaggle.json": str(tmp / "home" / ".kaggle" / "kaggle.json"),
                 "host tmp": str(host_tmp / "upload.json"), "input": "/kaggle/input/myds/train.csv",
                 "image": str(image_site() / "numpy" / "__init__.py")},
        "list": {"repo": str(REPO), "host home": str(Path("~").expanduser()), "host tmp": str(host_tmp),
                 "runs": str(tmp)},
        "write": {"repo": str(REPO / "written-by-a-kernel.txt"), "host tmp": str(host_tmp / "written.txt"),
                  "input": "/kaggle/input/myds/new.csv", "input layout": "/kaggle/input/datasets/alice/myds/x",
                  "input root": "/kaggle/input/new.txt", "root": "/written.txt", "usr": "/usr/written.txt",
                  "etc": "/etc/passwd", "image": str(image_site() / "written.txt"), "kaggle": "/kaggle/new.txt",
                  "sysctl": "/proc/sys/vm/overcommit_memory"},  # a bad value: harmless even if it got through
    }
    script = tmp / "probe.py"
    script.write_text(PROBE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(sandbox.MODE_ENV, request.param)
        mp.setenv("HOME", str(tmp / "home"))
        mp.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "0"))
        result = run_kernel(script, tmp / "run", [Mount("dataset", "alice", "myds", data)], enable_internet=False,
                            timeout_s=300, env={"PROBE_PATHS": json.dumps(paths)})
    report_path = result.output_dir / "report.json"
    yield result, json.loads(report_path.read_text()) if report_path.exists() else None, host_tmp
    for leftover in (REPO / "written-by-a-kernel.txt",):
        leftover.unlink(missing_ok=True)
    for child in host_tmp.iterdir():
        child.unlink()
    host_tmp.rmdir()


def test_probe_kernel_completes(probed):
    result, report, _ = probed
    assert result.status == "COMPLETE", read_log(result.log_path)[-3000:]
    assert report is not None


def test_kernel_cannot_read_the_host(probed):
    _, report, _ = probed
    denied = {k: v for k, v in report["read"].items() if k not in ("input", "image")}
    assert set(denied.values()) == {"ENOENT"}, denied  # not "permission denied": they are not there at all
    listed = report["list"]
    assert listed["host tmp"] == listed["runs"] == "ENOENT", listed
    # The repository and the host's home show only the folders above what the image needs from them
    # (the venv's site-packages, the interpreter); none of their own files.
    assert not {"README.md", "kpack.yaml", "pyproject.toml", "packager", ".git"} & set(listed["repo"]), listed
    assert not (set(os.listdir(Path.home())) - {".pyenv"}) & set(listed["host home"]), listed


def test_kernel_reads_its_inputs_and_the_image(probed):
    _, report, _ = probed
    assert report["read"]["input"] == "ok" and report["read"]["image"] == "ok"
    assert report["torch"]


def test_kernel_cannot_write_outside_working_and_temp(probed):
    _, report, host_tmp = probed
    writable = {"working", "temp", "private tmp", "home"}
    if REPO.is_relative_to("/tmp"):  # a checkout under /tmp (a CI clone): the kernel's write lands in its private /tmp
        writable.add("repo")
    denied = {k: v for k, v in report["write"].items() if k not in writable}
    assert set(denied.values()) <= {"EROFS", "ENOENT", "EACCES"}, denied
    assert denied["input"] == denied["root"] == denied["usr"] == denied["etc"] == denied["sysctl"] == "EROFS"
    assert not (REPO / "written-by-a-kernel.txt").exists()
    assert sorted(p.name for p in host_tmp.iterdir()) == ["upload.json"]


def test_kernel_writes_working_temp_and_a_private_tmp(probed):
    result, report, _ = probed
    assert {k: report["write"][k] for k in ("working", "temp", "private tmp", "home")} == dict.fromkeys(
        ("working", "temp", "private tmp", "home"), "ok")
    run = result.log_path.parent
    assert (result.output_dir / "mine.txt").read_text() == "x", "the server reads the kernel's output"
    assert (run / "temp" / "scratch.txt").read_text() == "x"
    assert not Path("/tmp/private.txt").exists()
    assert not (run / runner.SANDBOX).exists(), "the private /tmp and HOME are thrown away with the run"


def test_kernel_is_an_unprivileged_user_alone_in_its_pid_namespace(probed):
    _, report, _ = probed
    assert report["uid"] == sandbox.KERNEL_UID and report["home"] == sandbox.HOME_INSIDE
    assert int(report["cap_eff"], 16) == 0
    assert report["pids"][0] == 1 and len(report["pids"]) <= 3, report["pids"]  # init, (bwrap's init), the kernel


def test_gpu_settings_pass_through(probed):
    _, report, _ = probed
    assert report["gpu_env"]["CUDA_VISIBLE_DEVICES"] == os.environ.get("CUDA_VISIBLE_DEVICES", "0")
    host_nodes = sorted(n for n in os.listdir("/dev") if n.startswith("nvidia"))
    assert report["gpu_nodes"] == host_nodes
    if Path("/dev/nvidiactl").exists():
        assert report["cuda"] and report.get("cuda_sum") == 8.0


def test_log_says_which_sandbox_runs(probed, request):
    result, _, _ = probed
    first = json.loads(read_log(result.log_path))[0]
    assert first["stream_name"] == "stderr" and first["time"] == 0
    assert first["data"].startswith(f"kpack local runner: sandbox {request.node.callspec.params['probed']} (")


# ------------------------------------------------------------------------------------ choosing the sandbox

def one_line(tmp: Path, body: str) -> Path:
    script = tmp / "k.py"
    script.write_text(textwrap.dedent(body))
    return script


def test_auto_falls_back_to_kpacks_own_when_bubblewrap_is_missing(tmp_path, monkeypatch, caplog):
    if sandbox.probe("unshare") is not None:
        pytest.skip(f"unshare: {sandbox.probe('unshare')}")
    monkeypatch.delenv(sandbox.MODE_ENV, raising=False)
    monkeypatch.setattr(sandbox, "_probed", {("bwrap", sandbox.USE_USERNS): "no `bwrap` on PATH"})
    monkeypatch.setattr(runner, "_announced", set())
    caplog.set_level(logging.INFO, logger=runner.__name__)
    results = [run_kernel(one_line(tmp_path, "print(open('/etc/passwd').read().count('kaggle'))\n"),
                          tmp_path / f"run{i}", [], enable_internet=False, timeout_s=60) for i in range(2)]
    for result in results:
        data = [e["data"] for e in json.loads(read_log(result.log_path))]
        assert result.status == "COMPLETE", data
        assert data[0].startswith("kpack local runner: sandbox unshare (") and "2\n" in data
    assert len([r for r in caplog.records if "sandbox unshare" in r.getMessage()]) == 1, "said once in the server log"


def test_a_requested_sandbox_that_does_not_work_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(sandbox.MODE_ENV, "bwrap")
    monkeypatch.setattr(sandbox, "_probed", {("bwrap", sandbox.USE_USERNS): "no `bwrap` on PATH"})
    result = run_kernel(one_line(tmp_path, "print('never')\n"), tmp_path / "run", [], enable_internet=False,
                        timeout_s=60)
    assert result.status == "ERROR"
    assert "KPACK_SANDBOX=bwrap does not work on this machine (bwrap: no `bwrap` on PATH)" in result.failure_message
    monkeypatch.setenv(sandbox.MODE_ENV, "docker")
    result = run_kernel(one_line(tmp_path, "print('never')\n"), tmp_path / "run2", [], enable_internet=False,
                        timeout_s=60)
    assert result.status == "ERROR" and "KPACK_SANDBOX='docker': expected one of bwrap, unshare, none" in \
        result.failure_message


@pytest.mark.parametrize("mode", SANDBOXES)
def test_a_kernel_killed_by_a_signal_is_named_so(tmp_path, monkeypatch, mode):
    monkeypatch.setenv(sandbox.MODE_ENV, mode)
    result = run_kernel(one_line(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"),
                        tmp_path / "run", [], enable_internet=False, timeout_s=60)
    assert result.failure_message == runner.SIGNAL_MESSAGE.format(signal="SIGKILL")
    result = run_kernel(one_line(tmp_path, "raise SystemExit(3)\n"), tmp_path / "run2", [], enable_internet=False,
                        timeout_s=60)
    assert result.failure_message == runner.EXCEPTION_MESSAGE.format(code=3), "the sandbox's line is not the cause"


@pytest.mark.parametrize("mode", SANDBOXES)
def test_a_child_that_left_the_process_group_dies_with_the_sandbox(tmp_path, monkeypatch, mode):
    monkeypatch.setenv(sandbox.MODE_ENV, mode)
    marker = f"{os.getpid()}.{errno.EEXIST}5"
    result = run_kernel(one_line(tmp_path, f"""
        import subprocess
        subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
        print("left behind")
    """), tmp_path / "run", [], enable_internet=False, timeout_s=60)
    assert result.status == "COMPLETE"
    deadline = time.monotonic() + 5
    while host_processes_running(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host_processes_running(marker) == []


def test_without_a_sandbox_a_silent_failure_is_not_blamed_on_the_warning(tmp_path, monkeypatch):
    monkeypatch.setenv(sandbox.MODE_ENV, "none")
    result = run_kernel(one_line(tmp_path, "raise SystemExit(4)\n"), tmp_path / "run", [], enable_internet=False,
                        timeout_s=60)
    assert result.failure_message == runner.EXCEPTION_MESSAGE.format(code=4)
