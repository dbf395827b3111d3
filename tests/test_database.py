"""Database reads and writes from several threads at once: a query that builds an index of a
large collection lets writers in while it builds, and the index it keeps is caught up; a
snapshot taken during writes is the state at its sequence; what opening a store reports; large
blocks of memory given back when freed."""

from __future__ import annotations

import copy
import ctypes
import gc
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from server import database
from server import storage as storage_module
from server.database import Database
from server.errors import NotFoundError, PermissionDeniedError
from server.query import parse_query, run
from server.rules import Principal, Rules
from server.storage import FileStorage, MemoryStorage, decode_snapshot
from server.tree import HAND_OVER_BUILDS_FROM, build_index

SIZE = HAND_OVER_BUILDS_FROM * 6
QUIET = 3600.0  # a tick interval that never comes during a test: no background flush or snapshot


def test_writes_go_on_while_queries_build_indexes_and_every_index_stays_right():
    db = Database()
    rng = random.Random(9)
    for start in range(0, SIZE, 500):
        db.commit([{"op": "set", "path": ["c", f"d{i:06}"], "value": {f"f{j}": rng.randrange(100) for j in range(6)}}
                   for i in range(start, start + 500)])
    stop = threading.Event()
    waits: list[float] = []

    def write() -> None:
        writer = random.Random(1)
        while not stop.is_set():
            started = time.perf_counter()
            db.write("set", {"path": ["c", f"d{writer.randrange(SIZE):06}"], "value": {"f0": writer.randrange(100)}}, None)
            waits.append(time.perf_counter() - started)
            time.sleep(0.001)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        builds = time.perf_counter()
        for j in range(6):
            wire = {"path": ["c"], "where": [[f"f{j}", ">=", 98]], "orderBy": [[f"f{(j + 1) % 6}", "desc"]], "limit": 20}
            db.query({"query": wire}, None)
        builds = (time.perf_counter() - builds) / 12  # 12 indexes built: the mean time of one
    finally:
        stop.set()
        thread.join()
    assert len(waits) > 12
    # Inline, a writer would wait for whole builds, at most writes; handed over, for a copy of the
    # collection. (One wait may also hold a pass of the garbage collector over the whole store,
    # or the machine's own pause: the second longest is compared.)
    assert sorted(waits)[-2] < builds, (sorted(waits)[-3:], builds)
    documents = db.tree.collections[("c",)]
    for spec in db.tree.indexes(("c",)):
        assert list(db.tree.index(("c",), spec).entries) == list(build_index(spec, documents).entries), spec
    wire = {"path": ["c"], "where": [["f0", ">=", 98]], "orderBy": [["f1", "desc"]], "limit": 20}
    assert db.query({"query": wire}, None)[0]["docs"] == [
        {"id": doc_id, "value": document} for doc_id, document in run(parse_query(wire), documents, None)
    ]
    db.close()


def test_a_client_get_of_a_document_or_field_does_not_wait_for_a_selection_holding_the_lock():
    """A query selects under the database lock; a client's get of one document (or a field of
    one, or a missing one) answers meanwhile, by the same rules, and a collection's get waits."""
    db = Database(rules=Rules({"users": {"read": "owner", "owner": "uid"}, "c": {"read": "public"}}))
    db.commit([{"op": "set", "path": ["users", "alice"], "value": {"uid": "alice", "stats": {"wins": 3}}},
               {"op": "set", "path": ["c", "d1"], "value": {"n": 1}}])
    alice, bob = Principal("client", "alice", 1, "10.0.0.1"), Principal("client", "bob", 2, "10.0.0.2")
    held, release = threading.Event(), threading.Event()

    def select() -> None:
        with db._lock:  # what a query's selection holds
            held.set()
            release.wait(30)

    selecting = threading.Thread(target=select)
    selecting.start()
    answers: list = []
    listing = threading.Thread(target=lambda: answers.append(db.get({"path": ["c"]}, alice)[0]["value"]))
    try:
        assert held.wait(30)
        assert db.get({"path": ["users", "alice"]}, alice)[0]["value"] == {"uid": "alice", "stats": {"wins": 3}}
        assert db.get({"path": ["users", "alice", "stats"]}, alice)[0]["value"] == {"wins": 3}
        assert db.get({"path": ["users", "alice", "stats", "wins"]}, alice)[0]["value"] == 3
        assert db.get({"path": ["c", "gone"]}, alice)[0]["value"] is None
        with pytest.raises(PermissionDeniedError):
            db.get({"path": ["users", "alice"]}, bob)
        with pytest.raises(PermissionDeniedError):
            db.get({"path": ["users", "alice", "stats"]}, bob)
        listing.start()
        listing.join(0.2)
        assert listing.is_alive() and not answers  # a collection's get is a selection: it waits
    finally:
        release.set()
        selecting.join(30)
    listing.join(30)
    assert answers == [{"d1": {"n": 1}}]
    db.close()


