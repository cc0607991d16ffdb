"""Operator side of the admin API: purge, warm and scrub across every node of a topology."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from ..errors import ClientError


def _headers(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code >= 400:
        try:
            body = resp.json()
            error, message = body.get("error", "error"), body.get("message", resp.text)
        except ValueError:
            error, message = "error", resp.text
        raise ClientError(resp.status_code, error, message)


def purge(nodes: Iterable[str], token: str, *, paths: list[str] | None = None,
          prefix: str | None = None, timeout: float = 30.0) -> dict[str, int]:
    """Purge ``paths`` and/or ``prefix`` on every node; returns objects purged per node."""
    body: dict[str, Any] = {"paths": paths or []}
    if prefix is not None:
        body["prefix"] = prefix
    out: dict[str, int] = {}
    with httpx.Client(timeout=timeout, trust_env=False) as client:
        for node in nodes:
            resp = client.post(node.rstrip("/") + "/_admin/purge", json=body,
                               headers=_headers(token))
            _raise_for(resp)
            out[node] = int(resp.json()["purged"])
    return out


def warm(node: str, token: str, paths: list[str], *, concurrency: int = 8,
         on_progress: Callable[[dict[str, Any]], None] | None = None,
         timeout: float = 600.0) -> dict[str, Any]:
    """Prefetch ``paths`` on ``node``, calling ``on_progress`` for each finished path."""
    body = {"paths": paths, "concurrency": concurrency}
    return _progress_stream(node, "warm", body, token, on_progress, timeout)


def scrub(node: str, token: str, *,
          on_progress: Callable[[dict[str, Any]], None] | None = None,
          timeout: float = 3600.0) -> dict[str, Any]:
    """Re-verify every slice stored on ``node`` (bad ones are dropped there), calling
    ``on_progress`` for each progress line; returns ``{"done": n, "bad": m, ...}`` with the
    object pass's counts."""
    return _progress_stream(node, "scrub", {}, token, on_progress, timeout)


def _progress_stream(node: str, action: str, body: dict[str, Any], token: str,
                     on_progress: Callable[[dict[str, Any]], None] | None,
                     timeout: float) -> dict[str, Any]:
    """POST ``/_admin/<action>`` and read its stream of JSON lines: each progress line to
    ``on_progress``, the last (``{"done": ...}``) returned; a stream without one is an error."""
    summary: dict[str, Any] = {}
    with httpx.Client(timeout=timeout, trust_env=False) as client, \
            client.stream("POST", f"{node.rstrip('/')}/_admin/{action}", json=body,
                          headers=_headers(token)) as resp:
        if resp.status_code >= 400:
            resp.read()
            _raise_for(resp)
        for line in resp.iter_lines():
            if not line.strip():
                continue
            item = json.loads(line)
            if "done" in item:
                summary = item
            elif on_progress is not None:
                on_progress(item)
    if not summary:
        raise ClientError(502, "incomplete", f"{node} ended the {action} stream early")
    return summary
