"""A soak against a reference: Zipf-popular GETs and ranges from many clients at once through
edge → shield processes (two workers each) in front of nginx, with purges at both tiers
all the while; every body is compared with the file nginx serves.

The fault matrix and the fuzzes check one thing at a time; this checks them together under
load: slices stored by ranges and by whole answers, followers across workers, the memory
tier, group commits and purges racing with fills. Nothing may come back wrong, short or
failed, and no node may count an integrity failure or a storage fault.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx

from tests.conftest import MakeChain
from tests.origins import pattern
from tests.static_origins import Nginx

SECONDS = 8.0
CLIENTS = 16
TOKEN = "soak-token"
SLICE = 256 * 1024


def _objects(nginx: Nginx) -> dict[str, bytes]:
    rng = random.Random(5)
    sizes = [rng.choice([rng.randint(1, 40_000), rng.randint(1, 300_000)]) for _ in range(150)]
    sizes += [5 * SLICE // 2, 3 * SLICE + 1]  # several slices each
    objects = {}
    for i, size in enumerate(sizes):
        path = f"/immutable/soak/{i:03d}.bin"
        objects[path] = pattern(size, seed=1000 + i)
        nginx.put(path.removeprefix("/"), objects[path])
    return objects


async def _client(url: str, objects: dict[str, bytes], until: float, seed: int,
                  seen: dict[str, int], wrong: list[str]) -> None:
    rng = random.Random(seed)
    paths = list(objects)
    weights = [1 / (rank + 1) for rank in range(len(paths))]
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while time.monotonic() < until:
            path = rng.choices(paths, weights)[0]
            body = objects[path]
            headers, want, status = {}, body, 200
            if rng.random() < 0.4 and len(body) > 1:
                first = rng.randrange(len(body))
                last = min(len(body) - 1, first + rng.choice([0, 99, 65_535, SLICE, 2 * SLICE]))
                headers = {"Range": f"bytes={first}-{last}"}
                want, status = body[first:last + 1], 206
            r = await client.get(path, headers=headers)
            verdict = r.headers.get("x-cache", "").split(",")[0].split(" ")[0]
            seen[verdict] = seen.get(verdict, 0) + 1
            if r.status_code != status or r.content != want:
                wrong.append(f"{path} {headers} -> {r.status_code}, {len(r.content)} bytes "
                             f"(want {status}, {len(want)}), {r.headers.get('x-cache')}")


async def _purger(urls: list[str], paths: list[str], until: float, done: list[int]) -> None:
    rng = random.Random(9)
    async with httpx.AsyncClient(timeout=30,
                                 headers={"authorization": f"Bearer {TOKEN}"}) as client:
        while time.monotonic() < until:
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            what = ({"paths": [rng.choice(paths[:40])]} if rng.random() < 0.8
                    else {"prefix": f"/immutable/soak/0{rng.randrange(10)}"})
            r = await client.post(rng.choice(urls) + "/_admin/purge", json=what)
            assert r.status_code == 200, r.text
            done.append(r.json()["purged"])


def _trouble(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    # (several workers: a counter shows once some worker has counted; its name is checked by
    # the single-process tests, test_size_bounds)
    names = ("edgeproxy_integrity_failures_total{", "edgeproxy_storage_faults_total{")
    assert "edgeproxy_requests_total{" in text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(names))


def test_zipf_soak_with_purges_is_byte_exact(nginx: Nginx, make_chain: MakeChain) -> None:
    objects = _objects(nginx)
    chain = make_chain(nginx.url, "process", workers=2, admin_token=TOKEN, slice_size=SLICE,
                       memory_size=2 * 1024 * 1024)
    seen: dict[str, int] = {}
    wrong: list[str] = []
    purged: list[int] = []

    async def load() -> None:
        until = time.monotonic() + SECONDS
        await asyncio.gather(
            _purger([chain.edge_url, chain.shield_url], list(objects), until, purged),
            *(_client(chain.edge_url, objects, until, seed, seen, wrong)
              for seed in range(CLIENTS)))

    asyncio.run(load())
    assert not wrong, wrong[:5]
    assert seen.get("HIT", 0) > 100 and seen.get("MISS", 0) > 10, seen
    assert len(purged) > 5 and sum(purged) > 0, purged
    assert _trouble(chain.edge_url) == 0
    assert _trouble(chain.shield_url) == 0
