"""The one door to Kaggle: pick the backend, build an authenticated `KaggleApi`, and retry every call.

`connect(cfg)` returns the `kaggle` client's own `KaggleApi`, pointed at the local Kaggle (backend `local`, the
default) or at kaggle.com (backend `kaggle`, the user's normal credentials). Nothing here shells out to the CLI.

Every call goes through `call()`: a 429 waits for its Retry-After, a 5xx or a dropped connection backs off and
tries again, anything else becomes one `UserError` line. Calls that create something (a kernel version, a dataset
version, a submission) pass `done=`, a check that looks at the server before a retry: when the first attempt
landed although its answer was lost, the check returns what it made and nothing is made twice.

The client reads `KAGGLE_API_ENVIRONMENT` and `KAGGLE_CONFIG_DIR` when its module is first imported (class
attributes `args`, `config_dir`). So the environment is applied before the import, and the instance attributes
are set again after it: a process that talks to both backends, or was imported earlier with another environment,
still gets the backend it asked for.
"""
from __future__ import annotations

import contextlib
import email.utils
import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import requests

from packager.errors import UserError, env_number
from packager.progress import duration

T = TypeVar("T")

class KaggleCallError(UserError):
    """A Kaggle call that failed for good. status: the HTTP status when there was one; unreachable: why the
    server was never reached ('cannot reach HOST: ...'), else ''; exhausted: the retries ran out on a failure
    worth retrying (a 5xx, a 429, a lost connection), which a read-only caller may wait out."""

    def __init__(self, message: str, status: int | None = None, unreachable: str = "", exhausted: bool = False):
        super().__init__(message, exit_code=1)
        self.status, self.unreachable, self.exhausted = status, unreachable, exhausted


# Environment keys this module set for the local backend, with the values they had before (None: unset).
_applied: dict[str, str | None] = {}


@dataclass
class RetryPolicy:
    attempts: int = 8            # tries per call, the first included
    base_s: float = 1.0          # first backoff after a 5xx or a dropped connection; doubles each time
    max_backoff_s: float = 60.0
    max_retry_after_s: float = 900.0  # a longer Retry-After is reported, not slept through

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        return cls(attempts=env_number("KPACK_RETRY_ATTEMPTS", cls.attempts, int, minimum=1),
                   base_s=env_number("KPACK_RETRY_BASE_S", cls.base_s))


policy = RetryPolicy.from_env()
sleep = time.sleep  # tests replace it to count waits without spending them


# --------------------------------------------------------------------------------------------- backends

def _restore_env() -> None:
    for key, old in _applied.items():
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
    _applied.clear()


def _apply_env(env: dict[str, str | None]) -> None:
    _restore_env()
    for key, value in env.items():
        _applied[key] = os.environ.get(key)
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = str(value)


def outside_env() -> dict[str, str]:
    """os.environ as it was before the local backend's settings were applied (for traffic not meant for it)."""
    env = dict(os.environ)
    for key, old in _applied.items():
        if old is None:
            env.pop(key, None)
        else:
            env[key] = old
    return env


def outside_proxies(url: str) -> dict[str, str]:
    """The proxies `url` would use without the local backend's HTTP_PROXY (which points at the local Kaggle):
    for requests with trust_env off, e.g. the Telegram notification."""
    from urllib.parse import urlparse

    env = {k.lower(): v for k, v in outside_env().items() if k.lower().endswith("_proxy") and v}
    parsed = urlparse(url)
    host = parsed.hostname or ""
    for entry in (env.get("no_proxy") or "").split(","):
        entry = entry.strip().lstrip(".")
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return {}
    proxy = env.get(f"{parsed.scheme}_proxy") or env.get("all_proxy")
    return {parsed.scheme: proxy} if proxy else {}


def local_env(cfg) -> dict[str, str | None]:
    """The environment that points the unmodified client at the local Kaggle, starting it when it is down."""
    from packager.localkaggle.client_env import ensure_server

    env: dict[str, str | None] = dict(ensure_server(Path(cfg.local.root), cfg.local.port, cfg.kaggle_user))
    # A stray access token wins over the local credentials (and would be sent to the local server): drop it.
    env.setdefault("KAGGLE_API_TOKEN", None)
    return env


