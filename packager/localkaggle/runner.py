"""The local Kaggle's kernel runner: one pushed script, run as Kaggle would run it.

Each run has a run root on the host; inside the sandbox the kernel sees it as `/kaggle` (KPACK_KAGGLE_ROOT
says so, and kernel code that names /kaggle/... runs unchanged):

    run_root/input/     inputs, read-only, in both layouts: input/<slug>/ and input/competitions/<slug>/,
                        input/datasets/<owner>/<slug>/, input/notebooks/<owner>/<slug>/
    run_root/working/   the kernel's cwd; what it leaves here is the version's output
    run_root/temp/      scratch, not saved
    run_root/kernel.log the log, in the form Kaggle serves it (see KernelLog); the kernel cannot see it
    run_root/.runner/   the run's interpreter (a throwaway venv over the local image), HOME, /tmp; removed after

The sandbox (sandbox.py: bubblewrap, else kpack's own namespaces in netns.py, chosen by KPACK_SANDBOX) gives
the kernel a root of the image's folders, read-only, these folders and a private /tmp, and nothing else of
the machine, as an unprivileged user; with internet off, a network namespace holding only loopback. Which
sandbox runs is said once in the server log and at the top of every kernel's log. Where none works, the
kernel runs on the host with inputs as read-only copies and the network open, and the warning says so.

The kernel's environment is built from nothing: no Kaggle credentials, proxies or secrets of the caller
leak in; only what Kaggle itself sets, KPACK_KAGGLE_ROOT, a few GPU settings, and the caller's `env`.
Its Python sees the local image (image.py) and whatever it pip-installs into its own throwaway venv.
The session limit and cancel stop the kernel: SIGTERM to its processes, a short grace, then SIGKILL of the
whole process group (and, in a sandbox, of its PID namespace).
"""
from __future__ import annotations

import codecs
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import venv
from dataclasses import dataclass
from pathlib import Path

from packager.fsutil import atomic_write_text
from packager.localkaggle import sandbox
from packager.localkaggle.image import image_site

log = logging.getLogger(__name__)

COMPLETE, ERROR, CANCELLED = "COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED"
# Kaggle's own wording for a code-competition rerun that ran out of time is "Notebook Timeout: Your
# submission notebook exceeded the allowed runtime."; for a plain session's failureMessage we found no
# verbatim example, so this keeps the "Notebook Timeout" tag and states the limit.
TIME_LIMIT_MESSAGE = "Notebook Timeout: the kernel ran longer than its session limit of {limit:g} seconds and was stopped"
EXCEPTION_MESSAGE = "Notebook Threw Exception: the kernel exited with code {code}"
SIGNAL_MESSAGE = "Notebook Threw Exception: the kernel was killed by {signal}"
KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL at the session limit or on cancel
LOG_NAME = "kernel.log"
SANDBOX = ".runner"
LINE_MAX = 1 << 16  # a log entry holds at most this many bytes of one line (tqdm's \r bars never end a line)
OWN_LINE = "kpack local runner: "  # how the runner's own lines in a kernel's log begin
# Host settings a kernel may see: which GPUs, and where the driver libraries are.
PASS_THROUGH = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "LD_LIBRARY_PATH", "TZ")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Mount:
    kind: str  # "competition" | "dataset" | "notebook" | "model"
    owner: str | None
    slug: str  # a model's: <model>/<framework>/<variation>/<version>
    source: Path


@dataclass
class RunResult:
    status: str  # COMPLETE | ERROR | CANCEL_ACKNOWLEDGED
    failure_message: str
    output_dir: Path
    log_path: Path
    seconds: float


def mount_targets(mount: Mount) -> list[Path]:
    """Where an input appears under input/, relative: the newer layout first, then the legacy one."""
    owner = mount.owner or "unknown"
    newer = {"competition": Path("competitions", mount.slug),
             "dataset": Path("datasets", owner, mount.slug),
             "notebook": Path("notebooks", owner, mount.slug),
             "model": Path("models", owner, mount.slug)}
    if mount.kind not in newer:
        raise ValueError(f"mount kind {mount.kind!r}: expected competition, dataset, notebook or model")
    return [newer[mount.kind], Path(mount.slug)]


