"""Signing keys, compact tokens and the key ring."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedhub.events.errors import InvalidSignature, InvalidToken
from fedhub.events.signing import KeyRing, SigningKey, b64d, b64e

COORD = frozenset({"coordinator"})
NOW = 1_800_000_000.0


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def ring(key: SigningKey) -> KeyRing:
    ring = KeyRing()
    ring.add_signing_key(key, "coordinator", "coord")
    return ring


def session_token(key: SigningKey, **extra: object) -> str:
    return key.token({"typ": "session", "sub": "alice", "exp": NOW + 3600, **extra})


def test_token_round_trip(key: SigningKey, ring: KeyRing) -> None:
    claims = ring.decode_token(session_token(key), typ="session", roles=COORD, now=NOW)
    assert claims["sub"] == "alice"
    assert claims["kid"] == key.kid
    assert claims["typ"] == "session"


def test_token_cannot_claim_another_kid(key: SigningKey, ring: KeyRing) -> None:
    # The signing key's own kid always wins over a kid passed in the claims.
    token = key.token({"typ": "session", "sub": "alice", "kid": "someone-else"})
    assert ring.decode_token(token, typ="session", roles=COORD)["kid"] == key.kid


def test_expired_token_is_rejected(key: SigningKey, ring: KeyRing) -> None:
    token = session_token(key)
    with pytest.raises(InvalidToken, match="expired"):
        ring.decode_token(token, typ="session", roles=COORD, now=NOW + 3601)
    assert ring.decode_token(token, typ="session", roles=COORD, now=NOW + 3599)


def test_non_numeric_expiry_is_rejected(key: SigningKey, ring: KeyRing) -> None:
    token = key.token({"typ": "session", "sub": "alice", "exp": "never"})
    with pytest.raises(InvalidToken, match="expired"):
        ring.decode_token(token, typ="session", roles=COORD, now=NOW)


def test_wrong_token_type_is_rejected(key: SigningKey, ring: KeyRing) -> None:
    with pytest.raises(InvalidToken, match="api token"):
        ring.decode_token(session_token(key), typ="api", roles=COORD, now=NOW)


def test_token_from_a_key_with_another_role_is_rejected(key: SigningKey) -> None:
    ring = KeyRing()
    ring.add_signing_key(key, "site-agent", "hpc")
    with pytest.raises(InvalidToken, match="may not sign"):
        ring.decode_token(session_token(key), typ="session", roles=COORD, now=NOW)


def test_token_from_an_unknown_key_is_rejected(ring: KeyRing) -> None:
    with pytest.raises(InvalidToken, match="unknown signing key"):
        ring.decode_token(session_token(SigningKey.generate()), typ="session", roles=COORD,
                          now=NOW)


def test_tampered_token_body_is_rejected(key: SigningKey, ring: KeyRing) -> None:
    body, sig = session_token(key).split(".")
    claims = json.loads(b64d(body))
    claims["sub"] = "admin"
    forged = f"{b64e(json.dumps(claims, separators=(',', ':')).encode())}.{sig}"
    with pytest.raises(InvalidToken, match="bad signature"):
        ring.decode_token(forged, typ="session", roles=COORD, now=NOW)


def test_tampered_signature_is_rejected(key: SigningKey, ring: KeyRing) -> None:
    body, sig = session_token(key).split(".")
    other = session_token(key, sub="bob").split(".")[1]
    assert other != sig
    with pytest.raises(InvalidToken):
        ring.decode_token(f"{body}.{other}", typ="session", roles=COORD, now=NOW)


@pytest.mark.parametrize(
    "token", ["", "no-dot", "!!!.???", "a.b.c", f"{b64e(b'[1,2]')}.x", f"{b64e(b'{}')}.x",
              f"{b64e(b'not json')}.x", f"{b64e(bytes([0xff, 0xfe]))}.x"],
)
def test_malformed_tokens_are_rejected(ring: KeyRing, token: str) -> None:
    with pytest.raises(InvalidToken):
        ring.decode_token(token, typ="session", roles=COORD, now=NOW)


def test_keyring_refuses_a_kid_that_does_not_match_the_key(key: SigningKey) -> None:
    ring = KeyRing()
    other = SigningKey.generate()
    with pytest.raises(InvalidSignature, match="does not match"):
        ring.add(other.kid, key.public_b64, "coordinator", "coord")
    assert ring.get(other.kid) is None and len(ring) == 0


def test_keyring_add_is_idempotent_and_serializable(key: SigningKey) -> None:
    ring = KeyRing()
    ring.add(key.kid, key.public_b64, "edge-proxy", "edge")
    ring.add(key.kid, key.public_b64, "edge-proxy", "edge")
    assert len(ring) == 1
    assert ring.as_dict() == {
        key.kid: {"role": "edge-proxy", "name": "edge", "public_key": key.public_b64}
    }


def test_load_or_create_writes_a_private_file_and_reloads_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "coordinator.pem"
    created = SigningKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in path.read_bytes()
    again = SigningKey.load_or_create(path)
    assert again.kid == created.kid
    # The reloaded key signs tokens the original's public key accepts.
    ring = KeyRing()
    ring.add(created.kid, created.public_b64, "coordinator", "coord")
    token = again.token({"typ": "api", "sub": "alice"})
    assert ring.decode_token(token, typ="api", roles=COORD)["sub"] == "alice"


def test_load_or_create_refuses_a_non_ed25519_key(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    with pytest.raises(ValueError, match="not an Ed25519 private key"):
        SigningKey.load_or_create(path)


@pytest.mark.parametrize("mangle", [
    lambda sig: sig[:-4],  # truncated
    lambda sig: sig + "AA",  # too long
    lambda sig: "",  # empty
    lambda sig: b64e(b"\0" * 64),  # right length, wrong bytes
    lambda sig: "not base64!",
])
def test_keyring_refuses_malformed_signatures(
    key: SigningKey, ring: KeyRing, mangle: Callable[[str], str]
) -> None:
    sig = key.sign(b"payload")
    assert ring.verify(key.kid, b"payload", sig, COORD).kid == key.kid
    with pytest.raises(InvalidSignature):
        ring.verify(key.kid, b"payload", mangle(sig), COORD)
    with pytest.raises(InvalidSignature):
        ring.verify(key.kid, b"payloaD", sig, COORD)  # tampered data
