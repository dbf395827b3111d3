"""Fixtures: the behaviour suite runs against every backend and storage."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from python_client import Montybase
from server.channel import ClientHandshake, Records
from server.config import client_config, create_config, open_database
from server.database import Database
from server.storage import MemoryStorage
from server.transport import Limits, MontybaseServer

BACKENDS = ["memory", "file", "remote"]


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
        self.database = database or open_database(self.config, ":memory:")
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
