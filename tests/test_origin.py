"""The bundled upload origin over real sockets: request → PUT → confirm → GET, and every refusal.

Each test runs `create_app` under uvicorn on a loopback port with its data dir in ``tmp_path``
and talks to it with httpx (and curl), asserting exact statuses, JSON error codes, and what is
left on disk: no half-written blob is ever committed or served, staging files go where the
rules say.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.config import Config, load_config
from edgeproxy.origin import create_app
from edgeproxy.origin.auth import mint_token
from edgeproxy.signing import SigningKey
from tests.servers import free_port, serve

PUBLIC = "http://cdn.test"


def make_blob(blocks: int = 4, media_type: int = 1) -> bytes:
    """A blob with a valid layout: header, IV, ``blocks`` AES blocks, MAC (random bytes)."""
    header = b"WAMEDIA1" + bytes([1, media_type, 0]) + bytes(5)
    return header + os.urandom(16) + os.urandom(16 * blocks) + os.urandom(32)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Clock:
    """A settable clock the app reads instead of time.time()."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Origin:
    url: str
    http: httpx.Client
    config: Config
    clock: Clock
    app: Any = None  # the Starlette app; ``app.state.origin`` is its `OriginCore`

    @property
    def root(self) -> Path:
        return self.config.data_dir / "origin"

    def auth(self, user: str) -> dict[str, str]:
        """The Authorization header of ``user`` (the fixture's client is "alice"); none if the
        config has no HS256 secret to sign it with."""
        secret = self.config.auth.jwt_secret
        return {"Authorization": "Bearer " + mint_token(secret, user)} if secret else {}

    def staging(self) -> list[str]:
        return sorted(p.name for p in (self.root / "staging").iterdir())

    def blobs(self) -> list[str]:
        return sorted(p.name for p in (self.root / "blobs").rglob("*") if p.is_file())

    def request(self, blob: bytes, **overrides: Any) -> dict[str, Any]:
        body = {"file_size": len(blob), "file_type": "image/jpeg",
                "file_hash": "sha256:" + sha(blob), **overrides}  # fmt: skip
        r = self.http.post("/v1/media/upload/request", json=body)
        assert r.status_code == 200, r.text
        ticket: dict[str, Any] = r.json()
        return ticket

    def put(self, upload_url: str, content: Any, **kw: Any) -> httpx.Response:
        # The path and query of the signed URL, sent to wherever this origin listens now.
        return self.http.put(httpx.URL(upload_url).raw_path.decode(), content=content, **kw)

    def confirm(self, media_id: str, file_sha256: str, thumb: bytes | str | None = None,
                ) -> httpx.Response:  # fmt: skip
        body: dict[str, Any] = {"media_id": media_id, "file_sha256": file_sha256}
        if thumb is not None:
            body["thumbnail_base64"] = (thumb if isinstance(thumb, str)
                                        else base64.b64encode(thumb).decode())  # fmt: skip
        return self.http.post("/v1/media/upload/confirm", json=body)

    def upload(self, blob: bytes, thumb: bytes | None = None) -> dict[str, Any]:
        ticket = self.request(blob)
        r = self.put(ticket["upload_url"], blob)
        assert r.status_code == 200, r.text
        r = self.confirm(ticket["media_id"], sha(blob), thumb)
        assert r.status_code == 200, r.text
        done: dict[str, Any] = r.json()
        return done


@contextmanager
def run_origin(data_dir: Path, clock: Clock | None = None, user: str = "alice", *,
               port: int | None = None, env: dict[str, str] | None = None,
               ) -> Iterator[Origin]:  # fmt: skip
    """An origin on ``port`` (default: a free one) whose client sends ``user``'s token."""
    port = port or free_port()
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(data_dir),
                                    "EDGEPROXY_ORIGIN__PORT": str(port),
                                    "EDGEPROXY_PUBLIC_BASE_URL": PUBLIC,
                                    **(env or {})})  # fmt: skip
    clock = clock or Clock()
    app = create_app(config, clock=clock)
    with serve(app, port) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        origin = Origin(srv.url, http, config, clock, app)
        http.headers.update(origin.auth(user))
        yield origin


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Origin]:
    with run_origin(tmp_path) as o:
        yield o


def error_of(r: httpx.Response) -> str:
    code: str = r.json()["error"]
    return code


def assert_not_served(o: Origin, blob: bytes) -> None:
    r = o.http.get(f"/v/t1/{sha(blob)}")
    assert r.status_code == 404 and error_of(r) == "not_found"
    assert sha(blob) not in o.blobs()


def raw_http(url: str, head: str) -> tuple[int, dict[str, str], bytes]:
    """Send a request head with *no body* over a raw socket and read the whole answer."""
    u = httpx.URL(url)
    assert u.port is not None
    with socket.create_connection((u.host, u.port), timeout=5) as s:
        s.sendall(head.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        top, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = top.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
        while len(body) < int(headers.get("content-length", 0)):
            body += s.recv(65536)
    return int(status_line.split()[1]), headers, body


# --- happy path ------------------------------------------------------------------------------


def test_healthz(origin: Origin) -> None:
    r = origin.http.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "role": "origin"}


