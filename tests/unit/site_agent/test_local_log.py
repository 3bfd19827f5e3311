"""Reading a local server's log after a failed start: the tail for the user, and whether
the start lost its port to another process (then the agent retries on a new one)."""

from __future__ import annotations

from pathlib import Path

from fedhub.site_agent.backends.local import last_lines, log_end, log_tail, lost_the_port

TAKEN = ("[Errno 98] Address already in use\n"
         "ERROR | The port 9001 is already in use, trying another port.\n")


def test_a_start_that_lost_its_port_is_recognised_by_its_own_port() -> None:
    log = f"--- fedhub: starting spawn s1 on port 9001\n{TAKEN}"
    assert lost_the_port(log, 9001)
    assert not lost_the_port(log, 9002)  # another start's port


def test_only_the_last_start_counts() -> None:
    earlier = f"--- fedhub: starting spawn s1 on port 9001\n{TAKEN}"
    retried = earlier + "--- fedhub: starting spawn s1 on port 9001\nTraceback: ImportError\n"
    assert not lost_the_port(retried, 9001)  # the last start failed for another reason
    assert not lost_the_port("Traceback: ImportError\n", 9001)  # no start marker at all


def test_the_tail_is_the_end_of_the_file_and_empty_when_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "server.log"
    path.write_text("".join(f"line {i}\n" for i in range(5000)))
    assert log_end(path).endswith("line 4999\n") and len(log_end(path)) <= 16384
    assert log_tail(path, lines=2) == "line 4998\nline 4999"
    assert last_lines("a\nb\nc", lines=2, limit=3) == "b\nc"
    assert log_end(tmp_path / "missing.log") == "" == log_tail(tmp_path / "missing.log")
