"""The wheels dataset (packager/wheels.py).

Fast: pins, snapshots, tags and refusals, each one line naming the package (crafted sdist and wrong-tag wheels on
a local --find-links, no index). Slow (marked): real downloads from the registry into a session cache, a LOCAL
site folder that a local kernel (`python -S`, the local image's site farm) imports timm and albumentations from
with the version check passing, uv and pip modes installing offline, a cp312 site for Kaggle imported by a real
Python 3.12, the content hash stable across rebuilds, and a wrong version caught by deps.activate."""
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.tags import Tag

from kpack_runtime import deps
from packager import wheels
from packager.config import parse_config
from packager.errors import UserError

REPO = Path(__file__).resolve().parents[1]
OWNER, SLUG = "alice", "digits-wheels"
PY312 = Path("/root/.pyenv/versions/3.12.1/bin/python3.12")


def make_cfg(backend="local", install="site", requirements="requirements-kernel.txt"):
    return parse_config({"competition": "digits-multilabel", "kaggle_user": OWNER, "backend": backend,
                         "kernels": {"train": {"entry": "kernel_src/train.py"}},
                         "datasets": {"wheels": {"slug": SLUG, "requirements": requirements, "install": install}}})


def project(tmp_path: Path, requirements: str, snapshot: str | None = None) -> Path:
    root = tmp_path / "project"
    root.mkdir(exist_ok=True)
    (root / "requirements-kernel.txt").write_text(requirements)
    if snapshot is not None:
        (root / "datasets_meta").mkdir(exist_ok=True)
        (root / wheels.KAGGLE_SNAPSHOT).write_text(snapshot)
    return root


# --------------------------------------------------------------------------------------------- pins

def test_pins_parse_with_comments_extras_and_markers():
    pins = wheels.parse_requirements("# kit\ntimm==1.0.31  # models\n\nHuggingface_Hub[torch]==2.4.0\n"
                                     "albumentations==2.0.8 ; python_version >= '3.10'\n")
    assert [str(p) for p in pins] == ["timm==1.0.31", "huggingface-hub==2.4.0", "albumentations==2.0.8"]


@pytest.mark.parametrize("line", ["timm", "timm>=1.0", "timm==1.*", "timm~=1.0", "timm==1.0,<2",
                                  "timm @ https://example.invalid/timm.whl"])
def test_unpinned_is_refused_with_one_line(line):
    with pytest.raises(UserError) as err:
        wheels.parse_requirements(f"albumentations==2.0.8\n{line}\n", "requirements-kernel.txt")
    message = str(err.value)
    assert "\n" not in message and message.startswith("requirements-kernel.txt:2:") and "not pinned" in message


@pytest.mark.parametrize("text, expected", [("-r other.txt\n", "options are not supported"),
                                            ("timm==1.0\ntimm==1.1\n", "timm is pinned twice"),
                                            ("tim m==1\n", "is not a requirement")])
def test_other_bad_lines_are_refused(text, expected):
    with pytest.raises(UserError, match=expected):
        wheels.parse_requirements(text)


@pytest.mark.parametrize("line", ["tim m==1.0", "==1.0", "timm>=", "timm[x==1"])
def test_garbage_line_is_one_line_naming_file_line_and_form(line):
    with pytest.raises(UserError) as err:
        wheels.parse_requirements(f"# kit\n{line}\n", "requirements-kernel.txt")
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 2
    assert message.startswith(f"requirements-kernel.txt:2: {line!r} is not a requirement; expected one pinned "
                              "package a line, name==version (e.g. timm==1.0.31)")


def test_garbage_line_through_kpack_push_is_one_line(tmp_path):
    """The CLI prints that one line and exits 2 before anything reaches a server (none is running here)."""
    root = tmp_path / "project"
    (root / "kernel_src").mkdir(parents=True)
    (root / "kernel_src" / "entry.py").write_text("def main(config):\n    pass\n")
    (root / "reqs.txt").write_text("timm==1.0.31\ntim m==1.0\n")
    (root / "kpack.yaml").write_text("competition: digits-c\nkaggle_user: alice\nbackend: local\n"
                                     f"local: {{port: 9, root: '{tmp_path / 'lk'}'}}\n"
                                     "kernels:\n  train: {entry: kernel_src/entry.py, accelerator: 'None'}\n"
                                     "datasets:\n  wheels: {slug: digits-c-wheels, requirements: reqs.txt}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    done = subprocess.run([str(Path(sys.executable).parent / "kpack"), "push", "train", "--config",
                           str(root / "kpack.yaml")], cwd=root, env={**env, "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [f"error: {root / 'reqs.txt'}:2: 'tim m==1.0' is not a requirement; "
                                        "expected one pinned package a line, name==version (e.g. timm==1.0.31) "
                                        "(Expected semicolon (after name with no version specifier) or end)"]
    assert not (tmp_path / "lk").exists()  # no local Kaggle was started


