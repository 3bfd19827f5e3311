"""The SSH side of the tunnels: who may connect, and which remote forwards they hold.

A site agent connects with username = its site name and its agent key. The key must be
in the proxy's key ring (built from the log by ``fedhub.events.enroll``) as role
``site-agent`` for exactly that site; nothing else authenticates (no passwords, no
keyboard-interactive, no host-based, no certificates). An authenticated agent may do one
thing: ask for remote forwards named after its servers. Sessions (shells, exec,
subsystems), direct-tcpip, UNIX forwards and TUN/TAP are refused by asyncssh's defaults
and again explicitly here. A forward binds no socket on the proxy host:
``server_requested`` answers with a :class:`Forward`, an ``SSHListener`` that only records
``(site, server key) -> connection``; the proxy later opens channels with
``conn.open_connection(server_key, port)``, and the agent decides where they lead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncssh

from fedhub.events.signing import KeyRing, key_id
from fedhub.events.sshkeys import raw_public
from fedhub.schemas.names import InvalidName, from_subject_token, subject_token

log = logging.getLogger(__name__)
AGENT_ROLE = "site-agent"


def authorized_kid(keyring: KeyRing, site: str, key: asyncssh.SSHKey) -> str | None:
    """The key id if ``key`` is enrolled (and not revoked) as the agent key of ``site``."""
    try:
        raw = raw_public(key)
    except ValueError:
        return None
    kid = key_id(raw)
    known = keyring.get(kid)
    if known is None or known.role != AGENT_ROLE or known.name != site:
        return None
    # The key id is a truncated hash: compare the whole key, not just the id.
    return kid if known.raw == raw else None


def still_valid(keyring: KeyRing, site: str, kid: str) -> bool:
    """True while ``kid`` is still enrolled as the agent key of ``site``."""
    known = keyring.get(kid)
    return known is not None and known.role == AGENT_ROLE and known.name == site


def valid_forward_name(name: str) -> bool:
    """True for ``<user-token>.<server-token>`` in canonical subject-token form."""
    parts = name.split(".")
    if len(parts) != 2 or not all(parts):
        return False
    try:
        return all(subject_token(from_subject_token(p)) == p for p in parts)
    except InvalidName:
        return False


@dataclass(eq=False)
class SiteLink:
    """One authenticated agent connection and the forwards it requested."""

    site: str
    kid: str
    conn: asyncssh.SSHServerConnection
    forwards: dict[str, int] = field(default_factory=dict)  # server key -> listen port


class Registry:
    """The live link of every site; a new connection of a site replaces the old one."""

    def __init__(self, on_forward_gone: Callable[[str, str], None]) -> None:
        self.links: dict[str, SiteLink] = {}
        self._on_forward_gone = on_forward_gone

    def attach(self, link: SiteLink) -> None:
        """Make ``link`` the site's current link; the previous one is disconnected."""
        old = self.links.get(link.site)
        self.links[link.site] = link
        if old is not None and old is not link:
            log.info("site %s connected again: closing its previous tunnel", link.site)
            self._drop_forwards(old)
            old.conn.close()
        log.info("site %s connected its tunnel (key %s)", link.site, link.kid)

    def detach(self, link: SiteLink) -> None:
        """Forget ``link`` (connection lost); a newer link of the site stays."""
        self._drop_forwards(link)
        if self.links.get(link.site) is link:
            del self.links[link.site]
            log.info("site %s's tunnel is gone", link.site)

    def add_forward(self, link: SiteLink, key: str, port: int) -> bool:
        """Record a forward of ``link``; False if ``link`` is no longer the site's link."""
        if self.links.get(link.site) is not link:
            return False
        link.forwards[key] = port
        return True

    def remove_forward(self, link: SiteLink, key: str, port: int) -> None:
        """Forget one forward (the agent cancelled it or the connection closed)."""
        if link.forwards.get(key) == port:
            del link.forwards[key]
            self._on_forward_gone(link.site, key)

    def lookup(self, site: str, key: str) -> tuple[SiteLink, int] | None:
        """The site's current link and the forward's port, or None if unreachable."""
        link = self.links.get(site)
        if link is None:
            return None
        port = link.forwards.get(key)
        return None if port is None else (link, port)

    def revalidate(self, keyring: KeyRing) -> None:
        """Disconnect every link whose key was revoked since it authenticated."""
        for link in list(self.links.values()):
            if not still_valid(keyring, link.site, link.kid):
                log.warning("closing the tunnel of site %s: its key %s is no longer enrolled",
                            link.site, link.kid)
                self.detach(link)
                link.conn.close()

    def _drop_forwards(self, link: SiteLink) -> None:
        for key, port in list(link.forwards.items()):
            self.remove_forward(link, key, port)


class Forward(asyncssh.SSHListener):
    """A remote forward that binds nothing: closing it only forgets the name."""

    def __init__(self, registry: Registry, link: SiteLink, key: str, port: int) -> None:
        super().__init__()
        self._registry, self._link, self._key, self._port = registry, link, key, port

    def get_port(self) -> int:
        """The port the agent asked for (part of the channel address, not a socket)."""
        return self._port

    def close(self) -> None:
        """Forget this forward (asyncssh calls it on cancel-tcpip-forward)."""
        self._registry.remove_forward(self._link, self._key, self._port)

    async def wait_closed(self) -> None:
        """Nothing to wait for: no socket was bound."""


class AgentServer(asyncssh.SSHServer):
    """One incoming agent connection: public-key auth, then remote forwards only."""

    def __init__(self, registry: Registry, keyring: KeyRing) -> None:
        self._registry = registry
        self._keyring = keyring
        self._conn: asyncssh.SSHServerConnection | None = None
        self._accepted: tuple[str, str] | None = None  # (site, kid) of the last accepted key
        self._link: SiteLink | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if self._link is not None:
            self._registry.detach(self._link)
            self._link = None

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        kid = authorized_kid(self._keyring, username, key)
        if kid is None:
            log.info("refusing a tunnel for site %r: key not enrolled for it", username)
            return False
        self._accepted = (username, kid)
        return True

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False

    def auth_completed(self) -> None:
        assert self._conn is not None
        username = self._conn.get_extra_info("username")
        if self._accepted is None or self._accepted[0] != username:
            self._conn.close()  # cannot happen with public-key auth only; be sure anyway
            return
        site, kid = self._accepted
        self._link = SiteLink(site, kid, self._conn)
        self._registry.attach(self._link)

    def server_requested(self, listen_host: str, listen_port: int) -> Forward | bool:
        link = self._link
        if link is None or not valid_forward_name(listen_host) or not 0 < listen_port < 65536:
            log.info("refusing a forward %r:%d", listen_host, listen_port)
            return False
        if not self._registry.add_forward(link, listen_host, listen_port):
            return False
        log.debug("site %s forwards %s", link.site, listen_host)
        return Forward(self._registry, link, listen_host, listen_port)

    def session_requested(self) -> bool:
        return False

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> bool:
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False
