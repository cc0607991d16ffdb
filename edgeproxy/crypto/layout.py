"""The blob layout: sizes, media types, the header, key derivation and the chunk MACs; all
the origin needs (`check_blob_layout`)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import BlobFormatError, IntegrityError

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


def _unpad(data: bytes) -> bytes:
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(data) + unpadder.finalize()
    except ValueError as exc:
        raise IntegrityError("bad PKCS7 padding in the final block") from exc
