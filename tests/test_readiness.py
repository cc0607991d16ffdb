"""/readyz says whether a node can serve, not only whether it started: the origin is not
ready while its database cannot be read (a PostgreSQL server stopped, an SQLite file
without its tables), and is again once it can. Real ``edgeproxy serve`` processes and a real
PostgreSQL cluster; the probe itself over a server thread."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import jwt

from edgeproxy.lifecycle import Lifecycle
from tests.postgres import postgres_cluster
from tests.servers import alive_app, free_port, serve, wait_healthy

SECRET = "readiness-test-jwt-secret-0123456789abcdef"


def test_a_probe_that_finds_a_problem_makes_readyz_503_with_its_words() -> None:
    problems: list[str | None] = [None]

    async def probe() -> str | None:
        return problems[-1]

    with serve(Lifecycle(alive_app, role="origin", probe=probe)) as srv:
        r = httpx.get(srv.url + "/readyz")
        assert (r.status_code, r.json()) == (200, {"status": "ready", "role": "origin"})
        problems.append("the database fails: OperationalError")
        r = httpx.get(srv.url + "/readyz")
        assert r.status_code == 503
        assert r.json() == {"error": "not_ready",
                            "message": "the database fails: OperationalError"}
        assert r.headers["cache-control"] == "no-store"
        assert httpx.head(srv.url + "/readyz").status_code == 503
        assert httpx.get(srv.url + "/healthz").text == "alive"  # liveness stays the app's
        problems.append(None)
        assert httpx.get(srv.url + "/readyz").status_code == 200


@contextmanager
def _origin(tmp_path: Path, database: str) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "EDGEPROXY_DATA_DIR": str(tmp_path / "var"),
           "EDGEPROXY_ORIGIN__PORT": str(port), "EDGEPROXY_ORIGIN__DATABASE": database,
           "EDGEPROXY_AUTH__JWT_SECRET": SECRET, "EDGEPROXY_LOG_LEVEL": "error"}
    proc = subprocess.Popen([sys.executable, "-m", "edgeproxy", "serve", "--role", "origin"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _readyz(url: str) -> httpx.Response:
    return httpx.get(url + "/readyz", timeout=10)


def test_origin_is_not_ready_while_postgresql_is_down(tmp_path: Path) -> None:
    with postgres_cluster() as pg, _origin(tmp_path, pg.new_database()) as url:
        r = _readyz(url)
        assert (r.status_code, r.json()) == (200, {"status": "ready", "role": "origin"})
        pg.stop()
        started = time.monotonic()
        r = _readyz(url)
        took = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "not_ready"
        assert "database" in r.json()["message"]
        assert "postgres" not in r.json()["message"]  # no URL, user or host in the answer
        assert took < 5  # within the probe's bound, not the driver's connect timeout
        assert httpx.get(url + "/healthz").status_code == 200  # alive, only not ready


def test_origin_started_before_postgresql_answers_503_then_serves(tmp_path: Path) -> None:
    """A PostgreSQL server not up yet when the origin starts (compose files start both at
    once) is waited for: the origin runs, says it is not ready, refuses what needs the
    database with a JSON 503, and serves once the server comes (it exited with a traceback)."""
    port = free_port()
    with _origin(tmp_path, f"postgresql://postgres@127.0.0.1:{port}/postgres") as url:
        assert httpx.get(url + "/healthz").status_code == 200
        r = _readyz(url)
        assert r.status_code == 503 and "database" in r.json()["message"], r.text
        token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, SECRET,
                           algorithm="HS256")  # fmt: skip
        auth = {"authorization": f"Bearer {token}"}
        ask = {"file_size": 96, "file_type": "image/jpeg", "file_hash": "a" * 64}
        r = httpx.post(url + "/v1/media/upload/request", json=ask, headers=auth)
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "database_unavailable"
        with postgres_cluster(port):
            deadline = time.monotonic() + 30
            while _readyz(url).status_code != 200:
                assert time.monotonic() < deadline, "the origin never opened the database"
                time.sleep(0.2)
            r = httpx.post(url + "/v1/media/upload/request", json=ask, headers=auth)
            assert r.status_code == 200, r.text
            assert r.json()["upload_url"]


def test_origin_on_sqlite_reads_its_database_for_readiness(tmp_path: Path) -> None:
    """The probe reads the uploads table, not ``SELECT 1`` (which SQLite answers without
    its file): a database without it (restored from a wrong file, say) is not ready."""
    db = tmp_path / "origin.sqlite3"
    with _origin(tmp_path, str(db)) as url:
        assert _readyz(url).status_code == 200
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE uploads RENAME TO uploads_away")
        r = _readyz(url)
        assert r.status_code == 503, r.text
        assert r.json() == {"error": "not_ready",  # (the driver's words go to the log only)
                            "message": "the database fails (the origin's log says how)"}
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE uploads_away RENAME TO uploads")
        assert _readyz(url).status_code == 200
