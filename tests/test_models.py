"""Kaggle Models: the unmodified `kaggle models ...` CLI against the local Kaggle, kpack publishing models/ as a
model instance (unchanged content uploads nothing, a changed file makes a new version), and kernels that mount
model sources in both layouts (an unknown source is answered invalid)."""
from __future__ import annotations

import base64
import json
import os
import shutil
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

    (tmp_path / "meta").mkdir()
    got = run_kaggle("models", "instances", "get", f"{USER}/{slug}/pytorch/base", "-p", str(tmp_path / "meta"))
    meta = json.loads((tmp_path / "meta" / "model-instance-metadata.json").read_text())
    assert (meta["versionNumber"], meta["framework"], meta["licenseName"]) == (2, "py_torch", "Apache 2.0"), got.stdout

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


# --------------------------------------------------------------------------------------------- the builder, the kernel side

KEY_TEXT = base64.b64encode(bytes(range(32))).decode()


def _hf_models(folder: Path) -> Path:
    """A weights folder with a Hugging Face style sub-folder beside a timm file."""
    (folder / "hf-tiny").mkdir(parents=True)
    (folder / "hf-tiny" / "config.json").write_text('{"hidden": 8}')
    (folder / "hf-tiny" / "model.safetensors").write_bytes(os.urandom(3000))
    (folder / "resnet18.a1_in1k.pth").write_bytes(os.urandom(2000))
    return folder


def _cfg(models: Path, encrypt: bool, sources=()):
    from packager.config import parse_config

    return parse_config({"competition": "digits-multilabel", "kaggle_user": USER,
                         "kernels": {"train": {"entry": "kernel_src/train.py", "sources": {"models": list(sources)}}},
                         "models": {"weights": {"slug": "tiny-weights", "dir": str(models), "encrypt": encrypt,
                                                "framework": "PyTorch", "variation": "v1"}}})


@pytest.mark.parametrize("encrypt", [False, True])
def test_the_kernel_finds_sub_folders_and_model_sources_by_name(tmp_path, monkeypatch, encrypt):
    from kpack_runtime import weights as kweights
    from packager.weights import build_weights_dataset

    monkeypatch.setenv("KPACK_WEIGHTS_KEY", KEY_TEXT)
    models = _hf_models(tmp_path / "models")
    cfg = _cfg(models, encrypt, sources=[f"bob/convnext/pytorch/tiny/2"])
    built = build_weights_dataset(cfg, tmp_path / "build" / "tiny-weights", spec=cfg.models.weights)
    manifest = json.loads((built.path / "manifest.json").read_text())
    assert {e["name"] for e in manifest["files"]} == {"hf-tiny/config.json", "hf-tiny/model.safetensors",
                                                       "resnet18.a1_in1k.pth"}
    root = tmp_path / "kaggle"
    # kpack's own instance in the newer layout; another owner's model (no manifest) in the legacy one
    shutil.copytree(built.path, root / "input" / "models" / USER / "tiny-weights" / "pytorch" / "v1" / "3")
    theirs = root / "input" / "convnext" / "pytorch" / "tiny" / "2"
    theirs.mkdir(parents=True)
    (theirs / "convnext_tiny.fb_in1k.safetensors").write_bytes(b"theirs")
    (root / "working").mkdir()
    monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(root))
    config = cfg.model_dump(mode="json") | {"kernel": "train"}

    paths = kweights.prepare(config)
    assert kweights.weights_path("hf-tiny/config.json").read_text() == '{"hidden": 8}'
    folder = kweights.weights_path("hf-tiny")  # a Hugging Face folder by its name, as from_pretrained wants it
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert (folder / "model.safetensors").read_bytes() == (models / "hf-tiny" / "model.safetensors").read_bytes()
    assert kweights.for_architecture("resnet18") == paths["resnet18.a1_in1k.pth"]
    assert kweights.weights_path("convnext_tiny.fb_in1k.safetensors").read_bytes() == b"theirs"
    assert kweights.for_architecture("convnext_tiny") == theirs / "convnext_tiny.fb_in1k.safetensors"
    assert (root / "temp" / "weights").is_dir() == encrypt  # sealed files are opened into temp only

    shutil.rmtree(root / "input" / "models")
    with pytest.raises(kweights.WeightsError, match="tiny-weights \\(models.weights\\) is not mounted"):
        kweights.open_all(config)


def test_a_rebuild_drops_stale_files_in_sub_folders_and_hashes_the_same(tmp_path):
    from packager.weights import build_weights_dataset

    models = _hf_models(tmp_path / "models")
    cfg = _cfg(models, False)
    out = tmp_path / "build" / "tiny-weights"
    first = build_weights_dataset(cfg, out, spec=cfg.models.weights)
    (out / "hf-tiny" / "stale.bin").write_bytes(b"old")
    again = build_weights_dataset(cfg, out, spec=cfg.models.weights)
    assert not (out / "hf-tiny" / "stale.bin").exists() and again.content_hash == first.content_hash
    (models / "hf-tiny" / "config.json").unlink()
    (models / "hf-tiny" / "model.safetensors").unlink()
    (models / "hf-tiny").rmdir()
    build_weights_dataset(cfg, out, spec=cfg.models.weights)
    assert not (out / "hf-tiny").exists()


