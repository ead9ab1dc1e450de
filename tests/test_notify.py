"""Notifications: stdout always; Telegram through a local stub of the Bot API; a Telegram failure is one warning
without the token and never an exception."""
import pytest

from packager.config import parse_config
from pushkit import TelegramStub
from packager.notify import notify

TOKEN = "123456:SECRET-token-value"


def make_cfg(telegram=True):
    data = {"competition": "digits-multilabel", "kaggle_user": "alice",
            "kernels": {"train": {"entry": "kernel_src/train.py"}}}
    if telegram:
        data["notifications"] = {"telegram": {"token_env": "T_TOKEN", "chat_id_env": "T_CHAT"}}
    return parse_config(data)


@pytest.fixture
def telegram_stub():
    stub = TelegramStub()
    yield stub
    stub.close()


def test_stdout_and_telegram(telegram_stub, monkeypatch, capsys):
    monkeypatch.setenv("KPACK_TELEGRAM_API", telegram_stub.url)
    monkeypatch.setenv("T_TOKEN", TOKEN)
    monkeypatch.setenv("T_CHAT", "42")
    notify(make_cfg(), "alice/x v3 COMPLETE in 12s", ok=True)
    out = capsys.readouterr().out
    assert "alice/x v3 COMPLETE" in out and TOKEN not in out
    [request] = telegram_stub.received
    assert request["path"] == f"/bot{TOKEN}/sendMessage"
    assert request["body"]["chat_id"] == "42" and "alice/x v3 COMPLETE" in request["body"]["text"]


def test_failure_is_announced_as_failure(telegram_stub, monkeypatch, capsys):
    monkeypatch.setenv("KPACK_TELEGRAM_API", telegram_stub.url)
    monkeypatch.setenv("T_TOKEN", TOKEN)
    monkeypatch.setenv("T_CHAT", "42")
    notify(make_cfg(), "alice/x v3 ERROR: boom", ok=False)
    assert "FAILED" in capsys.readouterr().out
    assert "FAILED" in telegram_stub.received[0]["body"]["text"]


def test_telegram_error_is_a_warning_without_the_token(telegram_stub, monkeypatch, capsys):
    monkeypatch.setenv("KPACK_TELEGRAM_API", telegram_stub.url)
    monkeypatch.setenv("T_TOKEN", TOKEN)
    monkeypatch.setenv("T_CHAT", "42")
    telegram_stub.fail = True
    notify(make_cfg(), "done", ok=True)  # must not raise
    captured = capsys.readouterr()
    assert "warning: Telegram notification not sent" in captured.err
    assert TOKEN not in captured.err + captured.out


def test_unreachable_telegram_is_a_warning_without_the_token(monkeypatch, capsys):
    monkeypatch.setenv("KPACK_TELEGRAM_API", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("T_TOKEN", TOKEN)
    monkeypatch.setenv("T_CHAT", "42")
    notify(make_cfg(), "done", ok=True)
    captured = capsys.readouterr()
    assert "warning: Telegram notification not sent" in captured.err
    assert TOKEN not in captured.err + captured.out


def test_no_telegram_without_its_environment(telegram_stub, monkeypatch, capsys):
    monkeypatch.setenv("KPACK_TELEGRAM_API", telegram_stub.url)
    monkeypatch.delenv("T_TOKEN", raising=False)
    notify(make_cfg(), "run one")
    notify(make_cfg(telegram=False), "run two")
    assert telegram_stub.received == []
    out = capsys.readouterr().out
    assert "run one" in out and "run two" in out


def test_a_secret_quoted_in_a_failure_is_redacted(telegram_stub, monkeypatch, capsys):
    monkeypatch.setenv("KPACK_TELEGRAM_API", telegram_stub.url)
    monkeypatch.setenv("T_TOKEN", TOKEN)
    monkeypatch.setenv("T_CHAT", "42")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef0123456789abcdef")
    notify(make_cfg(), "alice/x v3 ERROR: KeyError: '0123456789abcdef0123456789abcdef'", ok=False)
    out = capsys.readouterr().out
    assert "KeyError: '[redacted]'" in out and "0123456789abcdef" not in out
    assert "KeyError: '[redacted]'" in telegram_stub.received[0]["body"]["text"]
