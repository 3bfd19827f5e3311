"""A new user's first session in a real Chromium (playwright-core, driven by new_user.mjs):
log in, start a server on site ``local`` and watch its progress, run ``1+1`` in a new
notebook in JupyterLab, stop the server, and find the "Server not running" page."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hub import Hub, start_hub
from tests.support.services import missing

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
PASSWORD = "correct-horse-1"


@pytest.fixture(scope="module")
def node() -> str:
    """Node, Chromium and playwright-core, checked before any hub is started."""
    binary = shutil.which("node")
    if binary is None:
        missing("node not installed (Node 18+ runs the browser tests)")
    if not Path(CHROMIUM).exists():
        missing(f"{CHROMIUM} not found (apt-get install chromium, or set CHROMIUM)")
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        missing("playwright-core not installed (npm ci in tests/browser; scripts/test.sh does it)")
    return str(binary)


@pytest.fixture(scope="module")
def hub(node: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    running = start_hub(tmp_path_factory.mktemp("hub"), nats_url)
    # The Start button's POST waits up to slow_spawn_timeout for the server before the page
    # moves to the progress page, and a local JupyterLab is ready well within the default,
    # so the progress page would only replay a finished spawn. With 0 the browser gets the
    # 202 at once, as it would from a slow site, and watches the spawn live.
    coordinator = running.components["coordinator"]
    coordinator.env["FEDHUB_SLOW_SPAWN_TIMEOUT"] = "0"
    try:
        coordinator.restart()
        yield running
    finally:
        running.stop()


def test_new_user_runs_code_in_the_browser(hub: Hub, node: str, tmp_path: Path) -> None:
    with hub.admin() as api:
        r = api.post("/users/alice", json={"password": PASSWORD})
        assert r.status_code == 201, r.text
    run = subprocess.run([node, str(HERE / "new_user.mjs"), hub.url, "alice", PASSWORD,
                          str(tmp_path)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CHROMIUM": CHROMIUM})
    print(run.stdout, run.stderr, sep="\n")
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    summary = json.loads(run.stdout.strip().splitlines()[-1])

    assert summary["loginUrl"].startswith("/hub/login")
    assert summary["localSite"] == "online"
    values = [p["progress"] for p in summary["progress"]]
    assert values == sorted(values), summary["progress"]
    middle = [p["message"] for p in summary["progress"] if 0 < p["progress"] < 100]
    assert middle, f"no intermediate progress seen: {summary['progress']}"
    assert summary["progress"][-1]["progress"] == 100
    assert "ready" in summary["progress"][-1]["message"]
    assert summary["labUrl"] == "/user/alice/lab"
    assert summary["output"] == "2"
    assert "Stop" not in summary["afterStop"]
    assert summary["notRunning"] == {"status": 424, "url": "/hub/user/alice/",
                                     "heading": "Server not running", "startAgain": True}
    assert summary["pageErrors"] == []
    for name in ("home", "progress", "lab", "stopped", "not-running"):
        assert Path(summary["screenshots"][name]).stat().st_size > 0
