"""Origin metadata in a real PostgreSQL (a throwaway cluster of Debian's package): one schema
and one code path with SQLite, and two origin processes on different ports sharing rate
limits and quota exactly under concurrent requests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from edgeproxy.origin.auth import mint_token
from edgeproxy.origin.db import database_url
from edgeproxy.origin.limits import QuotaExceeded, RateLimited, UploadAllowance
from edgeproxy.origin.records import Records, UploadState
from tests.postgres import PostgresCluster, postgres_cluster
from tests.servers import free_port, wait_healthy

SECRET = "postgres-test-jwt-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresCluster]:
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def records(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Records]:
    if request.param == "sqlite":
        url = database_url("", tmp_path / "origin.sqlite3")
    else:
        url = database_url(request.getfixturevalue("pg").new_database(), tmp_path)
    db = Records(url)
    yield db
    db.close()


@pytest.mark.parametrize("media_id", ["m_\x00abc", "\ud800", "m_" + "a" * 65, "x", ""])
def test_an_id_no_upload_can_have_is_no_upload_on_either_engine(records: Records,
                                                                media_id: str) -> None:
    """A client's id with a NUL or a lone surrogate made PostgreSQL raise (a 500 at confirm,
    found from outside); an id of no media id's shape is no upload, on both engines."""
    assert records.get_upload(media_id) is None


def test_one_code_path_for_both_engines(records: Records) -> None:
    now = time.time()
    allowance = UploadAllowance(per_user_per_minute=2, per_conversation_per_minute=0,
                                quota=100)  # fmt: skip
    for i in range(2):
        records.create_upload(f"m_upload{i:04d}", file_type="image/jpeg", declared_size=40,
                              declared_sha256=str(i) * 64, expires_at=int(now) + 60,
                              staging_name=f"m_upload{i:04d}.part", owner="bob",
                              allowance=allowance, now=now + i)  # fmt: skip
    with pytest.raises(RateLimited) as limited:
        records.create_upload("m_upload0009", file_type="image/jpeg", declared_size=1,
                              declared_sha256="9" * 64, expires_at=int(now) + 60,
                              staging_name="x", owner="bob", allowance=allowance,
                              now=now + 2)  # fmt: skip
    assert limited.value.retry_after == 58  # the first upload leaves the window then
    with pytest.raises(QuotaExceeded):
        records.create_upload("m_upload0010", file_type="image/jpeg", declared_size=21,
                              declared_sha256="9" * 64, expires_at=int(now) + 60,
                              staging_name="x", owner="bob", allowance=allowance,
                              now=now + 61)  # fmt: skip
    records.record_progress("m_upload0000", 40, "0" * 64)
    assert records.get_upload("m_upload0000").state is UploadState.UPLOADED  # type: ignore[union-attr]
    assert records.commit_upload("m_upload0000", "0" * 64, 40, None) is not None
    # Only an unfinished upload commits (or fails): whichever worker gets there first wins.
    assert records.commit_upload("m_upload0000", "0" * 64, 40, "a" * 64) is None
    assert not records.mark_failed("m_upload0000", "terminated")
    # Later uploads of the same bytes: the first thumbnail wins (/thumb URLs are immutable).
    for i, thumb in ((2, "a"), (3, "b")):
        records.create_upload(f"m_upload{i:04d}", file_type="image/jpeg", declared_size=40,
                              declared_sha256="0" * 64, expires_at=int(now) + 60,
                              staging_name=f"m_upload{i:04d}.part", now=now)  # fmt: skip
        records.record_progress(f"m_upload{i:04d}", 40, "0" * 64)
        media = records.commit_upload(f"m_upload{i:04d}", "0" * 64, 40, thumb * 64)
        assert media is not None and media.thumb_sha256 == "a" * 64
    records.set_profile_photo("user", "c" * 64, "image/png", 3)
    records.set_profile_photo("user", "d" * 64, "image/webp", 4)
    photo = records.get_profile_photo("user")
    assert photo is not None and (photo.sha256, photo.size) == ("d" * 64, 4)
    assert [u.media_id for u in records.expired_uploads(now + 61)] == ["m_upload0001"]
    assert records.live_staging_names() == {"m_upload0001.part"}
    assert records.stats() == {"media_bytes": 40, "media_count": 1, "dedup_bytes_saved": 80,
                               "unfinished_uploads": 1, "cold_bytes": 0}  # fmt: skip
    assert records.stats(cold_before=time.time() + 1)["cold_bytes"] == 40


def _start_origin(tmp: Path, database: str, port: int,
                  **more: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **more, "EDGEPROXY_DATA_DIR": str(tmp / f"var-{port}"),
           "EDGEPROXY_ORIGIN__PORT": str(port), "EDGEPROXY_ORIGIN__DATABASE": database,
           "EDGEPROXY_ORIGIN__STORE": str(tmp / "shared-blobs"),
           "EDGEPROXY_AUTH__JWT_SECRET": SECRET, "EDGEPROXY_LOG_LEVEL": "warning",
           "EDGEPROXY_LIMITS__UPLOADS_PER_MINUTE_PER_USER": "7",
           "EDGEPROXY_LIMITS__UPLOADS_PER_MINUTE_PER_CONVERSATION": "3",
           "EDGEPROXY_LIMITS__STORAGE_QUOTA_PER_USER": "5000"}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "edgeproxy", "serve", "--role", "origin"],
                            env=env, stdout=subprocess.DEVNULL)  # fmt: skip


@pytest.fixture
def two_origins(tmp_path: Path, pg: PostgresCluster) -> Iterator[list[str]]:
    database = pg.new_database()
    ports = [free_port(), free_port()]
    procs = [_start_origin(tmp_path, database, port) for port in ports]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url, proc in zip(urls, procs, strict=True):
            wait_healthy(url, proc)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


