"""The remote backend with a list of endpoints: real server processes with the same keys (one
database's nodes, as far as a client can tell), one killed by its pid; the client goes on with
the next, and its listeners get a fresh full snapshot there. Also the client config's checks."""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/procs.py

from conftest import NO_SERVER, server_bucket  # noqa: E402
from procs import Proc, free_port, server_command  # noqa: E402
from python_client import ConnectionLostError, InvalidArgumentError, Montybase, doc  # noqa: E402
from server.config import client_config, create_config  # noqa: E402

PASSWORD = "correct horse battery"


class Node:
    """`python -m server` in its own folder (its own storage) with a shared montybase.json's keys."""

    def __init__(self, folder: Path, config_path: Path):
        folder.mkdir()
        config = json.loads(config_path.read_text())
        config["storageBucket"] = server_bucket(config["storageBucket"])  # a storage of its own
        (folder / "montybase.json").write_text(json.dumps(config))
        self.folder = folder
        self.proc = Proc(server_command("--config", "montybase.json", "--port", "0"), cwd=folder)
        self.url = self.proc.endpoint()

    def admin(self) -> Montybase:
        return Montybase(api=self.url, config=self.folder / "montybase.json")


@pytest.fixture
def nodes(tmp_path):
    """Servers A and B with the same keys, each holding `where/node` = its own name."""
    config = create_config(tmp_path / "montybase.json")
    started: list[Node] = []
    try:
        for name in ("a", "b"):
            node = Node(tmp_path / name, tmp_path / "montybase.json")
            started.append(node)
            with node.admin() as admin:
                doc(admin, "where", "node").set({"name": name})
        yield config, started
    finally:
        for node in started:
            node.proc.cleanup()


def client_for(tmp_path: Path, config: dict[str, Any], endpoints: Any) -> Montybase:
    path = tmp_path / "client-config.json"
    path.write_text(json.dumps({**client_config(config, ""), "endpoint": endpoints}))
    return Montybase(config=path)


def answering_node(db: Montybase) -> str:
    return doc(db, "where", "node").get()["name"]


def test_a_call_after_the_first_server_is_killed_succeeds_on_the_next(nodes, tmp_path):
    config, (a, b) = nodes
    with client_for(tmp_path, config, [a.url, b.url]) as db:
        assert answering_node(db) == "a"
        a.proc.kill9()
        assert answering_node(db) == "b"  # the read lost with A is asked again, on B
        doc(db, "scores").add({"score": 7}, key="after")
        with b.admin() as admin:
            assert doc(admin, "scores", "after").get() == {"score": 7}


def test_a_read_in_flight_when_its_server_dies_is_answered_by_the_next_and_a_write_is_connection_lost(
        nodes, tmp_path):
    config, (a, b) = nodes
    with client_for(tmp_path, config, [a.url, b.url]) as db:
        assert answering_node(db) == "a"
        os.kill(a.proc.pid, signal.SIGSTOP)  # A takes the requests and answers none
        with ThreadPoolExecutor(2) as calls:
            reading = calls.submit(answering_node, db)
            writing = calls.submit(doc(db, "scores").add, {"score": 1}, "lost")
            time.sleep(0.3)
            a.proc.kill9()
            assert reading.result(timeout=10) == "b"
            with pytest.raises(ConnectionLostError):  # A may have applied it: not sent again
                writing.result(timeout=10)


def test_a_refused_connect_goes_on_with_the_next_endpoint(nodes, tmp_path):
    config, (_, b) = nodes
    nobody = f"ws://127.0.0.1:{free_port()}"
    with client_for(tmp_path, config, [nobody, b.url]) as db:
        assert answering_node(db) == "b"
        assert db._backend.url == b.url


def test_a_listener_gets_a_fresh_full_snapshot_from_the_next_server(nodes, tmp_path):
    config, (a, b) = nodes
    snapshots: queue.Queue[list[dict[str, Any]]] = queue.Queue()
    with client_for(tmp_path, config, [a.url, b.url]) as db:
        doc(db, "where").on_snapshot(lambda snapshot: snapshots.put(snapshot.docs))
        assert snapshots.get(timeout=10) == [{"id": "node", "value": {"name": "a"}}]
        a.proc.kill9()
        assert snapshots.get(timeout=10) == [{"id": "node", "value": {"name": "b"}}]
        with b.admin() as admin:
            doc(admin, "where", "later").set({"name": "b"})
        assert [item["id"] for item in snapshots.get(timeout=10)] == ["later", "node"]


def test_a_session_the_next_server_does_not_know_ends_and_the_handle_goes_on_signed_out(nodes, tmp_path):
    config, (a, b) = nodes  # separate storage: B has no record of A's sessions
    with client_for(tmp_path, config, [a.url, b.url]) as db:
        db.sign_up("player@example.org", PASSWORD)
        a.proc.kill9()
        assert answering_node(db) == "b"  # the resume B refused is answered before this read
        assert db.current_user is None


@NO_SERVER
def test_all_endpoints_away_is_connection_lost_naming_the_last_tried(tmp_path):
    config = create_config(tmp_path / "montybase.json")
    away = [f"ws://127.0.0.1:{free_port()}", f"ws://127.0.0.1:{free_port()}"]
    with client_for(tmp_path, config, away) as db:
        started = time.monotonic()
        with pytest.raises(ConnectionLostError, match=away[1]):
            answering_node(db)
        assert time.monotonic() - started < 5


@NO_SERVER
@pytest.mark.parametrize("endpoints, where, said", [
    ([], "/endpoint", "non-empty"),
    (["ws://127.0.0.1:1", "ftp://127.0.0.1:2"], "/endpoint/1", "'ftp://127.0.0.1:2' is not a ws://"),
    (["ws://127.0.0.1:1", 7], "/endpoint/1", "7 is not of type 'string'"),
    ("127.0.0.1:8765", "/endpoint", "is not a ws://, wss://, http:// or https:// address"),
], ids=["empty-list", "bad-scheme", "not-a-string", "no-scheme"])
def test_a_bad_endpoint_in_the_client_config_is_invalid_argument_naming_it(tmp_path, endpoints, where, said):
    config = create_config(tmp_path / "montybase.json")
    with pytest.raises(InvalidArgumentError) as caught:
        client_for(tmp_path, config, endpoints)
    assert caught.value.data == {"path": where, "file": str(tmp_path / "client-config.json")}
    assert f": {where}: " in str(caught.value) and said in str(caught.value)
    assert not (tmp_path / "db.json").exists()  # not taken for an embedded database's settings


@NO_SERVER
def test_an_empty_api_list_is_invalid_argument(tmp_path):
    config = create_config(tmp_path / "montybase.json")
    with pytest.raises(InvalidArgumentError, match="non-empty list of endpoints"):
        Montybase(api=[], config=tmp_path / "client-config.json")
    assert config["apiKey"] in (tmp_path / "client-config.json").read_text()
