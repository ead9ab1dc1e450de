"""Kaggle's machine shapes: one table (packager/shapes.py) for the config, the kernel metadata and the local
Kaggle. The local Kaggle refuses a shape it does not know, runs the retired P100 as T4 x2 and caps a session at
its shape's limit (12 h GPU/CPU, 9 h TPU), seen through the unmodified `kaggle` CLI and through kpack."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import KAGGLE, USER, LocalKaggleServer
from packager import metadata, shapes
from packager.localkaggle.kernels_api import LENIENT_SHAPES_ENV
from packager.localkaggle.store import Store

pytestmark = pytest.mark.timeout(300)

CODE = 'print("shape test")\n'
EVERY_SHAPE = ["None", "NvidiaTeslaT4", "NvidiaTeslaT4Highmem", "NvidiaL4", "NvidiaL4X1", "NvidiaTeslaA100",
               "NvidiaH100", "NvidiaRtxPro6000", "TpuV38", "Tpu1VmV38", "TpuV5E8", "TpuV6E8"]
REFUSAL = ("Kernel push error: Invalid machine shape 'NvidiaK80'. Valid values: NvidiaTeslaT4, NvidiaTeslaT4Highmem, "
           "NvidiaL4, NvidiaL4X1, NvidiaTeslaA100, NvidiaH100, NvidiaRtxPro6000, TpuV38, Tpu1VmV38, TpuV5E8, "
           "TpuV6E8 (or no accelerator).")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # its own server, without the session caps: these tests push many GPU/TPU kernels at once
    started = LocalKaggleServer(tmp_path_factory.mktemp("shapes") / "root", None, 0, 120,
                                "--gpu-sessions", "0", "--cpu-sessions", "0").start()
    yield started
    started.stop()


def client_env(server, tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True, exist_ok=True)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k.lower() not in
           ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    env.update(HOME=str(home), TMPDIR=str(tmp_path / "tmp"), KAGGLE_CONFIG_DIR=str(home / ".kaggle"))
    env.update(server.env(USER))
    return env


def kernel_folder(tmp_path: Path, **meta) -> tuple[str, Path]:
    slug = f"shape-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / slug
    folder.mkdir()
    (folder / "k.py").write_text(CODE)
    data = {"id": f"{USER}/{slug}", "title": slug.replace("-", " ").title(), "code_file": "k.py",
            "language": "python", "kernel_type": "script", "enable_internet": False, **meta}
    (folder / "kernel-metadata.json").write_text(json.dumps(data))
    return slug, folder


def push(server, tmp_path: Path, *args: str, **meta) -> tuple[str, str]:
    """`kaggle kernels push` of a one-line kernel; (slug, stdout)."""
    slug, folder = kernel_folder(tmp_path, **meta)
    done = subprocess.run([KAGGLE, "kernels", "push", "-p", str(folder), *args], env=client_env(server, tmp_path),
                          text=True, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr  # the CLI exits 0 even when the answer holds an error
    return slug, done.stdout


# Many pushes through the unmodified client in one process: KaggleApi.kernels_push, what `kaggle kernels push`
# calls, without paying the client's start-up once per push.
PUSH_MANY = """
import json, sys
from kaggle.api.kaggle_api_extended import KaggleApi
api = KaggleApi()
api.authenticate()
for folder, timeout, acc in json.loads(sys.argv[1]):
    answer = api.kernels_push(folder, timeout, acc)
    print(json.dumps({"error": answer.error or "", "version": answer.version_number}))
