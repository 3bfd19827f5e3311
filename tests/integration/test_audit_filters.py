"""``fedhub audit`` filters on a real nats-server: subject filters and the full scan agree."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from fedhub.coordinator.audit import Filter, rows
from fedhub.events.jetstream import JetStreamStore
from tests.support.auditlog import T0, varied_log
from tests.unit.coordinator.test_audit_filters import full_scan

FILTERS = [Filter(), Filter(commands=True), Filter(user="al"), Filter(user="alice"),
           Filter(user="élodie", commands=True), Filter(user="a.b_c@x"), Filter(site="hpc"),
           Filter(site="hpc2", commands=True), Filter(user="alice", site="hpc", commands=True),
           Filter(user="nobody"), Filter(since=T0 + timedelta(minutes=40)),
           Filter(user="al", since=T0 + timedelta(minutes=30), until=T0 + timedelta(minutes=60))]


@pytest.fixture
async def store(nats_url: str) -> AsyncIterator[JetStreamStore]:
    s = await JetStreamStore.connect(nats_url)
    if await s.last_seq() == 0:  # one log for the module's tests
        for env in varied_log():
            await s.append(env)
    yield s
    await s.close()


@pytest.mark.parametrize("flt", FILTERS, ids=repr)
async def test_filtered_rows_equal_the_full_scan(store: JetStreamStore, flt: Filter) -> None:
    got = [row async for row in rows(store, flt)]
    assert got == await full_scan(store, flt)
    if flt == Filter(user="alice"):
        assert {r["user"] for r in got} == {"alice"} and len(got) >= 5
