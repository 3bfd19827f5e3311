"""``fedhub audit``: the timeline of who did what, where and when, replayed from the log.

Streams the log (memory stays flat), verifies each event's signature against the keys
published before it, and prints a table or JSON lines.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from fedhub.events.enroll import enroll
from fedhub.events.errors import EventLogError
from fedhub.events.signing import KeyRing
from fedhub.events.store import EventStore, StoredEvent
from fedhub.schemas.names import InvalidName, from_subject_token
from fedhub.schemas.subjects import is_site_fact

ALL_ROLES = frozenset({"coordinator", "edge-proxy", "site-agent"})
_REL = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time, or a relative one like ``30m``, ``2h``, ``7d`` (ago)."""
    now = now or datetime.now(UTC)
    if m := _REL.match(text.strip()):
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not a time: {text!r} (use ISO 8601 or e.g. 30m, 2h, 7d)") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Filter:
    user: str | None = None
    site: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    commands: bool = False

    def keep(self, row: dict[str, Any], when: datetime) -> bool:
        if self.since and when < self.since:
            return False
        if self.until and when > self.until:
            return False
        if self.user and row["user"] != self.user:
            return False
        if self.site and row["site"] != self.site:
            return False
        # commands and sites' raw reports are internal: the recorded events tell the story
        return self.commands or row["kind"] == "event"


def _kind(subject: str) -> str:
    if ".cmd." in subject:
        return "command"
    return "report" if is_site_fact(subject) else "event"


def describe(item: StoredEvent, keyring: KeyRing) -> dict[str, Any]:
    """One audit row: time, actor, event, user, server, site, details, signer."""
    env, data = item.event, item.event.data
    try:
        signer = env.verify(keyring, ALL_ROLES)
        signed = f"{signer.role}:{signer.name}"
    except EventLogError:
        signed = "UNVERIFIED"
    details = {k: v for k, v in data.items()
               if k in ("reason", "message", "target", "prefix", "job_id", "admin", "note",
                        "remote_addr", "backend", "requested_by")}
    user = data.get("user") or (data.get("name") if env.type.startswith("User") else None)
    site = data.get("site") or (data.get("name") if env.type.startswith("Site") else None)
    parts = env.subject.split(".")
    if site is None and len(parts) >= 3 and parts[1] == "cmd":
        try:
            site = from_subject_token(parts[2])  # commands name their site in the subject
        except InvalidName:
            site = parts[2]
    return {
        "seq": item.seq, "time": env.time.isoformat().replace("+00:00", "Z"),
        "kind": _kind(env.subject), "event": env.type,
        "actor": env.actor, "user": user, "server": data.get("server"),
        "site": site,
        "details": details, "signed_by": signed,
    }


async def rows(store: EventStore, flt: Filter) -> AsyncIterator[dict[str, Any]]:
    keyring = KeyRing()
    async for item in store.read("fedhub.>"):
        if item.event.subject.startswith("fedhub.key."):
            enroll(keyring, item)
        row = describe(item, keyring)
        if flt.keep(row, item.event.time):
            yield row


def _cell(value: Any, width: int) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


async def print_audit(store: EventStore, flt: Filter, as_json: bool,
                      out: TextIO = sys.stdout) -> int:
    """Print the timeline; returns the number of rows."""
    count = 0
    if not as_json:
        out.write(f"{'TIME':<24} {'EVENT':<20} {'USER':<16} {'SERVER':<10} {'SITE':<10} "
                  f"{'ACTOR':<24} DETAILS\n")
    async for row in rows(store, flt):
        count += 1
        if as_json:
            out.write(json.dumps(row) + "\n")
            continue
        details = " ".join(f"{k}={v}" for k, v in row["details"].items())
        if row["signed_by"] == "UNVERIFIED":
            details = f"[UNVERIFIED SIGNATURE] {details}"
        server = row["server"] if row["server"] else ("-" if row["server"] == "" else "")
        out.write(f"{row['time'][:23]:<24} {_cell(row['event'], 20):<20} "
                  f"{_cell(row['user'], 16):<16} {_cell(server, 10):<10} "
                  f"{_cell(row['site'], 10):<10} {_cell(row['actor'], 24):<24} {details}\n")
    return count
