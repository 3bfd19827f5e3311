"""``fedhub user add``: a password is given, asked for, or explicitly left out; never
silently empty (checked before the hub is called, so no hub is needed here)."""

from __future__ import annotations

import io

import pytest

from fedhub.coordinator.cli import main

NOWHERE = ["--url", "http://127.0.0.1:9", "--token", "t"]  # never reached by these cases


@pytest.mark.parametrize(("args", "stdin", "said"), [
    ([], "", "no password given and no terminal to ask for one"),
    (["--password-stdin"], "", "the password is empty"),
    (["--password-stdin"], "\n", "the password is empty"),
    (["--password", ""], "", "the password is empty"),
    (["--no-password", "--password", "x"], "", "--no-password cannot go with"),
])
def test_user_add_refuses_a_missing_or_empty_password(
        args: list[str], stdin: str, said: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))  # not a terminal
    assert main([*NOWHERE, "user", "add", "carol", *args]) == 1
    err = capsys.readouterr().err
    assert said in err and "cannot reach the hub" not in err


def test_user_add_without_a_password_on_request_goes_to_the_hub(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    assert main([*NOWHERE, "user", "add", "carol", "--no-password"]) == 1
    assert "cannot reach the hub" in capsys.readouterr().err  # it got as far as the call
