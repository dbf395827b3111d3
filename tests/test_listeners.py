"""Listeners (DESIGN.md §3.4): the shared cases of `tests/cases/listeners.json` on every backend,
then delivery, threading, many listeners, many connections, a slow subscriber, and a reconnect.

Every wait is bounded. A step that must deliver nothing is checked with a marker: a document
outside the case's collections, listened to on the same handle and written after each step.
Snapshots of one handle arrive in commit order, so once the marker's snapshot arrives, every
snapshot of the step has arrived too (no sleeping, no guessing).
"""

from __future__ import annotations

import json
import logging
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/procs.py

from conftest import NO_SERVER, Served, hand_handshake, json_equal, server_config  # noqa: E402
from procs import Proc, free_port, server_command  # noqa: E402
from python_client import Montybase, doc  # noqa: E402
from python_client.listen import Dispatcher, DocumentSnapshot, Listener, QuerySnapshot  # noqa: E402
from server import transport  # noqa: E402
from server.transport import Limits  # noqa: E402

CASES_FILE = Path(__file__).parent / "cases" / "listeners.json"
COLLECTION = "c"
OTHER = "other"
MARKER = ("marker", "m")
WAIT = 10.0  # seconds: the bound of every wait for a snapshot
QUERY_MEMBERS = {"where", "orderBy", "limit", "limitToLast", "offset", "startAt", "startAfter", "endAt", "endBefore"}
CHANGE_TYPES = {"added", "modified", "removed"}


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


CASES: list[dict[str, Any]] = json.loads(CASES_FILE.read_text(encoding="utf-8"), parse_constant=_no_constants)["cases"]

# Cases that fail because of bugs in server/ (reported; not fixed here). Strict: a fix makes them XPASS.


# JSON helpers




def _ids(docs: list[Any]) -> list[str]:
    return [entry if isinstance(entry, str) else entry["id"] for entry in docs]


def _replay_ids(ids: list[str], changes: list[dict[str, Any]], old: str, new: str) -> list[str]:
    """Apply changes (sequential indexes) to a list of ids; each oldIndex must point at its document."""
    ids = list(ids)
    for change in changes:
        if change[old] >= 0:
            assert change[old] < len(ids) and ids[change[old]] == change["id"], (
                f"{change}: oldIndex points at {ids[change[old]] if change[old] < len(ids) else 'nothing'} in {ids}")
            ids.pop(change[old])
        if change[new] >= 0:
            assert change[new] <= len(ids), f"{change}: newIndex beyond {ids}"
            ids.insert(change[new], change["id"])
    return ids


# The case file itself


@NO_SERVER
def test_cases_file_is_well_formed():
    """Every case is complete and its own expectations are consistent (expected changes replayed on
    the previous expected docs give the expected docs), so a failure elsewhere is the engine's."""
    data = json.loads(CASES_FILE.read_text(encoding="utf-8"))
    assert isinstance(data.get("description"), str) and "null" in data["description"]
    names = [case.get("name") for case in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    for case in CASES:
        name = case["name"]
        assert set(case) <= {"name", "note", "documents", "query", "document", "initial", "steps"}, name
        assert ("query" in case) != ("document" in case), f"{name}: exactly one of query / document"
        assert isinstance(case["documents"], dict) and all(isinstance(d, dict) for d in case["documents"].values())
        assert case["steps"], name
        if "query" in case:
            assert set(case["query"]) <= QUERY_MEMBERS, name
            previous = _ids(case["initial"]["docs"])
            assert set(case["initial"]) == {"docs"}, name
        else:
            assert set(case["initial"]) == {"id", "value", "exists"} and case["initial"]["id"] == case["document"]
            assert case["initial"]["exists"] == (case["document"] in case["documents"]), name
        for i, step in enumerate(case["steps"]):
            where = f"{name} step {i + 1}"
            assert set(step) <= {"note", "writes", "expect"} and "expect" in step, where
            assert step["writes"] and all(w["op"] in ("add", "set", "update", "delete") for w in step["writes"]), where
            for write in step["writes"]:
                assert write["path"][0] in (COLLECTION, OTHER) and len(write["path"]) % 2 == 0, where
                assert ("value" in write) == (write["op"] in ("add", "set")), where
                assert ("fields" in write) == (write["op"] == "update"), where
            expect = step["expect"]
            if expect is None:
                continue
            if "query" in case:
                assert set(expect) == {"docs", "changes"} and expect["changes"], where
                for change in expect["changes"]:
                    assert change["type"] in CHANGE_TYPES, where
                    assert (change["oldIndex"] >= 0) == (change["type"] != "added"), where
                    assert (change["newIndex"] >= 0) == (change["type"] != "removed"), where
                pairs = [(c["type"], c["id"]) for c in expect["changes"]]
                assert len({doc_id for _, doc_id in pairs}) == len(pairs), f"{where}: one change per document"
                replayed = _replay_ids(previous, expect["changes"], "oldIndex", "newIndex")
                assert replayed == _ids(expect["docs"]), f"{where}: the expected changes do not rebuild the docs"
                previous = replayed
            else:
                assert set(expect) == {"id", "value", "exists"} and expect["id"] == case["document"], where
                assert expect["exists"] == (expect["value"] is not None), where


# Snapshot collection


class Collector:
    """A callback that keeps every snapshot, and the threads it ran on."""

    def __init__(self, action: Callable[[Any], None] | None = None):
        self.items: list[Any] = []
        self.threads: set[int] = set()
        self.action = action
        self._changed = threading.Condition()

    def __call__(self, snapshot: Any) -> None:
        if self.action is not None:
            self.action(snapshot)
        with self._changed:
            self.items.append(snapshot)
            self.threads.add(threading.get_ident())
            self._changed.notify_all()

    def snapshots(self) -> list[Any]:
        with self._changed:
            return list(self.items)

    def wait_for(self, predicate: Callable[[list[Any]], bool], what: str, timeout: float = WAIT) -> list[Any]:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.items), timeout):
                raise AssertionError(f"no {what} within {timeout}s; got {len(self.items)} snapshots, last {self.items[-1:]}")
            return list(self.items)

    def wait_count(self, n: int, timeout: float = WAIT) -> list[Any]:
        return self.wait_for(lambda items: len(items) >= n, f"{n} snapshots", timeout)

    def last(self) -> Any:
        with self._changed:
            return self.items[-1] if self.items else None