def list_output(output_dir: Path) -> list[str]:
    """A version's output files: every regular file under working/, as relative POSIX paths (symlinks left out)."""
    return sorted(p.relative_to(output_dir).as_posix() for p in output_dir.rglob("*")
                  if p.is_file() and not p.is_symlink())


# ---------------------------------------------------------------------------------------------- the log

class KernelLog:
    """The kernel's log as Kaggle serves it (`ListKernelSessionOutput.log`, saved by `kaggle kernels output`
    as `<slug>.log`): a JSON array of {"stream_name": "stdout"|"stderr", "time": seconds since the session
    started, "data": one line with its newline}, one entry a line, each line after the first starting
    with ",". Entries are appended and flushed as they come, so a killed kernel or a crashed server still
    leaves everything up to the last line; `close()` rewrites the finished array atomically."""

    def __init__(self, path: Path, started: float):
        self.path, self.started = path, started
        self._entries: list[str] = []
        self._lock = threading.Lock()
        self._file = open(path, "w", encoding="utf-8")
        self._closed = False

    def add(self, stream_name: str, data: str, at: float | None = None) -> None:
        moment = (time.monotonic() if at is None else at) - self.started
        entry = json.dumps({"stream_name": stream_name, "time": round(max(moment, 0.0), 6), "data": data},
                           ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            if self._closed:  # a straggler's output after the run ended (see run_kernel's pump join)
                return
            self._file.write(("\n," if self._entries else "[") + entry)
            self._file.flush()
            self._entries.append(entry)

    def lines(self, stream_name: str) -> list[str]:
        with self._lock:
            return [e["data"] for e in map(json.loads, self._entries) if e["stream_name"] == stream_name]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._file.close()
            atomic_write_text(self.path, "[" + "\n,".join(self._entries) + "]")


def read_log(path: Path) -> str:
    """The log text to serve, finished or not: a run still going (or killed with the server) gets its `]`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "[]"
    return text if text.endswith("]") else (text or "[") + "]"


def _pump(stream_name: str, pipe, kernel_log: KernelLog) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    with pipe:
        for chunk in iter(lambda: pipe.readline(LINE_MAX), b""):
            text = decoder.decode(chunk)
            if text:
                kernel_log.add(stream_name, text)
    tail = decoder.decode(b"", final=True)
    if tail:
        kernel_log.add(stream_name, tail)


# ------------------------------------------------------------------------------ which sandbox runs

_announced: set[str] = set()


def _announce(kernel_log: KernelLog, mode: str, refused: list[str]) -> None:
    """Which sandbox runs: once in the server log, and at the top of every kernel's log."""
    if mode == "none":
        why = "; ".join(refused) or f"{sandbox.MODE_ENV}=none"
        message = (f"{OWN_LINE}WARNING: no sandbox ({why}): the kernel sees this machine's files, inputs are "
                   f"read-only copies, and kernels with internet off run WITH network access here")
    else:
        message = f"{OWN_LINE}sandbox {mode} ({sandbox.describe(mode)})"
    if message not in _announced:
        _announced.add(message)
        (log.warning if mode == "none" else log.info)(message)
    kernel_log.add("stderr", message + "\n", at=kernel_log.started)


# ------------------------------------------------------------------------------------------ the run

def _make_interpreter(venv_dir: Path, image: Path, inside: str) -> None:
    """A throwaway venv whose site-packages holds only a .pth naming the local image: the kernel imports the
    image's packages, and `pip install` lands in this venv (never in the tools' venv). `inside` is where the
    kernel sees the venv (its pip wrappers name that path)."""
    venv.EnvBuilder(symlinks=True, with_pip=False, clear=True).create(venv_dir)
    py = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (venv_dir / "lib" / py / "site-packages" / "_kpack_local_image.pth").write_text(f"{image}\n")
    for name in ("pip", "pip3"):  # `pip` must mean this venv's pip, not the system's
        wrapper = venv_dir / "bin" / name
        wrapper.write_text(f"#!{inside}/bin/python\nimport sys\nfrom pip._internal.cli.main import main\n"
                           f"sys.exit(main())\n")
        wrapper.chmod(0o755)


def kernel_environment(kaggle_root: str, home: str, venv_dir: str, extra: dict[str, str] | None,
                       tmpdir: str | None = None) -> dict[str, str]:
    """Built from nothing, so the caller's credentials (KAGGLE_KEY, tokens, proxies) never reach a kernel."""
    env = {
        "PATH": f"{venv_dir}/bin:{SYSTEM_PATH}",
        "HOME": home,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",  # lines reach the log when printed, as on Kaggle
        "PYTHONNOUSERSITE": "1",
        "KPACK_KAGGLE_ROOT": kaggle_root,
        "KAGGLE_KERNEL_RUN_TYPE": "Batch",
        "KAGGLE_URL_BASE": "https://www.kaggle.com",
        "KAGGLE_KERNEL_INTEGRATIONS": "",
    }
    if tmpdir:
        env["TMPDIR"] = tmpdir
    env.update({k: os.environ[k] for k in PASS_THROUGH if k in os.environ})
    env.update(extra or {})
    return env


def _make_writable_and_remove(path: Path) -> None:
    """rmtree that also takes read-only folders (the fallback's input copies)."""
    def retry(func, failed, _exc):
        os.chmod(os.path.dirname(failed), stat.S_IRWXU)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, stat.S_IRWXU)
        func(failed)
    if path.exists():
        shutil.rmtree(path, onerror=retry)


