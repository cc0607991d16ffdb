"""Prometheus metrics of a node that runs several worker processes: one scrape, every worker.

Each uvicorn worker is its own process with its own counters, and a scrape reaches whichever
worker accepts the connection. prometheus-client's multiprocess mode fixes that: with
``PROMETHEUS_MULTIPROC_DIR`` set before the workers start, every process writes its values to
memory-mapped files there, and a scrape merges all of them (`exposition`). Counters of a worker
that exited stay in the sum, so totals never go backwards; `mark_dead` drops a dead worker's
live gauges.

The server calls `prepare` for ``workers > 1`` only: a single process needs none of this.

Those files live in the data directory, often the cache's volume, which may fill up.
prometheus-client sizes them with ``truncate``, a hole, and a write through the map into a
hole that a full volume cannot back kills the process (SIGBUS): every worker died at its first
metric update while the cache volume was full, and again after each restart.
`prepare` has them allocated before they are mapped (`_AllocatedDict`), so a full volume is
an ``OSError`` at that update instead.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

__all__ = ["ENV", "enabled", "exposition", "mark_dead", "prepare"]

ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("edgeproxy")


def _allocate(fd: int, size: int) -> None:
    """Give ``fd``'s first ``size`` bytes real blocks (ENOSPC now, never SIGBUS later)."""
    if hasattr(os, "posix_fallocate"):  # (Linux; elsewhere the files stay as they were)
        os.posix_fallocate(fd, 0, size)


def _allocated_dicts() -> None:
    """Make prometheus-client map only allocated files (see the module's docstring). Without
    room for them, a worker keeps its values in memory: they are missing from the scrape (a
    warning says so), the worker serves on."""
    from prometheus_client import mmap_dict, values

    if getattr(values.MmapedDict, "allocated", False):  # type: ignore[attr-defined]
        return
    if not all(hasattr(mmap_dict, name) for name in ("_INITIAL_MMAP_SIZE", "_pack_integer")) \
            or not hasattr(mmap_dict.MmapedDict, "_init_value"):
        # (internals of the library's: a release without them is mapped as it maps)
        log.warning("prometheus-client %s: metrics files are not allocated ahead; a full "
                    "data volume may stop workers", getattr(values, "__version__", "?"))
        return

    class _AllocatedDict(mmap_dict.MmapedDict):
        allocated = True

        def __init__(self, filename: str, read_mode: bool = False) -> None:
            if not read_mode:
                try:
                    _allocated_file(filename, mmap_dict._INITIAL_MMAP_SIZE)
                except OSError as exc:
                    log.warning("no room for the metrics file %s (%s): this worker's "
                                "metrics stay in memory, missing from scrapes", filename, exc)
                    self._fname = filename
                    self._f: Any = None  # (the parent's `close` then leaves the map alone)
                    self._capacity = mmap_dict._INITIAL_MMAP_SIZE
                    self._m = mmap.mmap(-1, self._capacity)
                    self._positions: dict[str, int] = {}
                    self._used = 8
                    mmap_dict._pack_integer(self._m, 0, self._used)  # type: ignore[no-untyped-call]
                    return
            super().__init__(filename, read_mode)  # type: ignore[no-untyped-call]

        def _init_value(self, key: str) -> None:
            # the room the parent's growth asks for, as it computes it, allocated first
            encoded = key.encode("utf-8")
            need = self._used + 4 + len(encoded) + (8 - (len(encoded) + 4) % 8) + 16
            capacity = self._capacity
            while need > capacity:
                capacity *= 2
            if capacity != self._capacity:
                if self._f is not None:
                    try:
                        _allocate(self._f.fileno(), capacity)
                    except OSError as exc:
                        log.warning("no room to grow the metrics file %s (%s): this worker's "
                                    "metrics stay in memory from now on", self._fname, exc)
                        self._f.close()
                        self._f = None
                if self._f is None:  # in memory: a larger map, the parent need not grow it
                    grown = mmap.mmap(-1, capacity)
                    grown[:self._used] = self._m[:self._used]
                    self._m, self._capacity = grown, capacity
            super()._init_value(key)  # type: ignore[no-untyped-call]

    values.MmapedDict = _AllocatedDict  # type: ignore[attr-defined]


def _allocated_file(filename: str, initial: int) -> None:
    """Make ``filename`` (``initial`` bytes if new) all allocated; a new file that cannot be
    is removed (an empty one would break the scrape that reads it)."""
    fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o666)
    size = os.fstat(fd).st_size
    try:
        _allocate(fd, size or initial)
    except OSError:
        if not size:
            with contextlib.suppress(OSError):
                os.unlink(filename)
        raise
    finally:
        os.close(fd)


def prepare(directory: Path) -> None:
    """Point this process and the workers it will start at an empty ``directory``.

    Emptied first: files left by a previous run would be summed into this one's totals.
    Must run before the workers import prometheus-client (they inherit the environment).
    """
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[ENV] = str(directory)
    _allocated_dicts()


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


if enabled():  # a worker (spawned: it imports anew) of a node that `prepare`d
    _allocated_dicts()
