"""``fedhub audit``: the timeline of who did what, where and when, replayed from the log.

Streams the log (memory stays flat), verifies each kept event's signature against the keys
published before it, and prints a table or JSON lines.

``--user`` and ``--site`` become NATS subject filters, so the store skips (without
decoding) the events that cannot match; the exact row filter then runs on what is read,
and only the rows kept are verified. Which subjects can hold a matching row:

- a user's events live on subjects naming that user (``user``, ``login``, ``token``,
  ``server``, ``route``): only hub components may write there, and they build the subject
  and the data from the same name;
- a site's own events live on ``site.<site>`` and ``security.<site>``, its commands on
  ``cmd.<site>.>``; server and route events name their site only in their data, so
  ``--site`` reads those two families whole and filters after decoding;
- sites' raw reports (``--commands``) are read whole whatever the filter: a site may
  write any user or site into its reports, and the audit must show what it claimed.
"""

from __future__ import annotations

import heapq
import json
import re
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from fedhub.events.enroll import enroll
from fedhub.events.errors import EventLogError
from fedhub.events.signing import KeyRing
from fedhub.events.store import EventStore, StoredEvent
from fedhub.schemas import subjects
from fedhub.schemas.names import InvalidName, from_subject_token, subject_token
from fedhub.schemas.subjects import is_site_fact

ALL_ROLES = frozenset({"coordinator", "edge-proxy", "site-agent"})
_REL = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
KEYS = f"{subjects.ROOT}.key.>"
# Writers stamp events with their own clocks, so the log is only roughly in time order:
# reading starts this long before --since and stops this long after --until.
CLOCK_SKEW = timedelta(minutes=5)


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
    """Which rows to show; every field left empty lets every row through."""

    user: str | None = None
    site: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    commands: bool = False

    def keep(self, row: dict[str, Any], when: datetime) -> bool:
        """True if ``row`` (an event at ``when``) is shown: the exact test, whatever was read."""
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
    # By position: a user or server named "cmd" also puts ".cmd." in a subject.
    if subject.split(".", 2)[1:2] == ["cmd"]:
        return "command"
    return "report" if is_site_fact(subject) else "event"


def signer_of(item: StoredEvent, keyring: KeyRing) -> str:
    """``role:name`` of the key that signed ``item``, or ``UNVERIFIED``."""
    try:
        signer = item.event.verify(keyring, ALL_ROLES)
    except EventLogError:
        return "UNVERIFIED"
    return f"{signer.role}:{signer.name}"


def _row(item: StoredEvent) -> dict[str, Any]:
    """The audit row of ``item`` without ``signed_by`` (verifying is the costly part)."""
    env, data = item.event, item.event.data
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
        "site": site, "details": details,
    }


def describe(item: StoredEvent, keyring: KeyRing) -> dict[str, Any]:
    """One audit row: time, actor, event, user, server, site, details, signer."""
    row = _row(item)
    row["signed_by"] = signer_of(item, keyring)
    return row


def subject_filters(flt: Filter) -> list[str]:
    """NATS subject filters that together hold every event ``flt`` can keep, and the keys.

    Without ``--user`` or ``--site`` that is the whole log; see the module docstring for
    why each family is read.
    """
    if not flt.user and not flt.site:
        return [subjects.ALL]
    found = {KEYS}
    if flt.user:
        user = subject_token(flt.user)
        found |= {f"{subjects.ROOT}.server.{user}.*", f"{subjects.ROOT}.route.{user}.*"}
        if not flt.site:  # account, login and token events never name a site
            found |= {subjects.user(flt.user), subjects.login(flt.user),
                      subjects.token(flt.user)}
    elif flt.site:
        found |= {subjects.site(flt.site), subjects.security(flt.site),
                  f"{subjects.ROOT}.server.>", f"{subjects.ROOT}.route.>"}
    if flt.commands:
        found.add(subjects.ALL_SITE_FACTS)
        found.add(subjects.commands(flt.site) if flt.site else f"{subjects.ROOT}.cmd.>")
    return sorted(found)


Source = tuple[str, int, int | None]  # subject filter, first sequence, stop before (or None)


async def merged(store: EventStore, sources: list[Source]) -> AsyncGenerator[StoredEvent, None]:
    """The events of every source (which must not overlap), in log order.

    Each source is read in sequence order and the reads are merged by sequence, holding
    one event per source, so memory stays flat. All reads stop at the end of the log as
    it was before the first began: a key published meanwhile cannot be missing from the
    keys' read while an event it signed shows up in another.
    """
    end = await store.last_seq()
    async with AsyncExitStack() as stack:
        reads = [await stack.enter_async_context(aclosing(store.read(f, start=first)))
                 for f, first, _ in sources]
        stops = [end + 1 if stop is None else min(stop, end + 1) for _, _, stop in sources]
        heap: list[tuple[int, int, StoredEvent]] = []

        async def advance(i: int) -> None:
            if (item := await anext(reads[i], None)) is not None and item.seq < stops[i]:
                heapq.heappush(heap, (item.seq, i, item))

        for i in range(len(reads)):
            await advance(i)
        while heap:
            _, i, item = heapq.heappop(heap)
            await advance(i)
            yield item


async def first_seq_at(store: EventStore, when: datetime) -> int:
    """The sequence of the first event stamped ``when`` or later (last + 1 if none),
    by bisection: right as long as the log is in time order (see CLOCK_SKEW)."""
    lo, hi = 1, await store.last_seq()
    while lo <= hi:
        mid = (lo + hi) // 2
        item = await store.first(subjects.ALL, start=mid)
        if item is None or item.event.time >= when:
            hi = mid - 1
        else:
            lo = item.seq + 1
    return lo


async def sources(store: EventStore, flt: Filter) -> list[Source]:
    """What to read for ``flt``: its subject filters from --since on (less clock skew),
    and the keys from the start, as an event is checked against every key before it."""
    start = await first_seq_at(store, flt.since - CLOCK_SKEW) if flt.since else 1
    chosen = subject_filters(flt)
    if start <= 1:
        return [(f, 1, None) for f in chosen]
    if chosen == [subjects.ALL]:  # the keys from ``start`` on are in the main read
        return [(KEYS, 1, start), (subjects.ALL, start, None)]
    return [(f, 1, None) if f == KEYS else (f, start, None) for f in chosen]


async def rows(store: EventStore, flt: Filter) -> AsyncIterator[dict[str, Any]]:
    """The audit rows ``flt`` keeps, in log order, each with its verified signer."""
    keyring = KeyRing()
    stop = flt.until + CLOCK_SKEW if flt.until else None
    async with aclosing(merged(store, await sources(store, flt))) as events:
        async for item in events:
            if stop is not None and item.event.time > stop:
                return
            if item.event.subject.startswith("fedhub.key."):
                enroll(keyring, item)
            row = _row(item)
            if flt.keep(row, item.event.time):
                row["signed_by"] = signer_of(item, keyring)
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
