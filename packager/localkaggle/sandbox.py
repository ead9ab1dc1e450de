"""The root a local kernel sees, and which sandbox gives it: bubblewrap, kpack's own namespaces, or none.

A Kaggle kernel sees its image, /kaggle and nothing of the user's machine; a local kernel sees the same:

    /usr /bin /sbin /lib*     the host's system folders, read-only (merged-/usr links stay links)
    /etc                      a few files only (loader cache, name service, TLS certificates, a passwd and
                              group naming the kernel's user); never /etc/shadow or the host's users
    /dev                      null, zero, full, random, urandom, tty, shm, pts, and the GPUs' nodes
    /proc, /sys               a fresh /proc of the kernel's own processes (a private PID namespace), its knobs
                              (/proc/sys ...) read-only and its views of host memory hidden; /sys read-only
    <python>, <image>         the interpreter and stdlib (sys.base_prefix), the local image's site farm and the
                              site-packages its links point into, read-only, at their host paths
    /opt/kpack/python         the run's throwaway venv: `pip install` lands here
    /kaggle/input             read-only, with every input read-only in both layouts
    /kaggle/working, /kaggle/temp   writable; working/ is the version's output
    /kaggle/src/script.py     the kernel's script, read-only (where Kaggle keeps it: our guess)
    /root (HOME), /tmp        private to the run, writable, thrown away with it

Nothing else of the host exists inside: no home, repository, other runs or host /tmp; `/` itself is read-only.
The kernel runs as uid 1000 in a user namespace of its own, without capabilities, in private PID, IPC and
UTS namespaces, and with internet off in a network namespace holding only loopback. KPACK_KAGGLE_ROOT is
/kaggle, so kernel code that names /kaggle/... runs unchanged.

KPACK_SANDBOX picks the sandbox:
    bwrap    bubblewrap (Debian's `bubblewrap`, the sandbox Flatpak uses; `make setup` installs it)
    unshare  kpack's own: util-linux `unshare` for the namespaces, netns.py builds the same root and pivots in
    none     no isolation: the host's files, inputs as read-only copies, the network open (a warning says so)
    unset    the first of bwrap, unshare that works here, else none
"""
from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from packager.localkaggle import netns
from packager.localkaggle.image import site_dirs

MODES = ("bwrap", "unshare", "none")
MODE_ENV = "KPACK_SANDBOX"
KAGGLE = "/kaggle"
VENV_INSIDE = "/opt/kpack/python"
HOME_INSIDE = "/root"  # Kaggle's HOME
SCRIPT_INSIDE = "/kaggle/src/script.py"
KERNEL_UID = KERNEL_GID = 1000
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_NAMES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "nsswitch.conf", "host.conf", "gai.conf", "resolv.conf",
             "protocols", "services", "localtime", "timezone", "ssl", "ca-certificates", "ca-certificates.conf",
             "alternatives", "mime.types", "fonts", "os-release", "debian_version", "mtab")
