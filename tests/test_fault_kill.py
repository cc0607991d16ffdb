"""kill -9 of the origin, the shield or the edge while a large object streams through them all.

Client → edge → shield → origin, every one a process of its own (`edgeproxy serve` for the
nodes, `python -m tests.origins` for a slowed-down origin), so SIGKILL lands mid-stream. For
each victim: the answer in flight is cut short, never completed (its bytes so far are the
object's own, and fewer than its Content-Length promised); once the victim is started again,
the object, one cached before and one never asked for are served byte-exact, and a HIT after
the refill is byte-exact too: nothing partial was stored anywhere.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.answers import assert_never_wrong, read_answer
from tests.nodes import NodeProcess, OriginProcess
from tests.origins import pattern
from tests.servers import free_port

MIB = 1024 * 1024
VICTIMS = ("origin", "shield", "edge")
BIG = 8 * MIB
SLOW = 0.01  # seconds between the origin's 64 KiB chunks: at most ~6 MiB/s


def blob_path(size: int, seed: int) -> str:
    """The content-addressed path of `pattern` (size, seed)."""
    return "/v/t1/" + hashlib.sha256(pattern(size, seed)).hexdigest()


@dataclass
class Objects:
    """A victim's objects: the one streaming at the kill, one cached before, one asked after."""

    big: tuple[int, int]
    cached: tuple[int, int]
    fresh: tuple[int, int]

    def all(self) -> dict[str, tuple[int, int]]:
        return {blob_path(*spec): spec for spec in (self.big, self.cached, self.fresh)}


@dataclass
class Stack:
    """The three processes and the objects of each victim."""

    origin: OriginProcess
    shield: NodeProcess
    edge: NodeProcess
    objects: dict[str, Objects]

    def node(self, role: str) -> OriginProcess | NodeProcess:
        node: OriginProcess | NodeProcess = getattr(self, role)
        return node


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = Path(tmp_path_factory.mktemp("kill"))
    objects = {victim: Objects((BIG, 1 + i), (300_000, 10 + i), (2 * MIB + 5, 20 + i))
               for i, victim in enumerate(VICTIMS)}  # fmt: skip
    specs = {path: spec for o in objects.values() for path, spec in o.all().items()}
    origin = OriginProcess(directory, specs).launch()
    ports = {"shield": free_port(), "edge": free_port()}
    config = directory / "config.yaml"
    config.write_text(
        f"data_dir: {directory / 'var'}\nlog_level: warning\n"
        f"shield: {{port: {ports['shield']}, upstream: '{origin.url}'}}\n"
        f"edge: {{port: {ports['edge']}, upstream: 'http://127.0.0.1:{ports['shield']}'}}\n")
    shield = NodeProcess(config, "shield", f"http://127.0.0.1:{ports['shield']}").launch()
    edge = NodeProcess(config, "edge", f"http://127.0.0.1:{ports['edge']}").launch()
    try:
        origin.ready()
        shield.ready()
        edge.ready()
        yield Stack(origin, shield, edge, objects)
    finally:
        edge.stop()
        shield.stop()
        origin.stop()


def killer(victim: OriginProcess | NodeProcess, after: int) -> Callable[[int], None]:
    """An ``on_bytes`` hook that SIGKILLs ``victim`` once ``after`` bytes have arrived."""
    def on_bytes(count: int) -> None:
        if count >= after and victim.process is not None and victim.process.poll() is None:
            victim.kill()

    return on_bytes


def get_when_back(url: str, **kwargs: object) -> httpx.Response:
    """GET ``url``, allowing a node a few seconds to stop backing off a parent that was down.

    Only 502/503/504 are retried (an honest "upstream unavailable"); a wrong byte never is.
    """
    deadline = time.monotonic() + 10
    while True:
        r = httpx.get(url, timeout=30, **kwargs)  # type: ignore[arg-type]
        if r.status_code not in (502, 503, 504) or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


@pytest.mark.parametrize("victim", VICTIMS)
def test_kill_9_mid_stream_then_restart(stack: Stack, victim: str) -> None:
    objects = stack.objects[victim]
    big, cached, fresh = (pattern(*spec) for spec in (objects.big, objects.cached,
                                                      objects.fresh))  # fmt: skip
    big_url, cached_url, fresh_url = (stack.edge.url + blob_path(*spec) for spec in
                                      (objects.big, objects.cached, objects.fresh))  # fmt: skip
    assert httpx.get(cached_url, timeout=30).content == cached
    stack.origin.set_chunk_delay(SLOW)
    answer = read_answer(big_url, on_bytes=killer(stack.node(victim), after=2 * MIB))
    # cut short, never completed: fewer bytes than promised, and every one of them right
    assert answer.promised == len(big)
    assert_never_wrong(answer, big, must_cut=True)

    if victim == "origin":
        stack.origin.chunk_delay = 0  # what the restarted origin starts with
    else:
        stack.origin.set_chunk_delay(0)
    stack.node(victim).start()
    r = get_when_back(big_url)
    assert r.status_code == 200 and len(r.content) == len(big)
    assert hashlib.sha256(r.content).hexdigest() == big_url.rsplit("/", 1)[1]
    r = httpx.get(big_url, timeout=30)
    assert r.headers["x-cache"].startswith("HIT from edge") and r.content == big
    # the part that was in flight at the kill, by Range
    r = httpx.get(big_url, headers={"range": f"bytes={MIB}-{4 * MIB}"}, timeout=30)
    assert r.status_code == 206 and r.content == big[MIB : 4 * MIB + 1]
    r = httpx.get(cached_url, timeout=30)
    assert r.status_code == 200 and r.content == cached
    r = get_when_back(fresh_url)
    assert r.status_code == 200 and r.content == fresh
    assert httpx.get(fresh_url, timeout=30).headers["x-cache"].startswith("HIT from edge")
