"""Helpers for the push-pipeline tests: a throwaway project (tiny kernel entries, a small weights dataset)
pointed at the session's local Kaggle, and a Telegram stub.

Every project gets its own slugs (a per-test prefix), so tests share the one server without meeting.
"""
from __future__ import annotations

import itertools
import json
import os
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_counter = itertools.count(1)

# A kernel whose state.json says done only from its `sessions`-th session on: session k finds the states
# of the earlier sessions under its inputs (the previous session's output is a kernel source).
CHAIN_ENTRY = '''import json
import os
from pathlib import Path

SESSIONS = {sessions}
MARK = "{mark}"


def main(config):
    root = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle")
    inputs = root / "input"
    earlier = sorted(inputs.rglob("state.json")) if inputs.is_dir() else []
    session = 1 + max([json.loads(p.read_text())["session"] for p in earlier] or [0])
    work = root / "working"
    (work / "state.json").write_text(json.dumps({{"done": session >= SESSIONS, "session": session}}))
    (work / "metrics.json").write_text(json.dumps({{"cv_score": 0.5 + session / 100}}))
    (work / "sub").mkdir(exist_ok=True)
    (work / "sub" / "note.txt").write_text(MARK + "\\n")
    print("session", session, "saw", [str(p.relative_to(inputs)) for p in earlier])
'''

INFER_ENTRY = '''import os
from pathlib import Path


def main(config):
    root = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle")
    rows = ["id,attribute_ids", "a,1 2", "b,3", "c,4 5", "d,6"]
    (root / "working" / "submission.csv").write_text("\\n".join(rows) + "\\n")
'''

SOLUTION = "id,attribute_ids,Usage\na,1 2,Public\nb,3,Public\nc,4 5,Private\nd,7,Private\n"

FAIL_ENTRY = '''def main(config):
    raise RuntimeError("the model diverged (loss is nan)")
'''


class Project:
    def __init__(self, root: Path, server, prefix: str):
        self.root, self.server, self.prefix = root, server, prefix

    @property
    def train_slug(self) -> str:
        return f"{self.prefix}-train"

    @property
    def weights_slug(self) -> str:
        return f"{self.prefix}-weights"

    def write_entry(self, text: str, name: str = "entry.py") -> None:
        (self.root / "kernel_src" / name).write_text(text)

    def cfg(self, **changes):
        from packager.config import load_config

        cfg = load_config(self.root / "kpack.yaml")
        return cfg.model_copy(update=changes) if changes else cfg

    def kernel_versions(self, slug: str | None = None) -> list[dict]:
        from packager.localkaggle.store import Store

        store, slug = Store(self.server.root), slug or self.train_slug
        info = store.kernel("alice", slug)
        if not info:
            return []
        current = store.kernel_version("alice", slug)
        return [store.kernel_version("alice", slug, n) for n in range(1, current["number"] + 1)]

    def dataset(self) -> dict | None:
        from packager.localkaggle.store import Store

        return Store(self.server.root).dataset("alice", self.weights_slug)


def make_competition(server, slug: str, base: Path) -> None:
    """A tiny code competition on the local Kaggle (four test rows, two public, two private)."""
    from packager.localkaggle.store import Store

    data = base / "comp-data"
    data.mkdir(parents=True)
    (data / "sample_submission.csv").write_text("id,attribute_ids\na,0\nb,0\nc,0\nd,0\n")
    (base / "solution.csv").write_text(SOLUTION)
    Store(server.root).create_competition(slug, data, base / "solution.csv", code=True)


def make_project(base: Path, server, *, sessions: int = 1, weights_kb: int = 200, mark: str = "rev1",
                 datasets: bool = True, infer: bool = False) -> Project:
    prefix = f"t{os.getpid() % 10000}-{next(_counter)}"
    root = base / "project"
    (root / "kernel_src").mkdir(parents=True)
    (root / "kernel_src" / "__init__.py").write_text("")
    project = Project(root, server, prefix)
    project.write_entry(CHAIN_ENTRY.format(sessions=sessions, mark=mark))
    if infer:
        project.write_entry(INFER_ENTRY, "infer_entry.py")
        make_competition(server, f"{prefix}-comp", base)
    (root / "models").mkdir()
    (root / "models" / "backbone.tiny.pth").write_bytes(os.urandom(weights_kb * 1024))
    (root / "models" / "head.tiny.pth").write_bytes(os.urandom(weights_kb * 256))
    lines = [f"competition: {prefix}-comp", "kaggle_user: alice", "backend: local",
             f"local: {{port: {server.port}, root: '{server.root}'}}",
             "kernels:",
             f"  train: {{entry: kernel_src/entry.py, slug: {project.train_slug}, accelerator: 'None', "
             "session_hours: 0.02}",
             *([f"  infer: {{entry: kernel_src/infer_entry.py, slug: {prefix}-infer, accelerator: 'None', "
                "session_hours: 0.02}"] if infer else []),
             "notifications:", "  telegram: {token_env: T_TOKEN, chat_id_env: T_CHAT}"]
    if datasets:
        lines += ["datasets:", f"  weights: {{slug: {project.weights_slug}, dir: models}}"]
    (root / "kpack.yaml").write_text("\n".join(lines) + "\n")
    return project


class TelegramStub:
    """api.telegram.org on 127.0.0.1: records each sendMessage; with `.fail` set it answers 500."""

    def __init__(self):
        received = self.received = []
        self.fail = False
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append({"path": self.path, "body": json.loads(body or b"{}")})
                code, answer = (500, {"ok": False, "description": "boom"}) if stub.fail else (200, {"ok": True})
                payload = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self) -> list[str]:
        return [r["body"].get("text", "") for r in self.received]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def isolate(monkeypatch, tmp_path: Path) -> None:
    """A fresh HOME, TMPDIR and KAGGLE_CONFIG_DIR, no KAGGLE_* of the caller, fast polling and retries."""
    from packager import kaggle_api, watch

    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    (tmp_path / "tmp").mkdir()
    for key in list(os.environ):
        if key.startswith("KAGGLE_") or key.lower() in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.setattr(watch, "POLL_MIN_S", 0.2)
    monkeypatch.setattr(watch, "POLL_MAX_S", 1.0)
    monkeypatch.setattr(kaggle_api, "policy", kaggle_api.RetryPolicy(attempts=6, base_s=0.2, max_backoff_s=2))


@pytest.fixture
def project(local_kaggle, tmp_path, monkeypatch):
    """A pushed-kernel test's project without datasets, in its own HOME and TMPDIR (import it as a fixture)."""
    from packager import kaggle_api

    isolate(monkeypatch, tmp_path)
    local_kaggle.clear_faults()
    proj = make_project(tmp_path, local_kaggle, datasets=False)
    monkeypatch.chdir(proj.root)
    yield proj
    kaggle_api._restore_env()
