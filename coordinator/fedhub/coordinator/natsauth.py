"""The users of the embedded nats-server and what each may do.

The hub's components share one user with full rights; every site gets its own user whose
permissions the NATS server enforces: it may publish only its own reports and heartbeat,
consume only its own commands (through its durable consumer), read public keys and proxy
announcements, and receive only on its own inbox prefix. Passwords are stored bcrypt-
hashed in ``auth.conf``; the plain site password exists only in the site's bundle.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import bcrypt

from fedhub.schemas.names import subject_token
from fedhub.schemas.subjects import command_consumer

HUB_USER = "hub"


def site_user(site: str) -> str:
    return f"site-{subject_token(site)}"


def inbox_prefix(site: str) -> str:
    return f"_INBOX_{subject_token(site)}"


def site_permissions(site: str) -> dict[str, Any]:
    """What a site's credential may do, as nats-server permissions."""
    t = subject_token(site)
    durable = command_consumer(site)
    api = "$JS.API"
    return {
        "publish": {"allow": [
            f"fedhub.site.{t}.>",
            f"fedhub-health.site.{t}",
            f"{api}.CONSUMER.CREATE.FEDHUB.*.fedhub.site.{t}.>",
            f"{api}.CONSUMER.CREATE.FEDHUB.*.fedhub.key.>",
            f"{api}.CONSUMER.CREATE.FEDHUB.*.fedhub.proxy.>",
            f"{api}.CONSUMER.CREATE.FEDHUB.{durable}.fedhub.cmd.{t}.>",
            f"{api}.CONSUMER.INFO.FEDHUB.*",
            f"{api}.CONSUMER.MSG.NEXT.FEDHUB.{durable}",  # the one this site pulls from
            f"$JS.ACK.FEDHUB.{durable}.>",
            "$JS.FC.FEDHUB.>",
            f"{api}.DIRECT.GET.FEDHUB.fedhub.site.{t}.>",
            f"{api}.DIRECT.GET.FEDHUB.fedhub.key.>",
            f"{api}.INFO",
        ]},
        "subscribe": {"allow": [f"{inbox_prefix(site)}.>"]},
    }


class AuthFile:
    """``users.json`` (the source) rendered to ``auth.conf`` (included by nats.conf)."""

    def __init__(self, nats_dir: Path) -> None:
        self.dir = nats_dir
        self.users_path = nats_dir / "users.json"
        self.conf_path = nats_dir / "auth.conf"
        self.password_path = nats_dir / "hub-password"  # the hub user's, in the clear (0600)

    def _load(self) -> dict[str, dict[str, Any]]:
        if not self.users_path.exists():
            return {}
        data: dict[str, dict[str, Any]] = json.loads(self.users_path.read_text())
        return data

    def _save(self, users: dict[str, dict[str, Any]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for path, text in ((self.users_path, json.dumps(users, indent=1)),
                           (self.conf_path, render(users))):
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            tmp.replace(path)

    def ensure_hub(self) -> str:
        """The hub user's password (created on first use, kept in a 0600 file)."""
        users = self._load()
        if HUB_USER in users and self.password_path.exists():
            return self.password_path.read_text().strip()
        password = secrets.token_urlsafe(24)
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password)
        users[HUB_USER] = {"hash": _hash(password), "permissions": None}
        self._save(users)
        return password

    def add_site(self, site: str) -> tuple[str, str]:
        """Create (or replace) a site's user; returns (user, password)."""
        user, password = site_user(site), secrets.token_urlsafe(24)
        users = self._load()
        users[user] = {"hash": _hash(password), "permissions": site_permissions(site)}
        self._save(users)
        return user, password

    def remove_site(self, site: str) -> bool:
        users = self._load()
        if users.pop(site_user(site), None) is None:
            return False
        self._save(users)
        return True


def _hash(password: str) -> str:
    # nats-server recognises bcrypt hashes by the "$2a$" prefix ("$2b$" is the same
    # algorithm; only the label differs).
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=11, prefix=b"2a"))
    return hashed.decode()


def render(users: dict[str, dict[str, Any]]) -> str:
    """nats-server configuration for the users (JSON is valid nats-server syntax).

    Each site is also denied every other site's durable consumer: its own reads use
    consumers of any name (``CONSUMER.CREATE.FEDHUB.*.<its subjects>``), and creating a
    consumer under an existing name updates that consumer, filter included, so without
    this a site could point another site's command consumer at subjects it writes."""
    durables = {name: _durable(entry["permissions"]) for name, entry in users.items()
                if entry.get("permissions")}
    entries = []
    for name, entry in sorted(users.items()):
        item: dict[str, Any] = {"user": name, "password": entry["hash"]}
        if permissions := entry.get("permissions"):
            others = sorted(d for user, d in durables.items() if user != name and d)
            if others:
                permissions = {**permissions, "publish": {**permissions["publish"], "deny": [
                    f"$JS.API.CONSUMER.{verb}.FEDHUB.{d}{tail}" for d in others
                    for verb, tail in (("CREATE", ".>"), ("CREATE", ""), ("DURABLE.CREATE", ""),
                                       ("DELETE", ""))]}}
            item["permissions"] = permissions
        entries.append(item)
    return "authorization: " + json.dumps({"users": entries}, indent=1) + "\n"


def _durable(permissions: dict[str, Any]) -> str:
    """The command consumer a site's permissions let it pull from ("" if none)."""
    pull = "$JS.API.CONSUMER.MSG.NEXT.FEDHUB."
    return next((s.removeprefix(pull) for s in permissions["publish"]["allow"]
                 if s.startswith(pull)), "")


def reload_server(pid: int) -> None:
    """Ask a running nats-server to re-read its configuration (new or removed users)."""
    os.kill(pid, signal.SIGHUP)
