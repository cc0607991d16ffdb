"""Who may do what: bearer JWTs (HS256, RS256), ownership (403), type and size limits (415,
413), rate limits (429 + Retry-After) and the storage quota (507) — each refusal with its status
and JSON body, nothing stored, and the limits exact under concurrent requests, also when two
origin processes share one database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edgeproxy import crypto
from edgeproxy.config import DEV_JWT_SECRET
from edgeproxy.origin.auth import mint_token
from tests.test_origin import (
    Clock,
    Origin,
    assert_not_served,
    error_of,
    make_blob,
    run_origin,
    sha,
)

MiB = 1024**2


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Origin]:
    with run_origin(tmp_path) as o:
        yield o


def request_body(size: int = 96, file_type: str = "image/jpeg", **extra: Any) -> dict[str, Any]:
    return {"file_size": size, "file_type": file_type, "file_hash": "a" * 64, **extra}


def no_uploads_recorded(o: Origin) -> bool:
    return 'edgeproxy_origin_uploads_total{result="created"}' not in o.http.get("/metrics").text


def metric(o: Origin, line_start: str) -> float:
    for line in o.http.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- authentication --------------------------------------------------------------------------


def _token(**claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": "alice", "exp": now + 600, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, DEV_JWT_SECRET,
                      algorithm="HS256")  # fmt: skip


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "missing_token"),
        ("Basic YWxpY2U6cHc=", "malformed_token"),
        ("Bearer", "malformed_token"),
        ("Bearer not.a.jwt", "malformed_token"),
        ("Bearer " + _token(exp=int(time.time()) - 3600), "expired_token"),
        ("Bearer " + jwt.encode({"sub": "alice", "exp": int(time.time()) + 60},
                                "another-secret-of-at-least-32-bytes!", algorithm="HS256"),
         "invalid_token"),
        ("Bearer " + _token(sub=None), "invalid_token"),
        ("Bearer " + _token(exp=None), "invalid_token"),
        ("Bearer " + _token(sub=""), "invalid_token"),
        ("Bearer " + jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, "",
                                algorithm="none"), "invalid_token"),
    ],
    ids=["missing", "basic", "empty", "not-jwt", "expired", "wrong-secret", "no-sub", "no-exp",
         "empty-sub", "alg-none"],
)  # fmt: skip
def test_media_api_refuses_bad_tokens(origin: Origin, authorization: str | None,
                                      reason: str) -> None:  # fmt: skip
    headers = {"Authorization": authorization} if authorization else {}
    calls = [
        ("POST", "/v1/media/upload/request", request_body()),
        ("POST", "/v1/media/upload/confirm",
         {"media_id": "m_abcdefgh1234", "file_sha256": "a" * 64}),
        ("GET", "/v1/media/m_abcdefgh1234/content", None),
    ]  # fmt: skip
    for method, path, body in calls:
        r = httpx.request(method, origin.url + path, json=body, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"] == "unauthorized" and r.json()["reason"] == reason
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="edgeproxy"')
        assert ('error="invalid_token"' in challenge) == (reason != "missing_token")
    r = httpx.put(origin.url + "/v1/profile/alice/photo", content=b"\xff\xd8\xff",
                  headers={"Content-Type": "image/jpeg", **headers})  # fmt: skip
    assert r.status_code == 401
    assert origin.staging() == [] and origin.blobs() == [] and no_uploads_recorded(origin)


def test_rs256_public_key_and_no_algorithm_confusion(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "jwt.pub").write_bytes(pem)
    env = {"EDGEPROXY_AUTH__JWT_SECRET": "", "EDGEPROXY_AUTH__JWT_PUBLIC_KEY":
           str(tmp_path / "jwt.pub"), "EDGEPROXY_AUTH__ISSUER": "https://id.example"}  # fmt: skip
    with run_origin(tmp_path / "data", env=env) as o:
        claims = {"sub": "carol", "exp": int(time.time()) + 60, "iss": "https://id.example"}
        good = jwt.encode(claims, key, algorithm="RS256")
        r = httpx.post(o.url + "/v1/media/upload/request", json=request_body(),
                       headers={"Authorization": f"Bearer {good}"})  # fmt: skip
        assert r.status_code == 200
        for bad in (
            jwt.encode({**claims, "iss": "https://evil.example"}, key, algorithm="RS256"),
            # The public key used as an HS256 secret: HS256 is not configured, so refused.
            jwt.encode(claims, DEV_JWT_SECRET, algorithm="HS256"),
        ):
            r = httpx.post(o.url + "/v1/media/upload/request", json=request_body(),
                           headers={"Authorization": f"Bearer {bad}"})  # fmt: skip
            assert r.status_code == 401 and r.json()["reason"] == "invalid_token"


def test_token_command_prints_a_dev_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    proc = subprocess.run([sys.executable, "-m", "edgeproxy", "token", "--user", "dave",
                           "--ttl", "10m"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    claims = jwt.decode(proc.stdout.strip(), DEV_JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "dave" and 595 <= claims["exp"] - time.time() <= 601
    proc = subprocess.run([sys.executable, "-m", "edgeproxy", "token", "--user", "dave",
                           "--ttl", "never"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 2 and "--ttl" in proc.stderr


# --- ownership -------------------------------------------------------------------------------


def test_confirming_or_fetching_someone_elses_upload_is_403(origin: Origin) -> None:
    blob = make_blob()
    ticket = origin.request(blob)  # alice's
    assert origin.put(ticket["upload_url"], blob).status_code == 200
    bob = origin.auth("bob")
    r = httpx.post(origin.url + "/v1/media/upload/confirm", headers=bob,
                   json={"media_id": ticket["media_id"], "file_sha256": sha(blob)})  # fmt: skip
    assert r.status_code == 403 and error_of(r) == "forbidden"
    assert_not_served(origin, blob)
    assert origin.confirm(ticket["media_id"], sha(blob)).status_code == 200  # still alice's
    r = httpx.get(f"{origin.url}/v1/media/{ticket['media_id']}/content", headers=bob)
    assert r.status_code == 403 and error_of(r) == "forbidden"
    r = httpx.put(origin.url + "/v1/profile/alice/photo", content=b"\xff\xd8\xff",
                  headers={"Content-Type": "image/jpeg", **bob})  # fmt: skip
    assert r.status_code == 403
    assert origin.http.get("/pp/alice").status_code == 404


# --- types and sizes -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x.exe\x00.png", "a\tb.png", "x\n.png", "x" * 1025 + ".png"])
def test_a_file_name_with_control_characters_is_422(origin: Origin, name: str) -> None:
    """A NUL ends a name for C code ("x.exe\\0.png" is x.exe): such names are refused whole."""
    r = origin.http.post("/v1/media/upload/request",
                         json=request_body(file_type="image/png", file_name=name))
    assert r.status_code == 422 and error_of(r) == "invalid_field", r.text
    assert r.json()["field"] == "file_name"
    assert origin.staging() == [] and no_uploads_recorded(origin)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (request_body(file_type="text/plain"), "not_allowed"),
        (request_body(file_type="application/octet-stream"), "not_allowed"),
        (request_body(file_type="application/x-msdownload"), "executable"),
        (request_body(file_type="application/x-sh"), "executable"),
        (request_body(file_type="application/vnd.microsoft.portable-executable"), "executable"),
        (request_body(file_type="image/png", file_name="cat.png.exe"), "executable_extension"),
        (request_body(file_type="application/zip", file_name="C:\\dl\\SETUP.BAT"),
         "executable_extension"),
        # as Windows writes them: trailing dots and spaces dropped, an NTFS stream's file
        (request_body(file_type="application/zip", file_name="x.exe."), "executable_extension"),
        (request_body(file_type="application/zip", file_name="x.exe. "), "executable_extension"),
        (request_body(file_type="application/zip", file_name="x.bat.."), "executable_extension"),
        (request_body(file_type="application/zip", file_name="x.exe::$DATA"),
         "executable_extension"),
    ],
)  # fmt: skip
def test_refused_types_are_415_before_anything_is_stored(origin: Origin, body: dict[str, Any],
                                                         reason: str) -> None:  # fmt: skip
    r = origin.http.post("/v1/media/upload/request", json=body)
    assert r.status_code == 415, r.text
    assert error_of(r) == "unsupported_media_type" and r.json()["reason"] == reason
    assert origin.staging() == [] and no_uploads_recorded(origin)


@pytest.mark.parametrize(
    ("file_type", "limit"),
    [("image/heic", 50 * MiB), ("audio/ogg", 50 * MiB), ("video/mp4", 100 * MiB),
     ("application/pdf", 50 * MiB), ("application/msword", 50 * MiB),
     ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", 50 * MiB),
     ("application/x-7z-compressed", 50 * MiB), ("application/zip", 50 * MiB)],
)  # fmt: skip
def test_size_limits_per_class(origin: Origin, file_type: str, limit: int) -> None:
    # The limit is on the media; its blob may carry the format's overhead on top.
    r = origin.http.post("/v1/media/upload/request",
                         json=request_body(crypto.enc_length(limit), file_type))  # fmt: skip
    assert r.status_code == 200, r.text
    r = origin.http.post("/v1/media/upload/request",
                         json=request_body(crypto.enc_length(limit) + 16, file_type))  # fmt: skip
    assert r.status_code == 413 and error_of(r) == "too_large"
    assert r.json()["max_size"] == limit and r.json()["field"] == "file_size"
    assert origin.staging() == []


# --- rate limits and quota, concurrently -----------------------------------------------------


async def _burst(urls: list[str], bodies: list[tuple[str, dict[str, Any]]],
                 ) -> list[httpx.Response]:  # fmt: skip
    """Every request at once, spread over ``urls`` (one or more origin processes)."""
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        return await asyncio.gather(*(
            client.post(urls[i % len(urls)] + "/v1/media/upload/request", json=body,
                        headers={"Authorization": f"Bearer {token}"})
            for i, (token, body) in enumerate(bodies)))  # fmt: skip


def test_per_user_rate_limit_holds_under_concurrency(tmp_path: Path) -> None:
    clock = Clock()
    with run_origin(tmp_path, clock) as o:
        token = mint_token(o.config.auth.jwt_secret, "alice")
        answers = asyncio.run(_burst([o.url], [(token, request_body())] * 25))
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200] * 10 + [429] * 15
        for r in answers:
            if r.status_code == 429:
                body = r.json()
                assert (body["error"], body["scope"], body["limit"]) == ("rate_limited", "user", 10)
                assert 1 <= int(r.headers["retry-after"]) <= 60
                assert body["retry_after"] == int(r.headers["retry-after"])
        assert metric(o, 'edgeproxy_origin_uploads_total{result="rate_limited"}') == 15
        # Another user is not affected; the window moves on.
        bob = o.auth("bob")
        assert httpx.post(o.url + "/v1/media/upload/request", json=request_body(),
                          headers=bob).status_code == 200  # fmt: skip
        clock.now += 61
        assert o.http.post("/v1/media/upload/request", json=request_body()).status_code == 200


def test_rate_limit_holds_across_two_origin_processes(tmp_path: Path) -> None:
    # Two apps on one data dir: two SQLite connections, as two uvicorn workers would have.
    with ExitStack() as stack:
        a = stack.enter_context(run_origin(tmp_path))
        b = stack.enter_context(run_origin(tmp_path))
        token = mint_token(a.config.auth.jwt_secret, "alice")
        answers = asyncio.run(_burst([a.url, b.url], [(token, request_body())] * 30))
        assert sorted(r.status_code for r in answers) == [200] * 10 + [429] * 20


def test_per_conversation_rate_limit(origin: Origin) -> None:
    users = [mint_token(origin.config.auth.jwt_secret, f"user{i}") for i in range(6)]
    bodies = [(t, request_body(conversation_id="conv_abc123")) for t in users for _ in range(10)]
    answers = asyncio.run(_burst([origin.url], bodies))
    assert sorted(r.status_code for r in answers) == [200] * 50 + [429] * 10
    refused = [r.json() for r in answers if r.status_code == 429]
    assert {(b["scope"], b["limit"]) for b in refused} == {("conversation", 50)}
    # Another conversation is not affected.
    r = httpx.post(origin.url + "/v1/media/upload/request", headers=origin.auth("user9"),
                   json=request_body(conversation_id="conv_other"))  # fmt: skip
    assert r.status_code == 200
    r = origin.http.post("/v1/media/upload/request", json=request_body(conversation_id="bad id"))
    assert r.status_code == 422 and r.json()["field"] == "conversation_id"


def test_storage_quota_under_concurrency(tmp_path: Path) -> None:
    env = {"EDGEPROXY_LIMITS__STORAGE_QUOTA_PER_USER": "1MiB"}
    with run_origin(tmp_path, env=env) as o:
        token = mint_token(o.config.auth.jwt_secret, "alice")
        size = crypto.enc_length(200_000)
        answers = asyncio.run(_burst([o.url], [(token, request_body(size))] * 8))
        assert sorted(r.status_code for r in answers) == [200] * 5 + [507] * 3
        refused = next(r.json() for r in answers if r.status_code == 507)
        assert refused["error"] == "quota_exceeded" and refused["quota"] == MiB
        assert refused["used"] == 5 * size and refused["requested"] == size
        # Terminating an unfinished upload gives its bytes back.
        url = next(r.json()["upload_url"] for r in answers if r.status_code == 200)
        assert o.http.delete(httpx.URL(url).raw_path.decode()).status_code == 204
        r = o.http.post("/v1/media/upload/request", json=request_body(size))
        assert r.status_code == 200
        assert o.staging() == []
