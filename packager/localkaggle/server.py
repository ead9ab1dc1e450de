"""The local Kaggle's HTTP server: Kaggle's RPC wire format, blob uploads, output downloads, admin endpoints.

The unmodified client reaches it as a proxy: with `KAGGLE_API_ENVIRONMENT=LOCALHOST` it calls
`http://localhost/api/v1/<Service>/<Method>`, and with `HTTP_PROXY=http://127.0.0.1:PORT` requests sends that
absolute URL in the request line, so the path is taken from the full URL. Direct requests (`/api/v1/...`,
`/v1/...`) work too.

    POST /api/v1/<Service>/<Method>        RPC: JSON in, JSON out (kagglesdk's classes); errors are
                                           {"code": status, "message": ...} with that HTTP status
    PUT  /_kpack/upload/<token>            blob bytes; `Content-Range: bytes */N` probes (308 + Range)
    GET  /_kpack/files/kernels/<owner>/<slug>/<N>/<name>   a kernel version's output file (no auth, like
                                           Kaggle's signed URLs)
    GET  /code/<owner>/<slug>              the kernel's page: each version's status, output and log (pages.py)
    GET  /code/<owner>                     the owner's kernels, each with its newest version
    POST /code/<owner>/<slug>/v<N>/stop    the page's "Stop session" button (its form carries the page's token)
    GET  /_kpack/health                    {"ok": true, "root": ..., "pid": ...}
    GET  /_kpack/stats, POST /_kpack/stats/reset
    GET|POST|DELETE /_kpack/faults         see faults.py
    POST /_kpack/cancel                    {"kernel": "owner/slug", "version": N}
    POST /_kpack/omit                      {"method": "GetKernel", "fields": ["currentVersionNumber"]}: answers
                                           of that method leave those fields out (fields [] ends it)

Auth: `Authorization: Basic user:key` or `Bearer <token>` of a local user; anything else is a 401.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import json
import logging
import os
import re
import secrets
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from packager.localkaggle import competitions_api
from packager.localkaggle.faults import Faults, Rule, Stats
from packager.localkaggle.pages import VIEWABLE, kernel_page, owner_page, page_path
from packager.localkaggle.rpc import ROUTES, ApiError, Call, Redirect, load_handlers
from packager.localkaggle.scheduler import Scheduler
from packager.localkaggle.store import Store, StoreError

log = logging.getLogger("kpack.localkaggle")

RPC_PATH = re.compile(r"^(?:/api)?/v1/([A-Za-z0-9_.]+)/([A-Za-z0-9_]+)/?$")
CHUNK = 1 << 16
MAX_JSON = 256 << 20
MAX_DRAIN = 64 << 20
DEFAULT_SLOW_S = 2.0


class LocalKaggle:
    """The server and what it runs: the store, the session scheduler, faults and counters."""

    def __init__(self, root: str | os.PathLike, port: int, max_sessions: int = 0,
                 session_limit_s: float = 12 * 3600, host: str = "127.0.0.1", gpu_sessions: int = 2,
                 cpu_sessions: int = 5, strict_kernel_sources: bool = True, dataset_processing_s: float = 2.0,
                 dataset_processing_s_per_mb: float = 0.05, gpu_quota_hours: float = 30.0,
                 tpu_quota_hours: float = 20.0):
        load_handlers()
        self.store = Store(root)
        # A new dataset version is processing for s + s_per_mb x MB before it is READY (Kaggle's figures: a guess)
        self.dataset_processing_s, self.dataset_processing_s_per_mb = dataset_processing_s, dataset_processing_s_per_mb
        self.session_caps = {"GPU": gpu_sessions, "CPU": cpu_sessions}  # SaveKernel's refusal; 0: no cap
        self.quota_hours = {"GPU": gpu_quota_hours, "TPU": tpu_quota_hours}  # weekly (quota.py); 0: none
        self.strict_kernel_sources = strict_kernel_sources  # a source kernel's newest version must be COMPLETE
        self.omit: dict[str, list[str]] = {}  # method -> answer fields left out (POST /_kpack/omit)
        self.faults = Faults()
        self.stats = Stats()
        self.session_limit_s = session_limit_s
        self.scheduler = Scheduler(self.store, max_sessions, session_limit_s,
                                   on_finished=lambda o, s, v: competitions_api.score_pending(self.store, o, s, v))
        self.uploads = UploadGate()
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.app = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.page_base = f"http://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{self.port}"  # for browsers
        # The page's stop button carries it: another site's form posting to this port cannot stop a session.
        self.page_token = secrets.token_urlsafe(16)

    def start_sessions(self) -> None:
        self.store.prune_uploads()
        for info in self.store.datasets():  # deleteOldVersions whose new version became READY while down
            self.store.reap_old_dataset_versions(info["owner"], info["slug"])
        self.scheduler.start()
        competitions_api.score_all_pending(self.store)

    def serve_forever(self) -> None:
        self.start_sessions()
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self.scheduler.stop()
            self.httpd.server_close()

    def shutdown(self) -> None:
        threading.Thread(target=self.httpd.shutdown, daemon=True).start()

    def health(self) -> dict:
        return {"ok": True, "service": "kpack-local-kaggle", "root": str(self.store.root), "pid": os.getpid(),
                "port": self.port, "max_sessions": self.scheduler.max_sessions,
                "session_caps": self.session_caps, "quota_hours": self.quota_hours,
                "session_limit_s": self.session_limit_s,
                "dataset_processing": [self.dataset_processing_s, self.dataset_processing_s_per_mb]}


def serve(root: str | os.PathLike, port: int, max_sessions: int = 0, session_limit_s: float = 12 * 3600,
          **rules) -> None:
    """Run in the foreground until SIGINT or SIGTERM. rules: gpu_sessions, cpu_sessions, strict_kernel_sources,
    dataset_processing_s, dataset_processing_s_per_mb, gpu_quota_hours, tpu_quota_hours."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    app = LocalKaggle(root, port, max_sessions, session_limit_s, **rules)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: app.shutdown())
    log.info("local Kaggle serving %s on 127.0.0.1:%d (pid %d, session caps %s, %gs session limit)",
             app.store.root, app.port, os.getpid(), app.session_caps, session_limit_s)
    app.serve_forever()
    log.info("local Kaggle stopped")


