"""The director over fake parent transports: HRW order, balance, minimal disruption, passive
and active health, failover before headers, metrics. (Real sockets: test_director_sockets.)"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from edgeproxy.cache.director import Director, hrw_score, transport_for_node
from edgeproxy.cache.transport import BeReq, HTTPTransport, RawHeaders, UpstreamResponse
from edgeproxy.config import load_config
from edgeproxy.errors import (
    ConfigError,
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnreachable,
)

A, B, C = "http://shield-a:8081", "http://shield-b:8081", "http://shield-c:8081"
KEYS = [f"/v/t1/{i:064x}" for i in range(20_000)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeResponse:
    def __init__(self, status: int, body: bytes, break_after: int | None = None) -> None:
        self.status = status
        self.headers: RawHeaders = [(b"content-length", str(len(body)).encode())]
        self.body, self.break_after, self.closed = body, break_after, False

    async def aiter_body(self) -> AsyncIterator[bytes]:
        if self.break_after is not None:
            yield self.body[: self.break_after]
            raise UpstreamUnreachable("connection reset mid-body")
        yield self.body

    async def aclose(self) -> None:
        self.closed = True


class FakeParent:
    """A parent whose behaviour a test sets: "ok", "refuse", "reset", "timeout", "503",
    "midstream"."""

    def __init__(self, name: str) -> None:
        self.name, self.mode, self.healthy = name, "ok", True
        self.seen: list[str] = []
        self.closed = False

    async def send(self, bereq: BeReq) -> UpstreamResponse:
        if bereq.target == "/healthz":
            if not self.healthy:
                raise UpstreamRefused("connection refused")
            return FakeResponse(200, b'{"status": "ok"}')
        self.seen.append(bereq.key)
        if self.mode == "refuse":
            raise UpstreamRefused("connection refused")
        if self.mode == "reset":
            raise UpstreamUnreachable("connection reset by peer")
        if self.mode == "timeout":
            raise UpstreamTimeout("no answer")
        if self.mode == "503":
            return FakeResponse(503, b"busy")
        return FakeResponse(200, self.name.encode(),
                            break_after=1 if self.mode == "midstream" else None)  # fmt: skip

    async def aclose(self) -> None:
        self.closed = True


def make(weights: dict[str, float] | None = None, **kw: float
         ) -> tuple[Director, dict[str, FakeParent], Clock]:  # fmt: skip
    weights = weights or {A: 1, B: 1, C: 1}
    fakes = {url: FakeParent(url) for url in weights}
    clock = Clock()
    director = Director([(u, w, fakes[u]) for u, w in weights.items()], clock=clock,
                        backoff=kw.get("backoff", 2.0))  # fmt: skip
    return director, fakes, clock


def get(key: str, body: bool = False) -> BeReq:
    async def one() -> AsyncIterator[bytes]:
        yield b"x"

    return BeReq("POST" if body else "GET", key, [], key, one() if body else None)


async def fetch(director: Director, key: str) -> tuple[int, bytes]:
    response = await director.send(get(key))
    try:
        return response.status, b"".join([c async for c in response.aiter_body()])
    finally:
        await response.aclose()


def owner(director: Director, key: str) -> str:
    return director.order(key)[0].url


# --- choosing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "order"),
    [
        ("/v/t1/" + "ab" * 32, [C, A, B]),
        ("/v/t1/" + "cd" * 32, [A, B, C]),
        ("/v/t1/" + "ef" * 32, [B, A, C]),
        ("/pp/alice", [A, B, C]),
        ("/pp/bob", [A, C, B]),
        ("/v/t1/" + "01" * 32 + "/thumb", [B, A, C]),
        ("", [C, A, B]),
    ],
)
def test_hrw_order_table(key: str, order: list[str]) -> None:
    # Frozen: every edge (and every version) must pick the same shield for a key, or the
    # shield tier splits its cache.
    director, _, _ = make()
    assert [p.url for p in director.order(key)] == order
    # Independent of the order the upstreams are listed in.
    reverse, _, _ = make({C: 1, B: 1, A: 1})
    assert [p.url for p in reverse.order(key)] == order


def test_score_is_the_weighted_formula() -> None:
    assert hrw_score(b"http://shield-a:8081", "/pp/alice", 1.0) == pytest.approx(1.20997062)
    assert hrw_score(b"p", "k", 3.0) == pytest.approx(3 * hrw_score(b"p", "k", 1.0))


def test_keys_spread_evenly() -> None:
    director, _, _ = make()
    shares = Counter(owner(director, k) for k in KEYS)
    for url in (A, B, C):
        assert shares[url] / len(KEYS) == pytest.approx(1 / 3, abs=0.02)


def test_weights_set_the_shares() -> None:
    director, _, _ = make({A: 1, B: 2, C: 1})
    shares = Counter(owner(director, k) for k in KEYS)
    assert shares[A] / len(KEYS) == pytest.approx(0.25, abs=0.02)
    assert shares[B] / len(KEYS) == pytest.approx(0.50, abs=0.02)
    assert shares[C] / len(KEYS) == pytest.approx(0.25, abs=0.02)


def test_removing_a_parent_moves_only_its_keys() -> None:
    three, _, _ = make()
    two, _, _ = make({A: 1, B: 1})
    moved = [k for k in KEYS if owner(three, k) != owner(two, k)]
    assert moved and all(owner(three, k) == C for k in moved)
    assert len(moved) == sum(1 for k in KEYS if owner(three, k) == C)
    # ... and C's keys go where C's second choice was, spread over the others.
    assert all(owner(two, k) == three.order(k)[1].url for k in moved)
    assert Counter(owner(two, k) for k in moved)[A] / len(moved) == pytest.approx(0.5, abs=0.03)
    # Adding a fourth parent takes a quarter, only from the others, never between them.
    four, _, _ = make({A: 1, B: 1, C: 1, "http://shield-d:8081": 1})
    changed = [k for k in KEYS if owner(three, k) != owner(four, k)]
    assert all(owner(four, k) == "http://shield-d:8081" for k in changed)
    assert len(changed) / len(KEYS) == pytest.approx(0.25, abs=0.02)


def test_bad_parent_lists() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        Director([])
    with pytest.raises(ConfigError, match="twice"):
        Director([(A, 1, FakeParent("a")), (A + "/", 1, FakeParent("b"))])
    with pytest.raises(ConfigError, match="weight"):
        Director([(A, 0, FakeParent("a"))])


# --- health and failover --------------------------------------------------------------------


async def test_connection_error_fails_over_in_hrw_order_and_backs_off() -> None:
    director, fakes, clock = make()
    key = "/v/t1/" + "ab" * 32  # C, then A, then B
    fakes[C].mode = "refuse"
    assert await fetch(director, key) == (200, A.encode())
    assert fakes[C].seen == [key] and director.retries == 1
    # C is down now: its keys go straight to their second choice, no failed attempt first.
    assert await fetch(director, key) == (200, A.encode())
    assert fakes[C].seen == [key]
    # Keys of A and B do not move.
    other = "/v/t1/" + "cd" * 32
    assert await fetch(director, other) == (200, A.encode())
    # After the back-off C is tried again; it is back, so its keys return to it.
    fakes[C].mode = "ok"
    clock.now += 2.1
    assert await fetch(director, key) == (200, C.encode())


async def test_timeouts_count_as_failures_and_every_parent_down_raises() -> None:
    director, fakes, _ = make()
    for fake in fakes.values():
        fake.mode = "timeout"
    with pytest.raises(UpstreamTimeout):
        await fetch(director, "/pp/alice")
    assert all(len(f.seen) == 1 for f in fakes.values())  # each tried once
    assert not any(p.is_up(director.clock()) for p in director.parents)
    # All down: still tried, in HRW order, as a last resort.
    fakes[B].mode = "ok"
    assert await fetch(director, "/pp/alice") == (200, B.encode())


async def test_5xx_fails_over_unless_nobody_else_is_up() -> None:
    director, fakes, clock = make()
    key = "/pp/alice"  # A, B, C
    fakes[A].mode = "503"
    assert await fetch(director, key) == (200, B.encode())
    assert not director.parents[0].is_up(clock())
    # Everyone answers 503: the first answer (of the last one up) is returned, not an error.
    clock.now += 5
    for fake in fakes.values():
        fake.mode = "503"
    assert await fetch(director, key) == (503, b"busy")
    assert [len(f.seen) for f in fakes.values()] == [2, 2, 1]


async def test_a_reset_fails_over_without_marking_the_parent_down() -> None:
    director, fakes, clock = make()
    fakes[A].mode = "reset"
    assert await fetch(director, "/pp/alice") == (200, B.encode())
    assert director.parents[0].is_up(clock()) and director.parents[0].errors == {"reset": 1}
    fakes[A].mode = "ok"
    assert await fetch(director, "/pp/alice") == (200, A.encode())


async def test_a_request_with_a_body_is_not_retried() -> None:
    director, fakes, _ = make()
    fakes[A].mode = "refuse"
    with pytest.raises(UpstreamRefused):
        await director.send(get("/pp/alice", body=True))
    assert fakes[B].seen == [] and fakes[C].seen == []


async def test_mid_stream_failure_is_raised_to_the_caller() -> None:
    director, fakes, clock = make()
    fakes[A].mode = "midstream"
    response = await director.send(get("/pp/alice"))
    assert response.status == 200
    chunks = []
    with pytest.raises(UpstreamError):
        async for chunk in response.aiter_body():
            chunks.append(chunk)
    await response.aclose()
    assert chunks == [A.encode()[:1]] and fakes[B].seen == []  # never completed elsewhere
    # One broken connection is counted, not taken for a dead parent.
    assert director.parents[0].is_up(clock()) and director.parents[0].errors == {"reset": 1}


async def test_probes_take_a_parent_out_and_bring_it_back() -> None:
    director, fakes, clock = make()
    key = "/pp/alice"
    fakes[A].healthy = False
    await director.probe_all()
    assert await fetch(director, key) == (200, B.encode())
    clock.now += 60  # a failed probe holds it down past any back-off
    assert await fetch(director, key) == (200, B.encode())
    assert fakes[A].seen == []
    fakes[A].healthy = True
    await director.probe_all()
    assert await fetch(director, key) == (200, A.encode())


async def test_probe_clears_a_passive_backoff() -> None:
    director, fakes, _ = make(backoff=3600)
    fakes[A].mode = "refuse"
    assert await fetch(director, "/pp/alice") == (200, B.encode())
    fakes[A].mode = "ok"
    await director.probe_all()
    assert await fetch(director, "/pp/alice") == (200, A.encode())


async def test_start_probes_in_the_background_and_aclose_stops_it() -> None:
    fakes = {u: FakeParent(u) for u in (A, B)}
    fakes[A].healthy = False
    director = Director([(u, 1, f) for u, f in fakes.items()], probe_interval=0.01)
    director.start()
    for _ in range(200):
        if director.parents[0].probe_failed:
            break
        await asyncio.sleep(0.01)
    assert director.parents[0].probe_failed and not director.parents[1].probe_failed
    await director.aclose()
    assert director._prober is None and all(f.closed for f in fakes.values())


async def test_metrics_per_upstream() -> None:
    director, fakes, _ = make()
    fakes[A].mode = "refuse"
    await fetch(director, "/pp/alice")
    registry = CollectorRegistry()
    registry.register(director.collector("edge"))
    text = generate_latest(registry).decode()
    assert f'edgeproxy_director_upstream_up{{tier="edge",upstream="{A}"}} 0.0' in text
    assert f'edgeproxy_director_upstream_up{{tier="edge",upstream="{B}"}} 1.0' in text
    assert f'edgeproxy_director_requests_total{{tier="edge",upstream="{A}"}} 1.0' in text
    assert ('edgeproxy_director_errors_total{kind="refused",tier="edge",'
            f'upstream="{A}"}} 1.0') in text  # fmt: skip
    assert 'edgeproxy_director_retries_total{tier="edge"} 1.0' in text
    assert 'edgeproxy_director_upstream_weight{tier="edge",upstream="' in text


async def test_backups_take_keys_only_while_every_primary_is_down() -> None:
    # A region's edge: its own shields A and B, the other region's C and D as backups.
    D = "http://shield-d:8081"
    fakes = {u: FakeParent(u) for u in (A, B, C, D)}
    director = Director([(A, 1, fakes[A]), (B, 1, fakes[B])],
                        backups=[(C, 1, fakes[C]), (D, 1, fakes[D])])  # fmt: skip
    assert {director.order(k)[0].url for k in KEYS[:500]} == {A, B}
    assert all({p.url for p in director.order(k)[2:]} == {C, D} for k in KEYS[:50])
    fakes[A].healthy = fakes[B].healthy = False
    await director.probe_all()
    served = Counter([(await fetch(director, k))[1].decode() for k in KEYS[:400]])
    assert set(served) == {C, D} and min(served.values()) > 150  # HRW over the backups
    # Every edge of the region sends a key to the same backup.
    twin = Director([(A, 1, FakeParent(A)), (B, 1, FakeParent(B))],
                    backups=[(C, 1, FakeParent(C)), (D, 1, FakeParent(D))])  # fmt: skip
    assert all(director.order(k)[2].url == twin.order(k)[2].url for k in KEYS[:400])
    fakes[B].healthy = True
    await director.probe_all()
    assert {(await fetch(director, k))[1].decode() for k in KEYS[:100]} == {B}
    with pytest.raises(ConfigError, match="not a backup"):
        Director([], backups=[(C, 1, fakes[C])])


# --- config ---------------------------------------------------------------------------------


async def test_transport_for_node_from_config() -> None:
    env = {"EDGEPROXY_EDGE__UPSTREAMS": f"[{A}, {{url: '{B}/', weight: 2}}, "
                                        f"{{url: '{C}', backup: true}}]",
           "EDGEPROXY_CACHE__UPSTREAM_PROBE_INTERVAL": "7s"}  # fmt: skip
    config = load_config(None, env=env)
    director = transport_for_node(config, "edge")
    assert isinstance(director, Director)
    assert [(p.url, p.weight, p.backup) for p in director.parents] == [
        (A, 1.0, False), (B, 2.0, False), (C, 1.0, True)]
    assert director.probe_interval == 7 and director.backoff == config.cache.upstream_backoff
    await director.aclose()
    single = transport_for_node(config, "shield")  # upstream: one URL, as before
    assert isinstance(single, HTTPTransport) and single.base_url == config.shield.upstream
    await single.aclose()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[ftp://x]", "url"),
        ("[{url: 'http://a', weight: 0}]", "weight"),
        ("[{url: 'http://a', weight: true}]", "weight"),
        ("[{url: 'http://a', zone: eu}]", "expected a URL"),
        ("[http://a, 'http://a/']", "twice"),
        ("[{url: 'http://a', backup: yes please}]", "backup"),
        ("[{url: 'http://a', backup: true}]", "not be a backup"),
        ("7", "expected a list"),
    ],
)
def test_upstreams_config_errors(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"edge.upstreams.*{message}"):
        load_config(None, env={"EDGEPROXY_EDGE__UPSTREAMS": value})
