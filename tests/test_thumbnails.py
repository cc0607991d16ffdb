"""Tests for client-side thumbnails: size, format, blur, EXIF orientation, bad input."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from edgeproxy.client.thumbnails import image_facts, make_thumbnail
from edgeproxy.crypto import decrypt_bytes, encrypt_bytes, generate_media_key

ORIENTATION = 0x0112


def busy_image(width: int = 1920, height: int = 1080, seed: int = 7) -> Image.Image:
    """A photo-like stand-in: many coloured rectangles, so JPEG has edges to spend bytes on."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), (30, 90, 160))
    draw = ImageDraw.Draw(image)
    for _ in range(400):
        x, y = rng.randrange(width), rng.randrange(height)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.rectangle([x, y, x + rng.randrange(200), y + rng.randrange(200)], fill=colour)
    return image


def left_red_right_blue(width: int = 1920, height: int = 1080) -> Image.Image:
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height))
    return image


def save(image: Image.Image, path: Path, fmt: str, **params: object) -> Path:
    image.save(path, fmt, **params)
    return path


def open_jpeg(data: bytes) -> Image.Image:
    assert data[:3] == b"\xff\xd8\xff", "not a JPEG"
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    image.load()
    return image


def edge_energy(image: Image.Image) -> float:
    """Mean absolute difference between horizontally adjacent grey pixels (sharpness proxy)."""
    grey = image.convert("L")
    w, h = grey.size
    px = grey.load()
    assert px is not None
    total = 0
    for y in range(h):
        for x in range(w - 1):
            right, left = px[x + 1, y], px[x, y]
            assert isinstance(right, int) and isinstance(left, int)  # one band: "L"
            total += abs(right - left)
    return total / ((w - 1) * h)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_full_hd_photo_gives_small_jpeg(tmp_path: Path, fmt: str) -> None:
    path = save(busy_image(), tmp_path / f"photo.{fmt.lower()}", fmt)
    data = make_thumbnail(path)
    thumb = open_jpeg(data)
    assert thumb.size == (64, 36)  # fits 64x64, keeps 16:9
    assert 200 < len(data) <= 3072
    assert not thumb.getexif(), "metadata must not leak into the preview"
    assert image_facts(path) == {"width": 1920, "height": 1080}


def test_accepts_str_path_and_file_object(tmp_path: Path) -> None:
    path = save(busy_image(800, 600), tmp_path / "p.png", "PNG")
    from_path = make_thumbnail(str(path))
    with path.open("rb") as f:
        from_file = make_thumbnail(f)
        assert not f.closed, "the caller's file must stay open"
    assert from_path == from_file
    assert open_jpeg(from_path).size == (64, 48)
    assert image_facts(io.BytesIO(path.read_bytes())) == {"width": 800, "height": 600}


def test_thumbnail_is_blurred(tmp_path: Path) -> None:
    source = busy_image(640, 640)
    path = save(source, tmp_path / "p.png", "PNG")
    plain = source.copy()
    plain.thumbnail((64, 64))
    blurred = open_jpeg(make_thumbnail(path))
    assert blurred.size == plain.size == (64, 64)
    assert edge_energy(blurred) < 0.5 * edge_energy(plain)


def test_exif_orientation_6_rotates(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    path = save(left_red_right_blue(), tmp_path / "rot.jpg", "JPEG", exif=exif)
    assert image_facts(path) == {"width": 1080, "height": 1920}
    thumb = open_jpeg(make_thumbnail(path)).convert("RGB")
    assert thumb.size == (36, 64)
    # Rotating clockwise puts the stored left (red) half on top.
    top, bottom = thumb.getpixel((18, 4)), thumb.getpixel((18, 59))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_target_bytes_lowers_quality(tmp_path: Path) -> None:
    path = save(busy_image(), tmp_path / "p.png", "PNG")
    default = make_thumbnail(path)
    small = make_thumbnail(path, target_bytes=600)
    assert len(small) <= 600 < len(default)
    big = make_thumbnail(path, max_side=128, target_bytes=6000)
    assert max(open_jpeg(big).size) == 128


def test_small_image_is_not_enlarged(tmp_path: Path) -> None:
    path = save(busy_image(40, 20), tmp_path / "tiny.png", "PNG")
    assert open_jpeg(make_thumbnail(path)).size == (40, 20)


def test_transparency_is_flattened_onto_white(tmp_path: Path) -> None:
    path = save(Image.new("RGBA", (300, 300), (0, 0, 0, 0)), tmp_path / "clear.png", "PNG")
    pixel = open_jpeg(make_thumbnail(path)).convert("RGB").getpixel((32, 32))
    assert isinstance(pixel, tuple) and min(pixel) > 240, pixel


def test_grayscale_and_palette_sources(tmp_path: Path) -> None:
    for mode in ("L", "P", "CMYK"):
        image = busy_image(300, 200).convert(mode)
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        path = save(image, tmp_path / f"m{mode}.{fmt.lower()}", fmt)
        thumb = open_jpeg(make_thumbnail(path))
        assert thumb.mode == "RGB" and thumb.size == (64, 43)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is not an image\n", b"%PDF-1.7\n" + bytes(200), b"\x89PNG\r\n\x1a\n"],
)
def test_non_image_is_value_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "not-an-image"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="image"):
        make_thumbnail(path)
    with pytest.raises(ValueError, match="image"):
        image_facts(io.BytesIO(content))


def test_truncated_image_is_value_error(tmp_path: Path) -> None:
    good = save(busy_image(), tmp_path / "p.jpg", "JPEG").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(good[: len(good) // 3])
    with pytest.raises(ValueError, match="decode"):
        make_thumbnail(path)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_thumbnail(io.BytesIO(b""), max_side=0)


def test_thumbnail_blob_round_trip(tmp_path: Path) -> None:
    data = make_thumbnail(save(busy_image(), tmp_path / "p.png", "PNG"))
    media_key = generate_media_key()
    blob, _ = encrypt_bytes(data, media_key, "thumbnail")
    assert decrypt_bytes(blob, media_key, "thumbnail") == data
    # Same media key, different type: a different key/IV, so the image blob cannot be read as it.
    image_blob, _ = encrypt_bytes(data, media_key, "image")
    assert image_blob[16:] != blob[16:]