class Marker:
    """A document listener used as a barrier: `sync()` writes it and waits for its snapshot."""

    def __init__(self, db: Montybase):
        self.ref = doc(db, *MARKER)
        self.collector = Collector()
        self.unsubscribe = self.ref.on_snapshot(self.collector)
        self.collector.wait_count(1)
        self.count = 0

    def sync(self) -> None:
        self.count += 1
        token = self.count
        self.ref.set({"step": token})
        self.collector.wait_for(lambda items: any(s.value == {"step": token} for s in items), f"marker {token}")


def build_query(db: Montybase, wire: dict[str, Any]):
    """The case's wire query built through the public API (which must produce the same wire form)."""
    query = doc(db, COLLECTION).query()
    for field, op, value in wire.get("where", ()):
        query = query.where(tuple(field) if isinstance(field, list) else field, op, value)
    for field, direction in wire.get("orderBy", ()):
        query = query.order_by(tuple(field) if isinstance(field, list) else field, direction)
    for name, method_name in (("limit", "limit"), ("limitToLast", "limit_to_last"), ("offset", "offset")):
        if name in wire:
            query = getattr(query, method_name)(wire[name])
    for name, method_name in (("startAt", "start_at"), ("startAfter", "start_after"), ("endAt", "end_at"), ("endBefore", "end_before")):
        if name in wire:
            query = getattr(query, method_name)(*wire[name])
    assert query.wire == {"path": [COLLECTION], **wire}
    return query


def _fields(pairs: list[list[Any]]) -> dict[Any, Any]:
    return {tuple(field) if isinstance(field, list) else field: value for field, value in pairs}


def apply_writes(db: Montybase, writes: list[dict[str, Any]]) -> None:
    """One write through its method; several through one batch (one commit)."""
    if len(writes) == 1:
        write = writes[0]
        path, op = write["path"], write["op"]
        collection, key = doc(db, *path[:-1]), path[-1]
        if op == "add":
            collection.add(write["value"], key=key)
        elif op == "set":
            collection.set(write["value"], key=key)
        elif op == "update":
            collection.update(_fields(write["fields"]), key=key)
        else:
            doc(db, *path).delete()
        return
    batch = db.batch()
    for write in writes:
        path, op = write["path"], write["op"]
        collection, key = doc(db, *path[:-1]), path[-1]
        if op == "add":
            batch.add(collection, write["value"], key=key)
        elif op == "set":
            batch.set(collection, write["value"], key=key)
        elif op == "update":
            batch.update(collection, _fields(write["fields"]), key=key)
        else:
            batch.delete(doc(db, *path))
    batch.commit()


def seed(db: Montybase, documents: dict[str, Any], collection: str = COLLECTION) -> None:
    if documents:
        batch = db.batch()
        for doc_id, value in documents.items():
            batch.set(doc(db, collection), value, key=doc_id)
        batch.commit()


def check_first_query_snapshot(snapshot: Any, expected_ids: list[str], documents: dict[str, Any]) -> None:
    assert isinstance(snapshot, QuerySnapshot), snapshot
    assert [d["id"] for d in snapshot.docs] == expected_ids
    for entry in snapshot.docs:
        assert json_equal(entry["value"], documents[entry["id"]]), entry
    assert [(c["type"], c["id"], c["old_index"], c["new_index"]) for c in snapshot.changes] == [
        ("added", doc_id, -1, j) for j, doc_id in enumerate(expected_ids)
    ]
    for change, entry in zip(snapshot.changes, snapshot.docs):
        assert json_equal(change["value"], entry["value"])


