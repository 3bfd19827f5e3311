"""``fedhub audit``: time parsing, filters, signature verification and output formats."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from fedhub.coordinator.audit import Filter, parse_time, print_audit, rows
from fedhub.events.envelope import Envelope, new_event
from fedhub.events.memory import MemoryStore
from fedhub.events.signing import SigningKey
from fedhub.schemas import events as ev
from fedhub.schemas import subjects
from fedhub.schemas.events import Payload

NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


# -- parse_time ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-01T08:30:00+00:00", datetime(2026, 5, 1, 8, 30, tzinfo=UTC)),
        ("2026-05-01T08:30:00Z", datetime(2026, 5, 1, 8, 30, tzinfo=UTC)),
        ("2026-05-01T10:30:00+02:00", datetime(2026, 5, 1, 8, 30, tzinfo=UTC)),
        ("2026-05-01", datetime(2026, 5, 1, tzinfo=UTC)),  # naive means UTC
        (" 2026-05-01T08:30 ", datetime(2026, 5, 1, 8, 30, tzinfo=UTC)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2h", NOW - timedelta(hours=2)),
        ("7d", NOW - timedelta(days=7)),
        ("45s", NOW - timedelta(seconds=45)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    value = parse_time(text, now=NOW)
    assert value == expected
    assert value.tzinfo is not None


def test_parse_time_keeps_the_given_offset() -> None:
    value = parse_time("2026-05-01T10:30:00+02:00")
    assert value.utcoffset() == timezone(timedelta(hours=2)).utcoffset(None)


@pytest.mark.parametrize("text", ["yesterday", "", "30x", "m30", "2026-13-01", "-2h"])
def test_parse_time_rejects_garbage_clearly(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a time: .*ISO 8601.*30m, 2h, 7d"):
        parse_time(text, now=NOW)


# -- a small log --------------------------------------------------------------------------

COORD_KEY = SigningKey.generate()
AGENT_KEY = SigningKey.generate()
ROGUE_KEY = SigningKey.generate()


def at(subject: str, payload: Payload, minutes: int, key: SigningKey | None = COORD_KEY,
       actor: str = "coordinator") -> Envelope:
    """An event at NOW + minutes, signed (after fixing its time) by ``key``."""
    env = new_event(subject, payload, actor=actor, signer=key)
    env = env.model_copy(update={"time": NOW + timedelta(minutes=minutes)})
    if key is None:
        return env
    return env.model_copy(update={"signature": key.sign(env.signing_bytes())})


def key_published(key: SigningKey, role: str, name: str, minutes: int,
                  signer: SigningKey | None = None) -> Envelope:
    """Coordinator and proxy keys sign their own publication; a coordinator enrolls sites."""
    payload = ev.KeyPublished(kid=key.kid, public_key=key.public_b64, role=role, name=name)
    return at(subjects.key(key.kid), payload, minutes, key=signer or key, actor=name)


def log() -> list[Envelope]:
    srv = subjects.server("alice", "gpu")
    return [
        key_published(COORD_KEY, "coordinator", "coordinator", 0),
        key_published(AGENT_KEY, "site-agent", "agent-hpc", 1, signer=COORD_KEY),
        at(subjects.site("hpc"), ev.SiteRegistered(name="hpc", backend="slurm"), 2),
        at(subjects.user("alice"), ev.UserCreated(name="alice", admin=True), 3),
        at(subjects.user("bob"), ev.UserCreated(name="bob"), 4),
        at(srv, ev.ServerRequested(user="alice", server="gpu", site="hpc", spawn_id="s1"), 5),
        at(subjects.command("hpc", "start"),
           ev.StartServer(user="alice", server="gpu", spawn_id="s1", prefix="/user/alice/gpu/"),
           6),
        at(srv, ev.ServerReady(user="alice", server="gpu", site="hpc", spawn_id="s1",
                               url="/user/alice/gpu/"), 7, key=AGENT_KEY, actor="agent-hpc"),
        at(subjects.server("bob", ""),
           ev.ServerRequested(user="bob", site="cloud", spawn_id="s2"), 8),
        at(subjects.user("alice"), ev.UserUpdated(name="alice", admin=False), 9,
           key=ROGUE_KEY, actor="coordinator"),
    ]


@pytest.fixture
async def store() -> MemoryStore:
    store = MemoryStore()
    for env in log():
        await store.append(env)
    return store


async def collect(store: MemoryStore, flt: Filter) -> list[dict[str, Any]]:
    return [row async for row in rows(store, flt)]


async def test_without_filters_every_event_but_commands(store: MemoryStore) -> None:
    got = await collect(store, Filter())
    assert [r["event"] for r in got] == [
        "KeyPublished", "KeyPublished", "SiteRegistered", "UserCreated", "UserCreated",
        "ServerRequested", "ServerReady", "ServerRequested", "UserUpdated",
    ]
    assert all(r["kind"] == "event" for r in got)


async def test_commands_shown_when_asked(store: MemoryStore) -> None:
    got = await collect(store, Filter(commands=True))
    commands = [r for r in got if r["kind"] == "command"]
    assert [(r["event"], r["user"], r["server"]) for r in commands] == [
        ("StartServer", "alice", "gpu")]


async def test_filter_by_user(store: MemoryStore) -> None:
    got = await collect(store, Filter(user="alice"))
    assert [r["event"] for r in got] == [
        "UserCreated", "ServerRequested", "ServerReady", "UserUpdated"]
    assert {r["user"] for r in got} == {"alice"}


async def test_filter_by_site(store: MemoryStore) -> None:
    got = await collect(store, Filter(site="hpc"))
    assert [r["event"] for r in got] == ["SiteRegistered", "ServerRequested", "ServerReady"]
    got = await collect(store, Filter(site="cloud"))
    assert [(r["event"], r["user"]) for r in got] == [("ServerRequested", "bob")]


async def test_site_filter_keeps_that_sites_commands(store: MemoryStore) -> None:
    # A command travels on fedhub.cmd.<site>.>: its row must name that site, so
    # `fedhub audit --site hpc --commands` shows what the coordinator told hpc to do.
    got = await collect(store, Filter(site="hpc", commands=True))
    assert [r["event"] for r in got] == [
        "SiteRegistered", "ServerRequested", "StartServer", "ServerReady"]


async def test_filter_by_time_window(store: MemoryStore) -> None:
    flt = Filter(since=NOW + timedelta(minutes=3), until=NOW + timedelta(minutes=5))
    got = await collect(store, flt)
    assert [r["event"] for r in got] == ["UserCreated", "UserCreated", "ServerRequested"]
    late = await collect(store, Filter(since=parse_time("2026-05-10T12:08:30Z")))
    assert [r["event"] for r in late] == ["UserUpdated"]


async def test_filters_combine(store: MemoryStore) -> None:
    got = await collect(store, Filter(user="alice", site="hpc",
                                      until=NOW + timedelta(minutes=6)))
    assert [r["event"] for r in got] == ["ServerRequested"]


async def test_rows_say_who_signed_them(store: MemoryStore) -> None:
    got = {r["seq"]: r for r in await collect(store, Filter(commands=True))}
    assert got[1]["signed_by"] == "coordinator:coordinator"
    assert got[4]["signed_by"] == "coordinator:coordinator"
    assert got[8]["signed_by"] == "site-agent:agent-hpc"
    assert got[10]["signed_by"] == "UNVERIFIED"  # rogue key never published
    assert got[4]["details"] == {"admin": True}


async def test_event_signed_before_its_key_was_published_is_unverified() -> None:
    store = MemoryStore()
    late_key = SigningKey.generate()
    await store.append(at(subjects.user("a"), ev.UserCreated(name="a"), 0, key=late_key))
    await store.append(key_published(late_key, "coordinator", "late", 1))
    await store.append(at(subjects.user("b"), ev.UserCreated(name="b"), 2, key=late_key))
    got = await collect(store, Filter())
    assert [r["signed_by"] for r in got] == ["UNVERIFIED", "coordinator:late", "coordinator:late"]


async def test_tampered_event_is_unverified(store: MemoryStore) -> None:
    env = at(subjects.user("carol"), ev.UserCreated(name="carol"), 10)
    forged = env.model_copy(update={"data": {"name": "carol", "admin": True}})
    seq = await store.append(forged)
    got = [r for r in await collect(store, Filter()) if r["seq"] == seq]
    assert got[0]["signed_by"] == "UNVERIFIED"


async def test_table_output_marks_unverified_rows(store: MemoryStore) -> None:
    out = io.StringIO()
    count = await print_audit(store, Filter(), as_json=False, out=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:3] == ["TIME", "EVENT", "USER"]
    assert len(lines) == count + 1 == 10
    body = lines[1:]
    unverified = [line for line in body if "[UNVERIFIED SIGNATURE]" in line]
    assert len(unverified) == 1 and "UserUpdated" in unverified[0]
    created = [line for line in body if "UserCreated" in line and "alice" in line]
    assert len(created) == 1
    assert "UNVERIFIED" not in created[0] and "admin=True" in created[0]
    assert created[0].startswith("2026-05-10T12:03:00")


async def test_json_output_is_one_object_per_line(store: MemoryStore) -> None:
    out = io.StringIO()
    count = await print_audit(store, Filter(commands=True), as_json=True, out=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == count == 10
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(p, dict) for p in parsed)
    assert [p["seq"] for p in parsed] == list(range(1, 11))
    assert parsed[3]["time"] == "2026-05-10T12:03:00Z"
    assert parsed[3]["user"] == "alice" and parsed[3]["signed_by"] == "coordinator:coordinator"
    assert parsed[9]["signed_by"] == "UNVERIFIED"


async def test_empty_log_prints_only_the_header() -> None:
    out = io.StringIO()
    assert await print_audit(MemoryStore(), Filter(), as_json=False, out=out) == 0
    assert len(out.getvalue().splitlines()) == 1
    out = io.StringIO()
    assert await print_audit(MemoryStore(), Filter(), as_json=True, out=out) == 0
    assert out.getvalue() == ""


async def test_a_user_named_cmd_is_not_taken_for_a_command() -> None:
    store = MemoryStore()
    await store.append(at(subjects.user("cmd"), ev.UserCreated(name="cmd"), 0))
    await store.append(at(subjects.server("cmd", "x"), ev.ServerRequested(
        user="cmd", server="x", site="hpc", spawn_id="s1"), 1))
    got = await collect(store, Filter(user="cmd"))
    assert [(r["event"], r["kind"]) for r in got] == [
        ("UserCreated", "event"), ("ServerRequested", "event")]
