"""fedhub's Ed25519 keys as SSH keys, for the tunnels between site agents and edge proxies.

The tunnel authenticates both ends with the keys the log already vouches for: an edge
proxy's host key is its signing key, a site agent's client key is its enrolled agent key.
These helpers convert between the two representations; both components use them, and they
may not import each other, so they live here. asyncssh is imported only by this module.
"""

from __future__ import annotations

import base64
import struct

import asyncssh

from fedhub.events.signing import SigningKey, b64d, b64e, key_id

ALGORITHM = b"ssh-ed25519"
# Both ends of a tunnel prefer AES-GCM (hardware AES through cryptography): about twice
# the throughput of asyncssh's default first choice, chacha20-poly1305. No compression:
# it costs more CPU than it saves on the links tunnels run over.
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def ssh_private_key(key: SigningKey) -> asyncssh.SSHKey:
    """The private SSH key (host key of a proxy, client key of an agent) for ``key``."""
    return asyncssh.import_private_key(key.private_pem())


def ssh_public_key(public_b64: str) -> asyncssh.SSHKey:
    """The SSH public key for a published fedhub public key (``KeyPublished.public_key``).

    Raises ValueError if ``public_b64`` is not a 32-byte Ed25519 key.
    """
    raw = b64d(public_b64)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    try:
        blob = base64.b64encode(_string(ALGORITHM) + _string(raw)).decode()
        return asyncssh.import_public_key(f"{ALGORITHM.decode()} {blob}")
    except asyncssh.KeyImportError as exc:
        raise ValueError(f"not an Ed25519 public key: {exc}") from exc


def raw_public(key: asyncssh.SSHKey) -> bytes:
    """The 32 raw bytes of an Ed25519 SSH public key; ValueError for other key types."""
    blob = key.public_data
    prefix = _string(ALGORITHM) + struct.pack(">I", 32)
    if len(blob) != len(prefix) + 32 or not blob.startswith(prefix):
        raise ValueError(f"not an Ed25519 key: {key.get_algorithm()}")
    return blob[len(prefix):]


def public_b64(key: asyncssh.SSHKey) -> str:
    """The fedhub form (base64url raw bytes) of an Ed25519 SSH public key."""
    return b64e(raw_public(key))


def kid_of(key: asyncssh.SSHKey) -> str:
    """The fedhub key id of an Ed25519 SSH public key (ValueError for other types)."""
    return key_id(raw_public(key))
