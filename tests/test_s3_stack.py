"""The object-store deployment end to end (moto server + a throwaway PostgreSQL): upload
straight into the bucket, download through edge → shield → origin; and a shield's upstream
that is the bucket itself (`S3Transport`), with ranges, validators and 404s."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from PIL import Image

from edgeproxy import cache, origin
from edgeproxy.cache.s3transport import S3Transport, object_key
from edgeproxy.cache.transport import BeReq, Transport, transport_for
from edgeproxy.client import MediaClient
from edgeproxy.config import S3Config, load_config
from edgeproxy.origin.auth import mint_token
from edgeproxy.origin.db import _advisory_key
from edgeproxy.s3 import S3Location, S3Settings
from tests.foreign import ForeignOrigin
from tests.objectstore import S3Endpoint, moto_s3
from tests.postgres import PostgresCluster, postgres_cluster
from tests.servers import free_port, serve
from tests.test_origin import make_blob, run_origin, sha


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresCluster]:
    with postgres_cluster() as cluster:
        yield cluster


def test_upload_download_with_s3_store_and_postgresql(tmp_path: Path, s3: S3Endpoint,
                                                      pg: PostgresCluster) -> None:  # fmt: skip
    bucket = s3.new_bucket()
    ports = {role: free_port() for role in ("origin", "shield", "edge")}
    config = load_config(None, env={
        **s3.env(),
        "EDGEPROXY_DATA_DIR": str(tmp_path / "var"),
        "EDGEPROXY_PUBLIC_BASE_URL": f"http://127.0.0.1:{ports['edge']}",
        "EDGEPROXY_ORIGIN__PORT": str(ports["origin"]),
        "EDGEPROXY_ORIGIN__STORE": f"s3://{bucket}/media",
        "EDGEPROXY_ORIGIN__DATABASE": pg.new_database(),
    })  # fmt: skip
    image = tmp_path / "photo.png"
    Image.frombytes("RGB", (400, 300), os.urandom(400 * 300 * 3)).save(image)
    edge_app = cache.create_app(config, "edge", upstream=f"http://127.0.0.1:{ports['shield']}")
    token = mint_token(config.auth.jwt_secret, "alice")
    with serve(origin.create_app(config), ports["origin"]) as o, \
            serve(cache.create_app(config, "shield", upstream=o.url), ports["shield"]), \
            serve(edge_app, ports["edge"]) as e, \
            MediaClient(o.url, token=token) as client:  # fmt: skip
        payload = client.upload(image)
        enc = payload["file_enc_sha256"]
        # The bytes went straight to the bucket; no origin-side staging file was written.
        assert not list((tmp_path / "var" / "origin" / "staging").iterdir())
        keys = s3.keys(bucket)
        assert f"media/blobs/{enc}" in keys and f"media/thumbs/{enc}" in keys
        assert not [k for k in keys if "/staging/" in k]
        assert payload["media_url"] == f"{e.url}/v/t1/{enc}"

        results = []
        for name in ("first", "second"):
            out = tmp_path / f"{name}.png"
            results.append(client.download(payload, out).x_cache)
            assert out.read_bytes() == image.read_bytes()
        assert results == ["MISS from edge, MISS from shield", "HIT from edge"]
        r = httpx.get(payload["media_url"], headers={"range": "bytes=0-15"})
        assert r.status_code == 206 and r.content[:8] == b"WAMEDIA1"
        thumb = httpx.get(payload["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.content


@pytest.fixture
def stored(s3: S3Endpoint) -> tuple[str, bytes]:
    """A bucket holding one content-addressed blob under the prefix ``p``."""
    bucket = s3.new_bucket()
    blob = os.urandom(100_000)
    s3.client().put_object(Bucket=bucket, Key=f"p/blobs/{hashlib.sha256(blob).hexdigest()}",
                           Body=blob)  # fmt: skip
    return bucket, blob


async def _get(transport: Transport, path: str, method: str = "GET",
               **headers: str) -> tuple[int, dict[bytes, bytes], bytes]:  # fmt: skip
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    response = await transport.send(BeReq(method, path, raw, path))
    try:
        body = b"".join([chunk async for chunk in response.aiter_body()])
    finally:
        await response.aclose()
    return response.status, dict(response.headers), body


def test_s3_transport_maps_paths_ranges_validators_and_404(
        s3: S3Endpoint, stored: tuple[str, bytes]) -> None:  # fmt: skip
    bucket, blob = stored
    sha = hashlib.sha256(blob).hexdigest()
    transport = transport_for(f"s3://{bucket}/p", timeout=5, s3=s3.config())
    assert isinstance(transport, S3Transport)

    async def scenario() -> None:
        try:
            status, headers, body = await _get(transport, f"/v/t1/{sha}?exp=1&sig=x",
                                               range="bytes=1000-1999")  # fmt: skip
            assert (status, body) == (206, blob[1000:2000])
            assert headers[b"content-range"] == f"bytes 1000-1999/{len(blob)}".encode()
            etag = headers[b"etag"].decode()
            status, headers, body = await _get(transport, f"/v/t1/{sha}", "HEAD")
            assert (status, body, headers[b"content-length"]) == (200, b"", b"100000")
            status, _, _ = await _get(transport, f"/v/t1/{sha}", if_none_match=etag)
            assert status == 304
            status, _, body = await _get(transport, f"/v/t1/{sha}", range="bytes=-10",
                                         if_range='"another"')  # fmt: skip
            assert (status, body) == (200, blob)  # If-Range mismatch: the whole object
            status, _, body = await _get(transport, f"/v/t1/{sha}", range="bytes=-10",
                                         if_range=etag)  # fmt: skip
            assert (status, body) == (206, blob[-10:])
            status, headers, body = await _get(transport, "/v/t1/" + "0" * 64)
            assert status == 404 and b"not_found" in body
            status, _, _ = await _get(transport, f"/v/t1/{sha}", "DELETE")
            assert status == 405
        finally:
            await transport.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize(("target", "key"), [
    ("/v/t1/" + "a" * 64, "pre/blobs/" + "a" * 64),
    ("/v/t1/" + "a" * 64 + "/thumb?exp=1", "pre/thumbs/" + "a" * 64),
    ("/v/t1/not-a-hash", "pre/v/t1/not-a-hash"),
    ("/static/app.js?v=3", "pre/static/app.js"),
    # RFC 3986 §2.1: the path's octets, decoded (`/a%20b` names `a b`, not `a%20b`)
    ("/report%20b.txt", "pre/report b.txt"),
    ("/report%2520b.txt", "pre/report%20b.txt"),
    ("/r%C3%A9sum%C3%A9.txt", "pre/résumé.txt"),
    ("/a%2Bb%3Bc", "pre/a+b;c"),
    ("/bad%FF", None),  # no UTF-8: no key is named so
])  # fmt: skip
def test_object_key_mapping(target: str, key: str | None) -> None:
    assert object_key(S3Location.parse("s3://bucket/pre/"), target) == key


def test_a_bucket_behind_a_shield_names_keys_by_their_decoded_path(
        s3: S3Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two objects whose keys differ by a percent-encoding (``report b.txt`` and the literal
    ``report%20b.txt``), and keys with other octets: each path is answered with its own
    object (``/report%20b.txt`` was answered with the other one, a complete wrong body).
    A missing key is a negative answer kept for ``negative_ttl``; a range of an empty object
    is answered by the node as for any empty object (416 ``bytes */0``, or the whole for a
    suffix), not with S3's 416 without Content-Range and its XML."""
    bucket = s3.new_bucket()
    client = s3.client()
    objects = {"p/report b.txt": b"with a space", "p/report%20b.txt": b"with a percent",
               "p/résumé.txt": b"accented", "p/a+b;c": b"plus and semicolon",
               "p/empty.bin": b""}
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    _bucket_env(s3, monkeypatch)
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path / "var")})
    with serve(cache.create_app(config, "shield", upstream=f"s3://{bucket}/p")) as shield:
        for path, body in {"/report%20b.txt": b"with a space",
                           "/report%2520b.txt": b"with a percent",
                           "/r%C3%A9sum%C3%A9.txt": b"accented",
                           "/a%2Bb%3Bc": b"plus and semicolon"}.items():
            r = httpx.get(shield.url + path)
            assert (r.status_code, r.content) == (200, body), path
        empty = httpx.get(shield.url + "/empty.bin", headers={"range": "bytes=0-0"})
        assert (empty.status_code, empty.headers["content-range"]) == (416, "bytes */0")
        empty = httpx.get(shield.url + "/empty.bin", headers={"range": "bytes=-5"})
        assert (empty.status_code, empty.content) == (200, b"")
        for _ in range(2):
            missing = httpx.get(shield.url + "/nothing-here.txt")
            assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        assert missing.headers["x-cache"] == "HIT from shield"  # a negative answer, kept


