"""Which published keys to trust: one rule for every consumer of the log.

- Coordinator and edge-proxy keys are trusted when their ``KeyPublished`` event is signed
  by the very key it publishes (only hub components hold the NATS credential that may
  publish on ``fedhub.key.>``).
- Site-agent keys are trusted only when an already trusted coordinator enrolled them
  (``fedhub site add``): a site cannot vouch for itself.
- A key never changes role, and ``KeyRevoked`` signed by a coordinator removes it.
"""

from __future__ import annotations

import logging

from fedhub.events.errors import EventLogError, InvalidSignature
from fedhub.events.signing import KeyRing
from fedhub.events.store import StoredEvent
from fedhub.schemas.events import KeyPublished, KeyRevoked

log = logging.getLogger(__name__)
SELF_SIGNED_ROLES = frozenset({"coordinator", "edge-proxy"})
ENROLLED_ROLES = frozenset({"site-agent"})
COORDINATOR = frozenset({"coordinator"})


def enroll(keyring: KeyRing, item: StoredEvent) -> bool:
    """Apply one ``KeyPublished``/``KeyRevoked`` event to ``keyring``; True if it changed.

    Never raises for bad events: they are logged and ignored.
    """
    env = item.event
    try:
        if env.type == KeyRevoked.TYPE:
            revoked = env.payload_as(KeyRevoked)
            env.verify(keyring, COORDINATOR)
            return keyring.remove(revoked.kid)
        if env.type != KeyPublished.TYPE:
            return False
        p = env.payload_as(KeyPublished)
        known = keyring.get(p.kid)
        if known is not None:
            if known.role != p.role:
                raise InvalidSignature(f"key {p.kid} may not change role to {p.role}")
            return False
        if p.role in SELF_SIGNED_ROLES:
            if env.kid != p.kid:
                raise InvalidSignature("not signed by the key it publishes")
            probe = KeyRing()
            probe.add(p.kid, p.public_key, p.role, p.name)
            env.verify(probe, frozenset({p.role}))
        elif p.role in ENROLLED_ROLES:
            env.verify(keyring, COORDINATOR)
        else:
            raise InvalidSignature(f"unknown key role {p.role!r}")
        keyring.add(p.kid, p.public_key, p.role, p.name)
        return True
    except (EventLogError, ValueError) as exc:
        log.warning("not trusting key event %d (%s): %s", item.seq, env.subject, exc)
        return False
