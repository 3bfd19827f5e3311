"""The keys the agent trusts: the coordinators' (every command must carry one's signature)
and the edge proxies' (kept in a file that every single-user server reads)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from pathlib import Path

from fedhub.events.enroll import COORDINATOR, enroll
from fedhub.events.envelope import Envelope
from fedhub.events.errors import EventLogError
from fedhub.events.signing import KeyRing
from fedhub.events.store import EventStore, StoredEvent
from fedhub.schemas import subjects

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


class KeyBook:
    """The log's key events folded by ``fedhub.events.enroll`` (the rule every consumer of
    the log shares: coordinator and edge-proxy keys signed by themselves, site keys
    enrolled by a coordinator, revocations by a coordinator), once for the whole agent.
    The edge-proxy keys are written to ``trusted_path`` whenever they change, and every
    ``on_change`` callback runs after each change."""

    def __init__(self, trusted_path: Path) -> None:
        self.ring = KeyRing()
        self.path = trusted_path
        self._written: dict[str, dict[str, str]] | None = None
        self._seq = 0  # the last key event read in order (where a restarted follow resumes)
        self._listeners: list[Callable[[], None]] = []
        self._write()

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a key event was applied (what it raises is logged)."""
        self._listeners.append(callback)

    def apply(self, item: StoredEvent) -> bool:
        """Fold one key event; True if the ring changed. Never raises."""
        changed = enroll(self.ring, item)
        if changed:
            self._write()
        if changed:
            for callback in self._listeners:
                try:
                    callback()
                except Exception:  # a listener's bug must not stop the keys (or commands)
                    log.exception("a listener of key changes failed")
        return changed

    async def read(self, store: EventStore) -> None:
        """Apply every key event in the log now (before any command is checked)."""
        await self._fold(store.read(subjects.key("*"), start=self._seq + 1))

    async def follow(self, store: EventStore) -> None:
        """Apply the key events after those read, as they come (runs forever)."""
        await self._fold(store.follow(subjects.key("*"), start=self._seq + 1))

    async def _fold(self, events: AsyncGenerator[StoredEvent, None]) -> None:
        async with aclosing(events) as items:
            async for item in items:
                self.apply(item)
                self._seq = item.seq

    async def from_coordinator(self, env: Envelope, store: EventStore) -> bool:
        """True if an enrolled coordinator key signed ``env`` (a command); else logs why.

        A key not seen yet (a coordinator that started after the last key event read) is
        looked up in the log first. Only the hub's credential may publish keys, and sites
        cannot sign as a coordinator: a site that makes a message reach another site's
        agent cannot make it act."""
        if env.kid is not None and self.ring.get(env.kid) is None:
            last = await store.last(subjects.key(env.kid))
            if last is not None:
                self.apply(last)
        try:
            env.verify(self.ring, COORDINATOR)
        except EventLogError as exc:
            log.warning("refusing %s %s on %s: %s", env.type, env.id, env.subject, exc)
            return False
        return True

    def _write(self) -> None:
        proxies = {kid: entry for kid, entry in self.ring.as_dict().items()
                   if entry["role"] == TRUSTED_ROLE}
        if proxies == self._written:
            return
        write_atomic(self.path, json.dumps(proxies, indent=1))
        for kid in proxies.keys() - (self._written or {}).keys():
            log.info("trusting edge proxy %s (key %s)", proxies[kid]["name"], kid)
        self._written = proxies
