"""The ``fedhub`` command: ``up``, ``user``, ``token``, ``audit`` and the components.

Component subcommands run the component's own ``__main__`` (a separate process image in
production), so the coordinator package never imports the agent or the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import runpy
import sys
from pathlib import Path
from typing import Any

import httpx

from fedhub.coordinator import sitecli
from fedhub.coordinator.embedded import CLI_TOKEN_FILE, read_runtime, up
from fedhub.coordinator.natsauth import HUB_USER, AuthFile
from fedhub.schemas.config import default_data_dir

COMPONENTS = {"coordinator": "fedhub.coordinator", "site-agent": "fedhub.site_agent",
              "edge-proxy": "fedhub.edge_proxy"}


PAGINATION = "application/jupyterhub-pagination+json"


class CliError(Exception):
    """A failure to report in one line, exit code 1."""


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("FEDHUB_DATA_DIR") or default_data_dir())


def _runtime(args: argparse.Namespace) -> dict[str, str]:
    return read_runtime(_data_dir(args))


def _client(args: argparse.Namespace) -> httpx.Client:
    url = args.url or os.environ.get("FEDHUB_URL") or _runtime(args).get("url")
    if not url:
        raise CliError("no hub found: is `fedhub up` running? (or pass --url / FEDHUB_URL)")
    token = args.token or os.environ.get("FEDHUB_TOKEN")
    token_file = _data_dir(args) / CLI_TOKEN_FILE
    if not token and token_file.exists():
        token = token_file.read_text().strip()
    if not token:
        raise CliError("no API token: pass --token or set FEDHUB_TOKEN")
    return httpx.Client(base_url=url.rstrip("/") + "/hub/api",
                        headers={"Authorization": f"token {token}"}, timeout=30)


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None,
          **request: Any) -> Any:
    """The JSON answer of one API call (``request``: httpx's params, headers...); raises
    CliError with the hub's message for an error."""
    try:
        with _client(args) as client:
            resp = client.request(method, path, json=body, **request)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the hub: {exc}") from exc
    if resp.status_code >= 400:
        try:
            message = resp.json().get("message", resp.text)
        except ValueError:
            message = resp.text
        raise CliError(f"{resp.status_code}: {message}")
    return resp.json() if resp.content else None


def _user(args: argparse.Namespace) -> int:
    if args.action == "add":
        body: dict[str, Any] = {"admin": args.admin}
        password = _new_password(args)
        if password is not None:
            body["password"] = password
        user = _call(args, "POST", f"/users/{args.name}", body)
        print(f"created user {user['name']}{' (admin)' if user['admin'] else ''}")
    elif args.action == "list":
        for user in _all_users(args):
            running = ", ".join(f"{n or '(default)'}:{s['status']}"
                                for n, s in user["servers"].items())
            print(f"{user['name']:<24} {'admin' if user['admin'] else '':<6} {running}")
    elif args.action == "delete":
        _call(args, "DELETE", f"/users/{args.name}")
        print(f"deleted user {args.name}")
    return 0


def _new_password(args: argparse.Namespace) -> str | None:
    """The password ``user add`` sets: from --password, --password-stdin or a prompt;
    None only with --no-password. Never an empty one: a user created without a password
    by mistake could not log in, and nothing would have said so."""
    if args.no_password:
        if args.password is not None or args.password_stdin:
            raise CliError("--no-password cannot go with --password or --password-stdin")
        return None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password is not None:
        password = args.password
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
    else:
        raise CliError("no password given and no terminal to ask for one: pass --password, "
                       "--password-stdin, or --no-password for a user who only uses API "
                       "tokens")
    if not password:
        raise CliError("the password is empty")
    return password


def _all_users(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every user, a page of 200 at a time."""
    found: list[dict[str, Any]] = []
    while True:
        page = _call(args, "GET", "/users", params={"offset": len(found), "limit": 200},
                     headers={"Accept": PAGINATION})
        if isinstance(page, list):  # a hub that does not page
            return page
        found += page["items"]
        if page["_pagination"]["next"] is None or not page["items"]:
            return found


def _token(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"note": args.note}
    if args.expires_in:
        body["expires_in"] = args.expires_in
    result = _call(args, "POST", f"/users/{args.name}/tokens", body)
    print(result["token"])
    return 0


def _site(args: argparse.Namespace) -> int:
    def call(method: str, path: str, body: Any) -> Any:
        return _call(args, method, path, body)

    data_dir = _data_dir(args)
    if args.action == "add":
        nats_url = args.nats_url or _runtime(args).get("nats_address")
        if not nats_url:
            raise CliError("where do agents reach NATS? pass --nats-url nats://HOST:PORT")
        bundle_path = Path(args.bundle or f"fedhub-site-{args.name}.json")
        try:
            bundle = sitecli.add(call, data_dir, name=args.name, backend=args.backend,
                                 weight=args.weight, description=args.description,
                                 nats_url=nats_url, bundle_path=bundle_path,
                                 tunnel=not args.direct, nats_auth=args.nats_auth)
        except FileExistsError as exc:
            raise CliError(str(exc)) from exc
        print(f"enrolled site {bundle.site} ({bundle.backend}); credentials: {bundle_path}")
        if args.nats_auth is not None:
            print(_RELOAD_HINT.format(conf=args.nats_auth / "auth.conf"))
        elif not bundle.nats_user:
            print("  note: NATS is not managed here; pass --nats-auth DIR (see `fedhub "
                  "nats-auth`), or give the site a credential limited to its subjects "
                  "(fedhub.coordinator.natsauth.site_permissions)")
        config = "" if bundle.backend == "local" else " --config site.toml"
        print(f"  on the site run: fedhub site-agent --credentials {bundle_path.name}{config}")
        if config:
            print(f"  (site.toml: the {bundle.backend} backend's settings; see the README)")
    elif args.action == "list":
        print(sitecli.table(call("GET", "/sites", None)))
    elif args.action == "drain":
        call("PATCH", f"/sites/{args.name}", {"weight": 0})
        print(f"site {args.name} drained: it takes no new servers (running ones continue); "
              f"`fedhub site weight {args.name} N` opens it again")
    elif args.action == "weight":
        call("PATCH", f"/sites/{args.name}", {"weight": args.weight})
        print(f"site {args.name} weight set to {args.weight}")
    elif args.action == "remove":
        result = sitecli.remove(call, data_dir, args.name, args.nats_auth)
        print(f"site {result['name']} removed; credentials revoked; "
              f"{result['servers_lost']} server(s) marked lost")
        if result["servers_lost"]:
            print("  the hub can no longer reach them: stop them at the site (its agent, cut "
                  "off now, leaves them running)")
        if args.nats_auth is not None:
            print(_RELOAD_HINT.format(conf=args.nats_auth / "auth.conf"))
    return 0


_RELOAD_HINT = ("  NATS users changed: install {conf} on every NATS server (as the nats-auth "
                "secret on Kubernetes) and reload them (nats-server --signal reload)")


def _nats_auth(args: argparse.Namespace) -> int:
    """Create the hub's NATS user (and DIR/auth.conf) in ``args.dir`` if missing."""
    auth = AuthFile(args.dir)
    auth.ensure_hub()
    print(f"NATS users in {auth.conf_path}; the hub's password (user {HUB_USER}) is in "
          f"{auth.password_path}: give coordinators and edge proxies "
          f"nats://{HUB_USER}:PASSWORD@HOST:4222 in FEDHUB_NATS_URL")
    print(_RELOAD_HINT.format(conf=auth.conf_path))
    return 0


def _audit(args: argparse.Namespace) -> int:
    from fedhub.coordinator.audit import Filter, parse_time, print_audit
    from fedhub.events.jetstream import JetStreamStore

    nats_url = args.nats_url or os.environ.get("FEDHUB_NATS_URL") or _runtime(args).get(
        "nats_url")
    if not nats_url:
        raise CliError("no log found: is `fedhub up` running? (or pass --nats-url)")
    try:
        flt = Filter(user=args.user, site=args.site, commands=args.commands,
                     since=parse_time(args.since) if args.since else None,
                     until=parse_time(args.until) if args.until else None)
    except ValueError as exc:
        raise CliError(str(exc)) from exc

    async def run() -> int:
        store = await JetStreamStore.connect(nats_url, create_streams=False, name="fedhub-audit")
        try:
            return await print_audit(store, flt, args.json)
        finally:
            await store.close()

    try:
        asyncio.run(run())
    except BrokenPipeError:  # the reader had enough (`fedhub audit | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
        return 0
    except Exception as exc:  # noqa: BLE001 - one readable line for any store failure
        raise CliError(f"audit failed: {exc}") from exc
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedhub", description="A federated, event-sourced hub.")
    p.add_argument("--data-dir", help="data directory (default ~/.local/share/fedhub)")
    p.add_argument("--url", help="hub URL for API commands (default: the running `fedhub up`)")
    p.add_argument("--token", help="API token (default: FEDHUB_TOKEN or the up's CLI token)")
    sub = p.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="run the embedded hub (NATS, coordinator, proxy, local site)")
    u.add_argument("--port", type=int, default=int(os.environ.get("FEDHUB_PORT", "8000")))
    u.add_argument("--host", default="127.0.0.1")
    usr = sub.add_parser("user", help="manage users")
    usr_sub = usr.add_subparsers(dest="action", required=True)
    add = usr_sub.add_parser("add")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true")
    add.add_argument("--password", help="the password (default: asked for)")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    add.add_argument("--no-password", action="store_true",
                     help="no password, so no login page: the user only uses API tokens")
    usr_sub.add_parser("list")
    delete = usr_sub.add_parser("delete")
    delete.add_argument("name")
    tok = sub.add_parser("token", help="manage API tokens")
    tok_sub = tok.add_subparsers(dest="action", required=True)
    create = tok_sub.add_parser("create")
    create.add_argument("name")
    create.add_argument("--note", default="created with fedhub token create")
    create.add_argument("--expires-in", type=int)
    site = sub.add_parser("site", help="enroll and manage sites")
    site_sub = site.add_subparsers(dest="action", required=True)
    sadd = site_sub.add_parser("add", help="enroll a site and write its credentials bundle")
    sadd.add_argument("name")
    sadd.add_argument("--backend", required=True,
                      choices=["local", "slurm", "docker", "ssh", "htcondor"])
    sadd.add_argument("--weight", type=int, default=1)
    sadd.add_argument("--description", default="")
    sadd.add_argument("--bundle", help="bundle path (default ./fedhub-site-NAME.json)")
    sadd.add_argument("--nats-url", help="NATS address the site's agent dials (default: up's)")
    sadd.add_argument("--direct", action="store_true",
                      help="the proxy can reach the site's servers directly (no tunnel)")
    nats_auth_help = ("directory of the NATS users of a NATS you run (see `fedhub "
                      "nats-auth`); the site's user is added there")
    sadd.add_argument("--nats-auth", type=Path, help=nats_auth_help)
    site_sub.add_parser("list", help="sites, health, capacity, running servers")
    sdrain = site_sub.add_parser("drain", help="stop new placements at a site")
    sdrain.add_argument("name")
    sweight = site_sub.add_parser("weight", help="set a site's placement weight")
    sweight.add_argument("name")
    sweight.add_argument("weight", type=int)
    sremove = site_sub.add_parser("remove", help="remove a site and revoke its credentials")
    sremove.add_argument("name")
    sremove.add_argument("--nats-auth", type=Path, help=nats_auth_help)
    nauth = sub.add_parser("nats-auth", help="create the hub's user for a NATS you run "
                                             "(writes DIR/auth.conf for nats-server)")
    nauth.add_argument("dir", type=Path)
    aud = sub.add_parser("audit", help="print the timeline from the log")
    aud.add_argument("--user", help="only this user's events (read by subject: fast)")
    aud.add_argument("--site", help="only this site's events and its servers' events")
    aud.add_argument("--since", help="ISO time or relative (30m, 2h, 7d)")
    aud.add_argument("--until", help="like --since; reading stops 5 minutes past it, "
                     "as writers' clocks may disagree")
    aud.add_argument("--json", action="store_true", help="JSON lines")
    aud.add_argument("--commands", action="store_true",
                     help="include commands to sites and their raw reports")
    aud.add_argument("--nats-url", help="the log's NATS, with a user that may read it "
                     "(default: FEDHUB_NATS_URL or the running `fedhub up`'s)")
    for name in COMPONENTS:
        sub.add_parser(name, help=f"run the {name} on its own", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMPONENTS:
        sys.argv = [f"fedhub {argv[0]}", *argv[1:]]
        runpy.run_module(COMPONENTS[argv[0]], run_name="__main__", alter_sys=True)
        return 0
    args = parser().parse_args(argv)
    try:
        if args.command == "up":
            return up(_data_dir(args), args.host, args.port)
        if args.command == "user":
            return _user(args)
        if args.command == "token":
            return _token(args)
        if args.command == "audit":
            return _audit(args)
        if args.command == "site":
            return _site(args)
        if args.command == "nats-auth":
            return _nats_auth(args)
    except CliError as exc:
        print(f"fedhub: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
