"""Warnings that repeat every second (a client retrying a lost NATS server) logged at most
once per spell, with how many were held back: an hour cut off is sixty lines, not 3,600."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

MAX_KINDS = 64  # distinct messages remembered; past that the record starts afresh


class RepeatLimiter:
    """Logs each distinct message at most once per ``every`` seconds."""

    def __init__(self, logger: logging.Logger, every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self.every = every
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}  # message -> (logged at, held back)

    def warning(self, message: str) -> None:
        """Log ``message`` now unless it was logged less than ``every`` seconds ago."""
        now = self._clock()
        seen = self._seen.get(message)
        if seen is not None and now - seen[0] < self.every:
            self._seen[message] = (seen[0], seen[1] + 1)
            return
        if len(self._seen) >= MAX_KINDS:
            self._seen.clear()
        held, since = (seen[1], now - seen[0]) if seen is not None else (0, 0.0)
        self._seen[message] = (now, 0)
        self._log.warning("%s%s", message,
                          f" ({held} more times since it was logged {since:.0f} s ago)"
                          if held else "")
