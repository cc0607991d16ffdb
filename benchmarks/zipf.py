"""A Zipf-popular mix of full and range GETs (shared by the comparison and the locustfile).

Pure Python (no numpy) so that `locustfile.py` can import it with nothing but locust installed.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass

MIN_SMALL = 1024
MAX_SMALL = 128 * 1024


def small_object_lengths(count: int, seed: int = 7, lo: int = MIN_SMALL,
                         hi: int = MAX_SMALL) -> list[int]:
    """``count`` object sizes, log-uniform in ``lo..hi`` (thumbnails up to small media)."""
    rnd = random.Random(seed)
    return [int(math.exp(rnd.uniform(math.log(lo), math.log(hi)))) for _ in range(count)]


@dataclass(frozen=True)
class Request:
    """One GET of the mix: a path and an optional ``Range`` header value."""

    path: str
    range: str | None


class ZipfMix:
    """Draws requests: object rank ~ Zipf(``s``); a ``range_fraction`` of them are ranges."""

    def __init__(self, paths: list[str], lengths: list[int | None], *, s: float = 1.0,
                 range_fraction: float = 0.3, range_bytes: int = 64 * 1024,
                 seed: int | None = None) -> None:
        if not paths or len(paths) != len(lengths):
            raise ValueError("need one length (or None) per path, and at least one path")
        self.paths = paths
        self.lengths = lengths
        self.range_fraction = range_fraction
        self.range_bytes = range_bytes
        self.rnd = random.Random(seed)
        weights = [1.0 / (rank**s) for rank in range(1, len(paths) + 1)]
        self.cumulative = list(itertools.accumulate(weights))

    def next(self) -> Request:
        """The next request of the mix."""
        i = bisect.bisect_left(self.cumulative, self.rnd.random() * self.cumulative[-1])
        i = min(i, len(self.paths) - 1)
        if self.rnd.random() >= self.range_fraction:
            return Request(self.paths[i], None)
        length = self.lengths[i]
        span = self.rnd.randint(1, self.range_bytes)
        if length is None:  # size unknown: a prefix range is always satisfiable
            return Request(self.paths[i], f"bytes=0-{span - 1}")
        start = self.rnd.randrange(length)
        return Request(self.paths[i], f"bytes={start}-{min(length - 1, start + span - 1)}")


def read_objects_file(text: str) -> tuple[list[str], list[int | None]]:
    """Parse ``<path> [<size>]`` lines (blank lines and ``#`` comments ignored)."""
    paths: list[str] = []
    lengths: list[int | None] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        paths.append(fields[0])
        lengths.append(int(fields[1]) if len(fields) > 1 else None)
    return paths, lengths
