"""Kaggle Models: the unmodified `kaggle models ...` CLI against the local Kaggle, kpack publishing models/ as a
model instance (unchanged content uploads nothing, a changed file makes a new version), and kernels that mount
model sources in both layouts (an unknown source is answered invalid)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
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


# --------------------------------------------------------------------------------------------- kernels mount them

READER = '''import os
from pathlib import Path

root = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle")
out = []
for rel in ("{legacy}", "models/{owner}/{legacy}"):
    folder = root / "input" / rel
    out.append(rel + "=" + (folder / "weights.bin").read_text() + "," + (folder / "hf" / "config.json").read_text())
(root / "working" / "seen.txt").write_text("\\n".join(out) + "\\n")
'''


def _push_reader(run_kaggle, folder: Path, slug: str, sources: list[str], script: str):
    folder.mkdir(parents=True)
    (folder / "reader.py").write_text(script)
    _write(folder / "kernel-metadata.json", {
        "id": f"{USER}/{slug}", "title": slug.replace("-", " ").title(), "code_file": "reader.py",
        "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": False,
        "enable_internet": False, "dataset_sources": [], "competition_sources": [], "kernel_sources": [],
        "model_sources": sources})
    return run_kaggle("kernels", "push", "-p", str(folder))


def test_a_kernel_reads_a_model_source_in_both_layouts(run_kaggle, local_kaggle, tmp_path):
    slug = _model_slug()
    _create_model_with_cli(run_kaggle, tmp_path / "m", slug, {"weights.bin": b"w1", "hf/config.json": b"{}"})
    kernel = f"{slug}-reader"
    done = _push_reader(run_kaggle, tmp_path / "k", kernel, [f"{USER}/{slug}/pytorch/base/1"],
                        READER.format(legacy=f"{slug}/pytorch/base/1", owner=USER))
    assert done.returncode == 0 and "error" not in done.stdout.lower(), done.stdout + done.stderr
    record = local_kaggle.wait_kernel(USER, kernel, 1)
    assert record["status"] == "COMPLETE", record.get("failure_message")
    seen = (Path(record["output_dir"]) / "seen.txt").read_text().splitlines()
    assert seen == [f"{slug}/pytorch/base/1=w1,{{}}", f"models/{USER}/{slug}/pytorch/base/1=w1,{{}}"]


def test_an_unknown_model_source_is_answered_invalid(run_kaggle, kaggle_env, local_kaggle, tmp_path):
    slug = _model_slug()
    _create_model_with_cli(run_kaggle, tmp_path / "m", slug, {"weights.bin": b"w1"})
    kernel = f"{slug}-nomodel"
    wrong = [f"{USER}/no-such-model/pytorch/base/1", f"{USER}/{slug}/pytorch/base/7", f"{USER}/{slug}/jax/base/1"]
    folder = tmp_path / "k"
    done = _push_reader(run_kaggle, folder, kernel, wrong, "print(1)\n")
    assert done.returncode == 0, done.stdout + done.stderr  # the CLI does not print invalidModelSources
    # SaveKernel's answer, as the client's API returns it to kpack (a second version of the same kernel)
    code = ("import sys; from kaggle.api.kaggle_api_extended import KaggleApi; api = KaggleApi(); "
            "api.authenticate(); print(list(api.kernels_push(sys.argv[1]).invalid_model_sources))")
    answer = subprocess.run([sys.executable, "-c", code, str(folder)], env=kaggle_env, capture_output=True,
                            text=True, timeout=120)
    assert answer.stdout.strip() == repr(wrong), answer.stdout + answer.stderr
    from packager.localkaggle.store import Store

    assert Store(local_kaggle.root).kernel_version(USER, kernel, 1)["mounts"] == []
