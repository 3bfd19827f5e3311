"""The route table: add, replace, remove, longest-prefix match."""

from __future__ import annotations

from fedhub.edge_proxy.routes import Route, RouteTable, normalize_prefix


def route(subject: str, prefix: str, target: str = "http://127.0.0.1:9000") -> Route:
    return Route(subject=subject, prefix=normalize_prefix(prefix), url_prefix=prefix,
                 target=target, user="alice", server="", site="", seq=1)


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