def test_unpinned_build_is_refused_before_any_download(tmp_path):
    root = project(tmp_path, "timm\n")
    with pytest.raises(UserError, match=r"requirements-kernel.txt:1: 'timm' is not pinned"):
        wheels.build_wheels_dataset(make_cfg(), tmp_path / "out", root=root, image={}, no_index=True)


# --------------------------------------------------------------------------------------------- image

def test_snapshot_parse_reads_header_and_pins():
    packages, meta = wheels.parse_snapshot("# GUESS\n# python: 3.12.12\n# platform: linux\nNumPy==2.0.2\n"
                                           "torch==2.8.0+cu126\n\n")
    assert packages == {"numpy": "2.0.2", "torch": "2.8.0+cu126"}
    assert meta["python"] == "3.12.12"


def test_repo_snapshot_is_marked_as_a_guess_until_probed():
    text = (REPO / wheels.KAGGLE_SNAPSHOT).read_text()
    packages, meta = wheels.parse_snapshot(text)
    assert meta["source"] in ("guess", "probe")
    if meta["source"] == "guess":
        assert text.startswith("# GUESS")
    assert {"torch", "numpy", "albumentations"} <= set(packages)


def test_target_follows_backend_and_snapshot_python(tmp_path):
    root = project(tmp_path, "", snapshot="# python: 3.13.1\n")
    assert wheels.target_for(make_cfg("kaggle"), root).abi == "cp313"
    assert wheels.target_for(make_cfg("kaggle"), tmp_path).abi == "cp312"  # no snapshot: the default
    local = wheels.target_for(make_cfg("local"), root)
    assert local.name == "local" and local.abi == f"cp{sys.version_info.major}{sys.version_info.minor}"


def test_torch_is_never_shipped():
    notes = []
    pins = wheels.parse_requirements("torch==2.8.0\ntimm==1.0.31\n")
    kept = wheels.check_never_shipped(pins, {"torch": "2.8.0+cu126"}, notes)
    assert [p.name for p in kept] == ["timm"] and "not shipped" in notes[0]
    with pytest.raises(UserError, match=r"torch==2.9.0: torch is never shipped .* the image has torch==2.8.0"):
        wheels.check_never_shipped(wheels.parse_requirements("torch==2.9.0\n"), {"torch": "2.8.0"}, [])


def test_plan_skips_what_the_image_has_at_the_same_version():
    notes = []
    ship, image = wheels.plan([], {"timm": "1.0.31", "numpy": "2.0.2", "safetensors": "0.8.0"},
                              {"numpy": "2.0.2", "safetensors": "0.6.2"}, notes)
    assert ship == {"safetensors": "0.8.0", "timm": "1.0.31"} and image == {"numpy": "2.0.2"}
    assert notes == ["safetensors: the image has 0.6.2, 0.8.0 is shipped and shadows it"]


# --------------------------------------------------------------------------------------------- tags

KAGGLE = wheels.kaggle_target("3.12")


@pytest.mark.parametrize("name", ["timm-1.0.31-py3-none-any.whl",
                                  "simsimd-6.5.16-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
                                  "safetensors-0.8.0-cp310-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"])
def test_kaggle_tags_accept(name):
    wheels.check_wheel_tags(Path(name), KAGGLE)


@pytest.mark.parametrize("name, expected", [
    ("simsimd-6.5.16-cp311-cp311-manylinux_2_17_x86_64.whl", "simsimd==6.5.16: wheel .* none installable"),
    ("foo-1.0-cp312-cp312-win_amd64.whl", "foo==1.0: wheel .* has tags cp312-cp312-win_amd64"),
    ("foo-1.0-cp312-cp312-manylinux_2_34_x86_64.whl", "foo==1.0"),  # newer glibc than the target promises
    ("foo-1.0-cp312-cp312-musllinux_1_2_x86_64.whl", "foo==1.0"),
    ("foo-1.0.tar.gz", "foo-1.0.tar.gz: not a wheel"),
])
def test_kaggle_tags_refuse_with_one_line(name, expected):
    with pytest.raises(UserError, match=expected) as err:
        wheels.check_wheel_tags(Path(name), KAGGLE)
    assert "\n" not in str(err.value)


def test_local_target_uses_this_interpreter():
    local = wheels.local_target()
    assert Tag(f"cp{sys.version_info.major}{sys.version_info.minor}", "abi3", "manylinux_2_17_x86_64") in local.tags \
        or sys.platform != "linux"
    with pytest.raises(UserError):
        wheels.check_wheel_tags(Path("foo-1.0-cp27-cp27mu-manylinux1_x86_64.whl"), local)


