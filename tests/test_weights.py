"""The weights dataset: deterministic builds (an unchanged rebuild has the same hash), and the kernel side that
finds it under a fake Kaggle root, decrypts into temp/ (never working/), verifies, and refuses damage."""
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from kpack_runtime import sealed
from kpack_runtime import weights as kweights
from packager import fsutil
from packager.config import parse_config
from packager.errors import UserError
from packager.secrets_scan import scan
from packager.weights import build_weights_dataset

KEY = bytes(range(100, 132))
KEY_TEXT = base64.b64encode(KEY).decode()
OWNER, SLUG = "alice", "digits-weights"
REPO = Path(__file__).resolve().parents[1]


def make_cfg(models: Path, encrypt: bool = True, **extra):
    return parse_config({"competition": "digits-multilabel", "kaggle_user": OWNER,
                         "kernels": {"train": {"entry": "kernel_src/train.py"}},
                         "datasets": {"weights": {"slug": SLUG, "dir": str(models), "encrypt": encrypt, **extra}}})


@pytest.fixture
def models(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "resnet18.a1_in1k.pth").write_bytes(os.urandom(3 * sealed.DEFAULT_CHUNK + 123))
    (folder / "head.safetensors").write_bytes(os.urandom(5000))
    (folder / "empty.bin").write_bytes(b"")
    (folder / "models.yaml").write_text("head.safetensors: convnext_tiny\n")
    (folder / "README.md").write_text("not a weight\n")
    monkeypatch.setenv("KPACK_WEIGHTS_KEY", KEY_TEXT)
    return folder


def build(models: Path, tmp_path: Path, **kw):
    return build_weights_dataset(make_cfg(models, **kw), tmp_path / "build" / SLUG)


def test_manifest_lists_files_with_hashes_and_architectures(models, tmp_path):
    built = build(models, tmp_path)
    manifest = json.loads((built.path / "manifest.json").read_text())
    entries = {e["name"]: e for e in manifest["files"]}
    assert set(entries) == {"resnet18.a1_in1k.pth", "head.safetensors", "empty.bin"}
    assert entries["resnet18.a1_in1k.pth"]["architecture"] == "resnet18"
    assert entries["head.safetensors"]["architecture"] == "convnext_tiny"  # models.yaml wins
    assert entries["empty.bin"]["architecture"] is None
    for name, entry in entries.items():
        assert entry["sha256"] == hashlib.sha256((models / name).read_bytes()).hexdigest()
        assert entry["size"] == (models / name).stat().st_size and entry["encrypted"]
        assert entry["key_id"] == manifest["key_id"] == sealed.key_id(KEY)
    assert sorted(p.name for p in built.path.iterdir()) == built.files == sorted(
        ["manifest.json", "empty.bin.enc", "head.safetensors.enc", "resnet18.a1_in1k.pth.enc"])
    assert (built.slug, built.title) == (SLUG, "Digits Weights")


def test_rebuild_is_deterministic_and_reuses_sealed_files(models, tmp_path):
    first = build(models, tmp_path)
    sealed_bytes = {p.name: p.read_bytes() for p in first.path.glob("*.enc")}
    (first.path / "dataset-metadata.json").write_text("{}")  # written by the metadata step, not hashed
    (first.path / "pushed.json").write_text("{}")  # the push record, not hashed and not removed
    second = build(models, tmp_path)
    assert second.content_hash == first.content_hash
    assert {p.name: p.read_bytes() for p in second.path.glob("*.enc")} == sealed_bytes
    assert (second.path / "pushed.json").exists() and (second.path / "dataset-metadata.json").exists()

    (models / "head.safetensors").write_bytes(os.urandom(5000))  # one weight changes: only it is sealed anew
    third = build(models, tmp_path)
    assert third.content_hash != first.content_hash
    assert (third.path / "resnet18.a1_in1k.pth.enc").read_bytes() == sealed_bytes["resnet18.a1_in1k.pth.enc"]
    assert (third.path / "head.safetensors.enc").read_bytes() != sealed_bytes["head.safetensors.enc"]

    (models / "empty.bin").unlink()  # a weight removed: its sealed file goes too
    assert "empty.bin.enc" not in build(models, tmp_path).files


