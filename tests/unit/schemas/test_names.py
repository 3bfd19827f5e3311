"""User and server names: what fedhub accepts, refuses, and how names become subjects/URLs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedhub.schemas import subjects
from fedhub.schemas.names import (
    InvalidName,
    from_subject_token,
    normalize_user_name,
    server_key,
    server_prefix,
    subject_token,
    validate_server_name,
)

# -- user names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Alice", "alice"),
        ("josé.d", "josé.d"),
        ("a@b.org", "a@b.org"),
        ("  bob  ", "bob"),
        ("Ｍａｒｉａ", "maria"),  # full-width letters fold to ASCII (NFKC)
        ("user_1-x", "user_1-x"),
        ("ไทย", "ไทย"),
        ("a" * 64, "a" * 64),
    ],
)
def test_user_names_that_are_accepted(raw: str, expected: str) -> None:
    assert normalize_user_name(raw) == expected


def test_user_names_in_scripts_with_combining_vowel_signs_are_accepted() -> None:
    # The module promises "letters of any script"; Devanagari writes vowels as combining
    # signs (category Mc), so a Hindi name must not be refused.
    assert normalize_user_name("अनिल") == "अनिल"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("../x", "'/'"),
        ("a/b", "'/'"),
        ("*", "'*'"),
        (">", "'>'"),
        ("a b", "' '"),
        ("o'neil", "\"'\""),
        (".hidden", "start with '.'"),
        ("-x", "start with '.' or '-'"),
        ("a..b", "contain '..'"),
        ("a" * 65, "longer than 64"),
        ("a\u200db", "'\\u200d'"),  # zero-width joiner: looks like "ab", is not
        ("．．／x", "'/'"),  # full-width dots and slash fold to "../x"
    ],
)
def test_user_names_that_are_refused_say_why(raw: str, why: str) -> None:
    with pytest.raises(InvalidName) as info:
        normalize_user_name(raw)
    assert why in str(info.value)


@given(st.text(max_size=80))
def test_normalized_user_names_are_stable_and_path_safe(raw: str) -> None:
    try:
        name = normalize_user_name(raw)
    except InvalidName:
        return
    assert normalize_user_name(name) == name
    assert "/" not in name and ".." not in name and not name.startswith((".", "-"))
    assert not any(ch.isspace() for ch in name)


# -- server names -------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", "gpu", "a-1", "a", "a" * 30, "lab-2-big"])
def test_server_names_that_are_accepted(raw: str) -> None:
    assert validate_server_name(raw) == raw


@pytest.mark.parametrize(
    "raw",
    ["Upper", "a--b", "-a", "a-", "a" * 31, "a.b", "1gpu", "a b", "a/b", "gpu\n", "gpu\r\n"],
)
def test_server_names_that_are_refused(raw: str) -> None:
    with pytest.raises(InvalidName, match="server name must be 1-30 characters"):
        validate_server_name(raw)


# -- subject tokens -----------------------------------------------------------------------

HOSTILE = [
    "",
    "_",
    "__",
    "a.b",
    "a_2eb",
    "*",
    ">",
    "fedhub.>",
    "a b",
    "tab\there",
    "new\nline",
    "../etc/passwd",
    "Alice",
    "josé",
    "用户",
    "emoji-😀",
    "-",
    "a-b-c",
    "_2e",
    "\x00",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_subject_token_round_trips_and_is_one_safe_token(name: str) -> None:
    token = subject_token(name)
    assert from_subject_token(token) == name
    assert token
    for bad in (".", "*", ">"):
        assert bad not in token
    assert not any(ch.isspace() for ch in token)


@given(st.text(max_size=40))
def test_subject_token_round_trips_any_text(name: str) -> None:
    token = subject_token(name)
    assert from_subject_token(token) == name
    assert not set(token) & {".", "*", ">", " ", "\t", "\n", "\r"}


def test_distinct_names_get_distinct_tokens() -> None:
    tokens = {subject_token(n) for n in HOSTILE}
    assert len(tokens) == len(HOSTILE)
    assert subject_token("a.b") != subject_token("a_2eb")
    assert subject_token("") != subject_token("_")


@given(st.text(max_size=20), st.text(max_size=20))
def test_different_names_never_share_a_token(a: str, b: str) -> None:
    if a != b:
        assert subject_token(a) != subject_token(b)


def test_user_and_server_subjects_do_not_collide() -> None:
    # User "a.b"'s default server must not look like user "a"'s server "b".
    assert subjects.server("a.b", "") != subjects.server("a", "b")
    assert server_key("a", "") == "a._"
    assert len(subjects.server("x.y*", "gpu").split(".")) == 4


@pytest.mark.parametrize("token", ["A", "a.b", "a b", "_zz", "_4", "_ff", "_a", "_+1", "_ 1"])
def test_malformed_subject_tokens_are_refused(token: str) -> None:
    # Only the encoder's own output decodes; anything else (bad hex, a truncated escape,
    # an escape that is not two hex digits) is malformed, or two tokens name one user.
    with pytest.raises(InvalidName, match="malformed subject token"):
        from_subject_token(token)


# -- URL prefixes -------------------------------------------------------------------------


def test_server_prefix_default_and_named() -> None:
    assert server_prefix("alice", "") == "/user/alice/"
    assert server_prefix("alice", "gpu") == "/user/alice/gpu/"


def test_server_prefix_percent_encodes_unicode_and_keeps_at() -> None:
    assert server_prefix("josé", "") == "/user/jos%C3%A9/"
    assert server_prefix("a@b.org", "gpu") == "/user/a@b.org/gpu/"
    assert server_prefix("用户", "") == "/user/%E7%94%A8%E6%88%B7/"


# -- subject wildcards --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("fedhub.user.*", "fedhub.user.alice", True),
        ("fedhub.user.*", "fedhub.user.alice.extra", False),
        ("fedhub.user.*", "fedhub.user", False),
        ("fedhub.*.alice", "fedhub.user.alice", True),
        ("fedhub.>", "fedhub.user.alice", True),
        ("fedhub.>", "fedhub.user", True),
        ("fedhub.>", "fedhub", False),
        ("fedhub.cmd.hpc.>", "fedhub.cmd.hpc.start", True),
        ("fedhub.cmd.hpc.>", "fedhub.cmd.hpc2.start", False),
        ("fedhub.user.alice", "fedhub.user.alice", True),
        ("fedhub.user.alice", "fedhub.user.alicex", False),
        ("fedhub.user.alice", "fedhub.user", False),
        ("*.user.>", "fedhub.user.a.b", True),
    ],
)
def test_matches_wildcards(pattern: str, subject: str, expected: bool) -> None:
    assert subjects.matches(pattern, subject) is expected


def test_commands_filter_matches_only_that_sites_commands() -> None:
    pattern = subjects.commands("hpc")
    assert subjects.matches(pattern, subjects.command("hpc", "start"))
    assert not subjects.matches(pattern, subjects.command("hpc-2", "start"))
    assert not subjects.matches(pattern, subjects.site("hpc"))
