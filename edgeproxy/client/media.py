"""The client library: encrypt → request upload → PUT → confirm, and fetch → verify → decrypt.

The server never sees a key: `MediaClient.upload` encrypts on this machine and returns the
*message payload* (seed 000, "Thumbnail in Message") that a sender would put in an end-to-end
encrypted chat message, with the media facts (dimensions, duration, page count) read before
encryption. `MediaClient.download` takes that payload, fetches the blob (whole or by plaintext
byte range) through any CDN node and writes plaintext only once it has verified.

Uploads survive a dropped connection: the PUT is resumed where the origin says it stands
(``HEAD`` → ``X-Upload-Offset``, then ``PUT`` with ``X-Upload-Offset``), with bounded retries and
exponential backoff; downloads too, by Range from the byte where they stopped (`fetching`).
API calls send ``Authorization: Bearer <token>``; the upload URL itself is a signed capability
and carries no token. With an object-store origin the upload URL is a presigned PUT into the
bucket (``upload_method: "direct"``), sent whole with the ``upload_headers`` it signs.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import mimetypes
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from .. import crypto
from ..errors import BlobFormatError, ClientError, EdgeProxyError, IntegrityError
from . import payloads
from .fetching import fetch_blob
from .responses import error_code, json_object, raise_for_status, required, unsigned, upload_offset

UPLOAD_CHUNK = 256 * 1024
MAX_BACKOFF = 5.0  # seconds between upload or download attempts, at most
# Transfer progress: bytes done so far (may go back when an upload resumes), and the total.
ProgressCallback = Callable[[int, int | None], None]


@dataclass(frozen=True)
class DownloadResult:
    """What one download did: plaintext bytes written, blob bytes fetched, the cache verdict."""

    bytes_written: int
    bytes_fetched: int
    x_cache: str | None
    status: int
    url: str = ""


def cdn_rewrite(media_url: str, cdn_url: str | None) -> str:
    """``media_url`` fetched via ``cdn_url``: its scheme and host (and path prefix) swapped in."""
    if not cdn_url:
        return media_url
    media, cdn = urlsplit(media_url), urlsplit(cdn_url)
    return urlunsplit((cdn.scheme, cdn.netloc, cdn.path.rstrip("/") + media.path, media.query, ""))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _part_beside(out: Path) -> tuple[int, Path]:
    """A new file of our own next to ``out`` to write into, then move over it: a fixed
    ``<out>.part`` was truncated by a second download to the same place (mixed plaintext
    left behind by one that reported success), and clobbered a user's own file."""
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    return fd, Path(name)


