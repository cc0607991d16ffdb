"""`resume`: what a flight asks for after a 206 that carried part of what it asked (RFC 9110
§15.3.7), and which answers to that request it takes (§13.1.5 If-Range)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from edgeproxy.cache import facts, resume
from edgeproxy.cache.beresp import BeResp
from edgeproxy.cache.flight import Flight, FlightSpec
from edgeproxy.errors import UpstreamProtocolError

SIZE = 1000  # slice size
LENGTH = 3500  # object length


LM = "Tue, 01 Dec 2026 00:00:00 GMT"
LM_AT = 1_796_083_200.0  # LM as epoch seconds


def beresp(status: int = 206, start: int = 0, body: int | None = 300, length: int | None = LENGTH,
           etag: str | None = '"a"', last_modified: str | None = None,
           received: float = LM_AT + 60) -> BeResp:
    """An answer received at ``received`` with no Date of its own (a minute after `LM`)."""
    return BeResp(status=status, headers=[], length=length, body_length=body, etag=etag,
                  last_modified=last_modified, content_type=None, request_time=received,
                  response_time=received, body_start=start)


def fill(done: bool = False, error: Exception | None = None) -> Any:
    return SimpleNamespace(done=done, error=error, hold_last=False)


async def flight(fills: dict[int, Any], version: str | None = '"a"') -> Flight:
    f = Flight("/k", 0, 0)
    f.fills = fills
    f.version = version
    return f


@pytest.mark.parametrize(("answer", "received", "fills", "version", "want"), [
    # a 206 of bytes 0-299 for slice 0 (0-999): the rest of the slice
    (beresp(), 300, {0: fill()}, '"a"', (300, 999)),
    # the open fill is the last, short slice: up to the object's end
    (beresp(start=3000, body=200), 200, {3: fill()}, '"a"', (3200, 3499)),
    # through the last open fill of the run
    (beresp(), 300, {0: fill(), 1: fill()}, '"a"', (300, 1999)),
    # every fill finished or failed: nothing to ask for
    (beresp(), 300, {0: fill(done=True)}, '"a"', None),
    (beresp(), 300, {0: fill(error=OSError())}, '"a"', None),
    # the body ended short of what the 206 said: a broken answer, not a partial one
    (beresp(), 200, {0: fill()}, '"a"', None),
    # not a 206, or no length: nothing to continue
    (beresp(status=200, body=LENGTH), 300, {0: fill()}, '"a"', None),
    (beresp(length=None), 300, {0: fill()}, '"a"', None),
    # no validator for If-Range (a weak ETag only), or another representation's flight
    (beresp(etag='W/"a"'), 300, {0: fill()}, 'W/"a"', None),
    (beresp(), 300, {0: fill()}, '"b"', None),
    # Last-Modified with a known length is a validator too, when strong (RFC 9110 §8.8.2.2)
    (beresp(etag=None, last_modified=LM), 300, {0: fill()}, f"3500|{LM}", (300, 999)),
    # ... not one received within the second it names, nor beside a weak ETag (§13.1.5)
    (beresp(etag=None, last_modified=LM, received=LM_AT + 0.5), 300, {0: fill()},
     f"3500|{LM}", None),
    (beresp(etag='W/"a"', last_modified=LM), 300, {0: fill()}, f"3500|{LM}", None),
])
async def test_rest(answer: BeResp, received: int, fills: dict[int, Any], version: str,
                    want: tuple[int, int] | None) -> None:
    assert resume.rest(await flight(fills, version), answer, received, SIZE) == want


@pytest.mark.parametrize(("values", "want"), [
    (("de",), (300, 999)),  # the variant the flight fills: its rest
    (("fr",), None),  # another variant's version: not this flight's to continue
])
async def test_rest_of_a_varying_object(values: tuple[str, ...],
                                        want: tuple[int, int] | None) -> None:
    """A varying object's flight fills its variant's version (`facts.variant_version`),
    never equal to its answers' own: the rest was never asked for, every range cut short."""
    f = await flight({0: fill()}, facts.variant_version('"a"', ("accept-language",), ("de",)))
    f.meta = SimpleNamespace(vary=("accept-language",), vary_values=values)
    assert resume.rest(f, beresp(), 300, SIZE) == want


