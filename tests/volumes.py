"""A real small volume for tests of a full disk: a tmpfs mounted as root, which another
program (the test) fills up and drains."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

__all__ = ["Tmpfs", "need_root"]


def need_root() -> None:
    """Skip without root, except under CI, where these tests must run (CI runs as root)."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI must run these tests as root: they mount a real tmpfs")
        pytest.skip("mounting a tmpfs needs root")


class Tmpfs:
    """A tmpfs of ``size`` bytes mounted on ``directory`` (made here; root only)."""

    def __init__(self, directory: Path, size: int) -> None:
        self.directory = directory
        directory.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                       check=True)
        self.filler = directory / "filler"

    def free(self) -> int:
        """Bytes free for an unprivileged writer."""
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    def fill_up(self) -> None:
        """Write a file of another program until not one more byte fits."""
        with self.filler.open("ab", buffering=0) as f:
            for chunk in (bytes(1024**2), bytes(4096), bytes(1)):
                try:
                    while True:
                        f.write(chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC

    def drain(self) -> None:
        """Remove the filler: the space is free again."""
        self.filler.unlink()

    def close(self) -> None:
        """Unmount (lazily, if something still holds it)."""
        if subprocess.run(["umount", str(self.directory)], check=False).returncode:
            subprocess.run(["umount", "-l", str(self.directory)], check=True)
