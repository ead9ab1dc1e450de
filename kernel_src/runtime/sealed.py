"""Sealed files: AES-256-GCM in fixed-size chunks, streamed with flat memory. Used by the packager (encrypt)
and inside the kernel (decrypt), so it imports nothing from `packager`.

Layout of a sealed file:

    header  40 bytes  magic b"KPSEALED" | version u8 | 3 zero bytes | chunk_size u32 | key_id 16 bytes
                      | nonce_prefix 8 bytes
    chunk   ciphertext of up to chunk_size plaintext bytes + 16-byte GCM tag, repeated

Every chunk but the last holds exactly chunk_size plaintext bytes; the last holds 0..chunk_size (an empty
file is one empty final chunk, i.e. just a tag). Chunk i is sealed with

    nonce = nonce_prefix (8 random bytes, new for every file) || i (u32 big-endian)
    aad   = header || i (u64 big-endian) || final flag (1 byte)

so the header is authenticated, a chunk moved to another position fails (index), a file cut at a chunk
boundary fails (the new last chunk was not sealed as final), and data after the final chunk is refused.
Nonces never repeat under one key as long as prefixes differ: with 8 random bytes a collision needs about
2**32 files sealed under the same key. The key id in the header is a hash of the key, never the key.
"""
from __future__ import annotations

import hashlib
import io
import mmap
import os
import queue
import stat
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"KPSEALED"
VERSION = 1
TAG = 16
PREFIX = 8
DEFAULT_CHUNK = 1 << 20  # 1 MiB: measured fastest here (the chunk and its ciphertext stay in cache)
BATCH = 4  # chunks per read and per write: fewer system calls and thread hand-offs
MAP_WINDOW = 8 << 20  # bytes of a file mapped at a time when reading through mmap
MAX_CHUNK = 16 << 20  # memory is about 5 * BATCH * chunk size: 20 MiB at the default
MAX_CHUNKS = 1 << 32  # the nonce counter is 4 bytes
_HEADER = struct.Struct(">8sB3xI16s8s")
HEADER_SIZE = _HEADER.size
_AAD_TAIL = struct.Struct(">QB")
KEY_BYTES = 32
KEY_HINT = "make one with: python -c \"import os,base64;print(base64.b64encode(os.urandom(32)).decode())\""


class SealedError(ValueError):
    """A sealed file or key that cannot be used; the message is one line and never contains the key."""


@dataclass(frozen=True)
class Header:
    chunk_size: int
    key_id: str  # hex
    nonce_prefix: bytes
    raw: bytes

    @classmethod
    def new(cls, key: bytes, chunk_size: int = DEFAULT_CHUNK, nonce_prefix: bytes | None = None) -> "Header":
        if not 0 < chunk_size <= MAX_CHUNK:
            raise SealedError(f"chunk size must be 1..{MAX_CHUNK} bytes (got {chunk_size})")
        prefix = os.urandom(PREFIX) if nonce_prefix is None else nonce_prefix
        if len(prefix) != PREFIX:
            raise SealedError(f"nonce prefix must be {PREFIX} bytes")
        kid = bytes.fromhex(key_id(key))
        return cls(chunk_size, kid.hex(), prefix, _HEADER.pack(MAGIC, VERSION, chunk_size, kid, prefix))

    @classmethod
    def parse(cls, raw: bytes, name: str = "input") -> "Header":
        if len(raw) < HEADER_SIZE or raw[:8] != MAGIC:
            raise SealedError(f"{name}: not a kpack sealed file (bad or missing header)")
        magic, version, chunk_size, kid, prefix = _HEADER.unpack(raw[:HEADER_SIZE])
        if version != VERSION:
            raise SealedError(f"{name}: sealed format version {version}; this kpack reads version {VERSION}")
        if not 0 < chunk_size <= MAX_CHUNK:
            raise SealedError(f"{name}: corrupt header (chunk size {chunk_size})")
        return cls(chunk_size, kid.hex(), prefix, bytes(raw[:HEADER_SIZE]))


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


def _read_full(src: BinaryIO, view: memoryview) -> int:
    """Fill `view` unless the stream ends first; returns how many bytes were read."""
    total = 0
    while total < len(view):
        n = src.readinto(view[total:])
        if not n:
            break
        total += n
    return total


def _batches(src: BinaryIO, size: int):
    """(view, is_last) over the rest of `src` in pieces of `size` bytes (the last may be shorter; an empty
    stream gives one empty view). A view is valid until the next one is asked for. A regular file is mapped
    into memory a window at a time (no copy into a buffer, and the mapped pages leave the process's memory as
    each window is dropped); anything else is read into two buffers, reused."""
    mapped = _mapped_batches(src, size)
    if mapped is not None:
        yield from mapped
        return
    cur, nxt = bytearray(size), bytearray(size)
    n = _read_full(src, memoryview(cur))
    while True:
        # Look one read ahead: a full read is the last one only when nothing follows it.
        m = _read_full(src, memoryview(nxt)) if n == size else 0
        yield memoryview(cur)[:n], m == 0
        if m == 0:
            return
        cur, nxt, n = nxt, cur, m