def check_query_step(previous: QuerySnapshot, snapshot: Any, expect: dict[str, Any], where: str) -> None:
    assert isinstance(snapshot, QuerySnapshot), f"{where}: {snapshot}"
    got_ids = [d["id"] for d in snapshot.docs]
    assert got_ids == _ids(expect["docs"]), f"{where}: docs"
    values = {d["id"]: d["value"] for d in snapshot.docs}
    before = {d["id"]: d["value"] for d in previous.docs}
    for entry in expect["docs"]:
        if isinstance(entry, dict):
            assert json_equal(values[entry["id"]], entry["value"]), f"{where}: value of {entry['id']}"
    got_pairs = Counter((c["type"], c["id"]) for c in snapshot.changes)
    want_pairs = Counter((c["type"], c["id"]) for c in expect["changes"])
    assert got_pairs == want_pairs, f"{where}: changes {snapshot.changes}"
    for change in snapshot.changes:
        assert set(change) == {"type", "id", "value", "old_index", "new_index"}, f"{where}: {change}"
        source = before if change["type"] == "removed" else values
        assert json_equal(change["value"], source[change["id"]]), f"{where}: value in {change}"
    replayed = _replay_ids([d["id"] for d in previous.docs], snapshot.changes, "old_index", "new_index")
    assert replayed == got_ids, f"{where}: the changes do not rebuild the docs: {snapshot.changes}"
    if len(expect["changes"]) == 1:
        (want,), (got,) = expect["changes"], snapshot.changes
        assert (got["old_index"], got["new_index"]) == (want["oldIndex"], want["newIndex"]), f"{where}: {got}"


def check_document_snapshot(snapshot: Any, expect: dict[str, Any], where: str) -> None:
    assert isinstance(snapshot, DocumentSnapshot), f"{where}: {snapshot}"
    assert snapshot.id == expect["id"], where
    assert snapshot.exists is expect["exists"], where
    assert json_equal(snapshot.value, expect["value"]), f"{where}: {snapshot.value!r}"


def _case_params() -> list[Any]:
    return [pytest.param(case, id=case["name"]) for case in CASES]


@pytest.mark.parametrize("case", _case_params())
def test_listener_case(db, case):
    seed(db, case["documents"])
    marker = Marker(db)
    got = Collector()
    if "document" in case:
        target = doc(db, COLLECTION, case["document"])
    else:
        target = build_query(db, case["query"])
    unsubscribe = target.on_snapshot(got)
    try:
        (first,) = got.wait_count(1)
        if "document" in case:
            check_document_snapshot(first, case["initial"], "initial")
        else:
            check_first_query_snapshot(first, _ids(case["initial"]["docs"]), case["documents"])
        previous, seen = first, 1
        for number, step in enumerate(case["steps"], 1):
            where = f"step {number}" + (f" ({step['note']})" if "note" in step else "")
            apply_writes(db, step["writes"])
            marker.sync()
            fresh = got.snapshots()[seen:]
            seen += len(fresh)
            if step["expect"] is None:
                assert fresh == [], f"{where}: expected no snapshot, got {fresh}"
                continue
            assert len(fresh) == 1, f"{where}: expected one snapshot, got {len(fresh)}: {fresh}"
            (snapshot,) = fresh
            if "document" in case:
                check_document_snapshot(snapshot, step["expect"], where)
                assert json_equal(target.get(), snapshot.value), f"{where}: a read disagrees"
            else:
                check_query_step(previous, snapshot, step["expect"], where)
                read = target.stream()
                assert [d["id"] for d in read] == [d["id"] for d in snapshot.docs], f"{where}: a query disagrees"
                assert all(json_equal(a["value"], b["value"]) for a, b in zip(read, snapshot.docs)), where
            previous = snapshot
    finally:
        unsubscribe()
        marker.unsubscribe()


# Delivery


def test_the_first_callback_carries_the_current_state(db):
    scores = {f"p{i}": {"score": i * 7 % 11, "name": f"player {i}"} for i in range(12)}
    seed(db, scores)
    seed(db, {"a": {"n": 1}}, OTHER)
    top = Collector()
    whole = Collector()
    one = Collector()
    missing = Collector()
    stops = [
        doc(db, COLLECTION).order_by("score", "desc").limit(5).on_snapshot(top),
        doc(db, COLLECTION).on_snapshot(whole),
        doc(db, OTHER, "a").on_snapshot(one),
        doc(db, OTHER, "nope").on_snapshot(missing),
    ]
    try:
        expected_top = [d_id for d_id, _ in sorted(scores.items(), key=lambda kv: (-kv[1]["score"], kv[0]))][:5]
        check_first_query_snapshot(top.wait_count(1)[0], expected_top, scores)
        check_first_query_snapshot(whole.wait_count(1)[0], sorted(scores), scores)
        assert one.wait_count(1)[0] == DocumentSnapshot("a", {"n": 1}, True)
        assert missing.wait_count(1)[0] == DocumentSnapshot("nope", None, False)
    finally:
        for stop in stops:
            stop()


def test_an_empty_result_first_then_the_first_document(db):
    got = Collector()
    stop = doc(db, COLLECTION).where("team", "==", "red").on_snapshot(got)
    try:
        (first,) = got.wait_count(1)
        assert first.docs == [] and first.changes == []
        doc(db, COLLECTION).set({"team": "red"}, key="a")
        second = got.wait_count(2)[1]
        assert second.docs == [{"id": "a", "value": {"team": "red"}}]
        assert second.changes == [{"type": "added", "id": "a", "value": {"team": "red"}, "old_index": -1, "new_index": 0}]
    finally:
        stop()


