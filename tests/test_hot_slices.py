"""The memory tier's share for slices of large objects: a slice is kept on its second read
lately (a scan of slices read once keeps nothing), within a quarter of the tier, least
recently used first out, and a purge anywhere drops them all."""

from __future__ import annotations

from pathlib import Path

from edgeproxy.cache.hot import SLICE_SHARE, HotTier, PurgeEpoch

MIB = 1024 * 1024


def _tier(tmp_path: Path, max_bytes: int = 8 * MIB) -> HotTier:
    return HotTier(max_bytes, 256 * 1024, PurgeEpoch(tmp_path / "epoch"))


def test_kept_on_the_second_read_only(tmp_path: Path) -> None:
    hot = _tier(tmp_path)
    sid = ("/big", "v1", 3)
    assert hot.wants_slice(sid, MIB) is False  # first read: remembered, not kept
    assert hot.wants_slice(("/big", "v1", 4), MIB) is False
    assert hot.wants_slice(sid, MIB) is True  # asked again: keep it
    hot.put_slice(sid, b"x" * MIB)
    assert hot.slice(sid) == b"x" * MIB
    assert hot.slice(("/big", "v2", 3)) is None  # another version is another slice


def test_larger_than_the_share_never(tmp_path: Path) -> None:
    hot = _tier(tmp_path, max_bytes=4 * MIB)
    sid = ("/big", "v1", 0)
    for _ in range(3):
        assert hot.wants_slice(sid, 4 * MIB // SLICE_SHARE + 1) is False


def test_least_recently_used_out_within_the_share(tmp_path: Path) -> None:
    hot = _tier(tmp_path, max_bytes=8 * MIB)  # a share of 2 MiB: two 1 MiB slices
    a, b, c = (("/big", "v1", i) for i in range(3))
    hot.put_slice(a, b"a" * MIB)
    hot.put_slice(b, b"b" * MIB)
    assert hot.slice(a) is not None  # a used: b is now the oldest
    hot.put_slice(c, b"c" * MIB)
    assert hot.slice(b) is None and hot.slice(a) is not None and hot.slice(c) is not None


def test_a_purge_in_any_worker_drops_them(tmp_path: Path) -> None:
    hot, other = _tier(tmp_path), _tier(tmp_path)  # two workers, one epoch file
    sid = ("/big", "v1", 0)
    hot.put_slice(sid, b"s" * MIB)
    other.purged()
    assert hot.facts("/big", 0.0) is None  # a look at the facts sees the epoch move
    assert hot.slice(sid) is None
