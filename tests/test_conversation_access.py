"""Conversation access (seed 004, §Security 3: "Verify user is conversation participant before
upload / before download"): an authorizer service over real sockets, the JWT claim, the
decision cache, and the authorizer being down."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgeproxy.config import load_config
from edgeproxy.errors import ConfigError
from edgeproxy.origin.auth import mint_token
from tests.servers import free_port, serve
from tests.test_origin import Origin, error_of, make_blob, run_origin, sha

CONV = "conv_abc123"  # alice and bob are in it; carol is not
TTL = 30


class Authorizer:
    """An operator's membership service: who is in which conversation, and what it was asked."""

    def __init__(self) -> None:
        self.members = {CONV: {"alice", "bob"}, "conv_other": {"carol"}}
        self.asked: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.broken = False  # answer 500
        self.style = "json"  # "json": 200 {"allow": bool}; "status": 204 or 403
        self.app = Starlette(routes=[Route("/authorize", self.authorize, methods=["POST"])])

    async def authorize(self, request: Request) -> Response:
        body = await request.json()
        with self.lock:
            self.asked.append(body)
        if self.broken:
            return Response("boom", status_code=500)
        allowed = body["user"] in self.members.get(body["conversation_id"], set())
        if self.style == "deep":  # JSON nested past Python's recursion limit
            return Response(b"[" * 1100 + b"]" * 1100, media_type="application/json")
        if self.style == "status":
            return Response(status_code=204 if allowed else 403)
        return JSONResponse({"allow": allowed})


@contextmanager
def stack(tmp_path: Path, **auth: str) -> Iterator[tuple[Origin, Authorizer, str]]:
    """An origin whose auth.* settings are ``auth``, next to a running authorizer."""
    authz = Authorizer()
    with serve(authz.app) as srv:
        url = f"{srv.url}/authorize"
        env = {f"EDGEPROXY_AUTH__{k.upper()}": v.replace("{authorizer}", url)
               for k, v in auth.items()}  # fmt: skip
        with run_origin(tmp_path, env=env) as origin:
            yield origin, authz, srv.url


def upload_to(origin: Origin, conversation_id: str | None) -> str:
    """Alice uploads and confirms a blob (to ``conversation_id``); its media id."""
    blob = make_blob()
    extra = {"conversation_id": conversation_id} if conversation_id else {}
    ticket = origin.request(blob, **extra)
    assert origin.put(ticket["upload_url"], blob).status_code == 200
    assert origin.confirm(ticket["media_id"], sha(blob)).status_code == 200
    media_id: str = ticket["media_id"]
    return media_id


def content(origin: Origin, media_id: str, user: str, **claims: Any) -> httpx.Response:
    token = mint_token(origin.config.auth.jwt_secret, user, **claims)
    return origin.http.get(f"/v1/media/{media_id}/content",
                           headers={"Authorization": f"Bearer {token}"})  # fmt: skip


def request_as(origin: Origin, user: str, conversation_id: str, **claims: Any) -> httpx.Response:
    blob = make_blob()
    token = mint_token(origin.config.auth.jwt_secret, user, **claims)
    body = {"file_size": len(blob), "file_type": "image/jpeg",
            "file_hash": "sha256:" + sha(blob), "conversation_id": conversation_id}  # fmt: skip
    return origin.http.post("/v1/media/upload/request", json=body,
                            headers={"Authorization": f"Bearer {token}"})  # fmt: skip


def test_participants_get_signed_urls_others_403(tmp_path: Path) -> None:
    with stack(tmp_path, authorizer_url="{authorizer}") as (origin, authz, _):
        media_id = upload_to(origin, CONV)
        assert authz.asked[0] == {"user": "alice", "action": "upload", "conversation_id": CONV,
                                  "media_id": None}  # fmt: skip
        r = content(origin, media_id, "bob")  # a receiver, not the uploader
        assert r.status_code == 200, r.text
        assert r.json()["signed_url"].startswith("http://cdn.test/v/t1/")
        assert authz.asked[-1] == {"user": "bob", "action": "download", "conversation_id": CONV,
                                   "media_id": media_id}  # fmt: skip
        r = content(origin, media_id, "carol")
        assert r.status_code == 403 and r.headers["content-type"] == "application/json"
        assert r.json()["error"] == "forbidden" and CONV in r.json()["message"]
        assert r.json()["action"] == "download"
        # The uploader too must (still) be a participant.
        authz.members[CONV].discard("alice")
        assert content(origin, media_id, "alice").status_code == 403


def test_only_participants_upload_to_a_conversation(tmp_path: Path) -> None:
    with stack(tmp_path, authorizer_url="{authorizer}") as (origin, authz, _):
        authz.style = "status"  # 204 allows, 403 denies, as nginx auth_request
        assert request_as(origin, "bob", CONV).status_code == 200
        r = request_as(origin, "carol", CONV)
        assert r.status_code == 403 and error_of(r) == "forbidden"
        assert r.json()["action"] == "upload"
        # No conversation: nothing to ask.
        before = len(authz.asked)
        origin.request(make_blob())
        assert len(authz.asked) == before


