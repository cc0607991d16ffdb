"""A worker vouches for each fill file it finishes (an extended attribute: the object's
version and the slice's xxh3), so that another worker following the file reads it to the
end even when the slice is gone from the index by then (evicted at once, or not stored):
such answers were cut short, with bytes of the slice already sent."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from edgeproxy.cache import checksum
from edgeproxy.cache.foreign import ForeignFill, mark_filling, vouch_file, vouched
from edgeproxy.errors import FillAborted, UpstreamTimeout
from tests.origins import pattern

DATA = pattern(100_000, seed=5)


def _xattrs_or_skip(directory: Path) -> None:
    """Skip where the volume keeps no user extended attributes (nothing is vouched for
    there, and followers are cut as before); fail instead in CI, which must cover them."""
    probe = directory / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        if os.environ.get("CI"):  # (as the full-disk tests insist on root there)
            pytest.fail("CI must run these tests on a volume with user extended attributes")
        pytest.skip("this volume keeps no user extended attributes")


def _file(tmp_path: Path) -> int:
    _xattrs_or_skip(tmp_path)
    path = tmp_path / "fill"
    path.write_bytes(DATA)
    return os.open(path, os.O_RDWR)


@pytest.mark.parametrize(("marked", "asked", "flip", "expected"), [
    ("v1", "v1", False, True),     # the version and bytes it vouched for
    ("v1", "v2", False, False),    # another version's fill at the same claim path
    (None, "v1", False, False),    # never vouched for: given up, or another file system
    ("v1", "v1", True, False),     # vouched for, then a byte changed
    ("a:b", "a:b", False, True),   # a version with a colon in it
])
def test_vouched_table(tmp_path: Path, marked: str | None, asked: str, flip: bool,
                       expected: bool) -> None:
    fd = _file(tmp_path)
    try:
        if marked is not None:
            vouch_file(fd, marked, checksum.of(DATA))
        if flip:
            os.pwrite(fd, bytes([DATA[7] ^ 1]), 7)
        assert vouched(fd, asked) is expected
    finally:
        os.close(fd)


async def _follow(tmp_path: Path, mark: bool, filling: str = "v1") -> tuple[ForeignFill, bytes]:
    """Follow a fill (of version ``filling``) whose worker writes half, then the rest,
    finishes (vouching for it if ``mark``) and lets go of its claim with nothing stored;
    what the follower, which wants version v1, read."""
    path = tmp_path / "fill"
    path.write_bytes(DATA[:50_000])
    fd = os.open(path, os.O_RDWR)
    mark_filling(fd, filling)  # (as a fill marks its file before its first byte)
    os.close(fd)
    running = [True]
    fill = ForeignFill(path, is_running=lambda: running[0], stored=lambda: None,
                       version="v1")
    fill.attach()
    if filling == "v1":
        await fill.wait_beyond(0, 5)
    else:
        with pytest.raises(UpstreamTimeout):  # not ours: nothing to read
            await fill.wait_beyond(0, 0.1)
    got = fill.read(0, fill.visible) if fill.visible else b""
    with path.open("ab") as f:
        f.write(DATA[50_000:])
        if mark:
            vouch_file(f.fileno(), filling, checksum.of(DATA))
    os.unlink(path)  # committed and evicted at once
    running[0] = False
    await fill.wait_done(5)
    if fill.error is None:
        got += fill.read(len(got), len(DATA))
    fill.detach()
    return fill, got


async def test_a_vouched_fill_is_read_to_its_end(tmp_path: Path) -> None:
    _xattrs_or_skip(tmp_path)
    fill, got = await _follow(tmp_path, mark=True)
    assert fill.error is None and fill.done and got == DATA


async def test_an_unvouched_fill_that_leaves_nothing_stored_fails(tmp_path: Path) -> None:
    fill, got = await _follow(tmp_path, mark=False)
    assert isinstance(fill.error, FillAborted) and got == DATA[:len(got)]
    await asyncio.sleep(0)


async def test_a_fill_of_another_version_is_not_followed(tmp_path: Path) -> None:
    """The slice's file holds another version (the other worker fetched the object anew):
    not a byte of it is read, and the fill is given up once that worker is done."""
    _xattrs_or_skip(tmp_path)
    fill, got = await _follow(tmp_path, mark=True, filling="v2")
    assert isinstance(fill.error, FillAborted) and got == b""


@pytest.mark.parametrize(("marked", "running", "ours"), [
    ("v2", True, False),  # the object changed: our head would announce what no file holds
    ("v1", True, True),  # ours: followed
    (None, False, False),  # never marked, and the fill ended with nothing of ours stored
])
async def test_whether_a_fill_is_ours_is_known_before_the_head(
        tmp_path: Path, marked: str | None, running: bool, ours: bool) -> None:
    """`ForeignFill.ours`: asked before a head announces version v1."""
    _xattrs_or_skip(tmp_path)
    path = tmp_path / "fill"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    mark_filling(fd, marked)
    os.close(fd)
    fill = ForeignFill(path, is_running=lambda: running, stored=lambda: None, version="v1")
    assert await fill.ours(5) is ours
    assert (fill.fd >= 0) is ours  # (nothing of another version is held open)
    fill.detach()


async def test_an_unmarked_fill_file_is_waited_on_until_its_mark_comes(tmp_path: Path) -> None:
    """A file made but not marked yet says nothing: no head until it is (or the fill ends)."""
    _xattrs_or_skip(tmp_path)
    path = tmp_path / "fill"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fill = ForeignFill(path, is_running=lambda: True, stored=lambda: None, version="v1")
    asked = asyncio.ensure_future(fill.ours(5))
    await asyncio.sleep(0.05)
    assert not asked.done()
    mark_filling(fd, "v2")
    os.close(fd)
    assert await asked is False


async def test_a_later_slice_is_judged_by_what_its_file_says_now(tmp_path: Path) -> None:
    """A later slice's fill may not have begun: the head does not wait for it."""
    _xattrs_or_skip(tmp_path)
    path = tmp_path / "fill"
    fill = ForeignFill(path, is_running=lambda: True, stored=lambda: None, version="v1")
    assert await fill.ours(5, wait=False)  # no file yet: nothing known, nothing waited for
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    mark_filling(fd, "v2")
    os.close(fd)
    assert not await fill.ours(5, wait=False)


async def test_a_slice_still_claimed_is_waited_on_past_the_timeout(tmp_path: Path) -> None:
    """The other worker still holds the slice's claim: its flight is alive, writing the
    slices before this one (a seek far ahead of a slow whole fill). Its file comes later
    than the wait's length, and is followed then; it was an `UpstreamTimeout` (a 504)."""
    _xattrs_or_skip(tmp_path)
    path = tmp_path / "fill"  # (not made yet: the fill has not got to this slice)
    running = [True]
    fill = ForeignFill(path, is_running=lambda: running[0], stored=lambda: None, version="v1")
    asked = asyncio.ensure_future(fill.ours(0.1))
    await asyncio.sleep(0.4)  # four times the wait
    assert not asked.done()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    mark_filling(fd, "v1")
    os.write(fd, DATA[:100])
    os.close(fd)
    assert await asyncio.wait_for(asked, 5) is True
    running[0] = False  # the worker gave up with nothing stored: no wait past it
    await fill.wait_done(0.1)
    assert isinstance(fill.error, FillAborted)
    fill.detach()
