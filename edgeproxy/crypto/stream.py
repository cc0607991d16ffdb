"""Encrypting and decrypting whole blobs as streams (or bytes), checking every MAC."""

from __future__ import annotations

import hashlib
import hmac
import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import BlobFormatError, IntegrityError
from .layout import (
    _OVERHEAD,
    BLOCK_SIZE,
    CHUNK_MAC_SIZE,
    CHUNK_SIZE,
    HEADER_SIZE,
    IV_SIZE,
    MAC_SIZE,
    VERSION,
    BlobHeader,
    MediaKeys,
    _hmac,
    _unpad,
    check_blob_layout,
)


class _ChunkMacWriter:
    """Computes the sidecar while ciphertext streams past, in pieces of any size."""

    def __init__(self, mac_key: bytes, iv: bytes) -> None:
        self._mac_key = mac_key
        self._last16 = iv  # the 16 bytes before the next ciphertext byte
        self._index = 0
        self._filled = 0
        self._mac: crypto_hmac.HMAC | None = None
        self.macs = bytearray()

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._mac is None:
                self._mac = _hmac(self._mac_key)
                self._mac.update(struct.pack(">Q", self._index) + self._last16)
            take = view[: CHUNK_SIZE - self._filled]
            self._mac.update(take)
            self._filled += len(take)
            self._last16 = (self._last16 + bytes(take[-BLOCK_SIZE:]))[-BLOCK_SIZE:]
            view = view[len(take) :]
            if self._filled == CHUNK_SIZE:
                self._finish_chunk()

    def _finish_chunk(self) -> None:
        assert self._mac is not None
        self.macs += self._mac.finalize()[:CHUNK_MAC_SIZE]
        self._mac, self._filled, self._index = None, 0, self._index + 1

    def finalize(self) -> bytes:
        if self._mac is not None:
            self._finish_chunk()
        return bytes(self.macs)


@dataclass(frozen=True)
class EncryptResult:
    """What the sender learns while encrypting: hashes, lengths and the chunk-MAC sidecar."""

    enc_sha256: str
    plain_sha256: str
    plain_length: int
    enc_length: int
    chunk_macs: bytes


def encrypt_stream(
    src: BinaryIO, dst: BinaryIO, media_key: bytes, media_type: str, *, read_size: int = 1 << 20
) -> EncryptResult:
    """Encrypt ``src`` (to EOF) into ``dst`` as one blob, holding ~``read_size`` bytes at a time."""
    keys = MediaKeys.derive(media_key, media_type)
    header = BlobHeader(VERSION, media_type, 0).to_bytes()
    encryptor = Cipher(algorithms.AES(keys.cipher_key), modes.CBC(keys.iv)).encryptor()
    padder = padding.PKCS7(128).padder()
    mac = _hmac(keys.mac_key)
    enc_hash, plain_hash = hashlib.sha256(), hashlib.sha256()
    chunks = _ChunkMacWriter(keys.mac_key, keys.iv)
    plain_length = enc_total = 0

    def emit(data: bytes, *, ciphertext: bool = True) -> None:
        nonlocal enc_total
        if not data:
            return
        mac.update(data)
        enc_hash.update(data)
        if ciphertext:
            chunks.update(data)
        dst.write(data)
        enc_total += len(data)

    emit(header + keys.iv, ciphertext=False)
    while piece := src.read(read_size):
        plain_length += len(piece)
        plain_hash.update(piece)
        emit(encryptor.update(padder.update(piece)))
    emit(encryptor.update(padder.finalize()) + encryptor.finalize())
    tag = mac.finalize()
    enc_hash.update(tag)
    dst.write(tag)
    enc_total += len(tag)
    return EncryptResult(
        enc_sha256=enc_hash.hexdigest(),
        plain_sha256=plain_hash.hexdigest(),
        plain_length=plain_length,
        enc_length=enc_total,
        chunk_macs=chunks.finalize(),
    )


def encrypt_bytes(data: bytes, media_key: bytes, media_type: str) -> tuple[bytes, EncryptResult]:
    """Encrypt ``data`` in memory; returns the blob and the `EncryptResult`."""
    out = io.BytesIO()
    result = encrypt_stream(io.BytesIO(data), out, media_key, media_type)
    return out.getvalue(), result


@dataclass(frozen=True)
class DecryptResult:
    """What a successful decryption checked and produced."""

    plain_sha256: str
    plain_length: int
    enc_sha256: str


