"""Fixtures: the behaviour suite runs against every backend and storage.

`MONTYBASE_TEST_STORAGE` chooses where the servers the tests start keep their data. Unset: file
storage (in memory for the servers started in this process). `postgresql`: every server is a
node of a fresh database of a PostgreSQL started for the run (tests/pg.py); a `postgresql://…`
URL (a server where the tests may create databases, such as `python3 tests/pg.py serve` prints):
the same on that server. In PostgreSQL mode only the behaviour suite runs (the modules of
`POSTGRES_MODULES`), without its embedded backends, and without the tests marked
`not_on_postgres` (each says why: the file storage, or no storage at all).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from python_client import Montybase
from pg import Postgres, create_database, drop_unused_databases
from server.channel import ClientHandshake, Records
from server.config import client_config, create_config, is_postgres_url, open_database, public_key
from server.database import Database
from server.storage import MemoryStorage
from server.transport import Limits, MontybaseServer

STORAGE = os.environ.get("MONTYBASE_TEST_STORAGE", "")
ON_POSTGRES = STORAGE != ""
# The behaviour suite: the modules whose tests use served databases. Left out: the engine and its
# parts driven in-process (test_database, test_query, test_tree, test_watch, test_rules_unit,
# test_session, test_rpc, test_paths, test_channel, test_wire, test_errors, test_logs,
# test_config): no server, no storage under them but memory; the file storage, its recovery and
# the command line's start-up over files (test_storage, test_durability, test_commands_data,
# test_cli); the packaging and scripts (test_packaging, test_scripts); the nodes themselves
# (test_postgres: on the PostgreSQL it starts, in every run).
POSTGRES_MODULES = {
    "test_accounts", "test_admins", "test_bad_input", "test_client", "test_commands", "test_doors", "test_fuzz",
    "test_listeners", "test_monitor", "test_query_cases", "test_read_cases", "test_remote", "test_rules",
    "test_seed_readme", "test_transport", "test_web",
}
BACKENDS = ["remote"] if ON_POSTGRES else ["memory", "file", "remote"]
CLIENTS = ["remote"] if ON_POSTGRES else ["embedded", "remote"]  # the shared cases' clients
# The mark of the tests with no served database: the engine, an embedded database or a client
# alone (a test of the file storage says why in a mark of its own).
NO_SERVER = pytest.mark.not_on_postgres("no served database: the engine, an embedded database or a client alone")
_started: Postgres | None = None  # the PostgreSQL this run started (MONTYBASE_TEST_STORAGE=postgresql)
_made: list[str] = []  # the databases server_bucket made that are not dropped yet


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "not_on_postgres(reason): a test left out in PostgreSQL mode (reason: why)")
    if ON_POSTGRES and STORAGE != "postgresql" and not is_postgres_url(STORAGE):
        raise pytest.UsageError(f"MONTYBASE_TEST_STORAGE={STORAGE!r}: 'postgresql' or a postgresql:// URL")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if ON_POSTGRES and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return collection_path.stem not in POSTGRES_MODULES or None
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ON_POSTGRES:
        left_out = [item for item in items if item.get_closest_marker("not_on_postgres")]
        if left_out:
            config.hook.pytest_deselected(items=left_out)
            items[:] = [item for item in items if not item.get_closest_marker("not_on_postgres")]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _started is not None:
        _started.close()


def _postgres_url() -> str:
    """The URL of the PostgreSQL where the tests make their databases."""
    global _started
    if STORAGE != "postgresql":
        return STORAGE
    if _started is None:
        _started = Postgres()
    return _started.url()


def server_bucket(default: str = ":memory:") -> str:
    """Where a server a test starts keeps its data: `default`, or in PostgreSQL mode a fresh
    database (its URL)."""
    if not ON_POSTGRES:
        return default
    _made.append(create_database(_postgres_url()))
    return _made[-1]


@pytest.fixture(autouse=True)
def _drop_finished_databases() -> Iterator[None]:
    """In PostgreSQL mode, after each test, drop the databases no node uses any more (those of
    servers a module shares stay until their last node closes): a PostgreSQL in memory holds them."""
    yield
    if _made:
        _made[:] = drop_unused_databases(_postgres_url(), _made)


def server_config(path: Path, **fields: Any) -> dict[str, Any]:
    """A fresh `montybase.json` at `path` (create_config) with `fields` over it, for a server
    started as a program; in PostgreSQL mode its `storageBucket` is a fresh database, whatever
    `fields` say."""
    config = create_config(path)
    if ON_POSTGRES:
        fields["storageBucket"] = server_bucket()
    if fields:
        config = {**config, **fields}
        path.write_text(json.dumps(config, indent=2))
    return config


def json_equal(a: Any, b: Any) -> bool:
    """The tests' own JSON equality (an oracle apart from the engine's): 1 equals 1.0, true
    never equals 1, a string never equals a number."""
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if ta in (int, float) and tb in (int, float):
        return a == b
    if ta is not tb:
        return False
    if ta is list:
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if ta is dict:
        return a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    return a == b


class LoopThread:
    """An asyncio loop in a background thread, where test servers run."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-servers", daemon=True)
        self.thread.start()

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    runner = LoopThread()
    yield runner
    runner.close()


