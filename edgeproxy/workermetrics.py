"""Prometheus metrics of a node that runs several worker processes: one scrape, every worker.

Each uvicorn worker is its own process with its own counters, and a scrape reaches whichever
worker accepts the connection. prometheus-client's multiprocess mode fixes that: with
``PROMETHEUS_MULTIPROC_DIR`` set before the workers start, every process writes its values to
memory-mapped files there, and a scrape merges all of them (`exposition`). Counters of a worker
that exited stay in the sum, so totals never go backwards; `mark_dead` drops a dead worker's
live gauges.

The server calls `prepare` for ``workers > 1`` only: a single process needs none of this.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

__all__ = ["ENV", "enabled", "exposition", "mark_dead", "prepare"]

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(directory: Path) -> None:
    """Point this process and the workers it will start at an empty ``directory``.

    Emptied first: files left by a previous run would be summed into this one's totals.
    Must run before the workers import prometheus-client (they inherit the environment).
    """
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[ENV] = str(directory)


def enabled() -> bool:
    """Whether this process writes its metrics for a multi-worker scrape."""
    return bool(os.environ.get(ENV))


def exposition(registry: CollectorRegistry, extra: Iterable[Collector] = ()) -> bytes:
    """The text exposition of ``registry`` (this process) or, in multiprocess mode, of the
    metrics of every worker; ``extra`` collectors (computed at scrape time) are added either
    way."""
    path = os.environ.get(ENV)
    if not path:
        return bytes(generate_latest(registry))
    from prometheus_client.multiprocess import MultiProcessCollector

    scrape = CollectorRegistry()
    MultiProcessCollector(scrape, path)  # type: ignore[no-untyped-call]
    for collector in extra:
        scrape.register(collector)
    return bytes(generate_latest(scrape))


def mark_dead(pid: int | None = None) -> None:
    """Forget the live gauges of worker ``pid`` (this process by default) as it exits."""
    path = os.environ.get(ENV)
    if path:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(os.getpid() if pid is None else pid, path)  # type: ignore[no-untyped-call]
