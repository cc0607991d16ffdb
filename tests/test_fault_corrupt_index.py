"""An unusable cache index never stops a node, and never makes it crash at every start: the
edge (a real ``edgeproxy serve`` process) sets the index aside as ``cache.db.corrupt-<time>``,
drops the slice files it referred to, starts an empty cache with a log line, and serves the
origin's exact bytes."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from edgeproxy.cache import create_app, index
from edgeproxy.config import load_config
from tests.nodes import NodeProcess
from tests.origins import TestOrigin, pattern
from tests.servers import free_port, serve

OBJECTS = {f"/o/{i}": pattern(20_000 + i, seed=i) for i in range(12)}  # inside the index
OBJECTS["/big"] = pattern(3 * 1024**2 + 5, seed=99)  # slice files


def _garbage(db: Path) -> None:
    db.write_bytes(os.urandom(256 * 1024))


def _truncated(db: Path) -> None:
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 2)


def _damaged_pages(db: Path) -> None:
    data = bytearray(db.read_bytes())
    for offset in range(8192, len(data), 7 * 4096):  # the header stays valid
        data[offset:offset + 64] = os.urandom(64)
    db.write_bytes(bytes(data))


def _directory(db: Path) -> None:
    db.unlink()
    db.mkdir()
    (db / "something").write_text("not an index")


def _cache_dir_is_a_file(db: Path) -> None:
    shutil.rmtree(db.parent)
    db.parent.write_text("not a directory")


DAMAGES: dict[str, Callable[[Path], None]] = {
    "garbage": _garbage, "truncated": _truncated, "damaged_pages": _damaged_pages,
    "directory": _directory, "cache_dir_is_a_file": _cache_dir_is_a_file,
}


@pytest.fixture
def origin() -> Iterator[str]:
    app = TestOrigin()
    for path, body in OBJECTS.items():
        app.put(path, body, headers={"cache-control": "max-age=600"})
    with serve(app) as server:
        yield server.url


def _fill_cache(data_dir: Path, upstream: str) -> list[Path]:
    """Cache every object through an in-process edge; the slice files it stored."""
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(data_dir)})
    with serve(create_app(config, "edge", upstream=upstream)) as edge, httpx.Client() as http:
        for path, body in OBJECTS.items():
            assert http.get(edge.url + path).content == body
        assert http.get(edge.url + "/big").headers["x-cache"] == "HIT from edge"
    cache_dir = data_dir / "edge" / "cache"
    with contextlib.closing(sqlite3.connect(cache_dir / "cache.db")) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file now
    files = list(cache_dir.glob("[0-9a-f][0-9a-f]/*.val"))
    assert files
    return files


def _edge(tmp_path: Path, upstream: str, workers: int = 1) -> NodeProcess:
    port = free_port()
    config = tmp_path / "edge.yaml"
    config.write_text(f"data_dir: {tmp_path / 'var'}\nlog_level: warning\n"
                      f"edge: {{port: {port}, workers: {workers}}}\n")
    return NodeProcess(config, "edge", f"http://127.0.0.1:{port}", upstream=upstream)


def _serves_exact_bytes(url: str) -> None:
    with httpx.Client(timeout=30) as http:
        for path, body in OBJECTS.items():
            r = http.get(url + path)
            assert r.status_code == 200 and r.content == body, path
        r = http.get(url + "/big", headers={"range": "bytes=1048570-1048589"})
        assert r.status_code == 206 and r.content == OBJECTS["/big"][1048570:1048590]
        assert http.get(url + "/big").headers["x-cache"] == "HIT from edge"  # caching again


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_an_unusable_index_is_set_aside_at_start(tmp_path: Path, origin: str,
                                                 damage: Callable[[Path], None]) -> None:
    data_dir = tmp_path / "var"
    old_files = _fill_cache(data_dir, origin)
    cache_dir = data_dir / "edge" / "cache"
    damage(cache_dir / "cache.db")
    with _edge(tmp_path, origin) as edge:
        _serves_exact_bytes(edge.url)
        assert "starting an empty cache" in edge.stderr()
    aside = list(cache_dir.glob("cache.db.corrupt-*")) + \
        list(data_dir.joinpath("edge").glob("cache.corrupt-*"))
    assert len(aside) == 1
    assert not any(f.exists() for f in old_files)  # nothing refers to them any more


def test_two_workers_set_the_index_aside_once_and_a_restart_keeps_the_new_one(
        tmp_path: Path, origin: str) -> None:
    data_dir = tmp_path / "var"
    _fill_cache(data_dir, origin)
    cache_dir = data_dir / "edge" / "cache"
    _garbage(cache_dir / "cache.db")
    edge = _edge(tmp_path, origin, workers=2)
    with edge:
        _serves_exact_bytes(edge.url)
    assert edge.stderr().count("starting an empty cache") == 1
    assert len(list(cache_dir.glob("cache.db.corrupt-*"))) == 1
    with edge, httpx.Client(timeout=30) as http:  # the new index is sound: kept, and hit
        assert http.get(edge.url + "/big").headers["x-cache"] == "HIT from edge"
    assert edge.stderr().count("starting an empty cache") == 1


# SQLite result codes (https://www.sqlite.org/rescode.html) and what a node does at start.
@pytest.mark.parametrize(
    ("error", "code", "unusable", "reason"),
    [(sqlite3.DatabaseError, 26, True, "corrupt_index"),  # SQLITE_NOTADB: not a database
     (sqlite3.DatabaseError, 11, True, "corrupt_index"),  # SQLITE_CORRUPT: damaged
     (sqlite3.OperationalError, 14, True, "corrupt_index"),  # SQLITE_CANTOPEN: a directory...
     (sqlite3.OperationalError, 3, True, "corrupt_index"),  # SQLITE_PERM: no permission
     (sqlite3.OperationalError, 8, True, "corrupt_index"),  # SQLITE_READONLY
     (sqlite3.OperationalError, 13, False, "no_space"),  # SQLITE_FULL: free space instead
     (sqlite3.OperationalError, 5, False, "index"),  # SQLITE_BUSY: another process writes
     (sqlite3.OperationalError, 10, False, "index"),  # SQLITE_IOERR: the disk may come back
     (sqlite3.OperationalError, 266, False, "index")],  # SQLITE_IOERR_READ (extended)
)  # fmt: skip
def test_which_errors_set_an_index_aside(error: type[sqlite3.Error], code: int, unusable: bool,
                                         reason: str) -> None:
    exc = error("…")
    exc.sqlite_errorcode = code
    assert index.is_unusable(exc) is unusable
    assert index.fault_reason(exc) == reason


def test_a_volume_error_is_no_corruption() -> None:
    assert index.fault_reason(OSError(errno.ENOSPC, "full")) == "no_space"
    assert index.fault_reason(OSError(errno.EIO, "i/o")) == "io"
    assert not index.is_unusable(OSError(errno.EIO, "i/o"))


def test_what_a_machine_crash_leaves_of_an_index_without_fsync_costs_fetches_only(
        tmp_path: Path, origin: str) -> None:
    """The index does not fsync (`index.new_cache`: it is a cache's). A crash of the machine
    may then leave it without its latest commits, and slice files without the bytes that had
    not reached the disk: the node starts and serves the origin's exact bytes."""
    data_dir = tmp_path / "var"
    files = _fill_cache(data_dir, origin)
    cache_dir = data_dir / "edge" / "cache"
    with contextlib.closing(sqlite3.connect(cache_dir / "cache.db")) as db:
        setting = db.execute("SELECT value FROM Settings WHERE key = 'sqlite_synchronous'")
        assert setting.fetchone() == (0,)  # no fsync at commit or checkpoint
        with db:
            db.execute("DELETE FROM Cache WHERE rowid % 2 = 0")  # commits lost
    for path in files:  # bytes lost: what had reached the disk is a prefix
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size // 2)
    with _edge(tmp_path, origin) as edge:
        _serves_exact_bytes(edge.url)
        _serves_exact_bytes(edge.url)  # (stored again)
