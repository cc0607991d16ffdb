"""Facts about a media file that a receiver needs before (or without) downloading it.

The sender reads them from the plaintext, before encryption; they travel only inside the
end-to-end-encrypted message payload, never to the origin in the clear (seed 004's metadata
extraction, done on the client because the server cannot read the media):

- images: ``width``, ``height`` as displayed (EXIF orientation applied);
- audio and video: ``duration`` in seconds (mutagen: MP3, MP4/M4A/MOV, Ogg, FLAC, WAV, …), and
  ``width``/``height`` of an MP4/MOV video track;
- PDF: ``page_count`` (pypdf).

Every fact is optional: a file the library cannot read, or a fact it does not know, is simply
left out, never an error — the upload must not fail over a missing preview fact.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
from pathlib import Path
from typing import Any

from .. import crypto

_PDF_TYPES = frozenset({"application/pdf", "application/x-pdf"})
_MP4_BRANDS_AT = 4  # "ftyp" follows the first atom's 4-byte size


def media_facts(path: str | os.PathLike[str], mimetype: str) -> dict[str, Any]:
    """The facts of ``path`` (a ``mimetype`` file) that could be read; see the module doc."""
    path = Path(path)
    kind = crypto.media_type_for(mimetype)
    essence = mimetype.split(";", 1)[0].strip().lower()
    try:
        if kind == "image":
            return _image(path)
        if kind in ("audio", "video"):
            return _timed(path)
        if essence in _PDF_TYPES:
            return _pdf(path)
    except Exception:  # third-party parsers raise anything at all on odd files
        return {}
    return {}


def _image(path: Path) -> dict[str, Any]:
    from .thumbnails import image_facts

    return dict(image_facts(path))


def _duration(seconds: Any) -> float | None:
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds <= 0:
        return None
    return round(float(seconds), 3)


def _timed(path: Path) -> dict[str, Any]:
    import mutagen

    facts: dict[str, Any] = {}
    with path.open("rb") as f:
        is_mp4 = f.read(8)[_MP4_BRANDS_AT:] == b"ftyp"
    if is_mp4:
        # mutagen reads the length of an MP4's *audio* track; a video-only file has none, so
        # the movie header (mvhd) and the video track header (tkhd) are read here.
        facts.update(_mp4_facts(path))
    if "duration" not in facts:
        info = getattr(mutagen.File(path), "info", None)
        duration = _duration(getattr(info, "length", None))
        if duration is not None:
            facts["duration"] = duration
    return facts


def _mp4_facts(path: Path) -> dict[str, Any]:
    from mutagen.mp4 import Atoms  # type: ignore[attr-defined]  # re-exported, not in __all__

    facts: dict[str, Any] = {}
    with path.open("rb") as f:
        atoms = Atoms(f)
        mvhd = atoms.path(b"moov", b"mvhd")[-1]
        ok, data = mvhd.read(f)
        if ok:
            version = data[0]
            fmt, at = (">IQ", 20) if version == 1 else (">II", 12)
            timescale, duration = struct.unpack_from(fmt, data, at)
            seconds = _duration(duration / timescale) if timescale else None
            if seconds is not None:
                facts["duration"] = seconds
        for trak in atoms[b"moov"].findall(b"trak"):
            with contextlib.suppress(KeyError):
                ok, hdlr = trak[b"mdia", b"hdlr"].read(f)
                if not ok or hdlr[8:12] != b"vide":
                    continue
                ok, tkhd = trak[b"tkhd",].read(f)  # a 1-tuple: mutagen indexes by path
                if ok and len(tkhd) >= 8:
                    # The last 8 bytes of tkhd: width and height, 16.16 fixed point.
                    width, height = struct.unpack(">II", tkhd[-8:])
                    if width >> 16 and height >> 16:
                        facts["width"], facts["height"] = width >> 16, height >> 16
                break
    return facts


def _pdf(path: Path) -> dict[str, Any]:
    from pypdf import PdfReader

    # pypdf logs every oddity of a malformed file as a warning; a missing fact is not news.
    logger = logging.getLogger("pypdf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        pages = len(PdfReader(path).pages)
    finally:
        logger.setLevel(level)
    return {"page_count": pages} if pages > 0 else {}
