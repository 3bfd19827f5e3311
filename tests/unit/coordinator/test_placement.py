"""``site=auto``: where a server goes, and the reason recorded with it."""

from __future__ import annotations

import pytest

from fedhub.coordinator.errors import BadRequest
from fedhub.coordinator.pages import describe_free
from fedhub.coordinator.sitecli import table
from fedhub.coordinator.sites import SiteView, place


def site(name: str, *, status: str = "online", weight: int = 1, servers: int = 0,
         **capacity: float) -> SiteView:
    return SiteView(name, "local", "", weight, status, None, servers, dict(capacity))


def test_the_heaviest_weight_wins_then_free_cores_then_fewest_servers() -> None:
    assert place([site("a", weight=1, cpus=64), site("b", weight=2, cpus=1)])[0] == "b"
    assert place([site("a", cpus=4, load1=3.5), site("b", cpus=4, load1=0.5)])[0] == "b"
    assert place([site("a", free_cpus=8, servers=5), site("b", free_cpus=8, servers=1)])[0] == "b"


def test_drained_and_offline_sites_take_nothing_and_the_reason_says_so() -> None:
    name, reason = place([site("a", weight=0, cpus=64), site("b", status="offline", cpus=64),
                          site("c", cpus=1)])
    assert name == "c"
    assert "a (drained)" in reason and "b (offline)" in reason and reason.startswith("auto:")


def test_no_usable_site_is_a_clear_error() -> None:
    with pytest.raises(BadRequest, match="no site is online and accepting servers .a drained"):
        place([site("a", weight=0), site("b", status="offline")])


def test_garbage_capacity_counts_as_no_free_cores() -> None:
    assert place([site("a", cpus="many"), site("b", cpus=2)])[0] == "b"  # type: ignore[arg-type]


def test_a_site_whose_agent_reports_a_problem_is_passed_over_and_shown() -> None:
    trouble = "Slurm does not answer (sinfo: Unable to contact slurm controller)"
    hpc = SiteView("hpc", "slurm", "", 5, "online", None, 0, {"problem": trouble})
    name, reason = place([hpc, site("cloud", cpus=2)])
    assert name == "cloud" and f"hpc ({trouble})" in reason  # its weight of 5 did not win
    with pytest.raises(BadRequest, match="Slurm does not answer"):
        place([hpc])
    assert describe_free(hpc) == trouble  # the home page
    listed = table([hpc.model()]).splitlines()[1]  # fedhub site list
    assert listed.startswith("hpc") and listed.endswith(f"problem: {trouble}")