GPU_NODES = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri")
# As Docker does: /proc's knobs read-only, its windows on the host's memory and keys hidden. Where the
# server runs as root the kernel's user maps onto root outside, and without these it could write sysctls.
PROC_READ_ONLY = ("sys", "sysrq-trigger", "bus", "fs", "irq")
PROC_HIDDEN = ("kcore", "keys", "timer_list", "sched_debug", "latency_stats", "kmsg")
SETUP_FAILED = 125  # netns.py's exit code when the sandbox could not be set up
PASSWD = ("root:x:0:0:root:/root:/bin/bash\n"
          f"kaggle:x:{KERNEL_UID}:{KERNEL_GID}:kaggle:{HOME_INSIDE}:/bin/bash\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
GROUP = f"root:x:0:\nkaggle:x:{KERNEL_GID}:\nnogroup:x:65534:\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"

USE_USERNS = os.geteuid() != 0  # for `unshare`: root needs no outer user namespace; tests flip it
_lock = threading.Lock()
_probed: dict[tuple, str | None] = {}


# ------------------------------------------------------------------------------------------- the root
# A root is a list of operations, applied in order, that bwrap and netns.py both understand:
#   ["ro", src, dst]   bind read-only        ["rw", src, dst]   bind writable     ["dev", node, node]  a device
#   ["symlink", target, link]                ["proc", dst]  a fresh /proc     ["devfs", dst]  a minimal /dev

def _system_ops() -> list[list[str]]:
    ops = []
    for name in SYSTEM_DIRS:
        path = Path("/", name)
        if path.is_symlink():
            ops.append(["symlink", os.readlink(path), str(path)])
        elif path.is_dir():
            ops.append(["ro", str(path), str(path)])
    for name in ETC_NAMES:
        path = Path("/etc", name)
        if path.is_symlink():
            ops.append(["symlink", os.readlink(path), str(path)])
        elif path.exists():
            ops.append(["ro", str(path), str(path)])
    ops += [["devfs", "/dev"], ["proc", "/proc"]]
    ops += [["ro", f"/proc/{name}", f"/proc/{name}"] for name in PROC_READ_ONLY if os.path.exists(f"/proc/{name}")]
    ops += [["ro", "/dev/null", f"/proc/{name}"] for name in PROC_HIDDEN if os.path.isfile(f"/proc/{name}")]
    ops += [["dev", node, node] for pattern in GPU_NODES for node in sorted(glob.glob(pattern))]
    if Path("/sys").is_dir():
        ops.append(["ro", "/sys", "/sys"])
    return ops


def _covered(path: str, ops: list[list[str]]) -> bool:
    """True when `path` already shows inside through a read-only bind of itself or a folder above it."""
    return any(op[0] == "ro" and op[1] == op[2] and (path == op[1] or path.startswith(op[1].rstrip("/") + "/"))
               for op in ops)


_targets_cache: dict[str, list[str]] = {}


def _link_folders(farm: Path) -> list[str]:
    """The folders the image farm's links point into: a site-packages folder whole rather than each of its
    ~200 packages (one mount instead of hundreds: 0.1-0.2 s less per kernel start). The packages the farm
    leaves out stay unimportable (they are not on sys.path), as they do without a sandbox. A farm never
    changes once built, so this is cached."""
    key = str(farm)
    if key not in _targets_cache:
        sites = [str(p.resolve()) for p in site_dirs()]
        found = set()
        for folder, dirs, files in os.walk(farm):
            for name in dirs + files:
                path = os.path.join(folder, name)
                if os.path.islink(path):
                    target = os.path.realpath(path)
                    found.add(next((s for s in sites if target.startswith(s + "/")), target))
        _targets_cache[key] = sorted(found)
    return _targets_cache[key]


def root_ops(private: Path, run_root: Path, script: Path, input_binds: list[tuple[str, str]], image: Path,
             venv_dir: Path) -> list[list[str]]:
    """The kernel's whole root. `private` holds the run's own HOME, /tmp and /etc files (made here);
    `input_binds` pairs each input's source with its place relative to input/."""
    etc = private / "etc"
    for folder in (etc, private / "home", private / "tmp"):
        folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("passwd", PASSWD), ("group", GROUP), ("hosts", HOSTS), ("hostname", "localhost\n")):
        (etc / name).write_text(text)
    ops = _system_ops()
    ops += [["ro", str(etc / name), f"/etc/{name}"] for name in ("passwd", "group", "hosts", "hostname")]
    ops += [["rw", str(private / "home"), HOME_INSIDE], ["rw", str(private / "tmp"), "/tmp"]]
    # The interpreter, the driver libraries' folders and the image, each at its host path (the venv's
    # pyvenv.cfg and the farm's links name them); only what is not shown already.
    wanted = [str(Path(sys.base_prefix).resolve())]
    wanted += [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and os.path.isdir(p)]
    wanted += [str(image)] + _link_folders(image)
    for path in wanted:
        if os.path.exists(path) and not _covered(path, ops):
            ops.append(["ro", path, path])
    ops.append(["rw", str(venv_dir), VENV_INSIDE])
    ops.append(["ro", str(run_root / "input"), f"{KAGGLE}/input"])
    ops += [["ro", source, f"{KAGGLE}/input/{rel}"] for source, rel in input_binds]
    ops += [["rw", str(run_root / "working"), f"{KAGGLE}/working"], ["rw", str(run_root / "temp"), f"{KAGGLE}/temp"],
            ["ro", str(script), SCRIPT_INSIDE]]
    return ops


# ----------------------------------------------------------------------------------- the two sandboxes