def test_callbacks_that_change_their_snapshots_change_nothing_stored(db):
    seed(db, {"a": {"score": 1, "tags": ["x"], "stats": {"wins": 1}}})

    def spoil(snapshot: Any) -> None:
        values = [snapshot.value] if isinstance(snapshot, DocumentSnapshot) else [d["value"] for d in snapshot.docs]
        for value in values:
            value["tags"].append("spoiled")
            value["stats"]["wins"] = -1

    query, one = Collector(spoil), Collector(spoil)
    stops = [doc(db, COLLECTION).on_snapshot(query), doc(db, COLLECTION, "a").on_snapshot(one)]
    try:
        query.wait_count(1), one.wait_count(1)
        doc(db, COLLECTION).update({"score": 2}, key="a")
        query.wait_count(2), one.wait_count(2)
        assert doc(db, COLLECTION, "a").get() == {"score": 2, "tags": ["x"], "stats": {"wins": 1}}
        assert doc(db, COLLECTION).where("tags", "array-contains", "spoiled").stream() == []
    finally:
        for stop in stops:
            stop()


def test_unsubscribe_stops_delivery(db):
    marker = Marker(db)
    got = Collector()
    got_doc = Collector()
    stop = doc(db, COLLECTION).order_by("n").limit(3).on_snapshot(got)
    stop_doc = doc(db, COLLECTION, "a").on_snapshot(got_doc)
    try:
        got.wait_count(1)
        got_doc.wait_count(1)
        doc(db, COLLECTION).set({"n": 1}, key="a")
        got.wait_count(2)
        got_doc.wait_count(2)
        stop()
        stop_doc()
        counts = len(got.snapshots()), len(got_doc.snapshots())
        for i in range(5):
            doc(db, COLLECTION).set({"n": -i}, key=f"z{i}")
            doc(db, COLLECTION).update({"n": 100 + i}, key="a")
        marker.sync()
        assert (len(got.snapshots()), len(got_doc.snapshots())) == counts
        stop()  # twice is harmless
        stop_doc()
        # A new listener on the same query and document still works (the shared target was dropped cleanly).
        again = Collector()
        stop_again = doc(db, COLLECTION).order_by("n").limit(3).on_snapshot(again)
        try:
            assert [d["id"] for d in again.wait_count(1)[0].docs] == ["z4", "z3", "z2"]
        finally:
            stop_again()
    finally:
        marker.unsubscribe()


def test_unsubscribe_from_inside_the_callback(db):
    marker = Marker(db)
    stops: list[Callable[[], None]] = []

    def once(snapshot: Any) -> None:
        if len(got.items) == 1:  # the second snapshot: stop listening from within
            stops[0]()

    got = Collector(once)
    stops.append(doc(db, COLLECTION).on_snapshot(got))
    try:
        got.wait_count(1)
        doc(db, COLLECTION).set({"n": 1}, key="a")
        got.wait_count(2)
        for i in range(3):
            doc(db, COLLECTION).set({"n": i}, key=f"b{i}")
        marker.sync()
        assert len(got.snapshots()) == 2
    finally:
        marker.unsubscribe()


def test_no_callback_starts_after_unsubscribe_returns(db, monkeypatch):
    """Deterministic: hold the dispatcher between its `active` check and the callback (inside
    Listener.snapshot, which the dispatcher runs right after the check), unsubscribe, release."""
    got = Collector()
    stop = doc(db, COLLECTION).on_snapshot(got)
    got.wait_count(1)
    entered, release = threading.Event(), threading.Event()
    original = Listener.snapshot

    def slow_snapshot(self: Listener, message: dict[str, Any], *copy: Any) -> Any:
        if self.callback is got:
            entered.set()
            release.wait(WAIT)
        return original(self, message, *copy)

    monkeypatch.setattr(Listener, "snapshot", slow_snapshot)
    doc(db, COLLECTION).set({"n": 1}, key="a")
    assert entered.wait(WAIT), "the dispatcher never took the snapshot"
    stop()
    returned = len(got.snapshots())
    release.set()
    marker = Marker(db)  # its snapshots queue behind the held one
    try:
        marker.sync()
        assert len(got.snapshots()) == returned, "a callback ran after unsubscribe() returned"
    finally:
        marker.unsubscribe()


def test_a_raising_callback_is_logged_and_the_listener_keeps_working(db, caplog):
    caplog.set_level(logging.ERROR, logger="montybase.client")
    calls: list[Any] = []

    def explode(snapshot: Any) -> None:
        calls.append(snapshot)
        raise RuntimeError(f"boom {len(calls)}")

    stop = doc(db, COLLECTION).order_by("n").on_snapshot(explode)
    try:
        for i in range(3):
            doc(db, COLLECTION).set({"n": i}, key=f"d{i}")
        deadline = time.monotonic() + WAIT

        def raised() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "montybase.client" and r.exc_info]

        while (len(calls) < 4 or len(raised()) < 4) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(calls) == 4, calls
        assert [d["id"] for d in calls[-1].docs] == ["d0", "d1", "d2"]
        assert [str(r.exc_info[1]) for r in raised()] == ["boom 1", "boom 2", "boom 3", "boom 4"]
    finally:
        stop()


def test_callbacks_run_off_the_callers_thread_and_may_call_the_database(db):
    caller = threading.get_ident()
    marker = Marker(db)
    reads: list[Any] = []

    def read_and_write(snapshot: Any) -> None:
        # A read and a write from inside a callback: no deadlock with the write that caused it.
        reads.append(doc(db, COLLECTION, "a").get())
        doc(db, OTHER).set({"seen": len(snapshot.docs)}, key=f"echo{len(reads)}")

    got = Collector(read_and_write)
    stop = doc(db, COLLECTION).on_snapshot(got)
    try:
        got.wait_count(1)
        doc(db, COLLECTION).set({"n": 1}, key="a")
        doc(db, COLLECTION).update({"n": 2}, key="a")
        got.wait_count(3)
        marker.sync()
        assert caller not in got.threads and caller not in marker.collector.threads
        assert reads[0] in (None, {"n": 1}, {"n": 2}) and reads[-1] == {"n": 2}
        assert doc(db, OTHER).get() == {"echo1": {"seen": 0}, "echo2": {"seen": 1}, "echo3": {"seen": 1}}
    finally:
        stop()
        marker.unsubscribe()


