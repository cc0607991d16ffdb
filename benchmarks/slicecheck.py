"""What checking stored slices costs a read: ``python -m benchmarks.slicecheck``.

Times `CacheStore.get_slice` (and the reader's release) for a slice file the worker keeps open
and has checked (a hit: one ``fstat`` more than before checksums), for an inline slice (its
xxh3 is checked on every read), and for a 1 MiB slice file read for the first time (opened
and hashed) or opened again in a state already checked. Hashing speed is printed alongside.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from edgeproxy.cache import checksum
from edgeproxy.cache.store import CacheStore


def _best(fn: Callable[[], object], number: int) -> float:
    """Microseconds per call, best of five runs."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        store = CacheStore(directory / "cache", 1 << 32)
        sizes = {0: 1 << 20, 1: 64 * 1024, 2: 30_000}
        for index, size in sizes.items():
            data = os.urandom(size)
            path = directory / f"fill-{index}"
            path.write_bytes(data)
            store.commit_slice("/k", "v", index, path, size, checksum=checksum.of(data))
        time.sleep(checksum.RACY_NS / 1e9 + 0.01)  # past the window of racy file times

        def read(index: int) -> None:
            body = store.get_slice("/k", "v", index)
            if body is not None and not isinstance(body, bytes):
                body.close()

        for index, label in [(0, "1 MiB file, kept and checked"),
                             (1, "64 KiB file, kept and checked"),
                             (2, "30 KB inline slice")]:
            read(index)
            print(f"get_slice {label:36s} {_best(functools.partial(read, index), 20000):8.2f} us")

        def first_read() -> None:
            store.files.forget()
            store.files.verified = checksum.VerifiedFiles()
            read(0)

        def reopen() -> None:
            store.files.forget()
            read(0)

        for label, fn in [("1 MiB file, first read (open, hash)", first_read),
                          ("1 MiB file, reopened, state known", reopen)]:
            print(f"get_slice {label:36s} {_best(fn, 2000):8.2f} us")
        data = os.urandom(1 << 20)
        per_mib = _best(lambda: checksum.of(data), 2000)
        print(f"xxh3-64 of 1 MiB in memory {per_mib:27.2f} us ({1e6 / per_mib / 1024:.1f} GiB/s)")
        store.close()


if __name__ == "__main__":
    main()
