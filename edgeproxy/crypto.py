"""The client-side encrypted blob format (see ``docs/blob-format.md`` for the normative text).

A blob is ``header(16) | iv(16) | AES-256-CBC(PKCS7) ciphertext | HMAC-SHA256(32)``. One random
32-byte ``media_key`` is expanded with HKDF-SHA256 (info names the media type) into the IV, the
cipher key and the MAC key. A sidecar of 10-byte MACs, one per 64 KiB ciphertext chunk, lets a
receiver verify and decrypt any chunk-aligned range alone. The server never sees a key: the origin
only runs `check_blob_layout`.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgeproxy.errors import BlobFormatError, IntegrityError

MAGIC = b"WAMEDIA1"
VERSION = 1
HEADER_SIZE = 16
IV_SIZE = 16
MAC_SIZE = 32
BLOCK_SIZE = 16
CHUNK_SIZE = 65536
CHUNK_MAC_SIZE = 10
MEDIA_KEY_SIZE = 32
# header + iv + one padding block (empty plaintext) + mac
MIN_BLOB_SIZE = HEADER_SIZE + IV_SIZE + BLOCK_SIZE + MAC_SIZE
_OVERHEAD = HEADER_SIZE + IV_SIZE + MAC_SIZE

MEDIA_TYPES: dict[str, int] = {
    "image": 1,
    "video": 2,
    "audio": 3,
    "document": 4,
    "archive": 5,
    "thumbnail": 6,
}
_TYPE_BY_CODE = {code: name for name, code in MEDIA_TYPES.items()}
_HKDF_INFO = {name: b"edgeproxy " + name.capitalize().encode() + b" Keys" for name in MEDIA_TYPES}

_ARCHIVE_MIMETYPES = frozenset(
    {
        *("application/zip", "application/x-zip", "application/x-zip-compressed"),
        *("application/vnd.rar", "application/x-rar", "application/x-rar-compressed"),
        *("application/x-7z-compressed", "application/x-tar", "application/x-gtar"),
        *("application/gzip", "application/x-gzip", "application/x-bzip2", "application/x-bzip"),
    }
)


def media_type_for(mimetype: str) -> str:
    """The media type (a key of `MEDIA_TYPES`) a MIME type is encrypted as; unknown → document."""
    essence = mimetype.split(";", 1)[0].strip().lower()
    for prefix in ("image", "video", "audio"):
        if essence.startswith(prefix + "/"):
            return prefix
    return "archive" if essence in _ARCHIVE_MIMETYPES else "document"


def _ciphertext_length(plain_length: int) -> int:
    # PKCS7 always adds 1..16 bytes, so an exact multiple of 16 gains a whole block.
    return (plain_length // BLOCK_SIZE + 1) * BLOCK_SIZE


def enc_length(plain_length: int) -> int:
    """Size in bytes of the blob for ``plain_length`` bytes of plaintext."""
    if plain_length < 0:
        raise ValueError(f"plain_length must be >= 0, got {plain_length}")
    return _OVERHEAD + _ciphertext_length(plain_length)


def plain_length_bound(enc_length: int) -> int:
    """The largest plaintext a blob of ``enc_length`` bytes can hold (BlobFormatError if none)."""
    _check_size(enc_length)
    return enc_length - _OVERHEAD - 1


def _check_size(blob_size: int) -> None:
    if blob_size < MIN_BLOB_SIZE:
        raise BlobFormatError(
            f"blob is {blob_size} bytes; the smallest valid blob is {MIN_BLOB_SIZE} bytes"
        )
    if (blob_size - _OVERHEAD) % BLOCK_SIZE:
        raise BlobFormatError(
            f"blob size {blob_size} is not {_OVERHEAD} + a multiple of {BLOCK_SIZE} bytes"
        )


@dataclass(frozen=True)
class MediaKeys:
    """The three secrets HKDF expands one media_key into, for one media type."""

    iv: bytes
    cipher_key: bytes
    mac_key: bytes

    @classmethod
    def derive(cls, media_key: bytes, media_type: str) -> MediaKeys:
        """HKDF-SHA256(media_key, salt=None, info="edgeproxy <Type> Keys", 80) split 16/32/32."""
        if len(media_key) != MEDIA_KEY_SIZE:
            raise ValueError(f"media_key must be {MEDIA_KEY_SIZE} bytes, got {len(media_key)}")
        if media_type not in _HKDF_INFO:
            raise ValueError(
                f"unknown media type {media_type!r}; expected one of {list(MEDIA_TYPES)}"
            )
        okm = HKDF(hashes.SHA256(), 80, salt=None, info=_HKDF_INFO[media_type]).derive(media_key)
        return cls(iv=okm[0:16], cipher_key=okm[16:48], mac_key=okm[48:80])


def generate_media_key() -> bytes:
    """A fresh random media_key. Never reuse one for two different plaintexts of one type:
    the IV is derived from it, so reuse would repeat a key/IV pair."""
    return os.urandom(MEDIA_KEY_SIZE)


@dataclass(frozen=True)
class BlobHeader:
    """The 16-byte blob header: magic, version, media type, flags, 5 reserved zero bytes."""

    version: int
    media_type: str
    flags: int

    @classmethod
    def parse(cls, data: bytes) -> BlobHeader:
        """Parse the first 16 bytes of ``data``; BlobFormatError names what is wrong."""
        if len(data) < HEADER_SIZE:
            raise BlobFormatError(f"blob header needs {HEADER_SIZE} bytes, got {len(data)}")
        if data[:8] != MAGIC:
            raise BlobFormatError(f"bad magic {bytes(data[:8])!r}; expected {MAGIC!r}")
        version, code, flags = data[8], data[9], data[10]
        if version != VERSION:
            raise BlobFormatError(f"unsupported blob version {version}; expected {VERSION}")
        if code not in _TYPE_BY_CODE:
            raise BlobFormatError(f"unknown media type code {code}")
        # Version 1 defines no flags; an unknown flag could change the meaning of the bytes.
        if flags != 0:
            raise BlobFormatError(f"unsupported header flags 0x{flags:02x}; version 1 has none")
        if any(data[11:HEADER_SIZE]):
            raise BlobFormatError("reserved header bytes 11..15 must be zero")
        return cls(version=version, media_type=_TYPE_BY_CODE[code], flags=flags)

    def to_bytes(self) -> bytes:
        """The 16-byte encoding of this header."""
        return struct.pack(
            ">8sBBB5x", MAGIC, self.version, MEDIA_TYPES[self.media_type], self.flags
        )


def check_blob_layout(header: bytes, blob_size: int) -> BlobHeader:
    """What the origin checks at confirm time (it has no key): a valid header and a blob size
    that can be header + IV + whole AES blocks (at least one) + MAC."""
    parsed = BlobHeader.parse(header)
    _check_size(blob_size)
    return parsed


def _hmac(key: bytes) -> crypto_hmac.HMAC:
    return crypto_hmac.HMAC(key, hashes.SHA256())


def _chunk_mac(mac_key: bytes, index: int, prev: bytes, chunk: bytes) -> bytes:
    mac = _hmac(mac_key)
    mac.update(struct.pack(">Q", index) + prev)
    mac.update(chunk)
    return mac.finalize()[:CHUNK_MAC_SIZE]


def compute_chunk_macs(ciphertext_iv: bytes, ciphertext: bytes, mac_key: bytes) -> bytes:
    """The chunk-MAC sidecar of a whole ciphertext held in memory (reference implementation)."""
    out = bytearray()
    for index, start in enumerate(range(0, len(ciphertext), CHUNK_SIZE)):
        prev = ciphertext_iv if index == 0 else ciphertext[start - BLOCK_SIZE : start]
        out += _chunk_mac(mac_key, index, prev, ciphertext[start : start + CHUNK_SIZE])
    return bytes(out)


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


def _unpad(data: bytes) -> bytes:
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(data) + unpadder.finalize()
    except ValueError as exc:
        raise IntegrityError("bad PKCS7 padding in the final block") from exc


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
