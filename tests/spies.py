"""Helpers for tests of stored bodies: wait until an object is stored, count ``sendfile``
calls, the fast lane's answers, and compare a lane answer with the steps' one."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.cache.node import CacheNode


def wait_stored(client: httpx.Client, path: str, body: bytes) -> None:
    """Fetch ``path`` (a miss: ``body``), then wait until it is stored (`until_stored`)."""
    first = client.get(path)
    assert first.content == body and first.headers["x-cache"].startswith("MISS")
    until_stored(client, path, len(body))


def until_stored(client: httpx.Client, path: str, length: int) -> None:
    """Wait until the first and the last byte of ``path`` (``length`` bytes, fetched) are
    hits: the group commit has moved its first and last slice files into place (a fixed
    sleep for it was too short once a machine is loaded)."""
    deadline = time.monotonic() + 5
    for byte in (0, length - 1):
        while not client.get(path, headers={"range": f"bytes={byte}-{byte}"}) \
                .headers["x-cache"].startswith("HIT"):
            if time.monotonic() > deadline:
                raise AssertionError(f"byte {byte} of {path} never stored")
            time.sleep(0.05)


def stored_file(var: Path, data: bytes) -> Path:
    """The one slice file under ``var`` holding ``data``, once the node's group commit has
    moved it into place: until then it waits in the fills folder (a few milliseconds; more,
    for a slice between the first and the last, on a loaded machine)."""
    deadline = time.monotonic() + 5
    while True:
        found = []
        for path in var.rglob("*.val"):
            with contextlib.suppress(FileNotFoundError):  # (evicted or replaced meanwhile)
                if path.stat().st_size == len(data) and path.read_bytes() == data:
                    found.append(path)
        if found or time.monotonic() > deadline:
            (path,) = found
            return path
        time.sleep(0.01)


def assert_same_hits(lane: httpx.Response, steps: httpx.Response, body: bytes) -> None:
    """Both answers are hits of ``body``, with the same fields but their time (``Age``,
    ``Date``): the fast lane's answer and the steps' one, the reference."""
    for answer in (lane, steps):
        assert answer.content == body
        assert answer.headers["x-cache"].startswith("HIT")
    skip = ("age", "date")
    assert {n: v for n, v in lane.headers.items() if n not in skip} == \
        {n: v for n, v in steps.headers.items() if n not in skip}


def count_sendfiles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte counts ``os.sendfile`` is asked for in this process, from now on."""
    calls: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", counting)
    return calls


def lane_answers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, Any]]:
    """The fast lane's answers from now on: (status, the body it handed over)."""
    answers: list[tuple[int, Any]] = []
    real = CacheNode.fast_reply

    def spying(self: CacheNode, *args: Any) -> Any:
        reply = real(self, *args)
        if reply is not None:
            answers.append((reply[1], reply[0][-1]))
        return reply

    monkeypatch.setattr(CacheNode, "fast_reply", spying)
    return answers
