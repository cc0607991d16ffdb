"""The disk cache's SQLite index: opened under a lock, checked, set aside when unusable; and
how it keeps values (`AdoptingDisk`: a finished slice file is renamed into place, not copied).

An unusable index (garbage bytes, a truncated file, a directory in its place, a file the node
may not open) must neither stop a node from starting nor make it crash at every start. It is
renamed ``cache.db.corrupt-<time>`` (the latest such copy is kept, for a look; older ones are
deleted), its slice files are removed (nothing refers to them any more), and an empty index is
made. A volume too full to open the index is no corruption: that error goes to the caller,
which frees space or runs without a disk cache for a while.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import pickle
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import diskcache

from ..errors import StorageFault
from . import queries
from .checksum import INLINE_HEADER, file_name

log = logging.getLogger("edgeproxy.cache")


def _same(value: None) -> None:
    return value


# Python 3.11's sqlite3 sends each bytes and None parameter through its adapter protocol,
# which looks for ``__adapt__`` and ``__conform__`` and formats an AttributeError each time
# (~1 us a value; a miss binds a dozen): an adapter found at once hands the value on as it is.
# (Process-wide, and the identity: every other use of sqlite3 here binds the same values.)
sqlite3.register_adapter(bytes, bytes)
sqlite3.register_adapter(type(None), _same)

DBNAME: str = diskcache.core.DBNAME
LOCK = "index.lock"
CORRUPT_SUFFIX = ".corrupt-"
_SLICE_DIR = re.compile(r"[0-9a-f]{2}")  # where diskcache keeps value files
# SQLite's primary result codes that mean "this file cannot be our index": a damaged image,
# no database at all, or a file that may not be opened or written. An I/O error is not among
# them: the disk may come back, and the cache with it.
_UNUSABLE = frozenset({
    3,  # SQLITE_PERM
    8,  # SQLITE_READONLY
    11,  # SQLITE_CORRUPT
    14,  # SQLITE_CANTOPEN
    26,  # SQLITE_NOTADB
})
SQLITE_FULL = 13
REOPEN_INTERVAL = 5.0  # how often an index that could not be opened is tried again
# Errors of a read or write of the cache: the disk, the index, or an entry that no longer
# unpickles (damaged inside an intact index).
FAULTS = (sqlite3.Error, OSError, pickle.UnpicklingError, EOFError)

_C = TypeVar("_C")


def primary_code(exc: BaseException) -> int | None:
    """SQLite's primary result code of an error (None if it carries none)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_full(exc: BaseException) -> bool:
    """Whether an error means the volume is full."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return primary_code(exc) == SQLITE_FULL or "disk is full" in str(exc)


def is_unusable(exc: BaseException) -> bool:
    """Whether an error opening or checking the index means it must be set aside."""
    if isinstance(exc, sqlite3.DatabaseError):
        code = primary_code(exc)
        return code in _UNUSABLE or (code is None and not isinstance(exc, sqlite3.OperationalError))
    return isinstance(exc, IsADirectoryError | NotADirectoryError | PermissionError)


def fault_reason(exc: BaseException) -> str:
    """The ``reason`` label of a storage fault: ``no_space``, ``corrupt_index``, ``index``
    (another SQLite error) or ``io``."""
    if is_full(exc):
        return "no_space"
    if isinstance(exc, pickle.UnpicklingError | EOFError) or \
            (isinstance(exc, sqlite3.DatabaseError) and is_unusable(exc)):
        return "corrupt_index"
    return "index" if isinstance(exc, sqlite3.Error) else "io"


class Faulting(Protocol):
    """What the guards below report a storage fault to."""

    def fault(self, exc: BaseException) -> None: ...


_T = TypeVar("_T")


def reading(default: Any) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """A read that meets a storage fault answers ``default`` (not stored): the request then
    goes upstream, as a pass-through, instead of failing."""
    def wrap(method: Callable[..., _T]) -> Callable[..., _T]:
        @functools.wraps(method)
        def guarded(self: Faulting, *args: Any) -> _T:
            try:
                return method(self, *args)
            except FAULTS as exc:
                self.fault(exc)
                return default  # type: ignore[no-any-return]
        return guarded
    return wrap


def writing(method: Callable[..., _T]) -> Callable[..., _T]:
    """A write that meets a storage fault raises `StorageFault` (the caller stores nothing)."""
    @functools.wraps(method)
    def guarded(self: Faulting, *args: Any, **kwargs: Any) -> _T:
        try:
            return method(self, *args, **kwargs)
        except FAULTS as exc:
            self.fault(exc)
            raise StorageFault(f"the cache could not store: {exc}") from exc
    return guarded


class Unavailable:
    """Stands in for an index that could not be opened: a use tries ``open()`` again (at
    most every `REOPEN_INTERVAL`; ``opened(index)`` then puts the real one in place), and
    otherwise raises a storage fault, so the request passes through."""

    def __init__(self, open: Callable[[], Any], opened: Callable[[Any], None],
                 why: BaseException) -> None:
        self._open = open
        self._opened = opened
        self._why = why
        self._next = time.monotonic() + REOPEN_INTERVAL

    def _index(self) -> Any:
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + REOPEN_INTERVAL
            try:
                cache = self._open()
            except (sqlite3.Error, OSError) as exc:
                self._why = exc
            else:
                self._opened(cache)
                log.warning("the cache index is open again: caching resumes")
                return cache
        code = errno.ENOSPC if is_full(self._why) else errno.EIO
        raise OSError(code, f"the cache index is unavailable: {self._why}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index(), name)

    def __contains__(self, key: object) -> bool:
        return key in self._index()


@dataclass
class AdoptFile:
    """A finished temp file handed to the store, moved (not copied) into place when its index
    row is written (`AdoptingDisk.store`): until then it is a fill's temp file, which a crash
    leaves for the start-up sweep rather than as a slice file no row names."""

    path: Path
    size: int
    checksum: int
    placed: str | None = None  # its file name in the cache, once moved
    where: str | None = None  # and its whole path

    def discard(self) -> None:
        """Remove the file wherever it is (its index row was never written)."""
        with contextlib.suppress(OSError):
            os.unlink(self.path if self.where is None else self.where)


class AdoptingDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache storage that takes ownership of a finished temp file by renaming it, into
    one of 256 folders made when the index opens.

    diskcache's own names spread files over 65,536 two-level folders, made on first use and
    removed when emptied: in a fresh cache nearly every slice file made two, on the event
    loop, and under a stampede's writes each ``mkdir`` waited on the file system's journal
    (10 % of a worker's loop time, traced). Rows written under that scheme keep their names.
    """

    def __init__(self, directory: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(directory, *args, **kwargs)
        for sub in range(256):
            os.makedirs(os.path.join(directory, f"{sub:02x}"), exist_ok=True)

    def filename(self, key: Any = diskcache.core.UNKNOWN,
                 value: Any = diskcache.core.UNKNOWN) -> tuple[str, str]:
        name = os.urandom(16).hex()
        filename = os.path.join(name[:2], name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def remove(self, file_path: str) -> None:
        # (not diskcache's, which also removes the folder once it is empty)
        with contextlib.suppress(OSError):
            os.remove(os.path.join(self._directory, file_path))

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if isinstance(value, AdoptFile):
            if value.placed is None:  # (a transaction tried again places it once)
                # the checksum goes in the name the index records: one row holds both
                filename = file_name(self.filename(key, value)[0], value.checksum)
                where = os.path.join(self._directory, filename)
                _move(value.path, where)
                value.placed, value.where = filename, where
            return value.size, diskcache.core.MODE_BINARY, value.placed, None
        return super().store(value, read, key)


def _move(source: Path, target: str) -> None:
    """Rename ``source`` to ``target``, making its directory only when it is missing (someone
    removed it, maybe in another worker between our two calls: a few tries)."""
    for _attempt in range(3):
        try:
            os.replace(source, target)
            return
        except FileNotFoundError:
            if not os.path.exists(source):
                raise
            os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(source, target)


def new_cache(directory: Path, size_limit: int, disk: type[diskcache.Disk],
              inline_max: int) -> diskcache.Cache:
    """The diskcache index of a node's cache, as the store uses it: slices of fewer than
    ``inline_max`` bytes (and a fill's kept buffer of up to ``inline_max``) stay in their row."""
    return diskcache.Cache(
        str(directory), size_limit=size_limit, disk=disk,
        # least-recently-stored: a hit must not write to SQLite (LRU would, on every get)
        eviction_policy="least-recently-stored",
        # diskcache decides by the stored value, which is the sealed slice: its checksum
        # comes in front, and a slice near the bound must not spill to a file of sealed
        # bytes (read back as a slice file, it fails its check every time)
        disk_min_file_size=inline_max + INLINE_HEADER + 1,
        # eviction runs once per group commit (`GroupCommit.commit`), not in every set
        cull_limit=0, statistics=False, tag_index=True,
        # No fsync: the index is a cache's. WAL keeps it whole through a crash of the
        # process; after a crash of the machine it may lose its latest commits (those
        # objects are fetched again) or fail its check at the next start (it is then set
        # aside), and a slice whose bytes did not reach the disk fails its checksum when
        # read. With fsync, each WAL checkpoint stopped the event loop for ~5 ms (up to
        # 14): 130 ms per 1,000 sequential misses.
        sqlite_synchronous=0,
    )


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One worker process at a time checks, and perhaps sets aside, the index (and builds
    the key filter, `presence`)."""
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def open_checked(directory: Path, make: Callable[[], _C]) -> _C:
    """``make()`` the index in ``directory`` and check it (``PRAGMA quick_check``); an
    unusable one is set aside and made anew. Errors that are not the index's fault (a full
    volume, a locked database) are raised."""
    prepare_directory(directory)
    with locked(directory):
        try:
            return _checked(make())
        except (sqlite3.Error, OSError) as exc:
            if not is_unusable(exc):
                raise
            set_aside(directory, exc)
        return _checked(make())


def prepare_directory(directory: Path) -> None:
    """Make the cache directory; a file in its place is set aside first."""
    if directory.exists() and not directory.is_dir():
        aside = _aside_name(directory)
        try:
            directory.rename(aside)
        except FileNotFoundError:
            pass  # another worker moved it first
        else:
            log.error("%s was a file, not a directory: moved to %s, starting an empty cache",
                      directory, aside)
    directory.mkdir(parents=True, exist_ok=True)


def _checked(cache: _C) -> _C:
    try:
        rows = queries.sql(cache)("PRAGMA quick_check").fetchall()
    except BaseException:
        cache.close()  # type: ignore[attr-defined]
        raise
    if rows != [("ok",)]:
        cache.close()  # type: ignore[attr-defined]
        detail = "; ".join(str(r[0]) for r in rows[:3])
        raise sqlite3.DatabaseError(f"quick_check failed: {detail}")
    return cache


def _aside_name(path: Path) -> Path:
    return path.with_name(path.name + CORRUPT_SUFFIX + time.strftime("%Y%m%dT%H%M%S"))


def set_aside(directory: Path, why: BaseException) -> None:
    """Rename the index out of the way and remove the slice files it referred to."""
    for old in directory.glob(f"{DBNAME}*{CORRUPT_SUFFIX}*"):
        _remove(old)  # one set-aside copy is enough to look at; the volume is the cache's
    index = directory / DBNAME
    aside = _aside_name(index)
    for suffix in ("", "-wal"):
        path = directory / (DBNAME + suffix)
        if path.exists() or path.is_symlink():
            path.rename(aside.with_name(aside.name.replace(DBNAME, DBNAME + suffix, 1)))
    _remove(directory / (DBNAME + "-shm"))
    for child in directory.iterdir():
        if _SLICE_DIR.fullmatch(child.name) and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
    log.error("the cache index %s was unusable (%s): set aside as %s, starting an empty cache",
              index, why, aside.name)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
