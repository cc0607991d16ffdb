"""The benchmark origin: content-addressed test blobs with Range, throttling and counters.

Run as ``python -m benchmarks.origin --port P --dir D`` (the comparison starts it for you).
It serves ``GET|HEAD /v/t1/<sha256>`` with the headers of edgeproxy's own origin (strong ETag,
``Cache-Control: public, max-age=31536000, immutable``, one byte range per request) from
*bases* held in memory: the fixed blobs (``b2k`` ... ``b100m``, written to ``D``) and a
256 KiB ``pool`` for small objects. An object is ``base[:length - len(tail)] + tail`` and is
named by the SHA-256 of exactly those bytes, so each fresh object (a new 16-byte tail) is a new,
honest content address that no cache has seen — without storing a copy of its bytes.

Control endpoints (loopback only, for the driver):

- ``POST /_admin/objects`` ``{"base": "b16m", "count": 20, "lengths": [...]}`` → new objects'
  ``paths`` and ``lengths`` (``count`` 0 with no lengths: the base itself, unchanged).
- ``GET /_admin/stats`` → requests and body bytes per path, totals, responses in flight, and
  when each path was first requested (``time.monotonic()``, comparable across processes).
- ``GET /_admin/totals`` → the totals and responses in flight only (cheap to poll).
- ``POST /_admin/reset`` → zero the counters.
- ``POST /_admin/throttle`` ``{"mibps": 50}`` → pace every response body (0: unthrottled).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

BLOBS: dict[str, int] = {
    "b2k": 2 * 1024,
    "b64k": 64 * 1024,
    "b1m": 1024**2,
    "b16m": 16 * 1024**2,
    "b100m": 100 * 1024**2,
}
POOL = "pool"
POOL_SIZE = 256 * 1024
TAIL = 16
PREFIX = "/v/t1/"
CACHE_CONTROL = "public, max-age=31536000, immutable"
LAST_MODIFIED = formatdate(1_700_000_000, usegmt=True)

Scope = dict[str, Any]


@dataclass(frozen=True)
class Entry:
    """One servable object: a prefix of a base followed by its own tail bytes."""

    base: str
    length: int
    tail: bytes
    sha: str


def write_blobs(directory: Path) -> dict[str, Path]:
    """Random test blobs (and the small-object pool) in ``directory``, made once."""
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, size in [*BLOBS.items(), (POOL, POOL_SIZE)]:
        path = directory / f"{name}.bin"
        if not path.exists() or path.stat().st_size != size:
            tmp = path.with_suffix(".part")
            with open(tmp, "wb") as f:
                left = size
                while left:
                    n = min(left, 4 * 1024**2)
                    f.write(os.urandom(n))
                    left -= n
            tmp.replace(path)
        paths[name] = path
    return paths


class BenchOrigin:
    """ASGI origin over in-memory bases, with per-path counters and optional pacing."""

    def __init__(self, blob_dir: Path, chunk: int = 256 * 1024) -> None:
        self.bases: dict[str, bytes] = {n: p.read_bytes() for n, p in write_blobs(blob_dir).items()}
        self.objects: dict[str, Entry] = {}
        self.requests: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.first_seen: dict[str, float] = {}  # path -> time.monotonic() of its 1st request
        self.active = 0
        self.chunk = chunk
        self.rate = 0.0  # bytes per second per response; 0 = unthrottled
        self._prefix_hash: dict[tuple[str, int], Any] = {}
        for name in BLOBS:
            self._add(name, len(self.bases[name]), b"")

    # --- objects ---

    def _add(self, base: str, length: int, tail: bytes) -> str:
        data = self.bases[base]
        cut = length - len(tail)
        state = self._prefix_hash.get((base, cut))
        if state is None:
            state = hashlib.sha256(memoryview(data)[:cut])
            if cut >= 1024**2:  # big prefixes recur (fresh 16/100 MiB objects): keep the state
                self._prefix_hash[(base, cut)] = state
        h = state.copy()
        h.update(tail)
        sha = h.hexdigest()
        self.objects[PREFIX + sha] = Entry(base, length, tail, sha)
        return PREFIX + sha

    def make(self, base: str, count: int, lengths: list[int] | None) -> dict[str, Any]:
        """Create objects from ``base``: fresh ones, or the base itself (count 0)."""
        if base not in self.bases:
            raise ValueError(f"unknown base {base!r}")
        size = len(self.bases[base])
        if lengths is None:
            lengths = [size] * count
        if not lengths:
            return {"paths": [self._add(base, size, b"")], "lengths": [size]}
        paths = []
        for n in lengths:
            if not TAIL <= n <= size:
                raise ValueError(f"length {n} outside {TAIL}..{size}")
            paths.append(self._add(base, n, secrets.token_bytes(TAIL)))
        return {"paths": paths, "lengths": lengths}

    def body(self, entry: Entry, start: int, end: int) -> memoryview:
        """Bytes ``start..end`` (inclusive) of ``entry``, built without copying the prefix."""
        cut = entry.length - len(entry.tail)
        data = memoryview(self.bases[entry.base])
        if end < cut:
            return data[start : end + 1]
        head = bytes(data[start:cut]) if start < cut else b""
        return memoryview(head + entry.tail[max(0, start - cut) : end + 1 - cut])

    # --- ASGI ---

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith("/_admin/"):
            await self._admin(scope, receive, send)
            return
        self.requests[path] += 1
        self.first_seen.setdefault(path, time.monotonic())
        self.active += 1
        try:
            await self._serve(scope, path, send)
        finally:
            self.active -= 1

    async def _serve(self, scope: Scope, path: str, send: Any) -> None:
        entry = self.objects.get(path)
        if entry is None:
            await _simple(send, 404, b'{"error":"not_found"}', "application/json")
            return
        headers = {
            "etag": f'"{entry.sha}"', "last-modified": LAST_MODIFIED,
            "cache-control": CACHE_CONTROL, "accept-ranges": "bytes",
            "content-type": "application/octet-stream", "x-content-type-options": "nosniff",
        }
        req = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if req.get("if-none-match") == headers["etag"]:
            await _start(send, 304, headers)
            await send({"type": "http.response.body", "body": b""})
            return
        start, end, status = 0, entry.length - 1, 200
        rng = _one_range(req.get("range"), entry.length)
        if rng == "unsatisfiable":
            headers = {"content-range": f"bytes */{entry.length}"}
            await _simple(send, 416, b"", "application/octet-stream", headers)
            return
        if isinstance(rng, tuple):
            start, end = rng
            status = 206
            headers["content-range"] = f"bytes {start}-{end}/{entry.length}"
        headers["content-length"] = str(end - start + 1)
        await _start(send, status, headers)
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        await self._stream(send, path, entry, start, end)

    async def _stream(self, send: Any, path: str, entry: Entry, start: int, end: int) -> None:
        t0 = time.monotonic()
        pos, done = start, 0
        while pos <= end:
            piece = self.body(entry, pos, min(end, pos + self.chunk - 1))
            await send({"type": "http.response.body", "body": bytes(piece), "more_body": True})
            pos += len(piece)
            done += len(piece)
            self.sent[path] += len(piece)
            if self.rate:
                delay = t0 + done / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": b""})

    async def _admin(self, scope: Scope, receive: Any, send: Any) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        args = json.loads(body) if body else {}
        action = scope["path"].removeprefix("/_admin/")
        try:
            if action == "objects":
                out: Any = self.make(args["base"], int(args.get("count", 0)),
                                     args.get("lengths"))
            elif action == "stats":
                out = {"requests": dict(self.requests), "bytes": dict(self.sent),
                       "total_requests": sum(self.requests.values()),
                       "total_bytes": sum(self.sent.values()), "active": self.active,
                       "first_seen": self.first_seen}
            elif action == "totals":
                out = {"total_requests": sum(self.requests.values()),
                       "total_bytes": sum(self.sent.values()), "active": self.active}
            elif action == "reset":
                self.requests.clear()
                self.sent.clear()
                self.first_seen.clear()
                out = {"ok": True}
            elif action == "throttle":
                self.rate = float(args.get("mibps", 0)) * 1024**2
                out = {"bytes_per_second": self.rate}
            else:
                await _simple(send, 404, b'{"error":"no such action"}', "application/json")
                return
        except (KeyError, ValueError) as exc:
            await _simple(send, 400, json.dumps({"error": str(exc)}).encode(),
                          "application/json")
            return
        await _simple(send, 200, json.dumps(out).encode(), "application/json")


def _one_range(header: str | None, length: int) -> tuple[int, int] | str | None:
    """The single byte range of ``header`` (None: whole body; several ranges: whole body)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, sep, last = header[6:].strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n == 0:
                return "unsatisfiable"
            return max(0, length - n), length - 1
        start = int(first)
        end = min(int(last), length - 1) if last else length - 1
    except ValueError:
        return None
    if start >= length or end < start:
        return "unsatisfiable"
    return start, end


async def _start(send: Any, status: int, headers: dict[str, str]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})


async def _simple(send: Any, status: int, body: bytes, ctype: str,
                  extra: dict[str, str] | None = None) -> None:
    headers = {"content-type": ctype, "content-length": str(len(body)), **(extra or {})}
    await _start(send, status, headers)
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    """Serve the benchmark origin on 127.0.0.1."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--dir", type=Path, required=True, help="where the test blobs live")
    parser.add_argument("--objects-out", type=Path, default=None,
                        help="also make small objects for locust and list them here")
    parser.add_argument("--objects", type=int, default=10_000)
    args = parser.parse_args()
    app = BenchOrigin(args.dir)
    if args.objects_out is not None:
        from .zipf import small_object_lengths

        made = app.make(POOL, 0, small_object_lengths(args.objects))
        args.objects_out.write_text("".join(f"{p} {n}\n" for p, n in
                                            zip(made["paths"], made["lengths"], strict=True)))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                lifespan="on")


if __name__ == "__main__":
    main()
