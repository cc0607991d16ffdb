"""Bearer-JWT authentication of the media API (PyJWT).

Tokens are verified with the key their header names: HS256 with ``auth.jwt_secret`` (a shared
secret) or RS256 with ``auth.jwt_public_key``; an algorithm that is not configured is refused, so
an RS256 public key can never be misused as an HS256 secret. A token must carry ``sub`` (the
user) and ``exp``; ``aud``/``iss`` are checked when configured. Every failure is a 401 with a
JSON body and a ``WWW-Authenticate: Bearer`` challenge (RFC 6750).

`mint_token` makes development tokens (``edgeproxy token``, ``edgeproxy demo``, tests).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..config import AuthConfig
from ..errors import ConfigError, HTTPError

MAX_USER_LENGTH = 128


@dataclass(frozen=True)
class Principal:
    """Who made a request: the token's ``sub`` and all its claims."""

    user: str
    claims: Mapping[str, Any]


def _unauthorized(reason: str, message: str) -> HTTPError:
    # RFC 6750 §3: no error attribute when the request carried no token at all.
    challenge = 'Bearer realm="edgeproxy"'
    if reason != "missing_token":
        challenge += ', error="invalid_token"'
    return HTTPError(401, "unauthorized", message, reason=reason,
                     headers={"WWW-Authenticate": challenge})  # fmt: skip


def load_public_key(value: str) -> RSAPublicKey:
    """An RSA public key from PEM text or from the path of a PEM file; `ConfigError` if not."""
    text = value if "-----BEGIN" in value else None
    if text is None:
        try:
            text = Path(value).read_text()
        except OSError as exc:
            raise ConfigError(f"auth.jwt_public_key: cannot read {value}: {exc.strerror}") from None
    try:
        key = load_pem_public_key(text.encode())
    except ValueError as exc:
        raise ConfigError(f"auth.jwt_public_key: not a PEM public key: {exc}") from None
    if not isinstance(key, RSAPublicKey):
        raise ConfigError("auth.jwt_public_key: RS256 needs an RSA public key")
    return key


class Authenticator:
    """Verifies ``Authorization: Bearer <JWT>`` headers against an `AuthConfig`."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self._keys: dict[str, Any] = {}
        if config.jwt_secret:
            self._keys["HS256"] = config.jwt_secret.encode()
        if config.jwt_public_key:
            self._keys["RS256"] = load_public_key(config.jwt_public_key)
        if not self._keys:
            raise ConfigError("auth: set jwt_secret (HS256) or jwt_public_key (RS256)")

    def verify_token(self, token: str) -> Principal:
        """The `Principal` of a valid token; `HTTPError` 401 otherwise."""
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise _unauthorized("malformed_token", "the bearer token is not a JWT") from None
        key = self._keys.get(alg) if isinstance(alg, str) else None
        if key is None or not isinstance(alg, str):
            raise _unauthorized("invalid_token", f"tokens signed with {alg!r} are not accepted "
                                f"(accepted: {', '.join(self._keys)})")  # fmt: skip
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], leeway=self.config.leeway,
                options={"require": ["exp", "sub"]},
                audience=self.config.audience or None, issuer=self.config.issuer or None,
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise _unauthorized("expired_token", "the bearer token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthorized("invalid_token", f"the bearer token is not valid: {exc}") from None
        user = claims.get("sub")
        if not isinstance(user, str) or not user or len(user) > MAX_USER_LENGTH:
            raise _unauthorized("invalid_token", "the token's sub must be a non-empty string "
                                f"of at most {MAX_USER_LENGTH} characters")  # fmt: skip
        return Principal(user, claims)

    def authenticate(self, authorization: str | None) -> Principal:
        """The `Principal` of an ``Authorization`` header value; 401 if missing or invalid."""
        if not authorization:
            raise _unauthorized("missing_token", "this call needs an Authorization: Bearer "
                                "<JWT> header")  # fmt: skip
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("malformed_token", "the Authorization header must be "
                                "'Bearer <JWT>'")  # fmt: skip
        return self.verify_token(token.strip())

    def optional(self, authorization: str | None) -> Principal | None:
        """None without a header; else as `authenticate` (a bad token is still a 401)."""
        return None if not authorization else self.authenticate(authorization)


def mint_token(secret: str, user: str, *, ttl: float = 3600, now: float | None = None,
               **claims: Any) -> str:  # fmt: skip
    """An HS256 JWT for ``user`` valid for ``ttl`` seconds (development and tests)."""
    if not user:
        raise ValueError("a token needs a user")
    issued = int(time.time() if now is None else now)
    payload = {"sub": user, "iat": issued, "exp": issued + int(ttl), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")