def _file_chunks(fh: IO[bytes], start: int = 0, total: int | None = None,
                 progress: ProgressCallback | None = None) -> Iterator[bytes]:  # fmt: skip
    fh.seek(start)
    done = start
    while piece := fh.read(UPLOAD_CHUNK):
        yield piece
        done += len(piece)
        if progress is not None:
            progress(done, total)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class MediaClient:
    """Sync client for the media API (upload) and any CDN node (download)."""

    def __init__(self, api_url: str, *, token: str | None = None, cdn_url: str | None = None,
                 timeout: float = 30.0, retries: int = 5, retry_backoff: float = 0.25,
                 progress: ProgressCallback | None = None) -> None:  # fmt: skip
        """``token`` is the bearer JWT of the media API. ``retries`` bounds how many times an
        upload or a download is resumed after a failure, waiting ``retry_backoff`` seconds,
        doubling (at most 5 s), between attempts. ``progress(done, total)`` is called as blob
        bytes are sent or received."""
        if token is not None and any(ord(c) < 32 or ord(c) == 127 for c in token.strip()):
            # (httpx refused it later as an illegal header, echoing the whole token, and it
            # was reported as a connection failure)
            raise ValueError("the token holds a control character (a line break?): it cannot "
                             "be sent in a header")
        self.api_url = api_url.rstrip("/")
        self.token = token.strip() if token is not None else None
        self.cdn_url = cdn_url
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.progress = progress
        self.http = httpx.Client(timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> MediaClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()

    # --- upload -----------------------------------------------------------------------------

    def _api(self, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST ``body`` (or GET without one) to the media API; the JSON object answered."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        url = f"{self.api_url}{path}"
        method = "GET" if body is None else "POST"
        try:
            response = self.http.request(method, url, headers=headers,
                                         json=dict(body) if body is not None else None)
        except httpx.HTTPError as exc:
            raise ClientError(0, "connection_failed", f"{method} {url}: {exc}") from exc
        raise_for_status(response)
        try:
            data = response.json()
        except ValueError as exc:
            raise ClientError(response.status_code, "bad_response",
                              f"{method} {url} did not answer JSON") from exc  # fmt: skip
        if not isinstance(data, dict):
            raise ClientError(response.status_code, "bad_response", f"{method} {url}: {data!r}")
        return data

    def _api_retrying(self, path: str, body: Mapping[str, Any], *,
                      replayable: bool) -> dict[str, Any]:
        """`_api`, tried again (bounded, with backoff) where the API was away: a 502, 503 or
        504, another request holding the upload, a connection never made; and a connection
        lost after the request went when it may be sent twice (``replayable``)."""
        failures = 0
        while True:
            try:
                return self._api(path, body)
            except ClientError as exc:
                cause = exc.__cause__
                away = exc.status in (502, 503, 504) or exc.error == "upload_in_progress" \
                    or isinstance(cause, httpx.ConnectError) \
                    or (replayable and isinstance(cause, httpx.TransportError))
                failures += 1
                if not away or failures > self.retries:
                    raise
            time.sleep(min(self.retry_backoff * 2 ** (failures - 1), MAX_BACKOFF))

    def signed_url(self, media_id: str) -> dict[str, Any]:
        """A signed, expiring download URL of an upload of ours: ``{"signed_url",
        "expires_at", ...}`` from ``GET /v1/media/{media_id}/content``."""
        return self._api(f"/v1/media/{media_id}/content")

    def upload(self, path: str | os.PathLike[str], *, mimetype: str | None = None,
               conversation_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        """Encrypt ``path``, upload it, and return the message payload for the receiver.

        ``conversation_id`` (optional) is sent with the request for the origin's
        per-conversation rate limit. The file name is not sent: it rides in the payload only.
        Raises `ClientError` (status 0 if the API could not be reached) on API errors.
        """
        from .mediafacts import media_facts

        path = Path(path)
        mimetype = mimetype or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        media_type = crypto.media_type_for(mimetype)
        media_key = crypto.generate_media_key()
        extras = _image_extras(path, media_key) if media_type == "image" else {}
        facts = media_facts(path, mimetype)  # read before encryption, sent only in the payload
        with tempfile.TemporaryFile() as blob:
            with path.open("rb") as src:
                result = crypto.encrypt_stream(src, blob, media_key, media_type)
            request: dict[str, Any] = {
                "file_size": result.enc_length,
                "file_type": mimetype,
                "file_hash": "sha256:" + result.enc_sha256,
            }
            if conversation_id is not None:
                request["conversation_id"] = conversation_id
            ticket = self._api_retrying("/v1/media/upload/request", request, replayable=False)
            media_id = required(ticket, "media_id", "the upload ticket")
            upload_url = required(ticket, "upload_url", "the upload ticket")
            if ticket.get("upload_method") == "direct":
                signed = ticket.get("upload_headers")
                if not isinstance(signed, dict):
                    raise ClientError(0, "bad_response", "the upload ticket has no "
                                      "'upload_headers' for its direct upload")  # fmt: skip
                self._put_direct(upload_url, {str(k): str(v) for k, v in signed.items()},
                                 blob, result.enc_length)  # fmt: skip
            else:
                self._put(upload_url, blob, result.enc_length)
        confirm: dict[str, Any] = {"media_id": media_id, "file_sha256": result.enc_sha256}
        if extras.get("thumb_blob") is not None:
            confirm["thumbnail_base64"] = _b64(extras["thumb_blob"])
        # (a retried confirm gets the 200 of the first: an upload whose confirm answer was
        # lost, or came as a 503 while the database was away, was thrown away after every byte
        # went, its media key never printed; found from outside)
        done = self._api_retrying("/v1/media/upload/confirm", confirm, replayable=True)
        payload: dict[str, Any] = {
            "type": media_type,
            "media_id": media_id,
            "media_url": required(done, "media_url", "the confirmation"),
            "thumbnail_url": done.get("thumbnail_url"),
            "thumbnail_base64": extras.get("thumbnail_data_uri"),
            "media_key": _b64(media_key),
            "file_sha256": result.plain_sha256,
            "file_enc_sha256": result.enc_sha256,
            "file_length": result.plain_length,
            "mimetype": mimetype,
            "file_name": path.name,  # for the receiver (seed 004's fileName); never uploaded
            "chunk_macs": _b64(result.chunk_macs),
        }
        payload.update(facts)  # width/height, duration, page_count: whichever could be read
        return payload

    def _put(self, upload_url: str, blob: IO[bytes], length: int) -> None:
        """PUT the blob, resuming from the origin's offset after a failure (bounded)."""
        # The signed URL is the credential: no Authorization header, which an S3-style
        # presigned URL would reject as a second auth mechanism.
        url = urljoin(self.api_url + "/", upload_url)
        offset, failures = 0, 0
        while True:
            headers = {"Content-Length": str(length - offset), "X-Upload-Offset": str(offset),
                       "Content-Type": "application/octet-stream"}  # fmt: skip
            problem: str
            try:
                response = self.http.put(url, headers=headers, content=_file_chunks(
                    blob, offset, length, self.progress))  # fmt: skip
            except httpx.TransportError as exc:
                problem = f"PUT {unsigned(url)} from offset {offset}: {exc!r}"
            else:
                code = error_code(response)
                if response.status_code == 409 and code == "offset_mismatch":
                    offset = upload_offset(response, length)  # the origin's, not ours
                    problem = f"origin is at offset {offset}"
                elif response.status_code == 409 and code == "already_uploaded" and offset:
                    # An earlier attempt delivered every byte but its answer was lost.
                    return
                elif not (response.status_code >= 500 or code == "upload_in_progress"):
                    raise_for_status(response)
                    body = json_object(response)
                    if body.get("complete") is True:
                        return
                    problem = f"PUT {unsigned(url)} stored {body.get('received')} of {length} bytes"
                else:
                    problem = f"PUT {unsigned(url)}: {response.status_code} {code}"
            failures += 1
            if failures > self.retries:
                raise ClientError(0, "upload_failed", f"gave up after {failures} attempts; "
                                  f"last: {problem}")  # fmt: skip
            time.sleep(min(self.retry_backoff * 2 ** (failures - 1), MAX_BACKOFF))
            with contextlib.suppress(httpx.TransportError):
                offset = self._upload_offset(url, length)  # where the origin really stands
                if offset == length:  # the last attempt got through; only its answer was lost
                    return

    def _put_direct(self, url: str, headers: dict[str, str], blob: IO[bytes],
                    length: int) -> None:  # fmt: skip
        """PUT the whole blob to a presigned object-store URL with the headers it signs
        (``x-amz-checksum-sha256``); a failed attempt is sent again whole (bounded)."""
        failures = 0
        while True:
            try:
                response = self.http.put(url, content=_file_chunks(blob), headers={
                    **headers, "Content-Length": str(length)})  # fmt: skip
            except httpx.TransportError as exc:
                problem = f"PUT to the store: {exc!r}"
            else:
                if response.status_code < 500:
                    raise_for_status(response)  # 4xx: the store refused (e.g. BadDigest)
                    return
                problem = f"PUT to the store: {response.status_code}"
            failures += 1
            if failures > self.retries:
                raise ClientError(0, "upload_failed", f"gave up after {failures} attempts; "
                                  f"last: {problem}")  # fmt: skip
            time.sleep(min(self.retry_backoff * 2 ** (failures - 1), MAX_BACKOFF))

    def _upload_offset(self, url: str, length: int) -> int:
        """How many bytes of the upload the origin has (``HEAD`` → ``X-Upload-Offset``)."""
        response = self.http.head(url)
        raise_for_status(response)  # e.g. 410 upload_expired: resuming is pointless
        return upload_offset(response, length)

    # --- download ---------------------------------------------------------------------------

    def download(self, payload: Mapping[str, Any], out: str | os.PathLike[str], *,
                 byte_range: tuple[int, int] | None = None) -> DownloadResult:  # fmt: skip
        """Fetch, verify and decrypt the media of ``payload`` into ``out``.

        ``byte_range`` is an inclusive plaintext range; an end past the file is clamped. Nothing
        is left at ``out`` unless every check passed (`IntegrityError` otherwise).
        """
        url = cdn_rewrite(str(payloads.field(payload, "media_url")), self.cdn_url)
        media_key = payloads.unb64(payload, "media_key")
        media_type = payloads.media_type(payload)
        out = Path(out)
        if byte_range is None:
            return self._download_whole(payload, url, media_key, media_type, out)
        return self._download_range(payload, url, media_key, media_type, out, byte_range)

    def _download_whole(self, payload: Mapping[str, Any], url: str, media_key: bytes,
                        media_type: str, out: Path) -> DownloadResult:  # fmt: skip
        expected_plain = payloads.sha256_field(payload, "file_sha256")
        expected_enc = payloads.sha256_field(payload, "file_enc_sha256", required=False)
        assert expected_plain is not None
        length = payload.get("file_length")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)
                                   or length < 0):
            raise ValueError("payload field 'file_length' is not a byte count")
        # The blob's size follows from the plaintext's: what a node sends beyond it is refused
        # as it arrives, not written to disk until the disk is full.
        blob_length = crypto.enc_length(length) if length is not None else None
        fd, enc_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".enc")
        enc_path = Path(enc_name)
        part_fd, part = _part_beside(out)
        try:
            with os.fdopen(fd, "w+b") as enc:
                status, x_cache, fetched = self._fetch(url, enc, None, blob_length)
                with os.fdopen(part_fd, "wb") as dst:
                    # decrypt_stream checks the blob hash and MAC before writing any plaintext.
                    result = crypto.decrypt_stream(enc, dst, media_key, media_type,
                                                   expected_enc_sha256=expected_enc)
            if not hmac.compare_digest(result.plain_sha256, expected_plain):
                raise IntegrityError(f"plaintext SHA-256 is {result.plain_sha256}, "
                                     f"the payload promised {expected_plain}")  # fmt: skip
            if length is not None and result.plain_length != length:
                raise IntegrityError(f"plaintext is {result.plain_length} bytes, "
                                     f"the payload promised {length}")  # fmt: skip
            os.replace(part, out)
        except BaseException:
            _unlink(part)
            raise
        finally:
            _unlink(enc_path)
        return DownloadResult(result.plain_length, fetched, x_cache, status, url)

    def _download_range(self, payload: Mapping[str, Any], url: str, media_key: bytes,
                        media_type: str, out: Path,
                        byte_range: tuple[int, int]) -> DownloadResult:  # fmt: skip
        plain_length = int(payloads.field(payload, "file_length"))
        start, end = byte_range
        if start < 0 or end < start or start >= plain_length:
            raise ValueError(f"range {start}-{end} is outside the file (0-{plain_length - 1})")
        plan = crypto.plan_range(start, min(end, plain_length - 1), plain_length)
        chunk_macs = payloads.unb64(payload, "chunk_macs")
        keys = crypto.MediaKeys.derive(media_key, media_type)
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024**2) as buf:
            status, x_cache, fetched = self._fetch(url, buf, plan, crypto.enc_length(plain_length))
            part_fd, part = _part_beside(out)
            try:  # (the part file holds checked windows only, and is dropped on a bad one)
                with os.fdopen(part_fd, "wb") as dst:
                    written = crypto.decrypt_range_file(buf, dst, plan, keys, chunk_macs,
                                                        plain_length)  # fmt: skip
                os.replace(part, out)
            except BaseException:
                _unlink(part)
                raise
        return DownloadResult(written, fetched, x_cache, status, url)

    def _fetch(self, url: str, sink: IO[bytes], plan: crypto.RangePlan | None,
               blob_length: int | None = None) -> tuple[int, str | None, int]:  # fmt: skip
        """Stream the blob (or the plan's byte range of it) into ``sink``, resuming after a
        cut (`fetching`). Returns status, X-Cache and the number of body bytes received."""
        span = (plan.blob_start, plan.blob_end) if plan is not None else None
        return fetch_blob(self.http, url, sink, span, blob_length, retries=self.retries,
                          backoff=self.retry_backoff, max_backoff=MAX_BACKOFF,
                          progress=self.progress)


def _image_extras(path: Path, media_key: bytes) -> dict[str, Any]:
    """Thumbnail (plaintext data URI and encrypted blob) of an image.

    The thumbnail is optional in the protocol, so an image Pillow cannot read is still uploaded,
    just without a preview.
    """
    from . import thumbnails  # Pillow is only needed for images

    try:
        jpeg = thumbnails.make_thumbnail(path)
    except (OSError, ValueError, EdgeProxyError):
        return {}
    blob, _ = crypto.encrypt_bytes(jpeg, media_key, "thumbnail")
    return {"thumb_blob": blob, "thumbnail_data_uri": "data:image/jpeg;base64," + _b64(jpeg)}


__all__ = ["BlobFormatError", "ClientError", "DownloadResult", "IntegrityError", "MediaClient",
           "cdn_rewrite"]  # fmt: skip
