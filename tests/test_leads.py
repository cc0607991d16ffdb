"""`edgeproxy.leads` and its use by the admission: requests for what another worker process
began leading start at once, new or waiting, with those behind them.

The table is tested with two views of one file (another process's marks are those with
another process id), once across real processes (a key's slot must not depend on the
process's hash seed), and over sockets: a cache node's worker marks the leads it begins.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from edgeproxy.admission import Admission, admission_for
from edgeproxy.cache import create_app
from edgeproxy.guard import uvicorn_http_options
from edgeproxy.leads import NAME, SharedLeads
from tests.chain import chain_config
from tests.foreign import ForeignOrigin
from tests.servers import ServerThread

KEY = (b"/a", b"", None)
OTHER = (b"/b", b"", b"bytes=0-9")


def _views(path: Path) -> tuple[SharedLeads, SharedLeads]:
    """This process's view of the table, and one standing for another worker's."""
    here, there = SharedLeads(path), SharedLeads(path)
    there.pid = here.pid + 1
    return here, there


def test_a_lead_is_seen_by_the_other_workers_not_by_its_own(tmp_path: Path) -> None:
    here, there = _views(tmp_path / NAME)
    assert not here.led_elsewhere(KEY, 1.0)
    there.mark(KEY)
    assert here.led_elsewhere(KEY, 1.0)
    assert not there.led_elsewhere(KEY, 1.0)  # its own
    assert not here.led_elsewhere(OTHER, 1.0)
    here.mark(KEY)  # a lead of this process's own now
    assert not here.led_elsewhere(KEY, 1.0) and there.led_elsewhere(KEY, 1.0)


def test_a_lead_older_than_the_bound_is_not_followed(tmp_path: Path) -> None:
    here, there = _views(tmp_path / NAME)
    there.mark(KEY)
    time.sleep(0.06)
    assert not here.led_elsewhere(KEY, 0.05)
    assert here.led_elsewhere(KEY, 1.0)


def test_a_key_has_one_slot_in_every_process(tmp_path: Path) -> None:
    """Marked by a process with another hash seed, the key is found here (``hash()`` of
    bytes differs between processes; the table's own hash does not)."""
    path = tmp_path / NAME
    SharedLeads(path)  # (made first: the child maps the same file)
    code = ("import sys; from pathlib import Path; from edgeproxy.leads import SharedLeads; "
            f"SharedLeads(Path(sys.argv[1])).mark({KEY!r})")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True,
                   env={**os.environ, "PYTHONHASHSEED": "12345"}, cwd=Path(__file__).parent.parent)
    here = SharedLeads(path)
    assert here.led_elsewhere(KEY, 10.0)
    assert not here.led_elsewhere(OTHER, 10.0)


def _admission(tmp_path: Path, loop: asyncio.AbstractEventLoop | None = None,
               ) -> tuple[Admission, SharedLeads, list[str]]:
    """An admission of one start per turn on ``loop`` (a new one: not run), with the table,
    and the table as another worker sees it."""
    here, there = _views(tmp_path / NAME)
    return Admission(loop or asyncio.new_event_loop(), per_turn=1, shared=here), there, []


def test_a_request_another_worker_answers_starts_past_the_share(tmp_path: Path) -> None:
    admission, there, started = _admission(tmp_path)
    try:
        admission.start(lambda: started.append("a"), (b"/x", b"", None), "a")
        admission.start(lambda: started.append("b"), (b"/y", b"", None), "b")
        assert started == ["a"]  # the turn's share is taken: b waits
        there.mark(KEY)
        admission.start(lambda: started.append("c"), KEY, "c")
        admission.start(lambda: started.append("d"), KEY, "d")
        assert started == ["a", "c"]  # c, not behind b; d behind c, as behind any leader
        admission.led(KEY, "c")
        assert started == ["a", "c", "d"]
        admission.start(lambda: started.append("e"), None, "e")
        assert started == ["a", "c", "d"]  # without a key: in order
    finally:
        admission.loop.close()


def test_a_waiting_request_starts_once_another_worker_answers_it(tmp_path: Path) -> None:
    """Waiting for its turn, a request whose key another worker's answer began meanwhile
    starts on the next turn, ahead of those before it; the requests behind it wait for its
    own answer, as behind any leader."""

    async def main() -> list[str]:
        admission, there, started = _admission(tmp_path, asyncio.get_running_loop())
        admission.start(lambda: started.append("a"), (b"/x", b"", None), "a")
        admission.start(lambda: started.append("b"), (b"/y", b"", None), "b")
        admission.start(lambda: started.append("c"), None, "c")
        admission.start(lambda: started.append("d"), KEY, "d")
        admission.start(lambda: started.append("e"), KEY, "e")  # behind d
        assert started == ["a"]
        there.mark(KEY)
        await asyncio.sleep(0)  # the next turn: d, then the turn's share (b)
        assert started == ["a", "d", "b"]
        admission.led(KEY, "d")
        return list(started)

    assert asyncio.run(main()) == ["a", "d", "b", "e"]


def test_an_answer_begun_here_is_marked_for_the_other_workers(tmp_path: Path) -> None:
    admission, there, started = _admission(tmp_path)
    try:
        admission.start(lambda: started.append("a"), KEY, "a")
        admission.start(lambda: started.append("b"), OTHER, "b")
        assert started == ["a"] and not there.led_elsewhere(KEY, 1.0)  # no answer yet
        admission.led(KEY, "b")  # (not its leader)
        assert not there.led_elsewhere(KEY, 1.0)
        admission.led(KEY, "a")
        assert there.led_elsewhere(KEY, 1.0)
        assert not there.led_elsewhere(OTHER, 1.0)
    finally:
        admission.loop.close()


def test_a_node_worker_marks_the_answers_it_begins(foreign: ForeignOrigin,
                                                 tmp_path: Path) -> None:
    """Over sockets: a miss's answer on a cache node begins, and the node's table (in its
    cache directory) says so to any other worker."""
    foreign.route("/m", body=b"m" * 1000, headers=[("Cache-Control", "max-age=60")])
    config = chain_config(tmp_path)
    app = create_app(config, "edge", upstream=foreign.url)
    thread = ServerThread(app, proxy_headers=False,  # (as a node serves: the lane is there)
                          **uvicorn_http_options(config.http_limits)).start()
    try:
        with httpx.Client(base_url=thread.url) as client:
            assert client.get("/m").content == b"m" * 1000
            other = SharedLeads(config.cache_dir("edge") / NAME)
            other.pid += 1  # (as another worker of the node sees the table)
            assert other.led_elsewhere((b"/m", b"", None), 10.0)
            assert client.get("/m", params={"v": "1"}).status_code == 200
            assert other.led_elsewhere((b"/m", b"v=1", None), 10.0)
    finally:
        thread.stop()


def test_without_a_table_requests_start_in_order(tmp_path: Path) -> None:
    """Where the table cannot be made (its directory is gone, a full volume), a worker's
    admission works as before: no request starts ahead of its turn."""

    async def main() -> Admission:
        return admission_for(asyncio.get_running_loop(), tmp_path / "gone")

    admission = asyncio.run(main())
    assert admission.shared is None
