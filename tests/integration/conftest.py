"""Fixtures shared by the integration modules: a running hub, the Docker site's image and
a Slurm cluster. Defined once here so each is one fixture, whichever modules use it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hub import Browser, Hub, start_hub
from tests.support.services import missing

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCKER_SETUP = DEPLOY / "docker" / "setup-test-env.sh"
SLURM_SETUP = DEPLOY / "slurm" / "setup-test-cluster.sh"


@pytest.fixture(scope="module")
def hub(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A running hub (coordinator, edge proxy, local site agent) on the module's NATS;
    the logged-in browsers of its tests are closed with it."""
    running = start_hub(tmp_path_factory.mktemp("hub"), nats_url)
    try:
        yield running
    finally:
        Browser.close_all()
        running.stop()


@pytest.fixture(scope="session")
def image() -> str:
    """The single-user image tag, building it (and starting dockerd) once if needed."""
    if os.geteuid() != 0:
        missing("the Docker site tests need root (they start dockerd and build the image)")
    try:
        done = subprocess.run(["bash", str(DOCKER_SETUP)], capture_output=True, text=True,
                              timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        missing(f"{DOCKER_SETUP.name} could not run: {exc}")
    if done.returncode != 0:
        missing(f"{DOCKER_SETUP.name} failed (dockerd or image build):\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def _slurm_node_ready() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%T"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(
        s.strip() in ("idle", "mixed", "allocated") for s in out.stdout.splitlines())


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """A running one-node cluster (started by the setup script if needed)."""
    if _slurm_node_ready():
        return
    if os.geteuid() != 0:
        missing("Slurm is not running and starting it needs root "
                f"(run {SLURM_SETUP.relative_to(DEPLOY.parent)} as root)")
    try:
        done = subprocess.run(["bash", str(SLURM_SETUP)], capture_output=True, text=True,
                              timeout=900)
    except subprocess.TimeoutExpired:
        missing("the Slurm setup script did not finish within 15 minutes")
    if done.returncode != 0 or not _slurm_node_ready():
        missing(f"cannot start a Slurm cluster: {(done.stderr or done.stdout)[-1500:]}")
