"""Transfer progress and waits: a rich bar in a terminal, sparse plain lines otherwise; the kaggle client's own
upload bar routed through it (a real dataset upload to the local Kaggle)."""
from __future__ import annotations

import io
import re

from rich.console import Console

from packager import progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_lines_every_quarter_and_a_final_line(monkeypatch):
    monkeypatch.setattr(progress, "EVERY_S", 1000.0)
    monkeypatch.setattr(progress, "EVERY_PCT", 25.0)
    buf, clock = io.StringIO(), Clock()
    console = Console(file=buf, force_terminal=False, width=200)
    with progress.Transfer("upload weights.bin", 100_000_000, console, clock=clock) as t:
        for _ in range(100):  # 100 updates of 1 MB, one second each
            clock.now += 1.0
            t.update(1_000_000)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4, lines  # 25%, 50%, 75%, then the end: never one line per chunk
    assert lines[0] == "upload weights.bin: 25% (25.0 MB of 100.0 MB, 1.0 MB/s, 1m15s left)"
    assert lines[-1] == "upload weights.bin: done, 100.0 MB in 1m40s (1.0 MB/s)"
    assert "\x1b[" not in buf.getvalue()  # no terminal codes in a log


def test_a_transfer_over_in_a_moment_is_one_line(monkeypatch):
    monkeypatch.setattr(progress, "EVERY_S", 30.0)
    monkeypatch.setattr(progress, "EVERY_PCT", 25.0)
    buf, clock = io.StringIO(), Clock()
    with progress.Transfer("download checkpoint.pt", 100_000_000, Console(file=buf, width=200), clock=clock) as t:
        for _ in range(100):  # 100 MB in a second: no percent lines, only the end
            clock.now += 0.01
            t.update(1_000_000)
    assert buf.getvalue().splitlines() == ["download checkpoint.pt: done, 100.0 MB in 1s (100.0 MB/s)"]


def test_plain_lines_every_n_seconds_for_a_slow_transfer(monkeypatch):
    monkeypatch.setattr(progress, "EVERY_S", 30.0)
    monkeypatch.setattr(progress, "EVERY_PCT", 50.0)
    buf, clock = io.StringIO(), Clock()
    with progress.Transfer("download model.pt", 1_000_000, Console(file=buf, width=200), clock=clock) as t:
        for _ in range(120):  # 2 minutes at 1 KB/s: 12% done
            clock.now += 1.0
            t.update(1000)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 5 and all(re.match(r"download model.pt: \d+% \(", line) for line in lines[:4]), lines
    assert "left)" in lines[0] and lines[-1].startswith("download model.pt: done, 120.0 KB in 2m00s")


def test_terminal_mode_draws_a_rich_bar_with_bytes_rate_and_time_left():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with progress.Transfer("upload weights.bin", 5_000_000, console) as t:
        for _ in range(5):
            t.update(1_000_000)
    out = buf.getvalue()
    assert "\x1b[" in out  # drawn with terminal codes
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert "upload weights.bin" in plain and "5.0/5.0 MB" in plain
    assert "━" in plain  # the bar itself
    assert re.search(r"\d+:\d\d:\d\d", plain)  # rich's time-left column


def test_a_wait_says_what_it_waits_for_and_how_long_without_flooding():
    buf, clock = io.StringIO(), Clock()
    wait = progress.Wait("dataset alice/w", "v2 to be ready", Console(file=buf, width=200), every_s=60, clock=clock)
    for second in range(200):
        clock.now = float(second)
        wait.tick("status processing" if second < 150 else "status ready-ish")
    lines = buf.getvalue().splitlines()
    assert lines == ["dataset alice/w: waiting for v2 to be ready (status processing, 0s so far)",
                     "dataset alice/w: waiting for v2 to be ready (status processing, 1m00s so far)",
                     "dataset alice/w: waiting for v2 to be ready (status processing, 2m00s so far)",
                     "dataset alice/w: waiting for v2 to be ready (status ready-ish, 2m30s so far)"]


def test_a_dataset_upload_through_the_kaggle_client_shows_its_progress(local_kaggle, tmp_path, monkeypatch, capsys):
    """kpack push uploads a 3 MB weights file with the client's quiet=True: its bytes still show, as lines."""
    from packager import kaggle_api
    from packager.push import push_kernel
    from pushkit import isolate, make_project

    isolate(monkeypatch, tmp_path)
    monkeypatch.setattr(progress, "EVERY_PCT", 50.0)
    project = make_project(tmp_path, local_kaggle, weights_kb=3000)
    monkeypatch.chdir(project.root)
    try:
        push_kernel(project.cfg(), "train", wait=False)
    finally:
        kaggle_api._restore_env()
    out = capsys.readouterr().out
    ref = f"dataset alice/{project.weights_slug}"
    lines = [line for line in out.splitlines() if line.startswith(f"{ref}: upload ")]
    for name, size in (("backbone.tiny.pth", "3.1 MB"), ("head.tiny.pth", "768.0 KB")):
        mine = [line for line in lines if line.startswith(f"{ref}: upload {name}: ")]
        assert 1 <= len(mine) <= 2, out  # at 50% steps: at most the half-way line and the end line
        assert re.fullmatch(rf"{ref}: upload {name}: done, {size} in \d+s \(.*/s\)", mine[-1]), out
    assert out.index(f"{ref}: upload backbone.tiny.pth: done") < out.index(f"{ref}: waiting for v1 to be ready")


BIG_OUTPUT_ENTRY = '''import os
from pathlib import Path


def main(config):
    work = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle") / "working"
    (work / "big.bin").write_bytes(os.urandom(3_000_000))
    (work / "small.txt").write_text("tiny")
'''


def test_an_output_download_shows_its_progress_and_small_files_go_by(local_kaggle, tmp_path, monkeypatch, capsys):
    from packager import kaggle_api
    from packager.push import push_kernel
    from pushkit import isolate, make_project

    isolate(monkeypatch, tmp_path)
    monkeypatch.setattr(progress, "EVERY_PCT", 50.0)
    project = make_project(tmp_path, local_kaggle, datasets=False)
    project.write_entry(BIG_OUTPUT_ENTRY)
    monkeypatch.chdir(project.root)
    try:
        result = push_kernel(project.cfg(), "train", wait=True)
    finally:
        kaggle_api._restore_env()
    out = capsys.readouterr().out
    ref = f"alice/{project.train_slug} v{result.ref.version}"
    lines = [line for line in out.splitlines() if line.startswith(f"{ref}: download ")]
    assert 1 <= len(lines) <= 2 and re.fullmatch(rf"{ref}: download big\.bin: done, 3\.0 MB in \d+s \(.*/s\)",
                                                 lines[-1]), out
    assert (result.output / "big.bin").stat().st_size == 3_000_000