def test_bereq_asks_for_the_span_if_the_representation_is_the_same() -> None:
    spec = FlightSpec("/k", "/k?x=1", [(b"accept", b"*/*")], 0, 0, SIZE)
    req = resume.bereq(spec, (300, 999), beresp())
    assert req.method == "GET" and req.target == "/k?x=1"
    assert req.headers == [(b"accept", b"*/*"), (b"range", b"bytes=300-999"),
                           (b"if-range", b'"a"')]
    dated = resume.bereq(spec, (300, 999), beresp(etag=None, last_modified=LM))
    assert dated.headers[-1] == (b"if-range", LM.encode())
    # nothing ties a next answer to this one: a weak ETag (a date beside it is no validator
    # either, RFC 9110 §13.1.5), a date within its own second (§8.8.2.2)
    for weak in (beresp(etag='W/"a"'), beresp(etag='W/"a"', last_modified=LM),
                 beresp(etag=None, last_modified=LM, received=LM_AT)):
        with pytest.raises(UpstreamProtocolError):
            resume.bereq(spec, (300, 999), weak)


@pytest.mark.parametrize(("answer", "ok"), [
    (beresp(start=300, body=300), True),
    # §13.1.5: a failed If-Range is answered 200, the whole of another version
    (beresp(status=200, start=0, body=LENGTH, etag='"b"'), False),
    (beresp(start=200, body=300), False),  # other bytes than asked
    (beresp(start=300, body=300, length=4000), False),  # another length
    (beresp(start=300, body=300, etag='"b"'), False),  # another representation
    (beresp(start=300, body=0), False),  # nothing: no progress
])
def test_check(answer: BeResp, ok: bool) -> None:
    if ok:
        resume.check(answer, (300, 999), beresp())
    else:
        with pytest.raises(UpstreamProtocolError):
            resume.check(answer, (300, 999), beresp())


async def test_checks_for_hashes_each_answer_by_its_own_digest() -> None:
    f = await flight({0: fill(), 1: fill()})
    digest = "sha-256=:" + "A" * 43 + "=:"
    answer = beresp(start=300, body=900)
    answer.headers = [("content-digest", digest)]
    resume.checks_for(f, answer, SIZE)
    assert f.checks and f.hasher is not None and not f.whole
    assert not f.fills[0].hold_last and f.fills[1].hold_last  # byte 1199 is in slice 1
    resume.checks_for(f, beresp(start=300, body=900), SIZE)  # no digest: nothing to hold
    assert f.checks == () and f.hasher is None and not f.fills[1].hold_last


@pytest.mark.parametrize(("answer", "first", "last", "want"), [
    # less than slice 0 and no validator: the object whole instead (RFC 9111 §3.4: no way to
    # tell that a next part is of the same representation)
    (beresp(etag=None), 0, 0, True),
    (beresp(etag='W/"a"'), 0, 0, True),  # a weak ETag is no If-Range validator (§13.1.5)
    (beresp(start=1000, etag=None), 1, None, True),
    # a strong validator: the rest of the slice is asked for with If-Range (`rest`)
    (beresp(), 0, 0, False),
    (beresp(etag=None, last_modified=LM), 0, 0, False),
    # a date the answer's own Date (here its arrival) is not a second past: no validator
    (beresp(etag=None, last_modified=LM, received=LM_AT + 0.9), 0, 0, True),
    # a slice whole, or the object's short last slice: those are kept, the rest joined anew
    (beresp(body=1300, etag=None), 0, 2, False),
    (beresp(start=3000, body=500, etag=None), 3, None, False),
    # all asked for, a 200, a 206 elsewhere than asked, no length: nothing to replace
    (beresp(body=1000, etag=None), 0, 0, False),
    (beresp(status=200, body=LENGTH, etag=None), 0, 0, False),
    (beresp(start=500, etag=None), 0, 0, False),
    (beresp(length=None, etag=None), 0, 0, False),
])
async def test_whole_instead(answer: BeResp, first: int, last: int | None, want: bool) -> None:
    f = Flight("/k", first, last)
    assert resume.whole_instead(f, answer, SIZE) is want


@pytest.mark.parametrize(("answer", "first", "last", "want"), [
    (beresp(), 0, 0, 300),  # bytes 0-299 of slice 0 asked for: ends at 300
    (beresp(body=1000), 0, 0, None),  # all asked for
    (beresp(body=1300), 0, None, 1300),  # an open run: short of the object's end
    (beresp(start=3000, body=500), 3, None, None),  # up to the end: whole
    (beresp(start=500), 0, 0, None),  # not where asked: no part of this flight's run
    (beresp(status=200, body=LENGTH), 0, 0, None),
    (beresp(length=None), 0, 0, None),
])
async def test_cut_short(answer: BeResp, first: int, last: int | None, want: int | None) -> None:
    assert resume.cut_short(Flight("/k", first, last), answer, SIZE) == want