def _copy_readonly(source: Path, target: Path) -> None:
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    for root, _dirs, files in os.walk(target, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o444)
        os.chmod(root, 0o555)


def _group(pgid: int) -> list[int]:
    """The processes of a process group, from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def _kill_group(proc: subprocess.Popen, grace: float, spare_leader: bool) -> None:
    """SIGTERM the kernel's processes, wait `grace` for it to end, then SIGKILL its whole process group.
    `spare_leader`: the group's leader is the sandbox's own process (bwrap, unshare), which would take the
    sandbox down at once on SIGTERM: the kernel gets its grace as it would without a sandbox."""
    for pid in [p for p in _group(proc.pid) if p != proc.pid] if spare_leader else [-proc.pid]:
        try:
            os.kill(pid, signal.SIGTERM)  # a negative pid: the whole group
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30.0)
    except subprocess.TimeoutExpired:
        log.warning("kernel process %s did not end after SIGKILL", proc.pid)


def _failure(code: int, kernel_log: KernelLog) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return SIGNAL_MESSAGE.format(signal=name)
    message = EXCEPTION_MESSAGE.format(code=code)
    last = next((line.strip() for line in reversed(kernel_log.lines("stderr"))
                 if line.strip() and line.rstrip("\n") not in _announced), "")  # which sandbox ran is no cause
    return f"{message}: {last[:500]}" if last else message


def _exit_code(code: int, sandboxed: bool) -> int:
    """A sandbox hands back a kernel killed by signal N as exit code 128+N (bubblewrap and netns.py alike)."""
    if sandboxed and code > 128:
        try:
            return -signal.Signals(code - 128)
        except ValueError:
            pass
    return code


def run_kernel(script: Path, run_root: Path, mounts: list[Mount], enable_internet: bool, timeout_s: float,
               env: dict[str, str] | None = None, cancel: threading.Event | None = None) -> RunResult:
    """Run one script kernel to its end under `run_root`; never raises for the kernel's own failures."""
    run_root = Path(run_root).resolve()
    working, private = run_root / "working", run_root / SANDBOX
    for folder in (working, run_root / "input", run_root / "temp"):
        folder.mkdir(parents=True, exist_ok=True)
    _make_writable_and_remove(private)
    (private / "home").mkdir(parents=True)
    started = time.monotonic()
    kernel_log = KernelLog(run_root / LOG_NAME, started)

    def finish(status: str, message: str) -> RunResult:
        kernel_log.close()
        _make_writable_and_remove(private)
        return RunResult(status, message, working, kernel_log.path, time.monotonic() - started)

    try:
        mode, refused = sandbox.choose()
        _announce(kernel_log, mode, refused)
        command, kernel_env = _sandboxed_command(mode, Path(script).resolve(), run_root, mounts,
                                                 not enable_internet, env)
        proc = subprocess.Popen(command, cwd=working, env=kernel_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except (OSError, ValueError) as exc:
        message = f"the local runner could not start the kernel: {exc}"
        kernel_log.add("stderr", message + "\n")
        return finish(ERROR, message)

    pumps = [threading.Thread(target=_pump, args=(name, pipe, kernel_log), daemon=True)
             for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for pump in pumps:
        pump.start()
    outcome = _supervise(proc, started + timeout_s, cancel, spare_leader=mode != "none")
    for pump in pumps:
        pump.join(timeout=10)  # a child that left the process group can hold a pipe open: do not wait forever

    if outcome == CANCELLED:
        return finish(CANCELLED, "")
    if outcome == "timeout":
        message = TIME_LIMIT_MESSAGE.format(limit=timeout_s)
        kernel_log.add("stderr", message + "\n")
        return finish(ERROR, message)
    code = _exit_code(proc.returncode, mode != "none")
    if code == 0:
        return finish(COMPLETE, "")
    return finish(ERROR, _failure(code, kernel_log))


def _supervise(proc: subprocess.Popen, deadline: float, cancel: threading.Event | None,
               spare_leader: bool) -> str | None:
    """Wait for the kernel; at the deadline or on cancel kill it. Returns "timeout", CANCELLED, or None when
    it ended by itself (its leftover children are killed then too, as when Kaggle tears a session's
    container down)."""
    while proc.poll() is None:
        outcome = (CANCELLED if cancel is not None and cancel.is_set()
                   else "timeout" if time.monotonic() >= deadline else None)
        if outcome:
            _kill_group(proc, KILL_GRACE_S, spare_leader)
            return outcome
        time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return None


def _sandboxed_command(mode: str, script: Path, run_root: Path, mounts: list[Mount], net_cut: bool,
                       extra_env: dict[str, str] | None) -> tuple[list[str], dict[str, str]]:
    """The command that runs the kernel in `mode`'s sandbox, and the kernel's environment."""
    if script.suffix == ".ipynb":
        raise ValueError("the local runner runs script kernels only (kernel_type script, a .py file)")
    private = run_root / SANDBOX
    image = image_site()
    binds = _place_inputs(mounts, run_root / "input")
    venv_dir = private / "python"
    if mode == "none":
        _make_interpreter(venv_dir, image, str(venv_dir))
        for source, rel in binds:
            _copy_readonly(Path(source), run_root / "input" / rel)
        (private / "tmp").mkdir()
        return ([str(venv_dir / "bin" / "python"), str(script)],
                kernel_environment(str(run_root), str(private / "home"), str(venv_dir), extra_env,
                                   tmpdir=str(private / "tmp")))
    _make_interpreter(venv_dir, image, sandbox.VENV_INSIDE)
    ops = sandbox.root_ops(private, run_root, script, binds, image, venv_dir)
    command = [f"{sandbox.VENV_INSIDE}/bin/python", sandbox.SCRIPT_INSIDE]
    cwd = f"{sandbox.KAGGLE}/working"
    if mode == "bwrap":
        argv = sandbox.bwrap_command(ops, net_cut, cwd, command)
    else:
        argv = sandbox.unshare_command(sandbox.unshare_plan(ops, private, net_cut, cwd, command),
                                       private / "plan.json")
    return argv, kernel_environment(sandbox.KAGGLE, sandbox.HOME_INSIDE, sandbox.VENV_INSIDE, extra_env)


def _place_inputs(mounts: list[Mount], inputs: Path) -> list[tuple[str, str]]:
    """Create each input's mount points under input/ and pair each source with its place relative to input/.
    A legacy `input/<slug>` wanted by two inputs goes to the first (also when one lies inside the other: a
    dataset `x` and a model `x/pytorch/...`)."""
    binds, taken = [], set()
    for mount in mounts:
        source = Path(mount.source).resolve()
        if not source.is_dir():
            raise OSError(f"input {mount.kind} {mount.slug}: {source} is not a folder")
        for rel in mount_targets(mount):
            if any(rel == t or t in rel.parents or rel in t.parents for t in taken):
                continue
            taken.add(rel)
            (inputs / rel).mkdir(parents=True, exist_ok=True)
            binds.append((str(source), rel.as_posix()))
    return binds
