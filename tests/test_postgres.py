"""Several nodes sharing one PostgreSQL (server/postgres.py): nodes in this process first, then
real server processes; a real PostgreSQL started by tests/pg.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/pg.py, tests/procs.py

from conftest import Stranger  # noqa: E402
from pg import pg_url, postgres  # noqa: E402,F401  (fixtures)
from procs import Proc, server_command  # noqa: E402
from python_client import AlreadyExistsError as AlreadyExists  # noqa: E402
from python_client import Montybase, MontybaseError, doc, increment  # noqa: E402
from server.accounts import SESSIONS, token_key  # noqa: E402
from server.config import DEFAULTS, Limits, client_config, create_config, load_config, open_database  # noqa: E402
from server.database import Database  # noqa: E402
from server.errors import (  # noqa: E402
    AlreadyExistsError, ConflictError, InvalidArgumentError, NotFoundError, RateLimitedError, UnauthenticatedError,
    UnavailableError, ValidationError,
)
from server.postgres import PostgresStorage, redacted  # noqa: E402
from server.rules import Principal, Rules  # noqa: E402
from server.session import CLOSE_SIGNED_OUT, Service  # noqa: E402
from server.storage import FileStorage  # noqa: E402


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


def add_by_transactions(database: Database, times: int) -> None:
    """Add 1 to counters/c's `t` `times` times, each by a transaction that read it: after a
    CONFLICT (a write before it, in its group or on another node, came first) it reads again."""
    done = 0
    for _ in range(1000):
        seen = read(database, "counters", "c")
        try:
            database.transact({"reads": [{"path": ["counters", "c", "t"], "value": seen["t"]}],
                               "writes": [{"op": "update", "path": ["counters", "c"], "fields": [["t", seen["t"] + 1]]}]},
                              None)
        except ConflictError:
            continue  # read again
        done += 1
        if done == times:
            return
    raise AssertionError(f"{times} transactions did not all commit in 1,000 tries")


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
            # A batch's order holds in the stored documents: a set, its collection deleted, a set again.
            a.transact({"writes": [{"op": "set", "path": ["rooms", "r2", "messages", "m1"], "value": {"n": 1}},
                                   {"op": "delete", "path": ["rooms"]},
                                   {"op": "set", "path": ["rooms", "r3"], "value": {"n": 3}},
                                   {"op": "set", "path": ["rooms", "r3"], "value": {"n": 4}}]}, None)
            a.transact({"writes": [{"op": "set", "path": ["sets", "s"], "value": {"n": 1}},
                                   {"op": "set", "path": ["sets", "s"], "value": {"n": 2}}]}, None)
            d = node(pg_url)
            stored = {path: docs for path, docs in d.tree.collections.items() if docs}
            assert stored == {("rooms",): {"r3": {"n": 4}}, ("sets",): {"s": {"n": 2}}}
            d.close()
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
        add_by_transactions(database, 20)

    threads = [threading.Thread(target=work, args=(database,)) for database in (a, b) for work in (increments, transactions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert eventually(lambda: read(a, "counters", "c") == {"n": 100, "t": 40})
    assert eventually(lambda: read(b, "counters", "c") == {"n": 100, "t": 40})


def test_a_write_computed_on_a_state_another_node_moved_on_from_is_computed_again(pg_url):
    """A node first commits a write in one round trip, computed against what it holds; when
    another node committed since, PostgreSQL refuses it and the write is computed again after
    those changes: an increment counts both, and a write on a document only the other node has
    finds it. After a refusal the node writes in two steps until a write finds no other's before it."""
    import psycopg

    from server.postgres import STREAM_LOCK

    a, b = node(pg_url), node(pg_url, poll_seconds=3600)
    try:
        write(a, "set", ["counters", "c"], {"n": 0})
        eventually(lambda: read(b, "counters", "c"))
        b.storage._stopping.set()  # b stops following: what a writes next, b does not hold
        b.storage._follower.join(10)
        increment = [["n", {"$increment": 1}]]
        write(a, "update", ["counters", "c"], fields=increment)
        assert read(b, "counters", "c") == {"n": 0} and b.storage.alone
        write(b, "update", ["counters", "c"], fields=increment)  # computed on n = 0 first: refused
        assert read(b, "counters", "c") == {"n": 2} and not b.storage.alone
        write(b, "set", ["counters", "x"], {"n": 0})  # two steps, and nobody else wrote
        assert b.storage.alone
        write(a, "set", ["counters", "new"], {"n": 10})
        write(b, "update", ["counters", "new"], fields=increment)  # not found here first: read again
        assert read(b, "counters") == {"c": {"n": 2}, "x": {"n": 0}, "new": {"n": 11}}
        assert eventually(lambda: read(a, "counters") == read(b, "counters"))
        assert b.storage.append_latest([(1, [["set", ["counters", "c"], {"n": -1}]])]) is False  # nothing written
        with psycopg.connect(pg_url, autocommit=True) as other:  # and the stream's lock is free at once
            assert other.execute("SELECT pg_try_advisory_lock(%s)", (STREAM_LOCK,)).fetchone()[0] is True
        c = node(pg_url)
        assert read(c, "counters") == read(b, "counters")
        c.close()
    finally:
        a.close()
        b.close()


def test_a_write_computed_again_spends_its_rate_limit_tokens_once(pg_url):
    """A write refused in one round trip, or that had nothing to commit, is computed again: the
    rate-limit tokens the first computation spent are given back first."""
    rules = Rules({"items": {"read": "public", "write": "public", "rate": {"create": "3/min"},
                             "schema": {"type": "object", "required": ["score"]}}})
    a = node(pg_url)
    b = Database(PostgresStorage(pg_url, poll_seconds=3600), rules=rules)
    player = Principal("client", None, 7, "192.0.2.7")
    try:
        b.storage._stopping.set()  # b stops following: what a writes next, b does not hold
        b.storage._follower.join(10)
        write(a, "set", ["items", "by-a"], {"score": 0})
        b.write("set", {"path": ["items", "p1"], "value": {"score": 1}}, player)  # refused first, then computed again
        assert not b.storage.alone
        write(b, "set", ["other", "x"], {"n": 0})  # two steps, nobody else wrote: one round trip next
        assert b.storage.alone
        with pytest.raises(ValidationError):  # nothing to commit: computed again in two steps
            b.write("set", {"path": ["items", "bad"], "value": {"name": "no score"}}, player)
        b.write("set", {"path": ["items", "p2"], "value": {"score": 2}}, player)  # the third token
        with pytest.raises(RateLimitedError):
            b.write("set", {"path": ["items", "p3"], "value": {"score": 3}}, player)
        assert sorted(read(b, "items")) == ["by-a", "p1", "p2"]
    finally:
        a.close()
        b.close()


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


