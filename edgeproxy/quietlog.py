"""`QuietLog`: a message that repeats is logged once, then once a window with its count.

A full cache volume faults every fill: under load that was ~1,000 ERROR lines a second (an
eviction churn against a 3 MiB tmpfs: 21,000 lines in 20 s), on a volume that may hold the
log too. The metrics count every fault; the log says that it happens, and how often.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

__all__ = ["WINDOW", "QuietLog"]

# After a kind of message is logged, repeats within this many seconds are only counted.
WINDOW = 60.0


class QuietLog:
    """Logs to ``logger`` the first message of each kind at once, and later ones of that
    kind at most once per ``window`` seconds, saying how many were left out meanwhile."""

    def __init__(self, logger: logging.Logger, window: float = WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.window = window
        self.clock = clock
        self._kinds: dict[Hashable, list[float]] = {}  # kind -> [when logged, left out since]

    def log(self, level: int, kind: Hashable, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless a message of ``kind`` was logged less than
        ``window`` seconds ago (it is then counted); whether it was logged."""
        now = self.clock()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            msg += " (%d more like it in the last %.0f s)"
            args = (*args, int(seen[1]), now - seen[0])
        self._kinds[kind] = [now, 0]
        self.logger.log(level, msg, *args)
        return True

    def error(self, kind: Hashable, msg: str, *args: object) -> bool:
        """`log` at ERROR."""
        return self.log(logging.ERROR, kind, msg, *args)
