"""Bulk reads from JetStream: many batches, in order, and nothing left behind."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from nats.js import api as jsapi

from fedhub.events.bulk import bulk_read
from fedhub.events.jetstream import JetStreamStore
from fedhub.schemas import subjects
from fedhub.schemas.subjects import STREAM
from tests.support.services import nats_server


@pytest.mark.parametrize("direct", [True, False], ids=["own connection", "nats-py"])
async def test_latest_of_many_subjects_in_small_batches(
    tmp_path: Path, direct: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fedhub.events.bulk")
    with nats_server(tmp_path) as url:
        store = await JetStreamStore.connect(url)
        try:
            seqs = {}
            for round_ in range(2):  # the second round supersedes the first
                for i in range(25):
                    subject = subjects.route(f"u{i}", "")
                    seqs[subject] = await store.append_raw(subject, f"{round_}:{i}".encode())
            cfg = jsapi.ConsumerConfig(deliver_policy=jsapi.DeliverPolicy.LAST_PER_SUBJECT)
            nc, js = store._nc, store._js
            batches = [b async for b in bulk_read(
                nc, js, STREAM, "fedhub.route.>", cfg, batch=7,
                direct=nc.connected_url if direct else None)]
            # At most 7 per batch; fewer when the reader hands out what it has so far.
            assert all(0 < len(b) <= 7 for b in batches)
            items = [item for b in batches for item in b]
            assert [seq for seq, _ in items] == sorted(seqs.values())
            assert {data for _, data in items} == {f"1:{i}".encode() for i in range(25)}
            # The ephemeral consumer is gone once the read ends.
            assert await js.consumers_info(STREAM) == []
            # "own connection" really read over it (a failed login falls back quietly).
            if direct:
                assert not [r for r in caplog.records if "through nats-py" in r.getMessage()]
        finally:
            await store.close()


async def test_empty_match_yields_nothing(tmp_path: Path) -> None:
    with nats_server(tmp_path) as url:
        store = await JetStreamStore.connect(url)
        try:
            assert [item async for item in store.latest_raw("fedhub.route.>")] == []
        finally:
            await store.close()


async def test_a_site_connection_is_told_latest_raw_is_not_for_it(tmp_path: Path) -> None:
    # A site's credential (an inbox prefix of its own) may not create the pull consumer a
    # bulk read uses: say so, instead of a NATS permission error from deep in the read.
    with nats_server(tmp_path) as url:
        store = await JetStreamStore.connect(url, inbox_prefix="_INBOX_site_a")
        try:
            with pytest.raises(NotImplementedError, match="latest_per_subject"):
                _ = [item async for item in store.latest_raw("fedhub.route.>")]
        finally:
            await store.close()