class Served:
    """A real Montybase server on 127.0.0.1, port 0, with the config files a client needs."""

    def __init__(self, loop_thread: LoopThread, folder: Path, database: Database | None = None, **options: Any):
        self.loop_thread = loop_thread
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config = create_config(folder / "montybase.json")
        self.database = database or open_database(self.config, server_bucket())
        self.server = MontybaseServer(
            self.database,
            keys={"client": self.config["apiKey"], "admin": self.config["adminKey"]},
            server_key=self.config["serverKey"],
            limits=options.pop("limits", Limits()),
            **options,
        )
        host, port = loop_thread.run(self.server.start("127.0.0.1", 0))
        self.url = f"ws://{host}:{port}"
        self.client_config_path = folder / "client-config.json"
        self.client_config_path.write_text(json.dumps(client_config(self.config, self.url)))
        self.admin_config_path = folder / "montybase.json"

    def client(self, admin: bool = False, **options: Any) -> Montybase:
        config = self.admin_config_path if admin else self.client_config_path
        return Montybase(api=self.url, config=config, **options)

    def stop(self) -> None:
        self.loop_thread.run(self.server.stop())


def connect_from(url: str, source: str = "127.0.0.1", receive_buffer: int | None = None,
                 **options: Any) -> ClientConnection:
    """A websockets sync connection to a test server from a chosen loopback address (every
    127.x.y.z is on the loopback interface on Linux), as a stranger at that address.
    `receive_buffer` fixes the socket's receive buffer: Linux otherwise grows it up to
    net.ipv4.tcp_rmem's maximum (32 MB on some machines), which may swallow a whole test's
    worth of notifications to a client that reads none."""
    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect: no autotuning
        sock.settimeout(5)
        sock.bind((source, 0))
        sock.connect((host, int(port)))
        return connect(url, sock=sock, compression=None, proxy=None, open_timeout=5, legacy=True, **options)
    except BaseException:
        sock.close()
        raise


class Stranger:
    """A client-key connection from a chosen loopback address, driven by hand: the handshake,
    then sealed requests; the notifications that arrive meanwhile are kept in `notifications`."""

    def __init__(self, served: Served, source: str = "127.0.0.1", kid: str = "client", **options: Any):
        self.ws = connect_from(served.url, source, **options)
        key = served.config["apiKey"] if kid == "client" else served.config["adminKey"]
        self.records, _ = hand_handshake(self.ws, kid, key, public_key(served.config["serverKey"]))
        self.notifications: list[dict[str, Any]] = []
        self._ids = iter(range(1, 1_000_000))

    def send(self, method: str, params: dict[str, Any]) -> int:
        request_id = next(self._ids)
        request = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        self.ws.send(self.records.seal(json.dumps(request).encode()))
        return request_id

    def receive(self, timeout: float = 10) -> Any:
        return json.loads(self.records.open(self.ws.recv(timeout=timeout)))

    def answer(self, request_id: int, timeout: float = 10) -> dict[str, Any]:
        """The answer to `request_id`, keeping the notifications that come first."""
        while True:
            message = self.receive(timeout)
            if isinstance(message, dict) and message.get("id") == request_id:
                return message
            self.notifications.extend(message if isinstance(message, list) else [message])

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return self.answer(self.send(method, params))

    def close_code(self, timeout: float = 10) -> int | None:
        """Read (and drop) frames until the server closes the connection: its close code (None
        if it stays open until `timeout`)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed:
            return self.ws.close_code
        except TimeoutError:
            pass
        return None

    def close(self) -> None:
        self.ws.close()


def hand_handshake(ws: Any, kid: str, key: str, server_public: str | None = None,
                   nonce: bytes | None = None) -> tuple[Records, dict[str, Any]]:
    """The MBSC1 handshake driven by hand over a websockets sync connection: the session, and
    hello's result (for tests that recompute the keys)."""
    def step(method: str, params: dict[str, Any]) -> dict[str, Any]:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 0, "method": method, "params": params}))
        return json.loads(ws.recv(timeout=5))

    client = ClientHandshake(kid, key, server_public, nonce=nonce)
    hello = step("hello", client.hello())["result"]
    auth, session = client.finish(hello)
    client.confirm(step("auth", auth)["result"])
    return session, hello


@pytest.fixture
def served(loop_thread, tmp_path) -> Iterator[Served]:
    """A server for one test (stopped afterwards)."""
    server = Served(loop_thread, tmp_path)
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def db(request, tmp_path, monkeypatch):
    """A fresh database: embedded on a MemoryStorage, embedded on files, or a real server over
    the network, used with the admin key (a server-side Python program)."""
    monkeypatch.chdir(tmp_path)
    server = None
    if request.param == "memory":
        handle = Montybase(storageBucket=MemoryStorage())
    elif request.param == "file":
        handle = Montybase(config=tmp_path / "montybase.json")
    else:
        server = Served(request.getfixturevalue("loop_thread"), tmp_path / "server")
        handle = server.client(admin=True)
    yield handle
    handle.close()
    if server is not None:
        server.stop()
