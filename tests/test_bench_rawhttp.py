"""The benchmarks' raw client (`benchmarks.rawhttp`): what counts as a complete answer.

The cold-path sections time only complete answers: an error page must not count, or a server
failing every request (nginx's workers unable to reach their cache directory) is timed on its
error pages and looks fast.
"""

from __future__ import annotations

import pytest

from benchmarks.rawhttp import Fetch


@pytest.mark.parametrize(("status", "length", "received", "error", "complete"), [
    (200, "10", 10, None, True), (206, "5", 5, None, True),
    (200, None, 7, None, True),  # no Content-Length: read to the close
    (200, "10", 9, None, False),  # cut short
    (500, "10", 10, None, False), (404, "3", 3, None, False), (304, "0", 0, None, False),
    (200, "10", 10, "reset", False),
])
def test_complete_only_for_a_whole_2xx_body(status: int, length: str | None, received: int,
                                            error: str | None, complete: bool) -> None:
    fetch = Fetch("/x", started=1.0, done_at=2.0, status=status, body_bytes=received,
                  headers={"content-length": length} if length else {}, error=error)
    assert fetch.complete is complete


def test_unfinished_is_not_complete() -> None:
    assert Fetch("/x", status=200, headers={"content-length": "0"}).complete is False
