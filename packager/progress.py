"""What a long step is doing: transfer progress (uploads, downloads) and waits (a dataset, a session slot, a kernel).

In a terminal a transfer is a rich progress bar (bytes, rate, time left); otherwise (CI, a log file) it is plain
lines, one every KPACK_PROGRESS_EVERY_S seconds (30) or KPACK_PROGRESS_EVERY_PCT percent (25), whichever comes
first, once it has run KPACK_PROGRESS_QUIET_S seconds (3), and one when it ends: never a flood, and a transfer
over in a moment is one line. A wait prints what it waits for when it starts, each change of what
the server says, and how long it has waited every KPACK_WAIT_EVERY_S seconds (60), always in the same words.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from packager.errors import env_number

EVERY_S = env_number("KPACK_PROGRESS_EVERY_S", 30.0)
EVERY_PCT = env_number("KPACK_PROGRESS_EVERY_PCT", 25.0)
WAIT_EVERY_S = env_number("KPACK_WAIT_EVERY_S", 60.0)
QUIET_S = env_number("KPACK_PROGRESS_QUIET_S", 3.0)  # percent lines only for a transfer that takes a while
MIN_BYTES = env_number("KPACK_PROGRESS_MIN_BYTES", 1e6)  # smaller downloads go by without a bar


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def _console(console=None):
    from rich.console import Console

    return console if console is not None else Console(file=sys.stdout)


class Transfer:
    """One file going up or down: `update(nbytes)` as bytes move; a context manager (the end line on exit)."""

    def __init__(self, what: str, total: int | None, console=None, clock=time.monotonic):
        self.what, self.total, self.done, self.clock = what, total or None, 0, clock
        self.console = _console(console)
        self.started = self.last_at = clock()
        self.last_pct = 0.0
        self._bar = None

    def __enter__(self) -> "Transfer":
        if self.console.is_terminal:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total)
        return self

    def rate(self) -> float:
        return self.done / max(1e-6, self.clock() - self.started)

    def line(self) -> str:
        rate = self.rate()
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else None
            return (f"{self.what}: {100 * self.done / self.total:.0f}% ({size(self.done)} of {size(self.total)}, "
                    f"{size(rate)}/s" + (f", {duration(left)} left)" if left is not None else ")"))
        return f"{self.what}: {size(self.done)} ({size(rate)}/s)"

    def update(self, nbytes: int) -> None:
        self.done += nbytes
        if self._bar is not None:
            self._bar.update(self._task, advance=nbytes)
            return
        now = self.clock()
        pct = 100 * self.done / self.total if self.total else 0.0
        finished = self.total is not None and self.done >= self.total
        due = now - self.last_at >= EVERY_S or (self.total and pct - self.last_pct >= EVERY_PCT
                                                and now - self.started >= QUIET_S)
        if not finished and due:
            self.console.print(self.line(), markup=False, highlight=False, soft_wrap=True)
            self.last_at, self.last_pct = now, pct

    def __exit__(self, kind, *_) -> None:
        if self._bar is not None:
            self._bar.stop()
            return
        took = self.clock() - self.started
        state = "done" if kind is None else "stopped"
        self.console.print(f"{self.what}: {state}, {size(self.done)} in {duration(took)} ({size(self.rate())}/s)",
                           markup=False, highlight=False, soft_wrap=True)


class _ClientBar:
    """What the kaggle client's upload code needs of tqdm (a context manager with update(n)), fed to a Transfer."""

    def __init__(self, transfer: Transfer):
        self.transfer = transfer

    def __enter__(self):
        self.transfer.__enter__()
        return self

    def __exit__(self, *exc):
        self.transfer.__exit__(*exc)

    def update(self, n):
        self.transfer.update(int(n or 0))


def show_client_uploads(api, label: str = "upload") -> None:
    """Route the kaggle client's per-file upload progress (its tqdm bar in upload_complete, silenced by
    quiet=True) through a Transfer. The client builds that bar from its module's `tqdm` name, and upload_complete
    is the one place it does: it is swapped only while one of this api's uploads runs."""
    from kaggle.api import kaggle_api_extended as client

    original = api.upload_complete
    if getattr(original, "_kpack_progress", False):
        return

    def upload_complete(path, url, quiet, resume=False):
        name = f"{label} {os.path.basename(path)}"
        saved = client.tqdm
        client.tqdm = lambda total=None, **_: _ClientBar(Transfer(name, total))
        try:
            return original(path, url, quiet, resume)
        finally:
            client.tqdm = saved

    upload_complete._kpack_progress = True
    api.upload_complete = upload_complete


class Wait:
    """`subject` waiting for `thing`: `tick(state)` at each poll prints the first state, every change, and every
    `every_s` (KPACK_WAIT_EVERY_S) how long it has waited, always as
    `<subject>: waiting for <thing> (<state>, <time> so far[, <detail>])`."""

    def __init__(self, subject: str, thing: str, console=None, every_s: float | None = None, clock=time.monotonic):
        self.subject, self.thing, self.clock = subject, thing, clock
        self.console = _console(console)
        self.every_s = WAIT_EVERY_S if every_s is None else every_s
        self.started = clock()
        self.said_at, self.state = None, None

    def waited(self) -> float:
        return self.clock() - self.started

    def tick(self, state: str, detail: str = "") -> bool:
        """True when a line was printed."""
        now = self.clock()
        if state == self.state and self.said_at is not None and now - self.said_at < self.every_s:
            return False
        self.state, self.said_at = state, now
        self.say(f"waiting for {self.thing} ({state}, {duration(now - self.started)} so far"
                 + (f", {detail})" if detail else ")"))
        return True

    def said(self, state: str) -> None:
        """`state` was told another way just now: the next line is due in every_s."""
        self.state, self.said_at = state, self.clock()

    def say(self, text: str) -> None:
        self.console.print(f"{self.subject}: {text}", markup=False, highlight=False, soft_wrap=True)


@contextmanager
def transfer(what: str, total: int | None, console=None) -> Iterator[Transfer]:
    with Transfer(what, total, console) as t:
        yield t
