"""Kaggle processes a new dataset version before it can be used, and the local Kaggle does too.

One server of this module's own, with processing long enough to watch (1 s + 40 s per MB uploaded): through
the unmodified `kaggle` CLI, GetDatasetStatus reports the newest version's stage, then "ready"; a kernel
pushed meanwhile mounts the previous READY version, or nothing (invalidDatasetSources) when none is ready.
Through kpack: the push waits for every new version, says what it waits for and for how long, pushes the
kernel only once the version is ready, and a timeout is one error line. deleteOldVersions deletes the older
versions' files once the new one is ready; the numbers stay taken.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import KAGGLE, USER, LocalKaggleServer
from pushkit import isolate, make_project
from packager import datasets, kaggle_api
from packager.localkaggle.store import PROCESSING_STAGES, Store

STAGES = tuple(s.lower() for s in PROCESSING_STAGES)
ROOT = 'import os, pathlib\nroot = pathlib.Path(os.environ["KPACK_KAGGLE_ROOT"])\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LocalKaggleServer(tmp_path_factory.mktemp("processing") / "root", None, 0, 120,
                            "--dataset-processing-s", "1", "--dataset-processing-s-per-mb", "40").start()
    yield srv
    srv.stop()


@pytest.fixture
def env(server, tmp_path) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k.lower() not in
            ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    return {**base, "HOME": str(home), "TMPDIR": str(tmp_path / "tmp"), "KAGGLE_CONFIG_DIR": str(home / ".kaggle"),
            **server.env(USER)}


def kaggle(env, tmp_path, *args: str) -> str:
    done = subprocess.run([KAGGLE, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def dataset_folder(base: Path, slug: str, files: dict[str, bytes]) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (base / name).write_bytes(data)
    (base / "dataset-metadata.json").write_text(json.dumps(
        {"id": f"{USER}/{slug}", "title": f"Data {slug}"[:50], "licenses": [{"name": "CC0-1.0"}]}))
    return base


def kernel_folder(base: Path, slug: str, code: str, sources: list[str]) -> Path:
    base.mkdir(parents=True)
    (base / "k.py").write_text(code)
    (base / "kernel-metadata.json").write_text(json.dumps({
        "id": f"{USER}/{slug}", "title": slug.replace("-", " ").title(), "code_file": "k.py", "language": "python",
        "kernel_type": "script", "enable_internet": False, "dataset_sources": sources}))
    return base


def wait_ready(server, slug: str, number: int, timeout: float = 60) -> None:
    store, deadline = Store(server.root), time.monotonic() + timeout
    while store.dataset_statuses(USER, slug).get(number) != "READY":
        assert time.monotonic() < deadline, f"{slug} v{number} never became ready"
        time.sleep(0.2)


_n = iter(range(1, 1000))


def uniq(stem: str) -> str:
    return f"{stem}-{os.getpid() % 10000}-{next(_n)}"


# --------------------------------------------------------------------------------------------- the kaggle CLI

def test_status_reports_processing_then_ready_and_nothing_mounts_before(server, env, tmp_path):
    slug, reader = uniq("proc"), uniq("early")
    kaggle(env, tmp_path, "datasets", "create", "-p",
           str(dataset_folder(tmp_path / "ds", slug, {"big.bin": os.urandom(150_000)})))  # 1 + 6 s processing
    status = kaggle(env, tmp_path, "datasets", "status", f"{USER}/{slug}").strip()
    assert status in STAGES, status
    out = kaggle(env, tmp_path, "kernels", "push", "-p", str(kernel_folder(
        tmp_path / "k", reader, "print('ran')\n", [f"{USER}/{slug}"])))
    assert "could not be added to the kernel" in out and f"{USER}/{slug}" in out  # no version is ready yet
    assert Store(server.root).kernel_version(USER, reader, 1)["mounts"] == []

    deadline = time.monotonic() + 60
    while (status := kaggle(env, tmp_path, "datasets", "status", f"{USER}/{slug}").strip()) != "ready":
        assert status in STAGES and time.monotonic() < deadline, status
        time.sleep(0.5)
    assert json.loads(kaggle(env, tmp_path, "datasets", "status", f"{USER}/{slug}", "--format", "json")) == {
        "status": "ready", "current_version_number": 1}


def test_a_kernel_pushed_while_a_version_processes_mounts_the_previous_one(server, env, tmp_path):
    slug, reader = uniq("prev"), uniq("reader")
    folder = dataset_folder(tmp_path / "ds", slug, {"d.txt": b"one"})
    kaggle(env, tmp_path, "datasets", "create", "-p", str(folder))
    wait_ready(server, slug, 1)
    dataset_folder(folder, slug, {"d.txt": b"two", "pad.bin": os.urandom(150_000)})
    kaggle(env, tmp_path, "datasets", "version", "-p", str(folder), "-m", "second")
    info = json.loads(kaggle(env, tmp_path, "datasets", "status", f"{USER}/{slug}", "--format", "json"))
    assert info["status"] in STAGES and info["current_version_number"] == 2

    code = ROOT + f'(root / "working" / "seen.txt").write_text((root / "input" / "{slug}" / "d.txt").read_text())\n'
    kaggle(env, tmp_path, "kernels", "push", "-p", str(kernel_folder(tmp_path / "k", reader, code,
                                                                    [f"{USER}/{slug}"])))
    record = server.wait_kernel(USER, reader, 1)
    assert record["status"] == "COMPLETE", record
    assert [m["version"] for m in record["mounts"]] == [1]
    kaggle(env, tmp_path, "kernels", "output", f"{USER}/{reader}", "-p", str(tmp_path / "out"))
    assert (tmp_path / "out" / "seen.txt").read_text() == "one"


@pytest.mark.slow
def test_delete_old_versions_removes_their_files_once_the_new_one_is_ready(server, env, tmp_path):
    slug = uniq("prune")
    folder = dataset_folder(tmp_path / "ds", slug, {"d.txt": b"one"})
    kaggle(env, tmp_path, "datasets", "create", "-p", str(folder))
    dataset_folder(folder, slug, {"d.txt": b"two"})
    kaggle(env, tmp_path, "datasets", "version", "-p", str(folder), "-m", "second")
    wait_ready(server, slug, 2)
    dataset_folder(folder, slug, {"d.txt": b"three", "pad.bin": os.urandom(40_000)})  # 1 + 1.6 s
    kaggle(env, tmp_path, "datasets", "version", "-p", str(folder), "-m", "third", "--delete-old-versions")
    store = Store(server.root)
    assert store.dataset_statuses(USER, slug)[1] == "READY"  # kept while v3 processes: kernels still mount v2
    assert store.ready_dataset_versions(USER, slug) == [1, 2]
    wait_ready(server, slug, 3)
    assert kaggle(env, tmp_path, "datasets", "status", f"{USER}/{slug}").strip() == "ready"
    assert store.dataset(USER, slug)["versions"] == [1, 2, 3]  # numbering kept
    assert store.dataset_statuses(USER, slug) == {1: "DELETED", 2: "DELETED", 3: "READY"}
    for number in (1, 2):
        assert not Path(store.dataset_version(USER, slug, number)["files_dir"]).exists()
    failed = subprocess.run([KAGGLE, "datasets", "download", f"{USER}/{slug}/1", "-f", "d.txt", "-p",
                             str(tmp_path / "dl1")], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert failed.returncode != 0 and "deleted" in failed.stdout + failed.stderr
    kaggle(env, tmp_path, "datasets", "download", f"{USER}/{slug}", "-f", "d.txt", "-p", str(tmp_path / "dl"))
    assert (tmp_path / "dl" / "d.txt").read_text() == "three"
    dataset_folder(folder, slug, {"d.txt": b"four"})
    assert "Dataset version is being created" in kaggle(env, tmp_path, "datasets", "version", "-p", str(folder),
                                                        "-m", "fourth")
    assert store.dataset(USER, slug)["versions"] == [1, 2, 3, 4]


# --------------------------------------------------------------------------------------------- kpack

@pytest.fixture
def project(server, tmp_path, monkeypatch, request):
    """A kpack project on this module's server; weights of `weights_kb` (x 1.25) KB, default 60: 1 + 3 s."""
    isolate(monkeypatch, tmp_path)
    proj = make_project(tmp_path, server, weights_kb=getattr(request, "param", 60))
    monkeypatch.chdir(proj.root)
    yield proj
    kaggle_api._restore_env()