# Opening a store


def test_opening_reports_the_snapshot_then_each_journal_record_replayed():
    storage = MemoryStorage()
    first = Database(storage, sync_interval=QUIET)
    first.commit([{"op": "set", "path": ["c", f"d{i}"], "value": {"n": i}} for i in range(3)])
    first.snapshot()
    first.commit([{"op": "set", "path": ["c", "a"], "value": {}}, {"op": "set", "path": ["c", "b"], "value": {}}])
    first.write("delete", {"path": ["c", "d0"]}, None)
    del first  # dropped without close (a crash): the journal holds the last two records
    reported: list[tuple[int, int]] = []
    reopened = Database(storage, sync_interval=QUIET, loading=lambda done, total: reported.append((done, total)))
    try:
        assert reported == [(3, 6), (5, 6), (6, 6)]
        assert sorted(reopened.tree.collections[("c",)]) == ["a", "b", "d1", "d2"]
    finally:
        reopened.close()


@pytest.mark.parametrize("collecting", [True, False], ids=["on", "off"])
def test_opening_leaves_the_garbage_collector_as_it_was(collecting):
    storage = MemoryStorage()
    Database(storage, sync_interval=QUIET).close()
    (gc.enable if collecting else gc.disable)()
    try:
        Database(storage, sync_interval=QUIET).close()
        assert gc.isenabled() is collecting
    finally:
        gc.enable()


def test_a_large_store_is_frozen_out_of_the_collectors_walks_and_a_small_one_is_not(monkeypatch):
    storage = MemoryStorage()
    first = Database(storage, sync_interval=QUIET)
    first.commit([{"op": "set", "path": ["c", f"d{i}"], "value": {"tags": ["x"]}} for i in range(5)])
    first.close()

    def walked(db: Database) -> int:
        """How many of the documents a collection of the oldest generation would walk."""
        tracked = {id(o) for o in gc.get_objects()}  # (not the frozen ones)
        return sum(id(doc) in tracked for doc in db.tree.collections[("c",)].values())

    monkeypatch.setattr(database, "FREEZE_FROM", 6)
    small = Database(storage, sync_interval=QUIET)
    assert walked(small) == 5
    small.close()
    monkeypatch.setattr(database, "FREEZE_FROM", 5)
    try:
        large = Database(storage, sync_interval=QUIET)
        assert walked(large) == 0
        large.close()
    finally:
        gc.unfreeze()


