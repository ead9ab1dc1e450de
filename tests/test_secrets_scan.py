"""The pre-upload secrets scan: finds a secret in any form it could be written in, names the file and never the
value; collects the secrets this machine holds; refuses public weights that should have been encrypted."""
import base64
import json
import os
from pathlib import Path

import pytest

from kpack_runtime import sealed
from packager import secrets_scan
from packager.config import parse_config
from packager.errors import UserError
from packager.secrets_scan import collect_secrets, patterns, refuse_public_plain_weights, scan

TOKEN = "tg-7731:AAF3kq9ZyXw_secret-value"


def refused(paths, secrets) -> str:
    with pytest.raises(UserError) as info:
        scan(paths, secrets)
    message = str(info.value)
    assert "\n" not in message
    for secret in secrets:
        for form in patterns(secret):
            assert form.decode("latin-1") not in message
    return message


def test_planted_key_in_a_built_script_is_found_and_named(tmp_path):
    kernel = tmp_path / "build" / "kernels" / "train"
    kernel.mkdir(parents=True)
    (kernel / "kernel-metadata.json").write_text("{}")
    script = kernel / "train.py"
    script.write_text(f"CONFIG = {{'token': '{TOKEN}'}}\n")
    message = refused([tmp_path / "build"], [TOKEN])
    assert message.startswith(f"{script}: holds a secret value")


@pytest.mark.parametrize("prefix", [0, 1, 2, 3, 1000])
def test_secret_inside_base64_blob_at_any_alignment(tmp_path, prefix):
    blob = base64.b64encode(os.urandom(prefix) + TOKEN.encode() + os.urandom(7))
    (tmp_path / "k.py").write_bytes(b"SRC = '" + blob + b"'\n")
    refused([tmp_path], [TOKEN])
    blob = base64.urlsafe_b64encode(os.urandom(prefix) + TOKEN.encode() + os.urandom(7))
    (tmp_path / "k.py").write_bytes(b"SRC = '" + blob + b"'\n")
    refused([tmp_path], [TOKEN])


def test_hex_forms_and_decoded_key_bytes(tmp_path):
    key = os.urandom(32)
    key_text = base64.b64encode(key).decode()
    for data in (TOKEN.encode().hex().encode(), TOKEN.encode().hex().upper().encode(),
                 b"\x00binary" + key + b"tail", key.hex().encode()):
        (tmp_path / "w.bin").write_bytes(data)
        refused([tmp_path / "w.bin"], [TOKEN, key_text])


def test_match_across_read_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(secrets_scan, "READ", 16)
    for offset in range(0, 40):
        (tmp_path / "f.txt").write_bytes(b"x" * offset + TOKEN.encode() + b"y" * 5)
        refused([tmp_path / "f.txt"], [TOKEN])


def test_clean_files_short_and_empty_values_pass(tmp_path):
    (tmp_path / "a.py").write_text("print('hello world, nothing to see')\n")
    (tmp_path / "b.bin").write_bytes(os.urandom(100_000))
    scan([tmp_path], [TOKEN, "", "short", "hello"])  # <8 characters: too likely by chance, ignored
    scan([tmp_path], [])


def test_sealed_files_are_scanned_only_in_their_header(tmp_path):
    key = os.urandom(32)
    (tmp_path / "w").write_bytes(TOKEN.encode() * 10)
    sealed.encrypt_file(tmp_path / "w", tmp_path / "w.enc", key)
    (tmp_path / "w").unlink()
    scan([tmp_path], [TOKEN, key.hex()])


def test_collect_secrets(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "alice", "key": "kagglejsonkey123"}))
    (home / ".kaggle" / "access_token").write_text("accesstokenfile456\n")
    for name in list(os.environ):
        if secrets_scan.SECRET_NAME.search(name):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KAGGLE_CONFIG_DIR", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("KAGGLE_KEY", "envkaggle789xyz")
    monkeypatch.setenv("MY_BOT", "bot-token-value-1")
    monkeypatch.setenv("MY_CHAT", "123456789")
    monkeypatch.setenv("W_KEY_VAR", "weights-key-text")  # named by the config: taken whatever it looks like
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    monkeypatch.setenv("DB_PASSWORD", "hunter2hunter2")
    monkeypatch.setenv("SOME_KEY_ENV", "KPACK_WEIGHTS_KEY")  # another variable's name: not a secret value
    monkeypatch.setenv("SSH_KEY_PATH", "/home/alice/.ssh/id_rsa")  # a path: not a secret value
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # too short
    monkeypatch.setenv("EDITOR_SETTING", "vim-is-the-editor")  # a name that does not say secret
    cfg = parse_config({"competition": "digits-multilabel", "kaggle_user": "alice",
                        "kernels": {"train": {"entry": "kernel_src/train.py"}},
                        "datasets": {"weights": {"slug": "digits-weights", "key_env": "W_KEY_VAR"}},
                        "notifications": {"telegram": {"token_env": "MY_BOT", "chat_id_env": "MY_CHAT"}}})
    assert collect_secrets(cfg) == sorted(["kagglejsonkey123", "accesstokenfile456", "envkaggle789xyz",
                                           "bot-token-value-1", "123456789", "weights-key-text",
                                           "hf_abcdefghijklmnop", "hunter2hunter2"])


def _weights_cfg(public=True, encrypt=True):
    return parse_config({"competition": "digits-multilabel", "kaggle_user": "alice",
                         "kernels": {"train": {"entry": "kernel_src/train.py"}},
                         "datasets": {"weights": {"slug": "digits-weights", "public": public, "encrypt": encrypt}}})


def test_public_plain_weights_are_refused(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"files": [{"name": "w.pth", "encrypted": False}]}))
    (folder / "w.pth").write_bytes(b"weights")
    with pytest.raises(UserError, match=r"public and encrypt: true, but .* holds unencrypted weights \(w.pth\)"):
        refuse_public_plain_weights(_weights_cfg(), folder)
    refuse_public_plain_weights(_weights_cfg(public=False), folder)  # private: fine
    refuse_public_plain_weights(_weights_cfg(encrypt=False), folder)  # public plain weights, asked for: fine

    (folder / "w.pth").unlink()
    sealed.encrypt_file(tmp_path / "ds" / "manifest.json", folder / "w.pth.enc", os.urandom(32))
    (folder / "manifest.json").write_text(json.dumps({"files": [{"name": "w.pth", "encrypted": True}]}))
    (folder / "dataset-metadata.json").write_text("{}")
    refuse_public_plain_weights(_weights_cfg(), folder)
    (folder / "stray.bin").write_bytes(b"plain")  # a plain file beside sealed ones
    with pytest.raises(UserError, match=r"\(stray.bin\)"):
        refuse_public_plain_weights(_weights_cfg(), folder)
    with pytest.raises(UserError, match="no weights manifest"):
        refuse_public_plain_weights(_weights_cfg(), tmp_path / "nowhere")
