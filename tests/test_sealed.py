"""Sealed files: byte-exact round trips, every kind of tampering refused with one line, flat memory."""
import base64
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from kernel_src.runtime import sealed
from kernel_src.runtime.sealed import HEADER_SIZE, TAG, SealedError

KEY = bytes(range(32))
CHUNK = 64  # small chunks keep multi-chunk cases tiny


@pytest.fixture(autouse=True)
def small_map_windows(monkeypatch):
    """One batch per mapped window, so small files cross many windows (at offsets that are not page-aligned)."""
    monkeypatch.setattr(sealed, "MAP_WINDOW", 1)


def seal(data: bytes, key: bytes = KEY, chunk: int = CHUNK) -> bytes:
    out = io.BytesIO()
    assert sealed.encrypt_stream(io.BytesIO(data), out, key, chunk) == len(data)
    return out.getvalue()


def unseal(blob: bytes, key: bytes = KEY) -> bytes:
    """Decrypt both ways a stream is read: a regular file (memory-mapped) and an in-memory stream (read);
    they must agree on the plaintext or on the error."""
    results = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w.pth.enc"
        path.write_bytes(blob)
        with open(path, "rb") as mapped:
            for src in (mapped, io.BytesIO(blob)):
                out = io.BytesIO()
                try:
                    sealed.decrypt_stream(src, out, key, name="w.pth.enc")
                    results.append(out.getvalue())
                except SealedError as exc:
                    results.append(exc)
    assert str(results[0]) == str(results[1]) and type(results[0]) is type(results[1])
    if isinstance(results[0], SealedError):
        raise results[0]
    return results[0]


# BATCH chunks go per read: sizes around one and two batches exercise the look-ahead that finds the last chunk
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 17,
                                  sealed.BATCH * CHUNK, sealed.BATCH * CHUNK + 1, 2 * sealed.BATCH * CHUNK])
def test_round_trip_is_byte_exact(size):
    data = os.urandom(size)
    blob = seal(data)
    assert len(blob) == sealed.sealed_size(size, CHUNK)
    assert unseal(blob) == data
    assert len(data) < 16 or data[:16] not in blob  # shorter ones may turn up in ciphertext by chance


@pytest.mark.parametrize("chunk, sizes", [
    (sealed.DEFAULT_CHUNK, (0, 1, sealed.DEFAULT_CHUNK, sealed.DEFAULT_CHUNK + 1, 3 * sealed.DEFAULT_CHUNK + 5)),
    (CHUNK, (sealed.BATCH * CHUNK, 7 * sealed.BATCH * CHUNK + 3)),  # many mapped windows
])
def test_round_trip_files(tmp_path, chunk, sizes):
    for size in sizes:
        src, enc, dec = tmp_path / "w.bin", tmp_path / "w.bin.enc", tmp_path / "w.out"
        src.write_bytes(os.urandom(size))
        plain_sha = hashlib.sha256(src.read_bytes()).hexdigest()
        sealed.encrypt_file(src, enc, KEY, chunk)
        assert enc.stat().st_size == sealed.sealed_size(size, chunk)
        sealed.decrypt_file(enc, dec, KEY, expected_sha256=plain_sha)
        assert dec.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("backend", ["alloc", "pycryptodome"])
def test_fallback_backends_read_what_the_default_writes(backend):
    """Kaggle's image may have an older cryptography (no decrypt_into) or only pycryptodome."""
    if backend == "pycryptodome":
        pytest.importorskip("Crypto.Cipher.AES")
    data = os.urandom(3 * CHUNK + 5)
    blob = seal(data)
    out = io.BytesIO()
    sealed.decrypt_stream(io.BytesIO(blob), out, KEY, backend=backend)
    assert out.getvalue() == data
    damaged = bytearray(blob)
    damaged[-1] ^= 1
    with pytest.raises(SealedError, match="authentication failed at chunk 3"):
        sealed.decrypt_stream(io.BytesIO(bytes(damaged)), io.BytesIO(), KEY, backend=backend)
    if backend == "alloc":
        other = io.BytesIO()
        sealed.encrypt_stream(io.BytesIO(data), other, KEY, CHUNK, backend=backend)
        assert unseal(other.getvalue()) == data


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
    return message


@pytest.mark.parametrize("where", [0, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + CHUNK + 3, -1])
def test_flipped_byte_is_refused(where):
    blob = bytearray(seal(os.urandom(4 * CHUNK + 9)))
    blob[where] ^= 0x01
    _refused(bytes(blob))


def test_truncation_is_refused():
    blob = seal(os.urandom(4 * CHUNK))
    header, chunks = _chunks(blob)
    assert "authentication failed at chunk 2" in _refused(header + b"".join(chunks[:3]))  # cut at a chunk boundary
    _refused(blob[:-1])  # cut inside the last chunk
    _refused(blob[:HEADER_SIZE + 5])  # less than a tag
    _refused(header)  # no chunk at all
    assert "not a kpack sealed file" in _refused(blob[:10])


def test_reordered_swapped_and_extended_chunks_are_refused():
    blob = seal(os.urandom(4 * CHUNK))
    header, chunks = _chunks(blob)
    swapped = [chunks[1], chunks[0]] + chunks[2:]
    assert "authentication failed at chunk 0" in _refused(header + b"".join(swapped))
    _refused(header + b"".join(chunks + [chunks[-1]]))  # a chunk appended after the final one
    other = seal(os.urandom(4 * CHUNK))  # a chunk from another file sealed with the same key
    _refused(header + chunks[0] + _chunks(other)[1][1] + b"".join(chunks[2:]))


def test_wrong_key_is_refused_without_showing_either_key():
    blob = seal(b"weights" * 50)
    other = os.urandom(32)
    message = _refused(blob, other)
    assert "another key" in message
    for key in (KEY, other):
        assert key.hex() not in message and base64.b64encode(key).decode() not in message


def test_decrypt_file_leaves_nothing_on_failure(tmp_path):
    src, enc, dec = tmp_path / "w.bin", tmp_path / "w.bin.enc", tmp_path / "out" / "w.bin"
    src.write_bytes(os.urandom(3 * sealed.DEFAULT_CHUNK))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    sealed.encrypt_file(src, enc, KEY)
    damaged = bytearray(enc.read_bytes())
    damaged[-100] ^= 0x80  # in the last chunk: the first chunks decrypt (and are written) before the failure
    enc.write_bytes(bytes(damaged))
    with pytest.raises(SealedError, match="w.bin.enc: authentication failed at chunk 2"):
        sealed.decrypt_file(enc, dec, KEY, expected_sha256=sha)
    assert list(dec.parent.iterdir()) == []
    sealed.encrypt_file(src, enc, KEY)
    with pytest.raises(SealedError, match="sha256 mismatch"):
        sealed.decrypt_file(enc, dec, KEY, expected_sha256="0" * 64)
    assert list(dec.parent.iterdir()) == []


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
    assert sealed.read_header(io.BytesIO(seal(b"x"))).key_id == sealed.key_id(KEY)


# Peak RSS of the probe process itself: VmHWM, since ru_maxrss carries over the parent's peak through
# fork and exec on Linux (a pytest process that imported torch would make any child look big).
MEMORY_PROBE = textwrap.dedent("""
    import sys
    from kernel_src.runtime import sealed

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
