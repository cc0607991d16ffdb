"""Admin calls of a cache node: purge (one key or a prefix), warm (prefetch a list) and
scrub (re-verify every stored slice, and hash whole the objects filled by ranges).

``POST /_admin/purge`` ``{"paths": [...]}`` or ``{"prefix": "/pp/"}`` → ``{"purged": n}``.
``POST /_admin/warm`` ``{"paths": [...], "concurrency": 8}`` → NDJSON, one line per path as it
finishes (``{"path", "status", "bytes", "x_cache"}``), then ``{"done": n, "failed": m}``.
``POST /_admin/scrub`` → NDJSON: ``{"total": n}``, then ``{"checked", "total", "bad"}`` now and
then and ``{"bad_slice": {"key", "index"}}`` for each slice that failed (it is dropped, and
fetched again when next needed), ``{"bad_object": {"key"}}`` for each object whose slices
together fail its SHA-256 (dropped whole), then ``{"done": n, "bad": m, "objects_verified",
"objects_bad", "objects_incomplete"}``.
All need ``Authorization: Bearer <admin_token>``: missing → 401, wrong → 403, and nothing
happens; with no token configured the admin API is off (403).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import TYPE_CHECKING, Any

from ..errors import HTTPError
from . import scrub
from .types import Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .node import CacheNode

PREFIX = "/_admin/"
MAX_BODY = 4 * 1024 * 1024
MAX_CONCURRENCY = 64


def check_token(configured: str, authorization: str | None) -> None:
    """Raise the right `HTTPError` unless ``authorization`` carries the admin token."""
    if not configured:
        raise HTTPError(403, "admin_disabled", "set admin_token in the config to use admin calls")
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPError(401, "unauthorized", "admin calls need 'Authorization: Bearer <token>'",
                        headers={"www-authenticate": "Bearer"})
    if not hmac.compare_digest(authorization[7:].strip().encode(), configured.encode()):
        raise HTTPError(403, "forbidden", "wrong admin token")


async def read_json(receive: Any) -> dict[str, Any]:
    """The request body as a JSON object (bounded), or 400."""
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            raise HTTPError(413, "too_large", f"admin bodies are at most {MAX_BODY} bytes")
        if not message.get("more_body", False):
            break
    try:
        data = json.loads(body or b"{}")
    except RecursionError:  # (nesting past the interpreter's limit fits in a small body)
        raise HTTPError(400, "bad_json", "the body nests too deeply") from None
    except ValueError:
        raise HTTPError(400, "bad_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "bad_json", "the body must be a JSON object")
    return data


def _is_text(value: str) -> bool:
    """Whether ``value`` is text a request could carry: JSON's ``\\ud800`` escapes decode to
    lone surrogates, which no encoder takes (the purge's index lookup raised: a 500)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _paths(data: dict[str, Any]) -> list[str]:
    paths = data.get("paths", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) and p.startswith("/")
                                              and _is_text(p) for p in paths):
        raise HTTPError(422, "invalid_field", "paths must be a list of absolute paths ('/…')",
                        field="paths")
    return paths