# Many listeners


def _random_writes(db: Montybase, rng: random.Random, count: int, ids: int = 20) -> None:
    for _ in range(count):
        key = f"p{rng.randrange(ids):02d}"
        roll = rng.random()
        if roll < 0.15:
            doc(db, COLLECTION).delete(key)
        elif roll < 0.25:
            doc(db, COLLECTION).set({"team": rng.choice(["red", "blue"])}, key=key)  # no score
        elif roll < 0.35:
            batch = db.batch()
            for _ in range(3):
                batch.set(doc(db, COLLECTION), {"score": rng.randrange(50), "team": "red"}, key=f"p{rng.randrange(ids):02d}")
            batch.commit()
        else:
            doc(db, COLLECTION).set({"score": rng.randrange(50), "team": rng.choice(["red", "blue"])}, key=key)


def test_many_listeners_on_one_handle(db):
    rng = random.Random(1234)
    marker = Marker(db)
    queries = {}
    for n in (1, 3, 10):
        queries[f"top{n}"] = doc(db, COLLECTION).order_by("score", "desc").limit(n)
        queries[f"top{n}-again"] = doc(db, COLLECTION).order_by("score", "desc").limit(n)  # shares the target
    queries["last3"] = doc(db, COLLECTION).order_by("score").limit_to_last(3)
    queries["red"] = doc(db, COLLECTION).where("team", "==", "red")
    queries["red-by-score"] = doc(db, COLLECTION).where("team", "==", "red").order_by("score")
    queries["whole"] = doc(db, COLLECTION).query()
    queries["whole-again"] = doc(db, COLLECTION).query()
    documents = {f"p{i:02d}": doc(db, COLLECTION, f"p{i:02d}") for i in range(0, 20, 4)}
    collectors = {name: Collector() for name in [*queries, *documents]}
    stops = {name: query.on_snapshot(collectors[name]) for name, query in queries.items()}
    stops.update({name: ref.on_snapshot(collectors[name]) for name, ref in documents.items()})

    def check(names: list[str]) -> None:
        marker.sync()
        for name in names:
            last = collectors[name].last()
            if name in queries:
                read = queries[name].stream()
                assert [d["id"] for d in last.docs] == [d["id"] for d in read], name
                assert all(json_equal(a["value"], b["value"]) for a, b in zip(last.docs, read)), name
            else:
                assert last.value == documents[name].get() and last.exists == (last.value is not None), name

    try:
        for collector in collectors.values():
            collector.wait_count(1)
        _random_writes(db, rng, 120)
        check(list(collectors))
        # Stop one of each pair sharing a target, and a document listener: the others carry on.
        stopped = ["top3-again", "whole", "p04"]
        for name in stopped:
            stops.pop(name)()
        frozen = {name: len(collectors[name].snapshots()) for name in stopped}
        _random_writes(db, rng, 60)
        check([name for name in collectors if name not in stopped])
        assert {name: len(collectors[name].snapshots()) for name in stopped} == frozen
    finally:
        for stop in stops.values():
            stop()
        marker.unsubscribe()


@NO_SERVER
@pytest.mark.parametrize("value", [{"score": 1, "name": "a"}, {"score": 1, "stats": {"games": [1, 2]}}], ids=["flat", "nested"])
def test_listeners_sharing_a_message_get_values_of_their_own(value):
    """One message for two listeners of a handle: what one callback changes in its snapshot, at
    any depth, the other never sees, nor does the message."""
    seen: dict[str, list[QuerySnapshot]] = {"a": [], "b": []}
    done = threading.Event()

    def mutate(snapshot: QuerySnapshot) -> None:
        seen["a"].append(snapshot)
        for item in [*snapshot.docs, *snapshot.changes]:
            item["value"]["score"] = -1
            for inner in item["value"].values():
                if isinstance(inner, dict):
                    inner["games"].append("mutated")

    def keep(snapshot: QuerySnapshot) -> None:
        seen["b"].append(snapshot)
        if len(seen["b"]) == 2:
            done.set()

    a, b = Listener({}, mutate), Listener({}, keep)
    message = {"docs": [{"id": "d", "value": value}], "changes": [{"type": "added", "id": "d", "value": value,
                                                                  "oldIndex": -1, "newIndex": 0}]}
    original = json.loads(json.dumps(message))
    update = {"changes": [{"type": "modified", "id": "d", "value": value, "oldIndex": 0, "newIndex": 0}]}
    dispatcher = Dispatcher()
    try:
        dispatcher.put([a, b], message)
        dispatcher.put([a, b], update)
        assert done.wait(WAIT)
    finally:
        dispatcher.close()
    assert message == original and update["changes"][0]["value"] == original["docs"][0]["value"]
    for snapshot in seen["b"]:
        assert snapshot.docs == [{"id": "d", "value": original["docs"][0]["value"]}]
    assert seen["a"][0].docs[0]["value"]["score"] == -1  # the mutation did happen, in a's copy


