"""Ed25519 keys, signed compact tokens and the key ring built from ``KeyPublished`` events.

A token is ``<base64url(JSON claims)>.<base64url(signature)>``; the claims carry ``kid``
(which key signed), ``typ`` (session, api, assertion), ``sub`` (user) and ``exp``. Private
keys live in files owned by their component; only public keys go into the log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)
from nacl.exceptions import BadSignatureError as _NaclBadSignature
from nacl.signing import VerifyKey

from fedhub.events.errors import InvalidSignature, InvalidToken

CLOCK_SLACK = 5.0  # seconds by which the clocks of two machines of one hub may disagree


def issued_before(claims: dict[str, Any], moment: float) -> bool:
    """True if a token was issued (its ``iat``) before ``moment`` by more than the clock
    slack; one without a numeric ``iat`` counts as issued before anything. A user's token
    issued before their account existed belongs to an earlier account of the name."""
    iat = claims.get("iat")
    return not isinstance(iat, int | float) or iat < moment - CLOCK_SLACK


def b64e(raw: bytes) -> str:
    """URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    """Inverse of :func:`b64e`; raises ValueError on bad input."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(public_raw: bytes) -> str:
    """A short, stable identifier of a public key."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


class SigningKey:
    """A component's private key; ``kid`` and ``public_b64`` are safe to publish."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_b64 = b64e(raw)
        self.kid = key_id(raw)

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """Load the PEM key at ``path``, creating it (mode 0600) on first use."""
        if path.exists():
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(loaded, Ed25519PrivateKey):
                raise ValueError(f"{path} is not an Ed25519 private key")
            return cls(loaded)
        key = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = key._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return key

    @classmethod
    def from_pem(cls, pem: str) -> SigningKey:
        """A key from its PKCS#8 PEM text; raises ValueError if it is not Ed25519."""
        loaded = serialization.load_pem_private_key(pem.encode(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 private key")
        return cls(loaded)

    def private_pem(self) -> str:
        """The private key as PKCS#8 PEM (for a credentials bundle; never for the log)."""
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def sign(self, data: bytes) -> str:
        """Signature of ``data``, base64url."""
        return b64e(self._private.sign(data))

    def token(self, claims: dict[str, Any]) -> str:
        """A compact signed token carrying ``claims`` plus this key's ``kid``."""
        claims = {"iat": int(time.time()), **claims, "kid": self.kid}
        body = b64e(json.dumps(claims, separators=(",", ":")).encode())
        return f"{body}.{self.sign(body.encode())}"


@dataclass(frozen=True)
class PublicKey:
    """An enrolled public key: who holds it and what it may sign."""

    kid: str
    role: str
    name: str
    # Verification goes through libsodium: about twice as fast as OpenSSL's Ed25519 on the
    # machines measured, and a proxy or an audit verifies one signature per event.
    verifier: VerifyKey

    @property
    def raw(self) -> bytes:
        """The 32 bytes of the public key."""
        return bytes(self.verifier)


class KeyRing:
    """Public keys by ``kid``; verifies signatures and tokens locally."""

    def __init__(self) -> None:
        self._keys: dict[str, PublicKey] = {}

    def add(self, kid: str, public_b64: str, role: str, name: str) -> None:
        """Enroll a key (idempotent); raises InvalidSignature if kid and key disagree."""
        raw = b64d(public_b64)
        if key_id(raw) != kid:
            raise InvalidSignature(f"key id {kid} does not match its public key")
        self._keys[kid] = PublicKey(kid, role, name, VerifyKey(raw))  # ValueError if bad

    def add_signing_key(self, key: SigningKey, role: str, name: str) -> None:
        """Enroll the public half of one of our own keys."""
        self.add(key.kid, key.public_b64, role, name)

    def remove(self, kid: str) -> bool:
        """Forget a key (revocation); True if it was known."""
        return self._keys.pop(kid, None) is not None

    def named(self, role: str, name: str) -> list[PublicKey]:
        """Every key of ``role`` held by ``name`` (e.g. a site's agent keys)."""
        return [k for k in self._keys.values() if k.role == role and k.name == name]

    def get(self, kid: str) -> PublicKey | None:
        """The enrolled key, or None."""
        return self._keys.get(kid)

    def __len__(self) -> int:
        return len(self._keys)

    def as_dict(self) -> dict[str, dict[str, str]]:
        """Serializable view: kid -> {role, name, public_key}."""
        out: dict[str, dict[str, str]] = {}
        for k in self._keys.values():
            out[k.kid] = {"role": k.role, "name": k.name, "public_key": b64e(k.raw)}
        return out

    def verify(self, kid: str, data: bytes, signature: str, roles: frozenset[str]) -> PublicKey:
        """Return the key that signed ``data``; raise InvalidSignature otherwise."""
        key = self._keys.get(kid)
        if key is None:
            raise InvalidSignature(f"unknown signing key {kid}")
        if key.role not in roles:
            raise InvalidSignature(f"key {kid} ({key.role}) may not sign this")
        try:
            key.verifier.verify(data, b64d(signature))
        except (_NaclBadSignature, ValueError, TypeError) as exc:
            raise InvalidSignature(f"bad signature by key {kid}") from exc
        return key

    def decode_token(
        self, token: str, *, typ: str, roles: frozenset[str], now: float | None = None
    ) -> dict[str, Any]:
        """Verify a compact token and return its claims; raise InvalidToken if unusable."""
        try:
            body, sig = token.split(".", 1)
            claims = json.loads(b64d(body))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # "[[[[..." too
            raise InvalidToken("malformed token") from exc
        if not isinstance(claims, dict) or not isinstance(claims.get("kid"), str):
            raise InvalidToken("malformed token")
        try:
            self.verify(claims["kid"], body.encode(), sig, roles)
        except InvalidSignature as exc:
            raise InvalidToken(str(exc)) from exc
        if claims.get("typ") != typ:
            raise InvalidToken(f"expected a {typ} token")
        exp = claims.get("exp")
        if exp is not None and (
            not isinstance(exp, int | float) or exp < (time.time() if now is None else now)
        ):
            raise InvalidToken("token expired")
        return claims
