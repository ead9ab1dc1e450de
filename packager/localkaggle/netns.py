"""The kernel sandbox's bootstrap: runs first inside the fresh namespaces, then becomes the kernel.

`unshare` gives the kernel a private mount namespace (and, with internet off, a private network namespace
holding only loopback). This file runs there as `python -I -S netns.py PLAN.json`, before any kernel code:
it bind-mounts each input read-only at its place under the run root, remounts the host's package folders
read-only (a kernel cannot damage the tools' environment), brings loopback up when the network is cut, and
`exec`s the kernel's interpreter, so the kernel is this very process and dies with its process group.

Standard library only: it runs with `-I -S`, before any site-packages exist for it.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import socket
import struct
import sys

# <sys/mount.h>
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_RELATIME = 32, 1024, 2048, 4096, 16384, 1 << 21
# statvfs f_flag bits that the kernel locks on a mount inherited into a user namespace: a read-only
# remount must repeat them or it fails with EPERM.
_LOCKED = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
           (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))
# <linux/sockios.h>, <net/if.h>
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)


def _mount(source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source else None
    if _libc.mount(src, target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or ''} on {target}: {os.strerror(err)}")


def bind_readonly(source: str, target: str) -> None:
    """Make `target` show `source`, read-only: writes below it fail with EROFS."""
    _mount(source, target, MS_BIND | MS_REC)
    locked = os.statvfs(target).f_flag
    keep = 0
    for st_bit, ms_bit in _LOCKED:
        if locked & st_bit:
            keep |= ms_bit
    _mount(None, target, MS_BIND | MS_REMOUNT | MS_RDONLY | keep)


def loopback_up() -> None:
    """A fresh network namespace has `lo` down; Kaggle kernels without internet still have loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def prepare(plan: dict) -> None:
    """Everything but the exec: mounts, then the network."""
    for source, target in plan.get("binds", []):
        bind_readonly(source, target)
    for path in plan.get("protect", []):
        bind_readonly(path, path)
    if plan.get("net_cut"):
        loopback_up()


def main(argv: list[str]) -> None:
    with open(argv[1]) as f:
        plan = json.load(f)
    try:
        prepare(plan)
    except OSError as exc:
        # The runner's probe makes this rare; say what broke, in the kernel's log.
        print(f"kpack local runner: sandbox setup failed: {exc}", file=sys.stderr, flush=True)
        os._exit(plan.get("setup_failed_code", 125))
    if plan.get("probe"):
        return
    command = plan["command"]
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
