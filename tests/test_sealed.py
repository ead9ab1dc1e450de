"""Sealed files: byte-exact round trips, every kind of tampering refused with one line, flat memory."""
import base64
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kpack_runtime import sealed
from kpack_runtime.sealed import HEADER_SIZE, TAG, SealedError

KEY = bytes(range(32))
CHUNK = 64  # small chunks keep multi-chunk cases tiny


@pytest.fixture(autouse=True)
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def seal(data: bytes, key: bytes = KEY, chunk: int = CHUNK, **kwargs) -> bytes:
    Path("w.pth").write_bytes(data)
    header = sealed.encrypt_file("w.pth", "w.pth.enc", key, chunk, **kwargs)
    assert header.plain_size == len(data) and header.sha256 == hashlib.sha256(data).hexdigest()
    return Path("w.pth.enc").read_bytes()


def unseal(blob: bytes, key: bytes = KEY, expected_sha256: str | None = None, **kwargs) -> bytes:
    Path("w.pth.enc").write_bytes(blob)
    sealed.decrypt_file("w.pth.enc", "out/w.pth", key, expected_sha256, **kwargs)
    return Path("out/w.pth").read_bytes()


# BATCH chunks go to a task: sizes around one and two batches exercise the split of the work between threads
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 17,
                                  sealed.BATCH * CHUNK, sealed.BATCH * CHUNK + 1, 2 * sealed.BATCH * CHUNK,
                                  7 * sealed.BATCH * CHUNK + 3])
def test_round_trip_is_byte_exact(size):
    data = os.urandom(size)
    blob = seal(data)
    assert len(blob) == sealed.sealed_size(size, CHUNK)
    assert unseal(blob, expected_sha256=hashlib.sha256(data).hexdigest()) == data
    assert len(data) < 16 or data[:16] not in blob  # shorter ones may turn up in ciphertext by chance


@pytest.mark.parametrize("workers", [1, 3])
def test_round_trip_with_default_chunks_on_any_number_of_threads(monkeypatch, workers):
    monkeypatch.setattr(sealed, "WORKERS", workers)
    for size in (0, sealed.DEFAULT_CHUNK, 9 * sealed.DEFAULT_CHUNK + 5):
        data = os.urandom(size)
        blob = seal(data, chunk=sealed.DEFAULT_CHUNK)
        assert len(blob) == sealed.sealed_size(size)
        assert unseal(blob) == data


def test_the_header_carries_the_given_sha256_and_decrypting_checks_it_first():
    """The packager hands over the manifest's hash (no second hashing pass); the kernel compares the header's
    hash with its manifest before decrypting anything, and the tags then vouch for every byte."""
    data = os.urandom(300)
    Path("w.pth").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    assert sealed.encrypt_file("w.pth", "w.pth.enc", KEY, CHUNK, sha256=sha).sha256 == sha
    assert sealed.read_header("w.pth.enc").sha256 == sha
    with pytest.raises(SealedError, match=r"w.pth.enc: holds other weights than the manifest lists"):
        unseal(Path("w.pth.enc").read_bytes(), expected_sha256="0" * 64)
    assert not Path("out/w.pth").exists()
    assert unseal(Path("w.pth.enc").read_bytes(), expected_sha256=sha) == data


@pytest.mark.parametrize("backend", ["alloc", "pycryptodome"])
def test_fallback_backends_read_what_the_default_writes(backend):
    """Kaggle's image may have an older cryptography (no decrypt_into) or only pycryptodome."""
    data = os.urandom(3 * CHUNK + 5)
    blob = seal(data)
    assert unseal(blob, backend=backend) == data
    damaged = bytearray(blob)
    damaged[-1] ^= 1
    with pytest.raises(SealedError, match="authentication failed at chunk 3"):
        unseal(bytes(damaged), backend=backend)
    if backend == "alloc":
        assert unseal(seal(data, backend=backend)) == data


