"""Reading the two numbers a bulk read needs from JetStream reply subjects."""

from __future__ import annotations

from fedhub.events.bulk import ack_numbers


def test_ack_numbers_reads_both_reply_layouts() -> None:
    assert ack_numbers("$JS.ACK.FEDHUB.c1.1.42.7.1700000000.3") == (42, 3)
    assert ack_numbers("$JS.ACK.hub.ACCHASH.FEDHUB.c1.1.42.7.1700000000.3.rnd") == (42, 3)
    assert ack_numbers("_INBOX.abc") is None
