"""The single-user server's trust in edge-proxy keys (``singleuser.TrustedKeys``)."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest

from fedhub.events.errors import InvalidToken
from fedhub.events.signing import KeyRing, SigningKey
from fedhub.site_agent import singleuser
from fedhub.site_agent.singleuser import TrustedKeys


def assertion(key: SigningKey) -> str:
    return key.token({"typ": "assertion", "sub": "alice", "prefix": "/user/alice/",
                      "exp": int(time.time()) + 60})


def write_ring(path: Path, *keys: SigningKey) -> None:
    ring = KeyRing()
    for key in keys:
        ring.add_signing_key(key, "edge-proxy", "p")
    path.write_text(json.dumps(ring.as_dict()))
    stat = path.stat()  # a distinct mtime even within the file system's time resolution
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_a_key_removed_from_the_file_is_no_longer_trusted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(singleuser, "RECHECK", 0.0)
    proxy, other = SigningKey.generate(), SigningKey.generate()
    path = tmp_path / "trusted-keys.json"
    write_ring(path, proxy, other)
    keys = TrustedKeys(path)
    assert keys.decode(assertion(proxy))["sub"] == "alice"
    write_ring(path, other)  # the agent read a KeyRevoked for ``proxy``
    with pytest.raises(InvalidToken, match="unknown signing key"):
        keys.decode(assertion(proxy))
    assert keys.decode(assertion(other))["sub"] == "alice"


def test_a_deeply_nested_assertion_is_refused_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "trusted-keys.json"
    write_ring(path, SigningKey.generate())
    token = base64.urlsafe_b64encode(b"[" * 100_000).decode().rstrip("=") + ".x"
    with pytest.raises(InvalidToken, match="malformed"):
        TrustedKeys(path).decode(token)
