"""The HTTP boundary: every error leaves a node as a JSON body with the right status.

Failures that are not the client's (a storage backend down, a TLS error towards it, a bug)
answer a fixed, generic body: their details name hosts, certificates and paths, which are
for the operator's log, not for the public.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from typing import Any

import httpx
import sqlalchemy.exc
from botocore.exceptions import BotoCoreError, ConnectTimeoutError, ReadTimeoutError
from botocore.exceptions import ClientError as BotoClientError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import HTTPError, UpstreamError, UpstreamTimeout

log = logging.getLogger("edgeproxy.origin")

BAD_GATEWAY = HTTPError(502, "bad_gateway", "the storage backend could not be reached; "
                        "try again later")  # fmt: skip
GATEWAY_TIMEOUT = HTTPError(504, "gateway_timeout", "the storage backend did not answer in "
                            "time; try again later")  # fmt: skip
INTERNAL = HTTPError(500, "internal_error", "the server failed to answer this request")
DATABASE_UNAVAILABLE = HTTPError(503, "database_unavailable", "the metadata database could "
                                 "not be reached; try again later",
                                 headers={"Retry-After": "5"})  # fmt: skip
# RFC 4918 §11.5: the server cannot store what the request needs. Still a 5xx (not the client's
# fault), told apart from a bug (500) and from a database that is down (503).
INSUFFICIENT_STORAGE = HTTPError(507, "insufficient_storage", "the server is out of storage "
                                 "space; try again later",
                                 headers={"Retry-After": "60"})  # fmt: skip
SQLITE_FULL = sqlite3.SQLITE_FULL  # "database or disk is full"
PG_DISK_FULL = "53100"  # PostgreSQL SQLSTATE disk_full


def error_response(exc: HTTPError, *, head: bool = False) -> Response:
    """The JSON response for ``exc`` (headers only for HEAD requests).

    Errors are ``no-store`` unless the error itself says how long it may be cached.
    """
    response = JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
    response.headers.setdefault("Cache-Control", "no-store")
    if head:
        response.body = b""
    return response


def json_error(status: int, error: str, message: str, **extra: Any) -> Response:
    """Shorthand for `error_response` of a fresh `HTTPError`."""
    return error_response(HTTPError(status, error, message, **extra))


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return error_response(exc, head=request.method == "HEAD")


async def _on_starlette_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    names = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
    err = HTTPError(exc.status_code, names.get(exc.status_code, "error"), str(exc.detail),
                    headers=exc.headers)
    return error_response(err, head=request.method == "HEAD")


async def _on_upstream_error(request: Request, exc: Exception) -> Response:
    # The detail (TLS alerts, host names, backend messages) goes to the log only.
    log.warning("%s %s: upstream failure: %s: %s", request.method, request.url.path,
                type(exc).__name__, exc)  # fmt: skip
    slow = isinstance(exc, UpstreamTimeout | httpx.TimeoutException | ConnectTimeoutError
                      | ReadTimeoutError)
    return error_response(GATEWAY_TIMEOUT if slow else BAD_GATEWAY, head=request.method == "HEAD")


def out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the file system's quota) is full: an ``OSError`` of
    ENOSPC/EDQUOT, or a database error whose driver error says so."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        orig = exc.orig
        return (getattr(orig, "sqlite_errorcode", None) == SQLITE_FULL
                or getattr(orig, "sqlstate", None) == PG_DISK_FULL)  # fmt: skip
    return False


async def _on_storage_full(request: Request, exc: Exception) -> Response:
    # An operating condition, not a bug: one line for the operator, no traceback.
    log.warning("%s %s: out of storage space: %s", request.method, request.url.path, exc)
    return error_response(INSUFFICIENT_STORAGE, head=request.method == "HEAD")


async def _on_os_error(request: Request, exc: Exception) -> Response:
    if not out_of_space(exc):
        raise exc  # any other OS error is unexpected here: CatchAll's 500 and traceback
    return await _on_storage_full(request, exc)


async def _on_database_error(request: Request, exc: Exception) -> Response:
    if out_of_space(exc):  # the database is up; its disk is full
        return await _on_storage_full(request, exc)
    # A database that refuses connections, drops them or stays locked is a dependency down
    # (503, as a load balancer and a client's retry expect), not a bug of ours (500).
    log.warning("%s %s: database failure: %s", request.method, request.url.path, exc)
    return error_response(DATABASE_UNAVAILABLE, head=request.method == "HEAD")


class CatchAll:
    """ASGI middleware: a bug answers a generic JSON 500 and its traceback goes to the log
    (once: starlette's own 500 handler would re-raise it to the server to log again)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; turn an exception before the response started into a 500."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            if started:
                raise  # mid-body: nothing left to answer; the server drops the connection
            log.exception("%s %s failed", scope["method"], scope["path"])
            response = error_response(INTERNAL, head=scope["method"] == "HEAD")
            await response(scope, receive, send)


def install_error_handlers(app: Starlette) -> None:
    """Translate `HTTPError` and starlette's own 404/405 into JSON error bodies, upstream
    failures into a generic 502 or 504, a database down into 503 and a full disk (of the
    blobs or the database) into 507 (details to the log); bugs are `CatchAll`'s."""
    app.add_exception_handler(HTTPError, _on_http_error)
    app.add_exception_handler(HTTPException, _on_starlette_http_exception)
    app.add_exception_handler(UpstreamError, _on_upstream_error)
    app.add_exception_handler(httpx.HTTPError, _on_upstream_error)
    # the object store (botocore): unreachable, timed out, or an error answer (a 500 before)
    app.add_exception_handler(BotoCoreError, _on_upstream_error)
    app.add_exception_handler(BotoClientError, _on_upstream_error)
    # the metadata database: unreachable, gone mid-transaction, locked past its wait, or no
    # pooled connection free in time
    app.add_exception_handler(sqlalchemy.exc.OperationalError, _on_database_error)
    app.add_exception_handler(sqlalchemy.exc.InterfaceError, _on_database_error)
    app.add_exception_handler(sqlalchemy.exc.TimeoutError, _on_database_error)
    # the local disk: full (507); any other OSError is re-raised to CatchAll
    app.add_exception_handler(OSError, _on_os_error)
