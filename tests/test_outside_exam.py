"""Every finding of the outside exam (issue "Never a wrong byte, never a wedged node": "What was
found"), replayed against a live origin, shield and edge (`edgeproxy serve` processes) with
``require_signature`` on media. One table, every row on every node it concerns, over raw
sockets (a client library would normalise the very spellings under test):

- other spellings of a protected path are no way around its signature: unsigned, they are
  refused; signed for the canonical path, they are served exactly like it;
- Range headers with thousands of digits, a megabyte long, targets with NUL or CR LF, the
  target ``*``, a megabyte header field and 10,000 fields get a 4xx with a JSON body (or the
  RFC 9110 answer for the Range), never a 5xx.

The table tests of each rule live next to its code (`tests/test_target.py`, `test_guard.py`,
`test_http.py`, `test_cache_signatures.py`); this module is the exam as it was run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from edgeproxy.config import load_config
from edgeproxy.signing import DownloadSigner
from tests.nodes import NodeProcess, process_stack
from tests.rawhttp import RawResponse, get, raw_request
from tests.test_origin import Clock, Origin, make_blob, sha

KEY = "exam-download-key-0123456789"
SIGNED_MEDIA = f"""\
download_signing: {{keys: {{k1: {KEY}}}, current: k1}}
content_classes:
  - {{name: thumbnail, paths: ["/v/t1/*/thumb"], ttl: {{edge: 7d, shield: 30d}}, immutable: true}}
  - {{name: media, paths: ["/v/t1/*"], ttl: {{edge: 7d, shield: 30d}}, immutable: true,
     require_signature: true}}
  - {{name: profile_photo, paths: ["/pp/*"], ttl: {{edge: 1d, shield: 7d}}}}