def _read_exact(src: BinaryIO, n: int) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise IntegrityError(f"blob ended early: wanted {n} more bytes, got {len(data)}")
    return data


def _pieces(src: BinaryIO, n: int) -> Iterator[bytes]:
    """The next ``n`` bytes of ``src`` in pieces of at most 1 MiB."""
    while n:
        piece = _read_exact(src, min(n, 1 << 20))
        n -= len(piece)
        yield piece


def _expect_type(header: BlobHeader, media_type: str) -> None:
    if header.media_type != media_type:
        raise BlobFormatError(
            f"blob header says media type {header.media_type!r}, but {media_type!r} was expected"
        )


def verify_blob(
    src: BinaryIO, media_key: bytes, media_type: str, *, expected_enc_sha256: str | None = None
) -> str:
    """Check the whole blob in ``src`` (from offset 0; must be seekable) in one streaming pass:
    header, size, SHA-256 (if ``expected_enc_sha256`` is given), the HMAC and the final padding.
    Returns the blob's SHA-256 hex; raises BlobFormatError / IntegrityError otherwise."""
    keys = MediaKeys.derive(media_key, media_type)
    size = src.seek(0, io.SEEK_END)
    src.seek(0)
    head = src.read(HEADER_SIZE + IV_SIZE)
    header = check_blob_layout(head, size)
    _expect_type(header, media_type)
    mac, enc_hash = _hmac(keys.mac_key), hashlib.sha256(head)
    mac.update(head)
    tail = head  # the last two blocks of iv+ciphertext, to check the padding after the MAC
    for piece in _pieces(src, size - _OVERHEAD):
        mac.update(piece)
        enc_hash.update(piece)
        tail = (tail + piece[-2 * BLOCK_SIZE :])[-2 * BLOCK_SIZE :]
    tag = _read_exact(src, MAC_SIZE)
    enc_hash.update(tag)
    digest = enc_hash.hexdigest()
    if expected_enc_sha256 is not None and not hmac.compare_digest(
        digest, expected_enc_sha256.lower()
    ):
        raise IntegrityError(f"blob SHA-256 is {digest}, expected {expected_enc_sha256}")
    if not hmac.compare_digest(mac.finalize(), tag):
        raise IntegrityError(
            "blob HMAC mismatch: wrong media_key or media type, or the blob was modified"
        )
    # The MAC is good, so only a buggy or malicious sender can fail the checks below; making
    # them now keeps the promise that decrypt_stream writes nothing on failure.
    if not hmac.compare_digest(head[HEADER_SIZE:], keys.iv):
        raise IntegrityError("the blob's IV is not the one derived from the media key")
    _unpad_final(keys.cipher_key, tail[:BLOCK_SIZE], tail[BLOCK_SIZE:])
    return digest


def _unpad_final(cipher_key: bytes, prev: bytes, last_block: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES(cipher_key), modes.CBC(prev)).decryptor()
    return _unpad(decryptor.update(last_block) + decryptor.finalize())


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    media_key: bytes,
    media_type: str,
    *,
    expected_enc_sha256: str | None = None,
) -> DecryptResult:
    """Verify the blob in seekable ``src`` (`verify_blob`), then decrypt it into ``dst``.

    Nothing is written to ``dst`` unless the whole blob verified. ``src`` must not change
    between the two passes."""
    enc_sha256 = verify_blob(src, media_key, media_type, expected_enc_sha256=expected_enc_sha256)
    keys = MediaKeys.derive(media_key, media_type)
    size = src.seek(0, io.SEEK_END)
    src.seek(HEADER_SIZE + IV_SIZE)
    decryptor = Cipher(algorithms.AES(keys.cipher_key), modes.CBC(keys.iv)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    plain_hash, plain_length = hashlib.sha256(), 0

    def emit(out: bytes) -> None:
        nonlocal plain_length
        plain_hash.update(out)
        plain_length += len(out)
        dst.write(out)

    for piece in _pieces(src, size - _OVERHEAD):
        emit(unpadder.update(decryptor.update(piece)))
    try:
        emit(unpadder.update(decryptor.finalize()) + unpadder.finalize())
    except ValueError as exc:  # only reachable if src changed after verify_blob
        raise IntegrityError("bad PKCS7 padding in the final block") from exc
    return DecryptResult(plain_hash.hexdigest(), plain_length, enc_sha256)


def decrypt_bytes(blob: bytes, media_key: bytes, media_type: str) -> bytes:
    """Verify and decrypt a blob held in memory."""
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), out, media_key, media_type)
    return out.getvalue()
