"""SQL tables. Projection tables are rebuilt from the log; ``credentials`` holds the
password hashes that must never enter the log and is not a projection."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Integer, String, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


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
    target: Mapped[str] = mapped_column(String(256), default="")
    progress: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(String(1024), default="")
    started: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seq: Mapped[int] = mapped_column(Integer, default=0)


class Site(Projected):
    __tablename__ = "sites"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    backend: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(String(512), default="")
    weight: Mapped[int] = mapped_column(Integer, default=1)
    agent_id: Mapped[str] = mapped_column(String(128), default="")
    agent_started: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    options: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    unreachable_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                               nullable=True)


class Token(Projected):
    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    note: Mapped[str] = mapped_column(String(256), default="")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Position(Projected):
    """The last stream sequence each consumer of this database applied."""

    __tablename__ = "positions"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)


class Meta(Base):
    """Facts about this database; ``projection_version`` names the projection's schema."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


# Bump when a projection table changes: the tables are then rebuilt from the log on start.
PROJECTION_VERSION = "3"


class Credential(Base):
    __tablename__ = "credentials"
    user: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(256))


def make_engine(url: str) -> Engine:
    """Create the engine and every table that is missing."""
    engine = create_engine(url, connect_args={"check_same_thread": False}
                           if url.startswith("sqlite") else {})
    if url.startswith("sqlite"):
        @event.listens_for(engine, "connect")
        def _wal(conn: Any, _record: Any) -> None:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")

    Base.metadata.create_all(engine)
    with Session(engine) as db, db.begin():
        meta = db.get(Meta, "projection_version")
        if meta is None or meta.value != PROJECTION_VERSION:
            # An older projection layout: drop it; the runner replays the log from 1.
            Projected.metadata.drop_all(engine)
            db.merge(Meta(key="projection_version", value=PROJECTION_VERSION))
    Projected.metadata.create_all(engine)
    return engine


def drop_projections(engine: Engine) -> None:
    """Drop and re-create every projection table (credentials are kept)."""
    Projected.metadata.drop_all(engine)
    Projected.metadata.create_all(engine)


SessionFactory = sessionmaker