def test_a_follower_applies_the_changes_its_notifications_carry_without_reading_them(pg_url):
    """A change that fits in NOTIFY's payload reaches other nodes with its notification (no read
    of montybase_changes, which node b's role may no longer read); a larger one is read."""
    import psycopg

    opened = [node(pg_url)]
    try:
        a = opened[0]
        role = f"reader_{os.getpid()}_{time.monotonic_ns()}"
        with psycopg.connect(pg_url, autocommit=True) as connection:
            connection.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'montybase-test'")
            connection.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {role}")
            tables = "montybase_state, montybase_documents, montybase_changes"
            connection.execute(f"GRANT SELECT, INSERT ON {tables} TO {role}")
            opened += [node(pg_url.replace("//postgres:", f"//{role}:"), poll_seconds=60), node(pg_url)]
            b, c = opened[1:]
            write(a, "set", ["d", "first"], {"n": 0})
            eventually(lambda: read(b, "d", "first"), 5)  # b's follower is past its first read
            connection.execute(f"REVOKE SELECT ON montybase_changes FROM {role}")
        write(a, "set", ["d", "small"], {"n": 1})
        assert eventually(lambda: read(b, "d", "small"), 5) == {"n": 1}
        write(a, "delete", ["d", "small"])
        eventually(lambda: read(b, "d", "small") is None, 5)
        large = {"text": "x" * 10_000}  # more than NOTIFY carries: read from montybase_changes
        write(a, "set", ["d", "large"], large)
        assert eventually(lambda: read(c, "d", "large"), 5) == large
    finally:
        for database in opened:
            database.close()


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


def test_a_session_resumes_from_memory_while_postgres_is_down(postgres, pg_url):
    a = node(pg_url, connect_seconds=1, statement_seconds=2)
    try:
        accounts = Service(a).accounts
        signed = accounts.sign_up({"email": "ann@example.com", "password": "correct horse"})
        postgres.stop()
        try:
            assert accounts.resume({"token": signed["token"]})["uid"] == signed["uid"]
            with pytest.raises(UnauthenticatedError):
                accounts.resume({"token": "not-a-session"})
        finally:
            postgres.start()
    finally:
        a.close()


def _writes(database: Database) -> bool:
    try:
        write(database, "set", ["d", "x"], {"n": 3})
        return True
    except UnavailableError:
        return False


# Group commit: the writes waiting on a node go to PostgreSQL in one transaction


def _run(*works: Any) -> None:
    threads = [threading.Thread(target=work) for work in works]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)


def _counted_work(database: Database, name: str, outcomes: list[str]) -> list[Any]:
    """A writer's three kinds of work on `database`: increments of one counter, a transaction
    that increments another, `add`s racing for the same keys."""

    def increments() -> None:
        for _ in range(40):
            database.write("update", {"path": ["counters", "c"], "fields": [["n", {"$increment": 1}]]}, None)

    def transactions() -> None:
        add_by_transactions(database, 10)

    def adds() -> None:
        for number in range(10):
            try:
                database.write("add", {"path": ["keys", f"k{number}"], "value": {"by": name}}, None)
                outcomes.append("won")
            except AlreadyExistsError:
                outcomes.append("already exists")

    return [increments, transactions, adds]


def test_many_writers_on_one_node_count_exactly(pg_url):
    a = node(pg_url)
    try:
        write(a, "set", ["counters", "c"], {"n": 0, "t": 0})
        outcomes: list[str] = []
        _run(*(work for writer in range(6) for work in _counted_work(a, f"w{writer}", outcomes)))
        assert read(a, "counters", "c") == {"n": 240, "t": 60}
        assert sorted(outcomes).count("won") == 10 and len(outcomes) == 60
        b = node(pg_url)  # what PostgreSQL holds is what the node holds
        assert read(b, "counters", "c") == {"n": 240, "t": 60}
        assert b.documents(("keys",)) == a.documents(("keys",))
        b.close()
        grouped = _transactions(pg_url)
        assert max(grouped.values()) > 1  # writes went to PostgreSQL together
    finally:
        a.close()


def test_many_writers_on_two_nodes_count_exactly(nodes):
    a, b = nodes
    write(a, "set", ["counters", "c"], {"n": 0, "t": 0})
    eventually(lambda: read(b, "counters", "c"))
    outcomes: list[str] = []
    _run(*(work for database, name in ((a, "a"), (b, "b")) for writer in range(3)
           for work in _counted_work(database, f"{name}{writer}", outcomes)))
    assert eventually(lambda: read(a, "counters", "c") == {"n": 240, "t": 60})
    assert eventually(lambda: read(b, "counters", "c") == {"n": 240, "t": 60})
    assert sorted(outcomes).count("won") == 10 and len(outcomes) == 60
    assert eventually(lambda: b.documents(("keys",)) == a.documents(("keys",)))


