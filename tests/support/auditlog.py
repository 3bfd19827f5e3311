"""A varied event log for checking that ``fedhub audit``'s filters stay exact.

It holds what makes subject filtering easy to get wrong: users and sites whose names are
prefixes of each other, names that need escaping in subjects, named and default servers,
commands and sites' raw reports (some claiming another user or site), keys published
late, a revoked key, a key never published and an unsigned event. Times follow the log
order one minute apart, from ``T0``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fedhub.events.envelope import Envelope, new_event
from fedhub.events.signing import SigningKey
from fedhub.schemas import events as ev
from fedhub.schemas import subjects
from fedhub.schemas.events import Payload
from fedhub.schemas.names import server_prefix

T0 = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
USERS = ["al", "alice", "alice2", "élodie", "a.b_c@x"]
SITES = ["hpc", "hpc2", "cloud"]


class _Log:
    def __init__(self) -> None:
        self.events: list[Envelope] = []

    def add(self, subject: str, payload: Payload, key: SigningKey | None,
            actor: str = "coordinator") -> None:
        env = new_event(subject, payload, actor=actor, signer=None)
        env = env.model_copy(update={"time": T0 + timedelta(minutes=len(self.events))})
        if key is not None:
            env = env.model_copy(update={"kid": key.kid})
            env = env.model_copy(update={"signature": key.sign(env.signing_bytes())})
        self.events.append(env)

    def publish(self, key: SigningKey, role: str, name: str, signer: SigningKey) -> None:
        self.add(subjects.key(key.kid), ev.KeyPublished(
            kid=key.kid, public_key=key.public_b64, role=role, name=name), signer)


def varied_log() -> list[Envelope]:
    """The events, in the order they are to be appended."""
    coord, late, retired, rogue = (SigningKey.generate() for _ in range(4))
    agents = {site: SigningKey.generate() for site in SITES}
    log = _Log()
    log.add(subjects.user("al"), ev.UserCreated(name="al"), late)  # before its key: unverified
    log.publish(coord, "coordinator", "coordinator", coord)
    for site in SITES:
        log.add(subjects.site(site), ev.SiteRegistered(name=site, backend="local"), coord)
        log.publish(agents[site], "site-agent", site, coord)
    log.publish(retired, "coordinator", "old-coordinator", retired)
    for i, user in enumerate(USERS):
        site = SITES[i % len(SITES)]
        server = "gpu" if i % 2 else ""
        signer = retired if i == 1 else coord
        log.add(subjects.user(user), ev.UserCreated(name=user, admin=i == 0), signer)
        log.add(subjects.login(user), ev.UserLoggedIn(name=user, session_id=f"s{i}",
                                                       remote_addr="10.0.0.1"), coord)
        log.add(subjects.token(user), ev.TokenIssued(user=user, token_id=f"t{i}"), coord)
        log.add(subjects.server(user, server), ev.ServerRequested(
            user=user, server=server, site=site, spawn_id=f"p{i}"), coord)
        log.add(subjects.command(site, "start"), ev.StartServer(
            user=user, server=server, spawn_id=f"p{i}", prefix=server_prefix(user, server)),
            coord)
        log.add(subjects.site_server(site, user, server), ev.ServerStarted(
            user=user, server=server, site=site, spawn_id=f"p{i}",
            target="http://10.0.0.2:8888"), agents[site], actor=f"site:{site}")
        log.add(subjects.server(user, server), ev.ServerReady(
            user=user, server=server, site=site, spawn_id=f"p{i}", url="/"), coord)
        log.add(subjects.route(user, server), ev.RouteAdded(
            prefix=server_prefix(user, server), target="http://10.0.0.2:8888", user=user,
            server=server, site=site), coord)
    log.add(subjects.key(retired.kid), ev.KeyRevoked(kid=retired.kid, reason="retired"), coord)
    log.add(subjects.user("alice"), ev.UserUpdated(name="alice", admin=True), retired)
    log.publish(late, "coordinator", "late", late)
    log.add(subjects.login("al"), ev.UserLoginFailed(name="al", reason="wrong password"), late)
    log.add(subjects.login("alice2"), ev.UserLoggedOut(name="alice2", session_id="s2"), None)
    log.add(subjects.token("alice"), ev.TokenRevoked(user="alice", token_id="t1"), rogue)
    # Sites' raw reports claiming someone else: the audit must show what they claimed.
    log.add(subjects.site_server("hpc2", "al", ""), ev.ServerStopped(
        user="alice", server="", site="hpc", spawn_id="p1"), agents["hpc2"], actor="site:hpc2")
    log.add(subjects.site_agent("cloud"), ev.SiteAgentStarted(
        site="cloud", backend="local", agent_id="a1"), agents["cloud"], actor="site:cloud")
    log.add(subjects.site("cloud"), ev.SiteAgentStarted(
        site="cloud", backend="local", agent_id="a1"), coord, actor="site:cloud")
    log.add(subjects.security("hpc2"), ev.SiteEventRejected(
        site="hpc2", subject="fedhub.site.hpc2.server.al._", seq=1, event_type="ServerStopped",
        reason="claims site 'hpc'"), coord)
    log.add(subjects.site("hpc"), ev.SiteUnreachable(site="hpc"), coord)
    log.add(subjects.command("hpc", "stop"), ev.StopServer(
        user="al", server="", spawn_id="p0"), coord)
    log.add(subjects.server("al", ""), ev.ServerFailed(user="al", reason="lost"), coord)
    log.add(subjects.route("al", ""), ev.RouteRemoved(prefix="/user/al/", user="al"), coord)
    log.add(subjects.proxy("edge"), ev.EdgeProxyStarted(name="edge", kid=coord.kid), coord)
    return log.events
