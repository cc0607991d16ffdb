"""The canonical form of a request target's path (RFC 3986 §6.2.2), computed once per request.

Every decision a node takes on a path (content class, signed-URL check, cache key, upstream
request) must see the same spelling, or ``/v/./t1/x`` and ``/v/%2e/t1/x`` become ways around a
check made on ``/v/t1/x``. `canonical_path` turns the raw, percent-encoded path into that one
spelling:

- percent-escapes of unreserved characters are decoded (§2.3, §6.2.2.2) and the hex digits of
  the remaining escapes are upper-cased (§2.1, §6.2.2.1);
- characters a path may not hold verbatim (space, ``"``, ``<``, non-ASCII...) are percent-encoded,
  which is the only meaning such a target can have;
- dot segments are removed (§5.2.4, §6.2.2.3), ``%2e`` spellings included; a path that climbs
  above the root stays at the root, as §5.2.4 says;
- the absolute form (``http://host/p``, RFC 9112 §3.2.2) is reduced to its path.

A target that cannot be canonicalised without guessing is refused with 400 ``bad_target``: an
encoded ``/`` (``%2F``: decoding it changes the path's structure, keeping it lets two nodes
disagree), NUL, CR or LF raw or encoded, other raw control characters, a malformed escape,
and any target that is not a path (``*``, authority form).
"""

from __future__ import annotations

import re

from .errors import HTTPError

# RFC 3986 §2.3 unreserved, and the other characters a path segment may hold verbatim (§3.3
# pchar = unreserved / pct-encoded / sub-delims / ":" / "@").
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PATH_SAFE = _UNRESERVED | frozenset(b"!$&'()*+,;=:@/")
_HEX = frozenset(b"0123456789abcdefABCDEF")
# Escapes that must not be decoded and cannot be kept: "/" would change the segment structure,
# NUL/CR/LF have no business in a path and break whatever logs or re-sends it.
_FORBIDDEN_ESCAPES = frozenset({0x2F, 0x00, 0x0D, 0x0A})
# A path that needs no work at all: the common case, answered without the general algorithm.
_FAST = re.compile(rb"(?:/[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-._~!$&'()*+,;=:@]*|/)+")
_ABSOLUTE_FORM = re.compile(rb"https?://[^/]*", re.IGNORECASE)


def bad_target(message: str) -> HTTPError:
    """The 400 a node answers to a target it will not canonicalise."""
    return HTTPError(400, "bad_target", message)


def canonical_path(raw_path: bytes) -> str:
    """The canonical spelling of ``raw_path`` (the target's path, still percent-encoded, without
    the query); `HTTPError` 400 ``bad_target`` when it has none."""
    if _FAST.fullmatch(raw_path):
        return raw_path.decode("ascii")
    if m := _ABSOLUTE_FORM.match(raw_path):
        raw_path = raw_path[m.end():] or b"/"
    if not raw_path.startswith(b"/"):
        raise bad_target("the request target must be a path starting with '/'")
    return _remove_dot_segments(_normalize_escapes(raw_path))


def _normalize_escapes(raw: bytes) -> str:
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        byte = raw[i]
        if byte == 0x25:  # "%"
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise bad_target("malformed percent-escape in the request target")
            value = int(pair, 16)
            if value in _FORBIDDEN_ESCAPES:
                raise bad_target(f"the request target must not encode {_describe(value)}")
            out.append(chr(value) if value in _UNRESERVED else f"%{value:02X}")
            i += 3
            continue
        if byte < 0x20 or byte == 0x7F:
            raise bad_target(f"the request target must not contain {_describe(byte)}")
        out.append(chr(byte) if byte in _PATH_SAFE else f"%{byte:02X}")
        i += 1
    return "".join(out)


def _describe(byte: int) -> str:
    names = {0x2F: "'/' (%2F)", 0x00: "NUL", 0x0D: "CR", 0x0A: "LF"}
    return names.get(byte, f"the control character 0x{byte:02X}")


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path, segment-wise (same result as the buffer loop)."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")  # "/a/." -> "/a/"
        elif segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")  # "/a/b/.." -> "/a/"
        else:
            out.append(segment)
    return "/" + "/".join(out)