def bwrap_command(ops: list[list[str]], net_cut: bool, cwd: str, command: list[str]) -> list[str]:
    argv = ["bwrap", "--unshare-user", "--uid", str(KERNEL_UID), "--gid", str(KERNEL_GID), "--unshare-pid",
            "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent"]
    if net_cut:
        argv.append("--unshare-net")  # bwrap brings loopback up
    for kind, *args in ops:
        argv += {"ro": ["--ro-bind", *args], "rw": ["--bind", *args], "dev": ["--dev-bind", *args],
                 "symlink": ["--symlink", *args], "proc": ["--proc", *args], "devfs": ["--dev", *args]}[kind]
    if any(op == ["devfs", "/dev"] for op in ops):
        argv += ["--tmpfs", "/dev/shm"]
    return argv + ["--remount-ro", "/", "--chdir", cwd, "--", *command]


def unshare_command(plan: dict, plan_path: Path) -> list[str]:
    """util-linux `unshare` makes the namespaces; netns.py (pid 1 inside) builds the root, pivots into it and
    starts the kernel as uid 1000 in a user namespace of its own."""
    plan_path.write_text(json.dumps(plan))
    argv = ["unshare"] + (["--user", "--map-root-user"] if USE_USERNS else [])
    argv += ["--mount", "--pid", "--fork", "--kill-child"] + (["--net"] if plan.get("net_cut") else [])
    return argv + ["--", sys.executable, "-I", "-S", netns.__file__, str(plan_path)]


def unshare_plan(ops: list[list[str]], private: Path, net_cut: bool, cwd: str, command: list[str]) -> dict:
    (private / "root").mkdir(parents=True, exist_ok=True)
    return {"root": str(private / "root"), "ops": ops, "net_cut": net_cut, "cwd": cwd, "command": command,
            "uid": KERNEL_UID, "gid": KERNEL_GID, "setup_failed_code": SETUP_FAILED}


def _probe_ops(tmp: Path) -> list[list[str]]:
    (tmp / "rw").mkdir()
    return _system_ops() + [["rw", str(tmp / "rw"), "/kaggle/working"]]


def _try(mode: str) -> str | None:
    """None when `mode` gives this machine's kernels the whole sandbox (a real run of `true` in it), else why not."""
    tool = {"bwrap": "bwrap", "unshare": "unshare"}[mode]
    if shutil.which(tool) is None:
        return f"no `{tool}` on PATH" + (" (Debian: apt-get install bubblewrap)" if mode == "bwrap" else "")
    with tempfile.TemporaryDirectory(prefix="kpack-probe-") as tmp:
        tmp = Path(tmp)
        ops, command = _probe_ops(tmp), ["sh", "-c", "test \"$(id -u)\" = %d && touch /kaggle/working/ok" % KERNEL_UID]
        if mode == "bwrap":
            argv = bwrap_command(ops, True, "/kaggle/working", command)
        else:
            argv = unshare_command(unshare_plan(ops, tmp, True, "/kaggle/working", command), tmp / "plan.json")
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                  env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if done.returncode != 0 or not (tmp / "rw" / "ok").exists():
            return (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return None


def probe(mode: str) -> str | None:
    key = (mode, USE_USERNS)
    with _lock:
        if key not in _probed:
            _probed[key] = _try(mode)
        return _probed[key]


def choose() -> tuple[str, list[str]]:
    """The sandbox to use and, for the record, why each one tried before it did not work. An explicit
    KPACK_SANDBOX that does not work here is an error, not a silent downgrade."""
    wanted = os.environ.get(MODE_ENV, "").strip().lower()
    if wanted and wanted not in MODES:
        raise ValueError(f"{MODE_ENV}={wanted!r}: expected one of {', '.join(MODES)} (or unset: the best that works)")
    if wanted == "none":
        return "none", []
    refused = []
    for mode in ([wanted] if wanted else ["bwrap", "unshare"]):
        why = probe(mode)
        if why is None:
            return mode, refused
        refused.append(f"{mode}: {why}")
    if wanted:
        raise ValueError(f"{MODE_ENV}={wanted} does not work on this machine ({refused[0]}); unset it to use "
                         f"the best sandbox that does")
    return "none", refused


@functools.lru_cache(maxsize=None)
def describe(mode: str) -> str:
    if mode == "bwrap":
        try:
            version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            version = "bwrap"
        return f"{version or 'bwrap'}: the kernel sees the image, /kaggle and a private /tmp, as uid {KERNEL_UID}"
    if mode == "unshare":
        return (f"kpack's own namespaces (unshare + pivot_root): the kernel sees the image, /kaggle and a "
                f"private /tmp, as uid {KERNEL_UID}")
    return "none"
