"""A confirm over an S3 store commits only bytes it checked, also when the bucket already holds
a blob under the declared hash (moto server on a loopback port).

Found from outside: a confirm whose staged object was missing answered 200 if any blob was
stored under the declared hash (taken for "an earlier confirm crashed after promoting it"),
and a promote of bytes whose blob was stored skipped the SHA-256 of the staged copy. So a
client that only knew a hash (of someone's media, or of a profile photo, never checked as
media) got it committed as its own upload, and a profile photo was then served as media.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.objectstore import S3Endpoint, moto_s3
from tests.test_origin import Origin, error_of, make_blob, run_origin, sha


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture
def origin(tmp_path: Path, s3: S3Endpoint) -> Iterator[Origin]:
    env = {**s3.env(), "EDGEPROXY_ORIGIN__STORE": f"s3://{s3.new_bucket()}/edge"}
    with run_origin(tmp_path, env=env) as o:
        yield o


def _profile_photo(origin: Origin) -> bytes:
    """A profile photo of the fixture's user, stored in the bucket under its SHA-256."""
    photo = b"\xff\xd8\xff" + os.urandom(3000)  # a JPEG's bytes, not a media blob
    r = origin.http.put("/v1/profile/alice/photo", content=photo,
                        headers={"content-type": "image/jpeg"})  # fmt: skip
    assert r.status_code == 200 and r.json()["sha256"] == sha(photo), r.text
    return photo


def _ticket(origin: Origin, file_hash: str, size: int, method: str) -> dict[str, Any]:
    r = origin.http.post("/v1/media/upload/request", json={
        "file_size": size, "file_type": "image/jpeg", "file_hash": file_hash,
        "upload_method": method})  # fmt: skip
    assert r.status_code == 200, r.text
    ticket: dict[str, Any] = r.json()
    return ticket


def test_a_stored_hash_is_not_confirmed_without_bytes(origin: Origin) -> None:
    photo = _profile_photo(origin)
    ticket = _ticket(origin, sha(photo), 4096, "direct")
    r = origin.confirm(ticket["media_id"], sha(photo))
    assert (r.status_code, error_of(r)) == (409, "upload_incomplete"), r.text
    assert origin.http.get(f"/v/t1/{sha(photo)}").status_code == 404
    # Someone's committed media: nobody else confirms it without its bytes either.
    blob = make_blob(8)
    ticket = origin.request(blob)
    r = httpx.put(ticket["upload_url"], content=blob, headers=ticket["upload_headers"])
    assert r.status_code == 200 and origin.confirm(ticket["media_id"], sha(blob)).status_code == 200
    ticket = _ticket(origin, sha(blob), len(blob), "direct")
    r = origin.confirm(ticket["media_id"], sha(blob))
    assert (r.status_code, error_of(r)) == (409, "upload_incomplete"), r.text


@pytest.mark.parametrize("method", ["direct", "resumable"])
def test_bytes_staged_under_a_stored_hash_are_hashed(origin: Origin, method: str) -> None:
    """Other bytes (a valid media layout) declared with the hash of a stored photo: 422, and
    the photo never becomes media. (moto does not check a presigned PUT's
    x-amz-checksum-sha256; the bytes an upload sends through the origin nobody checks
    before the confirm.)"""
    photo = _profile_photo(origin)
    other = make_blob(16)
    ticket = _ticket(origin, sha(photo), len(other), method)
    refused = False
    if method == "direct":
        r = httpx.put(ticket["upload_url"], content=other, headers=ticket["upload_headers"])
        # a store that checks x-amz-checksum-sha256 refuses the bytes itself (moto does not)
        refused = r.status_code != 200
        assert not refused or 400 <= r.status_code < 500, r.text
    else:
        r = origin.put(ticket["upload_url"], other, headers={"X-Upload-Offset": "0"})
        assert r.status_code == 200 and r.json()["complete"] is True, r.text
    r = origin.confirm(ticket["media_id"], sha(photo))
    want = (409, "upload_incomplete") if refused else (422, "hash_mismatch")
    assert (r.status_code, error_of(r)) == want, r.text
    assert origin.http.get(f"/v/t1/{sha(photo)}").status_code == 404
    assert origin.http.get("/pp/alice").content == photo  # the photo itself is untouched


def test_a_confirm_that_fails_to_record_is_retried_from_the_staged_bytes(
        origin: Origin) -> None:  # fmt: skip
    """The staged object outlives the promote until the commit is recorded: a confirm whose
    database write failed (as a crash there) leaves bytes the retry checks and commits."""
    blob = make_blob(8)
    ticket = origin.request(blob)
    r = httpx.put(ticket["upload_url"], content=blob, headers=ticket["upload_headers"])
    assert r.status_code == 200, r.text
    records = origin.app.state.origin.records
    real = records.commit_upload

    def fails(*args: object, **kwargs: object) -> None:
        raise OSError("the database went away")

    records.commit_upload = fails
    try:
        assert origin.confirm(ticket["media_id"], sha(blob)).status_code >= 500
    finally:
        records.commit_upload = real
    r = origin.confirm(ticket["media_id"], sha(blob))
    assert r.status_code == 200, r.text
    assert origin.http.get(f"/v/t1/{sha(blob)}").content == blob