def test_kpack_push_waits_for_each_new_version_and_says_so(project, server, monkeypatch, capsys):
    from packager.push import push_kernel

    monkeypatch.setattr(datasets, "PROGRESS_EVERY_S", 1.0)
    push_kernel(project.cfg(), "train", wait=False)
    out = capsys.readouterr().out
    waiting = [line for line in out.splitlines() if "waiting for v1 to be ready (status " in line]
    assert len(waiting) >= 2 and any(f"status {s}," in waiting[0] for s in STAGES), out
    seconds = [int(line.split("status ")[1].split(", ")[1].split("s so far")[0]) for line in waiting]
    assert seconds == sorted(seconds) and seconds[-1] >= 2, waiting  # how long, as it goes
    assert out.index("v1 ready (waited") < out.index(f"pushed alice/{project.train_slug} v1")
    # the link a person opens: the local Kaggle's kernel page (pages.py), not the url the client's proxy reaches
    page = f"http://127.0.0.1:{project.cfg().local.port}/code/alice/{project.train_slug}"
    assert f"pushed alice/{project.train_slug} v1 ({page})" in out
    assert project.kernel_versions()[0]["mounts"][0]["version"] == 1

    (project.root / "models" / "head.tiny.pth").write_bytes(os.urandom(15 * 1024))
    push_kernel(project.cfg(), "train", wait=False)
    out = capsys.readouterr().out
    assert "waiting for v2 to be ready" in out and "v2 ready (waited" in out
    mounts = {m["slug"]: m["version"] for m in project.kernel_versions()[1]["mounts"]}
    assert mounts[project.weights_slug] == 2  # kpack never pushes a kernel against the previous weights