# --------------------------------------------------------------------------------------------- refusals end to end

def toy_index(folder: Path) -> Path:
    """A --find-links folder: kpacktoy 1.0 as an sdist only, 2.0 as a Windows wheel only."""
    folder.mkdir()
    meta = b"Metadata-Version: 2.1\nName: kpacktoy\nVersion: 1.0\n"
    with tarfile.open(folder / "kpacktoy-1.0.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("kpacktoy-1.0/PKG-INFO")
        info.size = len(meta)
        tf.addfile(info, io.BytesIO(meta))
    with zipfile.ZipFile(folder / "kpacktoy-2.0-cp312-cp312-win_amd64.whl", "w") as zf:
        zf.writestr("kpacktoy-2.0.dist-info/METADATA", meta.replace(b"1.0", b"2.0"))
        zf.writestr("kpacktoy-2.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: false\n"
                                                     "Tag: cp312-cp312-win_amd64\n")
        zf.writestr("kpacktoy-2.0.dist-info/RECORD", "")
    return folder


@pytest.mark.parametrize("backend", ["local", "kaggle"])
@pytest.mark.parametrize("pin, expected", [
    ("kpacktoy==1.0", "kpacktoy==1.0: no wheel at all (sdist only) for "),
    ("kpacktoy==2.0", "kpacktoy==2.0: no wheel with a matching "),
])
def test_sdist_only_and_wrong_tag_are_refused_at_pack_time(tmp_path, backend, pin, expected):
    root = project(tmp_path, f"{pin}\n", snapshot="# python: 3.12.1\nnumpy==2.0.2\n")
    links = toy_index(tmp_path / "links")
    with pytest.raises(UserError) as err:
        wheels.build_wheels_dataset(make_cfg(backend), tmp_path / "out", root=root, image={},
                                    find_links=(links,), no_index=True)
    message = str(err.value)
    assert message.startswith(expected) and "\n" not in message
    assert not (tmp_path / "out").exists()


def toy_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A real pure-Python wheel (module, METADATA, WHEEL, RECORD) that uv and pip install."""
    import base64
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: " + name + "\nVersion: " + version + "\n"
                                 + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: kpack-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
                     f"{len(text.encode())}\n" for path, text in files.items()) + f"{info}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in [*files.items(), (f"{info}/RECORD", record)]:
            zf.writestr(zipfile.ZipInfo(member, (2020, 1, 1, 0, 0, 0)), text)
    return path


@pytest.fixture
def toy_links(tmp_path):
    links = tmp_path / "links"
    toy_wheel(links, "kpacka", "1.0", ("kpackb>=1.0",))
    toy_wheel(links, "kpackb", "1.0")
    toy_wheel(links, "kpackb", "2.0")
    return links


def test_offline_build_ships_the_resolved_set_and_the_kernel_imports_it(tmp_path, toy_links, monkeypatch):
    root = project(tmp_path, "kpacka==1.0\n")
    build = wheels.build_wheels_dataset(make_cfg(), tmp_path / "out", root=root, image={},
                                        find_links=(toy_links,), no_index=True)
    manifest = json.loads((build.path / wheels.MANIFEST).read_text())
    assert manifest["shipped"] == {"kpacka": "1.0", "kpackb": "2.0"} and manifest["image"] == {}
    assert manifest["requirements"] == {"kpacka": "1.0"}
    assert manifest["files"]["site.zip"] == wheels.file_sha256(build.path / "site.zip")
    assert build.files == ["kpack-wheels.json", "site.zip"]
    # the same build again, site folder rebuilt from the cached wheels: the same bytes
    shutil.rmtree(root / wheels.CACHE_DIR / wheels.local_target().key / "sites")
    again = wheels.build_wheels_dataset(make_cfg(), tmp_path / "again", root=root, image={},
                                        find_links=(toy_links,), no_index=True)
    assert again.content_hash == build.content_hash
    # and a kernel imports it
    kaggle = tmp_path / "kaggle"
    mount(kaggle, build.path)
    monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(kaggle))
    monkeypatch.setattr(deps, "_active", None)
    saved = list(sys.path)
    try:
        deps.activate({"kaggle_user": OWNER, "datasets": {"wheels": {"slug": SLUG}}})
        import kpacka
        import kpackb

        assert (kpacka.VERSION, kpackb.VERSION) == ("1.0", "2.0")
    finally:
        sys.path[:] = saved
        sys.modules.pop("kpacka", None)
        sys.modules.pop("kpackb", None)


def test_what_the_image_has_is_not_shipped(tmp_path, toy_links, capsys):
    root = project(tmp_path, "kpacka==1.0\n")
    build = wheels.build_wheels_dataset(make_cfg(), tmp_path / "out", root=root, image={"kpackb": "1.0"},
                                        find_links=(toy_links,), no_index=True)
    manifest = json.loads((build.path / wheels.MANIFEST).read_text())
    assert manifest["shipped"] == {"kpacka": "1.0"} and manifest["image"] == {"kpackb": "1.0"}
    assert "1 package(s) shipped" in capsys.readouterr().out


def test_pins_that_conflict_are_refused_with_uvs_reason(tmp_path, toy_links):
    toy_wheel(toy_links, "kpackc", "1.0", ("kpackb>=3",))
    root = project(tmp_path, "kpackc==1.0\nkpackb==1.0\n")
    with pytest.raises(UserError) as err:
        wheels.build_wheels_dataset(make_cfg(), tmp_path / "out", root=root, image={},
                                    find_links=(toy_links,), no_index=True)
    message = str(err.value)
    assert message.startswith("resolving kpackc==1.0, kpackb==1.0 for local") and "\n" not in message
    assert "kpackc depend on kpackb>=3" in message and "you require kpackb==1.0" in message


PROBED = "# source: probe\n# probed: 2026-11-20T08:00:00Z\n"


@pytest.mark.parametrize("header, known", [("# GUESS\n# source: guess\n", False), ("", False),
                                           ("# source: probe\n", False), (PROBED, True)])
def test_snapshot_header_says_whether_it_was_probed(tmp_path, header, known):
    path = tmp_path / "snapshot.txt"
    path.write_text(header + "# python: 3.12.1\nnumpy==2.0.2\n")
    snapshot = wheels.snapshot_file(path)
    assert snapshot.known is known and snapshot.packages == {"numpy": "2.0.2"}
    assert snapshot.describe() == ("probed 2026-11-20" if known else "a guess")
    assert wheels.snapshot_file(tmp_path / "none.txt") is None


@pytest.mark.parametrize("header, shipped", [("# source: guess\n", {"kpacka": "1.0", "kpackb": "2.0"}),
                                             (PROBED, {})])
def test_kaggle_build_leaves_to_the_image_only_what_a_probe_saw(tmp_path, toy_links, header, shipped):
    """The snapshot claims both packages at the resolved versions: a guess is not believed (the kernel would stop on
    a pinned version the image lacks), a probe is."""
    root = project(tmp_path, "kpacka==1.0\n", snapshot=header + "# python: 3.12.1\nkpacka==1.0\nkpackb==2.0\n")
    build = wheels.build_wheels_dataset(make_cfg("kaggle"), tmp_path / "out", root=root,
                                        find_links=(toy_links,), no_index=True)
    manifest = json.loads((build.path / wheels.MANIFEST).read_text())
    assert manifest["shipped"] == shipped
    assert manifest["image"] == ({} if shipped else {"kpacka": "1.0", "kpackb": "2.0"})
    assert manifest["snapshot"] == ({"source": "guess", "probed": None} if shipped else
                                    {"source": "probe", "probed": "2026-11-20T08:00:00Z"})
    assert any("is a guess: every resolved package ships" in n for n in build.notes) == bool(shipped)


def test_local_build_reads_its_own_snapshot_apart_from_kaggles(tmp_path, toy_links):
    """A probed local snapshot plays the image for the local target; the Kaggle one is never read for it."""
    root = project(tmp_path, "kpacka==1.0\n", snapshot=PROBED + "# python: 3.12.1\nkpacka==1.0\nkpackb==2.0\n")
    build = wheels.build_wheels_dataset(make_cfg("local"), tmp_path / "out", root=root,
                                        find_links=(toy_links,), no_index=True)
    assert json.loads((build.path / wheels.MANIFEST).read_text())["shipped"] == {"kpacka": "1.0", "kpackb": "2.0"}
    (root / wheels.LOCAL_SNAPSHOT).write_text(PROBED + "kpackb==2.0\n")
    build = wheels.build_wheels_dataset(make_cfg("local"), tmp_path / "out", root=root,
                                        find_links=(toy_links,), no_index=True)
    manifest = json.loads((build.path / wheels.MANIFEST).read_text())
    assert manifest["shipped"] == {"kpacka": "1.0"} and manifest["image"] == {"kpackb": "2.0"}
    assert manifest["snapshot"]["source"] == "probe"


def test_local_build_without_a_snapshot_reads_the_local_image(tmp_path):
    snapshot = wheels.image_snapshot(wheels.local_target(), tmp_path)
    assert snapshot.source == wheels.LIVE and snapshot.known
    assert "numpy" in snapshot.packages and "timm" not in snapshot.packages


@pytest.mark.parametrize("mode", ["uv", "pip"])
def test_wheel_modes_ship_the_wheels_at_the_top_level(tmp_path, toy_links, mode):
    toy_wheel(toy_links, "uv", wheels.uv_version())  # stands in for uv's own wheel: no download offline
    root = project(tmp_path, "kpacka==1.0\n")
    build = wheels.build_wheels_dataset(make_cfg(install=mode), tmp_path / "out", root=root, image={},
                                        find_links=(toy_links,), no_index=True)
    manifest = json.loads((build.path / wheels.MANIFEST).read_text())
    assert manifest["wheels"] == ["kpacka-1.0-py3-none-any.whl", "kpackb-2.0-py3-none-any.whl"]
    expected = set(manifest["wheels"]) | ({f"uv-{wheels.uv_version()}-py3-none-any.whl"} if mode == "uv" else set())
    assert set(build.files) == expected | {wheels.MANIFEST}
    assert all((build.path / name).is_file() for name in build.files)  # files only: no folder needs dir-mode


# --------------------------------------------------------------------------------------------- determinism (fast)

def test_zip_is_byte_identical_whatever_the_mtimes(tmp_path):
    src = tmp_path / "site"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "__init__.py").write_text("x = 1\n")
    (src / "b.txt").write_text("b\n")
    wheels.deterministic_zip(src, tmp_path / "one.zip")
    os.utime(src / "b.txt", (1_000_000_000, 1_000_000_000))
    (src / "pkg" / "__init__.py").write_text("x = 1\n")
    wheels.deterministic_zip(src, tmp_path / "two.zip")
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()
    assert zipfile.ZipFile(tmp_path / "one.zip").namelist() == ["b.txt", "pkg/__init__.py"]


def test_make_portable_drops_scripts_bytecode_and_stamps(tmp_path):
    site = tmp_path / "site"
    info = site / "foo-1.0.dist-info"
    (site / "bin").mkdir(parents=True)
    (site / "foo" / "__pycache__").mkdir(parents=True)
    info.mkdir()
    (site / "bin" / "foo").write_text("#!/root/.pyenv/versions/3.11.7/bin/python\n")
    (site / "foo" / "__init__.py").write_text("")
    (site / "foo" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0")
    (info / "uv_cache.json").write_text('{"timestamp": 1}')
    (info / "METADATA").write_text("Name: foo\nVersion: 1.0\n")
    (info / "RECORD").write_text("../../bin/foo,sha256=x,1\nbin/foo,sha256=x,1\nfoo/__init__.py,,\n"
                                 "foo/__pycache__/__init__.cpython-311.pyc,,\nfoo-1.0.dist-info/uv_cache.json,,\n"
                                 "foo-1.0.dist-info/METADATA,,\nfoo-1.0.dist-info/RECORD,,\n")
    wheels.make_portable(site)
    assert sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()) == [
        "foo-1.0.dist-info/METADATA", "foo-1.0.dist-info/RECORD", "foo/__init__.py"]
    assert (info / "RECORD").read_text() == ("../../bin/foo,sha256=x,1\nfoo/__init__.py,,\n"
                                             "foo-1.0.dist-info/METADATA,,\nfoo-1.0.dist-info/RECORD,,\n")


# --------------------------------------------------------------------------------------------- slow: real wheels

def local_image() -> tuple[Path, dict[str, str]]:
    from packager.localkaggle.image import image_distributions, image_site

    return image_site(), image_distributions()


@pytest.fixture(scope="session")
def wheel_cache(tmp_path_factory):
    """Downloads shared by the slow tests (the default set only), per target."""
    return tmp_path_factory.mktemp("wheel-cache")


@pytest.fixture(scope="session")
def local_build(wheel_cache, tmp_path_factory):
    root = project(tmp_path_factory.mktemp("local"), (REPO / "requirements-kernel.txt").read_text())
    out = root / "build" / "datasets" / SLUG
    build = wheels.build_wheels_dataset(make_cfg("local"), out, root=root, cache_dir=wheel_cache / "local")
    return root, build


def mount(kaggle_root: Path, dataset: Path) -> None:
    target = kaggle_root / "input" / "datasets" / OWNER / SLUG
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(dataset, target)


KERNEL = """
import sys, time
start = time.perf_counter()
from kpack_runtime import deps
info = deps.activate({config!r})
ready = time.perf_counter() - start
{body}
print("OK", info["mode"], round(ready, 3))
"""


def run_local_kernel(kaggle_root: Path, body: str, config: dict | None = None,
                     python: str = sys.executable) -> subprocess.CompletedProcess:
    """A script run as the local Kaggle runs kernels: `python -S` with only the image's site farm importable,
    plus kpack_runtime (a real kernel has its inlined copy; packager/ and the venv are not there)."""
    config = config or {"kaggle_user": OWNER, "datasets": {"wheels": {"slug": SLUG}}}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "KPACK_KAGGLE_ROOT": str(kaggle_root),
           "PYTHONPATH": os.pathsep.join([str(local_image()[0]), str(_kernel_src_copy())]),
           "HOME": str(kaggle_root)}
    return subprocess.run([python, "-S", "-c", KERNEL.format(config=config, body=body)],
                          capture_output=True, text=True, env=env, timeout=540)


_KSRC: list[Path] = []


def _kernel_src_copy() -> Path:
    """A folder holding only kpack_runtime (stdlib-only modules), so the kernel cannot import packager."""
    if not _KSRC:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="kpack-ksrc-"))
        shutil.copytree(REPO / "kpack_runtime", folder / "kpack_runtime", ignore=shutil.ignore_patterns("__pycache__"))
        _KSRC.append(folder)
    return _KSRC[0]


@pytest.mark.slow
def test_local_site_imports_timm_and_albumentations_in_a_local_kernel(local_build, tmp_path):
    root, build = local_build
    manifest = json.loads((build.path / wheels.MANIFEST).read_text())
    assert manifest["target"]["name"] == "local" and manifest["mode"] == "site"
    assert manifest["requirements"] == {"albumentations": "2.0.8", "timm": "1.0.31"}
    assert {"timm", "albumentations"} <= set(manifest["shipped"])
    assert not any(wheels.never_shipped(n) for n in manifest["shipped"])
    _, image = local_image()
    assert all(image.get(n) != v for n, v in manifest["shipped"].items())  # nothing the image already has
    assert build.files == ["kpack-wheels.json", "site.zip"]
    mount(tmp_path / "kaggle", build.path)
    done = run_local_kernel(tmp_path / "kaggle", "import timm, albumentations\n"
                            "assert timm.__version__ == '1.0.31' and albumentations.__version__ == '2.0.8'\n"
                            "assert timm.__file__.startswith(info['site']), timm.__file__")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "OK site" in done.stdout


@pytest.mark.slow
def test_without_the_dataset_a_local_kernel_cannot_import_timm():
    """The local image really lacks timm, so the test above proves the dataset works."""
    probe = subprocess.run([sys.executable, "-S", "-c", "import timm"], capture_output=True, text=True,
                           env={"PYTHONPATH": str(local_image()[0])})
    assert probe.returncode != 0 and "No module named 'timm'" in probe.stderr


@pytest.mark.slow
def test_same_requirements_give_the_same_hash(local_build, wheel_cache, tmp_path):
    root, build = local_build
    cache = wheel_cache / "local"
    shutil.rmtree(cache / "sites")  # rebuild the site folder itself, from the same wheels
    again = wheels.build_wheels_dataset(make_cfg("local"), tmp_path / "again", root=root, cache_dir=cache)
    assert again.content_hash == build.content_hash
    assert (again.path / "site.zip").read_bytes() == (build.path / "site.zip").read_bytes()
    archive = zipfile.ZipFile(again.path / "site.zip")
    names = archive.namelist()
    assert names == sorted(names) and not any(n.startswith("bin/") for n in names)
    assert not any(n.endswith(("uv_cache.json", "direct_url.json")) for n in names)
    assert wheels.SITE_MARKER in names
    # bytecode for the kernel's Python, hash-based (flags 0b01: unchecked) and with no build path inside
    tag = f"cpython-{sys.version_info.major}{sys.version_info.minor}"
    pyc = f"timm/__pycache__/__init__.{tag}.pyc"
    assert pyc in names
    data = archive.read(pyc)
    assert int.from_bytes(data[4:8], "little") == 0b01
    assert b"kpack-site-" not in data and str(wheel_cache).encode() not in data
    assert json.loads(archive.read(wheels.SITE_MARKER))["bytecode"].startswith(f"cpython-{sys.version_info.major}.")


@pytest.mark.slow
def test_tampered_pin_is_caught_by_the_kernel(local_build, tmp_path):
    _, build = local_build
    dataset = tmp_path / "dataset"
    shutil.copytree(build.path, dataset)
    manifest = json.loads((dataset / wheels.MANIFEST).read_text())
    manifest["requirements"]["timm"] = "1.0.30"
    (dataset / wheels.MANIFEST).write_text(json.dumps(manifest))
    mount(tmp_path / "kaggle", dataset)
    done = run_local_kernel(tmp_path / "kaggle", "import timm")
    assert done.returncode == 1
    assert done.stderr.strip().endswith("timm: expected 1.0.30, found 1.0.31")
    assert "Traceback" not in done.stderr and "OK" not in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["uv", "pip"])
def test_uv_and_pip_modes_install_offline_into_temp(local_build, wheel_cache, tmp_path, mode):
    root, _ = local_build
    build = wheels.build_wheels_dataset(make_cfg("local", install=mode), tmp_path / mode, root=root,
                                        cache_dir=wheel_cache / "local")
    manifest = json.loads((build.path / wheels.MANIFEST).read_text())
    assert manifest["mode"] == mode and "site.zip" not in build.files
    assert ("uv" in manifest) == (mode == "uv")
    assert all(name.endswith(".whl") for name in build.files if name != wheels.MANIFEST)
    kaggle = tmp_path / "kaggle"
    mount(kaggle, build.path)
    done = run_local_kernel(kaggle, "import albucore, safetensors\n"
                            "assert info['site'].startswith(str(__import__('pathlib').Path(info['site']).parent))")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"OK {mode}" in done.stdout
    assert not (kaggle / "working").exists()
    assert any(p.name.startswith(f"kpack-{mode}-") for p in (kaggle / "temp").iterdir())


@pytest.mark.slow
def test_kaggle_target_ships_cp312_wheels_and_site(wheel_cache, tmp_path):
    """The repo's image snapshot, less two packages with compiled code, so cp312 binaries are shipped too."""
    snapshot = (REPO / wheels.KAGGLE_SNAPSHOT).read_text()
    root = project(tmp_path, (REPO / "requirements-kernel.txt").read_text(), snapshot=snapshot)
    image, _ = wheels.parse_snapshot(snapshot)
    for name in ("simsimd", "stringzilla"):
        image.pop(name)
    build = wheels.build_wheels_dataset(make_cfg("kaggle"), tmp_path / "out", root=root, image=image,
                                        cache_dir=wheel_cache / "kaggle")
    manifest = json.loads((build.path / wheels.MANIFEST).read_text())
    assert manifest["target"] == {"name": "kaggle", "python": "3.12", "platform": "x86_64-manylinux_2_28"}
    assert {"timm", "simsimd", "stringzilla"} <= set(manifest["shipped"])
    assert "albumentations" in manifest["image"]  # the snapshot has 2.0.8: not shipped
    for wheel in (wheel_cache / "kaggle").glob("*.whl"):
        wheels.check_wheel_tags(wheel, wheels.kaggle_target("3.12"))
    names = zipfile.ZipFile(build.path / "site.zip").namelist()
    assert any(n.endswith(".cpython-312-x86_64-linux-gnu.so") for n in names)
    assert not any("cpython-311" in n for n in names)
    assert (manifest["bytecode"] is not None) == (wheels.bytecode_python(wheels.kaggle_target("3.12")) is not None)
    if manifest["bytecode"]:
        assert "timm/__pycache__/__init__.cpython-312.pyc" in names
    if not PY312.exists():
        pytest.skip(f"{PY312} not here: the cp312 site was checked by its tags only")
    kaggle = tmp_path / "kaggle"
    mount(kaggle, build.path)
    body = ("import simsimd, stringzilla\n"
            "deps.check_versions({'simsimd': info['shipped']['simsimd'], 'stringzilla': info['shipped']["
            "'stringzilla']}, 'cp312')\n")
    # Only the shipped packages can be checked on a bare 3.12: the image's (albumentations...) are not here.
    code = (f"import sys; sys.path.append({str(_kernel_src_copy())!r})\n"
            "from kpack_runtime import deps\n"
            "root, manifest_path = deps.find_dataset('alice/digits-wheels')\n"
            "manifest = deps._read_manifest(manifest_path)\n"
            "deps._check_python(manifest)\n"
            "folder = deps.site_folder(manifest_path.parent, manifest)\n"
            "deps.put_first(folder)\n"
            "info = {'shipped': manifest['shipped']}\n" + body + "print('OK cp312')\n")
    done = subprocess.run([str(PY312), "-S", "-c", code], capture_output=True, text=True,
                          env={"KPACK_KAGGLE_ROOT": str(kaggle), "PATH": os.environ.get("PATH", "")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "OK cp312" in done.stdout
    # and a 3.11 kernel is refused up front
    wrong = run_local_kernel(kaggle, "")
    assert wrong.returncode == 1 and "built for Python 3.12 (kaggle)" in wrong.stderr


# --------------------------------------------------------------------------------------------- image probe

from packager import imageprobe  # noqa: E402


def test_probe_script_records_this_interpreter(tmp_path):
    script = tmp_path / imageprobe.CODE_FILE
    script.write_text(imageprobe.PROBE_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, "KPACK_KAGGLE_ROOT": str(tmp_path / "kaggle")})
    assert done.returncode == 0, done.stderr
    packages, meta = imageprobe.parse_probe((tmp_path / "kaggle" / "working" / imageprobe.PROBE_FILE).read_text())
    assert meta["python"] == ".".join(map(str, sys.version_info[:3]))
    assert meta["machine"] and meta["implementation"] == "cpython"
    from importlib.metadata import version

    assert packages["numpy"] == version("numpy") and packages["pyyaml"] == version("PyYAML")


@pytest.mark.parametrize("text, expected", [("numpy==2.0\n", "not a kpack image probe output"),
                                            ("# kpack image probe\nnumpy==2.0\n", "not a kpack image probe"),
                                            ("# kpack image probe\n# python: 3.12.1\n", "found no packages")])
def test_probe_output_is_checked(text, expected):
    with pytest.raises(UserError, match=expected):
        imageprobe.parse_probe(text)


def test_refresh_rewrites_the_kaggle_snapshot_and_the_target_follows(tmp_path):
    root = project(tmp_path, "", snapshot="# GUESS\n# source: guess\n# python: 3.12.12\nnumpy==2.0.2\ntimm==1.0.20\n")
    probe_text = ("# kpack image probe\n# python: 3.13.2\n# implementation: cpython\n# platform: Linux-x86_64\n"
                  "# machine: x86_64\n# glibc: 2.35\nnumpy==2.1.3\nNumPy==9\ntorch==2.9.0+cu126\nPyYAML==6.0.3\n")
    summary = imageprobe.refresh_snapshot(make_cfg("kaggle"), probe_text, "alice/kpack-image-probe/4", root,
                                          when="2026-11-23T17:00:00Z")
    assert "\n" not in summary
    assert "3 packages, Python 3.13.2 (from alice/kpack-image-probe/4)" in summary
    assert "2 added, 1 removed, 1 changed (numpy 2.0.2 -> 2.1.3)" in summary
    text = (root / wheels.KAGGLE_SNAPSHOT).read_text()
    assert "GUESS" not in text and "# source: probe" in text and "# probed: 2026-11-23T17:00:00Z" in text
    packages, meta = wheels.parse_snapshot(text)
    assert packages == {"numpy": "2.1.3", "pyyaml": "6.0.3", "torch": "2.9.0+cu126"}
    assert meta["glibc"] == "2.35"
    assert wheels.target_for(make_cfg("kaggle"), root).abi == "cp313"
    # the local backend writes its own file and leaves the Kaggle one alone
    imageprobe.refresh_snapshot(make_cfg("local"), probe_text, "alice/kpack-image-probe/5", root)
    assert (root / wheels.LOCAL_SNAPSHOT).is_file() and (root / wheels.KAGGLE_SNAPSHOT).read_text() == text


def test_probe_kernel_metadata_is_what_the_client_accepts(tmp_path):
    folder = imageprobe.write_probe_kernel(make_cfg("kaggle"), tmp_path / "probe")
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    assert meta["id"] == f"{OWNER}/{imageprobe.PROBE_SLUG}" and meta["enable_internet"] is False
    assert meta["machine_shape"] == "NvidiaTeslaT4"  # the train kernel's image, not the CPU one
    from slugify import slugify

    assert slugify(meta["title"]) == imageprobe.PROBE_SLUG
    assert (folder / meta["code_file"]).read_text() == imageprobe.PROBE_SCRIPT


@pytest.mark.slow
def test_probe_image_on_the_local_kaggle(local_kaggle, tmp_path):
    """`kpack probe-image` end to end: push, run in a local kernel, download, refresh the local snapshot."""
    (tmp_path / "kpack.yaml").write_text(
        f"competition: digits-multilabel\nkaggle_user: alice\nbackend: local\n"
        f"local: {{port: {local_kaggle.port}, root: {local_kaggle.root}}}\n"
        "kernels:\n  train: {entry: kernel_src/train.py, accelerator: 'None'}\n")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k.lower() not in
           ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    env.update(HOME=str(home), TMPDIR=str(tmp_path), KPACK_POLL_MIN_S="0.2", KPACK_POLL_MAX_S="1")
    done = subprocess.run([str(Path(sys.executable).parent / "kpack"), "probe-image"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-2000:]
    assert "datasets_meta/local-image-packages.txt:" in done.stdout
    packages, meta = wheels.parse_snapshot((tmp_path / wheels.LOCAL_SNAPSHOT).read_text())
    assert meta["source"] == "probe" and meta["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    _, image = local_image()
    assert packages["torch"] == image["torch"] and packages["numpy"] == image["numpy"]
    assert "timm" not in packages and "albumentations" not in packages  # the local image lacks them
