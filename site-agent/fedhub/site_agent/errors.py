"""Errors of the site agent.

SiteAgentError
├── BackendError        a backend could not start, stop or query a server; the message is
│                       written for the user ("Jupyter exited during start: ...")
└── InvalidCommand      a command that names an invalid user, server or prefix

Settings problems are reported as fedhub.schemas.config.ConfigError.
"""

from __future__ import annotations


class SiteAgentError(Exception):
    """Base of every error raised by fedhub.site_agent."""


class BackendError(SiteAgentError):
    """A backend operation failed; ``str(exc)`` is readable by the user."""


class InvalidCommand(SiteAgentError):
    """A command the agent refuses to act on; ``str(exc)`` says why."""
