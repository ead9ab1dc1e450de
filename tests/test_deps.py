"""The kernel side of the wheels dataset (kpack_runtime/deps.py), on hand-made datasets under a fake Kaggle
root: the site folder is found unpacked or as site.zip (extracted into temp/, never working/), goes first on
sys.path, and every pinned version is checked before anything runs; each failure is one line."""
import json
import sys
import zipfile
from pathlib import Path

import pytest

from kpack_runtime import deps

OWNER, SLUG = "alice", "digits-wheels"
CONFIG = {"kaggle_user": OWNER, "datasets": {"wheels": {"slug": SLUG}}}
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def dist(site: Path, module: str, name: str, version: str) -> None:
    """A minimal installed distribution: a module and its .dist-info."""
    (site / f"{module}.py").write_text(f"VERSION = {version!r}\n")
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nbody\n")


def make_dataset(root: Path, *, zipped: bool, shipped=None, requirements=None, python=PY, layout="datasets",
                 installed=None) -> Path:
    shipped = {"kpacktoy": "1.0"} if shipped is None else shipped
    requirements = dict(shipped) if requirements is None else requirements
    installed = dict(shipped) if installed is None else installed
    folder = (root / "input" / "datasets" / OWNER / SLUG) if layout == "datasets" else (root / "input" / SLUG)
    folder.mkdir(parents=True)
    site = root / "build-site"
    site.mkdir()
    for name, version in installed.items():
        dist(site, name.replace("-", "_"), name, version)
    (site / deps.SITE_MARKER).write_text("{}\n")
    if zipped:
        with zipfile.ZipFile(folder / "site.zip", "w") as zf:
            for path in sorted(site.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(site).as_posix())
    else:
        site.rename(folder / "site")
    manifest = {"format": 1, "target": {"name": "local", "python": python, "platform": "local"}, "mode": "site",
                "requirements": requirements, "shipped": shipped, "image": {}, "site": "site.zip",
                "files": {"site.zip": "ab" * 32}}
    (folder / deps.MANIFEST).write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def kaggle_root(tmp_path, monkeypatch):
    root = tmp_path / "kaggle"
    (root / "input").mkdir(parents=True)
    monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(root))
    monkeypatch.setattr(deps, "_active", None)
    saved_path = list(sys.path)
    yield root
    sys.path[:] = saved_path
    sys.modules.pop("kpacktoy", None)


@pytest.mark.parametrize("zipped", [True, False])
@pytest.mark.parametrize("layout", ["datasets", "legacy"])
def test_site_goes_first_and_imports(kaggle_root, zipped, layout):
    folder = make_dataset(kaggle_root, zipped=zipped, layout=layout)
    info = deps.activate(CONFIG)
    site = Path(info["site"])
    assert sys.path[0] == str(site)
    if zipped:
        assert site.parent == kaggle_root / "temp" and site.name.startswith("kpack-site-")
    else:
        assert site == folder / "site"
    assert not (kaggle_root / "working").exists()  # nothing extracted into the saved output
    import kpacktoy

    assert kpacktoy.VERSION == "1.0"
    assert info["mode"] == "site" and info["shipped"] == {"kpacktoy": "1.0"}


def test_second_activation_reuses_the_extracted_folder(kaggle_root, monkeypatch):
    make_dataset(kaggle_root, zipped=True)
    first = deps.activate(CONFIG)["site"]
    monkeypatch.setattr(deps, "_active", None)

    def no_unzip(*args, **kwargs):
        raise AssertionError("extracted twice")

    monkeypatch.setattr("zipfile.ZipFile", no_unzip)
    assert deps.activate(CONFIG)["site"] == first


def test_wrong_version_stops_with_one_line(kaggle_root):
    make_dataset(kaggle_root, zipped=True, requirements={"kpacktoy": "1.1"})
    with pytest.raises(deps.DepsError) as err:
        deps.activate(CONFIG)
    message = str(err.value.code)
    assert "\n" not in message
    assert "kpacktoy: expected 1.1, found 1.0" in message


def test_missing_package_is_named(kaggle_root):
    make_dataset(kaggle_root, zipped=False, requirements={"kpacktoy": "1.0", "kpack-absent-pkg": "2.0"})
    with pytest.raises(deps.DepsError, match="kpack-absent-pkg: expected 2.0, found none"):
        deps.activate(CONFIG)


