"""HMAC-SHA256 signatures over canonical strings, for signed upload and download URLs.

A signed URL carries ``expires`` (unix seconds) and ``sig`` (lowercase hex HMAC-SHA256) in its
query. The signature covers a *canonical string*: the method, the path, the expiry and any
further values the URL pins down (an upload's size), joined by ``\\n``::

    PUT\\n/v1/upload/m_abc\\n1700000000\\n1048576

`SigningKey` is a small value object holding one secret and an optional key id, so signed
download URLs can later name the key they were signed with (``kid=``) and keys can rotate.
The secret never appears in ``repr`` or logs.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from .errors import EdgeProxyError


class SignatureError(EdgeProxyError):
    """A signed request failed verification."""


class BadSignature(SignatureError):
    """The signature is missing, malformed, or does not match the canonical string."""


class SignatureExpired(SignatureError):
    """The signature is genuine but its ``expires`` time has passed."""


def canonical(*parts: str | int) -> str:
    """Join ``parts`` with newlines into the string that gets signed.

    A part containing a newline would make two different requests sign the same string, so it
    is refused rather than escaped.
    """
    texts = [str(p) for p in parts]
    if any("\n" in t for t in texts):
        raise ValueError("a canonical-string part must not contain a newline")
    return "\n".join(texts)


@dataclass(frozen=True)
class SigningKey:
    """One HMAC-SHA256 secret, optionally named by a key id."""

    secret: bytes = field(repr=False)
    key_id: str = ""

    def __post_init__(self) -> None:
        # A short key makes brute-forcing signatures offline cheap; config enforces 16 chars.
        if len(self.secret) < 16:
            raise ValueError("a signing key must be at least 16 bytes")

    @classmethod
    def from_text(cls, secret: str, key_id: str = "") -> SigningKey:
        """A key from a configured text secret (UTF-8 encoded)."""
        return cls(secret.encode("utf-8"), key_id)

    def sign(self, message: str) -> str:
        """The lowercase hex HMAC-SHA256 of ``message``."""
        return hmac.new(self.secret, message.encode("utf-8"), hashlib.sha256).hexdigest()

    def verify(self, message: str, signature: str) -> bool:
        """Whether ``signature`` is this key's signature of ``message`` (constant time)."""
        if not signature.isascii():
            return False
        # compare_digest keeps the comparison time independent of where the strings differ.
        return hmac.compare_digest(self.sign(message), signature)

    def sign_request(self, method: str, path: str, expires: int, *extra: str | int) -> str:
        """Sign a request ``method path`` valid until ``expires``, pinning ``extra`` values."""
        return self.sign(canonical(method.upper(), path, expires, *extra))

    def verify_request(
        self,
        method: str,
        path: str,
        expires: int,
        signature: str,
        *extra: str | int,
        now: float,
    ) -> None:
        """Check a signed request; raise `BadSignature` or `SignatureExpired`.

        The signature is checked before the expiry so that a forged URL is always answered
        "bad signature", never "expired": the expiry of a URL we did not sign means nothing.
        """
        try:
            message = canonical(method.upper(), path, expires, *extra)
        except ValueError:
            raise BadSignature("the signed values contain a newline") from None
        if not self.verify(message, signature):
            raise BadSignature("the signature does not match")
        if now > expires:
            raise SignatureExpired(f"the signature expired at {expires}")