def test_decisions_are_cached_for_the_ttl(tmp_path: Path) -> None:
    with stack(tmp_path, authorizer_url="{authorizer}",
               authorizer_cache_ttl=str(TTL)) as (origin, authz, _):  # fmt: skip
        media_id = upload_to(origin, CONV)
        asked = len(authz.asked)
        for _ in range(3):
            assert content(origin, media_id, "bob").status_code == 200
            assert content(origin, media_id, "carol").status_code == 403
        assert len(authz.asked) == asked + 2  # one allow and one deny, each remembered
        # Bob leaves; the cache keeps him in until the TTL passes.
        authz.members[CONV].discard("bob")
        assert content(origin, media_id, "bob").status_code == 200
        origin.clock.now += TTL + 1
        assert content(origin, media_id, "bob").status_code == 403
        assert len(authz.asked) == asked + 3


def test_authorizer_down_denies_with_503(tmp_path: Path) -> None:
    with stack(tmp_path, authorizer_url="{authorizer}") as (origin, authz, _):
        media_id = upload_to(origin, CONV)
        authz.broken = True
        r = content(origin, media_id, "bob")
        assert r.status_code == 503 and error_of(r) == "authorizer_unavailable"
        assert "unreachable" in r.json()["message"] and "500" in r.json()["message"]
        assert r.headers["retry-after"] == "2" and "signed_url" not in r.json()
        r = request_as(origin, "bob", CONV)
        assert r.status_code == 503 and error_of(r) == "authorizer_unavailable"
        # Failures are not remembered: once it answers again, bob is in.
        authz.broken = False
        assert content(origin, media_id, "bob").status_code == 200


def test_authorizer_answering_deeply_nested_json_denies_with_503(tmp_path: Path) -> None:
    with stack(tmp_path, authorizer_url="{authorizer}") as (origin, authz, _):
        authz.style = "deep"
        r = request_as(origin, "bob", CONV)
        assert r.status_code == 503 and error_of(r) == "authorizer_unavailable"


def test_authorizer_not_listening_denies_with_503(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/authorize"  # nothing listens there
    with run_origin(tmp_path, env={"EDGEPROXY_AUTH__AUTHORIZER_URL": dead}) as origin:
        r = request_as(origin, "alice", CONV)
        assert r.status_code == 503 and error_of(r) == "authorizer_unavailable"
        assert "unreachable" in r.json()["message"]
        # Media outside any conversation does not need the authorizer.
        media_id = upload_to(origin, None)
        assert content(origin, media_id, "alice").status_code == 200
        assert content(origin, media_id, "bob").status_code == 403  # the uploader only


def test_conversations_claim(tmp_path: Path) -> None:
    with stack(tmp_path, conversations_claim="conversations") as (origin, _, _url):
        origin.http.headers["Authorization"] = "Bearer " + mint_token(
            origin.config.auth.jwt_secret, "alice", conversations=[CONV, "conv_x"])
        media_id = upload_to(origin, CONV)
        assert content(origin, media_id, "bob", conversations=[CONV]).status_code == 200
        r = content(origin, media_id, "carol", conversations=["conv_other"])
        assert r.status_code == 403 and error_of(r) == "forbidden"
        assert request_as(origin, "alice", CONV, conversations=["conv_x"]).status_code == 403
        r = request_as(origin, "alice", CONV, conversations=CONV)  # not a list
        assert r.status_code == 403 and "list" in r.json()["message"]
        r = request_as(origin, "alice", CONV)  # no claim and no authorizer to ask
        assert r.status_code == 403 and "claim" in r.json()["message"]


def test_claim_first_then_authorizer(tmp_path: Path) -> None:
    with stack(tmp_path, conversations_claim="conversations",
               authorizer_url="{authorizer}") as (origin, authz, _):  # fmt: skip
        origin.http.headers["Authorization"] = "Bearer " + mint_token(
            origin.config.auth.jwt_secret, "alice", conversations=[CONV])
        media_id = upload_to(origin, CONV)
        assert authz.asked == []  # the claim decided
        assert content(origin, media_id, "bob", conversations=[CONV]).status_code == 200
        assert content(origin, media_id, "bob").status_code == 200  # asked the authorizer
        assert content(origin, media_id, "carol").status_code == 403
        assert [a["user"] for a in authz.asked] == ["bob", "carol"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EDGEPROXY_AUTH__AUTHORIZER_URL": "ftp://x"}, "authorizer_url"),
        ({"EDGEPROXY_AUTH__AUTHORIZER_TIMEOUT": "0"}, "authorizer_timeout"),
    ],
)
def test_config_rules(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, env=env)
    config = load_config(None, env={"EDGEPROXY_AUTH__AUTHORIZER_URL": "http://a/b",
                                    "EDGEPROXY_AUTH__AUTHORIZER_CACHE_TTL": "1m"})  # fmt: skip
    assert config.auth.authorizer_cache_ttl == 60 and config.auth.authorizer_timeout == 2
