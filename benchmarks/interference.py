"""How much CPU *other* work on the machine used while a measurement ran.

Busy CPU time of the whole machine (user + nice + system, from /proc/stat) minus the CPU time of
our own processes — the servers' process trees, the origin, the driver and the children it has
waited for (wrk) — divided by the wall time: the average number of cores something else kept
busy. Kernel time spent on loopback traffic is partly charged to softirq rather than to our
processes, so the figure is approximate (a few hundredths of a core of noise), but a test suite
or a compiler running next to the benchmark shows up clearly.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable

import psutil


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system)


def tree_cpu(pids: Iterable[int]) -> float:
    """User + system CPU seconds of the process trees rooted at ``pids`` (live processes)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
    return total


def _own_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class ForeignCpu:
    """Context manager: ``foreign_cores`` after the block (cores busy with other work)."""

    def __init__(self, our_pids: Iterable[int]) -> None:
        self.pids = [p for p in our_pids if p != os.getpid()]
        self.foreign_cores = 0.0

    def _snapshot(self) -> tuple[float, float, float]:
        return time.monotonic(), _machine_busy(), tree_cpu(self.pids) + _own_cpu()

    def __enter__(self) -> ForeignCpu:
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        t1, busy1, ours1 = self._snapshot()
        t0, busy0, ours0 = self._start
        wall = max(t1 - t0, 1e-6)
        self.foreign_cores = max(0.0, ((busy1 - busy0) - (ours1 - ours0)) / wall)