"""


def push_many(server, tmp_path: Path, jobs: list[tuple[str | None, str | None, dict]]) -> list[tuple[str, dict]]:
    """(timeout, accelerator, metadata) per push; [(slug, {"error", "version"})]."""
    folders = [kernel_folder(tmp_path, **meta) for _, _, meta in jobs]
    spec = [(str(folder), timeout, acc) for (_, folder), (timeout, acc, _) in zip(folders, jobs)]
    done = subprocess.run([sys.executable, "-c", PUSH_MANY, json.dumps(spec)], env=client_env(server, tmp_path),
                          text=True, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [(slug, json.loads(line)) for (slug, _), line in zip(folders, done.stdout.splitlines())]


def version(server, slug: str) -> dict | None:
    return Store(server.root).kernel_version(USER, slug)


# --------------------------------------------------------------------------------------------- the table

def test_one_table_for_config_metadata_and_local_kaggle():
    assert shapes.names() == EVERY_SHAPE
    for name in EVERY_SHAPE:
        flags = metadata.accelerator_flags(name)
        kind = shapes.SHAPES[name].kind
        assert (flags["enable_gpu"], flags["enable_tpu"]) == (kind == "gpu", kind == "tpu")
        assert shapes.SHAPES[name].limit_hours == (9 if kind == "tpu" else 12)
    assert shapes.effective("NvidiaTeslaP100").name == "NvidiaTeslaT4"


def test_warning_lines():
    assert metadata.accelerator_warning("NvidiaTeslaP100") == (
        "Kaggle retired the P100: sessions asking for NvidiaTeslaP100 run on T4 x2 (NvidiaTeslaT4)")
    assert metadata.accelerator_warning("NvidiaB200") == (
        "'NvidiaB200' is not a machine shape kpack knows (" + ", ".join(EVERY_SHAPE) + "); it is pushed as given, "
        "and Kaggle refuses names it does not know")
    assert all(metadata.accelerator_warning(name) is None for name in EVERY_SHAPE)
    # an unknown name is still written, as a GPU unless it reads as a TPU
    assert metadata.accelerator_flags("NvidiaB200") == {"enable_gpu": True, "enable_tpu": False,
                                                        "machine_shape": "NvidiaB200"}
    assert metadata.accelerator_flags("TpuV7X8")["enable_tpu"] is True


# --------------------------------------------------------------------------------------------- unmodified kaggle CLI

def test_every_listed_shape_is_accepted(server, tmp_path):
    pushed = push_many(server, tmp_path, [(None, name if name != "None" else None, {}) for name in EVERY_SHAPE])
    for name, (slug, answer) in zip(EVERY_SHAPE, pushed):
        assert answer == {"error": "", "version": 1}, name
        assert version(server, slug)["machine_shape_effective"] == name
    assert server.wait_kernel(USER, pushed[-1][0], 1)["status"] == "COMPLETE"  # a TPU one runs (on this CPU)


def test_an_unknown_shape_is_refused_and_makes_no_version(server, tmp_path):
    slug, out = push(server, tmp_path, "--accelerator", "NvidiaK80")
    assert out.strip() == REFUSAL
    assert Store(server.root).kernel(USER, slug) is None
    ((slug, answer),) = push_many(server, tmp_path, [(None, None, {"machine_shape": "NvidiaK80", "enable_gpu": True})])
    assert answer == {"error": REFUSAL.removeprefix("Kernel push error: "), "version": 0}  # from kernel-metadata.json
    assert Store(server.root).kernel(USER, slug) is None


def test_p100_runs_as_t4_x2(server, tmp_path):
    slug, out = push(server, tmp_path, machine_shape="NvidiaTeslaP100", enable_gpu=True)
    assert "Kernel version 1 successfully pushed." in out
    record = server.wait_kernel(USER, slug, 1)
    assert record["status"] == "COMPLETE"
    assert record["metadata"]["machine_shape"] == "NvidiaTeslaP100"  # what was asked for, as GetKernel shows it
    assert record["machine_shape_effective"] == "NvidiaTeslaT4"  # what ran


def test_enable_flags_without_a_shape_pick_the_default(server, tmp_path):
    (gpu, _), (cpu, _) = push_many(server, tmp_path, [(None, None, {"enable_gpu": True}), (None, None, {})])
    assert version(server, gpu)["machine_shape_effective"] == "NvidiaTeslaT4"
    assert version(server, cpu)["machine_shape_effective"] == "None"


def test_a_session_is_capped_at_its_shapes_limit(server, tmp_path):
    slug, out = push(server, tmp_path, "-t", "40000", "--accelerator", "TpuV5E8")
    assert "successfully pushed" in out
    record = version(server, slug)
    assert (record["session_timeout_seconds"], record["session_timeout_requested"]) == (9 * 3600, 40000)
    cases = [("50000", "NvidiaTeslaT4", 12 * 3600), ("50000", None, 12 * 3600), ("600", "TpuV6E8", 600),
             ("50000", "NvidiaTeslaP100", 12 * 3600)]
    for (slug, answer), (asked, shape, runs) in zip(push_many(server, tmp_path, [(t, a, {}) for t, a, _ in cases]),
                                                    cases):
        record = version(server, slug)
        assert answer["version"] == 1 and record["session_timeout_seconds"] == runs, (shape, asked)
        assert record.get("session_timeout_requested") == (int(asked) if int(asked) > runs else None)


def test_the_switch_turns_the_rule_off(tmp_path, monkeypatch):
    monkeypatch.delenv(LENIENT_SHAPES_ENV, raising=False)
    lenient = LocalKaggleServer(tmp_path / "lenient", None, 0, 120, "--gpu-sessions", "0", "--lenient-shapes").start()
    try:
        slug, out = push(lenient, tmp_path, "-t", "50000", "--accelerator", "NvidiaK80")
        assert "Kernel version 1 successfully pushed." in out
        record = version(lenient, slug)
        assert record["machine_shape_effective"] == "NvidiaK80" and record["session_timeout_seconds"] == 50000
    finally:
        lenient.stop()


# --------------------------------------------------------------------------------------------- through kpack

def test_kpack_warns_on_an_unknown_shape_and_reports_the_refusal(server, tmp_path, monkeypatch, caplog):
    from packager.build import build_kernel
    from packager.errors import UserError
    from packager.push import push_kernel
    from pushkit import isolate, make_project

    isolate(monkeypatch, tmp_path)
    project = make_project(tmp_path, server, datasets=False)
    monkeypatch.chdir(project.root)
    cfg = project.cfg()
    cfg.kernels["train"].accelerator = "NvidiaK80"
    with caplog.at_level(logging.WARNING, logger="kpack"):
        built = build_kernel(cfg, "train")
    warned = [r.getMessage() for r in caplog.records if "NvidiaK80" in r.getMessage()]
    assert warned == ["warning: kernels.train.accelerator: 'NvidiaK80' is not a machine shape kpack knows ("
                      + ", ".join(EVERY_SHAPE) + "); it is pushed as given, and Kaggle refuses names it does not know"]
    assert json.loads(built.metadata.read_text())["machine_shape"] == "NvidiaK80"
    with pytest.raises(UserError) as err:
        push_kernel(cfg, "train", wait=False)
    assert str(err.value) == f"kaggle: push alice/{project.train_slug} refused: " + REFUSAL.removeprefix(
        "Kernel push error: ")
    assert project.kernel_versions() == []


def test_kpack_pushes_p100_with_a_warning_and_it_runs_as_t4(server, tmp_path, monkeypatch, capsys):
    from packager.push import push_kernel
    from pushkit import isolate, make_project

    isolate(monkeypatch, tmp_path)
    project = make_project(tmp_path, server, datasets=False)
    monkeypatch.chdir(project.root)
    cfg = project.cfg()
    cfg.kernels["train"].accelerator = "NvidiaTeslaP100"
    result = push_kernel(cfg, "train", wait=True)
    assert result.ref.version == 1
    (record,) = project.kernel_versions()
    assert record["status"] == "COMPLETE" and record["machine_shape_effective"] == "NvidiaTeslaT4"
    assert record["session_timeout_seconds"] == int(cfg.kernels["train"].session_hours * 3600)
