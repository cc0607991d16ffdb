"""`DbCalls`: the origin's database calls, each in a thread of a pool of their own and
bounded in time.

A database that stops answering with its connections open (a hung server, a partitioned
host) leaves a query on a pooled connection waiting with no end of its own: the driver's
``connect_timeout`` covers new connections only, and PostgreSQL's ``statement_timeout`` is
the stopped server's to enforce. Upload calls hung there for minutes (found from outside:
SIGSTOP of PostgreSQL), and the threads they held were asyncio's default pool's, which the
staging and blob-store file I/O of every other request waits on too. A call now answers 503
``database_unavailable`` after ``origin.database_timeout``; its thread finishes when the
database does (a thread cannot be stopped), in this pool only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from ..quietlog import QuietLog
from .responses import DATABASE_UNAVAILABLE

__all__ = ["THREADS", "DbCalls"]

P = ParamSpec("P")
T = TypeVar("T")

# As many as the engine's pool has connections (8, and 8 more under load: `db.Records`).
THREADS = 16

_log = QuietLog(logging.getLogger("edgeproxy.origin"))


class DbCalls:
    """Runs `Records` calls in this pool's threads; one not answered within ``timeout``
    seconds is a 503 ``database_unavailable`` (`DATABASE_UNAVAILABLE`)."""

    def __init__(self, timeout: float, threads: int = THREADS) -> None:
        self.timeout = timeout
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None  # (made at the first call after a close)

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in a thread of the pool, bounded by ``timeout``."""
        return await self._bounded(functools.partial(fn, *args, **kwargs), None)

    async def holding(self, take: Callable[[], T | None], give_back: Callable[[T], None],
                      ) -> T | None:  # fmt: skip
        """``take()`` (a lock held on a connection, say), bounded as any call; taken only
        after the caller was answered 503, it is given back then (`give_back`, in the pool):
        a session lock taken late was held by no one, forever."""
        return await self._bounded(take, give_back)

    async def _bounded(self, fn: Callable[[], T], give_back: Callable[[Any], None] | None,
                       ) -> T:  # fmt: skip
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="edgeproxy-db")
        pool = self._pool
        call = asyncio.get_running_loop().run_in_executor(pool, fn)
        try:
            # (shielded: a late result is still there for `give_back`)
            return await asyncio.wait_for(asyncio.shield(call), self.timeout)
        except asyncio.CancelledError:  # (the caller went away: a client gone, say)
            _abandon(call, give_back, pool)
            raise
        except TimeoutError:
            _abandon(call, give_back, pool)
            name = getattr(getattr(fn, "func", fn), "__name__", "a call")
            _log.log(logging.WARNING, "database_timeout", "the database did not answer %s "
                     "within %g s: answering 503 database_unavailable", name, self.timeout)
            raise DATABASE_UNAVAILABLE from None

    def close(self) -> None:
        """Let the pool's threads go once their calls end (a hung one is not waited for)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _abandon(call: asyncio.Future[Any], give_back: Callable[[Any], None] | None,
             pool: ThreadPoolExecutor) -> None:
    """The caller no longer waits for ``call``: what it takes when it ends is given back."""
    if give_back is not None:
        call.add_done_callback(lambda done: _give_back(done, give_back, pool))
    else:
        call.add_done_callback(lambda done: done.cancelled() or done.exception())


def _give_back(done: asyncio.Future[Any], give_back: Callable[[Any], None],
               pool: ThreadPoolExecutor) -> None:
    if done.cancelled() or done.exception() is not None or done.result() is None:
        return
    with contextlib.suppress(RuntimeError):  # (the pool is shut: the process is stopping)
        pool.submit(give_back, done.result())
