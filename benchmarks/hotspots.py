"""Where the edge spends its CPU: py-spy while wrk runs (2 KiB hits, 64 KiB range hits, a
cold Zipf mix).

``py-spy record --subprocesses --format raw`` samples every worker of the edge; the collapsed
stacks are folded into self time (the innermost frame) and inclusive time (any frame on the
stack) per function, and self time per package. The raw stacks are kept next to the results
(``profile-*.txt``) for flame graphs (``flamegraph.pl`` or speedscope.app read them as is).
Without ``--native``, time in C code (SQLite, socket writes) is charged to the Python frame
that called it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .deploy import Origin, Server
from .hitpath import RANGE_16M, warm
from .zipfmix import objects_file, wrk_mix_argv

_PROCESS = re.compile(r'process (\d+):"[^"]*"')
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    """The py-spy binary next to the interpreter, or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _frame(raw: str) -> tuple[str, str]:
    m = _FRAME.match(raw)
    if not m:
        return raw, ""
    return m.group("func"), m.group("file")


def _package(file: str) -> str:
    if not file:
        return "(native/unknown)"
    parts = file.split("/")
    if parts[0] in ("edgeproxy",) and len(parts) > 2:
        return "/".join(parts[:2])  # edgeproxy/cache
    return parts[0].removesuffix(".py")


def fold(raw_text: str) -> dict[str, Any]:
    """Self/inclusive sample shares per function and self share per package."""
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    total = 0
    for line in raw_text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        names = []
        for raw in frames:
            func, file = _frame(raw)
            names.append((f"{func} ({file})" if file else func, file))
        self_fn[names[-1][0]] += n
        self_pkg[_package(names[-1][1])] += n
        for name in {name for name, _ in names}:
            incl_fn[name] += n

    def top(counter: Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, n / total) for name, n in counter.most_common(k)] if total else []

    return {"samples": total, "self": top(self_fn, 20), "inclusive": top(incl_fn, 60),
            "self_by_package": top(self_pkg, 15)}


def profile_under_load(server: Server, load: list[str], raw: Path, *, seconds: float,
                       log: Callable[[str], None], label: str) -> dict[str, Any] | None:
    """Run the wrk command ``load`` and record ``server`` (all its processes) meanwhile."""
    spy = py_spy()
    if spy is None:
        log("  py-spy not found: profile skipped (pip install py-spy)")
        return None
    wrk = subprocess.Popen(load, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # past connection set-up
        out = subprocess.run(
            [spy, "record", "--pid", str(server.front.pid), "--subprocesses", "--rate", "250",
             "--duration", f"{seconds:g}", "--format", "raw", "--nonblocking",
             "--output", str(raw)],
            capture_output=True, text=True, timeout=seconds + 60, check=False)
    finally:
        try:
            wrk.wait(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            wrk.kill()
            wrk.wait()
    if out.returncode != 0 or not raw.exists():
        log(f"  py-spy failed ({out.returncode}): {out.stderr.strip()[-500:]}")
        return None
    # Shorten "process 123:"<full command line>"" frames to "process 123": a third the size.
    text = _PROCESS.sub(r"process \1", raw.read_text())
    raw.write_text(text)
    folded = fold(text)
    folded["raw_file"] = raw.name
    folded["label"] = label
    log(f"  profile ({label}): {folded['samples']} samples; top self: " + ", ".join(
        f"{name.split(' (')[0]} {share * 100:.0f}%" for name, share in folded["self"][:6]))
    return folded


def profile_hit_path(server: Server, origin: Origin, out_dir: Path, *, seconds: float,
                     log: Callable[[str], None]) -> dict[str, Any] | None:
    """Profile ``server`` (an edgeproxy edge) under 64 wrk connections of 2 KiB hits."""
    path = origin.blob("b2k")
    warm(server, server.url + path, {})
    load = ["wrk", "-t", "2", "-c", "64", "-d", f"{seconds + 2:g}s", server.url + path]
    return profile_under_load(server, load, out_dir / "profile-2k-hits.txt", seconds=seconds,
                              log=log, label="2 KiB hits, wrk -t2 -c64")


def profile_range_hits(server: Server, origin: Origin, out_dir: Path, *, seconds: float,
                       log: Callable[[str], None]) -> dict[str, Any] | None:
    """Profile ``server`` under 64 wrk connections of 64 KiB range hits on the 16 MiB blob."""
    path = origin.blob("b16m")
    headers = {"Range": RANGE_16M}
    warm(server, server.url + path, headers)
    load = ["wrk", "-t", "2", "-c", "64", "-d", f"{seconds + 2:g}s", "-H",
            f"Range: {RANGE_16M}", server.url + path]
    return profile_under_load(server, load, out_dir / "profile-64k-range-hits.txt",
                              seconds=seconds, log=log,
                              label="64 KiB range hits, wrk -t2 -c64")


def profile_miss_mix(server: Server, origin: Origin, out_dir: Path, workdir: Path, *,
                     seconds: float, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Profile ``server`` under the Zipf mix on fresh objects (about a third are misses)."""
    listing = objects_file(origin, workdir / "profile-objects.txt", 10_000)
    load = wrk_mix_argv(server.url, listing, duration=seconds + 2, connections=32)
    return profile_under_load(server, load, out_dir / "profile-zipf-mix.txt", seconds=seconds,
                              log=log, label="cold Zipf mix, wrk -t2 -c32")
