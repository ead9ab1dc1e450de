"""The RPC registry: which kagglesdk request class each `<Service>/<Method>` takes, and who answers it.

A handler gets the parsed request (kagglesdk's own class) and a `Call` (store, caller, server); it returns a
kagglesdk response object, or raises `ApiError` (or the store's `StoreError`) for an error answer: JSON
`{"code": status, "message": ...}` with that HTTP status, which the client raises as an HTTPError.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote
from typing import Any, Callable

from packager.localkaggle.store import Store, StoreError

BASE_URL = "http://localhost"   # what the client's LOCALHOST environment calls; every URL handed out uses it


class ApiError(StoreError):
    pass


@dataclass
class Redirect:
    """A handler's answer that is a 302 to a plain GET URL (downloads), as Kaggle answers with signed URLs."""
    url: str


def file_url(*parts: str | int) -> str:
    """The unauthenticated GET URL of a stored file: /_kpack/files/<area>/<...>/<name> (see server.py)."""
    return f"{BASE_URL}/_kpack/files/" + "/".join(quote(str(p)) for p in parts)


@dataclass
class Route:
    service: str
    method: str
    request_type: type
    handler: Callable[[Any, "Call"], Any]
    auth: bool = True


@dataclass
class Call:
    store: Store
    user: dict | None            # the authenticated user's record
    server: Any                  # the LocalKaggle instance (scheduler, settings)

    @property
    def username(self) -> str:
        return self.user["username"] if self.user else ""


ROUTES: dict[tuple[str, str], Route] = {}


def rpc(service: str, method: str, request_type: type, auth: bool = True):
    def register(fn):
        ROUTES[(service, method)] = Route(service, method, request_type, fn, auth)
        return fn
    return register


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found")


def page_bounds(page_token: str | None, page_size: int | None, default: int = 20) -> tuple[int, int]:
    """(start, size) from an opaque page token (an offset here) and a page size."""
    try:
        start = int(page_token) if page_token else 0
    except ValueError:
        raise ApiError(400, f"invalid pageToken {page_token!r}") from None
    size = page_size if page_size and page_size > 0 else default
    return max(0, start), min(size, 1000)


def next_token(start: int, size: int, total: int) -> str:
    return str(start + size) if start + size < total else ""


def load_handlers() -> None:
    """Import the handler modules (each registers its routes)."""
    from packager.localkaggle import (competitions_api, datasets_api, kernels_api, models_api, quota,  # noqa: F401
                                      security_api)
