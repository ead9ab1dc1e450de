"""Sealed files: AES-256-GCM in fixed-size chunks, processed in parallel with flat memory. Used by the packager
(encrypt) and inside the kernel (decrypt), so it imports nothing from `packager`.

Layout of a sealed file (format version 2):

    header  80 bytes  magic b"KPSEALED" | version u8 | 3 zero bytes | chunk_size u32 | plain_size u64
                      | plain_sha256 32 bytes | key_id 16 bytes | nonce_prefix 8 bytes
    chunk   ciphertext of up to chunk_size plaintext bytes + 16-byte GCM tag, repeated

Every chunk but the last holds exactly chunk_size plaintext bytes; the last holds the rest (an empty file is
one empty chunk, i.e. just a tag). Chunk i is sealed with

    nonce = nonce_prefix (8 random bytes, new for every file) || i (u32 big-endian)
    aad   = header || i (u64 big-endian)

The header is authenticated by every chunk, so its plaintext size and sha256 cannot be changed; the size
fixes the number of chunks and the exact file length, so a cut or extended file is refused before anything is
decrypted; the index refuses a chunk moved to another position. A file whose every chunk opens is therefore
exactly the plaintext the sealer hashed into the header: checking that hash against the manifest verifies the
plaintext without hashing it again (which would cost more than the decryption). Nonces never repeat under one
key as long as prefixes differ: with 8 random bytes a collision needs about 2**32 files sealed under one key.
The key id in the header is a hash of the key, never the key.

Chunks are processed a batch at a time on a few threads (AES-GCM in `cryptography`, mmap page-ins and file
writes all release the GIL): each thread maps its batch of the input, seals or opens it into its own buffer
and writes that at its offset in the output.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import struct
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"KPSEALED"
VERSION = 2
TAG = 16
PREFIX = 8
DEFAULT_CHUNK = 1 << 20  # 1 MiB: the chunk and its ciphertext stay in the CPU's cache
BATCH = 4  # chunks per task: fewer system calls and thread hand-offs
MAX_CHUNK = 16 << 20  # memory is about 2 * BATCH * chunk size per worker thread: 8 MiB at the default
MAX_CHUNKS = 1 << 32  # the nonce counter is 4 bytes
WORKERS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
_HEADER = struct.Struct(">8sB3xIQ32s16s8s")
HEADER_SIZE = _HEADER.size
_INDEX = struct.Struct(">Q")
KEY_BYTES = 32
KEY_HINT = "make one with: python -c \"import os,base64;print(base64.b64encode(os.urandom(32)).decode())\""


class SealedError(ValueError):
    """A sealed file or key that cannot be used; the message is one line and never contains the key."""


@dataclass(frozen=True)
class Header:
    chunk_size: int
    plain_size: int
    sha256: str  # hex, of the plaintext
    key_id: str  # hex
    nonce_prefix: bytes
    raw: bytes

    @classmethod
    def new(cls, key: bytes, plain_size: int, sha256: str, chunk_size: int = DEFAULT_CHUNK,
            nonce_prefix: bytes | None = None) -> "Header":
        if not 0 < chunk_size <= MAX_CHUNK:
            raise SealedError(f"chunk size must be 1..{MAX_CHUNK} bytes (got {chunk_size})")
        if _chunks(plain_size, chunk_size) > MAX_CHUNKS:
            raise SealedError("too many chunks for one sealed file; use a larger chunk size")
        prefix = os.urandom(PREFIX) if nonce_prefix is None else nonce_prefix
        if len(prefix) != PREFIX:
            raise SealedError(f"nonce prefix must be {PREFIX} bytes")
        kid = bytes.fromhex(key_id(key))
        raw = _HEADER.pack(MAGIC, VERSION, chunk_size, plain_size, bytes.fromhex(sha256), kid, prefix)
        return cls(chunk_size, plain_size, sha256, kid.hex(), prefix, raw)

    @classmethod
    def parse(cls, raw: bytes, name: str = "input") -> "Header":
        if len(raw) < 9 or raw[:8] != MAGIC:
            raise SealedError(f"{name}: not a kpack sealed file (bad or missing header)")
        if raw[8] != VERSION:
            raise SealedError(f"{name}: sealed format version {raw[8]}; this kpack reads version {VERSION}: "
                              "build and push the weights dataset again")
        if len(raw) < HEADER_SIZE:
            raise SealedError(f"{name}: truncated (the header is incomplete)")
        _, _, chunk_size, plain_size, sha, kid, prefix = _HEADER.unpack(raw[:HEADER_SIZE])
        if not 0 < chunk_size <= MAX_CHUNK:
            raise SealedError(f"{name}: corrupt header (chunk size {chunk_size})")
        return cls(chunk_size, plain_size, sha.hex(), kid.hex(), prefix, bytes(raw[:HEADER_SIZE]))


def key_id(key: bytes) -> str:
    """A short public name for a key (hex): equal keys give equal ids; the id says nothing about the key."""
    _check_key(key)
    return hashlib.sha256(b"kpack sealed key id\0" + key).digest()[:16].hex()


def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise SealedError(f"the key must be {KEY_BYTES} bytes")


def parse_key(text: str, name: str) -> bytes:
    """32 bytes from 64 hex digits or base64 (standard or URL-safe, padding optional). `name` says where the
    text came from (an env var or secret label) for the error message, which never shows the text."""
    import base64
    import binascii
    import re

    value = "".join(text.split())
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return bytes.fromhex(value)
    if re.fullmatch(r"[A-Za-z0-9+/_-]{42,44}={0,2}", value):
        try:
            raw = base64.b64decode(value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == KEY_BYTES:
            return raw
    raise SealedError(f"{name}: expected a {KEY_BYTES}-byte key as 64 hex digits or base64 (got {len(value)} "
                      f"characters); {KEY_HINT}")


class _Cipher:
    """AES-256-GCM over preallocated buffers. Kaggle's image may carry an older `cryptography` (before
    encrypt_into/decrypt_into: one allocation per chunk then) or none at all (pycryptodome then, decrypt only;
    the packager always has `cryptography`)."""

    def __init__(self, key: bytes, backend: str | None = None):
        _check_key(key)
        self._key, self.backend = bytes(key), backend or _backend()
        if self.backend != "pycryptodome":
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._aes = AESGCM(self._key)

    def seal_into(self, nonce: bytes, data, aad: bytes, out) -> None:
        if self.backend == "into":
            self._aes.encrypt_into(nonce, data, aad, out)
        elif self.backend == "alloc":
            out[:] = self._aes.encrypt(nonce, bytes(data), aad)
        else:
            raise SealedError("encrypting needs the 'cryptography' package")

    def open_into(self, nonce: bytes, data, aad: bytes, out) -> None:
        """Raises SealedError (message filled in by the caller) when the tag does not match."""
        if self.backend == "pycryptodome":
            from Crypto.Cipher import AES

            cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce, mac_len=TAG)
            cipher.update(aad)
            try:
                out[:] = cipher.decrypt_and_verify(bytes(data[:-TAG]), bytes(data[-TAG:]))
            except ValueError:
                raise SealedError("tag mismatch") from None
            return
        from cryptography.exceptions import InvalidTag

        try:
            if self.backend == "into":
                self._aes.decrypt_into(nonce, data, aad, out)
            else:
                out[:] = self._aes.decrypt(nonce, bytes(data), aad)
        except InvalidTag:
            raise SealedError("tag mismatch") from None


def _backend() -> str:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        return "pycryptodome"
    return "into" if hasattr(AESGCM, "decrypt_into") else "alloc"


def _chunks(plain_size: int, chunk_size: int) -> int:
    return max(1, -(-plain_size // chunk_size))


def sealed_size(plain_size: int, chunk_size: int = DEFAULT_CHUNK) -> int:
    return HEADER_SIZE + plain_size + _chunks(plain_size, chunk_size) * TAG


def read_header(path: str | os.PathLike, name: str | None = None) -> Header:
    with open(path, "rb") as f:
        return Header.parse(f.read(HEADER_SIZE), name or Path(path).name)


def _view(fd: int, offset: int, length: int) -> memoryview:
    """`length` bytes of a file from `offset`, mapped: no copy into a buffer, and the pages leave the process's
    memory when the last view of them goes (no explicit close: a failed step's traceback may still hold one).
    The file must not be cut short while mapped (inputs are read-only, and the packager checks that a weight
    file kept its size and mtime over a build)."""
    if length == 0:
        return memoryview(b"")
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # map the pages up front: fewer page faults
    mapped = mmap.mmap(fd, offset + length - base, flags=flags, prot=mmap.PROT_READ, offset=base)
    return memoryview(mapped)[offset - base:]


def _pwrite_all(fd: int, data, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _run_batches(header: Header, src_fd: int, dst_fd: int, sealing: bool, step) -> None:
    """Call `step(index, piece, out)` for every chunk, BATCH chunks per task on WORKERS threads: `piece` is
    the chunk's input bytes (mapped), `out` its output slot; each task then writes its outputs in one go.
    Raises the error of the lowest failing batch (so the message names the first bad chunk)."""
    count, chunk = _chunks(header.plain_size, header.chunk_size), header.chunk_size
    plain_at = lambda i: (i * chunk, min(chunk, header.plain_size - i * chunk))  # noqa: E731
    sealed_at = lambda i: (HEADER_SIZE + i * (chunk + TAG), plain_at(i)[1] + TAG)  # noqa: E731
    src_at, dst_at = (plain_at, sealed_at) if sealing else (sealed_at, plain_at)
    local, write_lock = threading.local(), threading.Lock()

    def task(first: int) -> None:
        last = min(first + BATCH, count)
        start, end = src_at(first)[0], sum(src_at(last - 1))
        out_start, out_end = dst_at(first)[0], sum(dst_at(last - 1))
        if getattr(local, "buffer", None) is None:
            local.buffer = bytearray(BATCH * (chunk + TAG))
        out = memoryview(local.buffer)
        view = _view(src_fd, start, end - start)
        for i in range(first, last):
            at, n = src_at(i)
            out_at, out_n = dst_at(i)
            step(i, view[at - start:at - start + n], out[out_at - out_start:out_at - out_start + out_n])
        del view
        # One writer at a time: ext4 serialises buffered writes to a file anyway, and a thread waiting here
        # sleeps, where one waiting inside the kernel spins on the file's lock and takes a core from AES.
        with write_lock:
            _pwrite_all(dst_fd, out[:out_end - out_start], out_start)

    with ThreadPoolExecutor(WORKERS, thread_name_prefix="sealed") as pool:
        futures = [pool.submit(task, first) for first in range(0, count, BATCH)]
        try:
            for future in futures:
                future.result()
        finally:
            for future in futures:
                future.cancel()


def _nonce(header: Header, index: int) -> bytes:
    return header.nonce_prefix + index.to_bytes(4, "big")


def _aad(header: Header, index: int) -> bytes:
    return header.raw + _INDEX.pack(index)


def _atomic_output(dst: Path, size: int):
    """A temp file beside `dst` with `size` bytes allocated up front (on ext4 writing a big new file then costs
    about a quarter of the kernel time of growing it write by write) and set to exactly that length."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
    try:
        if size > 0 and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError:  # a file system without it: the writes allocate as they come
                pass
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, Path(tmp)


def _write_file(dst: Path, size: int, fill) -> None:
    """Write `dst` through `fill(fd)` into a temp file renamed into place: on any failure nothing is left."""
    fd, tmp = _atomic_output(dst, size)
    try:
        try:
            fill(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def encrypt_file(src: str | os.PathLike, dst: str | os.PathLike, key: bytes, chunk_size: int = DEFAULT_CHUNK,
                 sha256: str | None = None, nonce_prefix: bytes | None = None, backend: str | None = None) -> Header:
    """Seal file `src` into `dst` (written beside, then renamed into place); returns the header. `sha256` is
    the plaintext's when the caller has it already (the packager computes it for the manifest); else it is
    computed here, in a pass of its own (the header, hash included, is authenticated by every chunk)."""
    dst = Path(dst)
    cipher = _Cipher(key, backend)
    with open(src, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        header = Header.new(key, size, sha256 or file_sha256(src), chunk_size, nonce_prefix)

        def fill(fd: int) -> None:
            _pwrite_all(fd, header.raw, 0)
            _run_batches(header, f.fileno(), fd, True,
                         lambda i, piece, out: cipher.seal_into(_nonce(header, i), piece, _aad(header, i), out))
            if os.fstat(f.fileno()).st_size != size:
                raise SealedError(f"{src}: changed size while it was being sealed; seal it again")

        _write_file(dst, sealed_size(size, chunk_size), fill)
    return header


def decrypt_file(src: str | os.PathLike, dst: str | os.PathLike, key: bytes, expected_sha256: str | None = None,
                 name: str | None = None, backend: str | None = None) -> Header:
    """Open sealed `src` into `dst`; returns the header. With `expected_sha256`, the plaintext hash the header
    carries must equal it (checked before decrypting; every chunk's tag then vouches for the bytes). Raises
    SealedError naming `name` on a wrong key, a changed, truncated, reordered or extended file; on any failure
    nothing is left at `dst` (nor the temp file beside it)."""
    src, dst = Path(src), Path(dst)
    name = name or src.name
    with open(src, "rb", buffering=0) as f:
        header = Header.parse(f.read(HEADER_SIZE), name)
        if header.key_id != key_id(key):
            raise SealedError(f"{name}: sealed with another key (key id {header.key_id}, this key's id "
                              f"{key_id(key)})")
        expected_size, size = sealed_size(header.plain_size, header.chunk_size), os.fstat(f.fileno()).st_size
        if size != expected_size:
            what = "truncated" if size < expected_size else "extended"
            raise SealedError(f"{name}: {what} ({size} bytes; a sealed file of {header.plain_size} bytes is "
                              f"{expected_size})")
        if expected_sha256 and header.sha256 != expected_sha256:
            raise SealedError(f"{name}: holds other weights than the manifest lists (sha256 {header.sha256[:12]}..."
                              f", expected {expected_sha256[:12]}...); build and push the weights dataset again")
        cipher = _Cipher(key, backend)

        def step(i: int, piece, out) -> None:
            try:
                cipher.open_into(_nonce(header, i), piece, _aad(header, i), out)
            except SealedError:
                raise SealedError(f"{name}: authentication failed at chunk {i} (the file was changed or its "
                                  "chunks reordered)") from None

        _write_file(dst, header.plain_size, lambda fd: _run_batches(header, f.fileno(), fd, False, step))
    return header
