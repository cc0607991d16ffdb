"""A blob read from the object store that breaks off midway (the store's connection cut
after the origin's status line went out): the client's answer is cut short, never
complete-looking; the origin's log says so in one warning line, without uvicorn's
traceback (it logged one per cut transfer); and the next read is whole."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from edgeproxy.config import load_config
from tests.nodes import node_process
from tests.objectstore import moto_s3
from tests.proxies import AnswerCutter
from tests.test_origin import Clock, Origin, make_blob, sha

BLOB_BLOCKS = 128 * 1024  # 2 MiB of 16-byte blocks: far more than the cut lets through
CUT_AFTER = 256 * 1024


def test_a_store_read_cut_midway_cuts_the_answer_with_one_log_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with moto_s3(tmp_path / "moto") as s3:
        bucket = s3.new_bucket()
        cutter = AnswerCutter(int(s3.url.rsplit(":", 1)[1]), CUT_AFTER)
        cutter.cut = True  # (disarmed while the blob is uploaded)
        for name, value in {**s3.env(), "EDGEPROXY_S3__ENDPOINT": cutter.url,
                            "EDGEPROXY_ORIGIN__STORE": f"s3://{bucket}/m"}.items():
            monkeypatch.setenv(name, value)
        node = node_process(tmp_path / "o", "origin", "")
        with node, httpx.Client(base_url=node.url, timeout=30) as http:
            origin = Origin(node.url, http, load_config(node.config), Clock())
            http.headers.update(origin.auth("alice"))
            blob = make_blob(BLOB_BLOCKS)
            ticket = origin.request(blob, upload_method="resumable")
            assert origin.put(ticket["upload_url"], blob).status_code == 200
            done = origin.confirm(ticket["media_id"], sha(blob))
            assert done.status_code == 200, done.text
            path = httpx.URL(done.json()["media_url"]).path

            cutter.cut = False  # the next answer of the store past CUT_AFTER bytes is cut
            got = b""
            with pytest.raises(httpx.RemoteProtocolError), http.stream("GET", path) as answer:
                assert answer.status_code == 200
                assert answer.headers["content-length"] == str(len(blob))
                for chunk in answer.iter_bytes():
                    got += chunk
            assert cutter.cut and len(got) < len(blob)

            again = http.get(path)
            assert again.status_code == 200 and again.content == blob
            time.sleep(0.3)
            log = node.stderr()
        assert log.count("broke off after") == 1, log
        assert "Traceback" not in log and "Exception in ASGI application" not in log, log
