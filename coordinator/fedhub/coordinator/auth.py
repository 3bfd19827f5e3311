"""Passwords (argon2, stored only in SQL), session cookies and API tokens.

Sessions and API tokens are compact tokens signed with the coordinator's key, so edge
proxies verify them locally with the public key from the log. The log records only their
ids (``UserLoggedIn.session_id``, ``TokenIssued.token_id``), never the tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Request
from sqlalchemy import bindparam, exists, select

from fedhub.coordinator.context import Hub
from fedhub.coordinator.db import Credential, EndedSession, Token, User, aware, rows
from fedhub.coordinator.errors import BadRequest, Forbidden, TooManyRequests, Unauthorized
from fedhub.events.envelope import uuid7
from fedhub.events.errors import InvalidToken
from fedhub.events.signing import issued_before
from fedhub.schemas import subjects
from fedhub.schemas.events import TokenIssued, UserLoggedIn, UserLoggedOut, UserLoginFailed

COOKIE = "fedhub-session"
COORDINATOR_ROLES = frozenset({"coordinator"})
_hasher = PasswordHasher()
# Verifying against a dummy hash keeps unknown-user logins as slow as wrong passwords.
_DUMMY_HASH = _hasher.hash("not a password")


@dataclass(frozen=True)
class Identity:
    """Who is calling: the user, whether admin, and how they authenticated."""

    name: str
    admin: bool
    via: str  # "session" | "token"
    session_id: str = ""
    token_id: str = ""

    def xsrf(self, secret: bytes) -> str:
        """Per-session anti-forgery value for cookie-authenticated writes."""
        return hmac.new(secret, self.session_id.encode(), hashlib.sha256).hexdigest()[:32]


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def set_password(hub: Hub, user: str, password: str) -> None:
    """Store a password hash for ``user`` (replacing any old one)."""
    if len(password) < 8:
        raise BadRequest("password must have at least 8 characters")
    with hub.sessions.begin() as db:
        db.merge(Credential(user=user, password_hash=hash_password(password)))


def forget_password(hub: Hub, user: str) -> None:
    """Remove ``user``'s password hash, if any (idempotent)."""
    with hub.sessions.begin() as db:
        db.query(Credential).filter(Credential.user == user).delete()


def check_password(hub: Hub, user: str, password: str) -> bool:
    with hub.sessions() as db:
        cred = db.get(Credential, user)
        stored = cred.password_hash if cred else _DUMMY_HASH
    try:
        return _hasher.verify(stored, password) and cred is not None
    except (VerificationError, InvalidHashError):
        return False


async def login(hub: Hub, raw_name: str, password: str, remote: str | None) -> str:
    """Check credentials, record the outcome in the log, return a session token.

    Raises Forbidden (after logging ``UserLoginFailed``) on a bad name or password, and
    TooManyRequests, checking nothing, while this name or address has failed too often.
    """
    name = raw_name.strip().lower()[:64]
    throttle = hub.login_throttle
    wait = math.ceil(throttle.wait(name, remote))
    if wait > 0:
        raise TooManyRequests(f"Too many failed logins; try again in {wait} seconds", wait)
    with hub.sessions() as db:
        user = db.get(User, name)
    if user is None or not check_password(hub, name, password):
        throttle.failed(name, remote)
        # What was typed for an unknown user stays out of the log, which keeps it for good:
        # it is as often a password typed into the wrong field as a probed name.
        known = name if user is not None else ""
        reason = "unknown user" if user is None else "wrong password"
        await hub.emit(subjects.login(known or "-"),
                       UserLoginFailed(name=known, reason=reason, remote_addr=remote),
                       actor=f"anonymous:{remote or '-'}")
        raise Forbidden("Invalid username or password")
    throttle.succeeded(name)
    sid = uuid7()
    await hub.emit(subjects.login(name), UserLoggedIn(name=name, session_id=sid,
                   remote_addr=remote), actor=f"user:{name}")
    exp = int(time.time() + hub.settings.cookie_max_age)
    return hub.key.token({"typ": "session", "sub": name, "sid": sid, "exp": exp})


