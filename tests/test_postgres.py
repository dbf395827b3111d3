"""Several nodes sharing one PostgreSQL (server/postgres.py): nodes in this process first, then
real server processes; a real PostgreSQL started by tests/pg.py."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/pg.py, tests/procs.py

from pg import pg_url, postgres  # noqa: E402,F401  (fixtures)
from server.accounts import SESSIONS, token_key  # noqa: E402
from server.config import DEFAULTS, open_database  # noqa: E402
from server.database import Database  # noqa: E402
from server.errors import AlreadyExistsError, ConflictError, UnauthenticatedError, UnavailableError  # noqa: E402
from server.postgres import PostgresStorage  # noqa: E402
from server.session import Service  # noqa: E402


def node(url: str, **options: Any) -> Database:
    """One node of the database at `url`, in this process."""
    return Database(PostgresStorage(url, poll_seconds=options.pop("poll_seconds", 1.0), **options))


def eventually(check, timeout: float = 10.0) -> Any:
    """`check()`'s first true value within `timeout` seconds (it fails the test otherwise)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(0.01)


def write(database: Database, op: str, path: list[str], value: Any = None, **extra: Any) -> dict:
    params = {"path": path, **({"value": value} if value is not None else {}), **extra}
    return database.write(op, params, None)[0]


def read(database: Database, *path: str) -> Any:
    return database.get({"path": list(path)}, None)[0]["value"]


@pytest.fixture
def nodes(pg_url):
    """Two nodes of one database, closed after the test."""
    opened = [node(pg_url), node(pg_url)]
    yield opened
    for database in opened:
        database.close()


# Nodes in this process


def test_a_write_on_one_node_is_read_on_the_other(nodes):
    a, b = nodes
    write(a, "set", ["scores", "amor"], {"score": 100})
    assert eventually(lambda: read(b, "scores", "amor")) == {"score": 100}
    write(b, "delete", ["scores", "amor"])
    eventually(lambda: read(a, "scores", "amor") is None)


def test_a_node_started_later_loads_the_documents_and_follows(pg_url):
    a = node(pg_url)
    try:
        write(a, "set", ["rooms", "r1"], {"name": "lobby"})
        write(a, "set", ["rooms", "r1", "messages", "m1"], {"text": "hi"})
        write(a, "add", ["rooms"], {"name": "generated"})
        b = node(pg_url)
        try:
            assert read(b, "rooms", "r1", "messages") == {"m1": {"text": "hi"}}
            assert read(b, "rooms") == read(a, "rooms")
            assert b.seq == a.seq
            write(a, "delete", ["rooms", "r1"])  # its subcollection goes along, there too
            eventually(lambda: read(b, "rooms", "r1", "messages") == {})
            c = node(pg_url)
            assert read(c, "rooms", "r1", "messages") == {} and read(c, "rooms") == read(a, "rooms")
            c.close()
        finally:
            b.close()
    finally:
        a.close()


def test_add_with_a_key_taken_on_another_node_is_already_exists(nodes):
    a, b = nodes
    write(a, "set", ["users", "alice"], {"name": "first"})
    # b has not necessarily applied a's write yet: the check is made against PostgreSQL's latest state.
    with pytest.raises(AlreadyExistsError):
        b.write("add", {"path": ["users", "alice"], "value": {"name": "second"}}, None)
    assert read(b, "users", "alice") == {"name": "first"}