def _transactions(url: str) -> dict[int, int]:
    """The transactions that wrote montybase_changes: how many changes each wrote."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute("SELECT xmin::text, count(*) FROM montybase_changes GROUP BY 1").fetchall()
    return {int(xmin): count for xmin, count in rows}


def _queued(database: Database, writes: list[tuple[str, dict]], outcomes: dict[int, Any], stream: Any) -> list[threading.Thread]:
    """Start `writes` on `database` while another holds the stream's lock: the first leads and
    waits for the lock, the others queue behind it (then commit as one group)."""
    from server.postgres import STREAM_LOCK

    def attempt(number: int, op: str, params: dict) -> None:
        try:
            outcomes[number] = (database.transact(params, None) if op == "transact" else database.write(op, params, None))[0]
        except Exception as exc:
            outcomes[number] = exc

    stream.execute("SELECT pg_advisory_lock(%s)", (STREAM_LOCK,))
    threads = []
    for number, (op, params) in enumerate(writes):
        threads.append(threading.Thread(target=attempt, args=(number, op, params)))
        threads[-1].start()
        if number == 0:  # the leader took its group (itself) and waits for the stream
            eventually(lambda: database._leading and not database._queue, 5)
    eventually(lambda: len(database._queue) == len(writes) - 1, 5)
    return threads


def test_writes_queued_longer_than_the_write_wait_are_unavailable_and_the_lead_passes_on(pg_url):
    """While another holds the stream's lock, each group's leader waits for it up to the
    statement timeout, then hands the lead to the first write still queued; writes queued for
    longer than `write_wait` give up. Every write answers UNAVAILABLE, and the node writes on."""
    import psycopg

    a = node(pg_url, connect_seconds=0.2, statement_seconds=1)  # write_wait: 2.2 s; a group: 1 s (the 4th waits 3)
    try:
        outcomes: dict[int, Any] = {}
        writes = [("set", {"path": ["d", f"w{number}"], "value": {"n": number}}) for number in range(1 + 3 * 64)]
        with psycopg.connect(pg_url, autocommit=True) as stream:
            threads = _queued(a, writes, outcomes, stream)
            for thread in threads:
                thread.join(30)
        assert len(outcomes) == len(writes)
        assert all(isinstance(outcome, UnavailableError) for outcome in outcomes.values()), outcomes
        messages = {str(outcome) for outcome in outcomes.values()}
        assert "the storage did not take this node's writes in time; try again" in messages  # the last ones
        assert any("statement timeout" in message for message in messages)  # the groups tried
        assert not a._queue and not a._leading
        write(a, "set", ["d", "after"], {"n": 1})
        assert read(a, "d") == {"after": {"n": 1}}
    finally:
        a.close()


def test_a_write_of_a_group_that_fails_its_checks_fails_alone(pg_url):
    import psycopg

    a = node(pg_url)
    try:
        write(a, "set", ["counters", "c"], {"n": 0, "t": 0})
        write(a, "set", ["keys", "taken"], {"by": "first"})
        outcomes: dict[int, Any] = {}
        increment = ("update", {"path": ["counters", "c"], "fields": [["n", {"$increment": 1}]]})
        with psycopg.connect(pg_url, autocommit=True) as stream:
            threads = _queued(a, [
                ("set", {"path": ["d", "leader"], "value": {"n": 1}}),
                increment,
                ("add", {"path": ["keys", "new"], "value": {"by": "second"}}),
                ("add", {"path": ["keys", "taken"], "value": {"by": "third"}}),  # taken before
                ("add", {"path": ["keys", "new"], "value": {"by": "fourth"}}),  # taken by the group's write before it
                increment,
                # a transaction that read t=0: the group's first transaction changes it first
                ("transact", {"reads": [{"path": ["counters", "c", "t"], "value": 0}],
                              "writes": [{"op": "update", "path": ["counters", "c"], "fields": [["t", 1]]}]}),
                ("transact", {"reads": [{"path": ["counters", "c", "t"], "value": 0}],
                              "writes": [{"op": "update", "path": ["counters", "c"], "fields": [["t", 2]]}]}),
                ("update", {"path": ["d", "missing"], "fields": [["n", 1]]}),
            ], outcomes, stream)
            assert read(a, "keys", "new") is None  # nothing is applied before the group committed
        for thread in threads:
            thread.join(30)
        assert isinstance(outcomes[3], AlreadyExistsError) and isinstance(outcomes[4], AlreadyExistsError)
        assert outcomes[3].data["document"] == ["keys", "taken"] and outcomes[4].data["document"] == ["keys", "new"]
        assert isinstance(outcomes[7], ConflictError)
        assert isinstance(outcomes[8], NotFoundError)
        assert not any(isinstance(outcomes[number], Exception) for number in (0, 1, 2, 5, 6))
        assert read(a, "counters", "c") == {"n": 2, "t": 1}
        assert read(a, "keys") == {"taken": {"by": "first"}, "new": {"by": "second"}}
        grouped = sorted(_transactions(pg_url).values())
        assert grouped[-1] == 4  # the four queued writes that passed their checks: one transaction
        b = node(pg_url)
        assert read(b, "counters", "c") == {"n": 2, "t": 1} and read(b, "keys") == read(a, "keys")
        b.close()
    finally:
        a.close()


def test_a_group_whose_commit_fails_is_all_unavailable_and_memory_is_unchanged(pg_url):
    """A COMMIT that fails (a deferred check of this test refuses a change): every write of the
    group is UNAVAILABLE, those that failed their checks too, and nothing of it is applied."""
    import psycopg

    a = node(pg_url)
    try:
        write(a, "set", ["counters", "c"], {"n": 0})
        with psycopg.connect(pg_url, autocommit=True) as connection:
            connection.execute("""
                CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN IF NEW.operations LIKE '%boom%' THEN RAISE EXCEPTION 'boom refused'; END IF; RETURN NEW; END $$;
                CREATE CONSTRAINT TRIGGER refuse_boom AFTER INSERT ON montybase_changes
                    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_boom();""")
        outcomes: dict[int, Any] = {}
        with psycopg.connect(pg_url, autocommit=True) as stream:
            threads = _queued(a, [
                ("set", {"path": ["d", "leader"], "value": {"n": 1}}),
                ("update", {"path": ["counters", "c"], "fields": [["n", {"$increment": 1}]]}),
                ("set", {"path": ["d", "x"], "value": {"text": "boom"}}),
                ("add", {"path": ["counters", "c"], "value": {"n": 5}}),  # taken: fails its checks
                ("delete", {"path": ["counters", "c"]}),
            ], outcomes, stream)
        for thread in threads:
            thread.join(30)
        assert outcomes[0] == {"id": "leader"}
        assert all(isinstance(outcomes[number], UnavailableError) for number in (1, 2, 3, 4)), outcomes
        assert read(a, "counters", "c") == {"n": 0} and read(a, "d", "x") is None
        write(a, "update", ["counters", "c"], fields=[["n", {"$increment": 1}]])  # the stream goes on
        b = node(pg_url)
        assert read(b, "counters", "c") == read(a, "counters", "c") == {"n": 1}
        assert read(b, "d") == read(a, "d") == {"leader": {"n": 1}}
        b.close()
    finally:
        a.close()


def test_postgres_stopped_during_a_group_makes_it_unavailable_and_loses_nothing_acknowledged(postgres, pg_url):
    import psycopg

    a = node(pg_url, connect_seconds=1, statement_seconds=2)
    acknowledged: list[int] = []  # (list.append is atomic across threads)
    stop, workers = threading.Event(), []
    increment = ("update", {"path": ["counters", "c"], "fields": [["n", {"$increment": 1}]]})

    def writer() -> None:
        while not stop.is_set():
            try:
                a.write(*increment, None)
                acknowledged.append(1)
            except UnavailableError:
                time.sleep(0.01)

    try:
        write(a, "set", ["counters", "c"], {"n": 0})
        outcomes: dict[int, Any] = {}
        with psycopg.connect(pg_url, autocommit=True) as stream:
            threads = _queued(a, [increment] * 5, outcomes, stream)
            postgres.stop()  # the leader waits for the stream's lock; four writes wait behind it
        for thread in threads:
            thread.join(30)
        assert all(isinstance(outcome, UnavailableError) for outcome in outcomes.values()), outcomes
        assert read(a, "counters", "c") == {"n": 0}
        # Under load: writers on the counter while PostgreSQL crashes and starts again.
        postgres.start()
        workers.extend(threading.Thread(target=writer) for _ in range(8))
        for worker in workers:
            worker.start()
        eventually(lambda: len(acknowledged) >= 50, 30)
        postgres.stop("immediate")
        time.sleep(0.5)
        postgres.start()
        eventually(lambda: len(acknowledged) >= 150, 30)
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
        if postgres.pid is None:
            postgres.start()
    try:
        b = node(pg_url)
        # An unanswered COMMIT may have committed (it was not acknowledged): more, never fewer.
        assert read(b, "counters", "c")["n"] >= len(acknowledged)
        assert eventually(lambda: read(a, "counters", "c") == read(b, "counters", "c"))
        b.close()
    finally:
        a.close()


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


# Three server processes, one PostgreSQL


class Cluster:
    """Server processes started with one montybase.json whose storageBucket is `url`, on
    127.0.0.1 port 0; each node's client config beside it."""

    def __init__(self, folder: Path, url: str, rules: dict[str, Any] | None = None):
        self.folder = folder
        self.config_path = folder / "montybase.json"
        self.config = {**create_config(self.config_path), "storageBucket": url, **({"rules": rules} if rules else {})}
        self.config_path.write_text(json.dumps(self.config))
        self.procs: list[Proc] = []
        self.urls: list[str] = []
        self.clients: list[Montybase] = []

    def start(self, index: int | None = None) -> int:
        """Start one more node (on a free port), or node `index` again on its port; its index.
        (One at a time: each writes client-config.json.)"""
        port = "0" if index is None else self.urls[index].rsplit(":", 1)[1]
        proc = Proc(server_command("--config", str(self.config_path), "--port", port), self.folder)
        if index is None:
            self.procs.append(proc)
            self.urls.append("")
            index = len(self.procs) - 1
        self.procs[index] = proc
        self.urls[index] = proc.endpoint(60)
        return index

    def client(self, index: int) -> Montybase:
        """A client of node `index` with the admin key (montybase.json holds it)."""
        handle = Montybase(api=self.urls[index], config=self.config_path)
        self.clients.append(handle)
        return handle

    def app_config(self, name: str, urls: list[str]) -> Path:
        """An app's client-config.json (the client key) listing the endpoints `urls`."""
        path = self.folder / "apps" / name / "client-config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(client_config(self.config, urls)))
        return path

    def close(self) -> None:
        for handle in self.clients:
            try:
                handle.close()
            except Exception:  # a client of a killed node: closing it is all that is left
                pass
        for proc in self.procs:
            proc.cleanup()


