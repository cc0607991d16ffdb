"""Upstream answer heads that llhttp refuses but a proxy can mend (RFC 9112).

- Whitespace between a field name and its colon: "A proxy MUST remove any such whitespace
  from a response message before forwarding the message downstream" (§5.1).
- Several Content-Length fields, or a list in one, whose values are all the same: "the
  message is processed with that single value used as the Content-Length field value"
  (§6.3, item 5). Values that differ stay an error, as does Content-Length beside
  Transfer-Encoding (item 3: "ought to be handled as an error").

Only heads are rewritten (interim ones and the final one), never a body. And one that cannot
be mended: a registered transfer coding that transforms the bytes (gzip, say) is a property
of the message, not of the content, and read as it comes the body would be passed on as
content it is not. (A token no registry knows is read as it comes, as before: the cache
tests send one, over a plain body, and expect it stored without the field.)
"""

from __future__ import annotations

import re

# The most bytes of an answer held back to mend its head, and the most an answer's heads
# may take in all (a larger head, or an endless run of interim answers, is refused).
HEAD_MAX = 64 * 1024

_SPACED_NAME = re.compile(rb"(?m)^([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]+:")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
# (a 101 ends the answers we read; "1000" is no status code, and no interim answer)
_INTERIM = re.compile(rb"HTTP/\d\.\d 1(?!01)\d\d(?:[ \t]|\r?\n)")
_ANSWER_START = b"HTTP/"
_LENGTH = re.compile(rb"(?mi)^content-length:[ \t]*([^\r\n]*?)[ \t]*\r?\n")
_CODING = re.compile(rb"(?mi)^transfer-encoding:")


def _one_length(head: bytes) -> bytes:
    """``head`` with its Content-Length fields made one, when they all say the same."""
    fields = list(_LENGTH.finditer(head))
    if len(fields) < 2 and not any(b"," in f.group(1) for f in fields):
        return head
    values = {v.strip() for f in fields for v in f.group(1).split(b",")}
    if len(values) != 1 or not next(iter(values)).isdigit() or _CODING.search(head):
        return head  # different values, or beside Transfer-Encoding: still an error
    first = fields[0]
    eol = b"\r\n" if first.group(0).endswith(b"\r\n") else b"\n"
    kept = b"Content-Length: " + values.pop() + eol
    out, at = [head[:first.start()], kept], first.end()
    for f in fields[1:]:
        out.append(head[at:f.start()])
        at = f.end()
    out.append(head[at:])
    return b"".join(out)


def repaired(raw: bytes) -> bytes | None:
    """``raw`` (an answer's bytes from its start) with its heads mended; None while the
    final head is not all in; ``raw`` itself when it cannot be mended (a body after an
    interim answer, say: waiting for a head that never comes ran into the timeout)."""
    heads, at = [], 0
    while True:
        end = _HEAD_END.search(raw, at)
        if end is None:
            return None
        head = _SPACED_NAME.sub(rb"\1:", raw[at:end.end()])
        at = end.end()
        if not _INTERIM.match(head):
            heads.append(_one_length(head))
            return b"".join(heads) + raw[at:]
        heads.append(head)
        after = raw[at:at + len(_ANSWER_START)]
        if not (after.startswith(_ANSWER_START) or _ANSWER_START.startswith(after)):
            return raw  # bytes after an interim answer that start no answer: broken


# The registered transfer codings that transform the bytes (IANA's HTTP Transfer Coding
# registry, with the x- aliases RFC 9112 §7.2 keeps): the client decodes none of them.
_TRANSFORMING = frozenset({b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress", b"br",
                           b"zstd"})


def transforming_coding(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The first transfer coding of an answer that transforms its bytes and that the client
    does not decode (it decodes chunked only, and only as the final coding), or None.

    Chunked anywhere but last (``chunked, identity``; twice) is one of those: RFC 9112 §6.3
    then frames the body by the connection's close, and its bytes, still chunk-encoded,
    would be passed on and stored as the content (§6.1 forbids both forms to a sender). An
    empty element after it (``chunked, ``) counts too: llhttp then reads to the close."""
    codings = [c.strip().lower() for name, value in headers if name == b"transfer-encoding"
               for c in value.split(b",")]
    for at, coding in enumerate(codings):
        if coding in _TRANSFORMING:
            return coding.decode("latin-1")
        if coding == b"chunked" and at != len(codings) - 1:
            return "chunked (not as the final coding)"
    return None