def test_same_plaintext_seals_differently_each_time():
    data = os.urandom(300)
    assert seal(data) != seal(data)  # a fresh nonce prefix per file: nonces never repeat under a key


def _chunks(blob: bytes) -> tuple[bytes, list[bytes]]:
    size = CHUNK + TAG
    body = blob[HEADER_SIZE:]
    return blob[:HEADER_SIZE], [body[i:i + size] for i in range(0, len(body), size)]


def _refused(blob: bytes, key: bytes = KEY) -> str:
    with pytest.raises(SealedError) as info:
        unseal(blob, key)
    message = str(info.value)
    assert "\n" not in message and "w.pth.enc" in message
    assert not Path("out").exists() or list(Path("out").iterdir()) == []  # nothing half-written
    return message


@pytest.mark.parametrize("where", [0, 8, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + CHUNK + 3, -1])
def test_flipped_byte_is_refused(where):
    blob = bytearray(seal(os.urandom(4 * CHUNK + 9)))
    blob[where] ^= 0x01
    _refused(bytes(blob))


def test_a_changed_plain_size_or_hash_fails_authentication():
    """Both are in the header (size at bytes 16-24, sha256 at 24-56), which every chunk authenticates."""
    blob = seal(os.urandom(4 * CHUNK))
    other_hash = bytearray(blob)
    other_hash[24] ^= 0x01
    assert "authentication failed at chunk 0" in _refused(bytes(other_hash))
    shorter = bytearray(blob[:sealed.sealed_size(3 * CHUNK, CHUNK)])  # one chunk less, and a size to match
    shorter[16:24] = (3 * CHUNK).to_bytes(8, "big")
    assert "authentication failed at chunk 0" in _refused(bytes(shorter))


def test_truncation_and_extension_are_refused_before_decrypting():
    blob = seal(os.urandom(4 * CHUNK))
    header, chunks = _chunks(blob)
    assert "truncated" in _refused(header + b"".join(chunks[:3]))  # cut at a chunk boundary
    assert "truncated" in _refused(blob[:-1])  # cut inside the last chunk
    assert "truncated" in _refused(header)  # no chunk at all
    assert "truncated" in _refused(blob[:HEADER_SIZE - 5])  # not even a whole header
    assert "extended" in _refused(blob + chunks[-1])  # a chunk appended after the last one
    assert "not a kpack sealed file" in _refused(blob[:5])


def test_reordered_and_foreign_chunks_are_refused():
    blob = seal(os.urandom(4 * CHUNK))
    header, chunks = _chunks(blob)
    swapped = [chunks[1], chunks[0]] + chunks[2:]
    assert "authentication failed at chunk 0" in _refused(header + b"".join(swapped))
    other = seal(os.urandom(4 * CHUNK))  # a chunk from another file sealed with the same key
    assert "authentication failed at chunk 1" in _refused(header + chunks[0] + _chunks(other)[1][1]
                                                          + b"".join(chunks[2:]))


def test_an_older_format_is_refused_with_what_to_do():
    blob = bytearray(seal(b"weights" * 50))
    blob[8] = 1
    assert "sealed format version 1; this kpack reads version 2: build and push" in _refused(bytes(blob))


def test_wrong_key_is_refused_without_showing_either_key():
    blob = seal(b"weights" * 50)
    other = os.urandom(32)
    message = _refused(blob, other)
    assert "another key" in message
    for key in (KEY, other):
        assert key.hex() not in message and base64.b64encode(key).decode() not in message


def test_decrypt_file_leaves_nothing_on_failure(tmp_path):
    src, enc, dec = tmp_path / "w.bin", tmp_path / "w.bin.enc", tmp_path / "out" / "w.bin"
    src.write_bytes(os.urandom(9 * sealed.DEFAULT_CHUNK))
    sealed.encrypt_file(src, enc, KEY)
    damaged = bytearray(enc.read_bytes())
    damaged[-100] ^= 0x80  # in the last chunk: the other chunks decrypt (and are written) before the failure
    enc.write_bytes(bytes(damaged))
    with pytest.raises(SealedError, match="w.bin.enc: authentication failed at chunk 8"):
        sealed.decrypt_file(enc, dec, KEY)
    assert list(dec.parent.iterdir()) == []


