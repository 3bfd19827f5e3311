"""Assertions for user servers: signed by the proxy, reused briefly."""

from __future__ import annotations

from fedhub.edge_proxy.assertion import AssertionCache
from fedhub.events.signing import KeyRing, SigningKey


def test_assertion_is_signed_cached_and_renewed() -> None:
    key = SigningKey.generate()
    ring = KeyRing()
    ring.add_signing_key(key, "edge-proxy", "edge")
    cache = AssertionCache(key)
    first = cache.get("alice", "/user/alice/", False, now=1000.0)
    assert cache.get("alice", "/user/alice/", False, now=1029.0) == first
    assert cache.get("alice", "/user/alice/", True, now=1000.0) != first
    claims = ring.decode_token(first, typ="assertion", roles=frozenset({"edge-proxy"}), now=1059)
    assert claims["sub"] == "alice" and claims["prefix"] == "/user/alice/"
    assert claims["adm"] is False and claims["exp"] == 1060
    renewed = cache.get("alice", "/user/alice/", False, now=1031.0)
    assert renewed != first