def age(folder: Path, seconds: float = 60) -> None:
    """Move every file's modification time into the past: files written just now are never remembered by the
    hash cache (a write within the clock's resolution could keep their size and time)."""
    for path in folder.iterdir():
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


@pytest.mark.parametrize("encrypt", [False, True])
def test_unchanged_rebuild_reads_no_weight_file_again(models, tmp_path, monkeypatch, encrypt):
    monkeypatch.setattr(fsutil.HashCache, "RACY_NS", 0)  # remember files written just now (tested below)
    first = build(models, tmp_path, encrypt=encrypt)
    read = []
    real = fsutil.file_sha256
    monkeypatch.setattr(fsutil, "file_sha256", lambda path: read.append(Path(path).name) or real(path))
    assert build(models, tmp_path, encrypt=encrypt).content_hash == first.content_hash
    assert read == ["manifest.json"]  # every build writes the manifest anew; the weights are not read again

    (models / "head.safetensors").write_bytes(os.urandom(5001))  # a new size and time: hashed again
    read.clear()
    changed = build(models, tmp_path, encrypt=encrypt)
    assert changed.content_hash != first.content_hash and "head.safetensors" in read
    entry = next(e for e in json.loads((changed.path / "manifest.json").read_text())["files"]
                 if e["name"] == "head.safetensors")
    assert entry["sha256"] == hashlib.sha256((models / "head.safetensors").read_bytes()).hexdigest()


def test_hash_cache_trusts_only_files_untouched_since_they_were_hashed(tmp_path, monkeypatch):
    cache_file, path = tmp_path / "hashes.json", tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    fresh = fsutil.HashCache(cache_file)
    assert fresh.sha256(path) == hashlib.sha256(b"a" * 1000).hexdigest()
    fresh.save()
    assert json.loads(cache_file.read_text()) == {}  # modified just now: not remembered

    age(tmp_path)
    cache = fsutil.HashCache(cache_file)
    cache.sha256(path)
    cache.save()
    read = []
    real = fsutil.file_sha256
    monkeypatch.setattr(fsutil, "file_sha256", lambda p: read.append(p) or real(p))
    assert fsutil.HashCache(cache_file).sha256(path) == hashlib.sha256(b"a" * 1000).hexdigest() and read == []

    path.write_bytes(b"b" * 1000)  # same size, new modification time
    assert fsutil.HashCache(cache_file).sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest() and read
    cache_file.write_text('{"broken": ')  # a damaged cache is ignored, not trusted
    assert fsutil.HashCache(cache_file).sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_damaged_cache_or_new_key_is_sealed_again(models, tmp_path, monkeypatch):
    first = build(models, tmp_path)
    enc = first.path / "head.safetensors.enc"
    original = enc.read_bytes()
    damaged = bytearray(original)
    damaged[100] ^= 1
    (first.path / "edit").write_bytes(bytes(damaged))  # edited in place by hand, as an editor saves: a new file
    os.replace(first.path / "edit", enc)
    second = build(models, tmp_path)  # the damaged cache is not reused: sealed again (fresh nonce prefix)
    assert second.content_hash != first.content_hash and enc.read_bytes() not in (original, bytes(damaged))
    entries = {e["name"]: e for e in json.loads((second.path / "manifest.json").read_text())["files"]}
    sealed.decrypt_file(enc, tmp_path / "head.out", KEY, expected_sha256=entries["head.safetensors"]["sha256"])

    monkeypatch.setenv("KPACK_WEIGHTS_KEY", os.urandom(32).hex())  # a new key: everything sealed again
    third = build(models, tmp_path)
    manifest = json.loads((third.path / "manifest.json").read_text())
    assert manifest["key_id"] != sealed.key_id(KEY)
    assert all(sealed.read_header(p).key_id == manifest["key_id"] for p in third.path.glob("*.enc"))


