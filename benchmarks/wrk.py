"""Run wrk once and read its exact totals (via `wrk_report.lua`), bounded in time."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

LUA = Path(__file__).resolve().parent / "wrk_report.lua"
NEW_HEADS_LUA = LUA.with_name("wrk_new_heads.lua")  # the same totals, a new head per request
MIB = 1024**2


@dataclass(frozen=True)
class WrkResult:
    """Totals of one wrk run (latencies in microseconds, of completed requests only)."""

    requests: int
    bytes: int
    duration_us: int
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int
    mean_us: float
    connect_errors: int
    read_errors: int
    write_errors: int
    status_errors: int
    timeouts: int

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0

    @property
    def mibps(self) -> float:
        """MiB/s read off the wire (headers included; counts partial responses too)."""
        return self.bytes / MIB / (self.duration_us / 1e6) if self.duration_us else 0.0

    @property
    def errors(self) -> int:
        """All socket errors, non-2xx/3xx answers and timeouts."""
        return (self.connect_errors + self.read_errors + self.write_errors
                + self.status_errors + self.timeouts)

    def to_json(self) -> dict[str, float | int]:
        """Raw fields plus the derived rates."""
        return {**asdict(self), "rps": round(self.rps, 1), "mibps": round(self.mibps, 1)}


def run_wrk(url: str, *, connections: int, duration: float, threads: int = 2,
            headers: dict[str, str] | None = None, timeout: float = 30.0,
            new_heads: bool = False) -> WrkResult:
    """``wrk -t threads -c connections -d duration --latency`` against ``url``;
    ``new_heads``: every request's head differs from every other's (`NEW_HEADS_LUA`)."""
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s",
            "--latency", "--timeout", f"{timeout:g}s",
            "-s", str(NEW_HEADS_LUA if new_heads else LUA)]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    # wrk stops itself after `duration`; the extra margin only guards against a hang.
    out = subprocess.run(argv, capture_output=True, text=True, check=False,
                         timeout=duration + timeout + 30)
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return WrkResult(**json.loads(line.removeprefix("WRK_JSON ")))
    raise RuntimeError(f"wrk printed no result (exit {out.returncode}):\n"
                       f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
