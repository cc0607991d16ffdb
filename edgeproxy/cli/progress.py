"""Progress bars for long CLI operations (upload, download, warm, scrub), on stderr.

A bar is drawn only when stderr is a terminal; piped or redirected, the same calls are silent,
so logs and scripts see no control characters. One `Progress` serves byte transfers
(``update_to(done, total)``, which may move back when an upload resumes from the server's
offset) and item counts (``advance()``).
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from tqdm import tqdm


class Progress:
    """A tqdm bar on ``stream`` (default stderr) if it is a terminal, else nothing at all."""

    def __init__(self, description: str, *, total: int | None = None, unit: str = "B",
                 stream: TextIO | None = None, enabled: bool | None = None) -> None:  # fmt: skip
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        byte_units = unit == "B"
        self.bar = tqdm(total=total, desc=description, unit=unit, unit_scale=byte_units,
                        unit_divisor=1024 if byte_units else 1000, file=self.stream,
                        disable=not self.enabled, dynamic_ncols=True, leave=True)  # fmt: skip

    def update_to(self, done: int, total: int | None = None) -> None:
        """Set the position to ``done`` (of ``total``, when it becomes known)."""
        if not self.enabled:
            return
        if total is not None and total != self.bar.total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def advance(self, n: int = 1) -> None:
        """``n`` more items done."""
        if self.enabled:
            self.bar.update(n)

    def write(self, line: str) -> None:
        """A line for the user: above the bar on a terminal, plainly otherwise."""
        if self.enabled:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Finish the bar (it stays on screen)."""
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()
