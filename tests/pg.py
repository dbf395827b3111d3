"""A real PostgreSQL for tests: Debian's `postgresql` binaries, a cluster in a temporary folder
(initdb), one server on a free port of 127.0.0.1 (pg_ctl), a fresh database per test, stopped
at the end by the pid it started. As root it runs as the `postgres` user (PostgreSQL refuses root).

Missing PostgreSQL fails the tests that need it, loudly: it is never a skip (`scripts/test`
installs Debian's `postgresql` when it is missing).

As a program, for the test runs that need one PostgreSQL for many processes (scripts/test's
runs on nodes): `python3 tests/pg.py serve` starts one, prints its URL and stops it on SIGTERM or
SIGINT (or when its parent is gone); `create_database(url)` makes a fresh database there.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from procs import free_port

__all__ = ["Postgres", "create_database", "drop_unused_databases", "pg_url", "postgres"]

PASSWORD = "montybase-test"  # the cluster's password (scram): URLs carry user and password, as in production


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not found:
        pytest.fail("PostgreSQL is not installed (Debian: apt-get install postgresql; scripts/test does it as root)",
                    pytrace=False)
    return Path(found[-1]).parent


class Postgres:
    """One PostgreSQL server of a cluster made for the tests; `stop()` and `start()` it (the
    tests of an unavailable PostgreSQL), `url(database)` to reach it, `close()` for good."""

    def __init__(self) -> None:
        self.bin = _binaries()
        # In memory when the machine has a roomy tmpfs: CREATE DATABASE copies a template (about
        # 8 MB), 10 times faster there than on a disk under load (the behaviour suite makes one per
        # server; the JavaScript suite's 40 or so take 450 MB). A container's 64 MB /dev/shm is not.
        shm = Path("/dev/shm")
        in_memory = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * 1024**3
        self.root = Path(tempfile.mkdtemp(prefix="montybase-pg-", dir=shm if in_memory else None))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
        (self.root / "password").write_text(PASSWORD + "\n")
        if self.as_root:
            os.chown(self.root / "password", account.pw_uid, account.pw_gid)
        self.port = free_port()
        self.pid: int | None = None
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256",
                  f"--pwfile={self.root / 'password'}", "-E", "UTF8", "--locale=C", "--no-sync")
        self.start()

    def _run(self, program: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        command = [str(self.bin / program), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                                 f"{self.log.read_text() if self.log.exists() else ''}")
        return done

    def start(self) -> None:
        # fsync off: the tests stop PostgreSQL, never the machine. synchronous_commit stays on: a
        # commit's WAL is written (to the system, not the disk) before it is answered, so one that
        # was answered survives PostgreSQL's crash (off, an immediate stop lost answered commits).
        # max_connections for 3 nodes and the tests.
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                   "-c fsync=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (its connections are closed); `mode` "immediate" is a crash."""
        if self.pid is None:
            return
        done = self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)
        if done.returncode != 0:  # pg_ctl could not: end the postmaster this fixture started, by its pid
            try:
                os.kill(self.pid, signal.SIGQUIT)
            except ProcessLookupError:
                pass
            for _ in range(200):
                if not (self.data / "postmaster.pid").exists():
                    break
                time.sleep(0.05)
        self.pid = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        return create_database(self.url())

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def create_database(server_url: str) -> str:
    """A new, empty database on the PostgreSQL `server_url` reaches (as a user who may create
    databases); its URL. The name is random: several processes make databases on one server."""
    import psycopg

    name = f"test_{secrets.token_hex(8)}"
    with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def drop_unused_databases(server_url: str, urls: list[str]) -> list[str]:
    """Drop the databases of `urls` that no connection uses; the URLs of those still in use."""
    import psycopg

    names = {urlsplit(url).path.lstrip("/"): url for url in urls}
    with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as connection:
        used = {row[0] for row in connection.execute(
            "SELECT datname FROM pg_stat_activity WHERE datname = ANY(%s)", [list(names)])}
        for name in names.keys() - used:
            try:
                connection.execute(f'DROP DATABASE "{name}"')
            except psycopg.errors.ObjectInUse:  # a node connected meanwhile: next time
                used.add(name)
    return [names[name] for name in used]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    """The URL of a fresh database of the tests' PostgreSQL (the server is started again if a test stopped it)."""
    if postgres.pid is None:
        postgres.start()
    return postgres.create_database()


def serve() -> None:
    """Start a PostgreSQL, print its URL, stop it when told (SIGTERM, SIGINT) or when the parent
    that started this program is gone (killed before it could tell)."""
    told = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, told)  # taken by sigtimedwait below, never mid-start
    parent = os.getppid()
    server = Postgres()
    try:
        print(server.url(), flush=True)
        while signal.sigtimedwait(told, 1.0) is None and os.getppid() == parent:
            pass
    finally:
        server.close()


if __name__ == "__main__":
    if sys.argv[1:] != ["serve"]:
        sys.exit("usage: python3 tests/pg.py serve")
    serve()
