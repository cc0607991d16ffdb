"""The HTTP boundary: every error leaves a node as a JSON body with the right status."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import HTTPError


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


def install_error_handlers(app: Starlette) -> None:
    """Translate `HTTPError` and starlette's own 404/405 into JSON error bodies."""
    app.add_exception_handler(HTTPError, _on_http_error)
    app.add_exception_handler(HTTPException, _on_starlette_http_exception)
