"""The backend contract for the local-process backend (real jupyter lab processes)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fedhub.site_agent.backends import local
from fedhub.site_agent.backends.local import LocalProcessBackend
from tests.support.backend_contract import BackendContract, BrokenStatus, Fresh, Leftovers

pytestmark = pytest.mark.integration


class TestLocalBackendContract(BackendContract):
    @pytest.fixture
    def site_dir(self, tmp_path: Path) -> Path:
        return tmp_path

    @pytest.fixture
    def fresh_backend(self, site_dir: Path) -> Fresh:
        return lambda: LocalProcessBackend(
            site_dir, jupyter_command=[sys.executable, "-m", "jupyterlab"], ready_timeout=90)

    @pytest.fixture
    def backend(self, fresh_backend: Fresh) -> LocalProcessBackend:
        made = fresh_backend()
        assert isinstance(made, LocalProcessBackend)
        return made

    @pytest.fixture
    def leftovers(self, site_dir: Path) -> Leftovers:
        def find() -> list[str]:
            out = subprocess.run(["pgrep", "-f", f"root_dir={site_dir}"], capture_output=True,
                                 text=True)
            return out.stdout.split()
        return find

    @pytest.fixture
    def broken_status(self, monkeypatch: pytest.MonkeyPatch) -> BrokenStatus:
        @contextmanager
        def broken() -> Iterator[None]:
            with monkeypatch.context() as m:
                def unreadable(*_a: object, **_k: object) -> object:
                    raise OSError("/proc is not readable")
                m.setattr(local, "proc_state", unreadable)
                yield
        return broken
