"""The client-side encrypted blob format (see ``docs/blob-format.md`` for the normative text).

A blob is ``header(16) | iv(16) | AES-256-CBC(PKCS7) ciphertext | HMAC-SHA256(32)``. One random
32-byte ``media_key`` is expanded with HKDF-SHA256 (info names the media type) into the IV, the
cipher key and the MAC key. A sidecar of 10-byte MACs, one per 64 KiB ciphertext chunk, lets a
receiver verify and decrypt any chunk-aligned range alone. The server never sees a key: the origin
only runs `check_blob_layout`.

The package: `layout` (sizes, header, keys, chunk MACs), `stream` (whole blobs) and `ranges`
(a plaintext range alone). Everything public is imported from here.
"""

from __future__ import annotations

from .layout import (
    BLOCK_SIZE,
    CHUNK_MAC_SIZE,
    CHUNK_SIZE,
    HEADER_SIZE,
    IV_SIZE,
    MAC_SIZE,
    MAGIC,
    MEDIA_KEY_SIZE,
    MEDIA_TYPES,
    MIN_BLOB_SIZE,
    VERSION,
    BlobHeader,
    MediaKeys,
    check_blob_layout,
    compute_chunk_macs,
    enc_length,
    generate_media_key,
    media_type_for,
    plain_length_bound,
)
from .ranges import RangePlan, decrypt_range, decrypt_range_file, plan_range
from .stream import (
    DecryptResult,
    EncryptResult,
    decrypt_bytes,
    decrypt_stream,
    encrypt_bytes,
    encrypt_stream,
    verify_blob,
)

__all__ = [
    "BLOCK_SIZE", "CHUNK_MAC_SIZE", "CHUNK_SIZE", "HEADER_SIZE", "IV_SIZE", "MAC_SIZE", "MAGIC",
    "MEDIA_KEY_SIZE", "MEDIA_TYPES", "MIN_BLOB_SIZE", "VERSION", "BlobHeader", "DecryptResult",
    "EncryptResult", "MediaKeys", "RangePlan", "check_blob_layout", "compute_chunk_macs",
    "decrypt_bytes", "decrypt_range", "decrypt_range_file", "decrypt_stream", "enc_length",
    "encrypt_bytes", "encrypt_stream", "generate_media_key", "media_type_for",
    "plain_length_bound", "plan_range", "verify_blob",
]