def _bucket_env(s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """The AWS variables a node builds its bucket transport from, pointing at ``s3``."""
    settings = s3.settings()
    assert settings.credentials is not None
    for name, value in {"AWS_ENDPOINT_URL": s3.url, "AWS_REGION": "us-east-1",
                        "AWS_ACCESS_KEY_ID": settings.credentials.access_key,
                        "AWS_SECRET_ACCESS_KEY": settings.credentials.secret_key}.items():
        monkeypatch.setenv(name, value)


def test_edge_shield_bucket_with_ranges(s3: S3Endpoint, stored: tuple[str, bytes],
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shield whose upstream is the bucket: no origin on the download path."""
    bucket, blob = stored
    sha = hashlib.sha256(blob).hexdigest()
    # The node builds its transport from the upstream URL; settings from the AWS variables.
    _bucket_env(s3, monkeypatch)
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path / "var")})
    with serve(cache.create_app(config, "shield", upstream=f"s3://{bucket}/p")) as shield, \
            serve(cache.create_app(config, "edge", upstream=shield.url)) as edge:  # fmt: skip
        url = f"{edge.url}/v/t1/{sha}"
        r = httpx.get(url, headers={"range": "bytes=70000-70099"})
        assert r.status_code == 206 and r.content == blob[70000:70100]
        assert r.headers["content-range"] == f"bytes 70000-70099/{len(blob)}"
        assert r.headers["x-cache"] == "MISS from edge, MISS from shield"
        r = httpx.get(url)
        assert r.status_code == 200 and r.content == blob
        r = httpx.get(url, headers={"range": "bytes=-100"})
        assert r.status_code == 206 and r.content == blob[-100:]
        assert r.headers["x-cache"].startswith("HIT from edge")
        r = httpx.get(f"{edge.url}/v/t1/{'0' * 64}")
        assert r.status_code == 404


def test_replica_falls_back_to_the_primary_for_objects_not_yet_replicated(
        s3: S3Endpoint, stored: tuple[str, bytes]) -> None:  # fmt: skip
    primary, blob = stored
    replica = s3.new_bucket()
    sha = hashlib.sha256(blob).hexdigest()
    replicated = os.urandom(1000)
    rsha = hashlib.sha256(replicated).hexdigest()
    s3.client().put_object(Bucket=replica, Key=f"r/blobs/{rsha}", Body=replicated)
    transport = transport_for(f"s3://{replica}/r,s3://{primary}/p", timeout=5, s3=s3.config())

    async def scenario() -> None:
        try:
            status, _, body = await _get(transport, f"/v/t1/{rsha}")  # from the replica
            assert (status, body) == (200, replicated)
            status, _, body = await _get(transport, f"/v/t1/{sha}", range="bytes=0-9")
            assert (status, body) == (206, blob[:10])  # not replicated yet: the primary
            status, _, _ = await _get(transport, "/v/t1/" + "1" * 64)
            assert status == 404  # in neither
        finally:
            await transport.aclose()

    asyncio.run(scenario())


def _advisory_lock_held(database: str, name: str) -> bool:
    """Whether a session holds the origin's advisory lock on ``name`` (`Database.try_lock`):
    pg_locks shows a bigint key as its high and low 32 bits."""
    key = _advisory_key(name)
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                           "granted AND classid = %s AND objid = %s AND objsubid = 1",
                           ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)).fetchone()
    return row is not None and row[0] > 0


def test_two_origins_never_write_one_upload_at_once(tmp_path: Path, s3: S3Endpoint,
                                                    pg: PostgresCluster) -> None:  # fmt: skip
    """Resumable uploads live in the bucket, so any origin may take the next request; the
    database's advisory lock keeps two from appending to one upload together."""
    env = {**s3.env(), "EDGEPROXY_ORIGIN__STORE": f"s3://{s3.new_bucket()}/m",
           "EDGEPROXY_ORIGIN__DATABASE": pg.new_database()}
    blob = make_blob(4096)
    started, release = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield blob[:1000]
        started.set()
        release.wait(10)
        yield blob[1000:]

    with run_origin(tmp_path / "a", env=env) as a, run_origin(tmp_path / "b", env=env) as b:
        ticket = a.request(blob, upload_method="resumable")
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(a.put, ticket["upload_url"], slow_body(),
                                headers={"Content-Length": str(len(blob))})
            assert started.wait(10)
            # the first body's bytes are being written under the lock: b comes once a holds
            # it (a fixed 0.2 s was not always enough on a loaded machine: b got in first)
            deadline = time.monotonic() + 10
            while not _advisory_lock_held(env["EDGEPROXY_ORIGIN__DATABASE"],
                                          f"upload:{ticket['media_id']}"):
                assert time.monotonic() < deadline, "the first PUT never took the upload's lock"
                time.sleep(0.02)
            r = b.put(ticket["upload_url"], blob)
            assert r.status_code == 409 and r.json()["error"] == "upload_in_progress"
            release.set()
            assert first.result(timeout=20).json()["complete"] is True
        assert b.confirm(ticket["media_id"], sha(blob)).status_code == 200
        assert b.http.get(f"/v/t1/{sha(blob)}").content == blob


@pytest.mark.parametrize(("status", "code", "want"), [
    (403, "AccessDenied", 404),            # a missing key, to a caller without s3:ListBucket
    (404, "NoSuchKey", 404),
    (403, "SignatureDoesNotMatch", 502),   # the node's credentials: not the client's business
    (403, "InvalidAccessKeyId", 502),
    (500, "InternalError", 502),
    (503, "SlowDown", 502),
])  # fmt: skip
def test_bucket_refusals_are_404_or_the_nodes_own_502(
        foreign: ForeignOrigin, tmp_path: Path, status: int, code: str, want: int) -> None:
    """S3's error documents never reach clients (they name request ids and hosts): a missing
    key is 404, anything else the bucket refuses or fails is a 502 in JSON, logged."""
    key, secret = tmp_path / "key", tmp_path / "secret"
    key.write_text("AKIDEXAMPLE\n")
    secret.write_text("not-a-real-secret\n")
    settings = S3Settings.resolve(S3Config(endpoint=foreign.url, region="us-east-1",
                                           path_style=True, access_key_id_file=str(key),
                                           secret_access_key_file=str(secret)), env={})
    xml = (f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>no</Message>"
           "<RequestId>R1</RequestId><HostId>H1</HostId></Error>").encode()
    foreign.route("/b/p/some/object.bin", status=status, body=xml,
                  headers=[("Content-Type", "application/xml")])
    transport = S3Transport("s3://b/p", settings, timeout=5)

    async def scenario() -> tuple[int, dict[bytes, bytes], bytes]:
        try:
            return await _get(transport, "/some/object.bin")
        finally:
            await transport.aclose()

    got, headers, body = asyncio.run(scenario())
    assert got == want
    assert b"RequestId" not in body and b"<Error>" not in body
    assert headers[b"content-type"] == b"application/json"


def slow_promote(direct: Any) -> tuple[threading.Event, Any]:
    """Make confirms that ``direct`` (an origin's S3 store) serves pause before copying the
    staged object into place; the event is set once one is there."""
    inside, real = threading.Event(), direct.promote

    async def promote(media_id: str, sha256: str) -> bool:
        inside.set()
        await asyncio.sleep(1.0)  # inside the confirm, with the upload held
        return bool(await real(media_id, sha256))

    direct.promote = promote
    return inside, real


def test_two_origins_confirming_one_upload_answer_the_same_200(
        tmp_path: Path, s3: S3Endpoint, pg: PostgresCluster) -> None:  # fmt: skip
    """A client retrying a confirm that timed out reaches another origin (or worker) while the
    first is still copying the staged object into place. Was (fuzz4 §2, before 0a215ad):
    confirm held only its process's lock, so the second copied staging/<id> the first had
    just deleted: 502 (CopyObject NoSuchKey); a DELETE alongside answered 204 as well. Both
    now take the database's lock on the upload: the second waits and answers the same 200,
    a DELETE meanwhile is 409."""
    env = {**s3.env(), "EDGEPROXY_ORIGIN__STORE": f"s3://{s3.new_bucket()}/m",
           "EDGEPROXY_ORIGIN__DATABASE": pg.new_database()}
    with run_origin(tmp_path / "a", env=env) as a, run_origin(tmp_path / "b", env=env) as b:
        for method in ("direct", "resumable"):
            blob = make_blob(4096)
            ticket = a.request(blob, upload_method=method)
            if method == "direct":
                r = httpx.put(ticket["upload_url"], content=blob,
                              headers=ticket["upload_headers"])  # fmt: skip
            else:
                r = a.put(ticket["upload_url"], blob)
            assert r.status_code == 200, r.text
            direct = a.app.state.origin.direct
            inside, real = slow_promote(direct)
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(a.confirm, ticket["media_id"], sha(blob))
                assert inside.wait(10)
                if method == "resumable":
                    path = httpx.URL(ticket["upload_url"]).raw_path.decode()
                    r = b.http.delete(path)
                    assert r.status_code == 409 and r.json()["error"] == "upload_in_progress"
                second = b.confirm(ticket["media_id"], sha(blob))
                answer = first.result(timeout=30)
            direct.promote = real
            assert answer.status_code == 200, answer.text
            assert second.status_code == 200, second.text
            assert second.json() == answer.json()
            assert b.http.get(f"/v/t1/{sha(blob)}").content == blob


def test_a_bucket_gone_is_the_stores_failure_not_a_missing_blob(tmp_path: Path,
                                                                s3: S3Endpoint) -> None:
    """S3 answers a HEAD of a deleted (or misnamed) bucket with a bare 404, as for a missing
    key: a committed blob was said missing (404, which edges remember) and a fully uploaded
    one not begun (found from outside). The bucket is asked after: a 502, as for any other
    failure of the store; a key really missing is still 404."""
    bucket = s3.new_bucket()
    env = {**s3.env(), "EDGEPROXY_ORIGIN__STORE": f"s3://{bucket}/m"}
    blob = make_blob(8)
    with run_origin(tmp_path / "o", env=env) as origin:
        ticket = origin.request(blob, upload_method="resumable")
        assert origin.put(ticket["upload_url"], blob).status_code == 200
        done = origin.confirm(ticket["media_id"], sha(blob))
        assert done.status_code == 200, done.text
        path = httpx.URL(done.json()["media_url"]).path
        assert origin.http.get(path).content == blob
        missing = origin.http.get("/v/t1/" + "2" * 64)
        assert missing.status_code == 404  # (not committed: the database says so)
        client = s3.client()
        for key in s3.keys(bucket):
            client.delete_object(Bucket=bucket, Key=key)
        client.delete_bucket(Bucket=bucket)
        for method in ("GET", "HEAD"):
            r = origin.http.request(method, path)
            assert r.status_code == 502, (method, r.status_code, r.text)
        assert origin.http.get(path).json()["error"] == "bad_gateway"
