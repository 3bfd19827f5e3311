"""Subjects of the FEDHUB stream: one aggregate per subject."""

from __future__ import annotations

from fedhub.schemas.names import server_key, subject_token

STREAM = "FEDHUB"
ROOT = "fedhub"
ALL = "fedhub.>"
HEALTH_STREAM = "FEDHUB_HEALTH"
HEALTH_ROOT = "fedhub-health"


def user(name: str) -> str:
    """Subject of a user's account events (created, updated, deleted)."""
    return f"{ROOT}.user.{subject_token(name)}"


def login(name: str) -> str:
    """Subject of a user's login, failed login and logout events."""
    return f"{ROOT}.login.{subject_token(name)}"


def token(name: str) -> str:
    """Subject of a user's API token issue and revoke events (never the secret)."""
    return f"{ROOT}.token.{subject_token(name)}"


def server(user_name: str, server_name: str) -> str:
    """Subject of one server's life cycle."""
    return f"{ROOT}.server.{server_key(user_name, server_name)}"


def servers_of(user_name: str) -> str:
    """Wildcard of every server subject of one user."""
    return f"{ROOT}.server.{subject_token(user_name)}.*"


def route(user_name: str, server_name: str) -> str:
    """Subject of one route (added, removed); latest event = current route."""
    return f"{ROOT}.route.{server_key(user_name, server_name)}"


def site(name: str) -> str:
    """Subject of a site's registration, drain, removal and health episodes (written by
    coordinators only; a site's own credential cannot publish here)."""
    return f"{ROOT}.site.{subject_token(name)}"


def site_facts(name: str) -> str:
    """Filter for everything one site itself writes (its credential may publish only here)."""
    return f"{ROOT}.site.{subject_token(name)}.>"


def site_server(site_name: str, user_name: str, server_name: str) -> str:
    """Where a site reports its facts about one server (submitted, started, stopped...)."""
    return f"{ROOT}.site.{subject_token(site_name)}.server.{server_key(user_name, server_name)}"


def site_agent(site_name: str) -> str:
    """Where a site's agent announces itself (backend, options, capacity)."""
    return f"{ROOT}.site.{subject_token(site_name)}.agent"


ALL_SITE_FACTS = f"{ROOT}.site.*.>"


def is_site_fact(subject: str) -> bool:
    """True for subjects a site writes itself: raw reports, trusted only once verified."""
    parts = subject.split(".")
    return len(parts) > 3 and parts[0] == ROOT and parts[1] == "site"


def security(site_name: str) -> str:
    """Where coordinators report site events they rejected."""
    return f"{ROOT}.security.{subject_token(site_name)}"


def proxy(name: str) -> str:
    """Where an edge proxy announces itself and its tunnel endpoint."""
    return f"{ROOT}.proxy.{subject_token(name)}"


def command(site_name: str, verb: str) -> str:
    """Subject of a command for one site's agent."""
    return f"{ROOT}.cmd.{subject_token(site_name)}.{verb}"


def commands(site_name: str) -> str:
    """Filter for every command of one site."""
    return f"{ROOT}.cmd.{subject_token(site_name)}.>"


def command_consumer(site_name: str) -> str:
    """Name of the durable consumer through which one site's agent takes its commands."""
    return f"agent-{subject_token(site_name)}"


def key(kid: str) -> str:
    """Subject where a component publishes its public signing key."""
    return f"{ROOT}.key.{kid}"


def health(site_name: str) -> str:
    """Heartbeat subject (separate, last-value-only stream) of one site."""
    return f"{HEALTH_ROOT}.site.{subject_token(site_name)}"


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: ``*`` is one token, ``>`` the rest (one or more tokens)."""
    p = pattern.split(".")
    s = subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)