def _three_nodes(folder: Path, url: str, rules: dict[str, Any] | None = None) -> Iterator[Cluster]:
    nodes = Cluster(folder, url, rules)
    try:
        for _ in range(3):
            nodes.start()
        yield nodes
    finally:
        nodes.close()


@pytest.fixture
def cluster(tmp_path, pg_url):
    yield from _three_nodes(tmp_path, pg_url)


@pytest.fixture
def members_cluster(tmp_path, pg_url):
    """Three nodes whose data only signed-in users read and write (a client whose session was
    not resumed after a reconnect is refused)."""
    yield from _three_nodes(tmp_path, pg_url, {"**": {"read": "user", "write": "user"}})


def test_nodes_started_together_from_one_folder_all_serve(tmp_path, pg_url):
    nodes = Cluster(tmp_path, pg_url)
    try:
        for _ in range(3):  # at once: each writes client-config.json beside the config
            nodes.procs.append(Proc(server_command("--config", str(nodes.config_path), "--port", "0"), tmp_path))
        nodes.urls = [proc.endpoint(60) for proc in nodes.procs]
        doc(nodes.client(0), "a", "b").set({"c": 1})
        assert eventually(lambda: doc(nodes.client(2), "a", "b").get() == {"c": 1})
        assert json.loads((tmp_path / "client-config.json").read_text())["endpoint"] in nodes.urls
    finally:
        nodes.close()


def test_a_write_on_node_a_reaches_a_listener_on_node_c(cluster):
    a, c = cluster.client(0), cluster.client(2)
    seen: list[Any] = []
    unsubscribe = doc(c, "scores").order_by("score", "desc").limit(3).on_snapshot(
        lambda snapshot: seen.append([d["id"] for d in snapshot.docs]))
    eventually(lambda: seen == [[]])
    doc(a, "scores").add({"score": 10}, key="amor")
    doc(a, "scores").add({"score": 30}, key="bea")
    eventually(lambda: seen[-1] == ["bea", "amor"])
    assert seen == [[], ["amor"], ["bea", "amor"]]
    unsubscribe()