async def logout(hub: Hub, ident: Identity) -> None:
    """End ``ident``'s session: once this returns, its cookie no longer authenticates
    here (the event is projected); edge proxies refuse it as soon as they read it."""
    if ident.via == "session":
        await hub.emit(subjects.login(ident.name),
                       UserLoggedOut(name=ident.name, session_id=ident.session_id),
                       actor=f"user:{ident.name}", wait=True)


async def issue_token(hub: Hub, user: str, note: str, expires_in: float | None,
                      actor: str) -> tuple[str, Token]:
    """Create an API token for ``user``: returns (secret token, its record)."""
    tid = "t" + uuid7().replace("-", "")[:20]
    expires = datetime.now(UTC) + timedelta(seconds=expires_in) if expires_in else None
    claims: dict[str, object] = {"typ": "api", "sub": user, "jti": tid}
    if expires:
        claims["exp"] = int(expires.timestamp())
    seq = await hub.emit(subjects.token(user), TokenIssued(user=user, token_id=tid, note=note,
                         expires_at=expires), actor=actor, wait=True)
    del seq
    with hub.sessions() as db:
        record = db.get(Token, tid)
        assert record is not None
        db.expunge(record)
    return hub.key.token(claims), record


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    return request.query_params.get("token")


# The unrevoked token ``jti`` and its user ``sub``; the user ``sub`` (built once: see db.rows).
_TOKEN_USER = (select(Token.id, User.name, User.admin)
               .join_from(Token, User, User.name == bindparam("sub"))
               .where(Token.id == bindparam("jti"), Token.revoked.is_(False)))
# The user ``sub`` of session ``sid``, unless the session was logged out of.
_SESSION_USER = (select(User.name, User.admin, User.created)
                 .where(User.name == bindparam("sub"),
                        ~exists().where(EndedSession.session_id == bindparam("sid"))))


def identify(hub: Hub, request: Request) -> Identity | None:
    """The caller's identity from an API token or the session cookie, or None."""
    token = _bearer(request)
    if token is not None:
        try:
            claims = hub.keyring.decode_token(token, typ="api", roles=COORDINATOR_ROLES)
        except InvalidToken as exc:
            raise Unauthorized(f"invalid API token: {exc}") from exc
        found = rows(hub.engine, _TOKEN_USER, jti=str(claims.get("jti")),
                     sub=str(claims.get("sub")))
        if not found:
            raise Unauthorized("API token revoked or unknown")
        token_id, name, admin = found[0]
        return Identity(name, admin, "token", token_id=token_id)
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    try:
        claims = hub.keyring.decode_token(cookie, typ="session", roles=COORDINATOR_ROLES)
    except InvalidToken:
        return None
    sid = str(claims.get("sid"))
    user = rows(hub.engine, _SESSION_USER, sub=str(claims.get("sub")), sid=sid)
    if not user:
        return None  # no such user (any more), or logged out of
    name, admin, created = user[0]
    if issued_before(claims, aware(created).timestamp()):
        return None  # a session of an earlier account of the same name
    return Identity(name, admin, "session", session_id=sid)


def require(hub: Hub, request: Request) -> Identity:
    ident = identify(hub, request)
    if ident is None:
        raise Unauthorized("authentication required: log in or send 'Authorization: token ...'")
    if ident.via == "session" and request.method not in ("GET", "HEAD", "OPTIONS"):
        sent = request.headers.get("x-xsrftoken") or request.headers.get("x-fedhub-xsrf")
        if sent is None or not hmac.compare_digest(sent, ident.xsrf(hub.xsrf_secret)):
            raise Forbidden("missing or wrong X-XSRFToken header for a cookie-authenticated write")
    return ident


def may_act_for(ident: Identity, user: str) -> None:
    """Raise Forbidden unless ``ident`` is ``user`` or an admin."""
    if ident.name != user and not ident.admin:
        raise Forbidden(f"{ident.name} may not act for {user}")


def require_admin(ident: Identity) -> None:
    """Raise Forbidden unless ``ident`` is an admin."""
    if not ident.admin:
        raise Forbidden(f"{ident.name} is not an admin")
