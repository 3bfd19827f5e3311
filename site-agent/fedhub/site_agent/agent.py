"""The site agent: turns commands from the log into servers and servers into events.

It only connects out (to NATS, through the EventStore). Everything it knows about its
servers is also in the log, so a restarted agent re-adopts them (see adoption.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from contextlib import aclosing
from typing import Any

from fedhub.events.envelope import Envelope
from fedhub.events.errors import EventLogError, StoreUnavailable
from fedhub.events.lanes import Lanes
from fedhub.events.signing import SigningKey
from fedhub.events.store import Delivery, EventStore
from fedhub.events.supervise import keep_running
from fedhub.schemas import subjects
from fedhub.schemas.events import (
    ServerFailed,
    ServerQueued,
    ServerStarted,
    ServerStopped,
    ServerSubmitted,
    SiteAgentStarted,
    SiteHeartbeat,
    StartServer,
    StopServer,
)
from fedhub.schemas.names import server_key
from fedhub.site_agent.adoption import find_orphans
from fedhub.site_agent.backends.base import Backend, Checkpoint, JobReport, JobStatus, Phase
from fedhub.site_agent.commands import AckOnce, spec_from_command
from fedhub.site_agent.errors import BackendError, InvalidCommand
from fedhub.site_agent.heartbeat import beat_forever
from fedhub.site_agent.keys import KeyBook
from fedhub.site_agent.publisher import Publisher
from fedhub.site_agent.servers import ServerRecord, Stage
from fedhub.site_agent.settings import SiteAgentSettings
from fedhub.site_agent.tunnel import TunnelManager

log = logging.getLogger(__name__)
_ENDED = frozenset({"ServerStopped", "ServerFailed"})
CLEANUP_EVERY = 30  # monitor rounds between orphan cleanups
RETRY_COMMAND_AFTER = 5.0  # seconds before a command the log failed during comes again
_BEFORE_AGENT = frozenset({"ServerRequested", "ServerAccepted"})


def supersedes(newer: str, older: str) -> bool:
    """True if spawn ``newer`` was requested after spawn ``older``.

    Spawn ids are UUIDv7 (time first, fixed width), so they order as strings; the hub asks
    for a new spawn of a server only once it holds the previous one ended.
    """
    return newer > older


class SiteAgent:
    """One site's agent: ``await start()``, then ``await close()``."""

    def __init__(self, settings: SiteAgentSettings, store: EventStore, backend: Backend,
                 key: SigningKey | None = None) -> None:
        self.settings = settings
        self.site = settings.site
        self.store = store
        self.backend = backend
        self.key = key or SigningKey.load_or_create(settings.key_path)
        self.publisher = Publisher(store, self.key, self.site)
        self.keys = KeyBook(settings.trusted_keys_path)
        self.tunnels = (TunnelManager(self.site, self.key, store, self.keys,
                                      keepalive=settings.tunnel_keepalive)
                        if settings.tunnel else None)
        self.servers: dict[str, ServerRecord] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._lanes = Lanes()

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Announce the agent, re-adopt its servers, then follow keys and commands.

        Raises StoreUnavailable when the log cannot be reached. Call once.
        """
        if await self.store.last(subjects.key(self.key.kid)) is None:
            log.warning("this agent's key %s is not enrolled: the hub will refuse its reports "
                        "until an operator runs `fedhub site add %s` and the agent uses that "
                        "bundle", self.key.kid, self.site)
        await self.publisher.publish(subjects.site_agent(self.site), SiteAgentStarted(
            site=self.site, backend=self.backend.name, agent_id=self.settings.agent_id,
            capacity=self.backend.capacity(),
            options=[o.model_dump(mode="json") for o in self.backend.options()]))
        await self.keys.read(self.store)  # commands are checked against these
        await self.adopt()
        self._loops = [
            self._supervised("keys", lambda: self.keys.follow(self.store)),
            self._supervised("commands", self._consume),
            self._supervised("monitor", self._monitor_forever),
            self._supervised("heartbeat", lambda: beat_forever(
                self.store, self.settings.heartbeat_interval, self.heartbeat)),
        ]
        if self.tunnels is not None:  # one outbound SSH tunnel to every edge proxy
            self._loops.append(self._supervised("tunnels", self.tunnels.run))
        log.info("site agent %s for site %r started (key %s)", self.settings.agent_id,
                 self.site, self.key.kid)

    async def close(self) -> None:
        """Stop the loops; stop the servers too if ``stop_servers_on_exit``, otherwise
        leave them running for the next agent to re-adopt. Starts still in progress are
        cancelled and reported failed. Idempotent."""
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        await self._lanes.close()
        jobs: list[Awaitable[None]] = []
        for rec in list(self.servers.values()):
            if self.settings.stop_servers_on_exit:
                jobs.append(self._stop(rec, "site agent shut down", rec.spec.spawn_id, "shutdown"))
            elif rec.starting:
                jobs.append(self._stop(rec, "site agent shut down while the server was starting",
                                       rec.spec.spawn_id, "shutdown"))
        await asyncio.gather(*jobs, return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.tunnels is not None:
            await self.tunnels.close()
        release = getattr(self.backend, "close", None)  # e.g. SSH connections
        if release is not None:
            await release()

    def subject(self, user: str, server: str) -> str:
        """Where this site reports about one server (the only subjects it may write)."""
        return subjects.site_server(self.site, user, server)

    def heartbeat(self) -> SiteHeartbeat:
        """The heartbeat this agent sends now."""
        return SiteHeartbeat(site=self.site, agent_id=self.settings.agent_id,
                             servers=len(self.servers), capacity=self.backend.capacity())

    def _supervised(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]
                    ) -> asyncio.Task[None]:
        return asyncio.create_task(keep_running(name, run), name=f"site-agent-{name}")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- commands --------------------------------------------------------------------------

    async def _consume(self) -> None:
        durable = subjects.command_consumer(self.site)
        # The lanes outlive this loop: when it fails and restarts, commands being handled
        # finish instead of being cancelled and redelivered only after the ack wait.
        async for delivery in self.store.consume(subjects.commands(self.site), durable=durable):
            data = delivery.event.data
            await self._lanes.submit(f"{data.get('user')}/{data.get('server')}", delivery.seq,
                                     functools.partial(self._handle_logged, delivery))

    async def _handle_logged(self, delivery: Delivery) -> None:
        try:
            await self.handle(delivery)
        except StoreUnavailable as exc:  # the command is not lost: it comes back later
            log.warning("command %s postponed %.0f s: the log is unavailable (%s)",
                        delivery.event.id, RETRY_COMMAND_AFTER, exc)
            await AckOnce(delivery).nak(RETRY_COMMAND_AFTER)
        except Exception:
            log.exception("command %s failed", delivery.event.id)
            await AckOnce(delivery)()

    async def handle(self, delivery: Delivery) -> None:
        """Act on one command; acks it when handled (a start: once submitted or failed).

        Malformed, unknown and duplicate commands, and any not signed by a coordinator,
        are logged, acked and skipped.
        """
        env, ack = delivery.event, AckOnce(delivery)
        if not await self.keys.from_coordinator(env, self.store):
            return await ack()
        try:
            cmd = env.payload()
        except EventLogError as exc:
            log.warning("skipping malformed command %s on %s: %s", env.id, env.subject, exc)
            return await ack()
        if isinstance(cmd, StartServer):
            await self._on_start(env, cmd, ack)
        elif isinstance(cmd, StopServer):
            # In the server's lane, after any StartServer before it and before any after
            # it: a stop must never be answered "not running" while its start is still due.
            await self._on_stop(env, cmd)
            await ack()  # the log unavailable: not acked, _handle_logged hands it back
        else:
            log.warning("skipping %s on the command subject %s", env.type, env.subject)
            await ack()

    async def _on_start(self, env: Envelope, cmd: StartServer, ack: AckOnce) -> None:
        try:
            spec = spec_from_command(cmd, self.backend.options())
        except InvalidCommand as exc:
            log.warning("refusing StartServer %s: %s", env.id, exc)
            await self.publisher.publish(self.subject(cmd.user, cmd.server), ServerFailed(
                user=cmd.user, server=cmd.server, site=self.site, spawn_id=cmd.spawn_id,
                progress=100, reason=f"invalid request: {exc}",
                message=f"Spawn failed: invalid request: {exc}"), parent=env.id, purpose="failed")
            return await ack()
        rec = await self._replace_older(spec.key, spec.spawn_id, env.id)
        if rec is not None and rec.stage is Stage.STOPPING and rec.stop_task is not None:
            await asyncio.wait({rec.stop_task})  # a quick restart waits for the old stop
            rec = self.servers.get(spec.key)
        if rec is not None:
            if rec.spec.spawn_id != spec.spawn_id:
                log.warning("ignoring StartServer %s: %s already runs the newer spawn %s",
                            env.id, spec.key, rec.spec.spawn_id)
            return await ack()
        latest = await self._latest_report(spec.user, spec.server)
        if latest is not None and latest[1] not in _BEFORE_AGENT:
            reported, kind = latest
            if reported == spec.spawn_id:
                log.info("StartServer %s was already handled (%s)", env.id, kind)
                return await ack()
            if supersedes(reported, spec.spawn_id):
                log.warning("ignoring StartServer %s: a newer spawn %s of %s was handled",
                            env.id, reported, spec.key)
                return await ack()
        rec = ServerRecord(spec)
        self.servers[spec.key] = rec
        rec.task = asyncio.create_task(self._run_start(rec, self.backend.start(spec), env.id, ack))

    async def _run_start(self, rec: ServerRecord, checkpoints: AsyncGenerator[Checkpoint, None],
                         parent: str, ack: AckOnce) -> None:
        spec = rec.spec
        subject = self.subject(spec.user, spec.server)
        common: dict[str, Any] = dict(user=spec.user, server=spec.server, site=self.site,
                                      spawn_id=spec.spawn_id)
        try:
            async with aclosing(checkpoints) as steps:
                async for cp in steps:
                    rec.state, rec.job_id = dict(cp.state), cp.job_id or rec.job_id
                    if cp.phase is Phase.SUBMITTED:
                        await self.publisher.publish(subject, ServerSubmitted(
                            **common, job_id=cp.job_id, state=cp.state, progress=40,
                            message=cp.message or f"Submitted job {cp.job_id}"),
                            parent=parent, purpose="submitted")
                        await ack()
                    elif cp.phase is Phase.QUEUED:
                        await self.publisher.publish(subject, ServerQueued(
                            **common, progress=50, message=cp.message or "queued"),
                            parent=parent, purpose=f"queued:{cp.message}")
                    elif cp.phase is Phase.RUNNING:
                        rec.target, rec.stage = cp.target, Stage.RUNNING
                        target, state = cp.target, cp.state
                        if self.tunnels is not None:  # forwarded before the route exists
                            target, state = await self.tunnels.add_server(
                                spec.key, cp.target, cp.state)
                        await self.publisher.publish(subject, ServerStarted(
                            **common, target=target, state=state, progress=80,
                            # users see this: say what happened, not internal addresses
                            message=f"Jupyter server is up at site {self.site}"),
                            parent=parent, purpose="started")
            if rec.stage is not Stage.RUNNING:
                raise BackendError("the backend finished without a running server")
        except BackendError as exc:
            await self._fail(rec, str(exc), parent)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("start of %s failed", spec.key)
            try:
                await self.backend.stop(rec.state)
            finally:
                await self._fail(rec, f"internal error in the site agent: {exc}", parent)
        finally:
            await ack()

    async def _fail(self, rec: ServerRecord, reason: str, parent: str) -> None:
        spec = rec.spec
        self._forget(rec)
        log.warning("server %s failed: %s", spec.key, reason)
        await self.publisher.publish(self.subject(spec.user, spec.server), ServerFailed(
            user=spec.user, server=spec.server, site=self.site, spawn_id=spec.spawn_id,
            progress=100, reason=reason, message=f"Spawn failed: {reason}"),
            parent=parent, purpose="failed")

    def _forget(self, rec: ServerRecord) -> None:
        if self.servers.get(rec.spec.key) is rec:
            del self.servers[rec.spec.key]
            if self.tunnels is not None:
                self.tunnels.remove_server(rec.spec.key)

    async def _on_stop(self, env: Envelope, cmd: StopServer) -> None:
        rec = await self._replace_older(server_key(cmd.user, cmd.server), cmd.spawn_id, env.id)
        if rec is not None and rec.spec.spawn_id == cmd.spawn_id:
            return await self._stop(rec, cmd.reason or "stopped on request", env.id, "stopped")
        if rec is not None:
            # e.g. redelivered after a restart: the server running now is not that one
            log.info("ignoring StopServer %s of spawn %s: %s runs spawn %s now", env.id,
                     cmd.spawn_id, rec.spec.key, rec.spec.spawn_id)
            return
        latest = await self._latest_report(cmd.user, cmd.server)
        if latest is not None:
            reported, kind = latest
            if reported == cmd.spawn_id and kind in _ENDED:
                return  # already answered
            if supersedes(reported, cmd.spawn_id):
                # A late stop: saying anything about an older spawn now would hide the
                # newer one from the next check of the latest report.
                log.info("ignoring StopServer %s of spawn %s: spawn %s came after it",
                         env.id, cmd.spawn_id, reported)
                return
        # Not ours (any more): say so, or the user would wait forever for a stop.
        await self.publisher.publish(self.subject(cmd.user, cmd.server), ServerStopped(
            user=cmd.user, server=cmd.server, site=self.site, spawn_id=cmd.spawn_id,
            progress=100, reason="server was not running at this site",
            message="Server stopped"), parent=env.id, purpose="stopped")

    async def _replace_older(self, key: str, spawn_id: str, parent: str
                             ) -> ServerRecord | None:
        """The record of server ``key``, once stopped if it runs a spawn older than
        ``spawn_id``: the hub asks for a newer spawn only once it holds the old one ended
        (e.g. after this site was out of touch too long), so that one is nobody's now."""
        rec = self.servers.get(key)
        if rec is None or not supersedes(spawn_id, rec.spec.spawn_id):
            return rec
        log.warning("spawn %s of %s replaces spawn %s", spawn_id, key, rec.spec.spawn_id)
        await self._stop(rec, "replaced by a newer spawn", parent, "replaced")
        return self.servers.get(key)

    async def _latest_report(self, user: str, server: str) -> tuple[str, str] | None:
        """(spawn id, event type) of this site's latest report about a server, if any."""
        last = await self.store.last(self.subject(user, server))
        if last is None:
            return None
        spawn = last.event.data.get("spawn_id")
        return spawn if isinstance(spawn, str) else "", last.event.type

    async def _stop(self, rec: ServerRecord, reason: str, parent: str, purpose: str) -> None:
        """Cancel a start in progress, stop the job, publish ServerStopped. Idempotent."""
        if rec.stop_task is not None:
            await asyncio.wait({rec.stop_task})
            return
        rec.stop_task = asyncio.current_task()
        was = rec.stage
        rec.stage = Stage.STOPPING
        if rec.task is not None and not rec.task.done():
            rec.task.cancel()
            await asyncio.wait({rec.task})
        spec = rec.spec
        common: dict[str, Any] = dict(user=spec.user, server=spec.server, site=self.site,
                                      spawn_id=spec.spawn_id, progress=100)
        try:
            await self.backend.stop(rec.state)
        except Exception as exc:  # the record must go whatever failed, or it blocks starts
            if not isinstance(exc, BackendError):
                log.exception("stopping %s failed", spec.key)
            self._forget(rec)
            await self.publisher.publish(self.subject(spec.user, spec.server), ServerFailed(
                **common, reason=f"could not stop the server: {exc}",
                message=f"Stop failed: {exc}"), parent=parent, purpose=f"{purpose}-failed")
            return
        self._forget(rec)
        log.info("stopped %s (%s, was %s)", spec.key, reason, was)
        await self.publisher.publish(self.subject(spec.user, spec.server), ServerStopped(
            **common, reason=reason, message="Server stopped"), parent=parent, purpose=purpose)

    # -- monitoring and re-adoption ---------------------------------------------------------

    async def _monitor_forever(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            await self.check_servers()
            rounds += 1
            if rounds % CLEANUP_EVERY == 0:
                await self.cleanup()

    async def cleanup(self) -> None:
        """Let a backend that labels its jobs remove the ones no server of ours owns
        (left by a crash between start and the first event). Never raises."""
        clean = getattr(self.backend, "cleanup", None)
        if clean is None:
            return
        try:
            await clean({r.spec.spawn_id for r in self.servers.values()})
        except BackendError as exc:
            log.warning("cleanup of unknown jobs failed (will retry): %s", exc)

    async def check_servers(self) -> None:
        """One status query for every server not busy starting or stopping; positively
        GONE ones are reported ended, UNKNOWN ones are left alone. Never raises."""
        watched = {k: r for k, r in self.servers.items()
                   if not r.starting and r.stage is not Stage.STOPPING}
        reports = await self._status(watched)
        for key, rec in watched.items():
            report = reports.get(key)
            if report is None or report.status is not JobStatus.GONE:
                continue
            if self.servers.get(key) is not rec or rec.starting or rec.stage is Stage.STOPPING:
                continue  # changed while we asked
            how = f" ({report.reason})" if report.reason else ""
            await self._ended(rec, f"server process exited{how}", rec.spec.spawn_id, "gone")

    async def _status(self, recs: dict[str, ServerRecord]) -> dict[str, JobReport]:
        if not recs:
            return {}
        try:
            return await self.backend.status({k: r.state for k, r in recs.items()})
        except Exception:  # a failed query means "unknown", never "gone"
            log.exception("status query failed")
            return {}

    async def _ended(self, rec: ServerRecord, reason: str, parent: str, purpose: str) -> None:
        spec = rec.spec
        self._forget(rec)
        log.info("server %s ended: %s", spec.key, reason)
        common: dict[str, Any] = dict(user=spec.user, server=spec.server, site=self.site,
                                      spawn_id=spec.spawn_id, progress=100, reason=reason)
        subject = self.subject(spec.user, spec.server)
        if rec.stage is Stage.RUNNING:
            await self.publisher.publish(subject, ServerStopped(**common, message="Server stopped"),
                                         parent=parent, purpose=purpose)
        else:
            await self.publisher.publish(subject, ServerFailed(
                **common, message=f"Spawn failed: {reason}"), parent=parent, purpose=purpose)

    async def adopt(self) -> None:
        """Take back the servers the log says run at this site (after a restart).

        Running ones are kept and monitored, never restarted; half-started ones resume
        their readiness check; gone ones are reported ended; stop-requested ones are
        stopped. Safe to repeat: every event it publishes has a derived id.
        """
        orphans = await find_orphans(self.store, self.site)
        recs = {o.spec.key: ServerRecord(o.spec, Stage.RUNNING if o.started else Stage.STARTING,
                                         o.state, o.job_id, o.target) for o in orphans}
        reports = await self._status(recs)
        for o in orphans:
            rec = recs[o.spec.key]
            report = reports.get(o.spec.key, JobReport(JobStatus.UNKNOWN))
            if report.status is JobStatus.GONE:
                how = f" ({report.reason})" if report.reason else ""
                await self._ended(rec, f"server ended while the site agent was down{how}",
                                  o.latest_id, "adopt-gone")
                continue
            self.servers[o.spec.key] = rec
            if self.tunnels is not None and o.started:
                self.tunnels.adopt_server(o.spec.key, o.target, o.state)
            if o.latest_type == "ServerStopRequested":
                self._spawn(self._stop(rec, "stopped on request", o.latest_id, "adopt-stopped"))
            elif not o.started:
                rec.task = asyncio.create_task(self._run_start(
                    rec, self.backend.resume(o.spec, o.state), o.latest_id, AckOnce(None)))
            log.info("re-adopted %s (%s, %s)", o.spec.key, o.latest_type, report.status)
        await self.cleanup()

