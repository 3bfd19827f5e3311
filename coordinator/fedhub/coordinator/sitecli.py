"""``fedhub site add|list|drain|weight|remove``: operator commands for sites.

``add`` enrolls the site through the API (the log records it and the agent's public key),
creates the site's NATS user when the NATS configuration is local (``fedhub up``), and
writes the credentials bundle that the site's operator passes to ``fedhub site-agent
--credentials``. The bundle holds secrets and never enters the log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from fedhub.coordinator.natsauth import AuthFile, inbox_prefix, reload_server
from fedhub.events.signing import SigningKey
from fedhub.schemas.bundle import Bundle

Call = Callable[[str, str, Any], Any]


def local_nats(data_dir: Path, nats_auth: Path | None = None
               ) -> tuple[AuthFile, int | None] | None:
    """The NATS users to change: those in ``nats_auth`` (a NATS the operator runs; no pid
    to signal), else the embedded hub's and its server pid, if this machine runs
    ``fedhub up``; None if neither."""
    if nats_auth is not None:
        return AuthFile(nats_auth), None
    auth = AuthFile(data_dir / "nats")
    if not auth.users_path.exists():
        return None
    runtime = data_dir / "runtime.json"
    pid = json.loads(runtime.read_text()).get("nats_pid") if runtime.exists() else None
    return auth, int(pid) if pid else None


def add(call: Call, data_dir: Path, *, name: str, backend: str, weight: int,
        description: str, nats_url: str, bundle_path: Path, tunnel: bool,
        nats_auth: Path | None = None) -> Bundle:
    """Enroll a site and write its bundle; returns the bundle."""
    if bundle_path.exists():
        raise FileExistsError(f"{bundle_path} exists; choose another --bundle path")
    key = SigningKey.generate()
    site = call("POST", "/sites", {"name": name, "backend": backend, "weight": weight,
                                   "description": description, "public_key": key.public_b64})
    user = password = prefix = ""
    nats = local_nats(data_dir, nats_auth)
    if nats is not None:
        auth, pid = nats
        user, password = auth.add_site(site["name"])
        prefix = inbox_prefix(site["name"])
        if pid:
            reload_server(pid)
    bundle = Bundle(site=site["name"], backend=backend, nats_url=nats_url, nats_user=user,
                    nats_password=SecretStr(password), inbox_prefix=prefix,
                    agent_key_pem=SecretStr(key.private_pem()), tunnel=tunnel)
    bundle.write(bundle_path)
    return bundle


def remove(call: Call, data_dir: Path, name: str, nats_auth: Path | None = None
           ) -> dict[str, Any]:
    """Remove a site: the log revokes its key and marks its servers lost; its NATS user
    is deleted so its credential stops working at once (once a NATS the operator runs
    has the new ``auth.conf``)."""
    result: dict[str, Any] = call("DELETE", f"/sites/{name}", None)
    nats = local_nats(data_dir, nats_auth)
    if nats is not None:
        auth, pid = nats
        if auth.remove_site(result["name"]) and pid:
            reload_server(pid)
    return result


def table(sites: list[dict[str, Any]]) -> str:
    """``fedhub site list`` output."""
    lines = [f"{'SITE':<16} {'BACKEND':<9} {'STATUS':<12} {'WEIGHT':<7} {'SERVERS':<8} FREE"]
    for s in sites:
        status = "drained" if s["weight"] == 0 and s["status"] == "online" else s["status"]
        cap = s.get("capacity") or {}
        free = ", ".join(f"{k}={v}" for k, v in cap.items() if k.startswith(("cpus", "free",
                                                                              "mem")))
        if cap.get("problem") and s["status"] == "online":
            free = f"problem: {cap['problem']}"
        lines.append(f"{s['name']:<16} {s['backend']:<9} {status:<12} {s['weight']:<7} "
                     f"{s['servers']:<8} {free}")
    return "\n".join(lines)
