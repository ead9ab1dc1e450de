"""The last check before anything is uploaded: no secret value may appear in a built artifact.

`scan()` streams every file (flat memory) and looks for each secret in the forms it could have been written
in: as given, hex (lower and upper case), base64 and URL-safe base64 at each of the three byte alignments (so
a secret inside a larger base64 blob is found too), and the same for the bytes a hex or base64 secret decodes
to (a raw key inside a binary file). A match crossing a read boundary is found: consecutive reads overlap by
the longest pattern's length less one. The error names the file, never the value nor which form matched.

Cost is one pass over the data per pattern (bytes.find), so the pattern set depends on the file:
- sealed weight files (kpack_runtime/sealed.py) are ciphertext: only their header is scanned, since a
  plaintext secret cannot show through AES-GCM and scanning gigabytes of random bytes would find only chance;
- binary files (a NUL byte in the first 8 KiB: checkpoints, wheels) are searched for the secret as given, in
  hex, and for the bytes it decodes to; base64 forms, which belong to text, are left out;
- text files (the kernel script, metadata, manifests) are searched for every form.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from pathlib import Path

from packager.errors import UserError

MIN_LEN = 8
REDACTED = "[redacted]"
READ = 8 << 20
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
ENV_NAME_LIKE = re.compile(r"[A-Z][A-Z0-9_]*")
ALWAYS = ("KAGGLE_KEY", "KAGGLE_API_TOKEN")


# --------------------------------------------------------------------------------------------- forms

def _b64_cores(raw: bytes) -> set[bytes]:
    """The base64 characters that depend only on `raw`, wherever it sits in a larger encoded blob: for each
    alignment k (bytes before it mod 3), the characters whose 6 bits all come from `raw`."""
    cores = set()
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + raw)
        start, end = -(-8 * k // 6), (8 * (k + len(raw))) // 6
        core = encoded[start:end]
        cores.update({core, core.translate(bytes.maketrans(b"+/", b"-_"))})
    return cores


def _decoded(value: str) -> bytes | None:
    """The bytes a hex or base64 secret stands for, when it is one."""
    text = value.strip()
    if re.fullmatch(r"(?:[0-9a-fA-F]{2}){%d,}" % MIN_LEN, text):
        return bytes.fromhex(text)
    if re.fullmatch(r"[A-Za-z0-9+/_-]{%d,}={0,2}" % (MIN_LEN * 4 // 3 + 1), text) and len(text.rstrip("=")) % 4 != 1:
        try:
            body = text.rstrip("=").replace("-", "+").replace("_", "/")
            return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except (binascii.Error, ValueError):
            return None
    return None


def patterns(secret: str, text: bool = True) -> set[bytes]:
    """Every byte string `secret` may have been written as (empty when it is too short to search for).
    text=False leaves out the base64 forms: they are looked for in text files only (see scan)."""
    if len(secret) < MIN_LEN:
        return set()
    bases = {secret.encode()}
    decoded = _decoded(secret)
    if decoded is not None and len(decoded) >= MIN_LEN:
        bases.add(decoded)
    found = set()
    for raw in bases:
        found |= {raw, raw.hex().encode(), raw.hex().upper().encode()}
        if text:
            found |= _b64_cores(raw)
    return {p for p in found if len(p) >= MIN_LEN}


# --------------------------------------------------------------------------------------------- scan

def _files(paths: list[Path]) -> list[Path]:
    out = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            out.append(path)
    return out


def _find(path: Path, needles: list[bytes]) -> bool:
    """Whether any needle occurs in the file."""
    keep = max(len(n) for n in needles) - 1
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(READ):
            window = tail + block
            if any(n in window for n in needles):
                return True
            tail = window[-keep:]
    return False


def _kind(path: Path) -> str:
    """sealed (ciphertext: only its header can hold a plaintext secret), binary (a NUL byte early on) or text."""
    from kpack_runtime import sealed  # not at the top: redact() serves error paths
    with open(path, "rb") as f:
        head = f.read(8192)
    try:
        sealed.Header.parse(head)
        return "sealed"
    except sealed.SealedError:
        return "binary" if b"\0" in head else "text"


def scan(paths: list[Path], secrets: list[str]) -> None:
    """Raise UserError naming the first artifact (a file, or a file under a folder in `paths`) holding any of
    `secrets` in any form; values shorter than 8 characters are ignored."""
    from kpack_runtime import sealed

    secrets = [s for s in secrets if s and len(s) >= MIN_LEN]
    if not secrets:
        return
    needles = {text: sorted(set().union(*(patterns(s, text) for s in secrets))) for text in (True, False)}
    for path in _files(paths):
        kind = _kind(path)
        if kind == "sealed":
            hit = any(n in sealed.read_header(path).raw for n in needles[False])
        else:
            hit = _find(path, needles[kind == "text"])
        if hit:
            raise UserError(f"{path}: holds a secret value (a credential or key from your environment); "
                            "nothing was uploaded; remove it from the sources or config that produced this file")


# --------------------------------------------------------------------------------------------- collect

def _kaggle_dirs() -> list[Path]:
    home = Path(os.path.expanduser("~"))
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    dirs = [Path(os.environ["KAGGLE_CONFIG_DIR"])] if os.environ.get("KAGGLE_CONFIG_DIR") else []
    return dirs + [home / ".kaggle", xdg / "kaggle"]


def _looks_secret(value: str) -> bool:
    """Heuristic for variables found by name only: skip values that are other variables' names or paths,
    which kpack's own config legitimately writes into the kernel (e.g. key_env: KPACK_WEIGHTS_KEY)."""
    text = value.strip()
    return not (ENV_NAME_LIKE.fullmatch(text) or text.startswith(("/", "~", "./")))


