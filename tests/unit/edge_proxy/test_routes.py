"""The route table: add, replace, remove, longest-prefix match."""

from __future__ import annotations

from fedhub.edge_proxy.address import tcp_address
from fedhub.edge_proxy.routes import Route, RouteTable, normalize_prefix


def route(subject: str, prefix: str, target: str = "http://127.0.0.1:9000") -> Route:
    return Route(subject=subject, prefix=normalize_prefix(prefix), url_prefix=prefix,
                 target=target, user="alice", server="", site="", seq=1,
                 address=tcp_address(target))


def test_longest_prefix_wins() -> None:
    table = RouteTable()
    table.add(route("r.a", "/user/alice/", "http://a:1"))
    table.add(route("r.b", "/user/alice/gpu/", "http://b:1"))
    assert table.match("/user/alice/lab/tree").target == "http://a:1"  # type: ignore[union-attr]
    assert table.match("/user/alice/gpu/lab").target == "http://b:1"  # type: ignore[union-attr]
    assert table.match("/user/alice/gpu").target == "http://b:1"  # type: ignore[union-attr]
    assert table.match("/user/alice").target == "http://a:1"  # type: ignore[union-attr]
    assert table.match("/user/alicex/") is None
    assert table.match("/hub/") is None


def test_replace_and_remove_by_subject() -> None:
    table = RouteTable()
    table.add(route("r.a", "/user/alice/", "http://a:1"))
    table.add(route("r.a", "/user/alice/", "http://a:2"))
    assert len(table) == 1
    assert table.match("/user/alice/x").target == "http://a:2"  # type: ignore[union-attr]
    assert table.remove("r.a") is not None
    assert table.remove("r.a") is None
    assert table.match("/user/alice/x") is None
    assert len(table) == 0


def test_deep_prefix_removed_then_shallow_still_matches() -> None:
    table = RouteTable()
    table.add(route("r.a", "/user/alice/"))
    table.add(route("r.b", "/user/alice/gpu/"))
    table.remove("r.b")
    assert table.match("/user/alice/gpu/x") is not None


def test_encoded_and_decoded_prefixes_match_the_same_path() -> None:
    table = RouteTable()
    table.add(route("r.u", "/user/j%C3%BCrgen/"))
    assert table.get("/user/jürgen/") is not None
    assert table.match("/user/jürgen/lab") is not None


class Checker:
    """Passes the routes whose proof is b"ok"; remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, route: Route, proof: bytes) -> bool:
        self.asked.append(route.subject)
        return proof == b"ok"


def test_unchecked_routes_are_checked_once_before_use() -> None:
    checker = Checker()
    table = RouteTable(checker)
    table.add(route("r.a", "/user/alice/", "http://a:1"))
    table.add_unchecked(route("r.g", "/user/alice/gpu/", "http://g:1"), b"forged")
    table.add_unchecked(route("r.b", "/user/bob/", "http://b:1"), b"ok")
    assert len(table) == 3 and table.unchecked == 2 and checker.asked == []
    # The forged deeper route is dropped on first use; the path falls back to alice's.
    assert table.match("/user/alice/gpu/x").target == "http://a:1"  # type: ignore[union-attr]
    assert table.match("/user/bob/").target == "http://b:1"  # type: ignore[union-attr]
    assert table.match("/user/bob/x").target == "http://b:1"  # type: ignore[union-attr]
    assert checker.asked == ["r.g", "r.b"]  # each checked once
    assert len(table) == 2 and table.unchecked == 0


def test_get_and_routes_never_hand_out_an_unchecked_route() -> None:
    table = RouteTable(Checker())
    table.add_unchecked(route("r.a", "/user/alice/"), b"forged")
    table.add_unchecked(route("r.b", "/user/bob/"), b"ok")
    assert table.get("/user/alice/") is None
    table.add_unchecked(route("r.c", "/user/carol/"), b"forged")
    assert [r.subject for r in table.routes()] == ["r.b"]
    assert table.check_some(10) == 0


def test_without_a_checker_nothing_unchecked_is_served() -> None:
    table = RouteTable()
    table.add_unchecked(route("r.a", "/user/alice/"), b"ok")
    assert table.match("/user/alice/") is None and len(table) == 0


def test_an_unchecked_route_that_would_replace_or_displace_is_checked_at_once() -> None:
    checker = Checker()
    table = RouteTable(checker)
    table.add(route("r.a", "/user/alice/", "http://a:1"))
    table.add_unchecked(route("r.a", "/user/alice/", "http://evil:1"), b"forged")
    table.add_unchecked(route("r.x", "/user/alice/", "http://evil:2"), b"forged")
    assert checker.asked == ["r.a", "r.x"] and table.unchecked == 0
    assert table.match("/user/alice/").target == "http://a:1"  # type: ignore[union-attr]
    table.add_unchecked(route("r.y", "/user/alice/", "http://new:1"), b"ok")
    assert table.match("/user/alice/").target == "http://new:1"  # type: ignore[union-attr]
    assert table.announced("r.y") and not table.announced("r.a")
    # Removing an unchecked route forgets its proof as well.
    table.add_unchecked(route("r.z", "/user/zed/"), b"ok")
    table.remove("r.z")
    assert table.unchecked == 0


