"""Admin purge and warm over real sockets, on a two-tier chain."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.cache import create_app
from edgeproxy.cli import adminclient
from edgeproxy.errors import ClientError
from tests.origins import TestOrigin, pattern
from tests.servers import ServerThread, serve
from tests.test_cache_node import make_config

TOKEN = "s3cret-admin-token"


@dataclasses.dataclass
class Chain:
    origin: TestOrigin
    shield: ServerThread
    edge: ServerThread


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    origin = TestOrigin()
    config = make_config(tmp_path).replace(admin_token=TOKEN)
    with serve(origin) as o, serve(create_app(config, "shield", upstream=o.url)) as s, \
            serve(create_app(config, "edge", upstream=s.url)) as e:
        yield Chain(origin, s, e)


def test_admin_needs_the_token_and_does_nothing_without_it(chain: Chain) -> None:
    chain.origin.put("/v/t1/a", pattern(1000))
    httpx.get(chain.edge.url + "/v/t1/a")
    url = chain.edge.url + "/_admin/purge"
    r = httpx.post(url, json={"paths": ["/v/t1/a"]})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = httpx.post(url, json={"paths": ["/v/t1/a"]}, headers={"authorization": "Bearer nope"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    r = httpx.post(chain.edge.url + "/_admin/warm", json={"paths": ["/v/t1/b"]})
    assert r.status_code == 401
    assert httpx.get(chain.edge.url + "/v/t1/a").headers["x-cache"] == "HIT from edge"
    assert chain.origin.count("/v/t1/b") == 0


@pytest.mark.parametrize("body", [b"[" * 1100 + b"]" * 1100, b'{"a":' * 1100 + b"1" + b"}" * 1100,
                                  b"not json", b"[1, 2]"])
def test_admin_bodies_that_are_no_json_object_are_400(chain: Chain, body: bytes) -> None:
    """Bad input is the client's: 400 ``bad_json``, also JSON nested past the interpreter's
    recursion limit, which fits in a small body (it was a 500)."""
    for path in ("/_admin/purge", "/_admin/warm"):
        r = httpx.post(chain.edge.url + path, content=body,
                       headers={"authorization": f"Bearer {TOKEN}"})
        assert (r.status_code, r.json()["error"]) == (400, "bad_json")


def test_admin_disabled_without_configured_token(tmp_path: Path) -> None:
    origin = TestOrigin()
    with serve(origin) as o, serve(create_app(make_config(tmp_path), "edge",
                                              upstream=o.url)) as e:
        r = httpx.post(e.url + "/_admin/purge", json={"paths": ["/x"]},
                       headers={"authorization": "Bearer anything"})
        assert r.status_code == 403 and r.json()["error"] == "admin_disabled"


def test_purge_one_and_prefix_across_tiers(chain: Chain) -> None:
    for name in ("a", "b"):
        chain.origin.put(f"/pp/{name}", pattern(500, seed=1))
        httpx.get(chain.edge.url + f"/pp/{name}")
    nodes = [chain.edge.url, chain.shield.url]
    assert adminclient.purge(nodes, TOKEN, paths=["/pp/a"]) == {n: 1 for n in nodes}
    r = httpx.get(chain.edge.url + "/pp/a")
    assert r.headers["x-cache"] == "MISS from edge, MISS from shield"
    assert httpx.get(chain.edge.url + "/pp/b").headers["x-cache"] == "HIT from edge"
    assert adminclient.purge(nodes, TOKEN, prefix="/pp/") == {n: 2 for n in nodes}
    assert httpx.get(chain.edge.url + "/pp/b").headers["x-cache"].startswith("MISS from edge")
    with pytest.raises(ClientError) as info:
        adminclient.purge(nodes, TOKEN)
    assert info.value.status == 422


@pytest.mark.parametrize("spelling", ["/v/./t1/sp", "/v/t1/%73p", "/%76/t1/sp",
                                      "/v/x/../t1/sp", "/v/t1/x/../sp"])
def test_purge_finds_the_object_under_any_spelling_of_its_path(chain: Chain,
                                                               spelling: str) -> None:
    """Every spelling of a path is served from one stored object (its canonical path is the
    key): a purge naming the object in any of them drops it, as a prefix does (they
    answered ``{"purged": 0}`` and the object stayed; found from outside)."""
    chain.origin.put("/v/t1/sp", pattern(700, seed=3))
    nodes = [chain.edge.url, chain.shield.url]
    httpx.get(chain.edge.url + "/v/t1/sp")
    assert httpx.get(chain.edge.url + "/v/t1/sp").headers["x-cache"] == "HIT from edge"
    assert adminclient.purge(nodes, TOKEN, paths=[spelling]) == {n: 1 for n in nodes}
    assert httpx.get(chain.edge.url + "/v/t1/sp").headers["x-cache"].startswith("MISS from")
    prefix = spelling.rsplit("/", 1)[0] + "/"
    assert adminclient.purge(nodes, TOKEN, prefix=prefix) == {n: 1 for n in nodes}
    assert httpx.get(chain.edge.url + "/v/t1/sp").headers["x-cache"].startswith("MISS from")


def test_a_purge_path_with_no_canonical_form_is_400(chain: Chain) -> None:
    r = httpx.post(chain.edge.url + "/_admin/purge", json={"paths": ["/v/t1/%zz"]},
                   headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400 and r.json()["error"] == "bad_target", r.text


def test_warm_reports_progress_and_fills_the_cache(chain: Chain) -> None:
    paths = [f"/v/t1/w{i}" for i in range(6)]
    for p in paths:
        chain.origin.put(p, pattern(70_000, seed=len(p)))
    seen: list[dict[str, Any]] = []
    summary = adminclient.warm(chain.edge.url, TOKEN, [*paths, "/v/t1/missing"],
                               concurrency=3, on_progress=seen.append)
    assert summary == {"done": 7, "failed": 1}
    assert sorted(item["path"] for item in seen) == sorted([*paths, "/v/t1/missing"])
    assert all(item["bytes"] == 70_000 for item in seen if item["path"] != "/v/t1/missing")
    for p in paths:
        assert httpx.get(chain.edge.url + p).headers["x-cache"] == "HIT from edge"
        assert chain.origin.count(p) == 1


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeproxy", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_cli_purge_and_warm_address_every_node(chain: Chain, tmp_path: Path) -> None:
    paths = ["/v/t1/c1", "/v/t1/c2"]
    for p in paths:
        chain.origin.put(p, pattern(20_000, seed=len(p)))
    listing = tmp_path / "warm.txt"
    listing.write_text(f"{chain.edge.url}{paths[0]}\n{paths[1]}\n")
    r = _cli("warm", "--from-file", str(listing), "--node", chain.edge.url, "--token", TOKEN)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["warmed"][chain.edge.url] == {"done": 2, "failed": 0}
    assert "200 /v/t1/c1 20000 bytes MISS from edge" in r.stderr
    assert httpx.get(chain.edge.url + paths[0]).headers["x-cache"] == "HIT from edge"

    r = _cli("purge", paths[0], "--node", chain.edge.url, "--node", chain.shield.url,
             env={"EDGEPROXY_ADMIN_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["purged"] == {chain.edge.url: 1, chain.shield.url: 1}
    assert httpx.get(chain.edge.url + paths[0]).headers["x-cache"].startswith("MISS from edge")

    r = _cli("purge", paths[1], "--node", chain.edge.url, "--token", "wrong")
    assert r.returncode == 1
    assert r.stderr.strip().startswith("edgeproxy: error: 403 forbidden")
    assert "Traceback" not in r.stderr
    no_token = tmp_path / "no-token.yaml"
    no_token.write_text("log_level: warning\n")
    r = _cli("purge", paths[1], "--node", chain.edge.url, "--config", str(no_token),
             env={"EDGEPROXY_ADMIN_TOKEN": ""})
    assert r.returncode == 2 and "no admin token" in r.stderr
    assert httpx.get(chain.edge.url + paths[1]).headers["x-cache"] == "HIT from edge"


def test_admin_text_that_no_request_could_carry_is_refused_not_a_500_or_a_hang(
        chain: Chain) -> None:
    """JSON's ``\\ud800`` decodes to a lone surrogate, which the purge's index lookup could
    not encode (a 500 with a text body); a warm path whose query latin-1 cannot hold raised
    in its task, and the warm's streamed answer never ended."""
    chain.origin.put("/v/t1/a", pattern(1000))
    auth = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    for body in (b'{"paths": ["/v/t1/a\\ud800"]}', b'{"prefix": "/v/\\udfff"}'):
        r = httpx.post(chain.edge.url + "/_admin/purge", content=body, headers=auth)
        assert (r.status_code, r.json()["error"]) == (422, "invalid_field"), r.text
    r = httpx.post(chain.edge.url + "/_admin/warm", headers=auth, timeout=10,
                   json={"paths": ["/v/t1/a?x=\u20ac", "/v/t1/a"]})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert {line["path"]: line["status"] for line in lines[:2]} == {"/v/t1/a?x=\u20ac": 400,
                                                                    "/v/t1/a": 200}
    assert lines[2] == {"done": 2, "failed": 1}
