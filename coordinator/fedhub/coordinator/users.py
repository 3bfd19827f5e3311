"""User accounts: every change is appended to the log before it takes effect."""

from __future__ import annotations

from datetime import UTC, datetime

from fedhub.coordinator.auth import forget_password, set_password
from fedhub.coordinator.context import Hub
from fedhub.coordinator.db import Server, User, aware, detached
from fedhub.coordinator.errors import BadRequest, Conflict, NotFound
from fedhub.schemas import subjects
from fedhub.schemas.events import UserCreated, UserDeleted, UserUpdated
from fedhub.schemas.names import InvalidName, normalize_user_name


def valid_name(raw: str) -> str:
    try:
        return normalize_user_name(raw)
    except InvalidName as exc:
        raise BadRequest(f"invalid user name {raw[:80]!r}: {exc}") from exc


async def create_user(hub: Hub, raw: str, *, admin: bool, actor: str,
                      password: str | None = None) -> User:
    """Create a user (raises Conflict if it exists). Idempotency: none; 409 on retry."""
    name = valid_name(raw)
    last = await hub.store.last(subjects.user(name))
    if last is not None and last.event.type != UserDeleted.TYPE:
        raise Conflict(f"user {name} already exists")
    if password is not None:
        set_password(hub, name, password)  # validates before anything enters the log
    else:
        forget_password(hub, name)  # a deleted account's, which must not carry over
    await hub.emit(subjects.user(name), UserCreated(name=name, admin=admin), actor=actor,
                   expected_seq=last.seq if last else 0, wait=True)
    return get_user(hub, name)


async def update_user(hub: Hub, name: str, *, admin: bool | None, password: str | None,
                      actor: str) -> User:
    """Set user ``name``'s password and/or admin flag (None leaves it). ``name`` as in a URL:
    normalized here, so ``Bob`` changes ``bob``. Raises NotFound, BadRequest."""
    user = get_user(hub, name)
    name = user.name
    if password is not None:
        set_password(hub, name, password)
    if admin is not None and admin != user.admin:
        last = await hub.store.last(subjects.user(name))
        await hub.emit(subjects.user(name), UserUpdated(name=name, admin=admin), actor=actor,
                       expected_seq=last.seq if last else 0, wait=True)
    return get_user(hub, name)


async def delete_user(hub: Hub, name: str, *, actor: str) -> None:
    get_user(hub, name)
    last = await hub.store.last(subjects.user(name))
    await hub.emit(subjects.user(name), UserDeleted(name=name), actor=actor,
                   expected_seq=last.seq if last else 0, wait=True)
    forget_password(hub, name)  # the next account of this name must not log in with it


def get_user(hub: Hub, raw: str) -> User:
    """User ``raw`` (normalized), detached from any session: read its attributes, never
    add it back. Raises BadRequest for an invalid name, NotFound for an unknown user."""
    name = valid_name(raw)
    user = detached(hub.engine, User, name=name)
    if user is None:
        raise NotFound(f"no such user: {name}")
    return user


def list_users(hub: Hub, offset: int, limit: int) -> tuple[list[User], int]:
    with hub.sessions() as db:
        total = db.query(User).count()
        rows = db.query(User).order_by(User.name).offset(offset).limit(limit).all()
        for r in rows:
            db.expunge(r)
        return rows, total


def servers_of_users(hub: Hub, names: list[str]) -> dict[str, list[Server]]:
    """The server rows of each of ``names`` (ordered by server name; users without any are
    left out), in one query: a page of users must not cost a query per user."""
    found: dict[str, list[Server]] = {}
    if not names:
        return found
    with hub.sessions() as db:
        for r in db.query(Server).filter(Server.user.in_(names)).order_by(Server.user,
                                                                          Server.name):
            db.expunge(r)
            found.setdefault(r.user, []).append(r)
    return found


def servers_of(hub: Hub, name: str) -> list[Server]:
    """The server rows of ``name``, ordered by server name."""
    return servers_of_users(hub, [name]).get(name, [])


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z`` (SQLite hands datetimes back without a zone)."""
    if value is None:
        return None
    return aware(value).astimezone(UTC).isoformat().replace("+00:00", "Z")
