"""A server process settles its garbage collector once started (`edgeproxy.gcsettle`), and only
a process that is just a server does (`server.node_app(dedicated=True)`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

from edgeproxy.gcsettle import YOUNG_THRESHOLD
from edgeproxy.lifecycle import Lifecycle

CHECK = """
import gc
import edgeproxy.cache.node  # what a cache worker has imported when it settles
from edgeproxy.gcsettle import settle
before = gc.get_freeze_count()
settle()
print(before, gc.get_freeze_count(), gc.get_threshold()[0])
"""


def test_settle_freezes_what_startup_made_and_spaces_young_collections() -> None:
    # in a process of its own: frozen objects are never collected
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         check=True).stdout.split()
    before, after, young = (int(v) for v in out)
    assert before == 0 and after > 10_000  # the interpreter's and the imports' objects
    assert young == YOUNG_THRESHOLD


def test_lifecycle_runs_on_started_once_startup_completes() -> None:
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        calls.append("app started")
        await send({"type": "lifespan.startup.complete"})

    async def main() -> None:
        sent: list[Any] = []

        async def receive() -> Any:
            return {"type": "lifespan.startup"}

        async def send(message: Any) -> None:
            sent.append(message["type"])

        life = Lifecycle(app, role="edge", on_started=lambda: calls.append("settled"))
        life._install_signals = lambda: None  # type: ignore[method-assign]  # not this process's
        await life({"type": "lifespan"}, receive, send)
        assert sent == ["lifespan.startup.complete"] and life.started

    asyncio.run(main())
    assert calls == ["app started", "settled"]
