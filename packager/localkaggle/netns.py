"""kpack's own sandbox (KPACK_SANDBOX=unshare, the fallback to bubblewrap): runs first inside fresh namespaces.

util-linux `unshare` makes a private mount and PID namespace (a user namespace too when not root, a network
namespace holding only loopback when internet is off) and runs this file there as pid 1:
`python -I -S netns.py PLAN.json`. Before any kernel code it builds the kernel's root on a tmpfs from the
plan's operations (sandbox.py lists them: the same root bubblewrap builds), mounts a fresh /proc, brings
loopback up when the network is cut, pivots into the root and makes `/` read-only. Then it forks the kernel,
which enters a user namespace of its own as uid 1000 (no capabilities, no new privileges) and execs the
kernel's interpreter. Pid 1 stays behind only to reap and to hand back the kernel's exit status (128+N
for a signal, as bubblewrap does); when it exits, the kernel sees every process of the sandbox killed.

Standard library only: it runs with `-I -S`, before any site-packages exist for it.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import platform
import signal
import socket
import struct
import sys
import warnings  # noqa: F401  (os.execvp imports it, and after the pivot the host's stdlib is out of sight)

# <sys/mount.h>
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = (
    32, 1024, 2048, 4096, 16384, 1 << 18, 1 << 21)
MNT_DETACH = 2
CLONE_NEWUSER = 0x10000000
PR_SET_NO_NEW_PRIVS = 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# statvfs f_flag bits that the kernel locks on a mount inherited into a user namespace: a read-only
# remount must repeat them or it fails with EPERM.
_LOCKED = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
           (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))
# <linux/sockios.h>, <net/if.h>
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, flags: int, fstype: str | None = None, data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(), fstype.encode() if fstype else None,
                       flags, data.encode() if data else None), f"mount {source or fstype or ''} on {target}")


def _remount_readonly(target: str) -> None:
    locked = os.statvfs(target).f_flag
    keep = 0
    for st_bit, ms_bit in _LOCKED:
        if locked & st_bit:
            keep |= ms_bit
    _mount(None, target, MS_BIND | MS_REMOUNT | MS_RDONLY | keep)


def bind_readonly(source: str, target: str) -> None:
    """Make `target` show `source`, read-only: writes below it fail with EROFS."""
    _mount(source, target, MS_BIND | MS_REC)
    _remount_readonly(target)


def loopback_up() -> None:
    """A fresh network namespace has `lo` down; Kaggle kernels without internet still have loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


# ------------------------------------------------------------------------------------ building the root

def _mount_point(target: str, is_dir: bool) -> None:
    if is_dir:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            open(target, "w").close()


def _devfs(target: str) -> None:
    """A minimal /dev: the usual character devices bound from the host, fd links, a private shm and pts."""
    os.makedirs(target, exist_ok=True)
    _mount("tmpfs", target, MS_NOSUID | MS_NOEXEC, "tmpfs", "mode=0755")
    for name in DEV_NODES:
        _mount_point(f"{target}/{name}", False)
        _mount(f"/dev/{name}", f"{target}/{name}", MS_BIND)
    for link, to in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                     ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):
        os.symlink(to, f"{target}/{link}")
    os.mkdir(f"{target}/shm")
    _mount("tmpfs", f"{target}/shm", MS_NOSUID | MS_NODEV, "tmpfs", "mode=1777")
    os.mkdir(f"{target}/pts")
    try:
        _mount("devpts", f"{target}/pts", MS_NOSUID | MS_NOEXEC, "devpts", "newinstance,ptmxmode=0666,mode=620")
    except OSError:
        pass  # no pseudo-terminals then; a batch kernel does not need one


def apply(root: str, op: list[str]) -> None:
    kind, *args = op
    if kind in ("ro", "rw", "dev"):
        source, dest = args
        target = root + dest
        _mount_point(target, os.path.isdir(source))
        if kind == "ro":
            bind_readonly(source, target)
        else:
            _mount(source, target, MS_BIND | (MS_REC if kind == "rw" else 0))
    elif kind == "symlink":
        to, link = args
        os.makedirs(os.path.dirname(root + link), exist_ok=True)
        os.symlink(to, root + link)
    elif kind == "proc":
        os.makedirs(root + args[0], exist_ok=True)
        _mount("proc", root + args[0], MS_NOSUID | MS_NODEV | MS_NOEXEC, "proc")
    elif kind == "devfs":
        _devfs(root + args[0])
    else:
        raise OSError(0, f"unknown sandbox operation {kind!r}")


def _pivot(root: str) -> None:
    """Make `root` the root of this mount namespace and drop the old one from sight."""
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(0, f"pivot_root: no syscall number known for {platform.machine()}")
    os.chdir(root)
    _check(_libc.syscall(number, b".", b"."), "pivot_root")  # the old root now lies on top of the new one
    _check(_libc.umount2(b".", MNT_DETACH), "umount the host's root")
    os.chdir("/")


def prepare(plan: dict) -> None:
    """Everything before the kernel starts: the root, the network, the pivot."""
    _mount(None, "/", MS_REC | MS_PRIVATE)  # nothing mounted here leaks back to the host
    root = plan["root"]
    _mount("tmpfs", root, MS_NOSUID | MS_NODEV, "tmpfs", "mode=0755")
    for op in plan["ops"]:
        apply(root, op)
    if plan.get("net_cut"):
        loopback_up()
    _pivot(root)
    _remount_readonly("/")


def _become_kernel_user(uid: int, gid: int) -> None:
    """A user namespace of the kernel's own, mapping it as `uid` onto this process's user: no capabilities
    survive the exec, and setuid programs grant nothing (no_new_privs)."""
    outer_uid, outer_gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER), "unshare a user namespace")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {outer_uid} 1"), ("gid_map", f"{gid} {outer_gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _start_kernel(plan: dict) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            _become_kernel_user(plan["uid"], plan["gid"])
            os.chdir(plan["cwd"])
            command = plan["command"]
            os.execvp(command[0], command)
        except OSError as exc:
            print(f"kpack local runner: sandbox setup failed: {exc}", file=sys.stderr, flush=True)
        os._exit(plan.get("setup_failed_code", 125))
    return pid


def main(argv: list[str]) -> None:
    # Pid 1: the runner signals the kernel itself; an ignored SIGTERM here keeps the sandbox up for its grace.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    with open(argv[1]) as f:
        plan = json.load(f)
    try:
        prepare(plan)
    except OSError as exc:
        print(f"kpack local runner: sandbox setup failed: {exc}", file=sys.stderr, flush=True)
        os._exit(plan.get("setup_failed_code", 125))
    kernel = _start_kernel(plan)
    while True:  # reap every orphan until the kernel itself ends
        pid, status = os.wait()
        if pid == kernel:
            code = os.waitstatus_to_exitcode(status)
            os._exit(128 - code if code < 0 else code)


if __name__ == "__main__":
    main(sys.argv)
