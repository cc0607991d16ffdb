"""Ranged reads: which blob bytes a plaintext range needs, and their check and decryption
alone (one chunk MAC each)."""

from __future__ import annotations

import hmac
import io
from dataclasses import dataclass
from typing import IO

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import IntegrityError
from .layout import (
    BLOCK_SIZE,
    CHUNK_MAC_SIZE,
    CHUNK_SIZE,
    HEADER_SIZE,
    IV_SIZE,
    MediaKeys,
    _chunk_mac,
    _ciphertext_length,
    _unpad,
)


@dataclass(frozen=True)
class RangePlan:
    """Which blob bytes to fetch (inclusive) to decrypt plaintext bytes plain_start..plain_end."""

    blob_start: int
    blob_end: int
    first_chunk: int
    last_chunk: int
    plain_start: int
    plain_end: int


def plan_range(plain_start: int, plain_end: int, plain_length: int) -> RangePlan:
    """Plan a ranged fetch of plaintext bytes ``plain_start..plain_end`` (inclusive).

    The fetch starts at the 16 bytes before the first chunk (the IV for chunk 0), which are the
    CBC IV of that chunk and part of its MAC input."""
    if not 0 <= plain_start <= plain_end < plain_length:
        raise ValueError(
            f"plaintext range {plain_start}-{plain_end} is not inside 0-{plain_length - 1}"
        )
    ct_len = _ciphertext_length(plain_length)
    first, last = plain_start // CHUNK_SIZE, plain_end // CHUNK_SIZE
    return RangePlan(
        blob_start=HEADER_SIZE + first * CHUNK_SIZE,
        blob_end=HEADER_SIZE + IV_SIZE + min((last + 1) * CHUNK_SIZE, ct_len) - 1,
        first_chunk=first,
        last_chunk=last,
        plain_start=plain_start,
        plain_end=plain_end,
    )


def decrypt_range(
    data: bytes, plan: RangePlan, keys: MediaKeys, chunk_macs: bytes, plain_length: int
) -> bytes:
    """Verify and decrypt the blob bytes ``plan.blob_start..plan.blob_end`` (``data``).

    ``plain_length`` and ``chunk_macs`` (the whole sidecar) must come from the message, not the
    server: together they decide which chunk is the final, padded one. Every chunk MAC is
    checked before any plaintext is produced; IntegrityError names the first bad chunk."""
    if plan != plan_range(plan.plain_start, plan.plain_end, plain_length):
        raise ValueError(f"{plan} was not planned for a plaintext of {plain_length} bytes")
    ct_len = _ciphertext_length(plain_length)
    n_chunks = -(-ct_len // CHUNK_SIZE)
    if len(chunk_macs) != n_chunks * CHUNK_MAC_SIZE:
        raise IntegrityError(
            f"chunk-MAC sidecar is {len(chunk_macs)} bytes; {n_chunks} chunks need "
            f"{n_chunks * CHUNK_MAC_SIZE}"
        )
    want = plan.blob_end - plan.blob_start + 1
    if len(data) != want:
        raise IntegrityError(f"range data is {len(data)} bytes, expected {want}")
    base = plan.first_chunk * CHUNK_SIZE  # ciphertext offset of data[16]
    for index in range(plan.first_chunk, plan.last_chunk + 1):
        start = index * CHUNK_SIZE - base + BLOCK_SIZE
        prev, chunk = data[start - BLOCK_SIZE : start], data[start : start + CHUNK_SIZE]
        expected = chunk_macs[index * CHUNK_MAC_SIZE : (index + 1) * CHUNK_MAC_SIZE]
        if not hmac.compare_digest(_chunk_mac(keys.mac_key, index, prev, chunk), expected):
            raise IntegrityError(f"chunk {index} failed its MAC check")
    if plan.first_chunk == 0 and not hmac.compare_digest(data[:BLOCK_SIZE], keys.iv):
        raise IntegrityError("the blob's IV is not the one derived from the media key")
    decryptor = Cipher(algorithms.AES(keys.cipher_key), modes.CBC(data[:BLOCK_SIZE])).decryptor()
    plain = decryptor.update(data[BLOCK_SIZE:]) + decryptor.finalize()
    if plan.last_chunk == n_chunks - 1:
        plain = _unpad(plain)
        if base + len(plain) != plain_length:
            raise IntegrityError(
                f"final chunk holds {base + len(plain)} bytes of plaintext, expected {plain_length}"
            )
    return plain[plan.plain_start - base : plan.plain_end - base + 1]


_WINDOW_CHUNKS = 64  # chunks decrypted at a time by `decrypt_range_file` (4 MiB)


def decrypt_range_file(src: IO[bytes], dst: IO[bytes], plan: RangePlan, keys: MediaKeys,
                       chunk_macs: bytes, plain_length: int) -> int:  # fmt: skip
    """`decrypt_range` for the plan's blob bytes held in seekable ``src`` (from offset 0),
    `_WINDOW_CHUNKS` chunks at a time into ``dst``; the plaintext bytes written.

    Memory stays at a window, not the range: the whole range in memory, its plaintext and
    their copies took ~5x a range's size (~290 MB for 60 MB). A bad chunk raises
    IntegrityError after the windows before it were written: ``dst`` must be discarded then."""
    want = plan.blob_end - plan.blob_start + 1
    if (size := src.seek(0, io.SEEK_END)) != want:
        raise IntegrityError(f"range data is {size} bytes, expected {want}")
    written, first = 0, plan.first_chunk
    while first <= plan.last_chunk:
        last = min(first + _WINDOW_CHUNKS - 1, plan.last_chunk)
        window = plan_range(max(plan.plain_start, first * CHUNK_SIZE),
                            min(plan.plain_end, (last + 1) * CHUNK_SIZE - 1), plain_length)
        src.seek(window.blob_start - plan.blob_start)  # (windows share the 16-byte CBC IV)
        data = src.read(window.blob_end - window.blob_start + 1)
        written += dst.write(decrypt_range(data, window, keys, chunk_macs, plain_length))
        first = last + 1
    return written
