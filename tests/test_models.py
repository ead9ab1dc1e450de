"""Kaggle Models: the unmodified `kaggle models ...` CLI against the local Kaggle, kpack publishing models/ as a
model instance (unchanged content uploads nothing, a changed file makes a new version), and kernels that mount
model sources in both layouts (an unknown source is answered invalid)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import USER

MODEL_SLUG_COUNTER = iter(range(1, 10_000))


def _model_slug() -> str:
    return f"m{os.getpid() % 10000}-{next(MODEL_SLUG_COUNTER)}"


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _create_model_with_cli(run_kaggle, folder: Path, slug: str, files: dict[str, bytes]) -> None:
    """kaggle models create, then kaggle models instances create (framework PyTorch, variation 'base') of
    `files` (relative names: a sub-folder goes up with --dir-mode zip)."""
    folder.mkdir(parents=True)
    _write(folder / "model-metadata.json", {"ownerSlug": USER, "slug": slug, "title": f"Model {slug}",
                                            "isPrivate": True, "description": "a test model"})
    done = run_kaggle("models", "create", "-p", str(folder))
    assert done.returncode == 0 and "Your model was created" in done.stdout, done.stdout + done.stderr
    inst = folder / "instance"
    for name, data in files.items():
        (inst / name).parent.mkdir(parents=True, exist_ok=True)
        (inst / name).write_bytes(data)
    _write(inst / "model-instance-metadata.json", {"ownerSlug": USER, "modelSlug": slug, "instanceSlug": "base",
                                                   "framework": "PyTorch", "licenseName": "Apache 2.0"})
    done = run_kaggle("models", "instances", "create", "-p", str(inst), "--dir-mode", "zip")
    assert done.returncode == 0 and "Your model instance was created" in done.stdout, done.stdout + done.stderr


def test_the_kaggle_cli_creates_gets_and_versions_a_model(run_kaggle, local_kaggle, tmp_path):
    slug = _model_slug()
    _create_model_with_cli(run_kaggle, tmp_path / "m", slug, {"weights.bin": b"one",
                                                             "hf/config.json": b"{}"})
    got = run_kaggle("models", "get", f"{USER}/{slug}")
    assert got.returncode == 0 and f"{USER}/{slug}" in got.stdout and "base" in got.stdout, got.stdout + got.stderr
    got = run_kaggle("models", "instances", "get", f"{USER}/{slug}/pytorch/base")
    assert got.returncode == 0 and "version_number" in got.stdout.replace("versionNumber", "version_number"), \
        got.stdout + got.stderr

    v2 = tmp_path / "v2"
    (v2 / "weights.bin").parent.mkdir(parents=True)
    (v2 / "weights.bin").write_bytes(b"two")
    done = run_kaggle("models", "instances", "versions", "create", f"{USER}/{slug}/pytorch/base", "-p", str(v2),
                      "-n", "second")
    assert done.returncode == 0 and "version was created" in done.stdout, done.stdout + done.stderr
    files = run_kaggle("models", "instances", "versions", "files", f"{USER}/{slug}/pytorch/base/1")
    assert "weights.bin" in files.stdout and "hf/config.json" in files.stdout, files.stdout + files.stderr

    from packager.localkaggle.store import Store

    store = Store(local_kaggle.root)
    assert store.model_instance(USER, slug, "pytorch", "base")["versions"] == [1, 2]
    files_dir = Path(store.model_instance_version(USER, slug, "pytorch", "base", 1)["files_dir"])
    assert (files_dir / "hf" / "config.json").read_bytes() == b"{}"  # the sub-folder survived as a folder


def test_unknown_model_and_duplicate_instance_are_refused(run_kaggle, tmp_path):
    got = run_kaggle("models", "get", f"{USER}/no-such-model")
    assert got.returncode != 0 or "404" in got.stdout + got.stderr
    slug = _model_slug()
    _create_model_with_cli(run_kaggle, tmp_path / "m", slug, {"w.bin": b"x"})
    again = run_kaggle("models", "instances", "create", "-p", str(tmp_path / "m" / "instance"))
    assert "already exists" in again.stdout + again.stderr
