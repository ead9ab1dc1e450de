"""One process per GPU from inside a single-file kernel script: Kaggle's T4 x2 runs `python script.py`, no torchrun.

    result = launch.per_device(fn, *args)   # fn(*args) in each of N processes; rank 0's result returned

N is the setting kit.processes (`auto`, the default: one per visible GPU; or a number, e.g. 2 on a CPU for two
gloo processes), which the entry reads from the config before any process starts; the KPACK_PROCESSES
environment variable overrides it (tests, local runs). N == 1 (one GPU or none) calls fn in this process.

Why fork and not spawn: a spawned child re-imports the script as __mp_main__, which re-installs the packed
importer but not what bootstrap did (wheels on sys.path, decrypted weights) nor the session clock's start.
A forked child inherits all of it, including the clock's start (kernel_src/clock.py reads it at import), so
every rank counts the same session. Fork is only safe before CUDA is initialised in the parent: the GPUs are
counted through NVML (gpu_count), nothing before the launch touches CUDA, and a parent in which torch already
initialised CUDA is refused with one line.

Each child gets the torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), which the
kit's engine.Dist reads. When one child fails, the others are stopped and this process exits with the failing
child's code; the entries' one-line error is printed once (report_error: the first rank to claim it prints).
"""
from __future__ import annotations

import os
import socket
import sys
import tempfile
import time

PROCESSES_ENV = "KPACK_PROCESSES"
ERROR_FILE_ENV = "KPACK_ERROR_FILE"  # the launcher's marker: the first rank to create it prints its error line


def process_count(setting: str | int = "auto") -> int:
    """The processes to start: KPACK_PROCESSES when set, else `setting` (kit.processes, validated already)."""
    value = (os.environ.get(PROCESSES_ENV) or str(setting)).strip().lower()
    if value == "auto":
        return max(1, gpu_count())
    if not value.isdigit() or int(value) < 1:
        print(f"[kpack] error: {PROCESSES_ENV}={value!r}: use auto or a whole number of processes (1, 2, ...)",
              file=sys.stderr, flush=True)
        raise SystemExit(2)
    return int(value)


def gpu_count() -> int:
    """The GPUs this process may use, counted without initialising CUDA here (NVML), so forking stays safe;
    CUDA_VISIBLE_DEVICES is honoured. Where NVML cannot answer on a machine with GPUs: one process."""
    try:
        import torch
    except ImportError:
        return 0
    nvml = getattr(torch.cuda, "_device_count_nvml", None)  # torch.cuda.device_count's own fork-safe path
    count = nvml() if nvml is not None and torch.cuda._is_compiled() else -1
    if count >= 0:
        return count
    if not os.path.exists("/dev/nvidiactl"):
        return 0  # no NVIDIA driver: a CPU machine
    print(f"[kpack] note: the GPUs cannot be counted without initialising CUDA (NVML unavailable): one process; "
          "set kit.processes: N to start N", flush=True)
    return 1


def report_error(line: str) -> None:
    """Print an entry's one-line error, once over all ranks of a launch (always, outside one)."""
    marker = os.environ.get(ERROR_FILE_ENV)
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # another rank said it first
        except OSError:
            pass
    print(line, file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world: int, port: int, send, fn, args) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    result = fn(*args)
    if rank == 0:
        send.send(result)
    send.close()


def per_device(fn, *args, processes: int | None = None):
    world = processes or process_count()
    if world == 1 or os.environ.get("WORLD_SIZE"):  # one device, or already a rank (torchrun, or a child)
        return fn(*args)
    import multiprocessing

    try:
        import torch

        if torch.cuda.is_initialized():
            print("[kpack] error: CUDA was initialised before the processes were started; start them first "
                  "(or set kit.processes: 1)", file=sys.stderr, flush=True)
            raise SystemExit(2)
    except ImportError:
        pass
    ctx = multiprocessing.get_context("fork")
    port = _free_port()
    marker_dir = tempfile.mkdtemp(prefix="kpack-launch-")
    os.environ[ERROR_FILE_ENV] = os.path.join(marker_dir, "error")
    receive, send = ctx.Pipe(duplex=False)
    children = [ctx.Process(target=_child, args=(rank, world, port, send, fn, args), name=f"kpack-rank{rank}")
                for rank in range(world)]
    try:
        for child in children:
            child.start()
        send.close()
        print(f"[kpack] {world} processes (one per device), ranks 0-{world - 1}", flush=True)
        result, failed, ended = None, None, False
        while failed is None and any(c.exitcode is None for c in children):
            if not ended and receive.poll(0.2):
                try:
                    result = receive.recv()  # rank 0's result, sent before it exits
                except EOFError:
                    ended = True
            else:
                time.sleep(0.2)
            failed = next((c for c in children if c.exitcode not in (None, 0)), None)
        failed = failed or next((c for c in children if c.exitcode != 0), None)
        if failed is not None:
            _stop(children)
            code = failed.exitcode if failed.exitcode and failed.exitcode > 0 else 1
            if not os.path.exists(os.environ[ERROR_FILE_ENV]) and code != 1:
                print(f"[kpack] error: {failed.name} ended with exit code {failed.exitcode}", file=sys.stderr,
                      flush=True)
            raise SystemExit(code)
        if result is None and not ended and receive.poll(0):
            try:
                result = receive.recv()
            except EOFError:
                pass
        return result
    finally:
        _stop(children)
        os.environ.pop(ERROR_FILE_ENV, None)
        import shutil

        shutil.rmtree(marker_dir, ignore_errors=True)


def _stop(children) -> None:
    """SIGTERM the ones still running (a rank blocked in a collective never returns), then SIGKILL."""
    for c in children:
        if c.pid is not None and c.exitcode is None:
            c.terminate()
    deadline = time.monotonic() + 5
    for c in children:
        if c.pid is not None:
            c.join(max(0.0, deadline - time.monotonic()))
            if c.exitcode is None:
                c.kill()
                c.join()
