"""Authentication of a single-user Jupyter server by the edge proxy's signed assertion.

The edge proxy authenticates the browser and adds ``X-Fedhub-Assertion`` to every request
it forwards: a token signed by an edge-proxy key (see fedhub.events.signing) with claims
``typ="assertion"``, ``sub`` (the user making the request), ``prefix`` (the server's URL
prefix), ``adm``, ``exp`` and optionally ``tok`` (true when the proxy authenticated the
request with an explicit API token rather than a browser cookie). Nothing else
authenticates: no Jupyter token, password, login form or login cookie. A server reached
directly, without a valid assertion, answers 403.

Browser protections stay on: a cookie-authenticated request still needs Jupyter's XSRF
token (JupyterLab sends it) and an Origin matching the Host header, which the proxy keeps.
Only requests marked ``tok`` skip them, as Jupyter does for its own token logins.

Configuration comes from the environment set by the agent: ``FEDHUB_TRUSTED_KEYS`` (a JSON
file in ``KeyRing.as_dict()`` form) and ``FEDHUB_SERVER_PREFIX``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from jupyter_server.auth.identity import IdentityProvider, User
from tornado import web
from traitlets import default

from fedhub.events.errors import InvalidSignature, InvalidToken
from fedhub.events.signing import KeyRing, b64d

HEADER = "X-Fedhub-Assertion"
ROLES = frozenset({"edge-proxy"})
MAX_LIFETIME = 600.0  # seconds; an assertion claiming to live longer is refused
RECHECK = 1.0  # seconds between looks at the trusted keys file for changes

log = logging.getLogger(__name__)


class TrustedKeys:
    """The key ring from a JSON file, reloaded when it changed: looked at when an unknown
    kid arrives, and otherwise at most every ``RECHECK`` seconds."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.ring = KeyRing()
        self._mtime: float | None = None
        self._checked = time.monotonic()
        self.reload()

    def reload(self) -> bool:
        """Re-read the file if its mtime changed; True if it was read. Never raises."""
        if self.path is None:
            return False
        try:
            mtime = self.path.stat().st_mtime
            if mtime == self._mtime:
                return False
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("cannot read trusted keys from %s: %s", self.path, exc)
            return False
        ring = KeyRing()
        for kid, entry in doc.items() if isinstance(doc, dict) else ():
            try:
                ring.add(kid, entry["public_key"], entry["role"], entry["name"])
            except (KeyError, TypeError, ValueError, InvalidSignature) as exc:
                log.warning("ignoring trusted key %s: %s", kid, exc)
        self.ring, self._mtime = ring, mtime
        return True

    def decode(self, token: str) -> dict[str, Any]:
        """Verify an assertion; raise InvalidToken if it is not valid now."""
        kid = _peek_kid(token)
        now = time.monotonic()
        # An unknown kid may be a new proxy; and at most a second after the agent drops
        # a revoked key from the file, this server stops trusting it too.
        if (kid is not None and self.ring.get(kid) is None) or now - self._checked >= RECHECK:
            self._checked = now
            self.reload()
        claims = self.ring.decode_token(token, typ="assertion", roles=ROLES)
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp > time.time() + MAX_LIFETIME:
            raise InvalidToken("assertion without a short expiry")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise InvalidToken("assertion without a user")
        return claims


def _peek_kid(token: str) -> str | None:
    try:
        claims = json.loads(b64d(token.split(".", 1)[0]))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    kid = claims.get("kid") if isinstance(claims, dict) else None
    return kid if isinstance(kid, str) else None


def _allows_anonymous(handler: web.RequestHandler) -> bool:
    """True for the few endpoints Jupyter itself marks public (``/api``, static files)."""
    method = getattr(handler, (handler.request.method or "get").lower(), None)
    return bool(getattr(method, "__allow_unauthenticated", False))


class AssertionIdentityProvider(IdentityProvider):
    """Identifies the requesting user from the proxy's assertion, and nothing else."""

    @default("token")
    def _token_default(self) -> str:
        return ""

    @default("need_token")
    def _need_token_default(self) -> bool:
        return False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        path = os.environ.get("FEDHUB_TRUSTED_KEYS")
        self.trusted = TrustedKeys(Path(path) if path else None)
        self.prefix = os.environ.get("FEDHUB_SERVER_PREFIX")
        if path is None:
            self.log.warning("FEDHUB_TRUSTED_KEYS is not set: every request will be refused")

    @property
    def login_available(self) -> bool:
        """No login form: identity comes only from the assertion."""
        return False

    @property
    def logout_available(self) -> bool:
        """Nothing to log out of here; the hub owns the session."""
        return False

    def get_user(self, handler: web.RequestHandler) -> User | None:
        """The user named by a valid assertion.

        Returns None (anonymous) only on endpoints Jupyter marks public; otherwise raises
        HTTPError 403 instead of redirecting to a login page. Idempotent per request.
        """
        cached = getattr(handler, "_jupyter_current_user", None)
        if cached:
            return cached  # type: ignore[no-any-return]
        token = handler.request.headers.get(HEADER)
        reason = "no fedhub assertion: open this server through the hub"
        if token:
            try:
                claims = self.trusted.decode(token)
                prefix = self.prefix or handler.settings.get("base_url", "/")
                if claims.get("prefix") != prefix:
                    raise InvalidToken(f"assertion is for {claims.get('prefix')!r}, not {prefix!r}")
            except InvalidToken as exc:
                reason = f"invalid fedhub assertion: {exc}"
            else:
                if claims.get("tok") is True:
                    # Explicit API token at the proxy: no browser, no XSRF or Origin checks.
                    setattr(handler, "_token_authenticated", True)  # noqa: B010
                name = claims["sub"]
                return User(username=name, name=name, display_name=name)
        if _allows_anonymous(handler):
            return None
        self.log.warning("refusing %s %s: %s", handler.request.method, handler.request.path,
                         reason)
        raise web.HTTPError(403, reason)

    def get_handlers(self) -> list[tuple[str, object]]:
        """No login or logout pages."""
        return []
