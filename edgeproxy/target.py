"""Canonical request targets (placeholder until the full RFC 3986 canonicaliser lands)."""

from __future__ import annotations

from .errors import HTTPError


def canonical_path(raw_path: bytes) -> str:
    """The percent-encoded path with dot segments removed (RFC 3986 §5.2.4)."""
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise HTTPError(400, "bad_target", "the request target is not ASCII") from None
    if not path.startswith("/"):
        raise HTTPError(400, "bad_target", "the request target must start with '/'")
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif seg == ".":
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)