def test_files_sealed_in_an_older_format_are_sealed_again(models, tmp_path):
    """A build folder left by an earlier kpack (its cache records no sealed format) is not reused: the kernel
    would refuse those files."""
    first = build(models, tmp_path)
    cache_file = first.path.parent / f".{SLUG}.sealed.json"
    cache = json.loads(cache_file.read_text())
    for entry in cache.values():
        assert entry.pop("sealed_format") == sealed.VERSION
    cache_file.write_text(json.dumps(cache))
    before = {p.name: p.read_bytes() for p in first.path.glob("*.enc")}
    second = build(models, tmp_path)
    assert all((second.path / name).read_bytes() != blob for name, blob in before.items())


def test_plain_dataset_and_switching_encryption(models, tmp_path):
    plain = build(models, tmp_path, encrypt=False)
    assert sorted(plain.files) == ["empty.bin", "head.safetensors", "manifest.json", "resnet18.a1_in1k.pth"]
    assert build(models, tmp_path, encrypt=False).content_hash == plain.content_hash
    sealed_build = build(models, tmp_path, encrypt=True)
    assert not (sealed_build.path / "head.safetensors").exists()
    assert (sealed_build.path / "head.safetensors.enc").exists()


def test_missing_or_bad_key_is_one_line_naming_the_variable(models, tmp_path, monkeypatch):
    monkeypatch.delenv("KPACK_WEIGHTS_KEY")
    with pytest.raises(UserError, match="KPACK_WEIGHTS_KEY is not set"):
        build(models, tmp_path)
    monkeypatch.setenv("MY_KEY", "not-a-key-at-all")
    with pytest.raises(UserError) as info:
        build(models, tmp_path, key_env="MY_KEY")
    assert str(info.value).startswith("MY_KEY: expected a 32-byte key") and "not-a-key" not in str(info.value)


def test_reserved_names_are_refused(models, tmp_path):
    (models / "sub").mkdir()
    (models / "sub" / "manifest.json").write_bytes(b"{}")
    with pytest.raises(UserError, match="reserved"):
        build(models, tmp_path)
    shutil.rmtree(models / "sub")
    (models / "x.enc").write_bytes(b"1")
    with pytest.raises(UserError, match="reserved"):
        build(models, tmp_path)


def test_key_never_appears_in_the_built_dataset(models, tmp_path):
    (models / "resnet18.a1_in1k.pth").write_bytes(b"prefix " + b"\0" * 100)
    built = build(models, tmp_path)
    scan([built.path], [KEY_TEXT, KEY.hex()])  # raises on any form of the key (text, hex, raw bytes)
    for path in built.path.iterdir():
        data = path.read_bytes()
        assert KEY not in data and KEY_TEXT.encode() not in data and KEY.hex().encode() not in data


# --------------------------------------------------------------------------------------------- kernel side

@pytest.fixture
def kaggle(models, tmp_path, monkeypatch):
    """A fake Kaggle root with the built dataset mounted read-only at input/datasets/<owner>/<slug>/."""
    def mount(encrypt=True):
        built = build(models, tmp_path, encrypt=encrypt)
        root = tmp_path / "kaggle"
        shutil.rmtree(root, ignore_errors=True)
        target = root / "input" / "datasets" / OWNER / SLUG
        shutil.copytree(built.path, target)
        (root / "working").mkdir()
        monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(root))
        return root, target, make_cfg(models, encrypt=encrypt).model_dump()
    return mount


def test_prepare_decrypts_into_temp_and_verifies(kaggle, models):
    root, mounted, config = kaggle()
    paths = kweights.prepare(config)
    assert set(paths) == {"resnet18.a1_in1k.pth", "head.safetensors", "empty.bin"}
    for name, path in paths.items():
        assert path == root / "temp" / "weights" / name == kweights.weights_path(name)
        assert path.read_bytes() == (models / name).read_bytes()
    assert list((root / "working").iterdir()) == []
    assert kweights.for_architecture("convnext_tiny") == paths["head.safetensors"]
    assert kweights.for_architecture("vit_base") is None
    with pytest.raises(kweights.WeightsError, match="no weight file 'nope.pth'"):
        kweights.weights_path("nope.pth")
    assert kweights.prepare(config) == paths  # a second call verifies what is there instead of decrypting


