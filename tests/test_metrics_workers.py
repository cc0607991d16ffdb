"""Issue 10, metrics across workers: a 2-worker edge's /metrics adds up to the requests sent,
on every scrape (once it has counted the request just answered), whichever worker answers
it, and never goes backwards."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from tests.nodes import NodeProcess
from tests.origins import TestOrigin
from tests.servers import free_port, serve

REQUESTS = 1000
SCRAPES = 5


def requests_total(text: str) -> float:
    """The sum of ``edgeproxy_requests_total`` over all its series."""
    return sum(float(m.group(1)) for m in
               re.finditer(r"^edgeproxy_requests_total\{[^}]*\} (\S+)$", text, re.M))  # fmt: skip


def test_two_workers_one_sum(tmp_path: Path) -> None:
    test_origin = TestOrigin()
    for i in range(4):
        test_origin.put(f"/v/t1/obj{i}", bytes([i]) * 2000)
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: var\nlog_level: warning\nlog: {{access: 'off'}}\n"
                      f"edge: {{port: {port}, workers: 2}}\n")
    # No keep-alive: every request and every scrape is a new connection, so both workers
    # answer some of each.
    fresh = httpx.Limits(max_keepalive_connections=0)
    totals = []
    with serve(test_origin) as osrv, \
            NodeProcess(config, "edge", f"http://127.0.0.1:{port}", upstream=osrv.url) as edge, \
            httpx.Client(base_url=edge.url, limits=fresh) as client:
        sent = 0
        seen: list[float] = []  # every scrape's total, in order
        for round_ in range(SCRAPES):
            for i in range(REQUESTS // SCRAPES):
                assert client.get(f"/v/t1/obj{(round_ + i) % 4}").status_code == 200
                sent += 1
            for _ in range(3):
                # A request is counted after its last byte: a scrape at once may be a
                # request short, never more, and catches up (2 s at most here).
                deadline = time.monotonic() + 2
                while True:
                    total = requests_total(client.get("/metrics").text)
                    seen.append(total)
                    if total >= sent or time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
                totals.append((sent, total))
        workers = {p.name for p in (tmp_path / "var/edge/metrics").glob("counter_*.db")}
    assert sent == REQUESTS
    assert len(workers) == 2, workers  # both workers counted requests
    assert [total for _sent, total in totals] == [float(s) for s, _total in totals]
    assert seen == sorted(seen)  # never backwards
