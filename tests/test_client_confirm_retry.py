"""The client tries a confirm again where the API was away (a 502/503/504, a connection
lost): a retried confirm gets the 200 of the first, so an upload whose confirm answer was
lost, or that met the database away, is not thrown away after every byte went, with its
media key never told (found from outside: one 503 at confirm failed the whole upload)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.client import MediaClient
from edgeproxy.config import load_config
from edgeproxy.errors import ClientError
from edgeproxy.origin import create_app
from tests.servers import free_port, serve
from tests.test_origin import PUBLIC, Clock, Origin

CONFIRM = "/v1/media/upload/confirm"


class FirstConfirmsFail:
    """ASGI: the first ``failures`` confirms answer ``status``; with ``after``, only once
    the origin has committed them (their answer lost on the way)."""

    def __init__(self, app: Any, failures: int, status: int, *, after: bool) -> None:
        self.app, self.failures, self.status, self.after = app, failures, status, after
        self.failed = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != CONFIRM or self.failed >= self.failures:
            await self.app(scope, receive, send)
            return
        self.failed += 1
        if self.after:  # the origin commits; its answer never reaches the client
            async def swallow(message: Any) -> None:
                return None

            await self.app(scope, receive, swallow)
        body = json.dumps({"error": "database_unavailable", "message": "away"}).encode()
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize(("status", "after"), [(503, False), (502, True), (504, True)])
def test_an_upload_outlives_failed_confirms(tmp_path: Path, status: int, after: bool) -> None:
    port = free_port()
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path / "var"),
                                    "EDGEPROXY_ORIGIN__PORT": str(port),
                                    "EDGEPROXY_PUBLIC_BASE_URL": PUBLIC})
    flaky = FirstConfirmsFail(create_app(config, clock=Clock()), 2, status, after=after)
    src = tmp_path / "clip.mp4"
    src.write_bytes(os.urandom(100_000))
    with serve(flaky, port) as srv:
        origin = Origin(srv.url, None, config, Clock())  # type: ignore[arg-type]
        token = origin.auth("alice")["Authorization"][7:]
        with MediaClient(srv.url, token=token, retry_backoff=0.01) as client:
            payload = client.upload(src)
            assert flaky.failed == 2
            assert payload["media_url"].endswith(payload["file_enc_sha256"])
            assert client.http.get(srv.url + "/v/t1/" + payload["file_enc_sha256"]).status_code \
                == 200
        with MediaClient(srv.url, token=token, retries=1, retry_backoff=0.01) as client:
            flaky.failed = 0  # two failures, one retry: it gives up, and says why
            with pytest.raises(ClientError) as gave_up:
                client.upload(src)
            assert gave_up.value.status == status
