"""Conversation access: only a conversation's participants upload to it or get its media's URLs.

Seed 004 (§Security, Access Control): "Verify user is conversation participant before upload /
before download". The origin does not know who is in a conversation; the operator does. Two ways
to tell it, checked in this order:

- a JWT claim (``auth.conversations_claim``, e.g. ``conversations: ["conv_a", ...]``) listing
  the caller's conversations, decided locally when the token carries it;
- an authorizer service (``auth.authorizer_url``), asked with a JSON POST
  ``{"user", "action", "conversation_id", "media_id"}``, like nginx ``auth_request`` or tusd
  hooks: 2xx allows (unless its JSON body says ``"allow": false``), 401/403 deny, anything else
  is a failure of the authorizer. Decisions are kept ``auth.authorizer_cache_ttl`` seconds.

When the authorizer cannot answer, access is denied with **503** ``authorizer_unavailable`` (and
``Retry-After``), never 403: nothing is granted, but the client learns the refusal is temporary
and says nothing about its membership, so it retries instead of hiding the conversation's media,
and a 403 is never remembered by a client or cache for an outage. Failures are not cached.

Media without a conversation, or an origin with neither setting, keeps the uploader-only rule.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx

from ..config import AuthConfig
from ..errors import HTTPError
from .auth import Principal

UPLOAD, DOWNLOAD = "upload", "download"
CACHE_ENTRIES = 10_000  # bound on remembered decisions; the oldest go first
RETRY_AFTER = "2"

_Key = tuple[str, str, str, str | None]


class DecisionCache:
    """Allow/deny decisions remembered for ``ttl`` seconds, at most ``size`` of them (LRU)."""

    def __init__(self, ttl: float, clock: Callable[[], float], size: int = CACHE_ENTRIES) -> None:
        self.ttl, self.clock, self.size = ttl, clock, size
        self._entries: OrderedDict[_Key, tuple[float, bool]] = OrderedDict()

    def get(self, key: _Key) -> bool | None:
        """The decision for ``key`` if one is fresh."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, allowed = entry
        if expires <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return allowed

    def put(self, key: _Key, allowed: bool) -> None:
        """Remember a decision."""
        if self.ttl <= 0:
            return
        self._entries[key] = (self.clock() + self.ttl, allowed)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


def _forbidden(user: str, action: str, conversation_id: str) -> HTTPError:
    return HTTPError(403, "forbidden", f"user {user} is not a participant of conversation "
                     f"{conversation_id}", action=action,
                     conversation_id=conversation_id)  # fmt: skip


def _unavailable(reason: str) -> HTTPError:
    return HTTPError(503, "authorizer_unavailable", f"access denied: the conversation "
                     f"authorizer is unreachable or failed ({reason}); retry later",
                     headers={"Retry-After": RETRY_AFTER})  # fmt: skip


class ConversationAccess:
    """Decides whether a user may act on a conversation's media (see the module docstring)."""

    def __init__(self, config: AuthConfig, clock: Callable[[], float],
                 transport: httpx.AsyncBaseTransport | None = None) -> None:  # fmt: skip
        self.url = config.authorizer_url
        self.claim = config.conversations_claim
        self.cache = DecisionCache(config.authorizer_cache_ttl, clock)
        self._timeout = config.authorizer_timeout
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def enabled(self) -> bool:
        """Whether conversation access is configured at all."""
        return bool(self.url or self.claim)

    async def check(self, who: Principal, action: str, conversation_id: str,
                    media_id: str | None) -> None:  # fmt: skip
        """Return if ``who`` may ``action`` on ``conversation_id``; raise `HTTPError` if not.

        403 ``forbidden`` for a non-participant, 503 ``authorizer_unavailable`` when the
        authorizer cannot decide.
        """
        listed = who.claims.get(self.claim) if self.claim else None
        if listed is not None:
            if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
                raise HTTPError(403, "forbidden", f"the token's {self.claim} claim must be a "
                                "list of conversation ids")  # fmt: skip
            if conversation_id not in listed:
                raise _forbidden(who.user, action, conversation_id)
            return
        if not self.url:
            raise HTTPError(403, "forbidden", f"the token carries no {self.claim} claim, so "
                            f"membership of {conversation_id} cannot be shown",
                            action=action)  # fmt: skip
        key = (who.user, action, conversation_id, media_id)
        allowed = self.cache.get(key)
        if allowed is None:
            allowed = await self._ask(key)
            self.cache.put(key, allowed)
        if not allowed:
            raise _forbidden(who.user, action, conversation_id)

    async def _ask(self, key: _Key) -> bool:
        user, action, conversation_id, media_id = key
        payload = {"user": user, "action": action, "conversation_id": conversation_id,
                   "media_id": media_id}  # fmt: skip
        try:
            r = await self._http().post(self.url, json=payload)
        except httpx.TimeoutException:
            raise _unavailable("timed out") from None
        except httpx.HTTPError as exc:
            raise _unavailable(type(exc).__name__) from None
        if r.status_code in (401, 403):
            return False
        if not 200 <= r.status_code < 300:
            raise _unavailable(f"answered {r.status_code}")
        return _allow_in(r.content)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # Created on first use, inside the app's event loop.
            self._client = httpx.AsyncClient(timeout=self._timeout, transport=self._transport,
                                             follow_redirects=False)  # fmt: skip
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool to the authorizer."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _allow_in(body: bytes) -> bool:
    """A 2xx answer allows unless its JSON body is an object with ``"allow": false``."""
    if not body.strip():
        return True
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):  # (nesting past the recursion limit: not a bug here)
        raise _unavailable("answered 2xx with a body that is not JSON") from None
    if not isinstance(data, dict) or "allow" not in data:
        return True
    if not isinstance(data["allow"], bool):
        raise _unavailable("answered an 'allow' that is not true or false")
    return bool(data["allow"])