def test_shadowed_image_version_is_checked_from_the_site(kaggle_root, tmp_path):
    """An older copy elsewhere on sys.path does not count: the site folder comes first."""
    old = tmp_path / "image-site"
    old.mkdir()
    dist(old, "kpacktoy", "kpacktoy", "0.9")
    sys.path.insert(0, str(old))
    make_dataset(kaggle_root, zipped=True)
    deps.activate(CONFIG)
    assert deps._installed_versions({"kpacktoy"}) == {"kpacktoy": "1.0"}


def test_local_version_labels_match(kaggle_root):
    make_dataset(kaggle_root, zipped=False, shipped={"kpacktoy": "2.8.0+cu126"},
                 requirements={"kpacktoy": "2.8.0"})
    deps.activate(CONFIG)


def test_missing_dataset_names_it(kaggle_root):
    with pytest.raises(deps.DepsError, match=f"wheels dataset {OWNER}/{SLUG} is not mounted"):
        deps.activate(CONFIG)


def test_other_python_is_refused(kaggle_root):
    make_dataset(kaggle_root, zipped=True, python="3.99")
    with pytest.raises(deps.DepsError, match="built for Python 3.99"):
        deps.activate(CONFIG)


def test_no_wheels_dataset_is_a_no_op(kaggle_root):
    assert deps.activate({"kaggle_user": OWNER, "datasets": {}}) is None


def test_error_is_a_system_exit_with_one_line(kaggle_root, tmp_path):
    """What the packed kernel prints: the message, no traceback, exit status 1."""
    import subprocess

    make_dataset(kaggle_root, zipped=True, requirements={"kpacktoy": "3.0"})
    repo = Path(__file__).resolve().parents[1]
    code = ("from kpack_runtime import deps\n"
            f"deps.activate({CONFIG!r})\n")
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(repo), "KPACK_KAGGLE_ROOT": str(kaggle_root)})
    assert done.returncode == 1
    assert done.stderr.strip() == ("kpack deps: version check failed (wheels dataset alice/digits-wheels, mode "
                                   "site): kpacktoy: expected 3.0, found 1.0")


def test_image_drift_is_a_note_not_a_failure(kaggle_root, tmp_path, capsys):
    image = tmp_path / "image-site"
    image.mkdir()
    dist(image, "kpackimg", "kpackimg", "2.1.0")
    sys.path.append(str(image))
    folder = make_dataset(kaggle_root, zipped=False)
    manifest = json.loads((folder / deps.MANIFEST).read_text())
    manifest["image"] = {"kpackimg": "2.0.2", "kpack-gone": "1.0"}
    (folder / deps.MANIFEST).write_text(json.dumps(manifest))
    assert deps.activate(CONFIG)["mode"] == "site"
    err = capsys.readouterr().err
    assert "note: the image differs" in err
    assert "kpackimg 2.1.0 (resolved against 2.0.2)" in err and "kpack-gone missing" in err


def test_pin_left_to_the_image_names_the_snapshot(kaggle_root, tmp_path):
    """A pinned package the builder left to the image (a probe saw it there) but the image lacks at that version:
    the line says which snapshot vouched for it and how to refresh it."""
    image = tmp_path / "image-site"
    image.mkdir()
    dist(image, "kpackimg", "kpackimg", "1.9")
    sys.path.append(str(image))
    folder = make_dataset(kaggle_root, zipped=False, requirements={"kpacktoy": "1.0", "kpackimg": "2.0"})
    manifest = json.loads((folder / deps.MANIFEST).read_text())
    manifest["image"] = {"kpackimg": "2.0"}
    manifest["snapshot"] = {"source": "probe", "probed": "2026-11-20T08:00:00Z"}
    (folder / deps.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(deps.DepsError) as err:
        deps.activate(CONFIG)
    assert str(err.value.code) == (
        "kpack deps: version check failed (wheels dataset alice/digits-wheels, mode site): kpackimg: expected 2.0, "
        "found 1.9; kpackimg left to the image by its snapshot (probed 2026-11-20): refresh it with `kpack "
        "probe-image` and push again")
