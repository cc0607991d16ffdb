"""The units settings are written in: durations (``"5m"``), sizes (``"1MiB"``) and space to
keep free (``"5%, 256MiB"``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Longer than any timeout, TTL or expiry means: YAML's .inf and .nan, or 1e300, passed the
# check and broke each connection (a timer at NaN) or each upload request (an expiry SQLite
# cannot store) once the node was serving.
_MAX_DURATION = 100 * 365 * 86400.0
# Larger than any disk or file: past 2**63 a size reached SQLite (the cache index) and the
# node died at start with an OverflowError traceback instead of a config error.
_MAX_SIZE = 2**60
_SIZE_UNITS = {
    "b": 1, "k": 1000, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}


def parse_duration(value: Any) -> float:
    """Seconds from ``300``, ``"300s"``, ``"5m"``, ``"7d"``, ``"250ms"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 300, '5m' or '7d'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", str(value))
        if not m:
            raise ValueError(f"expected a duration such as 300, '5m' or '7d', got {value!r}")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    if seconds < 0:
        raise ValueError("must not be negative")
    if not seconds <= _MAX_DURATION:  # (also NaN, which compares false to everything)
        raise ValueError(f"must be at most 100 years ({_MAX_DURATION:.0f} s), got {value!r}")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from ``1048576``, ``"1MiB"``, ``"50MB"``, ``"2GiB"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1048576, '1MiB' or '50MB'")
    if isinstance(value, int):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)?\s*", str(value))
        unit = (m.group(2) or "b").lower() if m else ""
        if not m or unit not in _SIZE_UNITS:
            raise ValueError(f"expected a size such as 1048576, '1MiB' or '50MB', got {value!r}")
        size = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if size < 0:
        raise ValueError("must not be negative")
    if size > _MAX_SIZE:
        raise ValueError(f"must be at most 1 EiB ({_MAX_SIZE} bytes), got {value!r}")
    return size


@dataclass(frozen=True)
class FreeSpace:
    """Space to keep free on a volume: ``percent`` of its size and/or ``size`` bytes; with
    both, the smaller (a percentage suits small volumes, a fixed size large ones)."""

    percent: float | None = None
    size: int | None = None

    def of(self, total: int) -> int:
        """The bytes to keep free on a volume of ``total`` bytes."""
        terms = [int(total * self.percent / 100)] if self.percent is not None else []
        terms += [self.size] if self.size is not None else []
        return min(terms, default=0)

    def __str__(self) -> str:
        terms = [f"{self.percent:g}%"] if self.percent is not None else []
        terms += [str(self.size)] if self.size is not None else []
        return ", ".join(terms)


def parse_free_space(value: Any) -> FreeSpace:
    """A `FreeSpace` from ``"5%"``, ``"256MiB"``, ``268435456`` or ``"5%, 256MiB"``."""
    terms = value if isinstance(value, list) else \
        str(value).split(",") if isinstance(value, str) else [value]
    percent: float | None = None
    size: int | None = None
    for term in terms:
        text = str(term).strip()
        if text.endswith("%"):
            m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
            if not m or percent is not None or float(m.group(1)) >= 100:
                raise ValueError(f"expected a percentage below 100% and/or a size, e.g. "
                                 f"'5%, 256MiB'; got {value!r}")
            percent = float(m.group(1))
        elif size is None:
            size = parse_size(term)
        else:
            raise ValueError(f"at most one percentage and one size, got {value!r}")
    if percent is None and size is None:
        raise ValueError(f"expected a percentage and/or a size, e.g. '5%, 256MiB'; got {value!r}")
    return FreeSpace(percent, size)
