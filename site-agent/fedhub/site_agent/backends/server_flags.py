"""The Jupyter Server settings every single-user server gets, whichever backend starts it
(each backend adds where it listens, its URL prefix and its root directory)."""

from __future__ import annotations

IDENTITY_PROVIDER = "fedhub.site_agent.singleuser.AssertionIdentityProvider"

SERVER_FLAGS: tuple[str, ...] = (
    "--no-browser",
    "--ServerApp.port_retries=0",
    # Identity comes only from the edge proxy's assertion: no token, no login page.
    f"--ServerApp.identity_provider_class={IDENTITY_PROVIDER}",
    "--IdentityProvider.token=",
    "--ServerApp.allow_unauthenticated_access=False",
    # The proxy keeps the browser's Host header.
    "--ServerApp.allow_remote_access=True",
    # The page calls nowhere else: no update check, and no news feed (nor the pop-up
    # asking each new user whether to fetch it; compute nodes rarely reach the internet).
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    "--LabApp.news_url=None",
)