def _config_dir() -> str:
    """Where the client looks for kaggle.json, computed as its class body does at import time."""
    explicit = os.environ.get("KAGGLE_CONFIG_DIR")
    if explicit:
        return explicit
    home = os.path.join(os.path.expanduser("~"), ".kaggle")
    if sys.platform.startswith("linux") and not os.path.exists(home):
        xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        return os.path.join(xdg, "kaggle")
    return home


def find_credentials() -> str | None:
    """Where the client will find Kaggle credentials, in its own order (see authenticate() in kaggle_api_extended),
    or None. Reads only the environment and files: importing the client authenticates at once and prints a
    15-line banner when it finds nothing."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    home = Path(os.path.expanduser("~")) / ".kaggle"
    for token in (home / "access_token", home / "access_token.txt"):
        if token.is_file() and token.stat().st_size:
            return str(token)
    config = Path(_config_dir()) / "kaggle.json"
    try:
        values = json.loads(config.read_text())
    except (OSError, ValueError):
        values = {}
    values = values if isinstance(values, dict) else {}
    from_env = {key: os.environ[f"KAGGLE_{key.upper()}"] for key in ("username", "key")
                if os.environ.get(f"KAGGLE_{key.upper()}")}
    merged = {**values, **from_env}  # the client lays KAGGLE_* over kaggle.json, key by key
    if merged.get("username") and merged.get("key"):
        return "KAGGLE_USERNAME and KAGGLE_KEY" if len(from_env) == 2 else str(config)
    try:  # `kaggle auth login` (OAuth) keeps a refresh token here
        if json.loads((home / "credentials.json").read_text()).get("refresh_token"):
            return str(home / "credentials.json")
    except (OSError, ValueError, AttributeError):
        pass
    return None


def check_credentials(cfg) -> None:
    """backend kaggle: refuse at once, in one line, when the client would find no credentials (before anything is
    built, and instead of the client's banner)."""
    if cfg.backend != "kaggle" or find_credentials() is not None:
        return
    config_dir = _config_dir()
    home = os.path.join(os.path.expanduser("~"), ".kaggle")
    raise UserError(f"no Kaggle credentials (backend: kaggle): none in KAGGLE_API_TOKEN, KAGGLE_USERNAME/KAGGLE_KEY, "
                    f"{os.path.join(config_dir, 'kaggle.json')} or {home}/access_token; put the kaggle.json of "
                    f"https://www.kaggle.com/settings (API, Create New Token) in {config_dir}/ (chmod 600), or set "
                    "KAGGLE_USERNAME and KAGGLE_KEY")


def connect(cfg):
    """An authenticated `KaggleApi` for `cfg.backend`. Backend kaggle uses the client as the environment sets it up
    (KAGGLE_API_ENVIRONMENT=LOCALHOST included, as the kaggle CLI would: tests point it at a local Kaggle)."""
    if cfg.backend == "local":
        _apply_env(local_env(cfg))
    else:
        _restore_env()
        check_credentials(cfg)
    # The client prints its sign-up banner (import and authenticate) when it finds no credentials: kept back, and
    # replaced by one line; anything else it says (a kaggle.json readable by others) goes to stderr.
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            from kaggle.api.kaggle_api_extended import KaggleApi  # after the environment: read at import time

            api = KaggleApi()
            # Instance attributes override what the class body computed at its (possibly earlier) import.
            extra = [a for a in KaggleApi.args if a in ("--verbose",)]
            local = cfg.backend == "local" or on_local()
            api.args = (["--local"] if local else []) + extra
            api.config_dir = _config_dir()
            api.config = os.path.join(api.config_dir, KaggleApi.config_file)
            api.authenticate()
    except SystemExit:
        where = "the local Kaggle's credentials" if cfg.backend == "local" else "Kaggle credentials"
        raise UserError(f"{where} were refused or not found: put kaggle.json in {_config_dir()} (or set "
                        "KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN); see https://www.kaggle.com/settings "
                        "-> API") from None
    if said.getvalue().strip():
        print(said.getvalue().strip(), file=sys.stderr, flush=True)
    user = api.config_values.get("username")
    if user and user.lower() != cfg.kaggle_user.lower():
        raise UserError(f"kpack.yaml: kaggle_user is {cfg.kaggle_user!r} but the {cfg.backend} credentials belong "
                        f"to {user!r}; set kaggle_user: {user}")
    return api


# --------------------------------------------------------------------------------------------- retries

def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) if response is not None else None


