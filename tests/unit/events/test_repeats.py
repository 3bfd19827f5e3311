"""A warning repeated every second is logged once per spell, with the count held back."""

from __future__ import annotations

import logging

import pytest

from fedhub.events.repeats import RepeatLimiter


def test_a_repeated_warning_is_logged_once_a_minute_with_what_was_held_back(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = RepeatLimiter(logging.getLogger("t"), every=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        for _ in range(120):  # two minutes of a client retrying every second
            limiter.warning("NATS: nats: no servers available for connection")
            now[0] += 1
        limiter.warning("NATS: something else")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "NATS: nats: no servers available for connection",
        "NATS: nats: no servers available for connection (59 more times since it was "
        "logged 60 s ago)",
        "NATS: something else",  # another message is not held back by the first
    ]


def test_a_count_held_back_is_told_with_how_long_ago_it_began(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = RepeatLimiter(logging.getLogger("t"), every=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        for _ in range(10):  # away for ten seconds
            limiter.warning("NATS: gone")
            now[0] += 1
        now[0] += 3 * 3600  # and again hours later
        limiter.warning("NATS: gone")
    assert [r.getMessage() for r in caplog.records] == [
        "NATS: gone", "NATS: gone (9 more times since it was logged 10810 s ago)"]
