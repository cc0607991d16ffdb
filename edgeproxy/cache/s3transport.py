"""A cache node whose upstream is a bucket: ``upstream: s3://bucket/prefix``.

A shield then fetches committed media straight from the object store, with no origin process
on the download path, and the bucket can stay private: every request is signed with
botocore's SigV4 (`S3SigV4Auth`; never by hand) and sent over `HTTPTransport`'s httpcore pool.
Signing costs about 0.2 ms a request (measured: 5,000 signs on 2 shared cores), paid on
misses only, next to a slice's transfer time.

Request paths map to object keys under the prefix, the layout the origin's S3 store writes:

===========================  ===================================================
``/v/t1/<sha256>``           ``blobs/<sha256>`` (content-addressed media)
``/v/t1/<sha256>/thumb``     ``thumbs/<sha256>`` (the origin writes this alias at confirm)
any other path               the path itself (a bucket serving plain files)
===========================  ===================================================

``s3://replica/prefix,s3://primary/prefix`` reads a replica (the shield's region) and falls
back, in order, to the next bucket for an object not replicated yet.

The path is percent-decoded into the key (RFC 3986 §2.1: ``/a%20b`` names ``a b``), and one
that decodes to no UTF-8 names no key (404). The query string is dropped (signed-URL
parameters are the edge's business, not the bucket's). ``Range`` and the conditional headers
(``If-None-Match``, ``If-Match``, ``If-Modified-Since``, ``If-Unmodified-Since``) are
forwarded; S3 ignores ``If-Range``, so it is evaluated here as ``If-Match``/
``If-Unmodified-Since`` plus a retry without the range on 412. The answer keeps S3's ``ETag``,
``Last-Modified`` and ``Content-Range``. A missing key is 404 however S3 says it (404
``NoSuchKey``, or 403 ``AccessDenied`` to a caller without ``s3:ListBucket``), and caches as
a negative answer (``cache.negative_ttl``) like the origin's 404. A range S3 finds
unsatisfiable (416, with no ``Content-Range``) is answered from the object's HEAD: an empty
object whole (200), else 416 ``bytes */<size>``. Any other refusal or failure of the bucket
(a wrong key or signature, a 5xx) is the node's 502, its detail logged, never S3's XML.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator
from urllib.parse import quote, unquote_to_bytes, urlsplit

import botocore.session
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

from ..config import S3Config
from ..s3 import S3Location, S3Settings
from .transport import BeReq, HTTPTransport, RawHeaders, UpstreamResponse

FORWARDED = frozenset({b"range", b"if-none-match", b"if-match", b"if-range",
                       b"if-modified-since", b"if-unmodified-since"})  # fmt: skip
MEDIA = re.compile(r"/v/t1/([0-9a-f]{64})(/thumb)?")
MAX_ERROR_BODY = 16 * 1024

log = logging.getLogger("edgeproxy.cache")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def object_key(location: S3Location, target: str) -> str | None:
    """The object key a request target (path and query) maps to (see the module docstring);
    None for a path that decodes to no UTF-8 (no key can be named so)."""
    path = target.split("?", 1)[0]
    m = MEDIA.fullmatch(path)
    if m:
        return location.key(("thumbs/" if m.group(2) else "blobs/") + m.group(1))
    try:
        return location.key(unquote_to_bytes(path).decode("utf-8"))
    except UnicodeDecodeError:
        return None


class _Answer:
    """A response made here (a missing key as a uniform 404)."""

    def __init__(self, status: int, headers: RawHeaders, body: bytes) -> None:
        self.status, self.headers, self._body = status, headers, body

    async def aiter_body(self) -> AsyncIterator[bytes]:
        if self._body:
            yield self._body

    async def aclose(self) -> None:
        return None


def _json(status: int, error: str, message: str) -> _Answer:
    body = json.dumps({"error": error, "message": message}).encode()
    return _Answer(status, [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())], body)


def _not_found() -> _Answer:
    """A missing key: no Cache-Control, so the node keeps it for its ``negative_ttl``."""
    return _json(404, "not_found", "no such object")


def _code(body: bytes) -> str:
    """The ``<Code>`` of an S3 error document ('' if there is none)."""
    m = re.search(rb"<Code>([A-Za-z]+)</Code>", body)
    return m.group(1).decode() if m else ""


class S3Transport:
    """`Transport` to one bucket and prefix (signed GET/HEAD of the mapped object key)."""

    def __init__(self, url: str, settings: S3Settings, *, timeout: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:  # fmt: skip
        self.location = S3Location.parse(url)
        self.settings = settings
        endpoint = settings.endpoint or f"https://s3.{settings.region}.amazonaws.com"
        parts = urlsplit(endpoint)
        # Virtual-hosted style needs a bucket name that is a DNS label under a host name.
        host = parts.hostname or ""
        self.path_style = (settings.path_style or "." in self.location.bucket
                           or host == "localhost" or _is_ip(host))  # fmt: skip
        if self.path_style:
            self._base, self._bucket_path = endpoint.rstrip("/"), "/" + self.location.bucket
        else:  # virtual-hosted style: the bucket is part of the host name
            self._base = f"{parts.scheme}://{self.location.bucket}.{parts.netloc}"
            self._bucket_path = ""
        self._session = botocore.session.get_session()
        self._http = HTTPTransport(self._base, timeout=timeout, ssl_context=ssl_context)

    def _sign(self, method: str, path: str, headers: RawHeaders) -> RawHeaders:
        credentials = self.settings.credentials or self._session.get_credentials()
        if credentials is None:  # anonymous: a public bucket
            return headers
        request = AWSRequest(method=method, url=self._base + path,
                             headers={k.decode("latin-1"): v.decode("latin-1")
                                      for k, v in headers})  # fmt: skip
        S3SigV4Auth(credentials.get_frozen_credentials(), "s3", self.settings.region
                    ).add_auth(request)  # fmt: skip
        return [(k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in request.headers.items()
                if k.lower() != "host"]  # fmt: skip

    async def send(self, bereq: BeReq) -> UpstreamResponse:
        """GET or HEAD the object ``bereq.target`` maps to, signed."""
        method = bereq.method.upper()
        if method not in ("GET", "HEAD"):
            # in JSON like every refusal of the node's own (a bare 405 named nothing)
            answer = _json(405, "method_not_allowed", f"{method} is not served from a bucket")
            answer.headers.append((b"allow", b"GET, HEAD"))
            return answer
        key = object_key(self.location, bereq.target)
        if key is None:
            return _not_found()
        path = self._bucket_path + "/" + quote(key, safe="/~")
        headers = [(k.lower(), v) for k, v in bereq.headers if k.lower() in FORWARDED]
        if_range = next((v for k, v in headers if k == b"if-range"), None)
        headers = [(k, v) for k, v in headers if k != b"if-range"]
        ranged = any(k == b"range" for k, _ in headers)
        if if_range is not None and ranged:
            # S3 ignores If-Range, so it is evaluated here (RFC 9110 §13.1.5): the range only
            # if the object is still the one the validator names, else the whole object.
            strong = if_range.startswith(b'"')
            condition = (b"if-match" if strong else b"if-unmodified-since", if_range)
            response = await self._send(method, path, [*headers, condition], bereq.key)
            if response.status != 412:
                return response
            await response.aclose()
            headers = [(k, v) for k, v in headers if k != b"range"]
        return await self._send(method, path, headers, bereq.key)

    async def _send(self, method: str, path: str, headers: RawHeaders,
                    key: str) -> UpstreamResponse:  # fmt: skip
        signed = self._sign(method, path, headers)
        response = await self._http.send(BeReq(method, path, signed, key))
        if response.status in (403, 404) or response.status >= 500:
            return await self._refusal(response, path)
        if response.status == 416 and not any(k == b"content-range"
                                               for k, _ in response.headers):
            await response.aclose()
            return await self._unsatisfiable(path, key)
        response.headers = [(k, v) for k, v in response.headers
                            if not k.startswith(b"x-amz-")]  # fmt: skip
        return response

    async def _refusal(self, response: UpstreamResponse, path: str) -> UpstreamResponse:
        """A missing key as a uniform 404; any other refusal or failure as a 502 whose
        detail (S3's error code) goes to the log, not to clients."""
        body = bytearray()
        try:
            async for chunk in response.aiter_body():
                body += chunk
                if len(body) > MAX_ERROR_BODY:
                    break
        finally:
            await response.aclose()
        code = _code(bytes(body))
        if response.status == 404 or code in ("NoSuchKey", "AccessDenied"):
            return _not_found()
        log.warning("bucket %s answered %d %s for %s", self.location.bucket, response.status,
                    code or "(no code)", path)
        return _json(502, "bad_gateway", "the object store could not answer")

    async def _unsatisfiable(self, path: str, key: str) -> UpstreamResponse:
        """S3's 416 names no length: the object's HEAD does. An empty object is answered
        whole (RFC 9110 §14.1.1: nothing of it can be named), another with its length."""
        head = await self._http.send(BeReq("HEAD", path, self._sign("HEAD", path, []), key))
        if head.status != 200:
            return await self._refusal(head, path)
        await head.aclose()
        fields = [(k, v) for k, v in head.headers if not k.startswith(b"x-amz-")]
        size = next((v for k, v in fields if k == b"content-length"), b"")
        if size == b"0":
            return _Answer(200, fields, b"")
        return _Answer(416, [(b"content-range", b"bytes */" + size),
                             (b"content-length", b"0")], b"")

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._http.aclose()


class FallbackTransport:
    """Several buckets in order: a replica near the shield first, then the primary, for the
    objects replication has not copied yet (a 404 moves on to the next bucket)."""

    def __init__(self, transports: list[S3Transport]) -> None:
        self.transports = transports

    async def send(self, bereq: BeReq) -> UpstreamResponse:
        """The first answer that is not 404 (the last bucket's answer otherwise)."""
        for transport in self.transports[:-1]:
            response = await transport.send(bereq)
            if response.status != 404:
                return response
            await response.aclose()
        return await self.transports[-1].send(bereq)

    async def aclose(self) -> None:
        """Close every bucket's pool."""
        for transport in self.transports:
            await transport.aclose()


def s3_transport(url: str, config: S3Config, *, timeout: float,
                 ssl_context: ssl.SSLContext | None = None) -> S3Transport | FallbackTransport:
    """The transport of ``upstream: s3://bucket/prefix`` with the ``s3`` settings; a
    comma-separated list (``s3://replica/p,s3://primary/p``) falls back in order on 404."""
    settings = S3Settings.resolve(config)
    transports = [S3Transport(one.strip(), settings, timeout=timeout, ssl_context=ssl_context)
                  for one in url.split(",")]  # fmt: skip
    return transports[0] if len(transports) == 1 else FallbackTransport(transports)
