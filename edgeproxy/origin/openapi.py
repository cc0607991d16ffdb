"""The OpenAPI 3.1 description of the origin's HTTP API, served at ``GET /openapi.json``.

Written by hand, next to the handlers it describes; tests keep it true: every route of the app
appears here with its methods (and nothing else does), the examples validate against their
schemas, and a schemathesis run against a live origin finds no server error.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "hex SHA-256"}
SHA256_FIELD = {"type": "string", "pattern": "^(sha256:)?[0-9a-fA-F]{64}$",
                "description": "hex SHA-256, optionally prefixed sha256:"}
MEDIA_ID = {"type": "string", "pattern": "^m_[A-Za-z0-9_-]{8,64}$"}
USER = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}
ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    "additionalProperties": True,
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    names = {
        400: "malformed request", 401: "missing or invalid bearer token", 403: "forbidden",
        404: "not found", 409: "conflict with the upload's state", 410: "gone (expired)",
        412: "precondition failed (Tus-Resumable; If-Match, If-Unmodified-Since)",
        413: "too large", 414: "target too long",
        415: "unsupported media type", 416: "range not satisfiable",
        422: "a field is invalid", 429: "rate limited", 431: "request header fields too large",
        460: "tus checksum mismatch",
        507: "insufficient storage (the quota, or the server's disk is full)",
    }  # fmt: skip
    # Every route can get the request guard's refusals.
    return {str(s): _error(names[s]) for s in sorted({*statuses, 400, 414, 431})}


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _header(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema,
            "description": description}


BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
BLOB_HEADERS = [
    _header("Range", {"type": "string"}, "RFC 9110 §14.2 byte ranges (one is answered 206)"),
    _header("If-Range", {"type": "string"}),
    _header("If-None-Match", {"type": "string"}),
    _header("If-Modified-Since", {"type": "string"}),
    _header("If-Match", {"type": "string"}, "412 unless it names the blob's strong ETag"),
    _header("If-Unmodified-Since", {"type": "string"}),
]
BLOB_RESPONSES = {
    "200": {"description": "the whole blob (Content-Digest = Repr-Digest)",
            "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                "format": "binary"}}}},
    "206": {"description": "one byte range, with Content-Range and its own Content-Digest",
            "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                "format": "binary"}}}},
    "304": {"description": "not modified"},
    **_errors(404, 412, 416),
}
UPLOAD_URL_PARAMS = [
    _path_param("media_id", MEDIA_ID),
    {"name": "expires", "in": "query", "required": True, "schema": {"type": "integer"}},
    {"name": "size", "in": "query", "required": True, "schema": {"type": "integer"}},
    {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}},
]
UPLOAD_STATE = {
    "type": "object", "required": ["media_id", "received", "complete"],
    "properties": {"media_id": MEDIA_ID, "received": {"type": "integer", "minimum": 0},
                   "complete": {"type": "boolean"}},
}  # fmt: skip
UPLOAD_TICKET = {
    "type": "object", "required": ["media_id", "upload_url", "upload_expires", "resumable_until"],
    "properties": {"media_id": MEDIA_ID, "upload_url": {"type": "string"},
                   "upload_expires": {"type": "string"}, "resumable_until": {"type": "string"}},
}  # fmt: skip
UPLOAD_REQUEST = {
    "type": "object", "required": ["file_size", "file_type", "file_hash"],
    "properties": {
        "file_size": {"type": "integer", "minimum": 1, "description": "bytes of the blob"},
        "file_type": {"type": "string", "description": "MIME type of the media",
                      "pattern": r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*$"},
        "file_hash": SHA256_FIELD,
        "conversation_id": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"},
        "file_name": {"type": "string"},
    },
    "example": {"file_size": 1234, "file_type": "image/jpeg",
                "file_hash": "sha256:" + "ab" * 32, "conversation_id": "c1"},
}  # fmt: skip
CONFIRM = {
    "type": "object", "required": ["media_id", "file_sha256"],
    "properties": {"media_id": MEDIA_ID, "file_sha256": SHA256_FIELD,
                   "thumbnail_base64": {"type": "string", "contentEncoding": "base64"}},
    "example": {"media_id": "m_0123456789abcdef", "file_sha256": "ab" * 32},
}  # fmt: skip
CONFIRMED = {
    "type": "object", "required": ["media_url", "thumbnail_url"],
    "properties": {"media_url": {"type": "string"},
                   "thumbnail_url": {"type": ["string", "null"]}},
}  # fmt: skip
SIGNED = {
    "type": "object",
    "required": ["media_id", "signed_url", "expires_at", "expires", "content_type"],
    "properties": {"media_id": MEDIA_ID, "signed_url": {"type": "string"},
                   "expires_at": {"type": "integer"}, "expires": {"type": "string"},
                   "content_type": {"type": "string"},
                   "thumbnail_signed_url": {"type": "string"}},
}  # fmt: skip
NO_CONTENT = {"description": "done (tus headers)"}
TUS_OPTIONS = {"summary": "tus discovery", "responses": {"204": {"description": "tus support"}}}

PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {
        "get": {"summary": "liveness", "responses": {"200": _json("alive", {"type": "object"})}},
        "head": {"summary": "liveness", "responses": {"200": {"description": "alive"}}},
    },
    "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
        "200": {"description": "text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    "/openapi.json": {"get": {"summary": "this description", "responses": {
        "200": _json("OpenAPI 3.1", {"type": "object"})}}},
    "/v1/media/upload/request": {"post": {
        "summary": "record an upload and get a signed upload URL", "security": BEARER,
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": UPLOAD_REQUEST}}},
        "responses": {"200": _json("the upload URL", UPLOAD_TICKET),
                      **_errors(400, 401, 413, 415, 422, 429, 507)},
    }},
    "/v1/media/upload/confirm": {"post": {
        "summary": "check the uploaded blob and commit it", "security": BEARER,
        "requestBody": {"required": True, "content": {"application/json": {"schema": CONFIRM}}},
        "responses": {"200": _json("committed", CONFIRMED),
                      **_errors(400, 401, 403, 404, 409, 410, 413, 422, 507)},
    }},
    "/v1/media/{media_id}/content": {"get": {
        "summary": "a signed, expiring download URL of committed media", "security": BEARER,
        "parameters": [_path_param("media_id", {"type": "string"})],
        "responses": {"200": _json("signed URLs", SIGNED), **_errors(401, 403, 404, 409)},
    }},
    "/v1/upload/{media_id}": {
        "parameters": UPLOAD_URL_PARAMS,
        "put": {
            "summary": "send the blob (or, with X-Upload-Offset, the rest of it)",
            "parameters": [_header("X-Upload-Offset", {"type": "string"})],
            "requestBody": {"content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": _json("bytes received", UPLOAD_STATE),
                          **_errors(400, 403, 404, 409, 410, 413, 507)},
        },
        "patch": {
            "summary": "tus: append bytes from Upload-Offset",
            "requestBody": {"content": {"application/offset+octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}},
            "responses": {"204": NO_CONTENT,
                          **_errors(400, 403, 404, 409, 410, 412, 413, 415, 460, 507)},
        },
        "head": {"summary": "the offset to resume from",
                 "responses": {"200": {"description": "Upload-Offset and X-Upload-Offset"},
                               **_errors(403, 404, 409, 410)}},
        "delete": {"summary": "tus termination: abandon an unfinished upload",
                   "responses": {"204": NO_CONTENT, **_errors(403, 404, 409, 410, 412)}},
        "options": TUS_OPTIONS,
    },
    "/v1/tus": {
        "post": {
            "summary": "tus creation (Upload-Length, Upload-Metadata)", "security": BEARER,
            "parameters": [_header("Tus-Resumable", {"type": "string"}),
                           _header("Upload-Length", {"type": "string"}),
                           _header("Upload-Metadata", {"type": "string"})],
            # 413/460 for a creation-with-upload body: then with Location and X-Media-Id
            "responses": {"201": _json("created; Location is the upload URL", UPLOAD_TICKET),
                          **_errors(400, 401, 412, 413, 415, 422, 429, 460, 507)},
        },
        "options": TUS_OPTIONS,
    },
    "/v1/profile/{user}/photo": {"put": {
        "summary": "set the caller's profile photo", "security": BEARER,
        "parameters": [_path_param("user", USER)],
        "requestBody": {"required": True, "content": {
            t: {"schema": {"type": "string", "format": "binary"}}
            for t in ("image/jpeg", "image/png", "image/webp")}},
        "responses": {"200": _json("stored", {"type": "object"}),
                      **_errors(400, 401, 403, 413, 415, 507)},
    }},
    "/v/t1/{sha}": {m: {
        "summary": "committed media (encrypted, content-addressed)",
        "parameters": [_path_param("sha", SHA256), *BLOB_HEADERS], "responses": BLOB_RESPONSES,
    } for m in ("get", "head")},
    "/v/t1/{sha}/thumb": {m: {
        "summary": "the thumbnail committed with the media",
        "parameters": [_path_param("sha", SHA256), *BLOB_HEADERS], "responses": BLOB_RESPONSES,
    } for m in ("get", "head")},
    "/pp/{user}": {m: {
        "summary": "a user's current profile photo",
        "parameters": [_path_param("user", USER), *BLOB_HEADERS], "responses": BLOB_RESPONSES,
    } for m in ("get", "head")},
}


def description() -> dict[str, Any]:
    """The OpenAPI document."""
    from .. import __version__  # the package imports this module while it initialises

    return {
        "openapi": "3.1.0",
        "info": {"title": "edgeproxy origin", "version": __version__,
                 "description": "Upload, confirm and serve end-to-end-encrypted media."},
        "paths": PATHS,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
        },
    }


async def openapi_json(request: Request) -> Response:
    """``GET /openapi.json``."""
    return JSONResponse(description())