def test_listeners_of_queries_equal_only_in_python_do_not_share_results(db):
    seed(db, {"t": {"v": True}, "one": {"v": 1}, "f": {"v": False}, "zero": {"v": 0}})
    on_true, on_one, on_false, on_zero = Collector(), Collector(), Collector(), Collector()
    stops = [
        doc(db, COLLECTION).where("v", "==", True).on_snapshot(on_true),
        doc(db, COLLECTION).where("v", "==", 1).on_snapshot(on_one),
        doc(db, COLLECTION).where("v", "==", False).on_snapshot(on_false),
        doc(db, COLLECTION).where("v", "==", 0).on_snapshot(on_zero),
    ]
    try:
        assert [d["id"] for d in doc(db, COLLECTION).where("v", "==", 1).stream()] == ["one"]
        firsts = [[d["id"] for d in c.wait_count(1)[0].docs] for c in (on_true, on_one, on_false, on_zero)]
        assert firsts == [["t"], ["one"], ["f"], ["zero"]]
    finally:
        for stop in stops:
            stop()


def test_one_listener_per_connection_on_many_connections(served):
    clients = [served.client() for _ in range(20)]
    writer = served.client()
    try:
        collectors = [Collector() for _ in clients]
        for client, collector in zip(clients, collectors):
            doc(client, "scores").order_by("score", "desc").limit(10).on_snapshot(collector)
        for collector in collectors:
            collector.wait_count(1)
        rng = random.Random(99)
        for i in range(150):
            key = f"p{rng.randrange(40):02d}"
            if rng.random() < 0.1:
                doc(writer, "scores").delete(key)
            else:
                doc(writer, "scores").set({"score": rng.randrange(1000), "i": i}, key=key)
        expected = doc(writer, "scores").order_by("score", "desc").limit(10).stream()
        assert len(expected) == 10
        for number, collector in enumerate(collectors):
            collector.wait_for(lambda items: items[-1].docs == expected, f"the final top 10 on client {number}")
    finally:
        for client in [*clients, writer]:
            client.close()


# A slow subscriber over a raw socket


