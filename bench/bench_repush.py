"""Bytes uploaded by a re-push: the first push, an unchanged re-push (target 0), and a code-only change.

Their seconds are printed beside one sha256 pass over the weights, the least that a push which reads the
weights again would cost: an unchanged or code-only re-push reads none of them (the hash cache knows the
files, and the secrets scan reads only what goes up), so it should take a fraction of that pass once the
weights are large.

Runs on its own local Kaggle (a temporary root and a free port, stopped at the end) with a throwaway project:
a tiny kernel entry and a weights dataset of --mb megabytes of random bytes. The server's /_kpack/stats counts
every blob byte received. The wheels dataset is left out: building it needs a package index, and it goes
through the same create-or-version code path as the weights.

    .venv/bin/python bench/bench_repush.py [--mb 16]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ENTRY = '''import os
from pathlib import Path


def main(config):
    root = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle")
    (root / "working" / "hello.txt").write_text("hello from the bench kernel, revision {rev}\\n")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin(port: int, path: str, method: str = "GET") -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=b"{}" if method == "POST" else None)
    with opener.open(request, timeout=10) as response:
        return json.loads(response.read())


def make_project(root: Path, port: int, mb: int) -> None:
    (root / "kernel_src").mkdir(parents=True)
    (root / "kernel_src" / "__init__.py").write_text("")
    (root / "kernel_src" / "bench.py").write_text(ENTRY.format(rev=1))
    (root / "models").mkdir()
    (root / "models" / "backbone.bench.pth").write_bytes(os.urandom(mb << 20))
    (root / "kpack.yaml").write_text(
        "competition: bench-comp\nkaggle_user: bench\nbackend: local\n"
        f"local: {{port: {port}, root: .localkaggle}}\n"
        "kernels:\n  train: {entry: kernel_src/bench.py, accelerator: 'None', session_hours: 0.1}\n"
        "datasets:\n  weights: {slug: bench-comp-weights, dir: models}\n")


def push(port: int) -> tuple[int, int, float]:
    """(blob bytes uploaded, SaveKernel calls, seconds) of one `kpack push train --no-wait`."""
    from packager.config import load_config
    from packager.push import push_kernel

    admin(port, "/_kpack/stats/reset", "POST")
    start = time.monotonic()
    with redirect_stdout(StringIO()):
        push_kernel(load_config("kpack.yaml"), "train", wait=False)
    seconds = time.monotonic() - start
    stats = admin(port, "/_kpack/stats")
    return stats["uploaded_bytes"], stats["calls"].get("SaveKernel", 0), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=16, help="size of the weights dataset in MiB")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kpack-bench-"))
    port = free_port()
    os.chdir(work)
    make_project(work, port, args.mb)
    pid = None
    try:
        from packager.fsutil import file_sha256
        from packager.localkaggle.client_env import ensure_server

        ensure_server(work / ".localkaggle", port, "bench")
        pid = admin(port, "/_kpack/health").get("pid")
        first = push(port)
        start = time.monotonic()
        file_sha256(work / "models" / "backbone.bench.pth")
        one_read = time.monotonic() - start
        again = push(port)
        (work / "kernel_src" / "bench.py").write_text(ENTRY.format(rev=2))
        code_only = push(port)
    finally:
        if pid:
            os.kill(int(pid), signal.SIGTERM)
        from packager import kaggle_api

        kaggle_api._restore_env()
        shutil.rmtree(work, ignore_errors=True)
    print(f"re-push bench: weights dataset of {args.mb} MiB, local Kaggle")
    print(f"{'push':<22}{'dataset bytes':>16}{'kernel pushes':>15}{'seconds':>10}{'x one sha256 pass':>19}")
    for name, (sent, saves, secs) in (("first", first), ("unchanged re-push", again),
                                      ("code-only change", code_only)):
        print(f"{name:<22}{sent:>16,}{saves:>15}{secs:>10.2f}{secs / one_read:>19.2f}")
    print(f"{'(one sha256 pass)':<22}{'':>16}{'':>15}{one_read:>10.2f}{1:>19.2f}")
    ok = again[0] == 0 and code_only[0] == 0 and first[0] >= args.mb << 20
    print("target (unchanged and code-only re-push upload 0 dataset bytes):", "met" if ok else "MISSED")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
