"""Tests for the blob format: doc vectors, an independent reference, tampering, ranges, memory."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import random
import re
import struct
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.crypto import (
    CHUNK_MAC_SIZE,
    CHUNK_SIZE,
    HEADER_SIZE,
    IV_SIZE,
    MAC_SIZE,
    MAGIC,
    MEDIA_TYPES,
    VERSION,
    BlobHeader,
    MediaKeys,
    RangePlan,
    check_blob_layout,
    compute_chunk_macs,
    decrypt_bytes,
    decrypt_range,
    decrypt_stream,
    enc_length,
    encrypt_bytes,
    encrypt_stream,
    generate_media_key,
    media_type_for,
    plain_length_bound,
    plan_range,
    verify_blob,
)
from edgeproxy.crypto.stream import _ChunkMacWriter
from edgeproxy.errors import BlobFormatError, IntegrityError

DOC = Path(__file__).resolve().parent.parent / "docs" / "blob-format.md"
KEY = bytes(range(32))

# ---------------------------------------------------------------------------------------------
# An independent reference: HKDF from RFC 5869 on the stdlib hmac module, CBC chained by hand
# over single-block AES (ECB of one block), PKCS#7 by hand. Nothing here calls edgeproxy.


def ref_hkdf_sha256(ikm: bytes, info: bytes, length: int, salt: bytes = b"") -> bytes:
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def ref_aes_block(key: bytes, block: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def ref_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    pad = 16 - len(plaintext) % 16
    data = plaintext + bytes([pad]) * pad
    out, prev = bytearray(), iv
    for i in range(0, len(data), 16):
        prev = ref_aes_block(key, bytes(a ^ b for a, b in zip(data[i : i + 16], prev, strict=True)))
        out += prev
    return bytes(out)


def ref_keys(media_key: bytes, media_type: str) -> tuple[bytes, bytes, bytes]:
    info = b"edgeproxy " + media_type.capitalize().encode() + b" Keys"
    okm = ref_hkdf_sha256(media_key, info, 80)
    return okm[:16], okm[16:48], okm[48:80]


def ref_blob(media_key: bytes, media_type: str, plaintext: bytes) -> tuple[bytes, bytes]:
    """(blob, sidecar) built from the reference primitives."""
    iv, cipher_key, mac_key = ref_keys(media_key, media_type)
    header = b"WAMEDIA1" + bytes([1, MEDIA_TYPES[media_type], 0]) + bytes(5)
    ct = ref_cbc_encrypt(cipher_key, iv, plaintext)
    tag = hmac.new(mac_key, header + iv + ct, hashlib.sha256).digest()
    sidecar = b""
    for i in range(0, len(ct), CHUNK_SIZE):
        prev = iv if i == 0 else ct[i - 16 : i]
        msg = struct.pack(">Q", i // CHUNK_SIZE) + prev + ct[i : i + CHUNK_SIZE]
        sidecar += hmac.new(mac_key, msg, hashlib.sha256).digest()[:10]
    return header + iv + ct + tag, sidecar


def test_reference_hkdf_matches_rfc5869_case_1() -> None:
    okm = ref_hkdf_sha256(
        bytes.fromhex("0b" * 22), bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42,
        salt=bytes.fromhex("000102030405060708090a0b0c"),
    )  # fmt: skip
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_reference_hkdf_matches_rfc5869_case_3_no_salt() -> None:
    okm = ref_hkdf_sha256(bytes.fromhex("0b" * 22), b"", 42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_reference_aes_matches_fips197_aes256() -> None:
    out = ref_aes_block(bytes(range(32)), bytes.fromhex("00112233445566778899aabbccddeeff"))
    assert out.hex() == "8ea2b7ca516745bfeafc49904b496089"


# ---------------------------------------------------------------------------------------------
# Doc vectors


def parse_doc_vectors() -> dict[str, dict[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Test vectors", 1)[1]
    vectors: dict[str, dict[str, str]] = {}
    for block in re.findall(r"```text\n(.*?)```", section, flags=re.S):
        fields: dict[str, str] = {}
        last = ""
        for line in block.splitlines():
            if line.startswith("    "):
                fields[last] += line.strip()
            else:
                last, _, value = line.partition(": ")
                fields[last] = value.strip()
        vectors[fields["vector"]] = fields
    return vectors


VECTORS = parse_doc_vectors()


def test_doc_has_the_promised_vectors() -> None:
    assert set(VECTORS) == {"derived-keys", "empty-image", "image-100", "video-150000"}


@pytest.mark.parametrize("media_type", list(MEDIA_TYPES))
def test_doc_derived_keys(media_type: str) -> None:
    vec = VECTORS["derived-keys"]
    media_key = bytes.fromhex(vec["media_key"])
    keys = MediaKeys.derive(media_key, media_type)
    expected = (
        vec[f"{media_type}.iv"],
        vec[f"{media_type}.cipher_key"],
        vec[f"{media_type}.mac_key"],
    )
    assert (keys.iv.hex(), keys.cipher_key.hex(), keys.mac_key.hex()) == expected
    assert tuple(k.hex() for k in ref_keys(media_key, media_type)) == expected


def _vector_plaintext(vec: dict[str, str]) -> bytes:
    if "plaintext_rule" in vec:
        assert vec["plaintext_rule"] == "byte i = i mod 251"
        return bytes(i % 251 for i in range(int(vec["plaintext_length"])))
    return b"" if vec["plaintext"] == "(empty)" else bytes.fromhex(vec["plaintext"])


@pytest.mark.parametrize("name", ["empty-image", "image-100", "video-150000"])
def test_doc_blob_vectors(name: str) -> None:
    vec = VECTORS[name]
    media_key, media_type = bytes.fromhex(vec["media_key"]), vec["media_type"]
    plaintext = _vector_plaintext(vec)
    blob, result = encrypt_bytes(plaintext, media_key, media_type)
    assert (blob, result.chunk_macs) == ref_blob(media_key, media_type, plaintext)
    if "blob" in vec:
        assert blob.hex() == vec["blob"]
    else:
        assert blob[:64].hex() == vec["blob_head"]
    assert blob[-32:].hex() == vec["hmac"]
    assert hashlib.sha256(blob).hexdigest() == result.enc_sha256 == vec["blob_sha256"]
    assert hashlib.sha256(plaintext).hexdigest() == result.plain_sha256 == vec["plain_sha256"]
    assert len(blob) == result.enc_length == enc_length(len(plaintext)) == int(vec["enc_length"])
    assert result.chunk_macs.hex() == vec["chunk_macs"]
    assert decrypt_bytes(blob, media_key, media_type) == plaintext


def test_doc_range_vector() -> None:
    vec = VECTORS["video-150000"]
    plaintext = _vector_plaintext(vec)
    start, end = (int(x) for x in vec["range.plain"].split("-"))
    plan = plan_range(start, end, len(plaintext))
    assert f"{plan.blob_start}-{plan.blob_end}" == vec["range.blob"]
    assert f"{plan.first_chunk}-{plan.last_chunk}" == vec["range.chunks"]
    media_key = bytes.fromhex(vec["media_key"])
    blob, result = encrypt_bytes(plaintext, media_key, "video")
    keys = MediaKeys.derive(media_key, "video")
    data = blob[plan.blob_start : plan.blob_end + 1]
    got = decrypt_range(data, plan, keys, result.chunk_macs, len(plaintext))
    assert got.hex() == vec["range.plaintext"] == plaintext[start : end + 1].hex()


def test_doc_states_the_layout_constants() -> None:
    text = DOC.read_text(encoding="utf-8")
    for info in ("Image", "Video", "Audio", "Document", "Archive", "Thumbnail"):
        assert f"`edgeproxy {info} Keys`" in text
    assert "CHUNK_SIZE     = 65536" in text and "CHUNK_MAC_SIZE = 10" in text
    assert "blob_start = 16 + c0*65536" in text
    assert "blob_end   = 32 + min((c1+1)*65536, C) - 1" in text


# ---------------------------------------------------------------------------------------------
# Round trips and the reference on random input

SIZES = [0, 1, 15, 16, 17, 65535, 65536, 65537, 200_000]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_matches_reference(size: int) -> None:
    media_key, plaintext = generate_media_key(), os.urandom(size)
    blob, result = encrypt_bytes(plaintext, media_key, "document")
    assert (blob, result.chunk_macs) == ref_blob(media_key, "document", plaintext)
    assert len(blob) == enc_length(size) == result.enc_length
    assert plain_length_bound(len(blob)) >= size > plain_length_bound(len(blob)) - 16
    assert len(result.chunk_macs) == -(-(len(blob) - 64) // CHUNK_SIZE) * CHUNK_MAC_SIZE
    keys = MediaKeys.derive(media_key, "document")
    assert compute_chunk_macs(keys.iv, blob[32:-32], keys.mac_key) == result.chunk_macs
    out = io.BytesIO()
    dec = decrypt_stream(io.BytesIO(blob), out, media_key, "document")
    assert out.getvalue() == plaintext
    assert (dec.plain_length, dec.plain_sha256, dec.enc_sha256) == (
        size, result.plain_sha256, result.enc_sha256,
    )  # fmt: skip


@pytest.mark.parametrize("read_size", [1, 7, 16, 65536 + 5])
def test_streaming_piece_size_does_not_change_output(read_size: int) -> None:
    plaintext = os.urandom(140_000 if read_size > 1 else 66_000)
    expected, expected_result = encrypt_bytes(plaintext, KEY, "audio")
    out = io.BytesIO()
    result = encrypt_stream(io.BytesIO(plaintext), out, KEY, "audio", read_size=read_size)
    assert out.getvalue() == expected and result == expected_result


def test_media_types_give_distinct_keys_and_thumbnail_differs() -> None:
    derived = {t: MediaKeys.derive(KEY, t) for t in MEDIA_TYPES}
    secrets = [s for k in derived.values() for s in (k.iv, k.cipher_key, k.mac_key)]
    assert len(set(secrets)) == len(secrets)


def test_derive_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        MediaKeys.derive(b"short", "image")
    with pytest.raises(ValueError, match="unknown media type"):
        MediaKeys.derive(KEY, "picture")
    assert len(generate_media_key()) == 32 and generate_media_key() != generate_media_key()


@pytest.mark.parametrize(
    ("mimetype", "expected"),
    [
        ("image/jpeg", "image"), ("IMAGE/PNG; q=1", "image"), ("video/mp4", "video"),
        ("audio/ogg", "audio"), ("application/pdf", "document"), ("text/plain", "document"),
        ("application/zip", "archive"), ("application/x-7z-compressed", "archive"),
        ("application/vnd.rar", "archive"), ("application/x-tar", "archive"),
        ("application/gzip", "archive"), ("application/x-bzip2", "archive"),
        ("", "document"), ("imagex/foo", "document"),
    ],
)  # fmt: skip
def test_media_type_for(mimetype: str, expected: str) -> None:
    assert media_type_for(mimetype) == expected


# ---------------------------------------------------------------------------------------------
# Rejection: right error, nothing written

SMALL_PLAIN = bytes(range(100))
SMALL_BLOB, SMALL_RESULT = encrypt_bytes(SMALL_PLAIN, KEY, "image")


def _decrypt_fails(blob: bytes, media_key: bytes = KEY, media_type: str = "image") -> Exception:
    out = io.BytesIO()
    with pytest.raises(BlobFormatError) as info:
        decrypt_stream(io.BytesIO(blob), out, media_key, media_type)
    assert out.getvalue() == b"", "plaintext was written before verification failed"
    return info.value


def test_wrong_key_is_integrity_error() -> None:
    err = _decrypt_fails(SMALL_BLOB, media_key=bytes(32))
    assert isinstance(err, IntegrityError) and "HMAC" in str(err)


def test_wrong_media_type_is_named() -> None:
    err = _decrypt_fails(SMALL_BLOB, media_type="video")
    assert "'image'" in str(err) and "'video'" in str(err)


def test_wrong_magic() -> None:
    err = _decrypt_fails(b"XAMEDIA1" + SMALL_BLOB[8:])
    assert "magic" in str(err) and not isinstance(err, IntegrityError)


def test_expected_sha256_mismatch() -> None:
    out = io.BytesIO()
    with pytest.raises(IntegrityError, match="SHA-256"):
        decrypt_stream(io.BytesIO(SMALL_BLOB), out, KEY, "image", expected_enc_sha256="00" * 32)
    assert out.getvalue() == b""
    good = SMALL_RESULT.enc_sha256.upper()
    assert verify_blob(io.BytesIO(SMALL_BLOB), KEY, "image", expected_enc_sha256=good) == (
        SMALL_RESULT.enc_sha256
    )


@pytest.mark.parametrize("keep", [0, 1, 15, 16, 31, 79, 80, 96, 160, 175])
def test_truncated_blob(keep: int) -> None:
    _decrypt_fails(SMALL_BLOB[:keep])


def test_every_flipped_bit_is_rejected() -> None:
    for pos in range(len(SMALL_BLOB)):
        for bit in range(8):
            blob = bytearray(SMALL_BLOB)
            blob[pos] ^= 1 << bit
            err = _decrypt_fails(bytes(blob))
            if pos >= HEADER_SIZE:  # iv, ciphertext or mac: only the MAC can notice
                assert isinstance(err, IntegrityError), (pos, bit)


def test_valid_mac_over_bad_padding_writes_nothing() -> None:
    # Only a sender holding the key can do this; the reader must still not emit a partial file.
    iv, cipher_key, mac_key = ref_keys(KEY, "image")
    encryptor = Cipher(algorithms.AES(cipher_key), modes.CBC(iv)).encryptor()
    ct = encryptor.update(bytes(32)) + encryptor.finalize()  # last block ends in 0x00
    body = SMALL_BLOB[:16] + iv + ct
    err = _decrypt_fails(body + hmac.new(mac_key, body, hashlib.sha256).digest())
    assert isinstance(err, IntegrityError) and "padding" in str(err)


def test_valid_mac_over_foreign_iv_writes_nothing() -> None:
    # The IV field must be the derived one, even when a key holder MACs something else.
    _, cipher_key, mac_key = ref_keys(KEY, "image")
    iv = bytes(16)
    body = SMALL_BLOB[:16] + iv + ref_cbc_encrypt(cipher_key, iv, SMALL_PLAIN)
    err = _decrypt_fails(body + hmac.new(mac_key, body, hashlib.sha256).digest())
    assert isinstance(err, IntegrityError) and "IV" in str(err)


def test_chunk_mac_writer_accepts_any_split() -> None:
    keys = MediaKeys.derive(KEY, "video")
    ct = os.urandom(3 * CHUNK_SIZE + 48)
    expected = compute_chunk_macs(keys.iv, ct, keys.mac_key)
    rng = random.Random(5)
    for _ in range(20):
        writer = _ChunkMacWriter(keys.mac_key, keys.iv)
        pos = 0
        while pos < len(ct):
            step = rng.choice([1, 3, 15, 17, 1000, CHUNK_SIZE - 1, CHUNK_SIZE + 1])
            writer.update(ct[pos : pos + step])
            pos += step
        assert writer.finalize() == expected


# ---------------------------------------------------------------------------------------------
# Header and confirm-time layout

HEADER = SMALL_BLOB[:16]


def _header(version: int = 1, code: int = 1, flags: int = 0, reserved: bytes = bytes(5)) -> bytes:
    return MAGIC + bytes([version, code, flags]) + reserved


@pytest.mark.parametrize(
    ("header", "size", "message"),
    [
        (HEADER, 79, "smallest"), (HEADER, 0, "smallest"), (HEADER, 64, "smallest"),
        (HEADER, 81, "multiple"), (HEADER, 95, "multiple"), (HEADER, 176 + 8, "multiple"),
        (b"WAMEDIA2" + HEADER[8:], 80, "magic"), (HEADER[:15], 80, "16 bytes"),
        (_header(version=0), 80, "version"), (_header(version=2), 80, "version"),
        (_header(code=0), 80, "media type"), (_header(code=7), 80, "media type"),
        (_header(flags=1), 80, "flags"), (_header(reserved=b"\0\0\0\0\1"), 80, "reserved"),
    ],
)  # fmt: skip
def test_check_blob_layout_rejects(header: bytes, size: int, message: str) -> None:
    with pytest.raises(BlobFormatError, match=message):
        check_blob_layout(header, size)


@pytest.mark.parametrize("size", [80, 96, 176, 1_000_000 * 16 + 64])
@pytest.mark.parametrize("media_type", list(MEDIA_TYPES))
def test_check_blob_layout_accepts(size: int, media_type: str) -> None:
    header = _header(code=MEDIA_TYPES[media_type]) + b"extra bytes are ignored"
    assert check_blob_layout(header, size) == BlobHeader(VERSION, media_type, 0)
    assert BlobHeader(VERSION, media_type, 0).to_bytes() == header[:16]


def test_constants() -> None:
    assert (MAGIC, VERSION, HEADER_SIZE, IV_SIZE, MAC_SIZE) == (b"WAMEDIA1", 1, 16, 16, 32)
    assert (CHUNK_SIZE, CHUNK_MAC_SIZE) == (65536, 10)
    assert MEDIA_TYPES == {
        "image": 1, "video": 2, "audio": 3, "document": 4, "archive": 5, "thumbnail": 6,
    }  # fmt: skip


def test_enc_length_and_bound() -> None:
    assert [enc_length(n) for n in (0, 15, 16, 17)] == [80, 80, 96, 96]
    assert plain_length_bound(80) == 15 and plain_length_bound(96) == 31
    with pytest.raises(ValueError):
        enc_length(-1)
    with pytest.raises(BlobFormatError):
        plain_length_bound(81)


# ---------------------------------------------------------------------------------------------
# Ranged decryption


@cache
def sample(length: int) -> tuple[bytes, bytes, bytes]:
    """(plaintext, blob, sidecar) for a plaintext of ``length`` bytes, encrypted once."""
    plaintext = os.urandom(length)
    blob, result = encrypt_bytes(plaintext, KEY, "video")
    return plaintext, blob, result.chunk_macs


VIDEO_KEYS = MediaKeys.derive(KEY, "video")
RANGE_LENGTHS = [1, 16, 65535, 65536, 65537, 131072, 200_003]


def _fetch_and_decrypt(length: int, start: int, end: int) -> bytes:
    _, blob, sidecar = sample(length)
    plan = plan_range(start, end, length)
    data = blob[plan.blob_start : plan.blob_end + 1]
    assert len(data) == plan.blob_end - plan.blob_start + 1  # the range lies inside the blob
    return decrypt_range(data, plan, VIDEO_KEYS, sidecar, length)


def _interesting_ranges(n: int) -> list[tuple[int, int]]:
    points = {0, n - 1, n // 2}
    for boundary in range(CHUNK_SIZE, n, CHUNK_SIZE):
        points |= {boundary - 1, boundary, boundary + 1}
    points = {p for p in points if 0 <= p < n}
    return [(s, e) for s in points for e in points if s <= e]


@pytest.mark.parametrize("length", RANGE_LENGTHS)
def test_ranges_at_edges_and_boundaries(length: int) -> None:
    plaintext = sample(length)[0]
    for start, end in _interesting_ranges(length):
        assert _fetch_and_decrypt(length, start, end) == plaintext[start : end + 1], (start, end)


def test_plan_range_arithmetic() -> None:
    assert plan_range(0, 0, 1) == RangePlan(16, 32 + 16 - 1, 0, 0, 0, 0)
    # P = 65536: ciphertext 65552 bytes, chunk 1 is the lone padding block.
    assert plan_range(0, 65535, 65536) == RangePlan(16, 32 + 65536 - 1, 0, 0, 0, 65535)
    assert plan_range(65536, 65536, 65537) == RangePlan(
        16 + 65536, 32 + 65552 - 1, 1, 1, 65536, 65536
    )
    for bad in [(-1, 0, 10), (0, 10, 10), (5, 4, 10), (0, 0, 0)]:
        with pytest.raises(ValueError):
            plan_range(*bad)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_range_property(data: st.DataObject) -> None:
    length = data.draw(st.sampled_from(RANGE_LENGTHS))
    start = data.draw(st.integers(0, length - 1))
    end = data.draw(st.integers(start, length - 1))
    assert _fetch_and_decrypt(length, start, end) == sample(length)[0][start : end + 1]


def test_tampered_chunk_is_rejected_by_index() -> None:
    length = 200_003
    _, blob, sidecar = sample(length)
    plan = plan_range(0, length - 1, length)
    good = blob[plan.blob_start : plan.blob_end + 1]
    for chunk, offset in [(0, 16 + 5), (1, 16 + CHUNK_SIZE + 100), (3, len(good) - 1)]:
        data = bytearray(good)
        data[offset] ^= 0x40
        with pytest.raises(IntegrityError, match=f"chunk {chunk} "):
            decrypt_range(bytes(data), plan, VIDEO_KEYS, sidecar, length)


def test_tampered_prev_block_sidecar_and_lengths_are_rejected() -> None:
    length = 200_003
    _, blob, sidecar = sample(length)
    plan = plan_range(70_000, 140_000, length)  # chunks 1..2; prev block is end of chunk 0
    data = blob[plan.blob_start : plan.blob_end + 1]
    with pytest.raises(IntegrityError, match="chunk 1 "):
        # (flipped, not set: a random blob's first byte is 0x01 once in 256 runs)
        decrypt_range(bytes([data[0] ^ 1]) + data[1:], plan, VIDEO_KEYS, sidecar, length)
    bad_sidecar = sidecar[:25] + bytes([sidecar[25] ^ 1]) + sidecar[26:]
    with pytest.raises(IntegrityError, match="chunk 2 "):
        decrypt_range(data, plan, VIDEO_KEYS, bad_sidecar, length)
    with pytest.raises(IntegrityError, match="sidecar"):
        decrypt_range(data, plan, VIDEO_KEYS, sidecar[:-10], length)
    with pytest.raises(IntegrityError, match="range data"):
        decrypt_range(data[:-1], plan, VIDEO_KEYS, sidecar, length)
    with pytest.raises(ValueError, match="planned"):
        decrypt_range(data, plan, VIDEO_KEYS, sidecar, 150_000)
    with pytest.raises(IntegrityError, match="chunk 1 "):  # wrong key
        decrypt_range(data, plan, MediaKeys.derive(KEY, "audio"), sidecar, length)


def test_wrong_plain_length_in_final_chunk_is_rejected() -> None:
    length = 200_003
    _, blob, sidecar = sample(length)
    plan = plan_range(0, length - 3, length)
    data = blob[plan.blob_start : plan.blob_end + 1]
    assert plan == plan_range(0, length - 3, length - 2)  # same ciphertext size, same plan
    with pytest.raises(IntegrityError, match="final chunk"):
        decrypt_range(data, plan, VIDEO_KEYS, sidecar, length - 2)


def test_swapped_chunks_are_rejected() -> None:
    length = 4 * CHUNK_SIZE + 1000
    _, blob, sidecar = sample(length)
    plan = plan_range(CHUNK_SIZE, 3 * CHUNK_SIZE - 1, length)  # chunks 1..2, same size
    data = blob[plan.blob_start : plan.blob_end + 1]
    chunk1, chunk2 = data[16 : 16 + CHUNK_SIZE], data[16 + CHUNK_SIZE :]
    swapped = data[:16] + chunk2 + chunk1
    with pytest.raises(IntegrityError, match="chunk 1 "):
        decrypt_range(swapped, plan, VIDEO_KEYS, sidecar, length)


# ---------------------------------------------------------------------------------------------
# Bounded memory on a 200 MiB file

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from edgeproxy.crypto import decrypt_stream, encrypt_bytes, encrypt_stream
    src, enc, out, key = sys.argv[1], sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4])
    encrypt_bytes(b"warm up", key, "video")  # load OpenSSL before the baseline
    def peak_kib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    base = peak_kib()
    with open(src, "rb") as f, open(enc, "wb") as g:
        r = encrypt_stream(f, g, key, "video")
    after_encrypt = peak_kib()
    with open(enc, "rb") as f, open(out, "wb") as g:
        d = decrypt_stream(f, g, key, "video", expected_enc_sha256=r.enc_sha256)
    print(json.dumps({"base": base, "encrypt": after_encrypt, "decrypt": peak_kib(),
                      "plain_sha256": r.plain_sha256, "enc_length": r.enc_length,
                      "sidecar": len(r.chunk_macs), "dec_sha256": d.plain_sha256,
                      "dec_length": d.plain_length}))
    """
)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def test_200_mib_streams_in_bounded_memory(tmp_path: Path) -> None:
    size = 200 * (1 << 20)
    src, enc, out = tmp_path / "plain", tmp_path / "blob", tmp_path / "out"
    digest = hashlib.sha256()
    with src.open("wb") as f:
        for _ in range(size >> 20):
            piece = os.urandom(1 << 20)
            digest.update(piece)
            f.write(piece)
    # A fresh process, so ru_maxrss (a lifetime peak) is not inflated by other tests.
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(src), str(enc), str(out), KEY.hex()],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    stats = json.loads(proc.stdout)
    growth_mib = (max(stats["encrypt"], stats["decrypt"]) - stats["base"]) / 1024
    assert growth_mib < 64, stats
    assert stats["plain_sha256"] == stats["dec_sha256"] == digest.hexdigest()
    assert stats["enc_length"] == enc.stat().st_size == enc_length(size)
    assert stats["dec_length"] == size and stats["sidecar"] == (size // CHUNK_SIZE + 1) * 10
    assert _sha256_file(out) == digest.hexdigest()
