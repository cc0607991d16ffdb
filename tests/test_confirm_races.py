"""Confirm against the other requests on one upload, over real sockets (found from outside).

Two apps on one data dir stand for two origin worker processes (as in test_auth_limits): each
has its own in-process locks, so only the cross-process staging lock and the database keep them
apart. A confirm that hashes a large file is made slow by wrapping one app's hashing (or its
commit record), so the other request lands inside it every time, not only by luck.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_origin import Clock, Origin, error_of, make_blob, run_origin, sha

PAUSE = 1.0  # how long the slowed confirm stays inside the wrapped step


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[Origin, Origin]]:
    with ExitStack() as stack:
        yield (stack.enter_context(run_origin(tmp_path)),
               stack.enter_context(run_origin(tmp_path)))  # fmt: skip


def uploaded_in_two_puts(o: Origin, blob: bytes) -> dict[str, Any]:
    """An upload complete in two X-Upload-Offset PUTs: no streamed hash, so confirm hashes
    the staging file (the slow part of a confirm of a large blob)."""
    ticket = o.request(blob)
    half = len(blob) // 2
    for offset, part in ((0, blob[:half]), (half, blob[half:])):
        r = o.put(ticket["upload_url"], part, headers={"X-Upload-Offset": str(offset)})
        assert r.status_code == 200, r.text
    return ticket


def slow_hashing(o: Origin) -> threading.Event:
    """Make ``o``'s confirm pause before hashing the staged file; set once it is there."""
    core, inside = o.app.state.origin, threading.Event()
    real = core.staging.sha256

    async def sha256(name: str) -> str:
        inside.set()
        await asyncio.sleep(PAUSE)
        digest: str = await real(name)
        return digest

    core.staging.sha256 = sha256
    return inside


def slow_commit_record(o: Origin) -> threading.Event:
    """Make ``o``'s confirm pause after moving the blob into the store, before recording the
    commit; set once it is there."""
    records, inside = o.app.state.origin.records, threading.Event()
    real: Callable[..., Any] = records.commit_upload

    def commit_upload(*args: Any, **kwargs: Any) -> Any:
        inside.set()
        time.sleep(PAUSE)  # (a worker thread: the app's loop goes on)
        return real(*args, **kwargs)

    records.commit_upload = commit_upload
    return inside


@contextmanager
def confirming(o: Origin, media_id: str, blob: bytes) -> Iterator[list[httpx.Response]]:
    """A confirm on ``o`` in a thread; its answer is in the list once the block ends."""
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(o.confirm(media_id, sha(blob))))
    thread.start()
    try:
        yield answers
    finally:
        thread.join(30)
    assert answers, "the confirm did not answer"


def path_of(url: str) -> str:
    return httpx.URL(url).raw_path.decode()


def test_concurrent_confirms_in_two_workers_both_answer_200(
        workers: tuple[Origin, Origin]) -> None:  # fmt: skip
    """Was: the second worker hashed and moved the file the first was hashing → 500."""
    a, b = workers
    blob = make_blob(2000)
    ticket = uploaded_in_two_puts(a, blob)
    inside = slow_hashing(a)
    with confirming(a, ticket["media_id"], blob) as first:
        assert inside.wait(10)
        second = b.confirm(ticket["media_id"], sha(blob))  # waits for a's confirm
    assert first[0].status_code == 200, first[0].text
    assert second.status_code == 200, second.text
    assert first[0].json() == second.json()
    assert a.http.get(f"/v/t1/{sha(blob)}").content == blob
    assert a.staging() == []  # nor an empty file left by the lock of the second


def test_delete_during_a_confirm_in_another_worker_is_409(
        workers: tuple[Origin, Origin]) -> None:  # fmt: skip
    """Was: DELETE 204 removed the file the confirm was hashing → the confirm 500."""
    a, b = workers
    blob = make_blob(2000)
    ticket = uploaded_in_two_puts(a, blob)
    inside = slow_hashing(a)
    with confirming(a, ticket["media_id"], blob) as confirm:
        assert inside.wait(10)
        r = b.http.delete(path_of(ticket["upload_url"]))
        assert r.status_code == 409 and error_of(r) == "upload_in_progress", r.text
    assert confirm[0].status_code == 200, confirm[0].text
    assert a.http.get(f"/v/t1/{sha(blob)}").content == blob
    r = b.http.delete(path_of(ticket["upload_url"]))
    assert r.status_code == 409 and error_of(r) == "already_committed"


def slow_termination_record(o: Origin) -> threading.Event:
    """Make ``o``'s DELETE pause after removing the staged bytes, before recording the
    termination; set once it is there."""
    records, inside = o.app.state.origin.records, threading.Event()
    real: Callable[..., Any] = records.mark_failed

    def mark_failed(media_id: str, failure: str) -> Any:
        if failure == "terminated":
            inside.set()
            time.sleep(PAUSE)  # (a worker thread: the app's loop goes on)
        return real(media_id, failure)

    records.mark_failed = mark_failed
    return inside


