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

from packager.config import KERNEL_KINDS, higher_is_better

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


# --------------------------------------------------------------------------------------------- what happened

def next_step(cfg, kind: str) -> str:
    """What comes after a finished KIND: the next kernel kpack.yaml configures, and after infer the submission."""
    if kind == "infer":
        return "kpack submit"
    later = ([k for k in KERNEL_KINDS[KERNEL_KINDS.index(kind) + 1:] if cfg is None or k in cfg.kernels]
             if kind in KERNEL_KINDS else [])
    return f"kpack push {later[0]}" if later else "nothing"


def _never_fails(build):
    """A message that cannot be put together (an odd ledger row, say) is one warning, never the run's end."""
    import functools

    @functools.wraps(build)
    def safe(*args, **kwargs) -> str:
        try:
            return build(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            print(f"warning: notification not sent ({build.__name__}: {type(exc).__name__}: {exc})",
                  file=sys.stderr, flush=True)
            return ""
    return safe


def run_link(cfg, kernel: str, version: int | None = None, output=None) -> str:
    """Where to look: the kernel's page (kaggle.com, or the local Kaggle's), and its report when written."""
    if cfg is not None and cfg.backend == "local":
        page = f"http://127.0.0.1:{cfg.local.port}/code/{kernel}"
    else:
        page = f"https://www.kaggle.com/code/{kernel}"
    page += f" (v{version})" if version else ""
    from pathlib import Path

    report = Path(output) / "report.html" if output else None
    return page + (f"; report {report}" if report is not None and report.is_file() else "")


def _minutes(seconds) -> str:
    from packager.progress import duration

    return duration(seconds) if isinstance(seconds, (int, float)) else "time unknown"


def _cv(value) -> str:
    return f"CV {value:.5f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "no CV"


@_never_fails
def session_finished(cfg, ref, row: dict, output, next_step: str) -> str:
    """A session ended COMPLETE: its CV, the time it used, what comes next."""
    text = (f"{ref} ({ref.kind}, session {ref.session}) COMPLETE: {_cv(row.get('cv_score'))}, "
            f"{_minutes(row.get('seconds'))} used; next: {next_step}; {run_link(cfg, ref.ref, ref.version, output)}")
    notify(cfg, text, ok=True)
    return text


@_never_fails
def chain_finished(cfg, kind: str, rows: list[dict], output=None) -> str:
    """A chain of sessions ended: the best CV of its sessions and the hours they ran (GPU hours on a GPU)."""
    scores = [r["cv_score"] for r in rows if isinstance(r.get("cv_score"), (int, float))]
    hours = sum(r["seconds"] for r in rows if isinstance(r.get("seconds"), (int, float))) / 3600
    accelerator = cfg.kernel(kind).accelerator if cfg is not None and kind in cfg.kernels else None
    unit = "GPU" if accelerator and accelerator.lower().startswith(("nvidia", "gpu")) else (
        "TPU" if accelerator and "tpu" in accelerator.lower() else "CPU")
    last = rows[-1] if rows else {}
    best = max if cfg is None or higher_is_better(cfg) else min  # the kit's F2: higher; own code: score_direction
    text = (f"{kind} chain {last.get('kernel')} done after {len(rows)} session(s): best "
            f"{_cv(best(scores)) if scores else 'CV none'}, {hours:.2f} {unit} hours in all; "
            f"next: {next_step(cfg, kind)}; {run_link(cfg, last.get('kernel'), last.get('version'), output)}")
    notify(cfg, text, ok=True)
    return text


def needs_user(line: str) -> bool:
    """A failure only the user can clear: a secret not attached, a quota used up."""
    lowered = line.lower()
    return "secret" in lowered or "quota" in lowered


@_never_fails
def kernel_failed(cfg, ref, status: str, failure: str = "", output=None, log_text: str | None = None) -> str:
    """A session ended ERROR (or was cancelled): the one line of its log that says why, not the whole log."""
    from packager import logs

    line = logs.failing_line(log_text) if log_text else ""
    if not line:  # no log: the server's failure message, its last line
        lines = (failure or "").strip().splitlines()
        line = lines[-1] if lines else ""
    why = f": {line}" if line else ""
    lead = fix = ""
    if needs_user(line):
        lead, fix = "needs you: ", f"then go on with `kpack watch {ref.kind} --retry`; "
        if "secret" in line.lower() and cfg is not None and cfg.backend == "local":  # no Add-ons menu here
            fix = ("on the local Kaggle attach it with `printf %s \"$KEY\" | kpack local secret set LABEL "
                   "--kernel OWNER/SLUG` for each kernel named, " + fix)
    text = (f"{lead}{ref} ({ref.kind}, session {ref.session}) {status}{why}; {fix}"
            f"{run_link(cfg, ref.ref, ref.version, output)}")
    notify(cfg, text, ok=False)
    return text


@_never_fails
def refused(cfg, what: str, reason: str, fix: str) -> str:
    """Something waits for the user (quota, a missing secret, a push refused): what, why, what to do."""
    text = f"needs you: {what}: {reason}; {fix}"
    notify(cfg, text, ok=False)
    return text


@_never_fails
def submission_scored(cfg, ref, submission_ref, public, private=None, rank_before=None, rank_after=None,
                      best_before=None, higher: bool = True) -> str:
    """A submission was scored: its public score (and private, once revealed), against the best so far (the
    metric's direction), and the rank change where the API gives the team's rank."""
    text = f"submission {submission_ref} of {ref} scored: public {public}"
    text += f", private {private}" if private not in (None, "") else ""
    if isinstance(best_before, (int, float)) and isinstance(public, (int, float)):
        better = public > best_before if higher else public < best_before
        text += f" (best before {best_before:.5f}, {'better' if better else 'not better'})"
    if rank_before and rank_after and rank_before != rank_after:
        text += f"; rank {rank_before} -> {rank_after}"
    elif rank_after:
        text += f"; rank {rank_after}"
    text += f"; {run_link(cfg, ref.ref, ref.version)}"
    notify(cfg, text, ok=True)
    return text