"""
CACHES = ("shield", "edge")
EVERY = ("origin", "shield", "edge")


@dataclass
class Exam:
    nodes: dict[str, NodeProcess]
    blob: bytes

    @property
    def sha(self) -> str:
        return sha(self.blob)


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exam]:
    directory = Path(tmp_path_factory.mktemp("exam"))
    with process_stack(directory, SIGNED_MEDIA) as nodes:
        origin = nodes["origin"]
        blob = make_blob(8192)  # 131 KB
        with httpx.Client(base_url=origin.url, timeout=10) as http:
            client = Origin(origin.url, http, load_config(origin.config), Clock())
            http.headers.update(client.auth("alice"))
            client.upload(blob)
        yield Exam(nodes, blob)


def signed_query(path: str) -> str:
    params = DownloadSigner({"k1": KEY}, "k1").sign_download(path, time.time(), 600)
    return "?" + urlencode(params)


def assert_json_error(r: RawResponse, status: int, what: str) -> None:
    assert r.status == status, (what, r.status, r.body[:200])
    assert r.headers.get("content-type") == "application/json", (what, r.headers)
    body = json.loads(r.body)
    assert body["error"] and body["message"], (what, body)


# Other spellings of /v/t1/<sha> (finding 1: six of them returned the blob unsigned). Each
# names the same resource as the canonical path, or another one the node refuses or lacks.
SPELLINGS = [
    "/v/./t1/{sha}", "/x/../v/t1/{sha}", "/v/%2e/t1/{sha}", "/v/%2E%2E/v/t1/{sha}",
    "/v/t1/./{sha}", "/v/t1/x/../{sha}", "/./v/t1/{sha}", "/../v/t1/{sha}",
    "/%76/t1/{sha}", "/v/%74%31/{sha}", "/v/t1/%2e/{sha}", "/v/t1/{sha}/.",
    "//v/t1/{sha}", "/v//t1/{sha}", "/v/t1//{sha}", "/v/t1/{sha}/", "/v/t1/{sha};x",
    "/V/t1/{sha}", "/v/t1/{SHA}", "/v/t1/{sha}%20", "/v/t1/{sha}?exp=1",
    "http://exam.test/v/./t1/{sha}",
]  # fmt: skip


@pytest.mark.parametrize("role", CACHES)
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_no_spelling_gets_around_the_signature(exam: Exam, role: str, spelling: str) -> None:
    target = spelling.format(sha=exam.sha, SHA=exam.sha.upper())
    r = raw_request(exam.nodes[role].url, get(target.encode()))
    assert r.status < 500, (target, r.status, r.body[:200])
    assert exam.blob[:64] not in r.body, f"{target} served the blob unsigned"
    assert 400 <= r.status < 500, (target, r.status)
    assert_json_error(r, r.status, target)


@pytest.mark.parametrize("role", CACHES)
@pytest.mark.parametrize("spelling", ["/v/t1/{sha}", "/v/./t1/{sha}", "/x/../v/%74%31/{sha}"])
def test_a_signed_spelling_is_the_canonical_path(exam: Exam, role: str, spelling: str) -> None:
    """Signed for the canonical path, any spelling of it is that path: served byte-exact."""
    canonical = f"/v/t1/{exam.sha}"
    target = spelling.format(sha=exam.sha) + signed_query(canonical)
    r = raw_request(exam.nodes[role].url, get(target.encode()))
    assert r.status == 200 and r.body == exam.blob, (target, r.status)


def huge_number(digits: int) -> bytes:
    return b"9" * digits


# Findings 4 (5xx on client input) and the missing head limits: (name, request, status, error);
# ``{path}`` is the blob's path, signed where the node requires it.
HOSTILE: list[tuple[str, bytes, int, str | None]] = [
    # over MAX_RANGE_HEADER bytes: ignored, the whole blob (RFC 9110 §14.2 allows it)
    ("Range first-pos of 4,301 digits", b"Range: bytes=" + huge_number(4301) + b"-", 200, None),
    ("Range last-pos of 4,301 digits", b"Range: bytes=0-" + huge_number(4301), 200, None),
    ("Range suffix of 5,000 digits", b"Range: bytes=-" + huge_number(5000), 200, None),
    # under it: positions saturate, and the answer is what RFC 9110 §14.1.2 says
    ("Range first-pos of 1,000 digits", b"Range: bytes=" + huge_number(1000) + b"-", 416,
     "range_not_satisfiable"),
    ("Range last-pos of 1,000 digits", b"Range: bytes=0-" + huge_number(1000), 206, None),
    ("Range suffix of 1,000 digits", b"Range: bytes=-" + huge_number(1000), 206, None),
    ("Range header of 1 MB", b"Range: bytes=" + b"0-1," * 250_000, 431, "headers_too_large"),
    ("header field of 1 MB", b"X-Big: " + b"a" * 1_000_000, 431, "headers_too_large"),
]  # fmt: skip
TARGETS: list[tuple[str, bytes, bytes, int, str]] = [
    ("NUL", b"GET", b"/%00", 400, "bad_target"),
    ("CR LF", b"GET", b"/%0d%0aSet-Cookie:%20x=1", 400, "bad_target"),
    ("CR LF in a blob path", b"GET", b"/v/t1/%0d%0a", 400, "bad_target"),
    ("asterisk", b"GET", b"*", 400, "bad_target"),
    ("asterisk OPTIONS", b"OPTIONS", b"*", 400, "bad_target"),
    ("target of 100 KB", b"GET", b"/" + b"a" * 100_000, 414, "uri_too_long"),
]  # fmt: skip


@pytest.mark.parametrize("role", EVERY)
@pytest.mark.parametrize(("name", "field", "status", "error"), HOSTILE,
                         ids=[row[0] for row in HOSTILE])
def test_hostile_headers(exam: Exam, role: str, name: str, field: bytes, status: int,
                         error: str | None) -> None:  # fmt: skip
    path = f"/v/t1/{exam.sha}"
    target = path + (signed_query(path) if role != "origin" else "")
    r = raw_request(exam.nodes[role].url, get(target.encode(), field), timeout=20)
    if error is not None:
        assert_json_error(r, status, name)
        assert json.loads(r.body)["error"] == error
    else:
        assert r.status == status and r.body == exam.blob, (name, r.status)


@pytest.mark.parametrize("role", EVERY)
@pytest.mark.parametrize(("name", "method", "target", "status", "error"), TARGETS,
                         ids=[row[0] for row in TARGETS])
def test_hostile_targets(exam: Exam, role: str, name: str, method: bytes, target: bytes,
                         status: int, error: str) -> None:  # fmt: skip
    r = raw_request(exam.nodes[role].url, get(target, method=method))
    assert_json_error(r, status, name)
    assert json.loads(r.body)["error"] == error


@pytest.mark.parametrize("role", EVERY)
def test_ten_thousand_fields(exam: Exam, role: str) -> None:
    fields = [b"X-F%d: v" % i for i in range(10_000)]
    r = raw_request(exam.nodes[role].url, get(b"/healthz", *fields), timeout=20)
    assert_json_error(r, 431, "10,000 fields")
    assert json.loads(r.body)["error"] == "headers_too_large"


@pytest.mark.parametrize("role", EVERY)
def test_every_node_serves_after_the_exam(exam: Exam, role: str) -> None:
    path = f"/v/t1/{exam.sha}"
    target = path + (signed_query(path) if role != "origin" else "")
    r = raw_request(exam.nodes[role].url, get(target.encode()))
    assert r.status == 200 and r.body == exam.blob