_LARGE_BLOCKS = """
import ctypes, sys
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Mallinfo2
if sys.argv[1] == "database":
    from server.database import Database
    Database().close()
bytearray(20 << 20)  # a block of 20 MiB, made and freed
before = mallinfo2().hblkhd
block = bytearray(1 << 20)
print(mallinfo2().hblkhd - before)  # bytes of blocks on pages of their own
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="glibc's mallinfo2 tells how a block was allocated")
def test_once_a_database_opened_large_blocks_have_pages_of_their_own_which_go_back_when_freed():
    """glibc raises its bound for blocks on pages of their own to the size of a large one freed,
    and keeps the large blocks freed after (a growing collection's old tables) in the process."""
    def own_pages(before: str) -> int:
        run = subprocess.run([sys.executable, "-c", _LARGE_BLOCKS, before], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent.parent, timeout=60, check=True)
        return int(run.stdout)

    assert own_pages("alone") == 0  # glibc's own way: the 1 MiB block comes from the heap
    assert own_pages("database") >= 1 << 20


# Snapshots


@pytest.mark.parametrize("slow", ["fsync", "fsync_dir"])
def test_writes_go_on_while_a_snapshot_waits_for_the_disk(tmp_path, slow):
    """Before a snapshot the journal is synced (a second of writes) before the database lock is
    taken, and the new journal's name is made durable by the next sync, not under the lock: a
    write while the disk is slow is answered, and the snapshot then covers it too."""
    syncing, release = threading.Event(), threading.Event()

    class SlowDisk(storage_module.LocalFiles):
        slow = False

        def wait(self):
            if self.slow:
                self.slow = False
                syncing.set()
                assert release.wait(30)

        def fsync(self, fd):
            if slow == "fsync":
                self.wait()
            super().fsync(fd)

        def fsync_dir(self, path):
            if slow == "fsync_dir":
                self.wait()
            super().fsync_dir(path)

    disk = SlowDisk()
    db = Database(FileStorage(tmp_path / "db.json", files=disk), sync_interval=QUIET, snapshot_seconds=QUIET)
    db.write("set", {"path": ["c", "before"], "value": {"n": 1}}, None)
    disk.slow = True
    snapshot = threading.Thread(target=db.snapshot)
    snapshot.start()
    assert syncing.wait(10)
    writer = threading.Thread(target=db.write, args=("set", {"path": ["c", "during"], "value": {"n": 2}}, None))
    writer.start()
    writer.join(10)
    answered = not writer.is_alive()
    release.set()
    snapshot.join(30)
    writer.join(30)
    db.close()
    assert answered
    reopened = Database(FileStorage(tmp_path / "db.json"), sync_interval=QUIET)
    try:
        assert reopened.tree.collections[("c",)] == {"before": {"n": 1}, "during": {"n": 2}}
    finally:
        reopened.close()


def test_a_snapshot_taken_during_writes_is_the_state_at_its_sequence(tmp_path, monkeypatch):
    """Writers in threads while snapshot() runs: the snapshot file, and a database opened on it
    alone, hold exactly the writes numbered up to its seq; the store as a whole holds them all."""
    monkeypatch.setattr(storage_module, "SNAPSHOT_CHUNK", 50)  # many pieces: writers get in between
    path = tmp_path / "db.json"
    db = Database(FileStorage(path), hot=True, sync_interval=QUIET, snapshot_seconds=1e9)
    initial = {f"d{i:05}": {"n": i} for i in range(20_000)}
    for start in range(0, len(initial), 500):
        db.commit([{"op": "set", "path": ["c", doc_id], "value": value}
                   for doc_id, value in list(initial.items())[start:start + 500]])
    log: list[tuple[int, float, str, str, dict | None]] = []  # (seq, when acknowledged, op, id, value)
    stop = threading.Event()

    def write(number: int) -> None:
        rng = random.Random(number)
        for i in range(100_000):
            if stop.is_set():
                return
            doc_id, roll = f"d{rng.randrange(21_000):05}", rng.random()
            if roll < 0.2:
                _, seq = db.write("delete", {"path": ["c", doc_id]}, None)
                if seq:  # (0: there was nothing to delete, nothing was written)
                    log.append((seq, time.monotonic(), "delete", doc_id, None))
            elif roll < 0.4:
                try:
                    _, seq = db.write("update", {"path": ["c", doc_id], "fields": [["u", i]]}, None)
                except NotFoundError:
                    continue
                log.append((seq, time.monotonic(), "update", doc_id, {"u": i}))
            else:
                value = {"w": number, "i": i}
                _, seq = db.write("set", {"path": ["c", doc_id], "value": value}, None)
                log.append((seq, time.monotonic(), "set", doc_id, value))

    def state_at(seq: int) -> dict[str, dict]:
        docs = copy.deepcopy(initial)
        for number, _, op, doc_id, value in sorted(log, key=lambda entry: entry[0]):
            if number > seq:
                break
            if op == "delete":
                docs.pop(doc_id, None)
            elif op == "update":
                docs[doc_id] = {**docs[doc_id], **value}
            else:
                docs[doc_id] = value
        return docs

    writers = [threading.Thread(target=write, args=(n,)) for n in range(3)]
    for thread in writers:
        thread.start()
    taken: list[tuple[float, float, bytes]] = []
    try:
        for _ in range(3):
            time.sleep(0.05)
            started = time.monotonic()
            db.snapshot()
            taken.append((started, time.monotonic(), path.read_bytes()))
    finally:
        stop.set()
        for thread in writers:
            thread.join(30)
    # Checked once every write acknowledged is in the log (a writer logs its write after the answer).
    overlapping = 0
    for round_, (started, ended, data) in enumerate(taken):
        seq, collections, _ = decode_snapshot(data)
        # Writes after the snapshot's seq acknowledged before it was written: made while it was encoded.
        overlapping += sum(1 for number, when, *_ in log if number > seq and started <= when <= ended)
        expected = state_at(seq)
        assert collections == {("c",): expected}, f"round {round_}: the snapshot at {seq} is not the state at {seq}"
        alone = tmp_path / f"alone{round_}"
        alone.mkdir()
        (alone / "db.json").write_bytes(data)
        reopened = Database(FileStorage(alone / "db.json"), sync_interval=QUIET)
        try:
            assert reopened.seq == seq and reopened.tree.collections == {("c",): expected}
        finally:
            reopened.close()
    assert overlapping > 0, "no write came in while a snapshot was taken: the test proves nothing"
    final_seq = db.seq
    db.close()
    reopened = Database(FileStorage(path), sync_interval=QUIET)
    try:
        assert reopened.seq == final_seq and reopened.tree.collections == {("c",): state_at(final_seq)}
    finally:
        reopened.close()