def test_encrypt_file_leaves_nothing_on_failure(monkeypatch):
    Path("w.pth").write_bytes(os.urandom(9 * CHUNK))

    def full(fd, data, offset):
        if offset > HEADER_SIZE:  # the header went in; a later batch finds the disk full
            raise OSError(28, "No space left on device")
        return os.pwrite(fd, data, offset)

    monkeypatch.setattr(sealed, "_pwrite_all", full)
    with pytest.raises(OSError, match="No space left"):
        sealed.encrypt_file("w.pth", "sealed/w.pth.enc", KEY, CHUNK)
    assert list(Path("sealed").iterdir()) == []


@pytest.mark.parametrize("text", [KEY.hex(), KEY.hex().upper(), base64.b64encode(KEY).decode(),
                                  base64.urlsafe_b64encode(KEY).decode().rstrip("="), f"  {KEY.hex()}\n"])
def test_key_accepts_hex_and_base64(text):
    assert sealed.parse_key(text, "KPACK_WEIGHTS_KEY") == KEY


@pytest.mark.parametrize("text", ["", "short", KEY.hex()[:-2], base64.b64encode(KEY[:31]).decode(),
                                  base64.b64encode(KEY + b"x").decode(), "z" * 64])
def test_bad_key_is_refused_in_one_line_without_the_value(text):
    with pytest.raises(SealedError) as info:
        sealed.parse_key(text, "KPACK_WEIGHTS_KEY")
    message = str(info.value)
    assert message.startswith("KPACK_WEIGHTS_KEY: expected a 32-byte key") and "\n" not in message
    assert not text.strip() or text.strip() not in message


def test_key_id_is_stable_and_not_the_key():
    assert sealed.key_id(KEY) == sealed.key_id(bytes(KEY)) != sealed.key_id(os.urandom(32))
    assert KEY.hex()[:16] not in sealed.key_id(KEY)
    seal(b"x")
    assert sealed.read_header("w.pth.enc").key_id == sealed.key_id(KEY)


# Peak RSS of the probe process itself: VmHWM, since ru_maxrss carries over the parent's peak through
# fork and exec on Linux (a pytest process that imported torch would make any child look big).
MEMORY_PROBE = textwrap.dedent("""
    import sys
    from kpack_runtime import sealed

    def peak_kb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

    src, enc, dec = sys.argv[1:4]
    key = bytes(range(32))
    before = peak_kb()
    sealed.encrypt_file(src, enc, key)
    sealed.decrypt_file(enc, dec, key)
    print(before, peak_kb())
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_memory_stays_flat_on_a_200_mb_file(tmp_path):
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:  # sparse-ish: mostly holes, a random block every 16 MiB
        for i in range(13):
            f.seek(i * (16 << 20))
            f.write(os.urandom(1 << 20))
        f.truncate(200 << 20)
    enc, dec = tmp_path / "big.bin.enc", tmp_path / "big.out"
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(src), str(enc), str(dec)],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=True)
    before_kb, after_kb = map(int, result.stdout.split())
    assert after_kb < 100 * 1024, f"peak RSS {after_kb // 1024} MiB"
    assert after_kb - before_kb < 48 * 1024, f"grew by {(after_kb - before_kb) // 1024} MiB"
    assert enc.stat().st_size == sealed.sealed_size(200 << 20)
    assert dec.stat().st_size == 200 << 20
    with open(src, "rb") as a, open(dec, "rb") as b:
        while block := a.read(1 << 24):
            assert block == b.read(1 << 24)
