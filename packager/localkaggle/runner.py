"""The local Kaggle's kernel runner: one pushed script, run as Kaggle would run it.

A run root stands in for `/kaggle` (tests cannot write `/kaggle`; the kernel finds it in KPACK_KAGGLE_ROOT):

    run_root/input/     inputs, read-only, in both layouts: input/<slug>/ and input/competitions/<slug>/,
                        input/datasets/<owner>/<slug>/, input/notebooks/<owner>/<slug>/
    run_root/working/   the kernel's cwd; what it leaves here is the version's output
    run_root/temp/      scratch, not saved
    run_root/kernel.log the log, in the form Kaggle serves it (see KernelLog)
    run_root/.runner/   the run's interpreter (a throwaway venv over the local image), HOME; removed after

The kernel runs in a private mount namespace (`unshare`; a user namespace too when not root) where a
bootstrap (netns.py) bind-mounts each input read-only and the tools' own site-packages read-only too, and,
with internet off, in a private network namespace that holds only loopback: no host port, no DNS, nothing
outside. Where the OS refuses namespaces, inputs become read-only copies and the network stays open; the
runner says so once in the server log and at the top of each such kernel's log.

The kernel's environment is built from nothing: no Kaggle credentials, proxies or secrets of the caller
leak in; only what Kaggle itself sets, KPACK_KAGGLE_ROOT, a few GPU settings, and the caller's `env`.
Its Python sees the local image (image.py) and whatever it pip-installs into its own throwaway venv.
The session limit kills the whole process group: SIGTERM, a short grace, SIGKILL.
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
import tempfile
import threading
import time
import venv
from dataclasses import dataclass
from pathlib import Path

from packager.fsutil import atomic_write_text
from packager.localkaggle import netns
from packager.localkaggle.image import image_site, site_dirs

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
_SETUP_FAILED = 125  # netns.py's exit code when the sandbox could not be set up
# Host settings a kernel may see: which GPUs, and where the driver libraries are.
PASS_THROUGH = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "LD_LIBRARY_PATH", "TZ")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Mount:
    kind: str  # "competition" | "dataset" | "notebook"
    owner: str | None
    slug: str
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
             "notebook": Path("notebooks", owner, mount.slug)}
    if mount.kind not in newer:
        raise ValueError(f"mount kind {mount.kind!r}: expected competition, dataset or notebook")
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


# ------------------------------------------------------------------------------ what the OS will allow

_USE_USERNS = os.geteuid() != 0  # root needs no user namespace; tests set this to exercise that path too
_probe_lock = threading.Lock()
_probed: dict[tuple[bool, bool, bool], str | None] = {}
_warned: set[str] = set()


def _unshare(mount: bool, net: bool) -> list[str]:
    argv = ["unshare"] + (["--user", "--map-root-user"] if _USE_USERNS else [])
    return argv + (["--mount"] if mount else []) + (["--net"] if net else [])


def _bootstrap(plan_path: Path) -> list[str]:
    return [sys.executable, "-I", "-S", netns.__file__, str(plan_path)]


def _probe(mount: bool, net: bool) -> str | None:
    """None when a sandbox with these namespaces works here (a real bind mount and loopback), else why not."""
    key = (mount, net, _USE_USERNS)
    with _probe_lock:
        if key not in _probed:
            _probed[key] = _try_sandbox(mount, net)
        return _probed[key]


def _try_sandbox(mount: bool, net: bool) -> str | None:
    if shutil.which("unshare") is None:
        return "no `unshare` command (util-linux) on PATH"
    with tempfile.TemporaryDirectory(prefix="kpack-probe-") as tmp:
        src, dst = Path(tmp, "src"), Path(tmp, "dst")
        src.mkdir(), dst.mkdir()
        plan = {"binds": [[str(src), str(dst)]] if mount else [], "net_cut": net, "probe": True}
        Path(tmp, "plan.json").write_text(json.dumps(plan))
        try:
            done = subprocess.run(_unshare(mount, net) + _bootstrap(Path(tmp, "plan.json")),
                                  capture_output=True, text=True, timeout=60, env={"PATH": SYSTEM_PATH})
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if done.returncode != 0:
            return (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return None


def _warn_once(kernel_log: KernelLog, key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)
    kernel_log.add("stderr", message + "\n", at=kernel_log.started)


# ------------------------------------------------------------------------------------------ the run

def _make_interpreter(sandbox: Path, image: Path) -> Path:
    """A throwaway venv whose site-packages holds only a .pth naming the local image: the kernel imports the
    image's packages, and `pip install` lands in this venv (never in the tools' venv)."""
    env_dir = sandbox / "python"
    venv.EnvBuilder(symlinks=True, with_pip=False, clear=True).create(env_dir)
    py = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (env_dir / "lib" / py / "site-packages" / "_kpack_local_image.pth").write_text(f"{image}\n")
    python = env_dir / "bin" / "python"
    for name in ("pip", "pip3"):  # `pip` must mean this venv's pip, not the system's
        wrapper = env_dir / "bin" / name
        wrapper.write_text(f"#!{python}\nimport sys\nfrom pip._internal.cli.main import main\nsys.exit(main())\n")
        wrapper.chmod(0o755)
    return python


def kernel_environment(run_root: Path, sandbox: Path, extra: dict[str, str] | None) -> dict[str, str]:
    """Built from nothing, so the caller's credentials (KAGGLE_KEY, tokens, proxies) never reach a kernel."""
    env = {
        "PATH": f"{sandbox / 'python' / 'bin'}:{SYSTEM_PATH}",
        "HOME": str(sandbox / "home"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",  # lines reach the log when printed, as on Kaggle
        "PYTHONNOUSERSITE": "1",
        "KPACK_KAGGLE_ROOT": str(run_root),
        "KAGGLE_KERNEL_RUN_TYPE": "Batch",
        "KAGGLE_URL_BASE": "https://www.kaggle.com",
        "KAGGLE_KERNEL_INTEGRATIONS": "",
    }
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


def _kill_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the kernel's whole process group, wait `grace`, then SIGKILL whatever is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _failure(code: int, kernel_log: KernelLog) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return SIGNAL_MESSAGE.format(signal=name)
    message = EXCEPTION_MESSAGE.format(code=code)
    last = next((line.strip() for line in reversed(kernel_log.lines("stderr")) if line.strip()), "")
    return f"{message}: {last[:500]}" if last else message


def run_kernel(script: Path, run_root: Path, mounts: list[Mount], enable_internet: bool, timeout_s: float,
               env: dict[str, str] | None = None, cancel: threading.Event | None = None) -> RunResult:
    """Run one script kernel to its end under `run_root`; never raises for the kernel's own failures."""
    run_root = Path(run_root).resolve()
    working, sandbox = run_root / "working", run_root / SANDBOX
    for folder in (working, run_root / "input", run_root / "temp"):
        folder.mkdir(parents=True, exist_ok=True)
    _make_writable_and_remove(sandbox)
    (sandbox / "home").mkdir(parents=True)
    started = time.monotonic()
    kernel_log = KernelLog(run_root / LOG_NAME, started)

    def finish(status: str, message: str) -> RunResult:
        kernel_log.close()
        _make_writable_and_remove(sandbox)
        return RunResult(status, message, working, kernel_log.path, time.monotonic() - started)

    try:
        command = _sandboxed_command(Path(script).resolve(), run_root, mounts, not enable_internet, kernel_log)
        proc = subprocess.Popen(command, cwd=working, env=kernel_environment(run_root, sandbox, env),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except (OSError, ValueError) as exc:
        message = f"the local runner could not start the kernel: {exc}"
        kernel_log.add("stderr", message + "\n")
        return finish(ERROR, message)

    pumps = [threading.Thread(target=_pump, args=(name, pipe, kernel_log), daemon=True)
             for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for pump in pumps:
        pump.start()
    outcome = _supervise(proc, started + timeout_s, cancel)
    for pump in pumps:
        pump.join(timeout=10)  # a child that left the process group can hold a pipe open: do not wait forever

    if outcome == CANCELLED:
        return finish(CANCELLED, "")
    if outcome == "timeout":
        message = TIME_LIMIT_MESSAGE.format(limit=timeout_s)
        kernel_log.add("stderr", message + "\n")
        return finish(ERROR, message)
    if proc.returncode == 0:
        return finish(COMPLETE, "")
    return finish(ERROR, _failure(proc.returncode, kernel_log))


def _supervise(proc: subprocess.Popen, deadline: float, cancel: threading.Event | None) -> str | None:
    """Wait for the kernel; at the deadline or on cancel kill its process group. Returns "timeout",
    CANCELLED, or None when it ended by itself (its leftover children are killed then too, as when
    Kaggle tears a session's container down)."""
    while proc.poll() is None:
        outcome = (CANCELLED if cancel is not None and cancel.is_set()
                   else "timeout" if time.monotonic() >= deadline else None)
        if outcome:
            _kill_group(proc, KILL_GRACE_S)
            return outcome
        time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return None


def _sandboxed_command(script: Path, run_root: Path, mounts: list[Mount], net_cut: bool,
                       kernel_log: KernelLog) -> list[str]:
    """The kernel's interpreter and inputs, and the command that runs it in the namespaces this OS allows;
    where it allows none, inputs become read-only copies and the log says what is missing."""
    if script.suffix == ".ipynb":
        raise ValueError("the local runner runs script kernels only (kernel_type script, a .py file)")
    sandbox = run_root / SANDBOX
    image = image_site()
    command = [str(_make_interpreter(sandbox, image)), str(script)]
    binds = _place_inputs(mounts, run_root / "input")

    no_mount = _probe(mount=True, net=False)
    use_mount = no_mount is None
    no_net = _probe(mount=use_mount, net=True) if net_cut else None
    use_net = net_cut and no_net is None
    if not use_mount:
        _warn_once(kernel_log, "mount", f"kpack local runner: WARNING: this OS refused a private mount "
                   f"namespace ({no_mount}); inputs are read-only copies, not read-only mounts, and the "
                   f"tools' site-packages are not protected from the kernel")
        for source, target in binds:
            _copy_readonly(Path(source), Path(target))
    if net_cut and not use_net:
        _warn_once(kernel_log, "net", f"kpack local runner: WARNING: this OS refused a private network "
                   f"namespace ({no_net}); kernels with internet off run WITH network access here")
    if not (use_mount or use_net):
        return command
    plan = {"binds": binds if use_mount else [],
            "protect": [str(p) for p in site_dirs() + [image]] if use_mount else [],
            "net_cut": use_net, "command": command, "setup_failed_code": _SETUP_FAILED}
    plan_path = sandbox / "plan.json"
    plan_path.write_text(json.dumps(plan))
    return _unshare(use_mount, use_net) + _bootstrap(plan_path)


def _place_inputs(mounts: list[Mount], inputs: Path) -> list[list[str]]:
    """Create each input's mount points under input/ and pair them with their sources. A legacy
    `input/<slug>` wanted by two inputs goes to the first."""
    binds, taken = [], set()
    for mount in mounts:
        source = Path(mount.source).resolve()
        if not source.is_dir():
            raise OSError(f"input {mount.kind} {mount.slug}: {source} is not a folder")
        for rel in mount_targets(mount):
            if rel in taken:
                continue
            taken.add(rel)
            target = inputs / rel
            target.mkdir(parents=True, exist_ok=True)
            binds.append([str(source), str(target)])
    return binds
