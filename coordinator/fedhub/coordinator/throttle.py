"""Slowing password guessing down: failed logins are counted per user name and per client
address over a sliding window; past either limit, attempts are refused without checking
the password or writing to the log, until the oldest failure leaves the window.

The counts live in this coordinator's memory: behind a load balancer an attacker gets the
limit at each coordinator, and a restart forgets them. That bounds guessing; it is not an
account lock (a success never needs an administrator)."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_KEYS = 100_000  # names and addresses remembered at once; the oldest go first


class LoginThrottle:
    """Failed-login counts; ``per_user`` or ``per_address`` 0 switches that limit off."""

    def __init__(self, per_user: int, per_address: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = {"user": per_user, "address": per_address}
        self._window = window
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def wait(self, name: str, remote: str | None) -> float:
        """Seconds before a login as ``name`` from ``remote`` may be tried (0: now)."""
        now = self._clock()
        longest = 0.0
        for key in self._keys(name, remote):
            times = self._recent(key, now)
            if times is not None and len(times) >= self._limits[key[0]]:
                longest = max(longest, times[-self._limits[key[0]]] + self._window - now)
        return longest

    def failed(self, name: str, remote: str | None) -> None:
        """Count a failed login as ``name`` from ``remote``."""
        now = self._clock()
        for key in self._keys(name, remote):
            times = self._recent(key, now)
            if times is None:
                if len(self._failures) >= MAX_KEYS:
                    self._forget_oldest(now)
                times = self._failures[key] = deque()
            times.append(now)
            while len(times) > self._limits[key[0]]:  # older ones no longer decide
                times.popleft()
            if len(times) == self._limits[key[0]]:
                log.warning("login attempts for %s %s paused %.0f s after %d failures",
                            key[0], key[1][:64], times[0] + self._window - now, len(times))

    def succeeded(self, name: str) -> None:
        """A correct password for ``name``: its count starts again (its address's does not)."""
        self._failures.pop(("user", name), None)

    def _keys(self, name: str, remote: str | None) -> list[tuple[str, str]]:
        keys = [("user", name)] if self._limits["user"] else []
        if remote and self._limits["address"]:
            keys.append(("address", remote))
        return keys

    def _recent(self, key: tuple[str, str], now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is not None:
            while times and times[0] <= now - self._window:
                times.popleft()
        return times

    def _forget_oldest(self, now: float) -> None:
        for key in [k for k, t in self._failures.items() if not t or t[-1] <= now - self._window]:
            del self._failures[key]
        excess = len(self._failures) - MAX_KEYS // 2
        if len(self._failures) >= MAX_KEYS and excess > 0:
            for key in list(self._failures)[:excess]:  # the least recently added go
                del self._failures[key]
