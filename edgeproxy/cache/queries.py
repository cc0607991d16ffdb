"""Queries on the rows of the cache's SQLite index that diskcache has no call for: which keys
are present, the keys under a prefix, the least recently stored entries, and their deletion."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["IN_MAX", "delete_rows", "heads", "keys_since", "keys_with", "oldest", "present",
           "sql"]


def sql(cache: Any) -> Callable[..., sqlite3.Cursor]:
    """The statement executor of a diskcache index (for the queries it has no call for)."""
    execute: Callable[..., sqlite3.Cursor] = cache._sql
    return execute


IN_MAX = 500  # keys per "IN (...)" (SQLite's limit on parameters is 999 in old builds)


def present(execute: Callable[..., sqlite3.Cursor], keys: list[str]) -> set[str]:
    """Which of these (string) keys have a row in the index."""
    found: set[str] = set()
    for at in range(0, len(keys), IN_MAX):
        part = keys[at:at + IN_MAX]
        marks = ",".join("?" * len(part))
        found.update(row[0] for row in execute(
            f"SELECT key FROM Cache WHERE raw = 1 AND key IN ({marks})", part))
    return found


def heads(execute: Callable[..., sqlite3.Cursor], keys: list[str],
          size: int) -> list[tuple[str, str | None, bytes | None]]:
    """(key, file name, the first ``size`` bytes of an inline value) of those of these
    (string) keys that have a row in the index."""
    found: list[tuple[str, str | None, bytes | None]] = []
    for at in range(0, len(keys), IN_MAX):
        part = keys[at:at + IN_MAX]
        marks = ",".join("?" * len(part))
        found.extend(execute(f"SELECT key, filename, substr(value, 1, {int(size)}) FROM Cache"
                             f" WHERE raw = 1 AND key IN ({marks})", part))
    return found


def _prefix_range(prefix: str) -> tuple[str, str]:
    """The keys that start with ``prefix`` are those >= the first and < the second (its last
    character is not the largest there is)."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def keys_with(execute: Callable[..., sqlite3.Cursor], prefix: str,
              page: int = 1000) -> Iterator[str]:
    """The (string) keys that start with ``prefix``, in order, read a page at a time (keys
    stored or removed meanwhile may or may not be listed)."""
    (low, upper), op = _prefix_range(prefix), ">="
    while rows := execute(f"SELECT key FROM Cache WHERE key {op} ? AND key < ? ORDER BY key"
                          " LIMIT ?", (low, upper, page)).fetchall():
        yield from (row[0] for row in rows)
        low, op = rows[-1][0], ">"


def keys_since(execute: Callable[..., sqlite3.Cursor], prefix: str, since: float) -> list[str]:
    """The (string) keys that start with ``prefix`` of rows stored at or after ``since``
    (unix seconds; by the index on store_time)."""
    low, upper = _prefix_range(prefix)
    return [row[0] for row in execute("SELECT key FROM Cache WHERE store_time >= ? AND key >= ?"
                                      " AND key < ?", (since, low, upper))]


# Entries whose keys start with a prefix, least recently stored first: the eviction policy's
# own order (its index on store_time).
_OLDEST = ("SELECT rowid, filename, COALESCE(length(value), 0) FROM Cache"
           " WHERE key >= ? AND key < ? ORDER BY store_time LIMIT ?")


def oldest(cache: Any, prefix: str, limit: int = 64) -> list[tuple[int, str | None, int]]:
    """(rowid, file name or None, inline bytes) of the least recently stored entries whose
    keys start with ``prefix`` (its last character is not the largest there is)."""
    return list(sql(cache)(_OLDEST, (*_prefix_range(prefix), limit)).fetchall())


def delete_rows(cache: Any, rows: list[tuple[int, str | None, int]]) -> None:
    """Delete these rows in one transaction, each only if it still names the same file (a
    row stored anew meanwhile keeps its new file)."""
    with cache.transact():
        execute = sql(cache)
        for rowid, filename, _inline in rows:
            execute("DELETE FROM Cache WHERE rowid = ? AND filename IS ?", (rowid, filename))