def is_not_found(exc: BaseException) -> bool:
    return _status(exc) == 404


def retry_after(exc: BaseException) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date), or None."""
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _transient(exc: BaseException) -> bool:
    """A dropped or refused connection, a timeout, a truncated body: worth another try. A TLS failure (a bad
    certificate, a proxy that intercepts TLS) is not: it fails the same way every time."""
    import urllib3.exceptions as u3

    if isinstance(exc, requests.exceptions.SSLError):
        return False
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                            u3.ProtocolError, u3.ConnectTimeoutError, ConnectionError, TimeoutError))


# The causes requests' "Max retries exceeded ... Caused by X(...)" text names, checked in order, in plain words.
_UNREACHABLE = (
    (("NameResolutionError", "Name or service not known", "getaddrinfo failed", "nodename nor servname",
      "Temporary failure in name resolution"), "its name does not resolve (no network, or DNS failing)"),
    (("ProxyError",), "the proxy (HTTP(S)_PROXY) refused or failed"),
    (("SSLError", "CERTIFICATE_VERIFY_FAILED"), "TLS failed (a proxy or antivirus that intercepts TLS?)"),
    (("Connection refused", "ConnectionRefusedError"), "the connection was refused"),
    (("ConnectTimeout", "connect timeout"), "the connection timed out"),  # not a read timeout: that one got in
    (("Network is unreachable",), "the network is unreachable"),
)


def unreachable(exc: BaseException) -> str | None:
    """'cannot reach HOST: why' when `exc` is a connection that never reached the server, else None. requests'
    own text (a 300-character urllib3 repr) says the same, but buried."""
    if not isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return None
    text = str(exc)
    if on_local() and "ProxyError" in text:  # the local Kaggle is the proxy: it is not running
        return f"the local Kaggle ({os.environ.get('HTTP_PROXY')}) does not answer; any kpack command starts it again"
    match, where = re.search(r"host='([^']+)'(?:, port=(\d+))?", text), "the server"
    if match:
        host, port = match.groups()
        where = host if port in (None, "80", "443") else f"{host}:{port}"
    for needles, why in _UNREACHABLE:
        if any(needle in text for needle in needles):
            return f"cannot reach {where}: {why}"
    return None


def on_local() -> bool:
    """The client is pointed at the local Kaggle (kpack's backend `local`, or `kpack local env` applied)."""
    return os.environ.get("KAGGLE_API_ENVIRONMENT") == "LOCALHOST"


def describe(exc: BaseException) -> str:
    status = _status(exc)
    text = str(exc).strip() or type(exc).__name__
    if status is None and (lost := unreachable(exc)):
        return lost
    if status is not None:
        response = exc.response  # type: ignore[attr-defined]
        detail = text
        try:
            body = response.json()
            detail = body.get("message") or body.get("error") or text
        except Exception:  # noqa: BLE001 - a non-JSON body: keep the exception's text
            pass
        return f"HTTP {status}: {detail}"
    return f"{type(exc).__name__}: {text}"


def _say(message: str) -> None:
    print(f"kaggle: {message}", file=sys.stderr, flush=True)


def call(what: str, fn: Callable[..., T], *args: Any, done: Callable[[], T | None] | None = None,
         **kwargs: Any) -> T:
    """fn(*args, **kwargs) with retries; `what` names the call in messages ("push kernel alice/x").

    done: for calls that create something. Before any retry that follows an ambiguous failure (a 5xx or a lost
    connection, where the server may have acted), `done()` looks at the server; a non-None answer is returned
    as the call's result instead of trying again.
    """
    told, waited = None, 0.0
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn(*args, **kwargs)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - sorted below into retry or one clear error
            status, why = _status(exc), describe(exc)
            limited, lost = status == 429, unreachable(exc) or ""
            if not (limited or (status is not None and status >= 500) or (status is None and _transient(exc))):
                raise KaggleCallError(f"kaggle: {what} failed: {why}", status, lost) from None
            if attempt == policy.attempts:
                over = f" over {duration(waited)}" if waited >= 1 else ""
                raise KaggleCallError(f"kaggle: {what} failed after {attempt} attempts{over}: {why}", status, lost,
                                      exhausted=True) from None
            if limited and retry_after(exc) is not None:
                delay = retry_after(exc)
                if delay > policy.max_retry_after_s:
                    raise KaggleCallError(f"kaggle: {what}: rate limited for {delay:.0f}s (Retry-After); try "
                                          "again later", status) from None
            else:
                delay = min(policy.max_backoff_s, policy.base_s * 2 ** (attempt - 1))
            if why != told:  # the same cause again is not news: the final error says how many tries it took
                _say(f"{what}: {why}; retry {attempt}/{policy.attempts - 1} in {delay:.1f}s")
                told = why
            sleep(delay)
            waited += delay
            if done is not None and not limited:
                result = done()
                if result is not None:
                    _say(f"{what}: the earlier attempt went through; not repeating it")
                    return result
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------- low-level calls

def rpc(api, what: str, service: str, method: str, request, done: Callable[[], Any] | None = None):
    """One kagglesdk call the high-level `KaggleApi` does not expose with the fields we need (e.g. a version).

    service: the client attribute path, e.g. "kernels.kernels_api_client"; built from `api` so it uses the
    same backend and credentials.
    """
    def once():
        with api.build_kaggle_client() as client:
            target = client
            for part in service.split("."):
                target = getattr(target, part)
            return getattr(target, method)(request)

    return call(what, once, done=done)


def version_label(version: int) -> str:
    """The form `version_label` takes on the wire: 'v3' (a bare '3' is a 404 on Kaggle)."""
    return f"v{int(version)}"


def get_kernel(api, owner: str, slug: str, version: int | None = None):
    """GetKernel's answer, or None when the kernel does not exist."""
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest

    request = ApiGetKernelRequest()
    request.user_name, request.kernel_slug = owner, slug
    if version is not None:
        request.version_label = version_label(version)
    try:
        return rpc(api, f"get kernel {owner}/{slug}", "kernels.kernels_api_client", "get_kernel", request)
    except KaggleCallError as err:
        if err.status in (403, 404):
            return None
        raise


def current_kernel_version(api, owner: str, slug: str) -> int | None:
    kernel = get_kernel(api, owner, slug)
    if kernel is None or kernel.metadata is None:
        return None
    return kernel.metadata.current_version_number


def kernel_status(api, owner: str, slug: str, version: int | None = None):
    """(status name, failure message) of a kernel version (the latest when version is None)."""
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusRequest

    request = ApiGetKernelSessionStatusRequest()
    request.user_name, request.kernel_slug = owner, slug
    if version is not None:
        request.version_label = version_label(version)
    response = rpc(api, f"status of {owner}/{slug}" + (f" v{version}" if version else ""),
                   "kernels.kernels_api_client", "get_kernel_session_status", request)
    status = response.status.name if hasattr(response.status, "name") else str(response.status)
    return status, (response.failure_message or "")


@dataclass(frozen=True)
class Quota:
    """The account's weekly accelerator quota as the backend counts it (`kaggle quota`), in hours."""
    used_h: float
    reserved_h: float
    total_h: float
    refresh: str  # when it refreshes, 'YYYY-MM-DD HH:MM UTC', or '' when not said

    @property
    def spent_h(self) -> float:
        """Used, and reserved by sessions running now: neither is left to spend."""
        return self.used_h + self.reserved_h


def accelerator_quota(api, accelerator: str = "GPU") -> Quota | None:
    """GetAcceleratorQuotaStatistics' figures for `accelerator` (GPU or TPU); None when the backend does not
    answer them (an older server, or no quota of that kind): callers fall back to their own count."""
    try:
        response = call("weekly accelerator quota", api.quota_view)
    except KaggleCallError:
        return None
    quota = getattr(response, "gpu_quota" if accelerator == "GPU" else "tpu_quota", None)
    total = getattr(quota, "total_time_allowed", None)
    if quota is None or not total:
        return None
    refresh = getattr(response, "quota_refresh_time", None)
    return Quota(_hours(quota.time_used), _hours(quota.time_reserved), _hours(total),
                 f"{refresh:%Y-%m-%d %H:%M} UTC" if refresh else "")


def _hours(span) -> float:
    return span.total_seconds() / 3600 if span else 0.0