class Dropped(Exception):
    """The fault injector cut this connection: send nothing more."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kpack-local-kaggle/1"
    timeout = 120  # seconds a connection may sit silent (an idle keep-alive, a stalled upload)

    @property
    def app(self) -> LocalKaggle:
        return self.server.app  # type: ignore[attr-defined]

    # ----------------------------------------------------------------------------------------- plumbing

    def log_message(self, fmt: str, *args) -> None:
        log.info("%s %s", self.address_string(), fmt % args)

    def _path(self) -> str:
        """The request's path, from the absolute URL a proxy client sends or from a plain path."""
        target = self.path
        if "://" in target.split("?", 1)[0]:
            target = urlsplit(target).path or "/"
        return target.split("?", 1)[0]

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict | None = None) -> None:
        self.app.stats.status(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: dict, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers=headers)

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        self._json(status, {"code": status, "message": message}, headers)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise Dropped()

    def _apply(self, rule: Rule | None) -> None:
        """Act on a fault rule: answer its error status, cut the connection, or wait."""
        if rule is None:
            return
        self.app.stats.fault(rule)
        if rule.kind == "drop":
            self._drop()
        if rule.kind == "slow":
            if rule.delay_s or not rule.bytes_per_s:
                time.sleep(rule.delay_s or DEFAULT_SLOW_S)
            return
        headers = {"Retry-After": f"{rule.retry_after:g}"} if rule.retry_after is not None else {}
        raise _FaultAnswer(rule.status, headers)

    def _drain(self) -> None:
        body = self._body()
        if body.length is not None and body.left > MAX_DRAIN:
            self.close_connection = True
            return
        for _ in body.blocks():
            pass

    def _read_json(self) -> dict:
        body = self._body()
        if body.length is not None and body.length > MAX_JSON:
            self.close_connection = True
            raise ApiError(413, "request body too large")
        raw = b"".join(body.blocks())
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            raise ApiError(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return data

    def _authenticate(self) -> dict | None:
        header = self.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        store = self.app.store
        if scheme.lower() == "basic":
            try:
                name, _, key = base64.b64decode(value.strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            user = store.user(name)
            return user if user and key and _same(user.get("key", ""), key) else None
        if scheme.lower() == "bearer":
            return store.user_by_token(value.strip())
        return None

    def _dispatch(self, method: str, handler) -> None:
        """Run one request's handler; whatever it raises becomes an error answer (or a closed connection)."""
        try:
            try:
                handler()
            except Dropped:
                return
            except _FaultAnswer as answer:
                self._drain_quietly()
                self._error(answer.status, f"injected fault: HTTP {answer.status}", answer.headers)
            except StoreError as err:
                self._drain_quietly()
                self._error(err.status, err.message)
            except (ConnectionError, TimeoutError):
                self.close_connection = True
            except Exception as exc:  # noqa: BLE001 - answer 500 and keep serving
                log.exception("%s %s failed", self.command, self.path)
                self._drain_quietly()
                self._error(500, f"local Kaggle internal error in {method}: {type(exc).__name__}: {exc}")
        except OSError:  # the client went away while we answered
            self.close_connection = True

    def parse_request(self) -> bool:
        self._request_body = None
        return super().parse_request()

    def _body(self) -> "Body":
        if self._request_body is None:
            self._request_body = Body(self)
        return self._request_body

    def _drain_quietly(self) -> None:
        try:
            self._drain()
        except (OSError, ValueError):
            self.close_connection = True

    # ----------------------------------------------------------------------------------------- verbs

    def do_POST(self) -> None:
        path = self._path()
        match = RPC_PATH.match(path)
        if match:
            self._dispatch(match.group(2), lambda: self._rpc(match.group(1), match.group(2)))
        elif path.startswith("/_kpack/"):
            self._dispatch(path, lambda: self._admin("POST", path))
        elif re.fullmatch(r"/code/[^/]+/[^/]+/v\d+/stop", path):
            self._dispatch("page", lambda: self._stop_from_page(*path.split("/")[2:5]))
        else:
            self._dispatch(path, lambda: _raise(ApiError(404, f"no such endpoint: {path}")))

    def do_PUT(self) -> None:
        path = self._path()
        match = re.match(r"^/_kpack/upload/([A-Za-z0-9]+)$", path)
        if match:
            self._dispatch("PUT", lambda: self._upload(match.group(1)))
        else:
            self._dispatch(path, lambda: _raise(ApiError(404, f"no such endpoint: {path}")))

    def do_GET(self) -> None:
        path = self._path()
        if path.startswith("/_kpack/files/"):
            self._dispatch("GET", lambda: self._download(path))
        elif path.startswith("/_kpack/"):
            self._dispatch(path, lambda: self._admin("GET", path))
        elif re.fullmatch(r"/code/[^/]+/[^/]+/?", path):
            self._dispatch("page", lambda: self._kernel_page(*path.split("/")[2:4]))
        elif re.fullmatch(r"/code/[^/]+/?", path):
            self._dispatch("page", lambda: self._owner_page(path.split("/")[2]))
        else:
            self._dispatch(path, lambda: _raise(ApiError(404, f"no such endpoint: {path}")))

    def do_DELETE(self) -> None:
        path = self._path()
        self._dispatch(path, lambda: self._admin("DELETE", path))

    # ----------------------------------------------------------------------------------------- RPC

    def _rpc(self, service: str, method: str) -> None:
        app = self.app
        app.stats.call(method)
        body = self._read_json()
        self._apply(app.faults.take(method, "before"))
        route = ROUTES.get((service, method))
        if route is None:
            raise ApiError(404, f"{service}/{method} is not implemented by the local Kaggle")
        user = self._authenticate()
        if route.auth and user is None:
            given = "no credentials" if not self.headers.get("Authorization") else "wrong credentials"
            raise ApiError(401, f"Unauthenticated: {given} for the local Kaggle (run `eval \"$(kpack local "
                                f"env)\"` to get a local user's credentials)")
        try:
            request = route.request_type.from_dict(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(400, f"bad {method} request: {exc}") from None
        result = route.handler(request, Call(app.store, user, app))
        after = app.faults.take(method, "after")
        if after is not None:
            self._apply(after)
        if isinstance(result, Redirect):
            self._send(302, b"", "text/plain", {"Location": result.url})
        else:
            self._send(200, json.dumps(_omit(type(result).to_dict(result), app.omit.get(method, []))).encode())

    # ----------------------------------------------------------------------------------------- uploads

    def _upload(self, token: str) -> None:
        app = self.app
        app.stats.call("PUT")
        with app.uploads.turn(token) as turn:
            self._upload_locked(token, turn)

    def _upload_locked(self, token: str, turn: "Turn") -> None:
        app = self.app
        info = app.store.upload(token)
        if info is None:
            raise ApiError(404, "upload not found or expired; start it again")
        total, received = info["length"], info["received"]
        content_range = (self.headers.get("Content-Range") or "").strip()
        probe = re.fullmatch(r"bytes \*/(\d+)", content_range)
        rule = app.faults.take("PROBE" if probe else "PUT")
        ranged = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", content_range)
        record = {"token": token, "content_range": content_range or None, "bytes": 0}
        if probe:
            self._drain_quietly()
            if rule:
                self._apply(rule)
            record["status"] = self._upload_state(total, received)
            app.stats.put(record)
            return
        start = int(ranged.group(1)) if ranged else 0
        if (ranged and int(ranged.group(3)) != total) or start > received:
            raise ApiError(400, f"Content-Range {content_range!r} does not fit the upload ({received} of "
                                f"{total} bytes stored)")
        if rule and rule.kind == "slow":
            app.stats.fault(rule)
        elif rule and rule.after_bytes is None:
            self._apply(rule)
        written = self._receive(app.store.upload_part(token), start, rule, record, turn)
        app.stats.put(record)
        if rule and rule.kind != "slow" and rule.after_bytes is not None:
            self._apply(rule)
        if start + written > total:
            os.truncate(app.store.upload_part(token), total)
            raise ApiError(400, f"more bytes than announced ({start + written} > {total})")
        record["status"] = self._upload_state(total, start + written)

    def _receive(self, part: Path, start: int, rule: Rule | None, record: dict, turn: "Turn") -> int:
        """Write the body into part from offset start; a fault may stop it after `after_bytes`."""
        written, began = 0, time.monotonic()
        limit = rule.after_bytes if rule and rule.kind != "slow" and rule.after_bytes is not None else None
        rate = rule.bytes_per_s if rule and rule.kind == "slow" else None
        with open(part, "r+b") as f:
            f.truncate(start)
            f.seek(start)
            try:
                for block in self._body().blocks():
                    if turn.superseded():  # a newer PUT for this upload came in: it owns the file now
                        self.close_connection = True
                        break
                    if limit is not None and written + len(block) > limit:
                        block = block[: max(0, limit - written)]
                    f.write(block)
                    written += len(block)
                    self.app.stats.uploaded(len(block))
                    if limit is not None and written >= limit:
                        break
                    if rate:
                        ahead = written / rate - (time.monotonic() - began)
                        if ahead > 0:
                            time.sleep(ahead)
            finally:
                f.flush()
                os.fsync(f.fileno())
                record["bytes"] = written
        return written

    def _upload_state(self, total: int, received: int) -> int:
        if received >= total:
            self._json(200, {"ok": True, "bytes": received})
            return 200
        headers = {"Range": f"bytes=0-{received - 1}"} if received > 0 else {}
        self._send(308, b"", "text/plain", headers)
        return 308

    # ----------------------------------------------------------------------------------------- downloads

    def _download(self, path: str) -> None:
        self.app.stats.call("GET")
        rule = self.app.faults.take("GET")
        if rule and rule.kind == "slow":
            self.app.stats.fault(rule)
        elif rule:
            self._apply(rule)
        target = self._stored_file([unquote(p) for p in path[len("/_kpack/files/"):].split("/")])
        if target is None:
            raise ApiError(404, f"no such file: {unquote(path)}")
        viewed = VIEWABLE.get(target.suffix.lower()) if "view=1" in urlsplit(self.path).query.split("&") else None
        self._send_file(target, viewed or "application/octet-stream", target.name, rule, inline=viewed is not None)

    def _kernel_page(self, owner: str, slug: str) -> None:
        page = kernel_page(self.app.store, unquote(owner), unquote(slug), self.app.page_token)
        if page is None:
            raise ApiError(404, f"no kernel {unquote(owner)}/{unquote(slug)} on the local Kaggle")
        self._send(200, page.encode(), "text/html; charset=utf-8")

    def _owner_page(self, owner: str) -> None:
        page = owner_page(self.app.store, unquote(owner))
        if page is None:
            raise ApiError(404, f"{unquote(owner)} has no kernel on the local Kaggle")
        self._send(200, page.encode(), "text/html; charset=utf-8")

    def _stop_from_page(self, owner: str, slug: str, version: str) -> None:
        """The page's "Stop session" button (kaggle.com's web UI has one; its API needs a session id no answer
        carries): cancel the version, then back to the page."""
        body = self._body()
        if body.length is not None and body.length > MAX_JSON:
            self.close_connection = True
            raise ApiError(413, "request body too large")
        form = parse_qs(b"".join(body.blocks()).decode("utf-8", "replace"))
        if not _same((form.get("token") or [""])[0], self.app.page_token):
            raise ApiError(403, "stop a session from its kernel page (this form is not the page's)")
        owner, slug, number = unquote(owner), unquote(slug), int(version[1:])
        if self.app.store.kernel_version(owner, slug, number) is None:
            raise ApiError(404, f"no version {number} of {owner}/{slug} on the local Kaggle")
        self.app.scheduler.cancel(owner, slug, number)  # an ended version stays as it ended
        self._send(303, b"", "text/plain", {"Location": f"{page_path(owner, slug)}#v{number}"})

    def _stored_file(self, parts: list[str]) -> Path | None:
        """The file behind /_kpack/files/<area>/...: kernel output, dataset file or archive, competition data."""
        store, area = self.app.store, parts[0] if parts else ""
        base, name = None, None
        try:
            if area == "kernels" and len(parts) >= 5 and parts[3].isdigit():
                version = store.kernel_version(parts[1], parts[2], int(parts[3]))
                if version and version.get("output_dir") and version["status"] not in ("QUEUED", "RUNNING"):
                    base, name = Path(version["output_dir"]), "/".join(parts[4:])
            elif area == "datasets" and len(parts) >= 5 and parts[3].isdigit():
                version = store.dataset_version(parts[1], parts[2], int(parts[3]))
                if version:
                    base, name = Path(version["files_dir"]), "/".join(parts[4:])
            elif area == "dataset-archives" and len(parts) == 5 and parts[3].isdigit():
                version = store.dataset_version(parts[1], parts[2], int(parts[3]))
                if version:
                    from packager.localkaggle.datasets_api import version_zip

                    return version_zip(Path(version["files_dir"]))
            elif area == "competitions" and len(parts) >= 3:
                competition = store.competition(parts[1])
                if competition:
                    base, name = Path(competition["data_dir"]), "/".join(parts[2:])
        except StoreError:
            return None
        if base is None:
            return None
        base = base.resolve()
        target = (base / name).resolve()
        return target if base in target.parents and target.is_file() else None

    def _send_file(self, path: Path, content_type: str, name: str, rule: Rule | None = None,
                   inline: bool = False) -> None:
        size = path.stat().st_size
        self.app.stats.status(200)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(size))
        self.send_header("Content-Disposition", f'{"inline" if inline else "attachment"}; filename="{name}"')
        if inline:  # a kernel wrote it: shown in a sandbox of its own (no script, no other origin's data)
            self.send_header("Content-Security-Policy", "sandbox; default-src 'none'; img-src data: 'self'; "
                                                        "style-src 'unsafe-inline'")
            self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Last-Modified", email.utils.formatdate(path.stat().st_mtime, usegmt=True))
        self.end_headers()
        rate = rule.bytes_per_s if rule and rule.kind == "slow" else None
        sent, began = 0, time.monotonic()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                self.wfile.write(block)
                sent += len(block)
                self.app.stats.downloaded(len(block))
                if rate:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)

    # ----------------------------------------------------------------------------------------- admin

    def _admin(self, verb: str, path: str) -> None:
        app = self.app
        if verb == "GET" and path == "/_kpack/health":
            self._json(200, app.health())
        elif verb == "GET" and path == "/_kpack/stats":
            self._json(200, app.stats.snapshot())
        elif verb == "POST" and path == "/_kpack/stats/reset":
            self._read_json()
            app.stats.reset()
            self._json(200, {"ok": True})
        elif path == "/_kpack/faults" and verb == "GET":
            self._json(200, {"rules": app.faults.listing()})
        elif path == "/_kpack/faults" and verb == "POST":
            try:
                rules = app.faults.add(self._read_json_any())
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
            self._json(200, {"ok": True, "added": len(rules), "rules": app.faults.listing()})
        elif path == "/_kpack/faults" and verb == "DELETE":
            self._drain_quietly()
            app.faults.clear()
            self._json(200, {"ok": True})
        elif verb == "POST" and path == "/_kpack/omit":  # {"method": "GetKernel", "fields": [...]}; [] ends it
            data = self._read_json()
            app.omit[str(data.get("method"))] = [str(f) for f in data.get("fields") or []]
            self._json(200, {"ok": True, "omit": app.omit})
        elif verb == "POST" and path == "/_kpack/cancel":
            data = self._read_json()
            owner, _, slug = str(data.get("kernel", "")).partition("/")
            version = app.store.kernel_version(owner, slug, data.get("version"))
            if version is None:
                raise ApiError(404, f"kernel {data.get('kernel')} version {data.get('version')} not found")
            self._json(200, {"ok": app.scheduler.cancel(owner, slug, version["number"]),
                             "version": version["number"]})
        else:
            raise ApiError(404, f"no such endpoint: {verb} {path}")

    def _read_json_any(self):
        raw = b"".join(self._body().blocks())
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise ApiError(400, "the request body is not JSON") from None


class Turn:
    def __init__(self, gate: "UploadGate", token: str, number: int):
        self.gate, self.token, self.number = gate, token, number

    def superseded(self) -> bool:
        return self.gate.latest(self.token) != self.number


class UploadGate:
    """One writer per upload. A newer PUT (a client that resumed after it lost the old connection) takes over:
    the old writer sees it is superseded, stops at its next block and lets go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._latest: dict[str, int] = {}

    def latest(self, token: str) -> int:
        with self._lock:
            return self._latest.get(token, 0)

    @contextlib.contextmanager
    def turn(self, token: str):
        with self._lock:
            lock = self._locks.setdefault(token, threading.Lock())
            number = self._latest[token] = self._latest.get(token, 0) + 1
        with lock:
            yield Turn(self, token, number)


class Body:
    """One request's body, read once in blocks (Content-Length or chunked); a later reader (a drain) goes on
    from where an earlier one stopped."""

    def __init__(self, handler: BaseHTTPRequestHandler):
        self.rfile = handler.rfile
        chunked = "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower()
        self.length = None if chunked else int(handler.headers.get("Content-Length") or 0)
        self.left = self.length if self.length is not None else 0
        self.done = self.length == 0

    def blocks(self):
        while not self.done:
            if self.length is None and self.left == 0:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip() or b"0", 16) if size_line else 0
                if size == 0:
                    while size_line and self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    self.done = True
                    return
                self.left = size
            block = self.rfile.read(min(CHUNK, self.left))
            if not block:
                self.done = True
                return
            self.left -= len(block)
            if self.left == 0:
                if self.length is None:
                    self.rfile.readline(8)
                else:
                    self.done = True
            yield block


class _FaultAnswer(Exception):
    def __init__(self, status: int, headers: dict):
        super().__init__(status)
        self.status, self.headers = status, headers


def _omit(data, fields: list[str]):
    """The answer without the named fields, at any depth (tests of clients that must cope without them)."""
    if isinstance(data, dict):
        return {k: _omit(v, fields) for k, v in data.items() if k not in fields}
    if isinstance(data, list):
        return [_omit(v, fields) for v in data]
    return data


def _raise(exc: Exception):
    raise exc


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())
