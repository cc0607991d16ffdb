"""The benchmark's process groups: a stop signals its group once, never again later."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from benchmarks.procs import Managed


def test_a_second_stop_signals_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = Managed("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                   tmp_path / "sleeper.log")
    proc.stop(grace=5)
    assert not proc.alive()
    signalled: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: signalled.append((pgid, sig)))
    proc.stop(grace=5)  # its group number may belong to another process by now
    assert signalled == []
