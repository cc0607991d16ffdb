"""HMAC-SHA256 URL signing: canonical strings, valid / tampered / expired signatures."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from edgeproxy.signing import BadSignature, SignatureExpired, SigningKey, canonical

KEY = SigningKey.from_text("test-signing-key-0123456789", key_id="k1")
PATH = "/v1/upload/m_abcdefgh"
EXPIRES = 1_700_000_300
SIZE = 1024
NOW = 1_700_000_000.0
GOOD = KEY.sign_request("PUT", PATH, EXPIRES, SIZE)


def test_canonical_string_is_newline_joined() -> None:
    assert canonical("PUT", PATH, EXPIRES, SIZE) == f"PUT\n{PATH}\n{EXPIRES}\n{SIZE}"
    with pytest.raises(ValueError):
        canonical("PUT", "/a\n/b")


def test_signature_is_hmac_sha256_hex_of_the_canonical_string() -> None:
    message = f"PUT\n{PATH}\n{EXPIRES}\n{SIZE}".encode()
    expected = hmac.new(b"test-signing-key-0123456789", message, hashlib.sha256).hexdigest()
    assert expected == GOOD
    assert KEY.sign(canonical("PUT", PATH, EXPIRES, SIZE)) == expected
    assert KEY.verify(canonical("PUT", PATH, EXPIRES, SIZE), expected)


@pytest.mark.parametrize(
    ("key", "method", "path", "expires", "sig", "size", "now", "outcome"),
    [
        (KEY, "PUT", PATH, EXPIRES, GOOD, SIZE, NOW, None),
        (KEY, "put", PATH, EXPIRES, GOOD, SIZE, NOW, None),  # method is case-insensitive
        (KEY, "PUT", PATH, EXPIRES, GOOD, SIZE, EXPIRES, None),  # valid up to the second
        (KEY, "PUT", PATH, EXPIRES, GOOD, SIZE, EXPIRES + 1, SignatureExpired),
        (KEY, "GET", PATH, EXPIRES, GOOD, SIZE, NOW, BadSignature),
        (KEY, "PUT", PATH + "x", EXPIRES, GOOD, SIZE, NOW, BadSignature),
        (KEY, "PUT", PATH, EXPIRES + 1, GOOD, SIZE, NOW, BadSignature),  # extended expiry
        (KEY, "PUT", PATH, EXPIRES, GOOD, SIZE + 1, NOW, BadSignature),  # bigger size
        (KEY, "PUT", PATH, EXPIRES, GOOD[:-1] + ("0" if GOOD[-1] != "0" else "1"), SIZE, NOW,
         BadSignature),  # one hex digit flipped
        (KEY, "PUT", PATH, EXPIRES, GOOD.upper(), SIZE, NOW, BadSignature),
        (KEY, "PUT", PATH, EXPIRES, "", SIZE, NOW, BadSignature),
        (KEY, "PUT", PATH, EXPIRES, "é" * 64, SIZE, NOW, BadSignature),  # non-ASCII
        (SigningKey.from_text("another-key-0123456789"), "PUT", PATH, EXPIRES, GOOD, SIZE, NOW,
         BadSignature),
        # A forged URL whose expiry also passed is "bad signature", never "expired".
        (KEY, "PUT", PATH, EXPIRES, "0" * 64, SIZE, EXPIRES + 10, BadSignature),
        (KEY, "PUT", "/a\n/b", EXPIRES, GOOD, SIZE, NOW, BadSignature),
    ],
)  # fmt: skip
def test_verify_request_table(
    key: SigningKey, method: str, path: str, expires: int, sig: str, size: int, now: float,
    outcome: type[Exception] | None,
) -> None:  # fmt: skip
    if outcome is None:
        key.verify_request(method, path, expires, sig, size, now=now)
    else:
        with pytest.raises(outcome):
            key.verify_request(method, path, expires, sig, size, now=now)


def test_key_is_a_value_object_that_hides_its_secret() -> None:
    assert SigningKey.from_text("test-signing-key-0123456789", "k1") == KEY
    assert KEY.key_id == "k1"
    assert "test-signing-key" not in repr(KEY)
    with pytest.raises(ValueError):
        SigningKey(b"short")