def test_a_delete_during_the_commit_record_is_409_and_the_confirm_200(
        workers: tuple[Origin, Origin]) -> None:  # fmt: skip
    """DELETE lands after the confirm moved the blob into the store, before the commit is
    recorded. Was (0a215ad): the confirm's lock was the flock of the staging file it had just
    moved, so the DELETE got in, answered 204 and the confirm 410 (the database picked the
    DELETE). Now the upload's lock outlives its staging file: the DELETE is refused while the
    confirm holds it, and the confirm stands."""
    a, b = workers
    blob = make_blob(2000)
    ticket = uploaded_in_two_puts(a, blob)
    inside = slow_commit_record(a)
    with confirming(a, ticket["media_id"], blob) as confirm:
        assert inside.wait(10)
        deleted = b.http.delete(path_of(ticket["upload_url"]))
        assert deleted.status_code == 409 and error_of(deleted) == "upload_in_progress"
    assert confirm[0].status_code == 200, confirm[0].text
    assert a.http.get(f"/v/t1/{sha(blob)}").content == blob
    r = b.http.delete(path_of(ticket["upload_url"]))
    assert r.status_code == 409 and error_of(r) == "already_committed"
    assert b.confirm(ticket["media_id"], sha(blob)).json() == confirm[0].json()


def test_a_confirm_during_a_delete_in_another_worker_is_410_terminated(
        workers: tuple[Origin, Origin]) -> None:  # fmt: skip
    """A confirm lands after a DELETE removed the staged bytes, before it recorded the
    termination (fuzz4 §2: 1 of 100 rounds on 2 workers). Was: the DELETE's lock was the
    flock of the staging file it had just removed, so the confirm opened a new, empty file at
    that path, locked it and answered 422 size_mismatch (marking the upload failed for bytes
    that were fine; the DELETE then answered 410). Now the confirm waits for the DELETE."""
    a, b = workers
    blob = make_blob(2000)
    ticket = uploaded_in_two_puts(a, blob)
    inside = slow_termination_record(b)
    deleted: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: deleted.append(
        b.http.delete(path_of(ticket["upload_url"]))))
    thread.start()
    try:
        assert inside.wait(10)
        r = a.confirm(ticket["media_id"], sha(blob))
    finally:
        thread.join(30)
    assert deleted and deleted[0].status_code == 204, deleted and deleted[0].text
    assert r.status_code == 410 and error_of(r) == "upload_terminated", r.text
    assert a.http.get(f"/v/t1/{sha(blob)}").status_code == 404
    assert a.staging() == []


def test_confirm_during_a_trickling_put_is_409_at_once(tmp_path: Path) -> None:
    """Was: confirm waited for the PUT's lock, as long as the PUT kept trickling bytes."""
    with run_origin(tmp_path) as o:
        blob = make_blob(100)
        ticket = o.request(blob)
        url = httpx.URL(o.url)
        assert url.port is not None
        with socket.create_connection((url.host, url.port), timeout=10) as put:
            put.sendall(f"PUT {path_of(ticket['upload_url'])} HTTP/1.1\r\nHost: x\r\n"
                        f"X-Upload-Offset: 0\r\nContent-Length: {len(blob)}\r\n\r\n".encode()
                        + blob[:10])  # fmt: skip
            time.sleep(0.5)  # the PUT holds the upload now, and sends nothing more
            started = time.monotonic()
            r = o.http.post("/v1/media/upload/confirm", timeout=5,
                            json={"media_id": ticket["media_id"], "file_sha256": sha(blob)})
            assert r.status_code == 409 and error_of(r) == "upload_incomplete", r.text
            assert time.monotonic() - started < 2
            put.sendall(blob[10:])  # the PUT finishes, and the upload confirms
            assert b" 200 " in put.recv(65536).split(b"\r\n", 1)[0]
        assert o.confirm(ticket["media_id"], sha(blob)).status_code == 200


def test_confirm_past_the_upload_expiry_is_410_before_and_after_the_sweep(
        tmp_path: Path) -> None:  # fmt: skip
    """Was: 200 and served if the sweeper had not run yet (PUT and HEAD already said 410)."""
    clock = Clock()
    with run_origin(tmp_path, clock) as o:
        blob = make_blob()
        ticket = o.request(blob)
        assert o.put(ticket["upload_url"], blob).status_code == 200  # complete, unconfirmed
        clock.now += o.config.origin.upload_expiry + 1
        assert o.http.head(path_of(ticket["upload_url"])).status_code == 410
        r = o.confirm(ticket["media_id"], sha(blob))
        assert r.status_code == 410 and error_of(r) == "upload_expired", r.text
        assert o.http.get(f"/v/t1/{sha(blob)}").status_code == 404
        # A sweep now (as test_s3_store runs one): the same answer after it.
        assert asyncio.run(o.app.state.origin.sweep()) == 1
        r = o.confirm(ticket["media_id"], sha(blob))
        assert r.status_code == 410 and error_of(r) == "upload_expired", r.text
        assert o.staging() == []

