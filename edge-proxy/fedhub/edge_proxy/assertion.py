"""Signed identity assertions handed to user servers in ``X-Fedhub-Assertion``.

An assertion lives 60 s and is reused for 30 s per (user, prefix, admin): signing on every
request would cost more than forwarding it.
"""

from __future__ import annotations

import time

from fedhub.events.signing import SigningKey

ASSERTION_HEADER = "X-Fedhub-Assertion"
LIFETIME = 60
REUSE = 30
_CACHE_LIMIT = 10_000


class AssertionCache:
    """Issues assertions signed by the proxy's key, reusing recent ones."""

    def __init__(self, key: SigningKey, lifetime: int = LIFETIME, reuse: int = REUSE) -> None:
        self._key = key
        self._lifetime = lifetime
        self._reuse = reuse
        self._cache: dict[tuple[str, str, bool, bool], tuple[float, str]] = {}

    def get(self, user: str, prefix: str, admin: bool, now: float | None = None,
            token_auth: bool = False) -> str:
        """A valid assertion that ``user`` (admin or not) may use the server at ``prefix``.

        ``token_auth`` marks requests authenticated by an explicit API token (no browser):
        the server then skips its XSRF and Origin checks, as Jupyter does for its tokens.
        Always valid for at least ``lifetime - reuse`` seconds after this call.
        """
        now = time.time() if now is None else now
        key = (user, prefix, admin, token_auth)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        token = self._key.token(
            {"typ": "assertion", "sub": user, "prefix": prefix, "adm": admin,
             "exp": int(now) + self._lifetime, **({"tok": True} if token_auth else {})}
        )
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = (now + self._reuse, token)
        return token
