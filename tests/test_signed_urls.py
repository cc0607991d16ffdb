"""Signed download URLs: the primitives an edge verifies with (`DownloadSigner`), key rotation,
the ``download_signing`` config, and ``GET /v1/media/{media_id}/content`` over real sockets."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgeproxy.config import load_config
from edgeproxy.errors import ConfigError
from edgeproxy.signing import (
    BadSignature,
    DownloadSigner,
    SignatureExpired,
    has_download_signature,
    signature_params,
)
from tests.test_origin import PUBLIC, Clock, Origin, error_of, make_blob, run_origin, sha

PATH = "/v/t1/" + "ab" * 32
NOW = 1_700_000_000.0
OLD = DownloadSigner({"k1": "first-download-key-0123"}, "k1")
BOTH = DownloadSigner({"k1": "first-download-key-0123", "k2": "second-download-key-4567"}, "k2")
NEW = DownloadSigner({"k2": "second-download-key-4567"}, "k2")


def test_params_and_their_names() -> None:
    assert signature_params() == ("exp", "kid", "sig")
    params = OLD.sign_download(PATH, NOW)
    assert set(params) == {"exp", "kid", "sig"}
    assert params["exp"] == str(int(NOW) + 3600) and params["kid"] == "k1"
    message = f"GET\n{PATH}\n{params['exp']}\nk1".encode()
    assert params["sig"] == hmac.new(b"first-download-key-0123", message,
                                     hashlib.sha256).hexdigest()  # fmt: skip
    assert OLD.sign_download(PATH, NOW + 0.2, ttl=60)["exp"] == str(int(NOW) + 61)  # ceil
    assert has_download_signature(params) and has_download_signature({"sig": "x"})
    assert not has_download_signature({"a": "1"})
    assert "first-download-key" not in repr(OLD)


def test_valid_until_exp_then_expired() -> None:
    params = OLD.sign_download(PATH, NOW)
    OLD.verify_download(PATH, params, NOW)
    OLD.verify_download(PATH, params, NOW + 3600)  # exp itself is still valid
    with pytest.raises(SignatureExpired):
        OLD.verify_download(PATH, params, NOW + 3601)


@pytest.mark.parametrize(
    "change",
    [
        {"sig": "0" * 64}, {"sig": ""}, {"sig": "zz"}, {"sig": "é" * 64},
        {"exp": str(int(NOW) + 7200)}, {"exp": "soon"}, {"exp": "-1"}, {"exp": "9" * 40},
        {"kid": "k9"}, {"kid": "k2"},
        {"exp": None}, {"kid": None}, {"sig": None},
    ],
)  # fmt: skip
def test_tampered_or_incomplete_signatures_are_bad(change: dict[str, str | None]) -> None:
    params: dict[str, str] = dict(OLD.sign_download(PATH, NOW))
    for k, v in change.items():
        if v is None:
            del params[k]
        else:
            params[k] = v
    with pytest.raises(BadSignature):
        BOTH.verify_download(PATH, params, NOW)
    # A forged signature is "bad", never "expired", whatever the time.
    with pytest.raises(BadSignature):
        BOTH.verify_download(PATH, params, NOW + 10**9)


def test_signature_is_bound_to_the_path() -> None:
    params = OLD.sign_download(PATH, NOW)
    for other in (PATH + "/thumb", "/v/t1/" + "cd" * 32, PATH.upper(), PATH + "\nx"):
        with pytest.raises(BadSignature):
            OLD.verify_download(other, params, NOW)


def test_key_rotation_without_downtime() -> None:
    # 1. every node learns k2 (k1 still signs); 2. k2 becomes current; 3. k1 is dropped
    #    once the last k1 signature has expired.
    old_sig = OLD.sign_download(PATH, NOW)
    new_sig = BOTH.sign_download(PATH, NOW)
    assert new_sig["kid"] == "k2"
    BOTH.verify_download(PATH, old_sig, NOW)
    BOTH.verify_download(PATH, new_sig, NOW)
    NEW.verify_download(PATH, new_sig, NOW)
    with pytest.raises(BadSignature, match="unknown key id"):
        NEW.verify_download(PATH, old_sig, NOW)
    assert BOTH.key_ids == ("k1", "k2")


def test_download_signing_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("""\
download_signing:
  keys: {k1: first-download-key-0123, k2: second-download-key-4567}
  current: k2
  ttl: 10m
