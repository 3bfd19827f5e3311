"""Counting failed logins: what is refused, for how long, and what is never affected."""

from __future__ import annotations

import pytest

from fedhub.coordinator import throttle as throttle_module
from fedhub.coordinator.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_name_is_paused_after_its_failures_until_the_first_ages_out(clock: Clock) -> None:
    t = LoginThrottle(per_user=3, per_address=0, window=60, clock=clock)
    for _ in range(3):
        assert t.wait("bob", "10.0.0.1") == 0
        t.failed("bob", "10.0.0.1")
        clock.now += 10
    assert t.wait("bob", "10.0.0.2") == pytest.approx(30)  # any address: it is the name
    assert t.wait("ann", "10.0.0.1") == 0
    clock.now += 30
    assert t.wait("bob", "10.0.0.1") == 0  # the first failure is 60 s old now
    t.failed("bob", "10.0.0.1")
    assert t.wait("bob", "10.0.0.1") == pytest.approx(10)  # the second is the oldest


def test_an_address_is_paused_whichever_names_it_tries(clock: Clock) -> None:
    t = LoginThrottle(per_user=100, per_address=3, window=60, clock=clock)
    for name in ("a", "b", "c"):
        t.failed(name, "10.0.0.1")
    assert t.wait("d", "10.0.0.1") == pytest.approx(60)
    assert t.wait("d", "10.0.0.2") == 0
    assert t.wait("d", None) == 0  # no address known: only the name counts


def test_a_success_clears_the_name_but_not_the_address(clock: Clock) -> None:
    t = LoginThrottle(per_user=2, per_address=3, window=60, clock=clock)
    t.failed("bob", "10.0.0.1")
    t.failed("bob", "10.0.0.1")
    t.succeeded("bob")
    assert t.wait("bob", "10.0.0.2") == 0
    t.failed("ann", "10.0.0.1")
    assert t.wait("bob", "10.0.0.1") == pytest.approx(60)


def test_zero_switches_a_limit_off(clock: Clock) -> None:
    t = LoginThrottle(per_user=0, per_address=0, window=60, clock=clock)
    for _ in range(50):
        t.failed("bob", "10.0.0.1")
    assert t.wait("bob", "10.0.0.1") == 0


def test_memory_stays_bounded_under_a_spray_of_names(clock: Clock,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throttle_module, "MAX_KEYS", 100)
    t = LoginThrottle(per_user=2, per_address=0, window=60, clock=clock)
    t.failed("bob", None)
    t.failed("bob", None)
    for i in range(1000):
        t.failed(f"guess{i}", None)
        t.failed(f"guess{i}", None)
    assert len(t._failures) <= 100
    assert t.wait("guess999", None) > 0  # the latest names are still held back
    assert t.wait("bob", None) == 0  # the oldest were forgotten to make room
