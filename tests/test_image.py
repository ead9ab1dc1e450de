"""The local image: the venv's distributions minus the excludes, as a cached farm of symlinks."""
from __future__ import annotations

from pathlib import Path

import pytest

from packager.localkaggle import image


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(image.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_excludes_file_names_the_wheels_and_the_tools():
    excludes = image.read_excludes()
    assert {"timm", "albumentations", "huggingface-hub", "safetensors", "pytest", "kpack"} <= excludes
    assert not {"torch", "numpy", "pip"} & excludes


def test_excludes_are_normalized(tmp_path):
    path = tmp_path / "excludes.txt"
    path.write_text("# a comment\nHuggingface_Hub  # trailing comment\n\nzope.interface\n")
    assert image.read_excludes(path) == {"huggingface-hub", "zope-interface"}


def test_image_has_the_kaggle_packages_and_not_the_wheels(cache):
    dists = image.image_distributions()
    assert {"torch", "numpy", "pandas", "pillow", "scikit-learn", "cryptography", "pyyaml", "pip"} <= dists.keys()
    assert not {"timm", "albumentations", "albucore", "huggingface-hub", "pytest", "kpack"} & dists.keys()
    site = image.image_site()
    assert (site / "torch").is_symlink() and (site / "torch" / "__init__.py").is_file()
    assert any(p.name.startswith("torch-") and p.name.endswith(".dist-info") for p in site.iterdir())
    assert not (site / "timm").exists() and not list(site.glob("timm-*.dist-info"))
    assert not list(site.glob("*.pth")), ".pth files would run code the image does not have"
    assert not (site / "packager").exists() and not (site / "kernel_src").exists()


def test_farm_is_cached_until_the_excludes_change(cache, tmp_path, monkeypatch):
    first = image.image_site()
    assert image.image_site() == first
    excludes = tmp_path / "excludes.txt"
    excludes.write_text(image.EXCLUDES_FILE.read_text() + "\nscipy\n")
    monkeypatch.setattr(image, "EXCLUDES_FILE", excludes)
    second = image.image_site()
    assert second != first and not (second / "scipy").exists() and (first / "scipy").exists()
    assert "scipy" not in image.image_distributions()


def _fake_dist(site: Path, name: str, files: dict[str, str]) -> None:
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"  # as wheels name it
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    record = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD", f"../../../bin/{name}"]
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in record))


def test_shared_namespace_folder_is_split_when_one_owner_is_excluded(cache, tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    _fake_dist(site, "ns-keep", {"ns/keep/__init__.py": "", "keeptop.py": ""})
    _fake_dist(site, "ns-drop", {"ns/drop/__init__.py": ""})
    _fake_dist(site, "ns-other", {"ns2/a/__init__.py": ""})
    _fake_dist(site, "ns-other2", {"ns2/b/__init__.py": ""})
    excludes = tmp_path / "excludes.txt"
    excludes.write_text("ns_drop\n")
    monkeypatch.setattr(image, "site_dirs", lambda: [site])
    monkeypatch.setattr(image, "EXCLUDES_FILE", excludes)

    farm = image.image_site()
    assert image.image_distributions() == {"ns-keep": "1.0", "ns-other": "1.0", "ns-other2": "1.0"}
    assert (farm / "ns").is_dir() and not (farm / "ns").is_symlink()
    assert (farm / "ns" / "keep").is_symlink() and not (farm / "ns" / "drop").exists()
    assert (farm / "ns2").is_symlink(), "a namespace folder whose owners are all allowed is linked whole"
    assert (farm / "keeptop.py").is_symlink() and (farm / "ns_keep-1.0.dist-info").is_symlink()
    assert not (farm / "ns_drop-1.0.dist-info").exists()
