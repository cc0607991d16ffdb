"""Room for a slice file is judged by a fresh reading of the volume.

A reading of the volume is trusted for a second with the bytes granted since subtracted. A
reading taken while a fill was still writing the file it had been granted forgot the rest of
that file, so the next file was granted room the volume no longer had: the fill met ENOSPC
after room had been made for it, and an object that fit was not stored (the edge on a 32 MiB
tmpfs answered MISS to its second GET about one run in ten under load).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.cache.store import CacheStore

MiB = 1024**2
TOTAL = 1024 * MiB  # the reserve is 5 % of it: ~51 MiB


@pytest.fixture
def volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes free on the cache's volume, as statvfs reports them (settable)."""
    free = [200 * MiB]
    real = os.statvfs

    def statvfs(path: Any) -> Any:
        if not str(path).startswith(str(tmp_path)):
            return real(path)
        got = real(path)
        return os.statvfs_result((4096, 4096, TOTAL // 4096, free[0] // 4096, free[0] // 4096,
                                  got.f_files, got.f_ffree, got.f_favail, got.f_flag,
                                  got.f_namemax))

    monkeypatch.setattr("edgeproxy.cache.space.os.statvfs", statvfs)
    return free


def test_a_slice_file_is_not_granted_room_a_stale_reading_still_shows(
        tmp_path: Path, volume: list[int]) -> None:
    store = CacheStore(tmp_path / "cache", 1 << 40)
    try:
        assert store.room.make_room(MiB)
        volume[0] = store.space.reserve() + MiB // 2  # the granted file (and more) written
        assert not store.room.make_room(MiB)  # nothing stored to evict: no room
        volume[0] = store.space.reserve() + 8 * MiB
        assert store.room.make_room(MiB)
    finally:
        store.close()


def test_a_write_that_met_a_full_volume_asks_afresh_whatever_its_size(
        tmp_path: Path, volume: list[int]) -> None:
    store = CacheStore(tmp_path / "cache", 1 << 40)
    try:
        assert store.room.make_room(1000)
        volume[0] = store.space.reserve()
        assert store.room.make_room(1000)  # a row: counted against the last reading
        assert not store.room.make_room(1000, True)
    finally:
        store.close()
