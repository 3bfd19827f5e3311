"""Who is asking: session cookies and API tokens, verified locally with keys from the log.

Verified token claims are cached (signature checks cost more than the rest of a request);
revocations, user deletion and the admin flag are checked against the current state on
every request, so a logout or revocation in the log takes effect immediately.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fedhub.edge_proxy.state import COORDINATOR, ProxyState
from fedhub.events.errors import InvalidToken
from fedhub.events.signing import issued_before

SESSION_COOKIE = "fedhub-session"
_CACHE_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated user; ``admin`` comes from the users state, not the token."""

    user: str
    admin: bool
    via: str  # "session" or "api"


class Authenticator:
    """Turns a session cookie or API token into an Identity, or refuses."""

    def __init__(self, state: ProxyState) -> None:
        self._state = state
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}

    def identify(self, token: str, typ: str, now: float | None = None) -> Identity:
        """The identity behind ``token`` of kind ``typ`` ("session" or "api").

        Raises InvalidToken if the token is malformed, not signed by a coordinator key,
        expired, revoked, or names a user that does not exist (any more).
        """
        now = time.time() if now is None else now
        claims = self._claims(token, typ, now)
        state = self._state
        if typ == "session":
            sid = claims.get("sid")
            if not isinstance(sid, str) or sid in state.revoked_sessions:
                raise InvalidToken("session ended")
        else:
            jti = claims.get("jti")
            if not isinstance(jti, str) or jti in state.revoked_tokens:
                raise InvalidToken("token revoked")
        sub = claims.get("sub")
        user = state.users.get(sub) if isinstance(sub, str) else None
        if user is None:
            raise InvalidToken("unknown user")
        if issued_before(claims, user.created.timestamp()):
            raise InvalidToken("token predates the account")
        return Identity(user.name, user.admin, typ)

    def _claims(self, token: str, typ: str, now: float) -> dict[str, Any]:
        key = (typ, token)
        claims = self._cache.get(key)
        if claims is None:
            claims = self._state.keyring.decode_token(token, typ=typ, roles=COORDINATOR, now=now)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = claims
        else:
            if self._state.keyring.get(claims["kid"]) is None:  # revoked since it was cached
                del self._cache[key]
                raise InvalidToken(f"unknown signing key {claims['kid']}")
            exp = claims.get("exp")
            if exp is not None and exp < now:
                del self._cache[key]
                raise InvalidToken("token expired")
        return claims


def session_cookie(cookie_header: str) -> str | None:
    """The value of the ``fedhub-session`` cookie in a Cookie header, or None."""
    if SESSION_COOKIE not in cookie_header:
        return None
    for part in cookie_header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == SESSION_COOKIE:
            return value.strip('"') or None
    return None


def without_session_cookie(cookie_header: str) -> str:
    """The Cookie header without ``fedhub-session`` ("" if nothing else remains)."""
    kept = [
        part.strip()
        for part in cookie_header.split(";")
        if part.strip() and part.strip().partition("=")[0] != SESSION_COOKIE
    ]
    return "; ".join(kept)


def authorization_token(header: str) -> str | None:
    """The token of an ``Authorization: token <t>`` or ``bearer <t>`` header, or None."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    return None