def collect_secrets(cfg) -> list[str]:
    """Secret values from this machine: Kaggle credentials (env, access_token, kaggle.json), the Telegram
    token and chat id and the weights key named in the config, and every env var whose name says secret."""
    names = set(ALWAYS)
    telegram = cfg.notifications.telegram if cfg is not None else None
    if telegram is not None:
        names |= {telegram.token_env, telegram.chat_id_env}
    weights = cfg.datasets.weights if cfg is not None else None
    names.add(weights.key_env if weights is not None else "KPACK_WEIGHTS_KEY")
    model = getattr(getattr(cfg, "models", None), "weights", None)
    if model is not None:  # the key of models/ published as a Kaggle Model (models_push.py)
        names.add(model.key_env)
    values = {os.environ.get(name, "") for name in names}
    values |= {v for k, v in os.environ.items() if SECRET_NAME.search(k) and _looks_secret(v)}
    for folder in _kaggle_dirs():
        try:
            values.add((folder / "access_token").read_text().strip())
        except OSError:
            pass
        try:
            values.add(str(json.loads((folder / "kaggle.json").read_text()).get("key") or ""))
        except (OSError, ValueError, AttributeError):
            pass
    return sorted(v.strip() for v in values if len(v.strip()) >= MIN_LEN)


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret value (as given, and as JSON escapes it) replaced by REDACTED, longest first
    (a secret containing another is replaced whole)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
        escaped = json.dumps(secret)[1:-1]
        if escaped != secret:
            text = text.replace(escaped, REDACTED)
    return text


# --------------------------------------------------------------------------------------------- public weights

def refuse_public_plain_weights(cfg, dataset_dir: Path | None = None) -> None:
    """A public weights dataset that the config wants encrypted must hold only sealed weights."""
    spec = cfg.datasets.weights
    if spec is None or not (spec.public and spec.encrypt):
        return
    from packager.datasets import BUILD_ROOT, METADATA, PUSHED
    from packager.weights import MANIFEST

    folder = Path(dataset_dir) if dataset_dir is not None else BUILD_ROOT / spec.slug
    try:
        entries = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{folder}: no weights manifest; build the weights dataset before pushing it") from None
    plain = [e.get("name", "?") for e in entries if not e.get("encrypted")]
    plain += [p.name for p in sorted(folder.iterdir())
              if p.is_file() and p.name not in (MANIFEST, METADATA, PUSHED) and _kind(p) != "sealed"]
    if plain:
        raise UserError(f"datasets.weights is public and encrypt: true, but {folder} holds unencrypted weights "
                        f"({', '.join(sorted(set(plain)))}); rebuild it with {spec.key_env} set, nothing was uploaded")
