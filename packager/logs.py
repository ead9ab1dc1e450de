"""A kernel's log as plain text: `kpack logs KIND|REF [-f]`, the newest line while push/watch wait, the failing line.

Kaggle serves a session's log in ListKernelSessionOutput's `log`: a JSON array of {"stream_name": "stdout" |
"stderr", "time": seconds since the session started, "data": one line}, filled while the kernel runs (a running
one's array may lack its closing `]`). Decoded, it is the lines of both streams in the order they came. The
kaggle client 2.2.4 has `kernels_logs`, but it names no version (it answers for the kernel's latest) and its
stream endpoint is a separate service: kpack asks ListKernelSessionOutput for the version itself (one small
page), which the local Kaggle serves the same way.
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass

from packager import kaggle_api, progress
from packager.errors import env_number

FOLLOW_EVERY_S = env_number("KPACK_LOG_EVERY_S", 20.0)  # how often a running kernel's log is fetched
LINE_MAX = 200


@dataclass
class Entry:
    stream: str
    time: float | None
    data: str


def decode(raw: str | None) -> list[Entry]:
    """The entries of a raw log; a log that is not Kaggle's JSON is taken as plain stdout lines."""
    text = (raw or "").strip()
    if not text:
        return []
    try:
        items = json.loads(text if text.endswith("]") else text + "]")
    except ValueError:
        try:  # cut inside an entry: keep the whole ones
            items = json.loads(text[:text.rfind("\n,")] + "]") if "\n," in text else None
        except ValueError:
            items = None
    if not isinstance(items, list):
        return [Entry("stdout", None, line + "\n") for line in text.splitlines()]
    entries = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("data"), str):
            moment = item.get("time")
            entries.append(Entry(str(item.get("stream_name") or "stdout"),
                                 float(moment) if isinstance(moment, (int, float)) else None, item["data"]))
    return entries


def plain(entries: list[Entry]) -> str:
    text = "".join(e.data if e.data.endswith("\n") else e.data + "\n" for e in entries)
    return text


RUNNER_LINE = "kpack local runner: "  # the local Kaggle's own line at a log's top (localkaggle/runner.OWN_LINE)


def newest_line(entries: list[Entry]) -> Entry | None:
    """The kernel's newest line with something in it (of a tqdm-style line redrawn with carriage returns, its
    last part); the local runner's own line is not the kernel's."""
    for entry in reversed(entries):
        line = entry.data.rstrip("\n").split("\r")[-1].strip()
        if line and not line.startswith(RUNNER_LINE):
            return Entry(entry.stream, entry.time, line[:LINE_MAX])
    return None


_TRACE_END = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Warning)?(: .*)?$")


def failing_line(entries: list[Entry] | str | None) -> str:
    """The one line that says why a kernel failed: the kit's last `[kpack] error:` line, else the final line of
    the last traceback, else the last stderr line; "" when the log says nothing."""
    if not isinstance(entries, list):
        entries = decode(entries)
    lines = [(e.stream, e.data.rstrip("\n").strip()) for e in entries]
    for _, line in reversed(lines):
        if "[kpack] error:" in line:
            return line[line.index("[kpack] error:"):][:LINE_MAX * 2]
    # Tracebacks go to stderr; stdout is block-buffered and may land after them, so only stderr lines count.
    last_trace = max((i for i, (stream, line) in enumerate(lines)
                      if stream == "stderr" and line.startswith("Traceback (most recent call last)")), default=None)
    if last_trace is not None:  # its final line is the exception: the last one after it that looks like one
        ends = [line for stream, line in lines[last_trace + 1:] if stream == "stderr" and line
                and _TRACE_END.match(line) and not line.startswith(("File ", "Traceback", "During handling"))]
        if ends:
            return ends[-1][:LINE_MAX * 2]
    errs = [line for stream, line in lines if stream == "stderr" and line]
    return errs[-1][:LINE_MAX * 2] if errs else ""


def fetch(api, ref) -> str:
    """The raw log of ref.version (one page of its output list: the log rides on every page)."""
    from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

    request = ApiListKernelSessionOutputRequest()
    request.user_name, request.kernel_slug = ref.owner, ref.slug
    request.version_label = kaggle_api.version_label(ref.version)
    request.page_size = 1
    response = kaggle_api.rpc(api, f"log of {ref}", "kernels.kernels_api_client", "list_kernel_session_output",
                              request)
    return response.log or ""


def progress_line(entry: Entry, session_s: float | None = None) -> str:
    """`<line> [<t> into the session, <left> left]` (the times when the log has them)."""
    if entry.time is None:
        return entry.data
    left = f", {progress.duration(session_s - entry.time)} left" if session_s else ""
    return f"{entry.data}  [{progress.duration(entry.time)} into the session{left}]"


class Tail:
    """The newest line of a running kernel's log, fetched at most every FOLLOW_EVERY_S seconds; a failed fetch
    is skipped quietly (the status poll says what matters)."""

    def __init__(self, api, ref, session_s: float | None = None, every_s: float | None = None):
        self.api, self.ref, self.session_s = api, ref, session_s
        self.every_s = FOLLOW_EVERY_S if every_s is None else every_s
        self.fetched_at, self.last = None, None

    def poll(self) -> str | None:
        """A line to print when it is time to look and the newest line changed; else None."""
        now = time.monotonic()
        if self.fetched_at is not None and now - self.fetched_at < self.every_s:
            return None
        self.fetched_at = now
        try:
            entry = newest_line(decode(fetch(self.api, self.ref)))
        except Exception:  # noqa: BLE001 - showing the log is a courtesy, never a reason to stop watching
            return None
        if entry is None or (entry.data, entry.time) == self.last:
            return None
        self.last = (entry.data, entry.time)
        return progress_line(entry, self.session_s)


def show(cfg, kernel: str, follow: bool = False, out=None) -> str:
    """`kpack logs KIND|REF [-f]`: print the log as plain text; with follow, go on printing new lines until the
    kernel ends. Returns the kernel's status."""
    from rich.console import Console

    from packager import watch

    out = out or sys.stdout
    api = kaggle_api.connect(cfg)
    ref = watch.resolve(cfg, kernel)
    if ref.version is None:
        ref.version = watch.latest_version(api, ref)
    printed, delay = 0, watch.POLL_MIN_S
    outage = watch.Outage(progress.Wait(str(ref), "the log", Console(file=sys.stderr)))  # stdout: the log only
    while True:
        try:
            status, _ = watch.status_of(api, ref)  # before the log: a log read after the end is the whole log
            entries = decode(fetch(api, ref))
        except kaggle_api.KaggleCallError as err:
            if not follow:
                raise
            outage.failed(err)
            kaggle_api.sleep(FOLLOW_EVERY_S)
            continue
        outage.reached()
        out.write(plain(entries[printed:]))
        out.flush()
        printed = max(printed, len(entries))
        if not follow or status in watch.TERMINAL:
            if follow:
                print(f"{ref}: {status}", file=out, flush=True)
            return status
        kaggle_api.sleep(delay)
        delay = min(FOLLOW_EVERY_S, delay * 1.5)
