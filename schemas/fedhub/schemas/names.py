"""User and server names: validation, URL paths and NATS subject tokens.

User names follow JupyterHub's permissive spirit (letters of any script, digits, ``.``,
``_``, ``-``, ``@``) but refuse anything that could escape a path, a subject or a shell.
Server names follow JupyterHub 6: 1-30 characters of lowercase ASCII letters, digits and
single ``-``, starting with a letter and ending with a letter or digit; ``""`` is the
default server.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

MAX_USER_NAME = 64
_SERVER_RE = re.compile(r"[a-z](?:[a-z0-9]|-(?=[a-z0-9])){0,29}")
_HEX = frozenset("0123456789abcdef")
_TOKEN_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
DEFAULT_SERVER_TOKEN = "_"


class InvalidName(ValueError):
    """A user or server name that fedhub refuses; the message says why."""


def normalize_user_name(raw: str) -> str:
    """Return the canonical form of a user name (NFKC, lower case) or raise InvalidName."""
    name = unicodedata.normalize("NFKC", raw).strip().lower()
    if not name:
        raise InvalidName("user name must not be empty")
    if len(name) > MAX_USER_NAME:
        raise InvalidName(f"user name is longer than {MAX_USER_NAME} characters")
    for ch in name:
        # Combining marks (vowel signs, dots) belong to the letters of many scripts.
        if ch.isalnum() or ch in "._-@" or unicodedata.category(ch) in ("Mn", "Mc"):
            continue
        raise InvalidName(f"user name may not contain {ch!r}")
    if unicodedata.category(name[0]) in ("Mn", "Mc"):
        raise InvalidName("user name may not start with a combining mark")
    if name[0] in ".-" or ".." in name:
        raise InvalidName("user name may not start with '.' or '-' or contain '..'")
    return name


def validate_server_name(raw: str) -> str:
    """Return ``raw`` if it is a valid server name (``""`` is the default server)."""
    if raw == "":
        return raw
    if not _SERVER_RE.fullmatch(raw):
        raise InvalidName(
            "server name must be 1-30 characters of lowercase letters, digits and single '-',"
            " starting with a letter and ending with a letter or digit"
        )
    return raw


def subject_token(name: str) -> str:
    """Encode any string as one NATS subject token, reversibly.

    Lowercase ASCII letters, digits and ``-`` stay; every other UTF-8 byte becomes ``_xx``.
    The empty string (the default server) becomes ``_``.
    """
    if name == "":
        return DEFAULT_SERVER_TOKEN
    out: list[str] = []
    for ch in name:
        if ch in _TOKEN_SAFE:
            out.append(ch)
        else:
            out.extend(f"_{b:02x}" for b in ch.encode())
    return "".join(out)


def from_subject_token(token: str) -> str:
    """Invert :func:`subject_token`; raises InvalidName on a malformed token."""
    if token == DEFAULT_SERVER_TOKEN:
        return ""
    raw = bytearray()
    i = 0
    while i < len(token):
        ch = token[i]
        if ch == "_":
            pair = token[i + 1 : i + 3]
            if len(pair) != 2 or not set(pair) <= _HEX:
                raise InvalidName(f"malformed subject token {token!r}")
            raw.append(int(pair, 16))
            i += 3
        elif ch in _TOKEN_SAFE:
            raw.extend(ch.encode())
            i += 1
        else:
            raise InvalidName(f"malformed subject token {token!r}")
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise InvalidName(f"malformed subject token {token!r}") from exc


def url_segment(name: str) -> str:
    """Percent-encode a name for one URL path segment (as browsers send it)."""
    return quote(name, safe="@")


def server_prefix(user: str, server: str) -> str:
    """The URL prefix of a server: ``/user/<user>/`` or ``/user/<user>/<server>/``."""
    base = f"/user/{url_segment(user)}/"
    return f"{base}{server}/" if server else base


def server_key(user: str, server: str) -> str:
    """Two subject tokens naming one server: ``<user>.<server>``."""
    return f"{subject_token(user)}.{subject_token(server)}"