def test_prepare_uses_plain_files_in_place(kaggle, models):
    root, mounted, config = kaggle(encrypt=False)
    paths = kweights.prepare(config)
    assert paths["head.safetensors"] == mounted / "head.safetensors"
    assert not (root / "temp" / "weights").exists()
    with open(mounted / "head.safetensors", "r+b") as f:
        f.seek(10)
        byte = f.read(1)
        f.seek(10)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(kweights.WeightsError) as info:
        kweights.open_all(config)
    assert "head.safetensors: sha256 mismatch" in str(info.value) and "\n" not in str(info.value)
    with open(mounted / "head.safetensors", "ab") as f:
        f.write(b"x")
    with pytest.raises(kweights.WeightsError, match=r"head\.safetensors: 5001 bytes where the manifest lists 5000"):
        kweights.open_all(config)


@pytest.mark.parametrize("offset", [100, -5])  # in the first chunk; in the last chunk (after earlier ones)
def test_prepare_refuses_a_flipped_byte_and_leaves_no_partial_file(kaggle, offset):
    root, mounted, config = kaggle()
    enc = mounted / "resnet18.a1_in1k.pth.enc"
    data = bytearray(enc.read_bytes())
    data[offset] ^= 0x40
    enc.write_bytes(bytes(data))
    with pytest.raises(kweights.WeightsError) as info:
        kweights.open_all(config)
    message = str(info.value)
    assert "resnet18.a1_in1k.pth.enc: authentication failed" in message and "\n" not in message
    out = root / "temp" / "weights"
    assert not any(p.name.startswith(("resnet18", ".resnet18")) for p in out.iterdir())
    assert KEY_TEXT not in message and KEY.hex() not in message


def test_prepare_without_key_names_the_variable_and_secret(kaggle, monkeypatch):
    root, mounted, config = kaggle()
    monkeypatch.delenv("KPACK_WEIGHTS_KEY")
    with pytest.raises(kweights.WeightsError, match="set the environment variable KPACK_WEIGHTS_KEY or attach a "
                                                    "Kaggle secret labelled KPACK_WEIGHTS_KEY"):
        kweights.open_all(config)
    monkeypatch.setenv("KPACK_WEIGHTS_KEY", os.urandom(32).hex())
    with pytest.raises(kweights.WeightsError, match="sealed with another key"):
        kweights.open_all(config)


def test_prepare_reads_the_key_from_a_kaggle_secret(kaggle, monkeypatch):
    root, mounted, config = kaggle()
    monkeypatch.delenv("KPACK_WEIGHTS_KEY")
    fake = types.ModuleType("kaggle_secrets")

    class UserSecretsClient:
        def get_secret(self, label):
            assert label == "KPACK_WEIGHTS_KEY"
            return KEY_TEXT

    fake.UserSecretsClient = UserSecretsClient
    monkeypatch.setitem(sys.modules, "kaggle_secrets", fake)
    assert len(kweights.prepare(config)) == 3


def test_prepare_finds_the_legacy_mount_and_tolerates_no_weights_config(kaggle, tmp_path):
    root, mounted, config = kaggle()
    legacy = root / "input" / SLUG
    shutil.move(mounted, legacy)
    assert kweights.prepare(config)["empty.bin"].read_bytes() == b""
    assert kweights.prepare({"kaggle_user": OWNER, "datasets": {}}) == {}
    shutil.rmtree(legacy)
    with pytest.raises(kweights.WeightsError, match=f"weights dataset {OWNER}/{SLUG} is not mounted"):
        kweights.open_all(config)


