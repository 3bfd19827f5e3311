"""NATS URLs in messages and logs never show credentials, whatever the password holds."""

from __future__ import annotations

import pytest

from fedhub.events.jetstream import redacted


@pytest.mark.parametrize(("url", "shown"), [
    ("nats://hub:pw@127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ("nats://hub:s3#c/r?t@e@127.0.0.1:4222", "nats://127.0.0.1:4222"),  # # / ? @ in it
    ("hub:secret@h:4222", "h:4222"),  # no scheme
    ("nats://a:1, nats://u:p@b:2", "nats://a:1,nats://b:2"),  # a cluster
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
])
def test_credentials_are_cut_out(url: str, shown: str) -> None:
    assert redacted(url) == shown
