"""Issue 4 as a user meets it: a Slurm site and a Docker site enrolled in a running hub;
users spawn there through the API with resource options, follow the progress, use the
server through the edge proxy (with a kernel), and stop it."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx
import pytest

from tests.support.federation import wait_until
from tests.support.hub import Hub, enroll, wait_site_online
from tests.support.kernel import run_code

pytestmark = pytest.mark.integration


def add_site(hub: Hub, name: str, backend: str, config: dict[str, Any]) -> None:
    bundle = enroll(hub, name, backend, tunnel=False)
    data_dir = hub.root / name
    data_dir.mkdir()
    hub.add(f"agent-{name}", "fedhub.site_agent", {
        "FEDHUB_CREDENTIALS": str(bundle), "FEDHUB_DATA_DIR": str(data_dir),
        "FEDHUB_HEARTBEAT_INTERVAL": "1", "FEDHUB_STOP_SERVERS_ON_EXIT": "true",
        "FEDHUB_BACKEND_CONFIG": json.dumps(config)}, "").start()
    wait_site_online(hub, name, timeout=90)


def use_server(hub: Hub, user: str, site: str, options: dict[str, Any]) -> list[str]:
    """Spawn with options, follow progress, run code through the proxy, stop; returns the
    progress messages the user saw."""
    with hub.admin() as api:
        assert api.post(f"/users/{user}", json={}).status_code in (201, 409)
        token = api.post(f"/users/{user}/tokens", json={}).json()["token"]
        declared = {s["name"]: s for s in api.get("/sites").json()}[site]["options"]
    auth = {"Authorization": f"token {token}"}
    base = f"{hub.url}/hub/api/users/{user}/server"
    with httpx.Client(timeout=120, headers=auth) as client:
        bad = client.post(base, json={"site": site, "user_options": {"cores": "2; reboot"}})
        assert bad.status_code == 400 and "cores" in bad.json()["message"]
        r = client.post(base + "?wait=0", json={"site": site, "user_options": options})
        assert r.status_code in (201, 202), r.text
        messages = []
        with client.stream("GET", base + "/progress", timeout=300) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    messages.append(event["message"])
                    if event.get("ready") or event.get("failed"):
                        break
        assert "ready" in messages[-1].lower(), messages
        status = client.get(f"{hub.url}/user/{user}/api/status")
        assert status.status_code == 200
        kid = client.post(f"{hub.url}/user/{user}/api/kernels", json={}).json()["id"]
        ws = hub.url.replace("http", "ws") + f"/user/{user}/api/kernels/{kid}/channels"
        assert asyncio.run(run_code(ws, "import os; os.cpu_count() > 0", auth)) == "True"
        assert client.delete(base).status_code in (202, 204)
        wait_until(lambda: client.get(f"{hub.url}/user/{user}/api/status").status_code == 503,
                   timeout=120)
    assert {o["name"] for o in declared} >= set(options)
    return messages


def test_a_slurm_site_through_the_hub(hub: Hub, slurm_cluster: None) -> None:
    add_site(hub, "hpc", "slurm", {"poll_interval": 0.5, "default_memory": "512M",
                                   "default_walltime": 30, "max_cores": os.cpu_count() or 1,
                                   "job_name_prefix": "fedhub-e2e"})
    with hub.admin() as api:
        hpc = {s["name"]: s for s in api.get("/sites").json()}["hpc"]
    partitions = next(o for o in hpc["options"] if o["name"] == "partition")["choices"]
    assert "debug" in partitions
    messages = use_server(hub, "slurmer", "hpc",
                          {"partition": "debug", "cores": "1", "walltime": "20m"})
    assert any("job" in m.lower() for m in messages), messages


def test_a_docker_site_through_the_hub(hub: Hub, image: str) -> None:
    add_site(hub, "cloud", "docker", {"default_profile": "small", "profiles": {
        "small": {"image": image, "cpus": 1, "memory": "768M"}}})
    use_server(hub, "docker-user", "cloud", {"profile": "small"})
