"""Fixtures shared across test modules: foreign origins and edge → shield chains in front of them.

- ``foreign``: `tests.foreign.ForeignOrigin`, a raw-socket origin scripted per route.
- ``nginx`` / ``http_server``: `tests.static_origins.Nginx` / ``HttpServer`` on a document root.
- ``bundled_origin``: the project's own origin (`tests.test_origin.Origin`, with ``upload``).
- ``make_chain(origin_url, mode="thread", **cache)``: a started `tests.chain.Chain`.
- ``foreign_chain``: ``make_chain(foreign.url)``.
Everything listens on 127.0.0.1, keeps its files under ``tmp_path`` and is stopped afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chain import Chain, Mode
from tests.foreign import ForeignOrigin
from tests.static_origins import HttpServer, Nginx
from tests.test_origin import Origin, run_origin

MakeChain = Callable[..., Chain]


@pytest.fixture
def foreign() -> Iterator[ForeignOrigin]:
    """A scriptable raw-socket origin (no routes yet: everything is 404)."""
    with ForeignOrigin() as origin:
        yield origin


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    """nginx serving ``nginx.root``; ``/immutable/*`` gets a year's max-age, ``/expires/*``
    one hour, anything else only validators."""
    server = Nginx(tmp_path / "nginx").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[HttpServer]:
    """``python -m http.server`` serving ``http_server.root``."""
    server = HttpServer(tmp_path / "http.server").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bundled_origin(tmp_path: Path) -> Iterator[Origin]:
    """The project's origin; its client holds alice's token."""
    with run_origin(tmp_path / "origin") as origin:
        yield origin


@pytest.fixture
def make_chain(tmp_path: Path) -> Iterator[MakeChain]:
    """Start edge → shield chains in front of origin URLs; ``cache`` overrides CacheConfig."""
    chains: list[Chain] = []

    def make(origin_url: str, mode: Mode = "thread", **cache: Any) -> Chain:
        chain = Chain(origin_url, tmp_path / f"chain{len(chains)}", mode, **cache)
        chains.append(chain)
        return chain.start()

    try:
        yield make
    finally:
        for chain in chains:
            chain.stop()


@pytest.fixture
def foreign_chain(foreign: ForeignOrigin, make_chain: MakeChain) -> Chain:
    """Edge → shield → ``foreign``."""
    return make_chain(foreign.url)
