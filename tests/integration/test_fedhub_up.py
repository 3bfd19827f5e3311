"""``fedhub up`` as a new user runs it: one command, Ctrl-C stops everything (servers
included), and running it again keeps users and history."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fedhub.events.errors import StoreUnavailable
from fedhub.events.jetstream import JetStreamStore
from fedhub.schemas.bundle import Bundle
from tests.support.services import free_port

pytestmark = pytest.mark.integration


def start_up(data_dir: Path, port: int, log: Path) -> tuple[subprocess.Popen[str], str, str]:
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedhub.coordinator.cli", "--data-dir", str(data_dir), "up",
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = log.read_text()
        if m := re.search(r"admin user: (\S+)\s+password: (\S+)", text.split("stopped.")[-1]):
            return proc, m.group(1), m.group(2)
        assert proc.poll() is None, text
        time.sleep(0.2)
    raise AssertionError(f"fedhub up did not start: {log.read_text()}")


def jupyter_processes(data_dir: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-f", f"root_dir={data_dir}"], capture_output=True, text=True)
    return out.stdout.split()


def test_up_runs_the_hub_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    data_dir, port, log = tmp_path / "data", free_port(), tmp_path / "up.log"
    proc, user, password = start_up(data_dir, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        assert f"running at {url}/hub/login" in log.read_text()
        browser = httpx.Client(base_url=url, timeout=60)
        r = browser.post("/hub/login", data={"username": user, "password": password})
        assert r.status_code == 302
        home = browser.get("/hub/home")
        assert re.search(r"<td>local</td><td>local</td><td class=\"status-online\">online</td>",
                         home.text), home.text
        xsrf = re.search(r'name="xsrf" content="([^"]*)"', home.text)
        assert xsrf
        r = browser.post("/hub/api/users/admin/server", json={"site": "local"},
                         headers={"X-XSRFToken": xsrf.group(1)})
        assert r.status_code in (201, 202), r.text
        for _ in range(300):
            if browser.get("/user/admin/api/status").status_code == 200:
                break
            time.sleep(0.2)
        assert browser.get("/user/admin/api/status").status_code == 200
        assert jupyter_processes(data_dir)
        created = subprocess.run(
            [sys.executable, "-m", "fedhub.coordinator.cli", "--data-dir", str(data_dir),
             "user", "add", "zoe", "--password", "zoe-password-1"],
            capture_output=True, text=True, timeout=60)
        assert created.returncode == 0 and "created user zoe" in created.stdout, created.stderr
        # a second `fedhub up` on the same data directory says why it cannot start and
        # leaves the running hub alone: the CLI still finds it
        second = subprocess.run(
            [sys.executable, "-m", "fedhub.coordinator.cli", "--data-dir", str(data_dir), "up",
             "--port", str(free_port())], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "already running" in second.stderr, second.stderr
        assert "zoe" in fedhub(data_dir, "user", "list")
        browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, log.read_text()
    assert "stopped." in log.read_text()
    assert jupyter_processes(data_dir) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/hub/login")

    # again: same admin, users and history are still there
    proc, user2, password2 = start_up(data_dir, port, log)
    try:
        assert (user2, password2) == (user, password)
        token = (data_dir / "cli-token").read_text().strip()
        users = httpx.get(url + "/hub/api/users", headers={"Authorization": f"token {token}"})
        assert {u["name"] for u in users.json()} >= {"admin", "zoe"}
        audit = subprocess.run(
            [sys.executable, "-m", "fedhub.coordinator.cli", "--data-dir", str(data_dir),
             "audit", "--json", "--user", "admin"], capture_output=True, text=True, timeout=60)
        rows = [json.loads(line) for line in audit.stdout.splitlines()]
        stopped = [r for r in rows if r["event"] == "ServerStopped"]
        assert stopped and "shut down" in stopped[-1]["details"]["reason"]
        operate_a_second_site(data_dir, tmp_path)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, log.read_text()


def fedhub(data_dir: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "fedhub.coordinator.cli", "--data-dir",
                          str(data_dir), *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def site_row(data_dir: Path, name: str) -> str:
    rows = [line for line in fedhub(data_dir, "site", "list").splitlines()
            if line.split()[0] == name]
    return rows[0] if rows else ""


def operate_a_second_site(data_dir: Path, tmp_path: Path) -> None:
    """fedhub site add / list / drain / remove, with a real agent joining from a bundle."""
    bundle = tmp_path / "extra.json"
    said = fedhub(data_dir, "site", "add", "extra", "--backend", "local", "--bundle",
                  str(bundle), "--description", "a second site")
    assert "enrolled site extra" in said and bundle.stat().st_mode & 0o777 == 0o600
    assert "unknown" in site_row(data_dir, "extra")  # enrolled, its agent not yet seen
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_")}
    env.update({"FEDHUB_CREDENTIALS": str(bundle), "FEDHUB_HEARTBEAT_INTERVAL": "1",
                "FEDHUB_DATA_DIR": str(tmp_path / "extra-site")})
    agent = subprocess.Popen([sys.executable, "-m", "fedhub.site_agent"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while "online" not in site_row(data_dir, "extra"):
            assert time.monotonic() < deadline, site_row(data_dir, "extra")
            time.sleep(0.5)
        fedhub(data_dir, "site", "drain", "extra")
        assert "drained" in site_row(data_dir, "extra")
        said = fedhub(data_dir, "site", "remove", "extra")
        assert "credentials revoked" in said
        assert site_row(data_dir, "extra") == ""
        # the NATS server itself now refuses the removed site's credential
        creds = Bundle.read(bundle)
        with pytest.raises(StoreUnavailable):
            asyncio.run(JetStreamStore.connect(creds.nats_url_with_credentials(),
                                               create_streams=False, connect_timeout=5))
    finally:
        agent.terminate()
        agent.wait(60)
