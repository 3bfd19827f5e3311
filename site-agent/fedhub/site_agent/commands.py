"""Checking commands before the agent acts on them, and acking them exactly once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from fedhub.events.store import Delivery
from fedhub.schemas.events import StartServer
from fedhub.schemas.names import (
    InvalidName,
    normalize_user_name,
    server_prefix,
    validate_server_name,
)
from fedhub.schemas.resources import InvalidOptions, OptionSpec, validate_options
from fedhub.site_agent.backends.base import ServerSpec
from fedhub.site_agent.errors import InvalidCommand

log = logging.getLogger(__name__)


def spec_from_command(cmd: StartServer, offered: Sequence[OptionSpec] = ()) -> ServerSpec:
    """The ServerSpec a StartServer asks for; raises InvalidCommand if a name or the
    prefix is not what fedhub itself would produce (they reach command lines and paths)
    or the options do not fit what the site ``offered`` (they reach scripts and specs)."""
    try:
        if normalize_user_name(cmd.user) != cmd.user:
            raise InvalidCommand(f"user name {cmd.user!r} is not in canonical form")
        validate_server_name(cmd.server)
    except InvalidName as exc:
        raise InvalidCommand(str(exc)) from exc
    expected = server_prefix(cmd.user, cmd.server)
    if cmd.prefix != expected:
        raise InvalidCommand(f"URL prefix {cmd.prefix!r} should be {expected!r}")
    if not cmd.spawn_id:
        raise InvalidCommand("command without a spawn id")
    try:
        options = validate_options(offered, cmd.options)
    except InvalidOptions as exc:
        raise InvalidCommand(f"invalid options: {exc}") from exc
    return ServerSpec(cmd.user, cmd.server, cmd.spawn_id, cmd.prefix, options)


class AckOnce:
    """Acks a delivery the first time it is called; later calls and ack errors are
    harmless (an unacked command is redelivered and recognised as already handled)."""

    def __init__(self, delivery: Delivery | None) -> None:
        self._delivery = delivery

    async def __call__(self) -> None:
        """Ack the delivery unless already done. Never raises."""
        await self._settle(lambda d: d.ack(), "ack")

    async def nak(self, delay: float) -> None:
        """Hand the delivery back, to come again after ``delay`` seconds, unless it was
        acked already; later calls do nothing. Never raises (if the store cannot take it
        back now, it redelivers the command once its ack wait runs out)."""
        await self._settle(lambda d: d.nak(delay), "hand back")

    async def _settle(self, how: Callable[[Delivery], Awaitable[None]], what: str) -> None:
        delivery, self._delivery = self._delivery, None
        if delivery is None:
            return
        try:
            await how(delivery)
        except Exception as exc:  # the store decides; redelivery is handled as a duplicate
            log.warning("cannot %s command %d: %s", what, delivery.seq, exc)