class RawSubscriber:
    """A hand-driven client (psk handshake, sealed frames) that subscribes, then stops reading."""

    def __init__(self, served: Served):
        self.ws = connect(served.url, compression=None, proxy=None, open_timeout=5, legacy=True)
        self.session, _ = hand_handshake(self.ws, "client", served.config["apiKey"])

    def subscribe(self, sub: int, params: dict[str, Any]) -> dict[str, Any]:
        request = {"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"sub": sub, **params}}
        self.ws.send(self.session.seal(json.dumps(request).encode()))
        first = None
        while True:  # the initial snapshot comes before the answer
            message = json.loads(self.session.open(self.ws.recv(timeout=5)))
            if message.get("method") == "snapshot":
                first = message["params"]["snapshot"]
            elif message.get("id") == 1:
                assert message.get("result") == {"sub": sub}, message
                return first

    def unsubscribe(self, sub: int) -> bool:
        request = {"jsonrpc": "2.0", "id": 2, "method": "unsubscribe", "params": {"sub": sub}}
        self.ws.send(self.session.seal(json.dumps(request).encode()))
        answer = json.loads(self.session.open(self.ws.recv(timeout=5)))
        assert answer.get("id") == 2, answer
        return answer["result"]["found"]

    def drain(self, timeout: float) -> int | None:
        """Read (and drop) everything until the server's close; its close code."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed:
            return self.ws.close_code
        except TimeoutError:
            return None
        return None


def test_notifications_close_together_share_a_frame_and_an_answer_is_not_held_back(served, monkeypatch):
    # A gap far longer than the waits below: what arrives within them was not held back by it.
    monkeypatch.setattr(transport, "NOTIFICATION_GAP", 60.0)
    raw = RawSubscriber(served)
    writer = served.client()
    try:
        assert raw.subscribe(1, {"query": {"path": ["c"], "orderBy": [["n", "asc"]]}}) == {"docs": [], "changes": []}
        for n in (1, 2):  # acknowledged, their notifications wait for the gap
            doc(writer, "c").add({"n": n})
        request = {"jsonrpc": "2.0", "id": 7, "method": "get", "params": {"path": ["c", "missing"]}}
        raw.ws.send(raw.session.seal(json.dumps(request).encode()))
        batch = json.loads(raw.session.open(raw.ws.recv(timeout=WAIT)))
        assert isinstance(batch, list) and [m["method"] for m in batch] == ["snapshot", "snapshot"], batch
        added = [m["params"]["snapshot"]["changes"][0]["value"]["n"] for m in batch]
        assert added == [1, 2] and all(m["params"]["subs"] == [1] for m in batch)
        answer = json.loads(raw.session.open(raw.ws.recv(timeout=WAIT)))
        assert answer == {"jsonrpc": "2.0", "id": 7, "result": {"value": None}}
    finally:
        writer.close()
        raw.ws.close()


def test_listeners_of_one_query_on_a_connection_get_one_notification_naming_them_all(served):
    raw = RawSubscriber(served)
    writer = served.client()
    top = {"query": {"path": ["c"], "orderBy": [["n", "desc"]], "limit": 2}}
    try:
        for sub in (1, 2, 3):
            raw.subscribe(sub, top)
        raw.subscribe(4, {"query": {"path": ["c"]}})

        def notifications(count: int = 2) -> list[tuple[list[int], dict[str, Any]]]:
            """The next `count` notifications: usually one frame, but a commit made off the
            server's loop (a node of a shared storage writes on a worker thread) may reach a
            connection in two."""
            got: list[tuple[list[int], dict[str, Any]]] = []
            while len(got) < count:
                frame = json.loads(raw.session.open(raw.ws.recv(timeout=WAIT)))
                got += [(m["params"]["subs"], m["params"]["snapshot"]) for m in (frame if isinstance(frame, list) else [frame])]
            return got

        doc(writer, "c").add({"n": 1}, key="a")
        got = notifications()
        assert [subs for subs, _ in got] == [[1, 2, 3], [4]], got
        assert [c["id"] for c in got[0][1]["changes"]] == ["a"]
        assert raw.unsubscribe(2)
        doc(writer, "c").add({"n": 2}, key="b")
        assert [subs for subs, _ in notifications()] == [[1, 3], [4]]
    finally:
        writer.close()
        raw.ws.close()


class _Records(logging.Handler):
    """Log records of one logger tree kept for a test (the server logs from its loop thread)."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []
        self.overflow = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        message = record.getMessage()
        if "fell" in message and "behind" in message:
            self.overflow.set()


class SlowSubscriberRun:
    """What happened when a raw client subscribed and stopped reading while a writer wrote."""

    total = 2500
    subscriptions = 8  # frames per write on the raw connection (fewer than maxOutgoing: no burst drop)

    def __init__(self, loop_thread: Any, folder: Path):
        self.close_code: list[int | None] = []
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []
        self.elapsed = 0.0
        self.final_top: list[str] = []
        self.count = 0
        served = Served(loop_thread, folder, limits=Limits(maxOutgoing=16))
        self.logs = _Records(logging.WARNING)
        loggers = [logging.getLogger("montybase.server"), logging.getLogger("websockets")]
        for logger in loggers:
            logger.addHandler(self.logs)
        raw = RawSubscriber(served)
        listener, writer = served.client(), served.client()
        try:
            for sub in range(1, self.subscriptions + 1):
                # Different queries (limits of their own), so every write sends each its own message.
                query = {"path": ["feed"], "orderBy": [["i", "desc"]], "limit": 1000 + sub}
                assert raw.subscribe(sub, {"query": query}) == {"docs": [], "changes": []}
            top = Collector()
            doc(listener, "feed").order_by("i", "desc").limit(10).on_snapshot(top)
            top.wait_count(1)

            def read_after_the_fact() -> None:
                # Only once the server has given up on it: its close frame is queued behind the data.
                if self.logs.overflow.wait(60):
                    self.close_code.append(raw.drain(WAIT))

            drainer = threading.Thread(target=read_after_the_fact, daemon=True)
            drainer.start()
            pad = "x" * 400
            started = time.monotonic()
            try:
                for i in range(self.total):
                    t0 = time.monotonic()
                    doc(writer, "feed").set({"i": i, "pad": pad}, key=f"d{i:05d}")
                    self.latencies.append(time.monotonic() - t0)
            except Exception as exc:  # reported by the test
                self.errors.append(exc)
            self.elapsed = time.monotonic() - started
            self.overflowed = self.logs.overflow.wait(WAIT)
            drainer.join(WAIT + 5)
            want = [f"d{i:05d}" for i in range(self.total - 1, self.total - 11, -1)]
            try:
                top.wait_for(lambda items: [d["id"] for d in items[-1].docs] == want, "the final top 10")
            except AssertionError:
                pass
            self.final_top = [d["id"] for d in top.last().docs]
            self.want_top = want
            self.count = doc(writer, "feed").count()
            deadline = time.monotonic() + WAIT  # the raw connection's 8 listeners go; the normal one stays
            while len(served.database.watcher) != 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            self.listeners_left = len(served.database.watcher)
        finally:
            self.logs.overflow.set()
            for logger in loggers:
                logger.removeHandler(self.logs)
            raw.ws.close()
            listener.close()
            writer.close()
            served.stop()


@pytest.fixture(scope="module")
def slow_subscriber_run(loop_thread, tmp_path_factory) -> SlowSubscriberRun:
    return SlowSubscriberRun(loop_thread, tmp_path_factory.mktemp("slow"))


def test_a_slow_subscriber_is_dropped_while_a_writer_and_a_listener_carry_on(slow_subscriber_run):
    run = slow_subscriber_run
    assert not run.errors, run.errors
    assert len(run.latencies) == run.total
    assert run.elapsed < 40, f"the writer took {run.elapsed:.1f}s for {run.total} writes"
    assert max(run.latencies) < 5, f"a write waited {max(run.latencies):.1f}s"
    assert run.overflowed, "the slow subscriber was never dropped"
    assert run.close_code == [4008], run.close_code
    assert run.final_top == run.want_top
    assert run.count == run.total
    assert run.listeners_left == 1, "the dropped connection's listeners were not released"


def test_dropping_a_slow_subscriber_logs_no_error(slow_subscriber_run):
    errors = [r for r in slow_subscriber_run.logs.records if r.levelno >= logging.ERROR]
    assert errors == [], [(r.name, r.getMessage()) for r in errors]


def stop_even_if_stuck(served: Served) -> None:
    """Stop a test server; first cancel connection handlers that would never end by themselves
    (see test_a_connection_dropped_for_overflow_releases_its_listeners_and_slot)."""

    async def cancel_handlers() -> None:
        for task in list(served.server.server.handler_tasks):
            task.cancel()

    served.loop_thread.run(cancel_handlers())
    served.stop()


def test_a_prompt_client_with_more_listeners_than_max_outgoing_is_not_dropped(loop_thread, tmp_path):
    served = Served(loop_thread, tmp_path, limits=Limits(maxOutgoing=16))
    logs = _Records(logging.WARNING)
    logging.getLogger("montybase.server").addHandler(logs)
    client, writer = served.client(), served.client()
    try:
        collectors = [Collector() for _ in range(20)]
        for i, collector in enumerate(collectors):
            doc(client, "c", f"d{i}").on_snapshot(collector)
            collector.wait_count(1)
        batch = writer.batch()
        for i in range(20):
            batch.set(doc(writer, "c"), {"n": i}, key=f"d{i}")
        batch.commit()  # the notifications are queued (or the connection dropped) before it returns
        assert not logs.overflow.is_set(), [r.getMessage() for r in logs.records]
        for i, collector in enumerate(collectors):
            collector.wait_for(lambda items, i=i: items[-1].value == {"n": i}, f"d{i}")
        assert all(len(c.snapshots()) == 2 for c in collectors), "a listener was resubscribed"
    finally:
        logging.getLogger("montybase.server").removeHandler(logs)
        client.close()
        writer.close()
        stop_even_if_stuck(served)


def test_a_connection_dropped_for_overflow_releases_its_listeners_and_slot(loop_thread, tmp_path):
    served = Served(loop_thread, tmp_path, limits=Limits(maxOutgoing=16))
    raw = RawSubscriber(served)
    writer = served.client(admin=True)
    try:
        for sub in range(1, 9):  # every write then sends it 8 documents of 2 KB, in one frame
            raw.subscribe(sub, {"query": {"path": ["c"]}})
        # Requests already on their way, as pipelining clients send them, then the client stops
        # reading while a writer fills its queue.
        frames = [raw.session.seal(json.dumps({"jsonrpc": "2.0", "id": n, "method": "get",
                                               "params": {"path": ["c", "d"]}}).encode()) for n in range(100, 140)]
        with raw.ws.send_context():  # every frame in one write, before the server can answer
            for frame in frames:
                raw.ws.protocol.send_binary(frame)
        doc(writer, "c").count()  # connected: two connections until the subscriber is dropped
        deadline = time.monotonic() + WAIT
        written = 0
        while served.server._open > 1 and time.monotonic() < deadline and written < 5000:
            doc(writer, "c").add({"pad": "x" * 2000, "n": written})
            written += 1
        assert raw.drain(WAIT) == 4008
        deadline = time.monotonic() + 5
        while len(served.database.watcher) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(served.database.watcher) == 0, "the dropped connection's listeners are still registered"
        writer.close()
        stopping = threading.Thread(target=served.stop, daemon=True)
        stopping.start()
        stopping.join(10)
        assert not stopping.is_alive(), "the server does not stop"
    finally:
        writer.close()
        raw.ws.close()
        stop_even_if_stuck(served)


# Reconnect to a restarted server


def test_a_listener_gets_the_current_state_again_after_the_server_restarts(tmp_path):
    server_config(tmp_path / "montybase.json", hot=True)  # on files, acknowledged writes survive the SIGKILL
    port = free_port()
    args = server_command("--host", "127.0.0.1", "--port", str(port))
    first = Proc(args, cwd=tmp_path)
    second = None
    listening = writing = None
    try:
        url = first.endpoint()
        assert url == f"ws://127.0.0.1:{port}"
        listening = Montybase(api=url, config=tmp_path / "montybase.json")
        got = Collector()
        doc(listening, "scores").set({"score": 1}, key="a")
        doc(listening, "scores").on_snapshot(got)
        assert [d["id"] for d in got.wait_count(1)[0].docs] == ["a"]
        before = len(got.snapshots())
        first.kill9()
        assert first.popen.returncode == -signal.SIGKILL
        second = Proc(args, cwd=tmp_path)
        assert second.endpoint() == url
        writing = Montybase(api=url, config=tmp_path / "montybase.json")
        doc(writing, "scores").set({"score": 2}, key="b")
        snapshots = got.wait_for(
            lambda items: len(items) > before and [d["id"] for d in items[-1].docs] == ["a", "b"],
            "the current state after the restart", timeout=15)
        assert snapshots[-1].docs == [{"id": "a", "value": {"score": 1}}, {"id": "b", "value": {"score": 2}}]
        # The resubscription delivered a full snapshot (every document added), not just the news.
        fulls = [s for s in snapshots[before:] if s.changes and all(c["type"] == "added" and c["old_index"] == -1 for c in s.changes)
                 and len(s.changes) == len(s.docs)]
        assert fulls, snapshots[before:]
        # And it keeps listening on the new connection.
        doc(writing, "scores").set({"score": 3}, key="c")
        got.wait_for(lambda items: [d["id"] for d in items[-1].docs] == ["a", "b", "c"], "a change after the restart")
    finally:
        for handle in (listening, writing):
            if handle is not None:
                handle.close()
        first.cleanup()
        if second is not None:
            second.cleanup()
