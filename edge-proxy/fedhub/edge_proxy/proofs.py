"""What an unchecked route keeps so that its signature can be checked later, packed small.

The proof of a route is its RouteAdded event. Most of the event is in the route already
(subject, prefix, target, user, server, site); ``pack`` keeps only the rest (signature,
time, id, and an index into a short list of the (actor, kid, traceparent) combinations
seen), about 190 bytes instead of the 460 of the event. ``verify`` puts the event back
together from both and checks it. An event the route does not reproduce exactly (a target
with a trailing slash, too many combinations) keeps its wire bytes as its proof instead;
a packed proof starts with a NUL byte, JSON never does.
"""

from __future__ import annotations

from typing import Any

from fedhub.edge_proxy.routes import Route
from fedhub.events import raw
from fedhub.events.signing import KeyRing, PublicKey
from fedhub.schemas.events import RouteAdded

_DATA_FIELDS = frozenset(RouteAdded.model_fields)
_MAX_SHAPES = 256  # the index is one byte
# (actor, kid, traceparent) combinations, shared by every proof of this process:
# append-only, so an index never changes meaning.
_shapes: list[tuple[str, str, str | None]] = []
_shape_lead: dict[tuple[str, str, str | None], bytes] = {}  # -> NUL and its index


def pack(fields: dict[str, Any], route: Route, data: bytes) -> bytes:
    """The proof for ``route``, read (by ``raw.loads``) from the RouteAdded event ``data``
    as ``fields``: packed when the route reproduces the event, else ``data`` itself.

    ``fields`` is what ``route_log.fold_route`` accepted: a RouteAdded of this version with
    a kid and a signature, ``route`` built from its subject and data; that is not checked
    again. (Were it not so, the event put back together would not verify: the route is
    dropped, never served on a forged proof.)
    """
    body = fields["data"]
    if body.keys() != _DATA_FIELDS or body["target"] != route.target:
        return data
    shape = (fields["actor"], fields["kid"], fields["traceparent"])
    lead = _shape_lead.get(shape)
    if lead is None:
        if len(_shapes) >= _MAX_SHAPES:
            return data
        lead = _shape_lead[shape] = bytes((0, len(_shapes)))
        _shapes.append(shape)
    signature: str = fields["signature"]
    if not signature.isascii() or "\0" in signature:
        return data
    # Time and signature are ASCII without NUL (raw.loads checked the time's form); the
    # id, which could be anything, goes last. (join: one allocation, cheaper than %.)
    return b"\0".join((lead + signature.encode(), fields["time"].encode(),
                       fields["id"].encode()))


def unpack(proof: bytes, route: Route) -> dict[str, Any]:
    """The event fields of a packed proof (as ``raw.loads`` read them); ValueError if the
    proof is not a packed one."""
    if proof[:1] != b"\0":
        raise ValueError("not a packed proof")
    actor, kid, traceparent = _shapes[proof[1]]
    signature, time, event_id = proof[2:].split(b"\0", 2)
    return {
        "id": event_id.decode(), "type": RouteAdded.TYPE, "version": RouteAdded.VERSION,
        "time": time.decode(), "actor": actor, "subject": route.subject,
        "data": {"prefix": route.url_prefix, "target": route.target, "user": route.user,
                 "server": route.server, "site": route.site},
        "traceparent": traceparent, "kid": kid, "signature": signature.decode(),
    }


def verify(proof: bytes, route: Route, keyring: KeyRing, roles: frozenset[str]) -> PublicKey:
    """The key that signed the event behind ``route``; raises EventLogError (as
    ``raw.verify`` does) when no key of ``roles`` did."""
    if proof[:1] != b"\0":
        return raw.verify(proof, keyring, roles)
    return raw.verify_fields(unpack(proof, route), keyring, roles)