def test_prepare_in_a_kernel_process_imports_nothing_from_packager(kaggle, tmp_path):
    root, mounted, config = kaggle()
    (tmp_path / "config.json").write_text(json.dumps(config))
    code = ("import json, sys\n"
            "from kpack_runtime import weights\n"
            "paths = weights.prepare(json.load(open(sys.argv[1])))\n"
            "assert not [m for m in sys.modules if m.startswith('packager')]\n"
            "print(sorted(str(p) for p in paths.values()))\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "config.json")], capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[1],
                            env={**os.environ, "KPACK_KAGGLE_ROOT": str(root)})
    assert result.returncode == 0, result.stderr
    assert "3 file(s) verified" in result.stdout and str(root / "temp" / "weights" / "empty.bin") in result.stdout
    assert KEY_TEXT not in result.stdout + result.stderr


def test_prepare_reports_a_full_disk_in_one_line(kaggle, monkeypatch):
    root, mounted, config = kaggle()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sealed, "_pwrite_all", full)
    with pytest.raises(kweights.WeightsError, match=r"cannot decrypt into .*temp/weights: No space left on device"):
        kweights.open_all(config)
    assert [p.name for p in (root / "temp" / "weights").iterdir()] == []


# ------------------------------------------------------------------------------------ in a packed kernel

def packed_kernel(models: Path, tmp_path: Path) -> Path:
    """A kernel script built by kpack from the real runtime and an entry that says it ran."""
    from packager.build import build_kernel

    project = tmp_path / "proj"
    (project / "kernel_src").mkdir(parents=True)
    (project / "kernel_src" / "__init__.py").write_text("")
    (project / "kernel_src" / "train.py").write_text("def main(config):\n    print('the entry ran')\n")
    return build_kernel(make_cfg(models), "train", root=project).script


def run_packed(script: Path, root: Path, key: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root), "KPACK_KAGGLE_ROOT": str(root),
           "KPACK_WEIGHTS_KEY": key}
    return subprocess.run([sys.executable, "-I", str(script)], cwd=root / "working", env=env, capture_output=True,
                          text=True, timeout=120)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,said", [
    ("flipped", "resnet18.a1_in1k.pth.enc: authentication failed at chunk 0"),
    ("header", "resnet18.a1_in1k.pth.enc: "),
    ("truncated", "resnet18.a1_in1k.pth.enc: truncated"),
    ("wrong key", "sealed with another key"),
    ("bad key", "expected a 32-byte key"),
    ("manifest", "not a kpack weights manifest"),
])
def test_damaged_or_wrongly_keyed_weights_stop_a_packed_kernel_in_one_line(kaggle, models, tmp_path, damage, said):
    root, mounted, _ = kaggle()
    key = {"wrong key": base64.b64encode(os.urandom(32)).decode(), "bad key": "not-a-key"}.get(damage, KEY_TEXT)
    enc = mounted / "resnet18.a1_in1k.pth.enc"
    if damage == "flipped":
        flip(enc, 100)
    elif damage == "header":
        flip(enc, 2)  # the magic
    elif damage == "truncated":
        enc.write_bytes(enc.read_bytes()[:-7])
    elif damage == "manifest":
        manifest = json.loads((mounted / "manifest.json").read_text())
        del manifest["files"][0]["sha256"]
        (mounted / "manifest.json").write_text(json.dumps(manifest))
    done = run_packed(packed_kernel(models, tmp_path), root, key)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("[kpack] error: ") and said in lines[0], lines[0]
    assert "the entry ran" not in done.stdout
    assert KEY_TEXT not in done.stdout + done.stderr and key not in done.stdout + done.stderr
    assert not list((root / "working").iterdir())


def test_sound_weights_let_the_packed_kernel_run_its_entry(kaggle, models, tmp_path):
    root, _, _ = kaggle()
    done = run_packed(packed_kernel(models, tmp_path), root, KEY_TEXT)
    assert done.returncode == 0, done.stderr
    assert "3 file(s) verified" in done.stdout and "the entry ran" in done.stdout