def test_two_nodes_adding_one_key_at_once_one_wins(pg_url):
    for round_number in range(5):
        a, b = node(pg_url), node(pg_url)
        outcomes: list[str] = []
        start = threading.Barrier(2)

        def add(database: Database, name: str) -> None:
            start.wait()
            try:
                database.write("add", {"path": ["keys", f"k{round_number}"], "value": {"by": name}}, None)
                outcomes.append("won")
            except AlreadyExistsError:
                outcomes.append("already exists")

        threads = [threading.Thread(target=add, args=(a, "a")), threading.Thread(target=add, args=(b, "b"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(outcomes) == ["already exists", "won"]
        a.close()
        b.close()


def test_increments_and_transactions_from_two_nodes_lose_nothing(nodes):
    a, b = nodes
    write(a, "set", ["counters", "c"], {"n": 0, "t": 0})
    eventually(lambda: read(b, "counters", "c"))

    def increments(database: Database) -> None:
        for _ in range(50):
            database.write("update", {"path": ["counters", "c"], "fields": [["n", {"$increment": 1}]]}, None)

    def transactions(database: Database) -> None:
        done = 0
        while done < 20:
            seen = read(database, "counters", "c")
            try:
                database.transact({"reads": [{"path": ["counters", "c", "t"], "value": seen["t"]}],
                                   "writes": [{"op": "update", "path": ["counters", "c"], "fields": [["t", seen["t"] + 1]]}]},
                                  None)
                done += 1
            except ConflictError:
                pass  # another node's write came first: read again

    threads = [threading.Thread(target=work, args=(database,)) for database in (a, b) for work in (increments, transactions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert eventually(lambda: read(a, "counters", "c") == {"n": 100, "t": 40})
    assert eventually(lambda: read(b, "counters", "c") == {"n": 100, "t": 40})


def test_a_listener_on_one_node_sees_every_write_of_the_other_in_order(nodes):
    a, b = nodes
    seen: list[Any] = []
    b.watch({"path": ["feed", "doc"]}, lambda tags, message: seen.append(message["value"]), "t")
    for number in range(30):
        write(a, "set", ["feed", "doc"], {"n": number})
    eventually(lambda: seen and seen[-1] == {"n": 29})
    assert seen == [None] + [{"n": number} for number in range(30)]


def test_a_lagging_node_reloads_when_the_changes_it_missed_were_dropped(pg_url):
    a = node(pg_url, keep_changes=5)
    b = node(pg_url, poll_seconds=3600)  # its follower is woken by notifications only
    try:
        b.storage._stopping.set()  # b stops following, as if cut off from PostgreSQL
        b.storage._follower.join(10)
        events: list[Any] = []
        b.watch({"query": {"path": ["items"]}}, lambda tags, message: events.append(message), "t")
        write(a, "set", ["items", "gone"], {"n": 0})
        write(b, "set", ["items", "kept"], {"n": 0})
        for number in range(1, 1001):  # the thousandth change drops those older than the last 5
            write(a, "set", ["items", "kept"], {"n": number})
        write(a, "delete", ["items", "gone"])
        write(b, "set", ["items", "new"], {"n": 1})  # b is behind the dropped changes: it reloads first
        assert read(b, "items") == {"kept": {"n": 1000}, "new": {"n": 1}}
        reloaded = sorted((change["type"], change["id"]) for change in events[-2]["changes"])
        assert reloaded == [("modified", "kept"), ("removed", "gone")]  # the difference, as one change
        assert [(change["type"], change["id"]) for change in events[-1]["changes"]] == [("added", "new")]
    finally:
        a.close()
        b.close()


def test_a_session_made_on_one_node_resumes_on_another(nodes):
    a, b = nodes
    accounts_a, accounts_b = Service(a).accounts, Service(b).accounts
    signed = accounts_a.sign_up({"email": "ann@example.com", "password": "correct horse"})
    # at once: b looks again in PostgreSQL for a session it does not know yet
    assert accounts_b.resume({"token": signed["token"]}) == {"uid": signed["uid"], "email": "ann@example.com"}
    assert accounts_b.sign_in({"email": "ann@example.com", "password": "correct horse"})["uid"] == signed["uid"]
    accounts_b.sign_out({"token": signed["token"]})
    eventually(lambda: a.document((SESSIONS, token_key(signed["token"]))) is None)
    with pytest.raises(UnauthenticatedError):
        accounts_a.resume({"token": signed["token"]})


def test_writes_are_unavailable_while_postgres_is_down_and_reads_go_on(postgres, pg_url):
    a = node(pg_url, connect_seconds=1, statement_seconds=2)
    try:
        write(a, "set", ["d", "x"], {"n": 1})
        postgres.stop()
        try:
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(UnavailableError):
                    write(a, "set", ["d", "x"], {"n": 2})
                assert time.monotonic() - started < 5
            assert read(a, "d", "x") == {"n": 1}
        finally:
            postgres.start()
        eventually(lambda: _writes(a))
        assert read(a, "d", "x") == {"n": 3}
        b = node(pg_url)
        assert read(b, "d", "x") == {"n": 3}
        b.close()
    finally:
        a.close()


def _writes(database: Database) -> bool:
    try:
        write(database, "set", ["d", "x"], {"n": 3})
        return True
    except UnavailableError:
        return False


def test_a_postgresql_url_in_the_config_opens_a_node(pg_url, tmp_path):
    database = open_database({**DEFAULTS, "storageBucket": pg_url}, pg_url)
    try:
        assert isinstance(database.storage, PostgresStorage)
        write(database, "set", ["a", "b"], {"c": 1})
    finally:
        database.close()


def test_an_unreachable_postgresql_at_start_is_a_clear_error(postgres):
    url = postgres.url("postgres").replace(f":{postgres.port}/", ":1/")
    with pytest.raises(UnavailableError, match=r"PostgreSQL at postgresql://postgres:\*\*\*@127.0.0.1:1/postgres"):
        node(url, connect_seconds=1)
