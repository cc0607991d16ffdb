"""Client-side thumbnails: the server only ever sees encrypted media, so the sender makes the
preview itself — at most 64x64, heavily blurred, a JPEG of about 2 KB that fits inline in a
message (and is encrypted with the media's key under the "thumbnail" media type)."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

# Tried best-first; the first that fits target_bytes wins, else the smallest.
_QUALITIES = (95, 90, 85, 80, 70, 60, 50, 40, 30, 20, 10, 5)
_BLUR_RADIUS = 2.0
_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90° or 270°

ImageSource = str | os.PathLike[str] | BinaryIO


@contextmanager
def _open(source: ImageSource) -> Iterator[Image.Image]:
    """Open an image, turning every "this is not an image we can read" into ValueError."""
    try:
        with warnings.catch_warnings():
            # A merely large image warns; a decompression bomb (2x the limit) still raises.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a supported image: {exc}") from exc
    with image:
        yield image


def _flatten(image: Image.Image) -> Image.Image:
    """RGB on a white background: transparent pixels would otherwise turn black in JPEG."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def make_thumbnail(source: ImageSource, *, max_side: int = 64, target_bytes: int = 2048) -> bytes:
    """A blurred JPEG preview of ``source`` that fits in ``max_side`` x ``max_side`` pixels.

    EXIF orientation is applied (the thumbnail is upright) and no metadata is copied into it,
    so GPS or camera data never leaks through the preview. JPEG quality is lowered step by step
    until the result fits ``target_bytes``; if even the lowest quality does not, the smallest
    result is returned. Raises ValueError if ``source`` is not a readable image.
    """
    if max_side < 1 or target_bytes < 1:
        raise ValueError("max_side and target_bytes must be positive")
    with _open(source) as image:
        # For JPEG, let the decoder downscale by up to 8x while decoding: far less work and
        # memory for a camera photo, and the result is still at least max_side on each side.
        image.draft("RGB", (max_side, max_side))
        try:
            upright = ImageOps.exif_transpose(image)
            rgb = _flatten(upright)
        except OSError as exc:  # truncated or corrupt pixel data
            raise ValueError(f"could not decode image: {exc}") from exc
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    blurred = rgb.filter(ImageFilter.GaussianBlur(_BLUR_RADIUS))
    smallest: bytes | None = None
    for quality in _QUALITIES:
        out = io.BytesIO()
        blurred.save(out, "JPEG", quality=quality, optimize=True)
        data = out.getvalue()
        if len(data) <= target_bytes:
            return data
        if smallest is None or len(data) < len(smallest):
            smallest = data
    assert smallest is not None
    return smallest


def image_facts(source: ImageSource) -> dict[str, int]:
    """``{"width": w, "height": h}`` of the image as displayed, i.e. after EXIF orientation.

    Reads only the header (no pixel decoding). Raises ValueError if ``source`` is not an image.
    """
    with _open(source) as image:
        width, height = image.size
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    if orientation in _SWAPS_AXES:
        width, height = height, width
    return {"width": width, "height": height}
