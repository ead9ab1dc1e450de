"""Completion and failure announcements: always on stdout, and by Telegram when the bot is configured.

Telegram: the Bot API's sendMessage, token and chat id from the environment variables that
`notifications.telegram` names (the config never holds them). KPACK_TELEGRAM_API overrides the base URL
(tests point it at a local stub). A Telegram failure never fails the run: it prints one warning, without the
token (the token is part of the URL, so exception texts are scrubbed before they are shown).
"""
from __future__ import annotations

import os
import sys

import requests

DEFAULT_API = "https://api.telegram.org"
TIMEOUT_S = 10
MAX_TEXT = 4000  # Telegram refuses messages over 4096 characters


def _telegram_settings(cfg) -> tuple[str, str] | None:
    telegram = cfg.notifications.telegram if cfg is not None else None
    if telegram is None:
        return None
    token, chat_id = os.environ.get(telegram.token_env), os.environ.get(telegram.chat_id_env)
    if not token or not chat_id:
        return None
    return token, chat_id


def send_telegram(token: str, chat_id: str, text: str) -> bool:
    """True when Telegram accepted the message; False (after one warning) otherwise."""
    from packager.kaggle_api import outside_proxies

    base = (os.environ.get("KPACK_TELEGRAM_API") or DEFAULT_API).rstrip("/")
    url = f"{base}/bot{token}/sendMessage"
    try:
        with requests.Session() as session:
            # Not through the local Kaggle's proxy, which the local backend puts into this process's environment.
            session.trust_env = False
            session.proxies = outside_proxies(url)
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if bundle:
                session.verify = bundle
            response = session.post(url, json={"chat_id": chat_id, "text": text[:MAX_TEXT],
                                               "disable_web_page_preview": True}, timeout=TIMEOUT_S)
        ok = response.status_code == 200
        if ok:
            try:
                ok = bool(response.json().get("ok", True))
            except ValueError:
                pass
        if not ok:
            reason = f"HTTP {response.status_code}"
            try:
                reason += f" {response.json().get('description', '')}".rstrip()
            except ValueError:
                pass
            raise RuntimeError(reason)
        return True
    except Exception as exc:  # noqa: BLE001 - a notification must never fail the run
        message = f"{type(exc).__name__}: {exc}".replace(token, "<token>")
        print(f"warning: Telegram notification not sent ({message})", file=sys.stderr, flush=True)
        return False


def notify(cfg, text: str, ok: bool = True) -> None:
    """Announce `text` (a completion when ok, else a failure) on stdout and by Telegram when configured; a
    failure quoted from a kernel's log may hold a secret value, which is redacted."""
    from packager.secrets_scan import collect_secrets, redact

    line = redact(f"[kpack] {'done' if ok else 'FAILED'}: {text}", collect_secrets(cfg))
    print(line, flush=True)
    settings = _telegram_settings(cfg)
    if settings is not None:
        send_telegram(settings[0], settings[1], line)
