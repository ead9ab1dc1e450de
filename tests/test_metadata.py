"""kernel-metadata.json and dataset-metadata.json: the kaggle client's rules, checked at build time."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from packager.build import build_kernel
from packager.config import parse_config
from packager.errors import UserError
from packager.metadata import (accelerator_warning, dataset_metadata, kernel_metadata, title_for)

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "miniproj"


def cfg_with(**kernel):
    return parse_config({"competition": "mini-comp", "kaggle_user": "alice",
                         "kernels": {"train": {"entry": "kernel_src/train.py", **kernel}}})


def test_defaults():
    meta = kernel_metadata(cfg_with(), "train", "mini-comp-train.py", [], [])
    assert meta == {
        "id": "alice/mini-comp-train",
        "title": "Mini Comp Train",
        "code_file": "mini-comp-train.py",
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_internet": False,
        "enable_gpu": True,
        "enable_tpu": False,
        "machine_shape": "NvidiaTeslaT4",
        "dataset_sources": [],
        "competition_sources": [],
        "kernel_sources": [],
        "model_sources": [],
    }


def test_internet_is_always_explicit():
    assert kernel_metadata(cfg_with(internet=True), "train", "k.py")["enable_internet"] is True
    assert "enable_internet" in kernel_metadata(cfg_with(), "train", "k.py")


@pytest.mark.parametrize("shape, gpu, tpu", [
    ("None", False, False), ("NvidiaTeslaT4", True, False), ("NvidiaL4", True, False),
    ("NvidiaTeslaA100", True, False), ("NvidiaH100", True, False), ("NvidiaTeslaP100", True, False),
    ("TpuV5E8", False, True), ("TpuV6E8", False, True)])
def test_accelerators(shape, gpu, tpu):
    meta = kernel_metadata(cfg_with(accelerator=shape), "train", "k.py")
    assert (meta["enable_gpu"], meta["enable_tpu"]) == (gpu, tpu)
    assert meta.get("machine_shape") == (None if shape == "None" else shape)


def test_p100_is_accepted_with_a_warning(tmp_path):
    assert "T4 x2" in accelerator_warning("NvidiaTeslaP100")
    assert accelerator_warning("NvidiaTeslaT4") is None
    root = tmp_path / "proj"
    shutil.copytree(FIXTURE, root)
    built = build_kernel(cfg_with(accelerator="NvidiaTeslaP100"), "train", root=root)
    assert any("T4 x2" in w for w in built.warnings)
    assert json.loads(built.metadata.read_text())["machine_shape"] == "NvidiaTeslaP100"


def test_sources_are_kept_in_order_without_duplicates():
    cfg = cfg_with(sources={"competitions": ["mini-comp", "mini-comp"]})
    meta = kernel_metadata(cfg, "train", "k.py", ["bob/data-one", "alice/wheels-x", "bob/data-one"],
                           ["bob/kernel-one", "bob/kernel-one/3"])
    assert meta["dataset_sources"] == ["bob/data-one", "alice/wheels-x"]
    assert meta["kernel_sources"] == ["bob/kernel-one", "bob/kernel-one/3"]
    assert meta["competition_sources"] == ["mini-comp"]


@pytest.mark.parametrize("kernel, args, match", [
    ({"slug": "abc"}, {}, "must be 5-50 lowercase"),
    ({"title": "Abc"}, {}, "shorter than 5 characters"),
    ({"title": "Mini Comp Training"}, {}, "becomes the slug 'mini-comp-training' on Kaggle, not 'mini-comp-train'"),
    ({}, {"kernel_sources": ["bob/abc"]}, "at least 5 characters"),
    ({}, {"kernel_sources": ["bob"]}, "is not 'owner/slug'"),
    ({}, {"dataset_sources": ["bob/"]}, "is not 'owner/slug'"),
    ({}, {"dataset_sources": ["a/b/c/d"]}, "is not 'owner/slug'"),
    ({}, {"kernel_sources": ["alice/mini-comp-train"]}, "cannot read its own output"),
    ({}, {"code_file": "sub/k.py"}, "must be a .py file name"),
])
def test_refusals(kernel, args, match):
    args = {"code_file": "k.py"} | args
    with pytest.raises(UserError, match=match) as info:
        kernel_metadata(cfg_with(**kernel), "train", args.pop("code_file"), **args)
    assert "\n" not in str(info.value)


def test_owner_must_be_a_user_name():
    cfg = parse_config({"competition": "mini-comp", "kaggle_user": "not a user",
                        "kernels": {"train": {"entry": "kernel_src/train.py"}}})
    with pytest.raises(UserError, match="kaggle_user"):
        kernel_metadata(cfg, "train", "k.py")


def test_titles_read_off_slugs_slugify_back():
    for slug in ("mini-comp-train", "imet-2019-infer", "a1-b2-c3", "x" * 50):
        assert title_for(slug) != "" and __import__("slugify").slugify(title_for(slug)) == slug


def test_dataset_metadata():
    meta = dataset_metadata("alice", "mini-comp-wheels")
    assert meta == {"id": "alice/mini-comp-wheels", "title": "Mini Comp Wheels",
                    "licenses": [{"name": "CC0-1.0"}], "isPrivate": True}
    meta = dataset_metadata("alice", "mini-weights", "Mini weights v2", False, "CC-BY-SA-4.0",
                            subtitle="Backbone weights for the demo", keywords=["a", "a", "b"])
    assert meta["licenses"] == [{"name": "CC-BY-SA-4.0"}] and meta["isPrivate"] is False
    assert meta["subtitle"] == "Backbone weights for the demo" and meta["keywords"] == ["a", "b"]


@pytest.mark.parametrize("args, match", [
    (("alice", "short"), "must be 6-50"),
    (("alice", "x" * 51), "must be 6-50"),
    (("alice", "Not_A_Slug"), "must be 6-50"),
    (("alice", "mini-wheels", "tiny"), "title 'tiny' must be 6-50"),
    (("alice", "mini-wheels", "t" * 51), "must be 6-50"),
    (("", "mini-wheels"), "kaggle_user"),
])
def test_dataset_refusals(args, match):
    with pytest.raises(UserError, match=match):
        dataset_metadata(*args)
    with pytest.raises(UserError, match="subtitle must be 20-80"):
        dataset_metadata("alice", "mini-wheels", subtitle="too short")


def test_dataset_metadata_from_config_and_build():
    cfg = parse_config({"competition": "mini-comp", "kaggle_user": "alice",
                        "kernels": {"train": {"entry": "kernel_src/train.py"}},
                        "datasets": {"wheels": {"slug": "mini-wheels"}, "weights": {"slug": "mini-weights",
                                                                                    "public": True}}})
    wheels = dataset_metadata(cfg, SimpleNamespace(slug="mini-wheels", title=None))
    weights = dataset_metadata(cfg, SimpleNamespace(slug="mini-weights", title="Mini weights"))
    assert wheels["id"] == "alice/mini-wheels" and wheels["isPrivate"] is True
    assert weights["title"] == "Mini weights" and weights["isPrivate"] is False


# -------------------------------------------------------------------------------------------------------
# the real kaggle client accepts what we write


class _Captured(Exception):
    pass


class _FakeClient:
    """Stands in for kagglesdk's client: records the request the kaggle client would send."""

    def __init__(self):
        self.requests = []
        self.kernels = SimpleNamespace(kernels_api_client=SimpleNamespace(save_kernel=self._save))

    def _save(self, request):
        self.requests.append(request)
        return SimpleNamespace(error=None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_kaggle_client_push_accepts_the_build(tmp_path, monkeypatch):
    from kaggle.api.kaggle_api_extended import KaggleApi

    root = tmp_path / "proj"
    shutil.copytree(FIXTURE, root)
    cfg = parse_config({"competition": "mini-comp", "kaggle_user": "alice",
                        "kernels": {"train": {"entry": "kernel_src/train.py", "accelerator": "NvidiaL4",
                                              "sources": {"competitions": ["mini-comp"],
                                                          "kernels": ["bob/prev-kernel"]}}},
                        "datasets": {"wheels": {"slug": "mini-wheels"}}})
    built = build_kernel(cfg, "train", root=root)
    api = KaggleApi()
    fake = _FakeClient()
    monkeypatch.setattr(api, "build_kaggle_client", lambda: fake)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        api.kernels_push(str(built.folder))
    assert out.getvalue() == ""  # no "title does not resolve to the specified id" warning
    (request,) = fake.requests
    assert request.slug == "alice/mini-comp-train" and request.new_title == "Mini Comp Train"
    assert request.text == built.script.read_text()
    assert (request.language, request.kernel_type) == ("python", "script")
    assert request.enable_internet is False and request.enable_gpu is True and request.is_private is True
    assert request.machine_shape == "NvidiaL4"
    assert request.dataset_data_sources == ["alice/mini-wheels"]
    assert request.competition_data_sources == ["mini-comp"] and request.kernel_data_sources == ["bob/prev-kernel"]


def test_kaggle_client_dataset_create_accepts_the_metadata(tmp_path, monkeypatch):
    from kaggle.api.kaggle_api_extended import KaggleApi

    (tmp_path / "dataset-metadata.json").write_text(json.dumps(dataset_metadata("alice", "mini-comp-wheels")))
    api = KaggleApi()
    api.config_values = {"username": "alice"}
    monkeypatch.setattr(api, "dataset_status", lambda ref: "ready")  # stops right after the client's checks
    result = api.dataset_create_new(str(tmp_path))
    assert "already in use" in result.error  # i.e. every validation passed


# ------------------------------------------------------------------ a hand-edited kernel-metadata.json

GOOD_META = {"id": "alice/mini-comp-train", "title": "Mini Comp Train", "code_file": "mini-comp-train.py"}
FIX = "fix it, or rebuild it with `kpack build KIND`"


@pytest.mark.parametrize("text, expected", [
    ("[1, 2]", "expected a JSON object of kernel settings, got a list"),
    ('"alice/mini-comp-train"', "expected a JSON object of kernel settings, got a string"),
    (json.dumps({**GOOD_META, "code_file": 3}), "code_file: expected a string, the script's file name, e.g. "
                                                "'train.py' (got a number 3)"),
    (json.dumps({**GOOD_META, "code_file": ["a.py"]}), "code_file: expected a string, the script's file name, "
                                                       "e.g. 'train.py' (got a list [\"a.py\"])"),
    (json.dumps({k: v for k, v in GOOD_META.items() if k != "code_file"}),
     "code_file: expected a string, the script's file name, e.g. 'train.py' (missing)"),
    (json.dumps({**GOOD_META, "id": None}), "id: expected a string, 'owner/kernel-slug' (got null null)"),
    (json.dumps({**GOOD_META, "id": "mini-comp-train"}), "id: 'mini-comp-train' is not 'owner/kernel-slug'"),
    (json.dumps({**GOOD_META, "code_file": "../x.py"}), "code_file: '../x.py' must be a file name inside "),
    ('{"id": "alice/x",\n "code_file": "x.py",,}', "not valid JSON (line 2 column 22: Expecting property name "
                                                   "enclosed in double quotes)"),
])
def test_a_broken_kernel_metadata_is_one_line(tmp_path, text, expected):
    from packager.metadata import read_kernel_metadata

    (tmp_path / "kernel-metadata.json").write_text(text)
    with pytest.raises(UserError) as err:
        read_kernel_metadata(tmp_path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'kernel-metadata.json'}: {expected}"), message
    assert message.endswith(FIX) or "must be a file name" in message


def test_kernel_metadata_read_back(tmp_path):
    from packager.metadata import read_kernel_metadata

    (tmp_path / "kernel-metadata.json").write_text(json.dumps(GOOD_META))
    assert read_kernel_metadata(tmp_path) == GOOD_META
    with pytest.raises(UserError, match=r"kernel-metadata.json: missing; build the kernel first"):
        read_kernel_metadata(tmp_path / "nowhere")


def test_watch_names_a_damaged_metadata_file_not_a_rebuild(tmp_path):
    """`kpack watch` used to call invalid JSON "rebuilt since, or missing", and a list a traceback."""
    import subprocess
    import sys

    (tmp_path / "kpack.yaml").write_text("competition: mini-comp\nkaggle_user: alice\nkernels:\n"
                                         "  train: {entry: kernel_src/train.py}\n")
    folder = tmp_path / "build" / "kernels" / "mini-comp-train"
    folder.mkdir(parents=True)
    (folder / "mini-comp-train.py").write_text("print(1)\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "ledger.jsonl").write_text(json.dumps(
        {"kind": "train", "base_slug": "mini-comp-train", "backend": "local", "kernel": "alice/mini-comp-train",
         "version": 1, "session": 1, "status": "RUNNING"}) + "\n")
    path = folder / "kernel-metadata.json"
    for text, expected in [('{"id": "alice/mini-comp-train", ', "not valid JSON (line 1 column 33: Expecting "
                                                                "property name enclosed in double quotes)"),
                           ("[]", "expected a JSON object of kernel settings, got a list")]:
        path.write_text(text)
        done = subprocess.run([sys.executable, "-m", "packager.cli", "watch", "train"], cwd=tmp_path,
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
        assert done.returncode == 2
        assert done.stderr.splitlines() == [f"error: {Path('build/kernels/mini-comp-train/kernel-metadata.json')}: "
                                            f"{expected}; {FIX}"]
