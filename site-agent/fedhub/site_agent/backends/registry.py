"""Which backend a site runs, chosen by the ``backend`` setting.

Each backend module is imported only when chosen, so a site never needs another
backend's dependencies (docker, asyncssh, htcondor bindings...).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fedhub.site_agent.backends.base import Backend
from fedhub.site_agent.errors import BackendError

if TYPE_CHECKING:
    from fedhub.site_agent.settings import SiteAgentSettings

# name -> "module:factory"; a factory takes the settings and returns a Backend, raising
# BackendError with a readable message when ``backend_config`` is invalid.
BACKENDS: dict[str, str] = {
    "local": "fedhub.site_agent.backends.local:from_settings",
    "docker": "fedhub.site_agent.backends.docker:from_settings",
    "slurm": "fedhub.site_agent.backends.slurm:from_settings",
    "ssh": "fedhub.site_agent.backends.ssh:from_settings",
    "htcondor": "fedhub.site_agent.backends.htcondor:from_settings",
}


def make_backend(settings: SiteAgentSettings) -> Backend:
    """The configured backend; raises BackendError for unknown names or bad config."""
    target = BACKENDS.get(settings.backend)
    if target is None:
        raise BackendError(f"unknown backend {settings.backend!r}")
    module, _, factory = target.partition(":")
    try:
        make = getattr(importlib.import_module(module), factory)
    except ImportError as exc:
        raise BackendError(f"backend {settings.backend!r} is not available: {exc}") from exc
    backend: Backend = make(settings)
    return backend