def test_request_put_confirm_get(origin: Origin) -> None:
    blob = make_blob(40_000)  # ~640 KiB: several read and write chunks
    thumb = make_blob(8, media_type=6)
    ticket = origin.request(blob)
    media_id, url = ticket["media_id"], ticket["upload_url"]
    assert media_id.startswith("m_") and len(media_id) > 10
    assert url.startswith(f"{origin.url}/v1/upload/{media_id}?expires=")
    q = httpx.URL(url).params
    assert q["size"] == str(len(blob))
    assert 299 <= int(q["expires"]) - origin.clock.now <= 301
    assert ticket["upload_expires"] == time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                     time.gmtime(int(q["expires"])))  # fmt: skip
    canonical = f"PUT\n/v1/upload/{media_id}\n{q['expires']}\n{len(blob)}"
    expected_sig = SigningKey.from_text(origin.config.origin.signing_key).sign(canonical)
    assert q["sig"] == expected_sig

    r = origin.put(url, blob)
    assert r.status_code == 200
    assert r.json() == {"media_id": media_id, "received": len(blob), "complete": True}
    assert origin.staging() == [f"{media_id}.part"]
    assert_not_served(origin, blob)  # received is not committed

    r = origin.confirm(media_id, sha(blob), thumb)
    assert r.status_code == 200
    media_url = f"{PUBLIC}/v/t1/{sha(blob)}"
    assert r.json() == {"media_url": media_url, "thumbnail_url": media_url + "/thumb"}
    assert origin.staging() == []
    assert origin.blobs() == sorted([sha(blob), sha(thumb)])
    # Content-addressed: blobs/ab/cd/<sha>
    assert (origin.root / "blobs" / sha(blob)[:2] / sha(blob)[2:4] / sha(blob)).is_file()

    path = f"/v/t1/{sha(blob)}"
    r = origin.http.get(path)
    assert r.status_code == 200 and r.content == blob
    h = r.headers
    assert h["etag"] == f'"{sha(blob)}"'
    assert h["content-length"] == str(len(blob))
    assert h["content-type"] == "application/octet-stream"
    assert h["accept-ranges"] == "bytes"
    assert h["cache-control"] == "public, max-age=31536000, immutable"
    assert h["last-modified"].endswith(" GMT")
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    assert h["repr-digest"] == f"sha-256=:{digest}:"

    r = origin.http.get(path, headers={"Range": "bytes=100-299999"})
    assert r.status_code == 206 and r.content == blob[100:300000]
    assert r.headers["content-range"] == f"bytes 100-299999/{len(blob)}"
    assert r.headers["content-length"] == str(299900)
    r = origin.http.get(path, headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == blob[-10:]
    r = origin.http.get(path, headers={"Range": "bytes=0-9, 5-19"})  # coalesces into one
    assert r.status_code == 206 and r.content == blob[:20]
    r = origin.http.get(path, headers={"Range": "bytes=0-9, 100-109"})  # several: whole body
    assert r.status_code == 200 and r.content == blob
    r = origin.http.get(path, headers={"Range": "bytes=9-2"})  # invalid: ignored
    assert r.status_code == 200 and r.content == blob
    # two Range lines are one value (RFC 9110 §5.3): two `bytes=` lines are invalid, ignored
    r = origin.http.get(path, headers=[("Range", "bytes=0-9"), ("Range", "bytes=20-29")])
    assert r.status_code == 200 and r.content == blob
    r = origin.http.get(path, headers=[("Range", "bytes=0-9"), ("Range", "5-19")])
    assert r.status_code == 206 and r.content == blob[0:20]
    r = origin.http.get(path, headers={"Range": f"bytes={len(blob)}-"})
    assert r.status_code == 416 and error_of(r) == "range_not_satisfiable"
    assert r.headers["content-range"] == f"bytes */{len(blob)}"
    r = origin.http.get(path, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert r.status_code == 200 and r.content == blob
    r = origin.http.get(path, headers={"Range": "bytes=0-9", "If-Range": f'"{sha(blob)}"'})
    assert r.status_code == 206 and r.content == blob[:10]

    r = origin.http.head(path)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-length"] == str(len(blob)) and r.headers["etag"] == h["etag"]
    r = origin.http.head(path, headers={"Range": "bytes=0-9"})  # (RFC 9110 §14.2: GET only)
    assert r.status_code == 200 and r.headers["content-length"] == str(len(blob))
    assert "content-range" not in r.headers

    for inm in (f'"{sha(blob)}"', f'W/"{sha(blob)}"', f'"x", "{sha(blob)}"', "*"):
        r = origin.http.get(path, headers={"If-None-Match": inm})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == h["etag"]
    r = origin.http.get(path, headers={"If-None-Match": '"something-else"'})
    assert r.status_code == 200
    r = origin.http.get(path, headers={"If-Modified-Since": h["last-modified"]})
    assert r.status_code == 304

    r = origin.http.get(path + "/thumb")
    assert r.status_code == 200 and r.content == thumb
    assert r.headers["etag"] == f'"{sha(thumb)}"'
    r = origin.http.get(path + "/thumb", headers={"Range": "bytes=0-15"})
    assert r.status_code == 206 and r.content == thumb[:16]


def test_if_match_and_if_unmodified_since_on_media(origin: Origin) -> None:
    # RFC 9110 §13.1.1, §13.1.4: a precondition that does not hold is 412, checked (§13.2.2)
    # before Range and before If-None-Match.
    blob, thumb = make_blob(), make_blob(1)
    done = origin.upload(blob, thumb)
    path = httpx.URL(done["media_url"]).path
    etag = f'"{sha(blob)}"'
    lm = origin.http.head(path).headers["last-modified"]
    for method in ("GET", "HEAD"):
        for headers in ({"If-Match": '"nope"'}, {"If-Match": f"W/{etag}"},
                        {"If-Match": '"nope"', "Range": "bytes=0-9"},
                        {"If-Match": '"nope"', "If-None-Match": '"other"'},
                        {"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"},
                        {"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT",
                         "Range": "bytes=0-9"}):  # fmt: skip
            r = origin.http.request(method, path, headers=headers)
            assert r.status_code == 412, (method, headers, r.status_code)
            assert r.headers["etag"] == etag and r.headers["cache-control"] == "no-store"
            if method == "GET":
                assert error_of(r) == "precondition_failed"
    for headers in ({"If-Match": etag}, {"If-Match": f'"x", {etag}'}, {"If-Match": "*"},
                    {"If-Unmodified-Since": lm},
                    # If-Match decides alone: If-Unmodified-Since is then ignored (§13.1.4)
                    {"If-Match": etag, "If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"},
                    {"If-Unmodified-Since": "not a date"}):  # fmt: skip
        r = origin.http.get(path, headers=headers)
        assert r.status_code == 200 and r.content == blob, headers
    r = origin.http.get(path, headers=[("If-Match", '"a"'), ("If-Match", etag)])  # one list
    assert r.status_code == 200
    r = origin.http.get(path, headers={"If-Match": etag, "Range": "bytes=0-9"})
    assert r.status_code == 206 and r.content == blob[:10]
    r = origin.http.get(path + "/thumb", headers={"If-Match": etag})  # the thumbnail's is other
    assert r.status_code == 412


def test_curl_ranges(origin: Origin, tmp_path: Path) -> None:
    # .ci/run installs curl; a machine without it fails here rather than skipping silently
    assert shutil.which("curl"), "curl is required (apt-get install curl)"
    blob = make_blob(100)
    origin.upload(blob)
    url = f"{origin.url}/v/t1/{sha(blob)}"
    for rng, expected in (("0-99", blob[:100]), (f"{len(blob) - 1}-", blob[-1:]),
                          ("-1", blob[-1:]), ("32-47", blob[32:48])):  # fmt: skip
        out = tmp_path / "out"
        cmd = ["curl", "-sS", "-r", rng, "-o", str(out), "-w", "%{http_code}", url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True)
        assert done.stdout == "206", rng
        assert out.read_bytes() == expected, rng


def test_file_hash_prefix_is_optional_and_media_dedups(origin: Origin) -> None:
    blob = make_blob(16)
    first = origin.request(blob)
    second = origin.request(blob, file_hash=sha(blob).upper())  # bare hex, any case
    for ticket in (first, second):
        assert origin.put(ticket["upload_url"], blob).status_code == 200
    answers = [origin.confirm(t["media_id"], sha(blob)) for t in (first, second)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
    assert origin.blobs() == [sha(blob)]  # the same bytes twice are stored once
    assert origin.staging() == []
    assert origin.http.get(f"/v/t1/{sha(blob)}").content == blob


def test_confirm_is_idempotent(origin: Origin) -> None:
    blob, thumb = make_blob(), make_blob(1, media_type=6)
    media_url = origin.upload(blob, thumb)["media_url"]
    ticket = origin.request(blob)
    assert origin.put(ticket["upload_url"], blob).status_code == 200
    first = origin.confirm(ticket["media_id"], sha(blob))
    again = origin.confirm(ticket["media_id"], sha(blob), b"ignored now")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() == {"media_url": media_url, "thumbnail_url": None}
    # The media's /thumb (from the first upload) stays what it was.
    assert origin.http.get(f"/v/t1/{sha(blob)}/thumb").content == thumb
    r = origin.confirm(ticket["media_id"], "0" * 64)
    assert r.status_code == 422 and error_of(r) == "hash_mismatch"
    assert origin.http.get(f"/v/t1/{sha(blob)}").status_code == 200  # still committed


def test_restart_keeps_committed_media_and_pending_uploads(tmp_path: Path) -> None:
    committed, pending = make_blob(20), make_blob(3)
    with run_origin(tmp_path) as o:
        done = o.request(committed)
        assert o.put(done["upload_url"], committed).status_code == 200
        answer = o.confirm(done["media_id"], sha(committed)).json()
        ticket = o.request(pending)
    with run_origin(tmp_path) as o:
        r = o.http.get(f"/v/t1/{sha(committed)}", headers={"Range": "bytes=5-"})
        assert r.status_code == 206 and r.content == committed[5:]
        r = o.confirm(done["media_id"], sha(committed))
        assert r.status_code == 200 and r.json() == answer
        r = o.put(done["upload_url"], committed)
        assert r.status_code == 409 and error_of(r) == "already_uploaded"
        assert o.put(ticket["upload_url"], pending).status_code == 200
        assert o.confirm(ticket["media_id"], sha(pending)).status_code == 200
        assert o.http.get(f"/v/t1/{sha(pending)}").content == pending


# --- upload request --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "error", "field"),
    [
        (b"{not json", 400, "bad_json", None),
        (b"[1, 2]", 400, "bad_json", None),
        (b'{"file_type": "image/jpeg", "file_hash": "' + b"a" * 64 + b'"}', 400, "bad_request",
         "file_size"),
        (b'{"file_size": "10", "file_type": "image/jpeg", "file_hash": "' + b"a" * 64 + b'"}',
         400, "bad_request", "file_size"),
        (b'{"file_size": true, "file_type": "image/jpeg", "file_hash": "' + b"a" * 64 + b'"}',
         400, "bad_request", "file_size"),
        (b'{"file_size": 10, "file_hash": "' + b"a" * 64 + b'"}', 400, "bad_request",
         "file_type"),
        (b'{"file_size": 10, "file_type": "image/jpeg"}', 400, "bad_request", "file_hash"),
        (b'{"file_size": 0, "file_type": "image/jpeg", "file_hash": "' + b"a" * 64 + b'"}',
         422, "invalid_field", "file_size"),
        (b'{"file_size": -5, "file_type": "image/jpeg", "file_hash": "' + b"a" * 64 + b'"}',
         422, "invalid_field", "file_size"),
        (b'{"file_size": 10, "file_type": "jpeg", "file_hash": "' + b"a" * 64 + b'"}',
         422, "invalid_field", "file_type"),
        # RFC 6838 §4.2: type and subtype names are ASCII (a word character of any script
        # was let in, and named back as the media's content type)
        ('{"file_size": 10, "file_type": "image/jp\u00e9g", "file_hash": "'.encode() + b"a" * 64
         + b'"}', 422, "invalid_field", "file_type"),
        ('{"file_size": 10, "file_type": "im\u00e4ge/png", "file_hash": "'.encode() + b"a" * 64
         + b'"}', 422, "invalid_field", "file_type"),
        (b'{"file_size": 10, "file_type": "image/jpeg", "file_hash": "sha256:abc"}',
         422, "invalid_field", "file_hash"),
        (b'{"file_size": 10, "file_type": "image/jpeg", "file_hash": "md5:' + b"a" * 64 + b'"}',
         422, "invalid_field", "file_hash"),
        (b'{"file_size": 104857601, "file_type": "image/jpeg", "file_hash": "' + b"a" * 64
         + b'"}', 413, "too_large", "file_size"),
    ],
)  # fmt: skip
def test_request_rejects_bad_input(origin: Origin, body: bytes, status: int, error: str,
                                   field: str | None) -> None:  # fmt: skip
    r = origin.http.post("/v1/media/upload/request", content=body,
                         headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == status, r.text
    assert error_of(r) == error
    assert r.json().get("field") == field
    assert origin.staging() == []


# --- PUT -------------------------------------------------------------------------------------


def _tamper(url: str, **params: str) -> str:
    u = httpx.URL(url)
    return str(u.copy_merge_params(params)) if params else url


@pytest.mark.parametrize(
    "change",
    [
        {"sig": "0" * 64},
        {"size": "1"},
        {"expires": "9999999999"},
        {"sig": ""},
        {"expires": "soon"},
    ],
)
def test_put_with_tampered_url_is_403(origin: Origin, change: dict[str, str]) -> None:
    blob = make_blob()
    ticket = origin.request(blob)
    r = origin.put(_tamper(ticket["upload_url"], **change), blob)
    assert r.status_code == 403 and error_of(r) == "bad_signature"
    assert origin.staging() == []


def test_put_with_missing_params_or_signature_for_another_upload_is_403(origin: Origin) -> None:
    blob = make_blob()
    a, b = origin.request(blob), origin.request(blob)
    path = httpx.URL(a["upload_url"]).path
    assert origin.http.put(path, content=blob).status_code == 403  # no query at all
    # b's valid signature does not open a's upload.
    url_b = httpx.URL(b["upload_url"])
    r = origin.http.put(path, params=dict(url_b.params), content=blob)
    assert r.status_code == 403 and error_of(r) == "bad_signature"
    assert origin.staging() == []


def test_put_unknown_media_id_is_404(origin: Origin) -> None:
    key = SigningKey.from_text(origin.config.origin.signing_key)
    media_id, expires = "m_doesnotexist123", int(origin.clock.now) + 60
    sig = key.sign_request("PUT", f"/v1/upload/{media_id}", expires, 96)
    params: dict[str, str | int] = {"expires": expires, "size": 96, "sig": sig}
    r = origin.http.put(f"/v1/upload/{media_id}", params=params, content=make_blob(1))
    assert r.status_code == 404 and error_of(r) == "not_found"


def test_put_after_expiry_is_410(origin: Origin) -> None:
    blob = make_blob()
    ticket = origin.request(blob)
    origin.clock.now += origin.config.origin.upload_url_ttl + 2
    r = origin.put(ticket["upload_url"], blob)
    assert r.status_code == 410 and error_of(r) == "upload_expired"
    assert origin.staging() == []
    r = origin.confirm(ticket["media_id"], sha(blob))  # as PUT says, before any sweep
    assert r.status_code == 410 and error_of(r) == "upload_expired"


def test_put_with_oversized_content_length_is_refused_before_the_body(origin: Origin) -> None:
    blob = make_blob()
    ticket = origin.request(blob)
    target = httpx.URL(ticket["upload_url"]).raw_path.decode()
    # Only the head is sent: the 413 must come without the server waiting for a body.
    head = (f"PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(blob) + 1}\r\n"
            "Connection: close\r\n\r\n")  # fmt: skip
    status, _, body = raw_http(origin.url, head)
    assert status == 413 and b'"too_large"' in body
    assert origin.staging() == []
    assert origin.put(ticket["upload_url"], blob).status_code == 200  # the URL still works


def test_put_with_oversized_chunked_body_keeps_nothing(origin: Origin) -> None:
    blob = make_blob(40_000)
    ticket = origin.request(blob)

    def body() -> Iterator[bytes]:
        yield blob[:300_000]
        yield blob[300_000:]
        yield b"one byte too many"

    r = origin.put(ticket["upload_url"], body())
    assert r.status_code == 413 and error_of(r) == "too_large"
    assert origin.staging() == []
    r = origin.confirm(ticket["media_id"], sha(blob))
    assert r.status_code == 409 and error_of(r) == "upload_incomplete"
    assert r.json()["received"] == 0
    assert_not_served(origin, blob)


def test_short_body_leaves_upload_incomplete(origin: Origin) -> None:
    blob = make_blob(10)
    ticket = origin.request(blob)
    r = origin.put(ticket["upload_url"], blob[:100])
    assert r.status_code == 200
    assert r.json() == {"media_id": ticket["media_id"], "received": 100, "complete": False}
    staged = origin.root / "staging" / f"{ticket['media_id']}.part"
    assert staged.read_bytes() == blob[:100]  # kept for a later resume
    r = origin.confirm(ticket["media_id"], sha(blob))
    assert r.status_code == 409 and error_of(r) == "upload_incomplete"
    assert (r.json()["declared"], r.json()["received"]) == (len(blob), 100)
    assert_not_served(origin, blob)
    # A fresh PUT of the whole blob replaces the partial bytes.
    assert origin.put(ticket["upload_url"], blob).json()["complete"] is True
    assert origin.confirm(ticket["media_id"], sha(blob)).status_code == 200


def test_interrupted_put_keeps_received_bytes_for_resume(origin: Origin) -> None:
    blob = make_blob(1000)
    ticket = origin.request(blob)
    target = httpx.URL(ticket["upload_url"]).raw_path.decode()
    u = httpx.URL(origin.url)
    assert u.port is not None
    with socket.create_connection((u.host, u.port), timeout=5) as s:
        s.sendall(f"PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(blob)}\r\n\r\n"
                  .encode() + blob[:4000])  # fmt: skip
        time.sleep(0.2)  # the server has read the 4000 bytes; then the client vanishes
    deadline = time.monotonic() + 5
    while (r := origin.confirm(ticket["media_id"], sha(blob))).json().get("received") != 4000:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.02)
    assert r.status_code == 409 and error_of(r) == "upload_incomplete"
    staged = origin.root / "staging" / f"{ticket['media_id']}.part"
    assert staged.read_bytes() == blob[:4000]
    assert_not_served(origin, blob)


def test_second_put_is_409(origin: Origin) -> None:
    blob = make_blob()
    ticket = origin.request(blob)
    assert origin.put(ticket["upload_url"], blob).status_code == 200
    r = origin.put(ticket["upload_url"], make_blob())
    assert r.status_code == 409 and error_of(r) == "already_uploaded"
    assert (origin.root / "staging" / f"{ticket['media_id']}.part").read_bytes() == blob
    assert origin.confirm(ticket["media_id"], sha(blob)).status_code == 200
    r = origin.put(ticket["upload_url"], blob)
    assert r.status_code == 409 and error_of(r) == "already_uploaded"


def test_concurrent_puts_do_not_interleave(origin: Origin) -> None:
    blob = make_blob(100)
    ticket = origin.request(blob)
    release = threading.Event()
    results: list[httpx.Response] = []

    def slow_body() -> Iterator[bytes]:
        yield blob[:50]
        release.wait(10)
        yield blob[50:]

    def first_put() -> None:
        with httpx.Client(timeout=10) as c:
            results.append(c.put(ticket["upload_url"], content=slow_body()))

    t = threading.Thread(target=first_put)
    t.start()
    staged = origin.root / "staging" / f"{ticket['media_id']}.part"
    deadline = time.monotonic() + 5
    while not staged.exists():  # created only once the first PUT holds the upload
        assert time.monotonic() < deadline
        time.sleep(0.01)
    r = origin.put(ticket["upload_url"], blob)
    assert r.status_code == 409 and error_of(r) == "upload_in_progress"
    release.set()
    t.join(10)
    assert results[0].status_code == 200 and results[0].json()["complete"] is True
    assert staged.read_bytes() == blob
    assert origin.confirm(ticket["media_id"], sha(blob)).status_code == 200


# --- confirm ---------------------------------------------------------------------------------


def _uploaded(o: Origin, blob: bytes, declared: bytes | None = None) -> str:
    ticket = o.request(declared if declared is not None else blob)
    assert o.put(ticket["upload_url"], blob).status_code == 200
    media_id: str = ticket["media_id"]
    return media_id


def _assert_failed(o: Origin, media_id: str, blob: bytes, error: str) -> None:
    assert o.staging() == []
    assert_not_served(o, blob)
    r = o.confirm(media_id, sha(blob))  # a failed upload stays failed
    assert r.status_code == 409 and error_of(r) == "upload_failed"
    assert r.json()["reason"] == error


def test_confirm_with_wrong_file_sha256(origin: Origin) -> None:
    blob = make_blob()
    media_id = _uploaded(origin, blob)
    r = origin.confirm(media_id, sha(b"something else"))
    assert r.status_code == 422 and error_of(r) == "hash_mismatch"
    _assert_failed(origin, media_id, blob, "hash_mismatch")


def test_confirm_when_received_bytes_do_not_match_declared_hash(origin: Origin) -> None:
    declared, sent = make_blob(), make_blob()  # same size, other bytes
    media_id = _uploaded(origin, sent, declared=declared)
    r = origin.confirm(media_id, sha(declared))
    assert r.status_code == 422 and error_of(r) == "hash_mismatch"
    assert r.json()["actual"] == sha(sent)
    _assert_failed(origin, media_id, declared, "hash_mismatch")
    assert_not_served(origin, sent)


def test_confirm_with_wrong_size_on_disk(origin: Origin) -> None:
    blob = make_blob()
    media_id = _uploaded(origin, blob)
    with (origin.root / "staging" / f"{media_id}.part").open("r+b") as f:
        f.truncate(len(blob) - 16)  # the staged file lost bytes after the PUT
    r = origin.confirm(media_id, sha(blob))
    assert r.status_code == 422 and error_of(r) == "size_mismatch"
    assert (r.json()["declared"], r.json()["received"]) == (len(blob), len(blob) - 16)
    _assert_failed(origin, media_id, blob, "size_mismatch")


@pytest.mark.parametrize(
    "blob",
    [
        b"NOTMEDIA" + bytes([1, 1, 0]) + bytes(5) + bytes(16 + 32 + 32),  # magic
        b"WAMEDIA1" + bytes([2, 1, 0]) + bytes(5) + bytes(16 + 32 + 32),  # version
        b"WAMEDIA1" + bytes([1, 1, 0]) + bytes(5) + bytes(16 + 32 + 32 + 5),  # not whole blocks
        b"WAMEDIA1" + bytes([1, 1, 0]) + bytes(5) + bytes(16 + 32),  # no ciphertext
    ],
    ids=["magic", "version", "partial-block", "too-short"],
)
def test_confirm_with_bad_blob_layout(origin: Origin, blob: bytes) -> None:
    media_id = _uploaded(origin, blob)
    r = origin.confirm(media_id, sha(blob))
    assert r.status_code == 422 and error_of(r) == "bad_format"
    assert r.json()["reason"]
    _assert_failed(origin, media_id, blob, "bad_format")


@pytest.mark.parametrize(
    ("thumb", "reason"),
    [
        ("not base64 at all!", "bad_base64"),
        (base64.b64encode(make_blob(5000, media_type=6)).decode(), "too_large"),  # > 64 KiB
        (base64.b64encode(b"JPEG" * 40).decode(), None),  # a plaintext thumbnail: no header
        (base64.b64encode(make_blob(1, media_type=6)[:-1]).decode(), None),
        ("", None),
    ],
    ids=["not-base64", "too-large", "bad-header", "bad-size", "empty"],
)
def test_confirm_with_bad_thumbnail(origin: Origin, thumb: str, reason: str | None) -> None:
    """The thumbnail is optional and checked first: a bad one is refused (422) and the
    upload stays as it was, its verified bytes staged; a confirm without it commits."""
    blob = make_blob()
    media_id = _uploaded(origin, blob)
    staged = origin.staging()
    r = origin.confirm(media_id, sha(blob), thumb)
    assert r.status_code == 422 and error_of(r) == "bad_thumbnail"
    if reason is not None:
        assert r.json()["reason"] == reason
    assert origin.staging() == staged and staged
    assert_not_served(origin, blob)
    r = origin.confirm(media_id, sha(blob))
    assert r.status_code == 200 and r.json()["thumbnail_url"] is None
    assert origin.http.get(f"/v/t1/{sha(blob)}").content == blob


@pytest.mark.parametrize("path", ["/v1/media/upload/request", "/v1/media/upload/confirm"])
def test_deeply_nested_json_is_400(origin: Origin, path: str) -> None:
    # Deeper than Python's recursion limit, yet far inside the 64 KiB body limit.
    r = origin.http.post(path, content=b"[" * 1100 + b"]" * 1100,
                         headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and error_of(r) == "bad_json"
    r = origin.http.post(path, content=b'{"a":' * 5000 + b"1" + b"}" * 5000)
    assert r.status_code == 400 and error_of(r) == "bad_json"


def test_confirm_unknown_media_and_bad_fields(origin: Origin) -> None:
    r = origin.confirm("m_nope12345678", "a" * 64)
    assert r.status_code == 404 and error_of(r) == "not_found"
    r = origin.http.post("/v1/media/upload/confirm", json={"file_sha256": "a" * 64})
    assert r.status_code == 400 and r.json()["field"] == "media_id"
    r = origin.http.post("/v1/media/upload/confirm", json={"media_id": "m_x", "file_sha256": 1})
    assert r.status_code == 400 and r.json()["field"] == "file_sha256"
    r = origin.http.post("/v1/media/upload/confirm", json={"media_id": "m_x", "file_sha256": "z"})
    assert r.status_code == 422 and r.json()["field"] == "file_sha256"


def test_lone_surrogates_in_json_fields_are_4xx(origin: Origin) -> None:
    # JSON text may carry "\ud800" (an escape json.loads turns into an unencodable str): an
    # answer echoing it could not be encoded (a 500 before).
    hexsha = '"' + "a" * 64 + '"'
    r = origin.http.post("/v1/media/upload/confirm", headers={"Content-Type": "application/json"},
                         content='{"media_id": "m_\\ud800aaaaaaaa", "file_sha256": ' + hexsha + "}")
    assert r.status_code == 404 and error_of(r) == "not_found", r.text
    assert r.json()["message"] == "no upload with that media_id"
    for fields in ('"file_type": "image/\\ud83d"', '"file_type": "image/jpeg", '
                   '"conversation_id": "c\\ud800"', '"file_type": "image/jpeg", '
                   '"file_name": "a\\ud800.exe"'):  # fmt: skip
        body = '{"file_size": 100, "file_hash": ' + hexsha + ", " + fields + "}"
        r = origin.http.post("/v1/media/upload/request", content=body,
                             headers={"Content-Type": "application/json"})  # fmt: skip
        assert 400 <= r.status_code < 500 and error_of(r), (fields, r.text)


def test_confirm_before_any_bytes_is_409(origin: Origin) -> None:
    blob = make_blob()
    ticket = origin.request(blob)
    r = origin.confirm(ticket["media_id"], sha(blob))
    assert r.status_code == 409 and error_of(r) == "upload_incomplete"


# --- serving ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/v/t1/xyz", "/v/t1/" + "A" * 64, "/v/t1/" + "a" * 64, "/v/t1/" + "a" * 64 + "/thumb",
     "/v/t1/..%2F..%2Forigin.sqlite3", "/pp/nobody", "/pp/bad%20user"],
)  # fmt: skip
def test_unknown_or_malformed_paths_are_404_json(origin: Origin, path: str) -> None:
    for method in ("GET", "HEAD"):
        r = origin.http.request(method, path)
        assert r.status_code == 404
        if method == "GET":
            assert error_of(r) == "not_found"


def test_missing_media_404_is_briefly_cacheable(origin: Origin) -> None:
    """A media id is missing only until its upload commits: the 404 may be cached for a few
    seconds (RFC 9111 §4.2.1 max-age on a 404, which is cacheable by default, RFC 9110 §15.1),
    while other errors stay ``no-store``."""
    blob = make_blob()
    for path in (f"/v/t1/{sha(blob)}", f"/v/t1/{sha(blob)}/thumb"):
        for method in ("GET", "HEAD"):
            r = origin.http.request(method, path)
            assert r.status_code == 404
            assert r.headers["cache-control"] == "public, max-age=10"
    r = origin.http.post("/v1/media/upload/confirm", json={"file_sha256": "a" * 64})
    assert r.status_code == 400 and r.headers["cache-control"] == "no-store"


def test_media_without_thumbnail_has_no_thumb(origin: Origin) -> None:
    blob = make_blob()
    assert origin.upload(blob)["thumbnail_url"] is None
    assert origin.http.get(f"/v/t1/{sha(blob)}/thumb").status_code == 404
    # A thumbnail blob is not media: it is only reachable through /thumb.
    thumb = make_blob(1, media_type=6)
    origin.upload(make_blob(), thumb)
    assert origin.http.get(f"/v/t1/{sha(thumb)}").status_code == 404


# --- profile photos --------------------------------------------------------------------------


def test_profile_photo_put_get(origin: Origin) -> None:
    jpeg = b"\xff\xd8\xff\xe0" + os.urandom(5000)
    alice = origin.auth("alice.b_1")
    r = origin.http.put("/v1/profile/alice.b_1/photo", content=jpeg,
                        headers={"Content-Type": "image/jpeg", **alice})  # fmt: skip
    assert r.status_code == 200
    assert r.json() == {"user": "alice.b_1", "sha256": sha(jpeg), "size": len(jpeg),
                        "url": f"{PUBLIC}/pp/alice.b_1"}  # fmt: skip
    r = origin.http.get("/pp/alice.b_1")
    assert r.status_code == 200 and r.content == jpeg
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["etag"] == f'"{sha(jpeg)}"'
    assert r.headers["cache-control"] == "public, max-age=86400"
    r = origin.http.get("/pp/alice.b_1", headers={"Range": "bytes=-4"})
    assert r.status_code == 206 and r.content == jpeg[-4:]
    r = origin.http.head("/pp/alice.b_1")
    assert r.status_code == 200 and r.headers["content-length"] == str(len(jpeg))
    r = origin.http.get("/pp/alice.b_1", headers={"If-None-Match": f'"{sha(jpeg)}"'})
    assert r.status_code == 304

    png = b"\x89PNG\r\n\x1a\n" + os.urandom(100)
    r = origin.http.put("/v1/profile/alice.b_1/photo", content=png,
                        headers={"Content-Type": "image/png; charset=binary", **alice})  # fmt: skip
    assert r.status_code == 200
    r = origin.http.get("/pp/alice.b_1")
    assert r.content == png and r.headers["content-type"] == "image/png"
    assert r.headers["etag"] == f'"{sha(png)}"'
    assert origin.staging() == []


@pytest.mark.parametrize("ctype", ["text/html", "image/gif", "application/octet-stream", None])
def test_profile_photo_wrong_type_is_415(origin: Origin, ctype: str | None) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    r = origin.http.put("/v1/profile/bob/photo", content=b"<html>",
                        headers={**headers, **origin.auth("bob")})  # fmt: skip
    assert r.status_code == 415 and error_of(r) == "unsupported_media_type"
    assert origin.http.get("/pp/bob").status_code == 404


def test_profile_photo_too_large_is_413(origin: Origin) -> None:
    big = 5 * 1024 * 1024 + 1
    bob = origin.auth("bob")
    status, _, body = raw_http(origin.url, "PUT /v1/profile/bob/photo HTTP/1.1\r\nHost: x\r\n"
                               f"Authorization: {bob['Authorization']}\r\n"
                               "Content-Type: image/jpeg\r\n"
                               f"Content-Length: {big}\r\nConnection: close\r\n\r\n")  # fmt: skip
    assert status == 413 and b'"too_large"' in body

    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield bytes(1024 * 1024)
        yield b"!"

    r = origin.http.put("/v1/profile/bob/photo", content=chunks(),
                        headers={"Content-Type": "image/webp", **bob})  # fmt: skip
    assert r.status_code == 413 and error_of(r) == "too_large"
    assert origin.staging() == [] and origin.blobs() == []
    assert origin.http.get("/pp/bob").status_code == 404


def test_profile_photo_bad_user_and_empty_body(origin: Origin) -> None:
    r = origin.http.put("/v1/profile/" + "u" * 65 + "/photo", content=b"x",
                        headers={"Content-Type": "image/png"})  # fmt: skip
    assert r.status_code == 400 and r.json()["field"] == "user"
    r = origin.http.put("/v1/profile/bob/photo", content=b"",
                        headers={"Content-Type": "image/png", **origin.auth("bob")})  # fmt: skip
    assert r.status_code == 400 and error_of(r) == "empty_body"
    assert origin.staging() == [] and origin.blobs() == []


# --- store-once and metrics ------------------------------------------------------------------


def _metric(o: Origin, name: str) -> float:
    for line in o.http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_store_once_keeps_one_copy_and_counts_the_saving(tmp_path: Path) -> None:
    blob = make_blob(3000)
    with run_origin(tmp_path) as o:
        first = o.request(blob)
        assert o.put(first["upload_url"], blob).status_code == 200
        assert o.confirm(first["media_id"], sha(blob)).status_code == 200
        # Bob uploads the same encrypted bytes (e.g. a forwarded message): his own record.
        bob = o.auth("bob")
        r = httpx.post(o.url + "/v1/media/upload/request", headers=bob, json={
            "file_size": len(blob), "file_type": "image/jpeg", "file_hash": sha(blob)})
        second = r.json()
        # (Alice's token on Bob's upload URL would be a 403: the URL alone is the credential.)
        assert httpx.put(second["upload_url"], content=blob).status_code == 200
        r = httpx.post(o.url + "/v1/media/upload/confirm", headers=bob,
                       json={"media_id": second["media_id"], "file_sha256": sha(blob)})
        assert r.status_code == 200
        assert o.blobs() == [sha(blob)] and o.staging() == []  # one file on disk
        path = o.root / "blobs" / sha(blob)[:2] / sha(blob)[2:4] / sha(blob)
        assert path.stat().st_nlink == 1  # not even a second hard link
        # Each upload keeps its own record (and owner): each may get its own signed URL.
        for ticket, headers in ((first, {}), (second, bob)):
            r = o.http.get(f"/v1/media/{ticket['media_id']}/content", headers=headers)
            assert r.status_code == 200 and sha(blob) in r.json()["signed_url"]
        assert _metric(o, "edgeproxy_origin_dedup_bytes_saved_total") == len(blob)
        assert _metric(o, 'edgeproxy_origin_stored_bytes{tier="hot"}') == len(blob)
        assert _metric(o, "edgeproxy_origin_stored_blobs") == 1
        assert _metric(o, 'edgeproxy_origin_uploads_total{result="committed"}') == 1
        assert _metric(o, 'edgeproxy_origin_uploads_total{result="deduplicated"}') == 1
        assert _metric(o, 'edgeproxy_origin_uploads_total{result="created"}') == 2
        assert _metric(o, "edgeproxy_origin_upload_received_bytes_total") == 2 * len(blob)
        r = o.confirm(o.request(make_blob())["media_id"], "0" * 64)
        assert r.status_code == 409
    # The stored totals come from the database: a restarted origin reports the same.
    with run_origin(tmp_path) as o:
        assert _metric(o, "edgeproxy_origin_dedup_bytes_saved_total") == len(blob)
        assert _metric(o, "edgeproxy_origin_unfinished_uploads") == 1
        assert o.http.get("/metrics").headers["content-type"].startswith("text/plain")
