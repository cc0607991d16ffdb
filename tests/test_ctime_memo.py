"""Which checked slice files a worker may remember at once: the volume's ctime granularity.

`checksum.fine_ctime` finds out whether every change after an ``fstat`` gets a new ctime
(Linux 6.13's multigrain timestamps); `SliceFiles` then remembers a file found good at once,
and a write right after the check must still be seen (its state changes). Where ctimes are
coarse the racy window stays, and a file changed a moment ago is hashed at every read.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from edgeproxy.cache import checksum, slicefiles
from edgeproxy.cache.checksum import RACY_NS, file_name, fine_ctime, of, settled
from edgeproxy.cache.slicefiles import KeptFile, SliceFiles


def _ctimes_always_move(directory: Path, rounds: int = 64) -> bool:
    """The reference: rewrite a file right after reading its ctime (by path, through
    Python's file objects), many times over; whether every change showed."""
    path = directory / "reference"
    path.write_bytes(b"0")
    times = []
    for i in range(rounds):
        times.append(path.stat().st_ctime_ns)
        with path.open("r+b") as f:
            f.write(str(i % 10).encode())
    times.append(path.stat().st_ctime_ns)
    return len(set(times)) == len(times)


def test_the_probe_agrees_with_a_longer_look(tmp_path: Path) -> None:
    assert fine_ctime(tmp_path) == _ctimes_always_move(tmp_path)
    assert list(tmp_path.iterdir()) == [tmp_path / "reference"]  # the probe's file is gone


def test_a_volume_that_cannot_be_probed_keeps_the_racy_window(tmp_path: Path) -> None:
    assert fine_ctime(tmp_path / "missing") is False
    assert SliceFiles.on_volume(tmp_path / "missing").racy_ns == RACY_NS


def test_settled_with_and_without_a_window() -> None:
    just_now = (1, 2, 3, 4, time.time_ns())
    assert settled(just_now, 0)
    assert not settled(just_now, RACY_NS)
    assert settled((1, 2, 3, 4, 0), RACY_NS)


def _slice(tmp_path: Path, data: bytes) -> tuple[Path, KeptFile]:
    path = tmp_path / file_name("slice.val", of(data))
    path.write_bytes(data)
    with path.open("rb") as opened:
        return path, KeptFile.adopt(opened)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the files `SliceFiles` hashes, in order."""
    seen: list[int] = []
    real = checksum.file_matches

    def counting(fd: int, size: int, checksum: int, also: object = None) -> bool:
        seen.append(size)
        return real(fd, size, checksum, also)

    monkeypatch.setattr(slicefiles, "file_matches", counting)
    return seen


def test_a_file_checked_just_after_its_write_is_hashed_once_where_ctimes_are_fine(
        tmp_path: Path, hashes: list[int]) -> None:
    files = SliceFiles.on_volume(tmp_path)
    _path, kept = _slice(tmp_path, os.urandom(4096))
    for _ in range(3):
        assert files.check(kept) is not None
    if files.racy_ns == 0:
        assert hashes == [4096]  # remembered at the first check
    else:
        assert files.racy_ns == RACY_NS and hashes == [4096] * 3  # racy: hashed each time
    kept.retire()


def test_a_write_right_after_the_check_is_still_caught(tmp_path: Path,
                                                        hashes: list[int]) -> None:
    files = SliceFiles.on_volume(tmp_path)
    data = os.urandom(4096)
    path, kept = _slice(tmp_path, data)
    assert files.check(kept) is not None
    with path.open("r+b") as f:  # a stray write, at once: no tick passes
        f.seek(100)
        f.write(bytes([data[100] ^ 1]))
    assert files.check(kept) is None  # its state changed: hashed again, and found bad
    assert len(hashes) == 2
    kept.retire()
