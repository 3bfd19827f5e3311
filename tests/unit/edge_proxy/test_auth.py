"""Authentication from the log's keys, users and revocations, without the coordinator."""

from __future__ import annotations

import base64
import time

import pytest

from fedhub.edge_proxy.auth import (
    Authenticator,
    authorization_token,
    session_cookie,
    without_session_cookie,
)
from fedhub.edge_proxy.state import ProxyState
from fedhub.events.errors import InvalidToken
from fedhub.events.signing import SigningKey
from fedhub.schemas import subjects
from fedhub.schemas.events import KeyRevoked
from tests.unit.edge_proxy.factories import World, fold, key_event


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def state(world: World) -> ProxyState:
    return fold([*world.keys(), world.user("alice"), world.user("root", admin=True)])


@pytest.fixture
def auth(state: ProxyState) -> Authenticator:
    return Authenticator(state)


def test_valid_session(world: World, auth: Authenticator) -> None:
    identity = auth.identify(world.session("alice"), "session")
    assert (identity.user, identity.admin, identity.via) == ("alice", False, "session")


def test_admin_flag_comes_from_state_not_token(
    world: World, auth: Authenticator, state: ProxyState
) -> None:
    assert auth.identify(world.session("alice", adm=True), "session").admin is False
    fold([world.user_updated("root", False)], state)
    assert auth.identify(world.session("root", adm=True), "session").admin is False


def test_expired_session(world: World, auth: Authenticator) -> None:
    with pytest.raises(InvalidToken, match="expired"):
        auth.identify(world.session("alice", ttl=-1), "session")


def test_cached_session_expires(world: World, auth: Authenticator) -> None:
    token = world.session("alice", ttl=10)
    auth.identify(token, "session")
    with pytest.raises(InvalidToken, match="expired"):
        auth.identify(token, "session", now=time.time() + 20)


def test_revoked_session(world: World, auth: Authenticator, state: ProxyState) -> None:
    token = world.session("alice", sid="s-9")
    auth.identify(token, "session")  # cached now: revocation must still apply
    fold([world.logout("alice", "s-9")], state)
    with pytest.raises(InvalidToken, match="session ended"):
        auth.identify(token, "session")


def test_api_token_and_revocation(world: World, auth: Authenticator, state: ProxyState) -> None:
    token = world.api_token("alice", jti="t-1")
    assert auth.identify(token, "api").via == "api"
    fold([world.revoke("alice", "t-1")], state)
    with pytest.raises(InvalidToken, match="revoked"):
        auth.identify(token, "api")


def test_session_is_not_an_api_token(world: World, auth: Authenticator) -> None:
    with pytest.raises(InvalidToken):
        auth.identify(world.session("alice"), "api")


def test_deleted_and_unknown_users(world: World, auth: Authenticator, state: ProxyState) -> None:
    token = world.session("alice")
    fold([world.user_deleted("alice")], state)
    with pytest.raises(InvalidToken, match="unknown user"):
        auth.identify(token, "session")
    with pytest.raises(InvalidToken, match="unknown user"):
        auth.identify(world.session("nobody"), "session")


def test_token_predating_a_recreated_account(
    world: World, auth: Authenticator, state: ProxyState
) -> None:
    old = world.session("alice", iat=int(time.time()) - 3600)
    fold([world.user_deleted("alice"), world.user("alice")], state)
    with pytest.raises(InvalidToken, match="predates"):
        auth.identify(old, "session")
    # the coordinator refuses a session that cannot show when it was issued; so does the proxy
    with pytest.raises(InvalidToken, match="predates"):
        auth.identify(world.session("alice", iat=None), "session")
    auth.identify(world.session("alice", iat=int(time.time()) - 2), "session")  # clock slack


def test_token_signed_by_a_non_coordinator_key(world: World, auth: Authenticator) -> None:
    with pytest.raises(InvalidToken, match="may not sign"):
        auth.identify(world.session("alice", signer=world.agent), "session")
    with pytest.raises(InvalidToken):
        auth.identify("garbage", "session")


def test_cookie_and_header_parsing() -> None:
    header = 'a=1; fedhub-session=abc.def; _xsrf=2|x'
    assert session_cookie(header) == "abc.def"
    assert session_cookie("a=1") is None
    assert without_session_cookie(header) == "a=1; _xsrf=2|x"
    assert without_session_cookie("fedhub-session=x") == ""
    assert authorization_token("token abc") == "abc"
    assert authorization_token("Bearer abc") == "abc"
    assert authorization_token("Basic abc") is None


def test_a_cached_session_dies_with_its_coordinators_key(
        world: World, auth: Authenticator, state: ProxyState) -> None:
    token = world.session("alice")
    assert auth.identify(token, "session").user == "alice"  # now cached
    second = SigningKey.generate()  # another coordinator revokes the first one's key
    fold([key_event(second, "coordinator", "hub2"),
          world.signed(subjects.key(world.coordinator.kid),
                       KeyRevoked(kid=world.coordinator.kid), signer=second)], state)
    with pytest.raises(InvalidToken, match="unknown signing key"):
        auth.identify(token, "session")


@pytest.mark.parametrize("typ", ["session", "api"])
def test_a_deeply_nested_token_is_refused_not_a_crash(auth: Authenticator, typ: str) -> None:
    token = base64.urlsafe_b64encode(b"[" * 100_000).decode().rstrip("=") + ".x"
    with pytest.raises(InvalidToken, match="malformed"):
        auth.identify(token, typ)
