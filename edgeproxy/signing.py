"""HMAC-SHA256 signatures over canonical strings, for signed upload and download URLs.

A signed URL carries ``expires`` (unix seconds) and ``sig`` (lowercase hex HMAC-SHA256) in its
query. The signature covers a *canonical string*: the method, the path, the expiry and any
further values the URL pins down (an upload's size), joined by ``\\n``::

    PUT\\n/v1/upload/m_abc\\n1700000000\\n1048576

`SigningKey` is a small value object holding one secret and an optional key id. The secret
never appears in ``repr`` or logs.

Signed *download* URLs (`DownloadSigner`) carry ``exp`` (unix seconds), ``kid`` (which key
signed) and ``sig``; the signed string is ``GET\n<path>\n<exp>\n<kid>``. A signer holds several
keys by id: the current one signs, every one verifies, so keys rotate without downtime (add the
new key everywhere, then make it current, then drop the old one after the longest TTL). Edges
verify with `DownloadSigner.verify_download` alone, without asking the origin.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from .errors import EdgeProxyError

if TYPE_CHECKING:
    from .config import DownloadSigningConfig

# Query parameters of a signed download URL, in the order they are appended.
DOWNLOAD_PARAMS: tuple[str, str, str] = ("exp", "kid", "sig")


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


# --- signed download URLs ----------------------------------------------------------------------


def signature_params() -> tuple[str, ...]:
    """The query parameter names of a download signature (``exp``, ``kid``, ``sig``).

    A cache drops these from its key, so one cached copy serves every signed URL of an object.
    """
    return DOWNLOAD_PARAMS


def has_download_signature(params: Mapping[str, str]) -> bool:
    """Whether ``params`` carry any signature parameter (then it must verify, wanted or not)."""
    return any(name in params for name in DOWNLOAD_PARAMS)


class DownloadSigner:
    """HMAC-SHA256 keys by key id for signed download URLs (see the module docstring).

    ``keys`` maps key id → secret (text or bytes, at least 16 bytes); ``current`` names the
    signing key; ``ttl`` is the default lifetime of a signature in seconds.
    """

    def __init__(self, keys: Mapping[str, str | bytes], current: str, ttl: float = 3600) -> None:
        if current not in keys:
            raise ValueError(f"current key id {current!r} is not among the keys")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._keys = MappingProxyType({
            kid: SigningKey(secret.encode() if isinstance(secret, str) else secret, kid)
            for kid, secret in keys.items()
        })  # fmt: skip
        self.current = current
        self.ttl = ttl

    @classmethod
    def from_config(cls, config: DownloadSigningConfig) -> DownloadSigner:
        """The signer of a config's ``download_signing`` section."""
        return cls(config.keys, config.current, config.ttl)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of every key accepted for verification."""
        return tuple(self._keys)

    def __repr__(self) -> str:
        return f"DownloadSigner(key_ids={list(self._keys)!r}, current={self.current!r})"

    @staticmethod
    def _message(path: str, exp: int, kid: str) -> str:
        return canonical("GET", path, exp, kid)

    def sign_download(self, path: str, now: float, ttl: float | None = None) -> dict[str, str]:
        """Query parameters ``{"exp", "kid", "sig"}`` that let anyone GET ``path`` until
        ``now + ttl`` (rounded up to whole seconds). ``path`` is the URL path, no query."""
        exp = math.ceil(now + (self.ttl if ttl is None else ttl))
        key = self._keys[self.current]
        return {"exp": str(exp), "kid": self.current,
                "sig": key.sign(self._message(path, exp, self.current))}  # fmt: skip

    def verify_download(self, path: str, params: Mapping[str, str], now: float) -> None:
        """Check the signature ``params`` of a GET/HEAD of ``path`` (the URL path, percent-
        decoded, without the query). Raises `BadSignature` (missing or malformed parameter,
        unknown key id, wrong signature) or `SignatureExpired`; returns None if valid.

        The signature is checked before the expiry: a forged URL is never called "expired".
        """
        exp_text, kid, sig = (params.get(name) for name in DOWNLOAD_PARAMS)
        if exp_text is None or kid is None or sig is None:
            missing = [n for n in DOWNLOAD_PARAMS if params.get(n) is None]
            raise BadSignature(f"missing signature parameter(s): {', '.join(missing)}")
        if not (exp_text.isascii() and exp_text.isdigit()) or len(exp_text) > 12:
            raise BadSignature("exp is not a unix time")
        key = self._keys.get(kid)
        if key is None:
            raise BadSignature(f"unknown key id {kid!r}")
        try:
            message = self._message(path, int(exp_text), kid)
        except ValueError:
            raise BadSignature("the path contains a newline") from None
        if not key.verify(message, sig.lower()):
            raise BadSignature("the signature does not match")
        if now > int(exp_text):
            raise SignatureExpired(f"the signature expired at {exp_text}")
