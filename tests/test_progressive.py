"""Progressive download of a large video through a real origin, shield and edge.

A ~100 MiB MP4-like file (a real movie header, then random "frames") is encrypted and uploaded
with the client; a late plaintext range is then fetched through the edge: only the 64 KiB chunks
that cover it cross the wire to the client, and only the cache slices that cover it at each
tier. A byte flipped in the origin's stored blob — in any chunk, or in the 16 bytes a chunk
depends on as its CBC IV — is refused by the chunk MACs before any plaintext is written.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy import cache, crypto, origin
from edgeproxy.client import MediaClient
from edgeproxy.config import Config, load_config
from edgeproxy.errors import ClientError, IntegrityError
from edgeproxy.origin.auth import mint_token
from tests.servers import free_port, serve

MiB = 1024**2
# Just under 100 MiB, so that the final chunk holds media bytes and its padding (at exactly
# 100 MiB the final chunk would be padding only, covered by the whole-blob MAC alone).
SIZE = 100 * MiB - 123
CHUNK = crypto.CHUNK_SIZE
DOC = Path(__file__).resolve().parent.parent / "docs" / "blob-format.md"


@dataclass
class Stack:
    config: Config
    origin: str
    shield: str
    edge: str
    token: str


@dataclass
class Video:
    path: Path
    data: bytes
    payload: dict[str, Any]


def _atom(name: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), name) + payload


def mp4_header(seconds: int, width: int, height: int, mdat_size: int) -> bytes:
    """ftyp + moov (mvhd, one video trak) + the head of an mdat of ``mdat_size`` bytes."""
    mvhd = _atom(b"mvhd", bytes(4) + struct.pack(">IIII", 0, 0, 600, 600 * seconds) + bytes(80))
    tkhd = _atom(b"tkhd", bytes([0, 0, 0, 3]) + struct.pack(">IIIII", 0, 0, 1, 0, 600 * seconds)
                 + bytes(52) + struct.pack(">II", width << 16, height << 16))  # fmt: skip
    mdhd = _atom(b"mdhd", bytes(4) + struct.pack(">IIII", 0, 0, 600, 600 * seconds) + bytes(4))
    hdlr = _atom(b"hdlr", bytes(8) + b"vide" + bytes(12) + b"VideoHandler\0")
    moov = _atom(b"moov", mvhd + _atom(b"trak", tkhd + _atom(b"mdia", mdhd + hdlr)))
    ftyp = _atom(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2avc1mp41")
    return ftyp + moov + struct.pack(">I4s", mdat_size, b"mdat")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("progressive")
    ports = {role: free_port() for role in ("origin", "shield", "edge")}
    config = load_config(None, env={
        "EDGEPROXY_DATA_DIR": str(tmp / "var"),
        "EDGEPROXY_PUBLIC_BASE_URL": f"http://127.0.0.1:{ports['edge']}",
        "EDGEPROXY_ORIGIN__PORT": str(ports["origin"]),
        "EDGEPROXY_LOG_LEVEL": "warning",
    })  # fmt: skip
    with (serve(origin.create_app(config), ports["origin"]) as o,
          serve(cache.create_app(config, "shield", upstream=o.url), ports["shield"]) as s,
          serve(cache.create_app(config, "edge", upstream=s.url), ports["edge"]) as e):  # fmt: skip
        yield Stack(config, o.url, s.url, e.url, mint_token(config.auth.jwt_secret, "alice"))


@pytest.fixture(scope="module")
def video(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Video:
    path = tmp_path_factory.mktemp("media") / "movie.mp4"
    head = mp4_header(754, 1920, 1080, 0)
    head = mp4_header(754, 1920, 1080, SIZE - len(head) + 8)
    data = head + os.urandom(SIZE - len(head))
    path.write_bytes(data)
    with MediaClient(stack.origin, token=stack.token) as client:
        payload = client.upload(path)
    return Video(path, data, payload)


def metric(url: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def blob_file(stack: Stack, video: Video) -> Path:
    sha = str(video.payload["file_enc_sha256"])
    return stack.config.data_dir / "origin" / "blobs" / sha[:2] / sha[2:4] / sha


def test_payload_carries_the_video_facts(video: Video) -> None:
    p = video.payload
    assert (p["type"], p["mimetype"]) == ("video", "video/mp4")
    assert (p["duration"], p["width"], p["height"]) == (754, 1920, 1080)
    assert p["file_length"] == SIZE
    n_chunks = -(-(crypto.enc_length(SIZE) - 64) // CHUNK)
    assert len(base64.b64decode(p["chunk_macs"])) == n_chunks * crypto.CHUNK_MAC_SIZE


def test_late_range_fetches_only_its_chunks(stack: Stack, video: Video, tmp_path: Path) -> None:
    start, end = 97 * MiB + 12_345, 97 * MiB + 312_345
    plan = crypto.plan_range(start, end, SIZE)
    edge_before = metric(stack.edge, "edgeproxy_upstream_bytes_total")
    shield_before = metric(stack.shield, "edgeproxy_upstream_bytes_total")
    with MediaClient(stack.origin) as client:  # media_url names the edge
        result = client.download(video.payload, tmp_path / "part.bin", byte_range=(start, end))
    assert (tmp_path / "part.bin").read_bytes() == video.data[start : end + 1]
    assert result.status == 206 and result.url.startswith(stack.edge)
    assert result.x_cache is not None and result.x_cache.startswith("MISS from edge")
    # The client received exactly the covering chunks (plus the 16-byte IV of the first).
    assert result.bytes_fetched == plan.blob_end - plan.blob_start + 1
    assert result.bytes_fetched == 16 + (plan.last_chunk - plan.first_chunk + 1) * CHUNK
    # Each tier filled only the cache slices under the range, not the 100 MiB object.
    slice_size = stack.config.cache.slice_size
    assert metric(stack.edge, "edgeproxy_upstream_bytes_total") - edge_before <= 2 * slice_size
    assert metric(stack.shield, "edgeproxy_upstream_bytes_total") - shield_before <= 2 * slice_size


def test_cli_range_download_through_the_edge(video: Video, tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(video.payload))
    start, end = 70 * MiB + 5, 70 * MiB + 65_540  # straddles chunks 1120 and 1121
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    proc = subprocess.run([sys.executable, "-m", "edgeproxy", "download", "p.json", "--out",
                           "part.bin", "--range", f"{start}-{end}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["fetched"] == 16 + 2 * CHUNK and summary["status"] == 206
    assert (tmp_path / "part.bin").read_bytes() == video.data[start : end + 1]


@pytest.mark.parametrize(
    ("chunk", "where"),
    [(0, 100), (400, -5), (800, 40_000), (SIZE // CHUNK, 3)],
    ids=["first-chunk", "iv-of-chunk-400", "middle-chunk", "last-chunk"],
)
def test_a_flipped_byte_in_any_chunk_is_refused(stack: Stack, video: Video, tmp_path: Path,
                                                chunk: int, where: int) -> None:  # fmt: skip
    # Ciphertext byte k is blob byte 32 + k; a negative `where` hits the 16 bytes *before* the
    # chunk, i.e. the previous chunk's last block, which is this chunk's CBC IV.
    offset = 32 + chunk * CHUNK + where
    # Only slices nobody has fetched yet: the flip happens "before the caches have it".
    with blob_file(stack, video).open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))
    last = min((chunk + 1) * CHUNK - 1, SIZE - 1)
    out = tmp_path / "part.bin"
    with (MediaClient(stack.origin) as client,
          pytest.raises(IntegrityError, match=f"chunk {chunk} failed")):  # fmt: skip
        client.download(video.payload, out, byte_range=(chunk * CHUNK + 1, last))
    assert list(tmp_path.iterdir()) == []  # no plaintext, not even a partial file
    # A range elsewhere in the same (now cached, tampered) slice still verifies and decrypts.
    neighbour = chunk + 1 if chunk < SIZE // CHUNK else chunk - 2
    with MediaClient(stack.origin) as client:
        client.download(video.payload, out, byte_range=(neighbour * CHUNK, neighbour * CHUNK + 9))
    assert out.read_bytes() == video.data[neighbour * CHUNK : neighbour * CHUNK + 10]


def test_whole_download_of_the_tampered_blob_is_refused(stack: Stack, video: Video,
                                                        tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "movie.mp4"
    with MediaClient(stack.origin) as client, pytest.raises((IntegrityError, ClientError)):
        client.download(video.payload, out)
    assert not out.exists() and not (tmp_path / "movie.mp4.part").exists()


def test_doc_late_range_vector() -> None:
    text = DOC.read_text()
    vec = dict(re.findall(r"^late_range\.(\w+): (\S+)$", text, re.M))
    plaintext = bytes(i % 251 for i in range(150_000))
    media_key = bytes.fromhex("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f")
    blob, result = crypto.encrypt_bytes(plaintext, media_key, "video")
    start, end = (int(x) for x in vec["plain"].split("-"))
    plan = crypto.plan_range(start, end, len(plaintext))
    assert f"{plan.blob_start}-{plan.blob_end}" == vec["blob"]
    assert f"{plan.first_chunk}-{plan.last_chunk}" == vec["chunks"]
    fetched = blob[plan.blob_start : plan.blob_end + 1]
    assert hashlib.sha256(fetched).hexdigest() == vec["fetched_sha256"]
    assert fetched[:16].hex() == vec["prev"]
    keys = crypto.MediaKeys.derive(media_key, "video")
    got = crypto.decrypt_range(fetched, plan, keys, result.chunk_macs, len(plaintext))
    assert got == plaintext[start : end + 1]
    assert hashlib.sha256(got).hexdigest() == vec["plaintext_sha256"]
    assert got[:16].hex() == vec["plaintext_head"]
