"""`kpack logs` on the local Kaggle (a finished and a running kernel, followed to its end), the newest log line
while `kpack push` waits, the decoded log beside the raw one, and the one line that says why a kernel failed."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from packager import logs
from packager.push import push_kernel
from pushkit import project  # noqa: F401 (project: a fixture)

KPACK = str(Path(sys.executable).parent / "kpack")

CHATTY_ENTRY = '''import sys
import time


def main(config):
    print("starting", flush=True)
    print("a warning on stderr", file=sys.stderr, flush=True)
    for epoch in (1, 2, 3):
        time.sleep({sleep})
        print(f"[kpack] epoch {{epoch}}/3 step {{epoch * 10}}/30 loss {{1 / epoch:.4f}} lr 1.00e-03 50 img/s", flush=True)
    print("finished", flush=True)
'''


def test_decode_keeps_both_streams_in_order_and_copes_with_a_running_log():
    raw = ('[{"stream_name":"stdout","time":0.1,"data":"one\\n"}\n,{"stream_name":"stderr","time":0.2,"data":"two\\n"}'
           '\n,{"stream_name":"stdout","time":0.3,"data":"thr')  # still being written: cut inside an entry
    entries = logs.decode(raw)
    assert [(e.stream, e.data) for e in entries] == [("stdout", "one\n"), ("stderr", "two\n")]
    assert logs.plain(entries) == "one\ntwo\n"
    assert logs.decode("not json at all\nsecond") [1].data == "second\n"
    assert logs.newest_line(logs.decode('[{"stream_name":"stdout","time":5,"data":"10%\\r50%\\r90%\\n"}]')).data == "90%"
    from packager.localkaggle.runner import OWN_LINE

    assert logs.RUNNER_LINE == OWN_LINE


def test_the_failing_line_is_the_kits_error_or_the_last_tracebacks_end():
    def log(*lines, stream="stderr"):
        return json.dumps([{"stream_name": stream, "time": i, "data": line + "\n"} for i, line in enumerate(lines)])

    trace = log("Traceback (most recent call last):", '  File "/kaggle/src/script.py", line 3, in <module>',
                "    main()", "ValueError: first", "", "During handling of the above exception, another occurred:",
                "", "Traceback (most recent call last):", '  File "x.py", line 9, in main', "    raise",
                "RuntimeError: the model diverged (loss is nan)")
    assert logs.failing_line(trace) == "RuntimeError: the model diverged (loss is nan)"
    # stdout is block-buffered: a line printed before the failure can land after the traceback in the log
    late = json.dumps(json.loads(trace) + [{"stream_name": "stdout", "time": 99, "data": "x" * 300 + "\n"}])
    assert logs.failing_line(late) == "RuntimeError: the model diverged (loss is nan)"
    kit = log("[kpack] epoch 1/3 step 2/9 loss 0.5", "[kpack] error: kit.optim.lr: expected a number > 0, got -1",
              stream="stdout")
    assert logs.failing_line(kit) == "[kpack] error: kit.optim.lr: expected a number > 0, got -1"
    assert logs.failing_line(log("just this on stderr")) == "just this on stderr"
    assert logs.failing_line("") == ""


def test_kpack_logs_of_a_finished_kernel_is_plain_text(project, local_kaggle):
    project.write_entry(CHATTY_ENTRY.format(sleep=0))
    version = push_kernel(project.cfg(), "train", wait=False).ref.version
    local_kaggle.wait_kernel("alice", project.train_slug, version)
    done = subprocess.run([KPACK, "logs", "train"], cwd=project.root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "starting" in lines and "a warning on stderr" in lines and lines[-1] == "finished"
    assert lines.index("starting") < lines.index("[kpack] epoch 1/3 step 10/30 loss 1.0000 lr 1.00e-03 50 img/s")
    assert not any(line.lstrip().startswith(("[{", ",{", '{"stream_name"')) for line in lines)  # decoded


def test_kpack_logs_follows_a_running_kernel_to_its_end(project, local_kaggle, monkeypatch):
    project.write_entry(CHATTY_ENTRY.format(sleep=1.5))
    version = push_kernel(project.cfg(), "train", wait=False).ref.version
    local_kaggle.wait_kernel("alice", project.train_slug, version, until=("RUNNING",), timeout=60)
    started = time.monotonic()
    follow = subprocess.Popen([KPACK, "logs", "train", "-f"], cwd=project.root, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ,
                                                                      "KPACK_LOG_EVERY_S": "0.5"})
    seen = []  # (seconds after start, line) as they arrive
    reader = threading.Thread(target=lambda: seen.extend((time.monotonic() - started, line.rstrip("\n"))
                                                         for line in follow.stdout))
    reader.start()
    assert follow.wait(timeout=120) == 0, follow.stderr.read()
    reader.join()
    lines = [line for _, line in seen]
    assert lines[-1] == f"alice/{project.train_slug} v{version}: COMPLETE", lines
    assert "starting" in lines and "finished" in lines and len(lines) == len(set(lines))  # each line once
    first, last = (next(t for t, line in seen if "epoch 1/3" in line), next(t for t, line in seen if line == "finished"))
    assert last - first >= 2.0  # printed as the kernel went, not all at the end


def test_push_shows_the_newest_log_line_while_it_waits_and_keeps_the_decoded_log(project, monkeypatch, capsys):
    monkeypatch.setattr(logs, "FOLLOW_EVERY_S", 0.3)
    project.write_entry(CHATTY_ENTRY.format(sleep=1.5))
    result = push_kernel(project.cfg(), "train", wait=True)
    out = capsys.readouterr().out
    ref = f"alice/{project.train_slug} v{result.ref.version}"
    shown = [line for line in out.splitlines() if line.startswith(f"{ref}: log: ")]
    assert any("[kpack] epoch 1/3 step 10/30 loss 1.0000" in line for line in shown), out
    assert all(re.search(r"\[[\dhms]+ into the session, [\dhms]+ left\]$", line) for line in shown), shown
    assert len(shown) <= 6  # the newest line when it changed, not the whole log
    assert not any("kpack local runner" in line for line in shown)  # the kernel's lines, not the runner's
    assert f"{ref}: waiting for the kernel to end (" in out and f"{ref}: COMPLETE (after " in out
    text = (result.output / f"{project.train_slug}.txt").read_text()
    assert text.splitlines()[-1] == "finished" and "a warning on stderr" in text.splitlines()
    assert json.loads((result.output / f"{project.train_slug}.log").read_text())[0]["stream_name"]





def test_kpack_logs_follow_waits_out_kaggle_out_of_reach(project, local_kaggle):
    """A 503 spell longer than a call's retries: the follow says so on stderr and goes on, stdout stays the log."""
    project.write_entry(CHATTY_ENTRY.format(sleep=0.5))
    version = push_kernel(project.cfg(), "train", wait=False).ref.version
    local_kaggle.wait_kernel("alice", project.train_slug, version, until=("RUNNING",), timeout=60)
    local_kaggle.faults({"method": "GetKernelSessionStatus", "kind": "503", "times": 4})
    try:
        done = subprocess.run([KPACK, "logs", "train", "-f"], cwd=project.root, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "KPACK_LOG_EVERY_S": "0.5", "KPACK_RETRY_ATTEMPTS": "2",
                                                "KPACK_RETRY_BASE_S": "0.05"})
    finally:
        local_kaggle.clear_faults()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "finished" in lines and lines[-1] == f"alice/{project.train_slug} v{version}: COMPLETE", lines
    assert not any("Kaggle" in line for line in lines)
    assert f"alice/{project.train_slug} v{version}: waiting for the log (Kaggle out of reach: " in done.stderr
    assert "Kaggle answers again, after" in done.stderr