# --------------------------------------------------------------------------------------------- kpack publishes models/

@pytest.fixture
def model_project(local_kaggle, tmp_path, monkeypatch):
    """A pushkit project whose models/ (with a Hugging Face style sub-folder) is a model instance, not a dataset."""
    from packager import kaggle_api
    from pushkit import isolate, make_project

    isolate(monkeypatch, tmp_path)
    local_kaggle.clear_faults()
    proj = make_project(tmp_path, local_kaggle, datasets=False)
    (proj.root / "models" / "hf-tiny").mkdir()
    (proj.root / "models" / "hf-tiny" / "config.json").write_text('{"hidden": 8}')
    (proj.root / "models" / "hf-tiny" / "model.safetensors").write_bytes(os.urandom(4000))
    proj.model_slug = f"{proj.prefix}-w"
    with open(proj.root / "kpack.yaml", "a") as f:
        f.write(f"models:\n  weights: {{slug: {proj.model_slug}, framework: PyTorch, variation: tiny}}\n")
    monkeypatch.chdir(proj.root)
    yield proj
    kaggle_api._restore_env()


def test_kpack_publishes_models_as_an_instance_and_versions_it_only_when_changed(model_project, local_kaggle):
    from packager.localkaggle.store import Store
    from packager.push import push_kernel

    proj, store = model_project, Store(local_kaggle.root)
    ref = f"{USER}/{proj.model_slug}/pytorch/tiny"
    local_kaggle.reset_stats()
    first = push_kernel(proj.cfg(), "train", wait=False)
    assert local_kaggle.stats()["calls"].get("CreateModelInstance") == 1
    version = store.model_instance_version(USER, proj.model_slug, "pytorch", "tiny")
    names = {f["name"] for f in version["files"]}
    assert {"manifest.json", "hf-tiny/config.json", "hf-tiny/model.safetensors", "backbone.tiny.pth"} <= names
    kernel = store.kernel_version(USER, proj.train_slug, first.ref.version)
    assert kernel["metadata"]["model_data_sources"] == [f"{ref}/1"]  # pinned: the client takes only that form
    assert [m["slug"] for m in kernel["mounts"]] == [f"{proj.model_slug}/pytorch/tiny/1"]
    assert local_kaggle.wait_kernel(USER, proj.train_slug, first.ref.version)["status"] == "COMPLETE"

    local_kaggle.reset_stats()
    push_kernel(proj.cfg(), "train", wait=False)
    stats = local_kaggle.stats()
    assert stats["uploaded_bytes"] == 0 and "StartBlobUpload" not in stats["calls"]
    assert "CreateModelInstanceVersion" not in stats["calls"]
    # the model is asked for once (does it exist, to publish), the instance by publishing and by the pinning
    assert {k: v for k, v in stats["calls"].items() if k.startswith("GetModel")} == {"GetModel": 1,
                                                                                    "GetModelInstance": 2}

    (proj.root / "models" / "hf-tiny" / "config.json").write_text('{"hidden": 16}')
    local_kaggle.reset_stats()
    third = push_kernel(proj.cfg(), "train", wait=False)
    assert local_kaggle.stats()["calls"].get("CreateModelInstanceVersion") == 1
    assert store.model_instance(USER, proj.model_slug, "pytorch", "tiny")["versions"] == [1, 2]
    files = Path(store.model_instance_version(USER, proj.model_slug, "pytorch", "tiny", 2)["files_dir"])
    assert (files / "hf-tiny" / "config.json").read_text() == '{"hidden": 16}'
    kernel = store.kernel_version(USER, proj.train_slug, third.ref.version)
    assert kernel["metadata"]["model_data_sources"] == [f"{ref}/2"]


