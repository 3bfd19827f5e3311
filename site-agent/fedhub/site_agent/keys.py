"""The edge proxies' public keys, kept in a file that every single-user server reads."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from fedhub.events.envelope import Envelope
from fedhub.events.errors import EventLogError, InvalidSignature
from fedhub.events.signing import KeyRing
from fedhub.events.store import EventStore
from fedhub.schemas import subjects
from fedhub.schemas.events import KeyPublished

log = logging.getLogger(__name__)
TRUSTED_ROLE = "edge-proxy"


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class TrustedKeysFile:
    """Folds ``KeyPublished`` events into ``trusted-keys.json`` (edge-proxy keys only).

    A key is trusted only if its event is signed by that very key (proof of possession);
    who may publish on ``fedhub.key.>`` at all is enforced by the NATS permissions.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ring = KeyRing()
        write_atomic(self.path, json.dumps(self.ring.as_dict()))

    def apply(self, env: Envelope) -> bool:
        """Enroll the key an event publishes; True if the file changed. Never raises."""
        try:
            key: KeyPublished = env.payload_as(KeyPublished)
        except EventLogError as exc:
            log.warning("ignoring event %s on %s: %s", env.id, env.subject, exc)
            return False
        if key.role != TRUSTED_ROLE or self.ring.get(key.kid) is not None:
            return False
        candidate = KeyRing()
        try:
            candidate.add(key.kid, key.public_key, key.role, key.name)
            if env.kid != key.kid:
                raise InvalidSignature("not signed by the key it publishes")
            env.verify(candidate, frozenset({TRUSTED_ROLE}))
        except (InvalidSignature, ValueError) as exc:
            log.warning("not trusting key %s of %s: %s", key.kid, key.name, exc)
            return False
        self.ring.add(key.kid, key.public_key, key.role, key.name)
        write_atomic(self.path, json.dumps(self.ring.as_dict(), indent=1))
        log.info("trusting edge proxy %s (key %s)", key.name, key.kid)
        return True

    async def follow(self, store: EventStore) -> None:
        """Apply every key event in the log, then new ones as they come (runs forever)."""
        async for item in store.follow(subjects.key("*")):
            self.apply(item.event)
