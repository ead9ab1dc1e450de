"""The kaggle client's resumable-upload cache never leaves a dataset stuck.

The client keeps one JSON per uploaded file in `$TMPDIR/.kaggle/uploads/` (the file's upload token) and deletes
them only when the whole call succeeds. A version whose answer was lost (a 500 after the server made it) leaves
tokens the server has already used; the client then resumes them on every later push, the server answers
"expired", and the file is dropped: every push failed with IncompleteUpload until the cache was deleted by hand.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import KAGGLE
from pushkit import isolate, make_project
from packager import kaggle_api


@pytest.fixture
def project(local_kaggle, tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    local_kaggle.clear_faults()
    proj = make_project(tmp_path, local_kaggle, weights_kb=60)
    monkeypatch.chdir(proj.root)
    yield proj
    kaggle_api._restore_env()
    local_kaggle.clear_faults()


def push(project):
    from packager.push import push_kernel

    return push_kernel(project.cfg(), "train", wait=False)


def upload_records(tmp_path: Path, project) -> list[str]:
    folder = tmp_path / "tmp" / ".kaggle" / "uploads"
    return sorted(p.name for p in folder.glob("*.json") if project.weights_slug in p.name) if folder.is_dir() else []


def versions_hold(project, *files: dict[str, bytes]) -> None:
    """Version i of the weights dataset holds files[i] (name -> bytes) among its files."""
    from packager.localkaggle.store import Store

    store = Store(project.server.root)
    assert project.dataset()["versions"] == list(range(1, len(files) + 1))
    for number, expected in enumerate(files, 1):
        folder = Path(store.dataset_version("alice", project.weights_slug, number)["files_dir"])
        for name, data in expected.items():
            assert (folder / name).read_bytes() == data, f"v{number} {name}"


def test_a_lost_version_answer_leaves_no_used_token_behind(project, local_kaggle, tmp_path):
    models = project.root / "models"
    push(project)
    (models / "backbone.tiny.pth").write_bytes(b"second" * 9000)
    local_kaggle.faults({"method": "CreateDatasetVersion", "kind": "500", "when": "after"})
    push(project)  # the version is made, its answer lost: kpack finds it and does not make another
    assert local_kaggle.stats()["faults_fired"].get("CreateDatasetVersion:500")
    assert upload_records(tmp_path, project) == []  # the client kept the used tokens; kpack dropped them

    (models / "head.tiny.pth").write_bytes(b"third" * 4000)  # backbone.tiny.pth unchanged: same upload request
    push(project)
    versions_hold(project, {}, {"backbone.tiny.pth": b"second" * 9000},
                  {"backbone.tiny.pth": b"second" * 9000, "head.tiny.pth": b"third" * 4000})
    assert [v["number"] for v in project.kernel_versions()] == [1, 2, 3]


def test_used_tokens_left_by_the_kaggle_cli_do_not_block_kpack(project, local_kaggle, tmp_path, capfd):
    """The unmodified CLI, run on kpack's build folder, loses the answer of its version (and exits with the
    500): its upload records stay. kpack's next push of that dataset starts those files afresh."""
    push(project)
    folder = Path("build") / "datasets" / project.weights_slug
    local_kaggle.faults({"method": "CreateDatasetVersion", "kind": "500", "when": "after"})
    import os

    done = subprocess.run([KAGGLE, "datasets", "version", "-p", str(folder), "-m", "by hand", "--dir-mode", "zip"],
                          env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "500" in done.stdout + done.stderr
    assert project.dataset()["versions"] == [1, 2]
    stale = upload_records(tmp_path, project)
    assert stale, "the client left no upload records: nothing to test"
    capfd.readouterr()

    (project.root / "models" / "head.tiny.pth").write_bytes(b"changed" * 3000)
    push(project)
    err = capfd.readouterr().err
    assert "did not finish uploading; starting" in err and "afresh" in err
    from packager.localkaggle.store import Store

    files = Path(Store(local_kaggle.root).dataset_version("alice", project.weights_slug, 3)["files_dir"])
    assert (files / "head.tiny.pth").read_bytes() == b"changed" * 3000
    assert (files / "backbone.tiny.pth").read_bytes() == (project.root / "models" / "backbone.tiny.pth").read_bytes()
    # kpack's own records are gone (the CLI also uploaded pushed.json, which kpack never sends: its record stays)
    assert [r for r in upload_records(tmp_path, project) if "pushed.json" not in r] == []