def _burst(urls: list[str], bodies: list[tuple[str, dict[str, object]]]) -> Counter[int]:
    """Send every (user, body) request at once, alternating between the origins."""

    def one(i: int) -> int:
        user, body = bodies[i]
        r = httpx.post(urls[i % len(urls)] + "/v1/media/upload/request", json=body,
                       headers={"Authorization": "Bearer " + mint_token(SECRET, user)},
                       timeout=30)  # fmt: skip
        return r.status_code

    with ThreadPoolExecutor(len(bodies)) as pool:
        return Counter(pool.map(one, range(len(bodies))))


def _body(size: int, conversation: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"file_size": size, "file_type": "image/jpeg",
                               "file_hash": "ab" * 32}  # fmt: skip
    if conversation:
        body["conversation_id"] = conversation
    return body


def test_two_origins_share_rate_limits_and_quota_exactly(two_origins: list[str]) -> None:
    # 7 uploads per minute per user: exactly 7 of 16 concurrent requests pass, on both.
    assert _burst(two_origins, [("carol", _body(100))] * 16) == {200: 7, 429: 9}
    # A 5000-byte quota: exactly 5 uploads of 1000 bytes (the rate limit is not reached).
    assert _burst(two_origins, [("dave", _body(1000))] * 12) == {200: 5, 507: 7}
    # 3 per minute per conversation, whoever sends them.
    users = [(f"user{i}", _body(10, "chat-1")) for i in range(10)]
    assert _burst(two_origins, users) == {200: 3, 429: 7}


def test_a_database_gone_answers_503_with_retry_after_not_500(tmp_path: Path) -> None:
    """PostgreSQL stopped under a running origin: every call that needs it is a 503 JSON
    with Retry-After (a dependency down, not a bug; it was a 500), quickly."""
    port = free_port()
    with postgres_cluster() as cluster:
        proc = _start_origin(tmp_path, cluster.new_database(), port)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            auth = {"Authorization": "Bearer " + mint_token(SECRET, "erin")}
            ok = httpx.post(url + "/v1/media/upload/request", json=_body(100), headers=auth,
                            timeout=30)
            assert ok.status_code == 200
            cluster.stop()
            for attempt in range(3):
                started = time.monotonic()
                r = httpx.post(url + "/v1/media/upload/request", json=_body(100),
                               headers=auth, timeout=30)
                assert r.status_code == 503, (attempt, r.status_code, r.text)
                assert r.json()["error"] == "database_unavailable"
                assert r.headers["retry-after"] == "5"
                assert r.headers["cache-control"] == "no-store"
                assert time.monotonic() - started < 10
            media_id = ok.json()["media_id"]
            head = httpx.head(ok.json()["upload_url"], timeout=30)  # the upload's offset
            assert head.status_code == 503 and head.headers["retry-after"] == "5"
            confirm = httpx.post(url + "/v1/media/upload/confirm", headers=auth, timeout=30,
                                 json={"media_id": media_id, "file_size": 100,
                                       "file_sha256": "ab" * 32})
            assert confirm.status_code == 503, confirm.text
            assert confirm.json()["error"] == "database_unavailable"
            # the scrape still works, less the database's totals (it was a 503: every
            # counter dark, the node seen down, while it answered clean 503s; found from
            # outside), and readiness says why without naming the driver's error class
            metrics = httpx.get(url + "/metrics", timeout=30)
            assert metrics.status_code == 200, metrics.text
            assert 'edgeproxy_origin_uploads_total{result="created"} 1.0' in metrics.text
            assert not any(line.startswith("edgeproxy_origin_stored_blobs ")
                           for line in metrics.text.splitlines())  # (its help line stays)
            ready = httpx.get(url + "/readyz", timeout=30)
            assert ready.status_code == 503
            assert "Error" not in ready.json()["message"], ready.text
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_a_database_that_hangs_answers_503_in_its_timeout_not_never(tmp_path: Path) -> None:
    """PostgreSQL hung with its connections open (SIGSTOP: a server that stops answering, a
    host cut off): calls on pooled connections waited with no end (found from outside: none
    answered in 120 s), and held asyncio's default threads meanwhile. Each is a 503 within
    ``origin.database_timeout``; the scrape goes on without the totals; once the database
    answers again, so does the origin."""
    port = free_port()
    with postgres_cluster() as cluster:
        proc = _start_origin(tmp_path, cluster.new_database(), port,
                             EDGEPROXY_ORIGIN__DATABASE_TIMEOUT="1s")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            auth = {"Authorization": "Bearer " + mint_token(SECRET, "frank")}

            def upload_request() -> tuple[int, str, float]:
                started = time.monotonic()
                r = httpx.post(url + "/v1/media/upload/request", json=_body(100),
                               headers=auth, timeout=60)
                return r.status_code, r.text, time.monotonic() - started

            assert upload_request()[0] == 200  # (the pool holds a connection now)
            with cluster.frozen(), ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda _: upload_request(), range(4)))
                metrics = httpx.get(url + "/metrics", timeout=60)
            for status, text, took in answers:
                assert status == 503 and "database_unavailable" in text, (status, text)
                assert took < 10, took
            assert metrics.status_code == 200, metrics.text
            assert not any(line.startswith("edgeproxy_origin_stored_blobs ")
                           for line in metrics.text.splitlines())
            deadline = time.monotonic() + 20  # (the hung calls end once it answers)
            while (status := upload_request()[0]) != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert status == 200
        finally:
            proc.terminate()
            proc.wait(timeout=10)
