"""Peak RSS of a server while many clients download the 100 MiB blob at once.

A sampler thread reads the RSS of the server's top process and all its descendants every
50 ms (psutil) while the downloads run; it reports the peak of the sum and of each process, so a
multi-worker server's per-worker peak is visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import psutil

from . import rawhttp
from .deploy import Origin, Server

MIB = 1024**2


class RssSampler:
    """Samples a process tree's RSS in a background thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_total = 0
        self.peak_by_pid: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def sample(self) -> int:
        """Take one sample now; the tree's total RSS."""
        total = 0
        self.last_by_pid: dict[int, int] = {}
        for proc in self._tree():
            try:
                rss = proc.memory_info().rss
                if proc.pid not in self.names:
                    self.names[proc.pid] = " ".join(proc.cmdline()[:3])[-60:]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            self.last_by_pid[proc.pid] = rss
            self.peak_by_pid[proc.pid] = max(self.peak_by_pid.get(proc.pid, 0), rss)
        self.peak_total = max(self.peak_total, total)
        self.samples += 1
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.baseline = self.sample()
        self.baseline_by_pid = dict(self.last_by_pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def largest_worker(self, *, baseline: bool = False) -> int:
        """Peak (or starting) RSS of the largest process other than the top one (a worker),
        or of the top process when it has no children."""
        table = self.baseline_by_pid if baseline else self.peak_by_pid
        top = self.root.pid
        others = [rss for pid, rss in table.items() if pid != top]
        return max(others) if others else table.get(top, 0)


@contextlib.contextmanager
def sampling(pids: list[int], interval: float = 0.05) -> Iterator[list[RssSampler]]:
    """Sample several process trees at once for the duration of the block."""
    samplers = [RssSampler(pid, interval) for pid in pids]
    with contextlib.ExitStack() as stack:
        for sampler in samplers:
            stack.enter_context(sampler)
        yield samplers


async def _download_all(host: str, port: int, path: str, clients: int,
                        timeout: float) -> list[rawhttp.Fetch]:
    return list(await asyncio.gather(*(rawhttp.get(host, port, path, timeout=timeout)
                                       for _ in range(clients))))


def peak_rss(server: Server, origin: Origin, *, clients: int, cold: bool,
             log: Callable[[str], None], timeout: float = 180.0) -> dict[str, Any]:
    """Peak RSS of ``server`` while ``clients`` fetch the 100 MiB blob (or a cold copy)."""
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    path = origin.fresh("b100m", 1)[0] if cold else origin.blob("b100m")
    t0 = time.perf_counter()
    with RssSampler(server.front.pid) as sampler:
        fetches = rawhttp.run(_download_all(parts.hostname, parts.port, path, clients, timeout))
    wall = time.perf_counter() - t0
    origin.wait_idle(timeout=60)
    complete = sum(f.complete for f in fetches)
    # The largest process other than a supervisor: for uvicorn and nginx, a worker.
    per_worker = sampler.largest_worker()
    worker_before = sampler.largest_worker(baseline=True)
    result = {
        "server": server.name, "clients": clients, "cold": cold, "wall_s": wall,
        "complete": complete, "samples": sampler.samples,
        "baseline_mib": sampler.baseline / MIB, "peak_total_mib": sampler.peak_total / MIB,
        "peak_per_worker_mib": per_worker / MIB, "baseline_worker_mib": worker_before / MIB,
        "processes": {f"{pid} {sampler.names.get(pid, '')}": rss / MIB
                      for pid, rss in sampler.peak_by_pid.items()},
        "client_mibps": sum(f.body_bytes for f in fetches) / MIB / wall if wall else 0.0,
        "errors": sorted({f.error or f"status {f.status}" for f in fetches if not f.complete}),
    }
    log(f"  memory {server.name:<16} {'cold' if cold else 'warm'}: {complete}/{clients} "
        f"complete in {wall:.1f} s; peak RSS total {result['peak_total_mib']:.0f} MiB, "
        f"largest worker {result['peak_per_worker_mib']:.0f} MiB (before: total "
        f"{result['baseline_mib']:.0f} MiB, largest worker {worker_before / MIB:.0f} MiB; "
        f"{sampler.samples} samples)")
    return result