def test_kpack_push_gives_up_in_one_line_when_a_version_stays_processing(project, server):
    env = {**os.environ, "KPACK_DATASET_READY_TIMEOUT_S": "1"}
    done = subprocess.run([sys.executable, "-m", "packager.cli", "push", "train", "--no-wait"], env=env,
                          cwd=project.root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "still not ready after" in errors[0] and "KPACK_DATASET_READY_TIMEOUT_S" in errors[0]
    assert errors[0] == done.stderr.strip().splitlines()[-1]
    assert f"dataset alice/{project.weights_slug}: waiting for v1 to be ready" in done.stdout
    assert project.kernel_versions() == []  # nothing pushed against a version that is not ready


@pytest.mark.parametrize("project", [2], indirect=True)
def test_delete_old_versions_config_goes_to_create_dataset_version(project, server, tmp_path):
    from packager.push import push_kernel

    kpack_yaml = project.root / "kpack.yaml"
    kpack_yaml.write_text(kpack_yaml.read_text().replace("dir: models}", "dir: models, delete_old_versions: true}"))
    assert project.cfg().datasets.weights.delete_old_versions is True
    push_kernel(project.cfg(), "train", wait=False)
    (project.root / "models" / "head.tiny.pth").write_bytes(os.urandom(1024))
    push_kernel(project.cfg(), "train", wait=False)  # waits for v2 to be ready: v1 is deleted by then
    store = Store(server.root)
    assert store.dataset_version(USER, project.weights_slug, 2)["delete_old"] is True
    assert store.dataset_statuses(USER, project.weights_slug) == {1: "DELETED", 2: "READY"}
