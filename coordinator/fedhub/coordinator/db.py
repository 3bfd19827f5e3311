"""SQL tables. Projection tables are rebuilt from the log; ``credentials`` holds the
password hashes that must never enter the log and is not a projection."""

from __future__ import annotations

import functools
import secrets
from datetime import UTC, datetime
from typing import Any, TypeVar, TypeVarTuple

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    String,
    Text,
    bindparam,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, Row
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql import Select

# What the driver raises when the database cannot be reached (restarting, network down):
# the projection retries on these, the API answers 503.
UNREACHABLE = (OperationalError, InterfaceError)
_Ts = TypeVarTuple("_Ts")
_P = TypeVar("_P", bound="Projected")


class Base(DeclarativeBase):
    pass


class Projected(DeclarativeBase):
    """Base of the tables that are pure projections of the log."""


class User(Projected):
    __tablename__ = "users"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_activity: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Server(Projected):
    __tablename__ = "servers"
    user: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    site: Mapped[str] = mapped_column(String(64), default="")
    spawn_id: Mapped[str] = mapped_column(String(40), default="")
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    target: Mapped[str] = mapped_column(Text, default="")
    progress: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    started: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)


class Site(Projected):
    __tablename__ = "sites"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    backend: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, default="")
    weight: Mapped[int] = mapped_column(Integer, default=1)
    agent_id: Mapped[str] = mapped_column(Text, default="")
    agent_started: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    options: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    unreachable_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                               nullable=True)


class Token(Projected):
    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class EndedSession(Projected):
    """A session its user logged out of: its cookie no longer authenticates, here or at
    any edge proxy (which reads the same ``UserLoggedOut`` events)."""

    __tablename__ = "ended_sessions"
    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(64))


class Position(Projected):
    """The last stream sequence each consumer of this database applied."""

    __tablename__ = "positions"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)


class Meta(Base):
    """Facts about this database; ``projection_version`` names the projection's schema."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


XSRF_SECRET = "xsrf_secret"  # the Meta row holding it (never in the log)
# Bump when a projection table changes: the tables are then rebuilt from the log on start.
PROJECTION_VERSION = "5"


class Credential(Base):
    __tablename__ = "credentials"
    user: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(256))


def engine_url(url: str) -> str:
    """The URL SQLAlchemy opens: PostgreSQL URLs without a driver (``postgresql://``, or
    ``postgres://`` as many providers print them) use psycopg 3, the driver fedhub installs
    (SQLAlchemy's own default would be psycopg2)."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


# Several coordinators may share one PostgreSQL database: the one that creates or rebuilds
# the tables holds this advisory lock meanwhile (an arbitrary constant: "fedhub" in ASCII).
_SCHEMA_LOCK = 0x666564687562


def make_engine(url: str) -> Engine:
    """Create the engine and every table that is missing."""
    url = engine_url(url)
    sqlite_file = url.startswith("sqlite")
    engine = create_engine(url, connect_args={"check_same_thread": False} if sqlite_file
                           else {}, pool_pre_ping=not sqlite_file)
    if sqlite_file:
        @event.listens_for(engine, "connect")
        def _wal(conn: Any, _record: Any) -> None:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")

    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":  # released when this transaction ends
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        Base.metadata.create_all(conn)
        with Session(conn) as db:
            meta = db.get(Meta, "projection_version")
            if meta is None or meta.value != PROJECTION_VERSION:
                # An older projection layout: drop it; the runner replays the log from 1.
                Projected.metadata.drop_all(conn)
                db.merge(Meta(key="projection_version", value=PROJECTION_VERSION))
                db.flush()
        Projected.metadata.create_all(conn)
        with Session(conn) as db:  # under the same lock: every coordinator gets one secret
            if db.get(Meta, XSRF_SECRET) is None:
                db.add(Meta(key=XSRF_SECRET, value=secrets.token_hex(32)))
                db.flush()
    return engine


def aware(value: datetime) -> datetime:
    """``value`` with its zone: SQLite hands datetimes back without one (they are UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def xsrf_secret(engine: Engine) -> bytes:
    """The anti-forgery secret every coordinator sharing this database uses (created with
    the tables): a page served by one coordinator may be posted to another."""
    with Session(engine) as db:
        meta = db.get(Meta, XSRF_SECRET)
        if meta is None:
            raise RuntimeError("the database has no XSRF secret: open it with make_engine")
        return meta.value.encode()


def _upsert(db: Session) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_*`` (SQLite and PostgreSQL)."""
    return (postgresql.insert if db.get_bind().dialect.name == "postgresql"
            else sqlite.insert)(Position)


def save_position(db: Session, name: str, seq: int) -> None:
    """Record ``seq`` as the position of ``name`` (inserted if new, in one statement, so
    two coordinators saving the same new position at once do not collide)."""
    db.execute(_upsert(db).values(name=name, seq=seq)
               .on_conflict_do_update(index_elements=[Position.name], set_={"seq": seq}))


def lock_position(db: Session, name: str) -> int:
    """The position of ``name``, its row locked until ``db``'s transaction ends: another
    coordinator sharing this PostgreSQL database waits here, then reads what this one
    committed. (SQLite has one writer at a time anyway and ignores the lock.)"""
    locked = select(Position.seq).where(Position.name == name).with_for_update()
    seq = db.scalar(locked)
    if seq is None:  # the first batch ever: make the row (another may make it at once)
        db.execute(_upsert(db).values(name=name, seq=0).on_conflict_do_nothing())
        seq = db.scalar(locked)
    return int(seq or 0)


def rows(engine: Engine, query: Select[*_Ts], **params: Any) -> list[Row[*_Ts]]:
    """The rows of a read-only ``query`` with its ``bindparam`` values, through a plain
    connection instead of an ORM session. For the paths every API request takes
    (authentication, the user, the sites), which read a row or two: a session with
    ``get`` costs about four times the query itself, and so does building the statement
    anew (hence module-level statements with bind parameters). Measured on SQLite.
    Raises what the driver raises (see ``UNREACHABLE``)."""
    with engine.connect() as conn:
        return list(conn.execute(query, params))


@functools.cache
def _by_columns(model: type[Projected], names: tuple[str, ...]) -> Select[Any]:
    table = model.__table__
    return select(*table.columns).where(*(table.c[n] == bindparam(n) for n in names))


def detached(engine: Engine, model: type[_P], **key: Any) -> _P | None:
    """The row of ``model`` whose columns equal ``key`` (its primary key), read with
    ``rows`` (one statement per model and key, built once), as a copy detached from any
    session: read it, never add it back. None if there is no such row."""
    found = rows(engine, _by_columns(model, tuple(key)), **key)
    return model(**found[0]._mapping) if found else None


def drop_projections(engine: Engine) -> None:
    """Drop and re-create every projection table (credentials are kept)."""
    Projected.metadata.drop_all(engine)
    Projected.metadata.create_all(engine)


SessionFactory = sessionmaker