def test_eight_clients_on_three_nodes_count_exactly(cluster):
    """8 clients spread over the nodes, each 25 transactional increments and 200 increments of one counter."""
    clients = [cluster.client(number % 3) for number in range(8)]
    doc(clients[0], "c", "counter").set({"n": 0, "t": 0})
    eventually(lambda: all(doc(handle, "c", "counter").get() for handle in clients))
    failures: list[BaseException] = []

    def work(handle: Montybase) -> None:
        ref = doc(handle, "c", "counter")

        def increment_once(tx):
            tx.update(ref, {"t": tx.get(ref)["t"] + 1})

        try:
            for number in range(225):
                if number % 9 == 0:
                    handle.transaction(increment_once, max_attempts=200)
                else:
                    ref.update({"n": increment(1)})
        except MontybaseError as error:
            failures.append(error)

    threads = [threading.Thread(target=work, args=(handle,)) for handle in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    for handle in clients[:3]:
        assert eventually(lambda: doc(handle, "c", "counter").get() == {"n": 1600, "t": 200})


def _replayed(changes_seen: list[list[dict]]) -> list[dict]:
    """A query listener's documents rebuilt from its changes alone (removed from old_index, then
    added or moved to new_index), as a client without `docs` would."""
    docs: list[dict] = []
    for changes in changes_seen:
        for change in changes:
            if change["type"] != "added":
                assert docs[change["old_index"]]["id"] == change["id"]
                docs.pop(change["old_index"])
            if change["type"] != "removed":
                docs.insert(change["new_index"], {"id": change["id"], "value": change["value"]})
    return docs


def test_listeners_on_every_node_replay_random_writes_of_every_node_to_the_final_result(cluster):
    import random

    rng = random.Random(17)
    writers = [cluster.client(index) for index in range(3)]
    queries = [lambda h: doc(h, "r"), lambda h: doc(h, "r").order_by("v", "desc").limit(4),
               lambda h: doc(h, "r").where("v", ">=", 50)]
    seen: list[tuple[int, int, list]] = []  # (node, query, the changes of each snapshot)
    for index in range(3):
        listener = cluster.client(index)
        for number, query in enumerate(queries):
            changes: list[list[dict]] = []
            query(listener).on_snapshot(lambda snapshot, changes=changes: changes.append(snapshot.changes))
            seen.append((index, number, changes))
    eventually(lambda: all(changes for _, _, changes in seen))

    def write(handle: Montybase, seed: int) -> None:
        local = random.Random(seed)
        for _ in range(60):
            key, roll = f"k{local.randrange(12)}", local.random()
            try:
                if roll < 0.5:
                    doc(handle, "r", key).set({"v": local.randrange(100)})
                elif roll < 0.8:
                    doc(handle, "r", key).update({"v": increment(local.randrange(-20, 20))})
                else:
                    doc(handle, "r", key).delete()
            except MontybaseError as error:
                assert error.reason == "NOT_FOUND"  # an update of a document deleted meanwhile

    threads = [threading.Thread(target=write, args=(handle, rng.random())) for handle in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    def agreed() -> list | None:  # every node's result of every query, once they are the same
        results = [[query(handle).stream() for query in queries] for handle in writers]
        return results[0] if all(result == results[0] for result in results) else None

    final = eventually(agreed)
    for index, number, changes in seen:
        eventually(lambda: _replayed(changes) == final[number])


def test_embedded_programs_on_one_postgresql_are_nodes_too(tmp_path, pg_url):
    first = Montybase(storageBucket=pg_url, config=tmp_path / "montybase.json")
    second = Montybase(storageBucket=pg_url, config=tmp_path / "montybase.json")
    try:
        seen: list[Any] = []
        doc(second, "chat", "room").on_snapshot(lambda snapshot: seen.append(snapshot.value))
        doc(first, "chat", "room").set({"said": "hello"})
        eventually(lambda: seen[-1:] == [{"said": "hello"}])
        with pytest.raises(AlreadyExists):
            doc(second, "chat").add({"said": "again"}, key="room")
    finally:
        first.close()
        second.close()


def test_two_nodes_add_one_key_one_wins_the_other_is_already_exists(cluster):
    a, b = cluster.client(0), cluster.client(1)
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def add(handle: Montybase, name: str, key: str) -> None:
        start.wait()
        try:
            doc(handle, "names").add({"by": name}, key=key)
            outcomes.append(name)
        except AlreadyExists:
            outcomes.append("already exists")

    for number in range(5):
        outcomes.clear()
        threads = [threading.Thread(target=add, args=(handle, name, f"k{number}")) for handle, name in ((a, "a"), (b, "b"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(outcomes) in (["a", "already exists"], ["already exists", "b"])
        winner = outcomes[0] if outcomes[0] != "already exists" else outcomes[1]
        assert eventually(lambda: doc(cluster.client(2), "names", f"k{number}").get() == {"by": winner})


def test_a_node_started_late_loads_and_converges(cluster):
    a = cluster.client(0)
    for number in range(50):
        doc(a, "items").add({"n": number})
    late = cluster.start()
    d = cluster.client(late)
    assert doc(d, "items").get() == doc(a, "items").get()
    doc(d, "items", "from-late").set({"n": -1})
    assert eventually(lambda: doc(a, "items", "from-late").get() == {"n": -1})
    assert len(doc(cluster.client(1), "items").get()) == 51


def test_a_session_token_made_on_node_a_resumes_on_node_b(cluster):
    """Accounts and sessions are documents in PostgreSQL: any node knows them."""
    a, b, c = (Stranger(SimpleNamespace(url=url, config=cluster.config)) for url in cluster.urls)
    try:
        signed = a.call("signUp", {"email": "ann@example.com", "password": "correct horse"})["result"]
        resumed = b.call("resume", {"token": signed["token"]})  # at once: b looks in PostgreSQL
        assert resumed["result"] == {"uid": signed["uid"], "email": "ann@example.com"}
        assert b.call("signOut", {"token": signed["token"]})["result"] == {}
        refused = c.call("resume", {"token": signed["token"]})
        assert refused["error"]["data"]["reason"] == "UNAUTHENTICATED"
    finally:
        for stranger in (a, b, c):
            stranger.close()


def test_signing_out_on_node_a_closes_the_connections_that_resumed_the_session_on_node_b(tmp_path, pg_url):
    nodes = Cluster(tmp_path, pg_url)
    strangers: list[Stranger] = []

    def stranger(index: int, kid: str = "client") -> Stranger:
        strangers.append(Stranger(SimpleNamespace(url=nodes.urls[index], config=nodes.config), kid=kid))
        return strangers[-1]

    try:
        nodes.start(), nodes.start()
        a, admin = stranger(0), stranger(0, "admin")
        signed = a.call("signUp", {"email": "ann@example.com", "password": "correct horse"})["result"]
        b = stranger(1)
        assert b.call("resume", {"token": signed["token"]})["result"]["uid"] == signed["uid"]
        started = time.monotonic()
        assert a.call("signOut", {"token": signed["token"]})["result"] == {}
        assert b.close_code(timeout=5) == CLOSE_SIGNED_OUT
        assert time.monotonic() - started < 2
        # An admin disabling the account on node A ends its sessions resumed on node B too.
        again = a.call("signIn", {"email": "ann@example.com", "password": "correct horse"})["result"]
        other = stranger(1)
        assert other.call("resume", {"token": again["token"]})["result"]["uid"] == signed["uid"]
        assert admin.call("accountsDisable", {"email": "ann@example.com"})["result"] == {"sessions": 1}
        assert other.close_code(timeout=5) == CLOSE_SIGNED_OUT
        assert stranger(1).call("resume", {"token": again["token"]})["error"]["data"]["reason"] == "UNAUTHENTICATED"
    finally:
        for connection in strangers:
            connection.close()
        nodes.close()


def _health(url: str, path: str = "/healthz") -> tuple[int, str]:
    request = urllib.request.Request(url.replace("ws://", "http://") + path)
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_healthz_is_503_and_the_storage_metric_0_while_postgresql_is_unreachable(tmp_path, pg_url, postgres):
    nodes = Cluster(tmp_path, pg_url)
    nodes.config["metrics"] = {"allow": ["127.0.0.1"]}
    nodes.config_path.write_text(json.dumps(nodes.config))
    try:
        url = nodes.urls[nodes.start()]
        status, body = _health(url)
        assert status == 200 and json.loads(body)["storage"] == "ok"
        assert "montybase_storage_up 1.0" in _health(url, "/metrics")[1]
        postgres.stop()
        try:
            status, body = eventually(lambda: (found := _health(url))[0] == 503 and found, 10)
            assert json.loads(body)["status"] == "unavailable" and json.loads(body)["storage"] == "unreachable"
            assert "montybase_storage_up 0.0" in _health(url, "/metrics")[1]
            assert "postgres" not in body, "where it is and why is for the log"
        finally:
            postgres.start()
        eventually(lambda: _health(url)[0] == 200, 15)
        assert "montybase_storage_up 1.0" in _health(url, "/metrics")[1]
    finally:
        nodes.close()


class Writers:
    """Clients of the nodes, each with the list of every node's endpoint, signed in, and
    listening to the `board` collection: on the Python client one writer thread per node (that
    node first in its list), `watch` (it only listens; node 1, 0, 2) and, with `js`, a Node
    process writing on the JS client (tests/js/failover-writer.js; node 2, 1, 0).
    A writer commits batches one after the other: a new document acked/NAME-N, board/NAME =
    {n: N} and counters/total.n + 1. `acked` holds the keys acknowledged; `failures` the others
    (key, reason, seconds the call took; a write in flight at a kill is not acknowledged, and
    not sent again). `pause()` lets the batches in flight end and holds the next ones."""

    def __init__(self, cluster: Cluster, *, js: bool = False):
        urls = cluster.urls
        with Montybase(api=urls[0], config=cluster.config_path) as admin:
            doc(admin, "counters", "total").set({"n": 0})
        lists = {f"py{index}": urls[index:] + urls[:index] for index in range(len(urls))}
        lists["watch"] = urls[1::-1] + urls[2:]
        self.handles = {name: Montybase(config=cluster.app_config(name, endpoints)) for name, endpoints in lists.items()}
        self.seen: dict[str, list[dict]] = {}  # each listener's latest docs
        for name, handle in self.handles.items():
            handle.sign_up(f"{name}@example.org", "correct horse battery")
            doc(handle, "board").on_snapshot(lambda snapshot, name=name: self.seen.__setitem__(name, snapshot.docs))
        self.writers = [name for name in self.handles if name != "watch"]
        self.acked: set[str] = set()
        self.counts = dict.fromkeys(self.writers, 0)
        self.failures: list[tuple[str, str, float]] = []
        self._turn = threading.Condition()
        self._going, self._stopping = True, False
        self._busy = set(self.writers)
        self.threads = [threading.Thread(target=self._write, args=(name,), daemon=True) for name in self.writers]
        for thread in self.threads:
            thread.start()
        self.js: Proc | None = None
        if js:
            node = shutil.which("node")
            try:
                assert node, "the JS client's writer needs Node (>= 20) on the PATH"
                self.js = Proc([node, str(JS_WRITER), str(cluster.app_config("js", urls[::-1])), "js"],
                               cluster.folder, commands=True)
                self.js.wait_for_line("ready", 30)
            except BaseException:
                self.finish()
                raise

    def _write(self, name: str) -> None:
        handle, number = self.handles[name], 0
        while True:
            with self._turn:
                self._busy.discard(name)
                self._turn.notify_all()
                self._turn.wait_for(lambda: self._going or self._stopping)
                if self._stopping:
                    return
                self._busy.add(name)
            number += 1
            key, started = f"{name}-{number}", time.monotonic()
            try:
                (handle.batch().set(doc(handle, "acked", key), {"by": name, "n": number})
                 .set(doc(handle, "board", name), {"n": number})
                 .update(doc(handle, "counters", "total"), {"n": increment(1)}).commit())
                self.acked.add(key)
                self.counts[name] += 1
            except MontybaseError as exc:  # counted, and the writer goes on
                self.failures.append((key, exc.reason, time.monotonic() - started))
            time.sleep(0.01)

    def all_acked(self) -> set[str]:
        return self.acked | set(self.js.lines("acked ") if self.js else ())

    def all_failures(self) -> list[tuple[str, str]]:
        js = [tuple(line.split(" ")) for line in self.js.lines("failed ")] if self.js else []
        return [(key, reason) for key, reason, _ in self.failures] + js

    def _progress(self) -> list[int]:
        return list(self.counts.values()) + ([len(self.js.lines("acked "))] if self.js else [])

    def wait_for_acks(self, more: int) -> None:
        """Until every writer has `more` batches acknowledged after now (30 s at most)."""
        base = self._progress()
        try:
            eventually(lambda: all(now >= then + more for now, then in zip(self._progress(), base)), 30)
        except AssertionError:
            late = [name for name, now, then in zip(self.writers + ["js"], self._progress(), base) if now < then + more]
            raise AssertionError(f"{late} did not have {more} more writes acknowledged in 30 s") from None

    def _js_line(self, command: str, answer: str) -> str:
        marker = len(self.js.stdout_lines)
        self.js.tell(command)
        return self.js.wait_for_line(answer, 30, start=marker)

    def pause(self) -> None:
        """Hold the writers once their batches in flight are answered."""
        with self._turn:
            self._going = False
            assert self._turn.wait_for(lambda: not self._busy, 30), f"stuck in a call: {self._busy}"
        if self.js:
            self._js_line("pause", "paused")

    def states(self, board: list[dict]) -> dict[str, dict[str, Any]]:
        """While paused: each client's endpoint, signed-in user, listener's latest docs once they
        are `board` (after 10 s at most; a Python handle is asked nothing before), and `board`
        as it reads it afterwards."""
        states = {}
        for name, handle in self.handles.items():
            with contextlib.suppress(AssertionError):
                eventually(lambda: self.seen.get(name) == board, 10)
            states[name] = {"endpoint": handle._backend.url, "user": handle.current_user,
                            "snapshot": self.seen.get(name), "read": doc(handle, "board").stream()}
        if self.js:
            states["js"] = json.loads(self._js_line("state", "state "))
        return states

    def go(self) -> None:
        if self.js:
            self.js.tell("go")
        with self._turn:
            self._going = True
            self._turn.notify_all()

    def finish(self) -> None:
        with self._turn:
            self._stopping = True
            self._turn.notify_all()
        for thread in self.threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in self.threads)
        for handle in self.handles.values():
            handle.close()
        if self.js:
            try:
                self.js.tell("stop")
                assert self.js.wait(30) == 0, self.js.describe()
            finally:
                self.js.cleanup()


JS_WRITER = Path(__file__).resolve().parent / "js" / "failover-writer.js"


def _stored(url: str, collection: str) -> dict[str, Any]:
    """A collection's documents as PostgreSQL holds them."""
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as connection:
        rows = connection.execute("SELECT id, value FROM montybase_documents WHERE collection = %s",
                                  (collection,)).fetchall()
    return {key: json.loads(value) for key, value in rows}


def _agreed(urls: list[str], config_path: Path, read) -> Any:
    """What `read(handle)` answers on every node at `urls` once it is the same on all (10 s at most)."""
    handles = [Montybase(api=url, config=config_path) for url in urls]
    try:
        return eventually(lambda: (seen := [read(h) for h in handles]) and all(x == seen[0] for x in seen) and seen[0])
    finally:
        for handle in handles:
            handle.close()


def _converged(cluster: Cluster, writers: Writers, pg_url: str) -> None:
    """Every acknowledged write is in PostgreSQL and in every node's memory, which all hold what
    PostgreSQL holds; each batch whole (the counter counts the documents); a document no write
    acknowledged is one whose write failed (in flight at a kill, or while PostgreSQL was away)."""
    stored = _stored(pg_url, "acked")
    assert _agreed(cluster.urls, cluster.config_path, lambda h: doc(h, "acked").get()) == stored
    acked = writers.all_acked()
    missing = acked - stored.keys()
    assert not missing, f"{len(missing)} acknowledged writes lost: {sorted(missing)[:10]}"
    assert stored.keys() - acked <= {key for key, _ in writers.all_failures()}
    assert _stored(pg_url, "counters") == {"total": {"n": len(stored)}}


def test_kill_9_of_a_node_during_writes_clients_fail_over_and_lose_no_acknowledged_write(members_cluster, pg_url):
    """20 times: a node killed while every client writes; its clients go on with the next
    endpoint of their list, resume their session and resubscribe; the node restarted on its port
    loads, and converges while the writes go on."""
    cluster = members_cluster
    writers = Writers(cluster, js=True)
    moved = 0
    try:
        writers.pause()
        last = writers.states(_agreed(cluster.urls, cluster.config_path, lambda h: doc(h, "board").stream()))
        writers.go()
        for cycle in range(20):
            victim = cycle % 3
            writers.wait_for_acks(3)
            cluster.procs[victim].kill9()
            writers.wait_for_acks(3)  # every client writes again, without being told
            writers.pause()
            live = [url for index, url in enumerate(cluster.urls) if index != victim]
            board = _agreed(live, cluster.config_path, lambda h: doc(h, "board").stream())
            states = writers.states(board)
            for name, state in states.items():
                assert state["endpoint"] != cluster.urls[victim], f"{name} is still on the killed node"
                assert state["user"]["email"] == f"{name}@example.org", f"{name}'s session did not resume"
                assert state["snapshot"] == state["read"] == board, f"{name}'s listener did not resync"
                moved += last[name]["endpoint"] == cluster.urls[victim]
            count = _agreed(live, cluster.config_path, lambda h: doc(h, "acked").count())
            assert _agreed(live, cluster.config_path, lambda h: doc(h, "counters", "total").get()) == {"n": count}
            last = states
            writers.go()
            cluster.start(victim)  # while the writes go on: it loads, then follows
    finally:
        writers.finish()
    assert moved >= 20, "the killed nodes had clients"
    assert not writers.js.lines("listener-failed "), "the JS client's listener was refused"
    assert {reason for _, reason in writers.all_failures()} <= {"CONNECTION_LOST", "UNAVAILABLE"}
    assert max((seconds for _, _, seconds in writers.failures), default=0) < 10
    _converged(cluster, writers, pg_url)


def test_postgres_stopped_and_started_under_load(cluster, postgres, pg_url):
    writers = Writers(cluster)
    try:
        writers.wait_for_acks(10)
        postgres.stop()
        try:
            failed = len(writers.failures)
            eventually(lambda: len(writers.failures) > failed + 9, 30)  # every node answers UNAVAILABLE
            down = writers.failures[failed:]
            acked_while_down = len(writers.acked)
            time.sleep(1.0)
            readers = [cluster.client(index) for index in range(3)]
            assert all(doc(r, "acked").count() >= 30 for r in readers)  # reads go on from memory
        finally:
            postgres.start()
        assert {reason for _, reason, _ in down} == {"UNAVAILABLE"}
        assert max(seconds for _, _, seconds in down) < 10
        assert len(writers.acked) <= acked_while_down + 3  # (writes in flight as it stopped)
        eventually(lambda: len(writers.acked) > acked_while_down + 60, 60)  # writes are taken again
    finally:
        writers.finish()
    _converged(cluster, writers, pg_url)


# montybase migrate


def migrate(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(server_command("migrate", *args), cwd=folder, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MONTYBASE_PROGRESS_SECONDS": "0"})


def test_migrate_moves_a_file_store_into_postgresql_and_back(tmp_path, pg_url):
    database = Database(FileStorage(tmp_path / "db.json"))
    for number in range(2500):
        write(database, "set", ["players", f"p{number:04}"], {"score": number})
    write(database, "set", ["rooms", "r1", "messages", "m1"], {"text": "hi"})
    generated = write(database, "add", ["rooms"], {"name": "generated"})["id"]
    Service(database).accounts.sign_up({"email": "ann@example.com", "password": "correct horse"})
    before = {path: dict(docs) for path, docs in database.tree.collections.items() if docs}
    database.close()

    moved = migrate(tmp_path, "--from", "db.json", "--to", pg_url)
    assert moved.returncode == 0, moved.stderr
    assert "migrated 2504 documents" in moved.stdout and ":***@127.0.0.1" in moved.stdout
    assert "montybase-test" not in moved.stdout + moved.stderr  # the password is never printed
    assert "migrate: 2504/2504 documents" in moved.stderr.splitlines()[-1]

    a = node(pg_url)
    try:
        assert {path: dict(docs) for path, docs in a.tree.collections.items() if docs} == before
        later = write(a, "add", ["rooms"], {"name": "later"})["id"]
        assert later > generated  # ids made on a node sort after those of the file
        accounts = Service(a).accounts
        assert accounts.sign_in({"email": "ann@example.com", "password": "correct horse"})["email"] == "ann@example.com"
        after = {path: dict(docs) for path, docs in a.tree.collections.items() if docs}
    finally:
        a.close()

    back = migrate(tmp_path, "--from", pg_url, "--to", "back/db.json")
    assert back.returncode == 0, back.stderr
    assert f"into {tmp_path / 'back' / 'db.json'}" in back.stdout
    returned = Database(FileStorage(tmp_path / "back" / "db.json"))
    try:
        assert {path: dict(docs) for path, docs in returned.tree.collections.items() if docs} == after
    finally:
        returned.close()


def test_migrate_refuses_what_would_mix_two_stores(tmp_path, pg_url):
    database = Database(FileStorage(tmp_path / "db.json"))
    write(database, "set", ["a", "b"], {"c": 1})
    database.close()
    assert migrate(tmp_path, "--from", "db.json", "--to", pg_url).returncode == 0
    again = migrate(tmp_path, "--from", "db.json", "--to", pg_url)
    assert again.returncode == 1 and "already holds a Montybase database" in again.stderr
    existing = migrate(tmp_path, "--from", pg_url, "--to", "db.json")
    assert existing.returncode == 1 and "holds data already" in existing.stderr
    files = migrate(tmp_path, "--from", "db.json", "--to", "other.json")
    assert files.returncode == 1 and "give one PostgreSQL URL and one file" in files.stderr
    served = Database(FileStorage(tmp_path / "db.json"))  # a server holds the file: it must be stopped first
    try:
        held = migrate(tmp_path, "--from", "db.json", "--to", pg_url)
        assert held.returncode == 1 and "stop it first" in held.stderr
    finally:
        served.close()


def test_file_commands_on_a_postgresql_config_say_what_to_use(tmp_path, pg_url):
    config_path = tmp_path / "montybase.json"
    config_path.write_text(json.dumps({**create_config(config_path), "storageBucket": pg_url}))
    done = subprocess.run(server_command("backup", "b.mbak", "--config", str(config_path)), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "storageBucket is PostgreSQL" in done.stderr and "montybase migrate" in done.stderr


def test_kept_changes_is_a_limit_of_the_config(tmp_path, pg_url):
    database = open_database({**DEFAULTS, "limits": {"keptChanges": 5000}}, pg_url)
    try:
        assert database.storage.keep_changes == 5000
    finally:
        database.close()
    config_path = tmp_path / "montybase.json"
    config_path.write_text(json.dumps({**create_config(config_path), "storageBucket": pg_url,
                                       "limits": {"keptChanges": 10}}))
    with pytest.raises(InvalidArgumentError) as caught:
        load_config(config_path, create=False)
    assert caught.value.data["path"] == "/limits/keptChanges"


def test_a_node_stops_without_a_snapshot_and_reload_says_to_send_it_sighup(tmp_path, pg_url):
    nodes = Cluster(tmp_path, pg_url)
    try:
        nodes.start()
        done = subprocess.run(server_command("reload", "--config", str(nodes.config_path)), cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and "SIGHUP" in done.stderr and "PostgreSQL" in done.stderr
        assert "montybase-test" not in done.stderr + done.stdout, "a message never holds the password"
        assert nodes.procs[0].stop() == 0
        stopping = [line for line in nodes.procs[0].stderr_lines if "stopping:" in line]
        assert stopping and not any("snapshot" in line for line in stopping)
    finally:
        nodes.close()


def test_rate_limits_are_per_node(nodes):
    """What the README says: limits count on each node (N nodes let N times a total through)."""
    a, b = nodes
    limits = Limits(signUps="2/hour")
    accounts_a, accounts_b = Service(a, limits=limits).accounts, Service(b, limits=limits).accounts
    stranger = Principal("client", None, 1, "192.0.2.1")
    for number in range(2):
        accounts_a.sign_up({"email": f"a{number}@example.com", "password": "correct horse"}, stranger)
    with pytest.raises(RateLimitedError):
        accounts_a.sign_up({"email": "a2@example.com", "password": "correct horse"}, stranger)
    assert accounts_b.sign_up({"email": "b0@example.com", "password": "correct horse"}, stranger)["email"] == "b0@example.com"


def test_messages_name_a_postgresql_url_without_its_password():
    assert redacted("postgresql://app:s3cret@db:5432/game") == "postgresql://app:***@db:5432/game"
    assert redacted("postgresql://db/game?user=app&password=s3cret&sslmode=require") == (
        "postgresql://db/game?user=app&password=***&sslmode=require")
    assert redacted("postgres://app@db/game") == "postgres://app@db/game"


def test_any_json_survives_postgresql_as_it_was_written(nodes):
    a, _ = nodes
    tricky = {"quote": "it's \"quoted\" \\ back\\slash", "percent": "100% _under_", "nul": "a\u0000b",
              "emoji": "🎲 é e\u0301", "nested": {"z": 1, "a": [1.5, -0.0, 2**53 - 1, None, True]}, "order": {"b": 1, "a": 2}}
    write(a, "set", ["it's 100%_", "key'with\"quotes"], tricky)
    write(a, "set", ["it's 100%_", "key'with\"quotes", "sub_%", "x"], {"n": 1})
    write(a, "delete", ["it's 100%"])  # a prefix of the collection's name: deletes nothing of it
    c = node(a.storage.url)
    try:
        stored = c.document(("it's 100%_", "key'with\"quotes"))
        assert stored == tricky and list(stored["order"]) == ["b", "a"]  # key order kept (JSON text, not jsonb)
        assert c.document(("it's 100%_", "key'with\"quotes", "sub_%", "x")) == {"n": 1}
    finally:
        c.close()


def test_writes_go_on_after_deletes_and_refused_ones(nodes):
    """The writer's two statements are prepared once per connection: they must outlive what
    the connection runs besides (psycopg, preparing the deletes it ran often, cleared every
    prepared statement of the session after the ROLLBACK of a refused write)."""
    a, b = nodes
    write(a, "set", ["log", "anchor"], {"a": 1})
    for n in range(8):
        write(a, "set", ["log", f"gone{n}"], {"n": n})
        write(a, "delete", ["log", f"gone{n}"])
    for n in range(4):
        with pytest.raises(ConflictError):
            a.transact({"reads": [{"path": ["log", "anchor"], "value": {"a": 2}}],
                        "writes": [{"op": "add", "path": ["log"], "value": {"n": n}}]}, None)
        write(a, "set", ["log", f"kept{n}"], {"n": n})
    assert eventually(lambda: sorted(read(b, "log")) == ["anchor", "kept0", "kept1", "kept2", "kept3"])