async def handle(node: CacheNode, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one admin call."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    check_token(node.config.admin_token, headers.get("authorization"))
    if scope["method"] != "POST":
        raise HTTPError(405, "method_not_allowed", "admin calls are POST")
    action = scope["path"][len(PREFIX):]
    data = await read_json(receive)
    if action == "purge":
        await _purge(node, data, send)
    elif action == "warm":
        await _warm(node, data, send)
    elif action == "scrub":
        await _scrub(node, send)
    else:
        raise HTTPError(404, "not_found", f"no admin call {action!r}; try purge, warm or scrub")


async def _purge(node: CacheNode, data: dict[str, Any], send: Send) -> None:
    paths = _paths(data)
    prefix = data.get("prefix")
    if prefix is not None and (not isinstance(prefix, str) or not prefix.startswith("/")
                               or not _is_text(prefix)):
        raise HTTPError(422, "invalid_field", "prefix must be an absolute path", field="prefix")
    if not paths and prefix is None:
        raise HTTPError(422, "invalid_field", "name paths or a prefix to purge", field="paths")
    purged = sum(node.purge(p) for p in paths)
    if prefix is not None:
        purged += node.purge_prefix(prefix)
    await _json(send, 200, {"purged": purged})


async def _warm(node: CacheNode, data: dict[str, Any], send: Send) -> None:
    paths = _paths(data)
    concurrency = data.get("concurrency", 8)
    if not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise HTTPError(422, "invalid_field", f"concurrency must be 1..{MAX_CONCURRENCY}",
                        field="concurrency")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/x-ndjson"),
                            (b"cache-control", b"no-store")]})
    gate = asyncio.Semaphore(concurrency)
    lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def one(path: str) -> None:
        async with gate:
            await lines.put({"path": path, **await warm(node, path)})

    tasks = [asyncio.create_task(one(p)) for p in paths]
    failed = 0
    for _ in paths:
        line = await lines.get()  # progress: each path is reported as soon as it is done
        failed += line["status"] not in (200, 206)
        await send({"type": "http.response.body", "body": json.dumps(line).encode() + b"\n",
                    "more_body": True})
    await asyncio.gather(*tasks)
    summary = json.dumps({"done": len(paths), "failed": failed}).encode() + b"\n"
    await send({"type": "http.response.body", "body": summary, "more_body": False})


async def warm(node: CacheNode, path: str) -> dict[str, Any]:
    """Fetch ``path`` through this node as a client would, discarding the body."""
    outcome: dict[str, Any] = {"status": 0, "bytes": 0, "x_cache": None}

    async def sink(message: Message) -> None:
        if message["type"] == "http.response.start":
            outcome["status"] = message["status"]
            headers = dict(message["headers"])
            x_cache = headers.get(b"x-cache")
            outcome["x_cache"] = x_cache.decode("latin-1") if x_cache else None
        else:
            outcome["bytes"] += len(message.get("body", b""))

    async def no_body() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    raw_path, _, query = path.partition("?")
    # Every path's task must end in a line: `_warm` waits for one per path, so a raise
    # here (a query latin-1 cannot hold) hung the answer after its 200 status.
    try:
        query_string = query.encode("latin-1")
    except UnicodeEncodeError:
        return {**outcome, "status": 400,
                "error": "the query holds characters a request line cannot: percent-encode them"}
    scope = {"type": "http", "method": "GET", "path": raw_path, "query_string": query_string,
             "headers": []}
    try:
        await node(scope, no_body, sink)
    except Exception as exc:  # a failed fill aborts a client; here it is one failed line
        outcome["status"] = outcome["status"] if outcome["status"] >= 400 else 502
        outcome["error"] = str(exc)
    return outcome


async def _scrub(node: CacheNode, send: Send) -> None:
    """Check every stored slice now (see `scrub`), reporting as it goes."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/x-ndjson"),
                            (b"cache-control", b"no-store")]})

    async def line(item: dict[str, Any], more: bool = True) -> None:
        await send({"type": "http.response.body", "body": json.dumps(item).encode() + b"\n",
                    "more_body": more})

    async def bad(key: str, index: int) -> None:
        await line({"bad_slice": {"key": key, "index": index}})

    async def progress(state: scrub.ScrubState) -> None:
        await line({"checked": state.checked, "total": state.total, "bad": state.bad})

    async def bad_object(key: str) -> None:
        await line({"bad_object": {"key": key}})

    state = await scrub.run(node.store, on_total=lambda s: line({"total": s.total}),
                            on_bad=bad, on_progress=progress, objects=node.object_pass(),
                            on_bad_object=bad_object)
    await line({"done": state.checked, "bad": state.bad,
                "objects_verified": state.objects_verified, "objects_bad": state.objects_bad,
                "objects_incomplete": state.objects_incomplete}, more=False)


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