def test_an_unknown_model_source_stops_kpack_in_one_line_before_any_upload(model_project, local_kaggle):
    from packager import kaggle_api, models_push
    from packager.errors import UserError
    from packager.push import push_kernel

    cfg = model_project.cfg()
    where = cfg.where("kernels", "train", "sources", "models") + "kernels.train.sources.models: "
    missing = (cfg.where("kernels", "train", "sources") + "kernels.train.sources: not on the local Kaggle (or not "
               f"visible to {USER}): model {USER}/nope-model/pytorch/base")  # the pre-upload source check's line
    cases = [(f"{USER}/nope-model/pytorch/base", missing), (f"{USER}/nope-model/pytorch/base/3", missing),
             (f"{USER}/{model_project.model_slug}/pytorch/tiny/9",
              f"{where}{USER}/{model_project.model_slug}/pytorch/tiny/9: the instance has no version 9 (newest v1)")]
    push_kernel(cfg, "train", wait=False)  # makes the project's own instance (v1)
    for source, message in cases:
        cfg.kernels["train"].sources.models = [source]
        local_kaggle.reset_stats()
        with pytest.raises(UserError) as info:
            push_kernel(cfg, "train", wait=False)
        assert str(info.value).startswith(message), str(info.value)
        assert "\n" not in str(info.value)
        calls = local_kaggle.stats()["calls"]
        assert "StartBlobUpload" not in calls and "SaveKernel" not in calls
    # A chained session's folder is pinned again at its push: a source gone by then is one line too.
    folder = Path("build") / "kernels" / model_project.train_slug
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    meta["model_sources"] = [f"{USER}/gone-model/pytorch/base"]
    (folder / "kernel-metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="gone-model/pytorch/base is not a model instance on the backend"):
        models_push.pin_sources(kaggle_api.connect(cfg), cfg, "train", folder)


def test_a_secret_in_models_stops_the_model_push_before_any_upload(model_project, local_kaggle, monkeypatch):
    from packager.errors import UserError
    from packager.localkaggle.store import Store
    from packager.push import push_kernel

    key = "Zk9v" * 11  # the models.weights key's value (under a name no heuristic takes for a secret's)
    monkeypatch.setenv("MODEL_SEAL", key)
    (model_project.root / "models" / "hf-tiny" / "notes.txt").write_text(f"key={key}\n")
    cfg = model_project.cfg()
    cfg.models.weights.key_env = "MODEL_SEAL"
    local_kaggle.reset_stats()
    with pytest.raises(UserError, match="notes.txt"):
        push_kernel(cfg, "train", wait=False)
    assert "StartBlobUpload" not in local_kaggle.stats()["calls"]
    assert Store(local_kaggle.root).model(USER, model_project.model_slug) is None


def test_a_weights_dataset_with_a_sub_folder_reaches_the_kernel(local_kaggle, tmp_path, monkeypatch):
    from packager import kaggle_api
    from packager.localkaggle.store import Store
    from packager.push import push_kernel
    from pushkit import isolate, make_project

    isolate(monkeypatch, tmp_path)
    proj = make_project(tmp_path, local_kaggle)
    (proj.root / "models" / "hf-tiny").mkdir()
    (proj.root / "models" / "hf-tiny" / "config.json").write_text('{"hidden": 8}')
    proj.write_entry("from kpack_runtime import weights\n\n\ndef main(config):\n"
                     "    print('config', (weights.weights_path('hf-tiny') / 'config.json').read_text())\n")
    monkeypatch.chdir(proj.root)
    try:
        pushed = push_kernel(proj.cfg(), "train", wait=False)
    finally:
        kaggle_api._restore_env()
    version = Store(local_kaggle.root).dataset_version(USER, proj.weights_slug)
    assert "hf-tiny/config.json" in {f["name"] for f in version["files"]}  # uploaded as hf-tiny.zip, unpacked
    record = local_kaggle.wait_kernel(USER, proj.train_slug, pushed.ref.version)
    assert record["status"] == "COMPLETE", record.get("failure_message")
    stdout = "".join(e["data"] for e in json.loads(Path(record["log_path"]).read_text())
                     if e["stream_name"] == "stdout")
    assert 'config {"hidden": 8}' in stdout


def test_the_kernel_opens_a_sub_folder_whose_archive_was_not_unpacked(tmp_path, monkeypatch):
    import zipfile

    from kpack_runtime import weights as kweights
    from packager.weights import build_weights_dataset

    models = _hf_models(tmp_path / "models")
    cfg = _cfg(models, False)
    built = build_weights_dataset(cfg, tmp_path / "build" / "tiny-weights", spec=cfg.models.weights)
    mounted = tmp_path / "kaggle" / "input" / "models" / USER / "tiny-weights" / "pytorch" / "v1" / "1"
    shutil.copytree(built.path, mounted, ignore=shutil.ignore_patterns("hf-tiny"))
    with zipfile.ZipFile(mounted / "hf-tiny.zip", "w") as zf:  # as the client uploads a folder (dir_mode zip)
        for path in sorted((built.path / "hf-tiny").iterdir()):
            zf.write(path, path.name)
    monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(tmp_path / "kaggle"))
    kweights.prepare(cfg.model_dump(mode="json") | {"kernel": "train"})
    assert kweights.weights_path("hf-tiny/config.json").read_text() == '{"hidden": 8}'
    assert (kweights.weights_path("hf-tiny") / "model.safetensors").is_file()


def test_a_dataset_and_a_model_of_one_slug_do_not_nest_their_legacy_mounts(tmp_path):
    from packager.localkaggle.runner import Mount, _place_inputs

    for name in ("d", "m"):
        (tmp_path / name).mkdir()
    binds = _place_inputs([Mount("dataset", USER, "same", tmp_path / "d"),
                           Mount("model", USER, "same/pytorch/base/1", tmp_path / "m")], tmp_path / "input")
    assert [rel for _, rel in binds] == ["datasets/alice/same", "same", "models/alice/same/pytorch/base/1"]
