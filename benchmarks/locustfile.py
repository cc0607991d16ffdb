"""Locust: a Zipf-popular mix of full and range GETs against any edge.

    locust -f benchmarks/locustfile.py --headless -H http://127.0.0.1:8080 -u 32 -r 32 -t 60s

Which objects, from the environment (names avoid the ``EDGEPROXY_`` prefix on purpose: the
edgeproxy config loader reads every ``EDGEPROXY_*`` variable as a setting):

``EPBENCH_OBJECTS``
    A file of ``<path> [<size>]`` lines, most popular first — e.g. the listing written by
    ``python -m benchmarks.origin --port 8082 --dir /tmp/blobs --objects-out objects.txt``,
    which also serves those objects (put an edge in front: ``edgeproxy serve --role edge
    --upstream http://127.0.0.1:8082``). With sizes, ranges fall anywhere in the object;
    without, they are prefixes.
``EPBENCH_PATH`` / ``EPBENCH_COUNT``
    Without a file: paths from a template with ``{i}`` (default ``/v/t1/{i}``), i = 0..COUNT-1
    (default 10000), sizes unknown.
``EPBENCH_ZIPF_S`` (1.0), ``EPBENCH_RANGE_FRACTION`` (0.3), ``EPBENCH_RANGE_BYTES`` (65536)
    Popularity exponent, share of range GETs, largest range.
``EPBENCH_WAIT`` (0)
    Seconds each simulated user waits between requests (0: closed loop, as fast as answered).
``EPBENCH_SEED``
    Seed of the request sequence (default: random per user).

Statistics are grouped as ``full`` and ``range`` (not one row per object). An answer other than
200 (full) or 206 (range) counts as a failure, as does a body shorter than Content-Length.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from locust import FastHttpUser, constant, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.zipf import ZipfMix, read_objects_file


def _objects() -> tuple[list[str], list[int | None]]:
    listing = os.environ.get("EPBENCH_OBJECTS")
    if listing:
        return read_objects_file(Path(listing).read_text())
    template = os.environ.get("EPBENCH_PATH", "/v/t1/{i}")
    count = int(os.environ.get("EPBENCH_COUNT", "10000"))
    return [template.format(i=i) for i in range(count)], [None] * count


PATHS, LENGTHS = _objects()
ZIPF_S = float(os.environ.get("EPBENCH_ZIPF_S", "1.0"))
RANGE_FRACTION = float(os.environ.get("EPBENCH_RANGE_FRACTION", "0.3"))
RANGE_BYTES = int(os.environ.get("EPBENCH_RANGE_BYTES", str(64 * 1024)))
SEED = os.environ.get("EPBENCH_SEED")


class MediaReader(FastHttpUser):  # type: ignore[misc,unused-ignore]  # Any without locust
    """A receiver fetching popular media, whole or by ranges."""

    wait_time = constant(float(os.environ.get("EPBENCH_WAIT", "0")))

    def on_start(self) -> None:
        """Each user draws its own request sequence."""
        seed = None if SEED is None else int(SEED) + id(self) % 1000
        self.mix = ZipfMix(PATHS, LENGTHS, s=ZIPF_S, range_fraction=RANGE_FRACTION,
                           range_bytes=RANGE_BYTES, seed=seed)

    @task
    def get(self) -> None:
        """One GET of the mix."""
        req = self.mix.next()
        headers = {"Range": req.range} if req.range else {}
        name = "range" if req.range else "full"
        want = 206 if req.range else 200
        with self.client.get(req.path, headers=headers, name=name,
                             catch_response=True) as resp:
            if resp.status_code != want:
                resp.failure(f"status {resp.status_code}, expected {want}")
                return
            length = resp.headers.get("content-length")
            if length is not None and int(length) != len(resp.content or b""):
                resp.failure(f"short body: {len(resp.content or b'')} of {length} bytes")
