"""The proxy's side of tunnels without a network: keys, auth decisions, forwards, targets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from fedhub.edge_proxy.state import ProxyState
from fedhub.edge_proxy.tunnel_bridge import Bridge
from fedhub.edge_proxy.tunnel_server import (
    AgentServer,
    Forward,
    Registry,
    SiteLink,
    authorized_kid,
    valid_forward_name,
)
from fedhub.edge_proxy.tunnel_target import TunnelTarget, is_tunnel, parse_target
from fedhub.events.envelope import new_event
from fedhub.events.signing import SigningKey, key_id
from fedhub.events.sshkeys import kid_of, public_b64, raw_public, ssh_private_key, ssh_public_key
from fedhub.schemas import subjects
from fedhub.schemas.events import KeyRevoked
from fedhub.schemas.names import server_key, subject_token
from tests.unit.edge_proxy.factories import World, enrolled_key_event, fold, key_event


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def state(world: World) -> ProxyState:
    return fold(world.keys())


def ssh(key: SigningKey) -> asyncssh.SSHKey:
    return ssh_public_key(key.public_b64)


# -- key conversion -----------------------------------------------------------------------

def test_key_conversion_round_trip() -> None:
    key = SigningKey.generate()
    private = ssh_private_key(key)
    public = ssh_public_key(key.public_b64)
    assert private.get_algorithm() == public.get_algorithm() == "ssh-ed25519"
    assert private.public_data == public.public_data
    assert public_b64(public) == key.public_b64
    assert kid_of(public) == kid_of(private) == key.kid == key_id(raw_public(public))
    # what the private SSH key signs, the published public key verifies
    assert public.verify(b"data", private.sign(b"data", b"ssh-ed25519"))


def test_openssh_text_form_is_the_same_key() -> None:
    key = SigningKey.generate()
    text = ssh_private_key(key).export_public_key("openssh").decode()
    assert public_b64(asyncssh.import_public_key(text)) == key.public_b64


def test_bad_public_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        ssh_public_key("AAAA")
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    with pytest.raises(ValueError):
        kid_of(rsa)


# -- who may connect ----------------------------------------------------------------------

def test_the_enrolled_key_of_the_site_is_accepted(world: World, state: ProxyState) -> None:
    assert authorized_kid(state.keyring, "site1", ssh(world.agent)) == world.agent.kid


def test_another_sites_key_is_refused(world: World, state: ProxyState) -> None:
    other = SigningKey.generate()
    fold([enrolled_key_event(world.coordinator, other, "site2")], state)
    assert authorized_kid(state.keyring, "site2", ssh(other)) == other.kid
    assert authorized_kid(state.keyring, "site1", ssh(other)) is None
    assert authorized_kid(state.keyring, "site2", ssh(world.agent)) is None


def test_unenrolled_and_self_enrolled_keys_are_refused(world: World, state: ProxyState) -> None:
    stranger = SigningKey.generate()
    assert authorized_kid(state.keyring, "site1", ssh(stranger)) is None
    # a site cannot vouch for itself: a self-signed site-agent key is not trusted
    fold([key_event(stranger, "site-agent", "site1")], state)
    assert authorized_kid(state.keyring, "site1", ssh(stranger)) is None


def test_hub_component_keys_cannot_open_tunnels(world: World, state: ProxyState) -> None:
    assert authorized_kid(state.keyring, "hub", ssh(world.coordinator)) is None


def test_a_revoked_key_is_refused(world: World, state: ProxyState) -> None:
    revoke = new_event(subjects.key(world.agent.kid), KeyRevoked(kid=world.agent.kid),
                       actor="coordinator", signer=world.coordinator)
    forged = new_event(subjects.key(world.agent.kid), KeyRevoked(kid=world.agent.kid),
                       actor="site", signer=world.agent)
    fold([forged], state)  # only a coordinator may revoke
    assert authorized_kid(state.keyring, "site1", ssh(world.agent)) == world.agent.kid
    fold([revoke], state)
    assert authorized_kid(state.keyring, "site1", ssh(world.agent)) is None


# -- the SSH server object ----------------------------------------------------------------

class FakeConn:
    def __init__(self, username: str = "site1") -> None:
        self.username = username
        self.closed = False

    def get_extra_info(self, name: str) -> Any:
        return self.username if name == "username" else None

    def close(self) -> None:
        self.closed = True


def authenticated(registry: Registry, state: ProxyState, key: SigningKey,
                  site: str = "site1") -> tuple[AgentServer, FakeConn]:
    server = AgentServer(registry, state.keyring)
    conn = FakeConn(site)
    server.connection_made(conn)  # type: ignore[arg-type]
    assert server.begin_auth(site) is True
    assert server.validate_public_key(site, ssh(key)) is True
    server.auth_completed()
    return server, conn


def test_only_public_key_auth_and_only_remote_forwards(world: World, state: ProxyState) -> None:
    registry = Registry(lambda site, key: None)
    server = AgentServer(registry, state.keyring)
    server.connection_made(FakeConn())  # type: ignore[arg-type]
    assert not server.password_auth_supported() and not server.kbdint_auth_supported()
    assert not server.host_based_auth_supported() and server.public_key_auth_supported()
    assert server.server_requested("alice._", 1) is False  # not authenticated yet
    server, _ = authenticated(registry, state, world.agent)
    assert server.session_requested() is False
    assert server.connection_requested("127.0.0.1", 22, "x", 1) is False
    assert server.unix_connection_requested("/run/x") is False
    assert server.unix_server_requested("/tmp/x") is False
    assert server.server_requested("127.0.0.1", 8080) is False  # not a server key
    assert server.server_requested("", 0) is False
    assert server.server_requested("alice._", 0) is False
    forward = server.server_requested("alice._", 1)
    assert isinstance(forward, Forward) and forward.get_port() == 1
    assert registry.lookup("site1", "alice._") is not None
    forward.close()
    assert registry.lookup("site1", "alice._") is None


def test_a_new_connection_replaces_the_old_ones_forwards(world: World,
                                                         state: ProxyState) -> None:
    gone: list[tuple[str, str]] = []
    registry = Registry(lambda site, key: gone.append((site, key)))
    first, first_conn = authenticated(registry, state, world.agent)
    assert isinstance(first.server_requested("alice._", 1), Forward)
    second, second_conn = authenticated(registry, state, world.agent)
    assert first_conn.closed and not second_conn.closed
    assert registry.lookup("site1", "alice._") is None and gone == [("site1", "alice._")]
    assert first.server_requested("bob._", 1) is False  # the old connection is stale
    assert isinstance(second.server_requested("alice._", 1), Forward)
    first.connection_lost(None)  # the old connection's end must not drop the new link
    found = registry.lookup("site1", "alice._")
    assert found is not None and found[0].conn is second_conn  # type: ignore[comparison-overlap]


def test_revalidate_disconnects_revoked_links(world: World, state: ProxyState) -> None:
    registry = Registry(lambda site, key: None)
    server, conn = authenticated(registry, state, world.agent)
    server.server_requested("alice._", 1)
    registry.revalidate(state.keyring)
    assert not conn.closed
    fold([new_event(subjects.key(world.agent.kid), KeyRevoked(kid=world.agent.kid),
                    actor="coordinator", signer=world.coordinator)], state)
    registry.revalidate(state.keyring)
    assert conn.closed and registry.lookup("site1", "alice._") is None
    assert not registry.links


def test_forward_names_are_canonical_server_keys() -> None:
    assert valid_forward_name(server_key("alice", ""))
    assert valid_forward_name(server_key("ünï@x.org", "lab-1"))
    for bad in ("alice", "alice._.x", "Alice._", "alice.", "_61lice._", "127.0.0.1", ""):
        assert not valid_forward_name(bad), bad


def test_site_link_forwards_are_per_connection() -> None:
    registry = Registry(lambda site, key: None)
    link = SiteLink("site1", "kid", FakeConn())  # type: ignore[arg-type]
    assert registry.add_forward(link, "alice._", 1) is False  # not attached
    registry.attach(link)
    assert registry.add_forward(link, "alice._", 1) is True
    registry.remove_forward(link, "alice._", 2)  # another port: not this forward
    assert registry.lookup("site1", "alice._") == (link, 1)


# -- targets ------------------------------------------------------------------------------

def test_tunnel_targets_parse() -> None:
    site = "hpc@uni.edu"
    target = f"tunnel://{subject_token(site)}/{server_key('ünï', 'lab')}"
    assert is_tunnel(target) and not is_tunnel("http://10.0.0.1:8888")
    assert parse_target(target) == TunnelTarget(site, server_key("ünï", "lab"))
    assert parse_target("tunnel://site1/alice._/") == TunnelTarget("site1", "alice._")


@pytest.mark.parametrize("bad", [
    "http://site1/alice._", "tunnel://site1", "tunnel://site1/", "tunnel:///alice._",
    "tunnel://_/alice._", "tunnel://site1/alice", "tunnel://site1/alice._/x",
    "tunnel://site1/al!ce._", "tunnel://Site1/alice._", "tunnel://_73ite1/alice._",
])
def test_malformed_tunnel_targets_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_target(bad)


def test_routes_accept_tunnels_of_their_own_site_only(world: World, state: ProxyState) -> None:
    fold([world.route("alice", "tunnel://site1/alice._", site="site1"),
          world.route("bob", "tunnel://site2/bob._", site="site1")], state)
    route = state.routes.match("/user/alice/lab")
    assert route is not None and route.target == "tunnel://site1/alice._"
    assert state.routes.match("/user/bob/") is None


# -- the bridge's own answer --------------------------------------------------------------

def _gone() -> tuple[asyncssh.SSHServerConnection, int]:
    raise LookupError("no link")


async def _ask(bridge: Bridge, *parts: bytes, eof: bool = False) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(bridge.path))
    for part in parts:
        await asyncio.sleep(0.05)  # the channel has failed by now: the answer waits
        writer.write(part)
    if eof:
        writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    return answer


async def test_a_bridge_without_its_tunnel_answers_the_request_in_the_form_it_asks_for(
    tmp_path: Path
) -> None:
    bridge = Bridge(tmp_path / "b.sock", "alice._ at site site1", "site1", "alice._", _gone,
                    1.0)
    await bridge.start()
    try:
        page = await _ask(bridge, b"GET /user/alice/ HTTP/1.1\r\nHost: h\r\n",
                          b"Accept: text/html\r\n", b"\r\n")
        head, _, body = page.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"Content-Type: text/html" in head and b"Connection: close" in head
        assert b"the site site1 is unreachable (no tunnel from its agent)" in body
        answer = await _ask(bridge, b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
            "status": 503, "message": "the site site1 is unreachable (no tunnel from its agent)"}
        # No head before the end of its input: answered all the same.
        assert b" 503 " in await _ask(bridge, b"\x00garbage", eof=True)
    finally:
        await bridge.close()