content_classes:
  - name: media
    paths: ["/v/t1/*"]
    require_signature: true
""")
    config = load_config(path, env={})
    assert config.download_signing.current == "k2" and config.download_signing.ttl == 600
    assert config.content_classes[0].require_signature is True
    assert "first-download-key" not in repr(config)
    signer = DownloadSigner.from_config(config.download_signing)
    BOTH.verify_download(PATH, signer.sign_download(PATH, NOW), NOW)
    assert load_config(None, env={}).content_classes[1].require_signature is False
    for env, message in (
        ({"EDGEPROXY_DOWNLOAD_SIGNING__CURRENT": "k3"}, "current"),
        ({"EDGEPROXY_DOWNLOAD_SIGNING__KEYS__K1": "short"}, "at least 16"),
        ({"EDGEPROXY_DOWNLOAD_SIGNING__TTL": "0"}, "positive"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(None, env=env)


# --- the content endpoint --------------------------------------------------------------------


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Origin]:
    with run_origin(tmp_path) as o:
        yield o


def test_content_answers_a_signed_url(origin: Origin) -> None:
    blob, thumb = make_blob(100), make_blob(2, media_type=6)
    ticket = origin.request(blob)
    assert origin.put(ticket["upload_url"], blob).status_code == 200
    media_id = ticket["media_id"]
    r = origin.http.get(f"/v1/media/{media_id}/content")
    assert r.status_code == 409 and error_of(r) == "not_committed"
    assert origin.confirm(media_id, sha(blob), thumb).status_code == 200

    r = origin.http.get(f"/v1/media/{media_id}/content")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    body = r.json()
    url = httpx.URL(body["signed_url"])
    assert str(url).startswith(f"{PUBLIC}/v/t1/{sha(blob)}?exp=")
    assert list(url.params) == ["exp", "kid", "sig"] and url.params["kid"] == "k1"
    assert body["expires_at"] == int(url.params["exp"]) == math.ceil(origin.clock.now + 3600)
    assert body["expires"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(body["expires_at"]))
    assert body["content_type"] == "image/jpeg" and body["media_id"] == media_id
    # An edge needs nothing but the config to check it.
    signer = DownloadSigner.from_config(origin.config.download_signing)
    signer.verify_download(url.path, dict(url.params), origin.clock.now)
    with pytest.raises(SignatureExpired):
        signer.verify_download(url.path, dict(url.params), origin.clock.now + 3602)
    thumb_url = httpx.URL(body["thumbnail_signed_url"])
    assert thumb_url.path == f"/v/t1/{sha(blob)}/thumb"
    signer.verify_download(thumb_url.path, dict(thumb_url.params), origin.clock.now)
    # The origin ignores the parameters: shields fill from it with the signed URL as is.
    r = origin.http.get(f"{url.path}?{url.query.decode()}")
    assert r.status_code == 200 and r.content == blob


def test_content_ttl_follows_the_clock_and_config(tmp_path: Path) -> None:
    clock = Clock()
    env = {"EDGEPROXY_DOWNLOAD_SIGNING__TTL": "5m"}
    with run_origin(tmp_path, clock, env=env) as o:
        blob = make_blob()
        media_id = o.request(blob)["media_id"]
        ticket = o.request(blob)
        assert o.put(ticket["upload_url"], blob).status_code == 200
        assert o.confirm(ticket["media_id"], sha(blob)).status_code == 200
        clock.now += 1000
        body = o.http.get(f"/v1/media/{ticket['media_id']}/content").json()
        assert body["expires_at"] - clock.now == pytest.approx(300, abs=1)
        r = o.http.get(f"/v1/media/{media_id}/content")  # requested, never uploaded
        assert r.status_code == 409


def test_content_errors(origin: Origin) -> None:
    for media_id in ("m_doesnotexist123", "not-a-media-id"):
        r = origin.http.get(f"/v1/media/{media_id}/content")
        assert r.status_code == 404 and error_of(r) == "not_found"
    r = httpx.get(f"{origin.url}/v1/media/m_doesnotexist123/content")
    assert r.status_code == 401