def _map(fd: int, length: int, offset: int) -> mmap.mmap:
    """A read-only map of a file's bytes, its pages mapped up front where the OS can (fewer page faults)."""
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if populate:
        return mmap.mmap(fd, length, flags=mmap.MAP_SHARED | populate, prot=mmap.PROT_READ, offset=offset)
    return mmap.mmap(fd, length, offset=offset, access=mmap.ACCESS_READ)


def _mapped_batches(src: BinaryIO, size: int):
    """_batches over a memory map of a regular file from its current position, or None where it cannot be
    mapped (a pipe, an in-memory stream, a file system without mmap: then it is read). The file must not be
    cut short while it is read (the OS then stops the process): inputs are read-only, and the packager
    checks that a weight file kept its size and mtime over a build."""
    try:
        fd, start = src.fileno(), src.tell()
        info = os.fstat(fd)
        end = info.st_size
        if not stat.S_ISREG(info.st_mode) or end <= start:
            return None
        base = start - start % mmap.ALLOCATIONGRANULARITY
        _map(fd, min(end, start + size) - base, base).close()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None

    def batches():
        step = max(1, MAP_WINDOW // size) * size
        for low in range(start, end, step):
            high = min(low + step, end)
            base = low - low % mmap.ALLOCATIONGRANULARITY
            window = memoryview(_map(fd, high - base, base))
            for at in range(low - base, high - base, size):
                yield window[at:at + size], base + at + size >= end
            # No close(): the caller may still hold a view; the map goes when the last view does.
            del window
        src.seek(end)

    return batches()


class _Writer:
    """Hands filled buffers to background threads: one hashes them (when a digest is asked for), the next
    writes them, then the buffer is free again. File writes and hashlib release the GIL, so AES on the calling
    thread, hashing and writing all run at once on different cores; a few recycled buffers keep memory flat."""

    def __init__(self, dst: BinaryIO, digest, buffer_size: int, count: int = 4):
        self._error: BaseException | None = None
        self._free: queue.Queue = queue.Queue()
        for _ in range(count):
            self._free.put(bytearray(buffer_size))
        steps = ([digest.update] if digest is not None else []) + [dst.write]
        self._queues = [queue.Queue() for _ in steps] + [None]
        self._threads = [threading.Thread(target=self._run, args=(step, self._queues[i], self._queues[i + 1]),
                                          name=f"sealed-{i}", daemon=True) for i, step in enumerate(steps)]
        for thread in self._threads:
            thread.start()

    def _run(self, step, inbox: queue.Queue, outbox: queue.Queue | None) -> None:
        while True:
            item = inbox.get()
            if item is not None and self._error is None:
                try:
                    step(memoryview(item[0])[:item[1]])
                except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                    self._error = exc
            if outbox is not None:
                outbox.put(item)
            elif item is not None:
                self._free.put(item[0])
            if item is None:
                return

    def buffer(self) -> bytearray:
        buf = self._free.get()
        if self._error is not None:
            raise self._error
        return buf

    def write(self, buf: bytearray, n: int) -> None:
        self._queues[0].put((buf, n))

    def __enter__(self) -> "_Writer":
        return self

    def __exit__(self, *exc_info) -> None:
        self._queues[0].put(None)
        for thread in self._threads:
            thread.join()
        if self._error is not None and exc_info[0] is None:
            raise self._error


def _nonce(header: Header, index: int) -> bytes:
    if index >= MAX_CHUNKS:
        raise SealedError("too many chunks for one sealed file; use a larger chunk size")
    return header.nonce_prefix + index.to_bytes(4, "big")


def _aad(header: Header, index: int, final: bool) -> bytes:
    return header.raw + _AAD_TAIL.pack(index, final)


def sealed_size(plain_size: int, chunk_size: int = DEFAULT_CHUNK) -> int:
    chunks = max(1, -(-plain_size // chunk_size))
    return HEADER_SIZE + plain_size + chunks * TAG


def encrypt_stream(src: BinaryIO, dst: BinaryIO, key: bytes, chunk_size: int = DEFAULT_CHUNK, digest=None,
                   sealed_digest=None, nonce_prefix: bytes | None = None, backend: str | None = None) -> int:
    """Seal everything `src` yields into `dst`; returns the plaintext size. `digest` and `sealed_digest`
    (hashlib objects), when given, are fed the plaintext and the sealed bytes in passing. Memory: a few
    buffers of BATCH chunks each, whatever the size of the stream."""
    header = Header.new(key, chunk_size, nonce_prefix)
    cipher = _Cipher(key, backend)
    if sealed_digest is not None:
        sealed_digest.update(header.raw)
    dst.write(header.raw)
    index = total = 0
    with _Writer(dst, sealed_digest, BATCH * (chunk_size + TAG)) as writer:
        for batch, last_batch in _batches(src, BATCH * chunk_size):
            if digest is not None:
                digest.update(batch)
            out, written = writer.buffer(), 0
            for start in range(0, max(len(batch), 1), chunk_size):
                piece = batch[start:start + chunk_size]
                final = last_batch and start + chunk_size >= len(batch)
                view = memoryview(out)[written:written + len(piece) + TAG]
                cipher.seal_into(_nonce(header, index), piece, _aad(header, index, final), view)
                written += len(view)
                index += 1
            writer.write(out, written)
            total += len(batch)
    return total


def read_header(src: BinaryIO | str | os.PathLike, name: str | None = None) -> Header:
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as f:
            return read_header(f, name or Path(src).name)
    return Header.parse(src.read(HEADER_SIZE), name or "input")


def decrypt_stream(src: BinaryIO, dst: BinaryIO, key: bytes, digest=None, name: str = "input",
                   backend: str | None = None) -> int:
    """Open a sealed stream into `dst`; returns the plaintext size. `digest` (a hashlib object) is fed the
    plaintext. Raises SealedError naming `name` on a wrong key, a changed, truncated, reordered or extended
    file. `dst` may hold a prefix of the plaintext when it raises: decrypt_file() never leaves one behind."""
    header = read_header(src, name)
    if header.key_id != key_id(key):
        raise SealedError(f"{name}: sealed with another key (key id {header.key_id}, this key's id {key_id(key)})")
    cipher = _Cipher(key, backend)
    size = header.chunk_size + TAG
    index = total = 0
    with _Writer(dst, digest, BATCH * header.chunk_size) as writer:
        for batch, last_batch in _batches(src, BATCH * size):
            out, written = writer.buffer(), 0
            for start in range(0, max(len(batch), 1), size):
                piece = batch[start:start + size]
                final = last_batch and start + size >= len(batch)
                if len(piece) < TAG:
                    raise SealedError(f"{name}: truncated (chunk {index} is incomplete)")
                view = memoryview(out)[written:written + len(piece) - TAG]
                try:
                    cipher.open_into(_nonce(header, index), piece, _aad(header, index, final), view)
                except SealedError:
                    raise SealedError(f"{name}: authentication failed at chunk {index} (the file was changed, "
                                      "truncated or reordered)") from None
                written += len(view)
                index += 1
            writer.write(out, written)
            total += written
    return total


def _atomic_output(dst: Path, size_hint: int):
    """A temp file beside `dst`, with `size_hint` bytes allocated up front: on ext4 that makes writing a big new
    file several times cheaper (measured: about a quarter of the kernel time of growing it write by write).
    The caller truncates it to what was written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
    if size_hint > 0 and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size_hint)
        except OSError:  # no space for it up front, or a file system without it: write as it comes
            pass
    return os.fdopen(fd, "wb"), Path(tmp)


def encrypt_file(src: str | os.PathLike, dst: str | os.PathLike, key: bytes, chunk_size: int = DEFAULT_CHUNK) -> None:
    """Seal file `src` into `dst` (written beside, then renamed into place)."""
    dst = Path(dst)
    out, tmp = _atomic_output(dst, sealed_size(os.path.getsize(src), chunk_size))
    try:
        with out, open(src, "rb", buffering=0) as f:
            encrypt_stream(f, out, key, chunk_size)
            out.truncate()
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def decrypt_file(src: str | os.PathLike, dst: str | os.PathLike, key: bytes, expected_sha256: str | None = None,
                 name: str | None = None) -> None:
    """Open sealed `src` into `dst`. With `expected_sha256` the plaintext's sha256 is checked too (on its own
    thread, in the same pass). On any failure nothing is left at `dst` (nor the temp file beside it)."""
    src, dst = Path(src), Path(dst)
    digest, name = (hashlib.sha256() if expected_sha256 else None), name or src.name
    out, tmp = _atomic_output(dst, os.path.getsize(src) - HEADER_SIZE)
    try:
        with out, open(src, "rb", buffering=0) as f:
            decrypt_stream(f, out, key, digest, name)
            out.truncate()
        if digest is not None and digest.hexdigest() != expected_sha256:
            raise SealedError(f"{name}: sha256 mismatch after decryption (expected {expected_sha256[:12]}..., got "
                              f"{digest.hexdigest()[:12]}...)")
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
