"""Writing a fedhub log as a coordinator would: its key, users, routes, all signed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from fedhub.events.envelope import Envelope, new_event
from fedhub.events.jetstream import JetStreamStore
from fedhub.events.signing import SigningKey
from fedhub.schemas import subjects
from fedhub.schemas.events import KeyPublished, RouteAdded, UserCreated
from fedhub.schemas.names import server_prefix

USER = "bench"


class FedLog:
    """A coordinator identity writing to one JetStream log."""

    def __init__(self, store: JetStreamStore, key: SigningKey) -> None:
        self.store = store
        self.key = key

    @classmethod
    async def create(cls, nats_url: str) -> FedLog:
        store = await JetStreamStore.connect(nats_url, name="bench-coordinator")
        log = cls(store, SigningKey.generate())
        payload = KeyPublished(kid=log.key.kid, public_key=log.key.public_b64,
                               role="coordinator", name="bench")
        await store.append(new_event(subjects.key(log.key.kid), payload,
                                     actor="coordinator:bench", signer=log.key))
        await store.append(log.user_event(USER))
        return log

    def user_event(self, name: str) -> Envelope:
        return new_event(subjects.user(name), UserCreated(name=name), actor="coordinator",
                         signer=self.key)

    def route_event(self, user: str, server: str, target: str) -> Envelope:
        payload = RouteAdded(prefix=server_prefix(user, server), target=target, user=user,
                             server=server, site="local")
        return new_event(subjects.route(user, server), payload, actor="coordinator",
                         signer=self.key)

    def token(self, user: str = USER) -> str:
        return self.key.token({"typ": "api", "sub": user, "jti": f"bench-{user}",
                               "exp": int(time.time()) + 86400})

    async def append_many(self, events: Iterable[Envelope], concurrency: int = 256) -> None:
        """Append concurrently (each append still signed, de-duplicated by id)."""
        it = iter(events)

        async def worker() -> None:
            for ev in it:
                await self.store.append(ev)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def filler_routes(self, start: int, stop: int, target: str) -> None:
        """Routes of users u<start>..u<stop-1>, all to ``target``."""
        await self.append_many(self.route_event(f"u{i:06d}", "", target)
                               for i in range(start, stop))

    async def close(self) -> None:
        await self.store.close()
