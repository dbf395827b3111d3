"""Storage: round trips, snapshots and their policy, legacy files, damage, the storage lock.

The behaviour runs on both storages (TinyDB's habit): the real `FileStorage` on files in a
temporary folder, and its twin `MemoryStorage`, whose files live in the object, read and
damaged here by name the same way. The lock tests are about processes and files: disk only.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import orjson
import pytest

from python_client import Montybase, doc, increment
from python_client import UnavailableError as ClientUnavailableError
from server import storage as storage_module
from server import values
from server.config import create_config
from server.database import Database
from server.errors import UnavailableError
from server.storage import (
    SNAPSHOT_CHUNK, FileStorage, MemoryStorage, StorageReader, decode_snapshot, snapshot_chunks,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/writer.py


# Helpers


class Place:
    """Where a storage keeps its files: a folder for FileStorage, or one MemoryStorage object
    (every open reuses it, as a restarted process reopens the same folder)."""

    def __init__(self, kind: str, folder: Path):
        self.kind = kind
        self.folder = folder
        self.memory = MemoryStorage() if kind == "memory" else None
        self.path = folder / "db.json" if self.memory is None else self.memory.path

    def storage(self) -> FileStorage:
        return FileStorage(self.path) if self.memory is None else self.memory

    def open_db(self, **options) -> Database:
        return Database(self.storage(), **options)

    def montybase(self, **options) -> Montybase:
        """The public API on this storage."""
        if self.memory is None:
            return Montybase(config=self.folder / "montybase.json", **options)
        return Montybase(storageBucket=self.memory, **options)

    def file(self, name: str) -> Path:
        return self.path.with_name(name)

    def names(self) -> list[str]:
        if self.memory is None:
            return [p.name for p in self.folder.iterdir() if p.is_file()]
        return self.memory.files.listdir(self.path.parent)

    def exists(self, path: Path) -> bool:
        return path.name in self.names()

    def read(self, path: Path) -> bytes:
        return path.read_bytes() if self.memory is None else self.memory.files.read(path)

    def write(self, path: Path, data: bytes) -> None:
        if self.memory is None:
            path.write_bytes(data)
        else:
            self.memory.files.write_file(path, [data])

    def remove(self, path: Path) -> None:
        if self.memory is None:
            path.unlink()
        else:
            self.memory.files.unlink(path)

    def listing(self) -> dict[str, bytes]:
        """Every file of the storage (but the lock) with its bytes."""
        names = sorted(n for n in self.names() if n.startswith("db.json") and not n.endswith(".lock"))
        return {name: self.read(self.file(name)) for name in names}

    def journals(self) -> list[Path]:
        found = [n for n in self.names() if n.startswith("db.json.") and n.endswith(".journal")]
        return [self.file(n) for n in sorted(found, key=lambda n: int(n[len("db.json."):-len(".journal")]))]

    def snapshot_header(self) -> dict | None:
        if not self.exists(self.path):
            return None
        return json.loads(self.read(self.path))


@pytest.fixture(params=["file", "memory"])
def place(request, tmp_path) -> Place:
    return Place(request.param, tmp_path)


def record_offsets(data: bytes) -> list[int]:
    """Start offsets of the records of a journal (written here without Montybase code):
    u32 length | u32 crc | u64 seq | payload."""
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += 16 + int.from_bytes(data[offset : offset + 4], "big")
    assert offset == len(data)
    return offsets


def make_journals(place: Place, sizes: list[int]) -> int:
    """Journals holding records 1.. (one `set` of c/k<seq> each), a new journal per entry of `sizes`."""
    storage = place.storage()
    storage.load()
    seq = 0
    for number, size in enumerate(sizes):
        if number:
            storage.rotate(seq)
        for _ in range(size):
            seq += 1
            storage.append(seq, [["set", ["c", f"k{seq}"], {"n": seq}]])
    storage.close()
    return seq


def docs_of(seqs) -> dict:
    return {f"k{seq}": {"n": seq} for seq in seqs}


def open_db(path: Path, **options) -> Database:
    return Database(FileStorage(path), **options)


def read_all(db: Database) -> dict[str, dict]:
    """Every collection the database holds, keyed by its '/'-joined path."""
    return {"/".join(path): dict(docs) for path, docs in db.tree.collections.items()}


def wait_until(predicate, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# Round trips and snapshots


def test_round_trip_public_api(place):
    db = place.montybase()
    users = doc(db, "users")
    users.set({"name": "Amor", "n": 1}, key="amor")
    generated = users.add({"name": "Generated"})
    users.update({"n": increment(4), "city.name": "Paris"}, key="amor")
    doc(db, "users", "amor").append("posts").set({"title": "first"}, key="p1")
    users.set({"name": "Gone"}, key="gone")
    db.batch().set(users, {"name": "Batch"}, key="b1").delete(users, key="gone").commit()
    db.close()
    assert place.exists(place.path)

    again = place.montybase()
    try:
        assert doc(again, "users").get() == {
            "amor": {"name": "Amor", "n": 5, "city": {"name": "Paris"}},
            "b1": {"name": "Batch"},
            generated: {"name": "Generated"},
        }
        assert doc(again, "users", "amor").append("posts").get() == {"p1": {"title": "first"}}
        doc(again, "users").delete(key="amor")  # takes its posts with it
    finally:
        again.close()
    third = place.montybase()
    try:
        assert doc(third, "users").get() == {"b1": {"name": "Batch"}, generated: {"name": "Generated"}}
        assert doc(third, "users", "amor").append("posts").get() == {}
    finally:
        third.close()


@pytest.mark.parametrize("hot", [False, True], ids=["default", "hot"])
def test_round_trip_many_writes(place, hot):
    import writer

    model = writer.Model()
    db = place.open_db(hot=hot, snapshot_changes=40, snapshot_seconds=300)
    for count, item in zip(range(300), writer.workload(7, "c")):
        writer.apply_write(db, item)
        model.apply_item(item)
        if count % 97 == 96:
            db.snapshot()
    db.close()
    db = place.open_db()
    try:
        assert read_all(db) == model.collections
    finally:
        db.close()


def test_close_writes_snapshot_and_drops_journals(place):
    db = place.open_db(snapshot_changes=1000, snapshot_seconds=300)
    for i in range(10):
        db.commit([{"op": "set", "path": ["c", f"k{i}"], "value": {"n": i}}])
    db.commit([{"op": "set", "path": ["c", "k0", "sub"], "value": {"deep": True}}])  # a generated id in a subcollection
    assert not place.exists(place.path), "no snapshot before the policy or close asks for one"
    assert len(record_offsets(place.read(place.journals()[0]))) == 11
    expected = read_all(db)
    db.close()

    header = place.snapshot_header()
    assert header["__montybase__"] == 1 and header["seq"] == 11
    assert header["collections"] == expected
    assert "c/k0/sub" in header["collections"]
    for journal in place.journals():  # the covered journal is gone; at most an empty one follows
        assert place.read(journal) == b"" and int(journal.name.split(".")[2]) > 11, journal.name
    db = place.open_db()
    try:
        assert read_all(db) == expected
    finally:
        db.close()


def test_after_a_crash_a_new_database_recovers_every_write(place):
    """A Database dropped without close (a killed process): a new one on the same storage finds
    every write, those in the snapshot and those only in the journal after it."""
    db = place.open_db(snapshot_changes=1000, snapshot_seconds=300)
    for i in range(5):
        db.commit([{"op": "set", "path": ["c", f"k{i}"], "value": {"n": i}}])
    db.snapshot()
    db.commit([{"op": "update", "path": ["c", "k0"], "fields": [["n", 10]]}])
    db.commit([{"op": "delete", "path": ["c", "k1"]}])
    added = db.commit([{"op": "add", "path": ["c"], "value": {"n": 5}}])[0]["id"]
    expected = read_all(db)
    if place.memory is None:
        db.storage.close()  # what a killed process's end does to its files and lock
    del db
    gc.collect()  # nothing is left of it: its ticker stops
    db = place.open_db()
    try:
        assert read_all(db) == expected
        assert expected["c"][added] == {"n": 5} and "k1" not in expected["c"]
    finally:
        db.close()


def test_snapshot_policy_public_api(place):
    """storeMin=3, updateTime=0.5: nothing after 2 changes; a snapshot 0.5 s (and the next
    one-second tick) after the 3rd change, which also drops the journal it covers."""
    db = place.montybase(storeMin=3, updateTime=0.5)
    try:
        c = doc(db, "c")
        c.set({"n": 1}, key="a")
        c.set({"n": 2}, key="b")
        time.sleep(1.3)  # at least one tick (1 s) has passed
        assert not place.exists(place.path), "a snapshot after 2 changes though storeMin is 3"
        c.set({"n": 3}, key="c")
        third = time.monotonic()
        assert wait_until(lambda: place.exists(place.path), timeout=5), "no snapshot 5 s after the 3rd change"
        assert time.monotonic() - third >= 0.45, "the snapshot did not wait updateTime"
        assert wait_until(lambda: place.snapshot_header()["seq"] == 3, timeout=2)
        assert place.snapshot_header()["collections"] == {"c": {"a": {"n": 1}, "b": {"n": 2}, "c": {"n": 3}}}
        assert wait_until(lambda: all(place.read(j) == b"" for j in place.journals()), timeout=2)
        c.set({"n": 4}, key="d")  # one change: below storeMin again
        time.sleep(1.2)
        assert place.snapshot_header()["seq"] == 3
    finally:
        db.close()
    assert place.snapshot_header()["seq"] == 4  # close takes the last one


def test_snapshot_policy_seconds(place):
    """snapshot_changes=1, snapshot_seconds=0.8 with a 50 ms tick: not before 0.8 s, soon after."""
    db = place.open_db(snapshot_changes=1, snapshot_seconds=0.8, sync_interval=0.05)
    try:
        db.commit([{"op": "set", "path": ["c", "a"], "value": {"n": 1}}])
        start = time.monotonic()
        time.sleep(0.4)
        assert not place.exists(place.path)
        assert wait_until(lambda: place.exists(place.path), timeout=3)
        assert time.monotonic() - start >= 0.75
        assert place.snapshot_header()["seq"] == 1
    finally:
        db.close()


def test_original_bare_tree_loads_and_accepts_writes(place):
    original = json.dumps({"users": {"amor": {"name": "Amor"}}}).encode()
    place.write(place.path, original)
    db = place.montybase()
    try:
        assert doc(db, "users").get() == {"amor": {"name": "Amor"}}
        doc(db, "users").set({"name": "Bo"}, key="bo")
        doc(db, "users").update({"age": 30}, key="amor")
    finally:
        db.close()
    header = place.snapshot_header()
    assert header["__montybase__"] == 1  # rewritten in the new format
    again = place.montybase()
    try:
        assert doc(again, "users").get() == {"amor": {"name": "Amor", "age": 30}, "bo": {"name": "Bo"}}
    finally:
        again.close()


def test_memory_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = Montybase(storageBucket=":memory:")
    doc(db, "c").set({"n": 1}, key="k")
    doc(db, "c", "k").append("sub").add({"x": 1})
    assert doc(db, "c").get() == {"k": {"n": 1}}
    db.close()
    assert list(tmp_path.iterdir()) == []


# Generated ids across restarts

ID_WRITER = """
import sys, time
sys.path.insert(0, sys.argv[1])
behind, real_ns = int(sys.argv[3]), time.time_ns  # this process's clock is `behind` seconds late
time.time_ns = lambda: real_ns() - behind * 10**9
time.time = lambda: time.time_ns() / 1e9
from server.database import Database
from server.storage import FileStorage
db = Database(FileStorage(sys.argv[2]))
for i in range(5):
    print(db.commit([{"op": "add", "path": ["c"], "value": {"n": i}}])[0]["id"], flush=True)
if sys.argv[4] == "close":
    db.close()
else:
    print("killed", flush=True)  # no snapshot: the journal alone keeps the id time
    time.sleep(60)
"""


def test_ids_stay_in_order_across_restarts_whose_clock_went_back(tmp_path):
    """A clean stop (the snapshot keeps the id time), then a run an hour behind that is killed
    (its journal keeps it), then one two hours behind: every id sorts after the earlier ones."""
    path = tmp_path / "db.json"
    ids: list[str] = []
    for behind, end in [(0, "close"), (3600, "kill"), (7200, "close")]:
        proc = subprocess.Popen(
            [sys.executable, "-c", ID_WRITER, str(ROOT), str(path), str(behind), end],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            lines = [proc.stdout.readline().strip() for _ in range(5)]
            assert all(len(line) == 20 for line in lines), (lines, proc.stderr.read())
            ids += lines
            if end == "kill":
                assert proc.stdout.readline().strip() == "killed"
                os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) in (0, -signal.SIGKILL), proc.stderr.read()
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            proc.stdout.close()
            proc.stderr.close()
    assert ids == sorted(ids), "an id made after a restart sorts before an older one"
    db = open_db(path)
    try:
        assert list(db.get({"path": ["c"]}, None)[0]["value"]) == ids  # id order is creation order
        assert [doc["n"] for doc in db.get({"path": ["c"]}, None)[0]["value"].values()] == [0, 1, 2, 3, 4] * 3
    finally:
        db.close()


# Damage: refuse to start, change nothing, say what to do


CORRUPT_SNAPSHOTS = {
    "garbage": b"\x00\xff\x13garbage\x88 not json",
    "truncated": json.dumps(
        {"__montybase__": 1, "seq": 3, "collections": {"c": {"k1": {"n": 1}, "k2": {"n": 2}}}}
    ).encode()[:40],
    "array": b'[{"users": {"amor": {"name": "Amor"}}}]',
    "empty": b"",
    "wrong format": b'{"__montybase__": 2, "seq": 1, "collections": {}}',
    "collection not an object": b'{"users": [1, 2]}',
    "nan": b'{"users": {"a": {"x": NaN}}}',
}


@pytest.mark.parametrize("content", CORRUPT_SNAPSHOTS.values(), ids=CORRUPT_SNAPSHOTS.keys())
def test_corrupt_snapshot_refuses_to_start(place, content):
    make_journals(place, [2])  # a journal beside it, which must not be touched either
    place.write(place.path, content)
    create_config(place.folder / "montybase.json")
    before = place.listing()

    with pytest.raises(UnavailableError) as caught:
        place.open_db()
    message = str(caught.value)
    assert str(place.path) in message
    assert "damaged" in message and "Restore it from a backup" in message and "Nothing was changed" in message
    assert caught.value.data["file"] == str(place.path)
    with pytest.raises(ClientUnavailableError):  # the public API refuses the same way
        place.montybase()
    assert place.listing() == before, "a refused start changed files"

    # The lock was released: once repaired, the storage opens in this same process.
    place.write(place.path, b'{"c": {"fixed": {"n": 0}}}')
    db = place.open_db()
    try:
        assert read_all(db) == {"c": {"fixed": {"n": 0}, **docs_of([1, 2])}}
    finally:
        db.close()


@pytest.mark.parametrize("where", ["payload", "crc", "seq", "length"])
def test_corrupt_record_in_older_journal_refuses(place, where):
    make_journals(place, [4, 4])
    first, second = place.journals()
    data = bytearray(place.read(first))
    offset = record_offsets(bytes(data))[1]
    data[offset + {"payload": 20, "crc": 5, "seq": 15, "length": 3}[where]] ^= 0x01
    place.write(first, bytes(data))
    before = place.listing()

    with pytest.raises(UnavailableError) as caught:
        place.open_db()
    message = str(caught.value)
    assert f"journal {first} is damaged at byte {offset}" in message
    assert f"truncate that file at byte {offset}" in message
    assert place.listing() == before, "a refused start changed files"


@pytest.mark.parametrize("where", ["payload", "crc", "seq", "length"])
@pytest.mark.parametrize("record", [0, 2, 3], ids=["first", "middle", "next to last"])
def test_corrupt_record_in_middle_of_newest_journal_refuses(place, where, record):
    """Damage followed by intact records is not a torn tail, even in the newest journal."""
    make_journals(place, [5])  # one journal: it is the newest
    (journal,) = place.journals()
    data = bytearray(place.read(journal))
    offset = record_offsets(bytes(data))[record]
    data[offset + {"payload": 20, "crc": 5, "seq": 15, "length": 3}[where]] ^= 0x01
    place.write(journal, bytes(data))
    before = place.listing()

    try:
        with pytest.raises(UnavailableError) as caught:
            place.open_db().close()
        assert f"journal {journal} is damaged at byte {offset}" in str(caught.value)
    finally:
        assert place.listing() == before, "intact records were cut off the journal"


def test_lost_block_in_middle_of_newest_journal_refuses(place):
    """A zeroed 4 KiB block spanning ~90 records, intact records after it: damage, not a torn tail."""
    make_journals(place, [200])
    (journal,) = place.journals()
    data = bytearray(place.read(journal))
    data[4096:8192] = bytes(4096)  # a block lost: records on both sides of it are intact
    place.write(journal, bytes(data))
    before = place.listing()
    try:
        with pytest.raises(UnavailableError):
            place.open_db().close()
    finally:
        assert place.listing() == before, "intact records after the lost block were cut off"


def test_journal_gap_refuses(place):
    make_journals(place, [3, 3, 3])
    first, middle, last = place.journals()
    place.remove(middle)  # records 4-6 missing
    before = place.listing()
    with pytest.raises(UnavailableError) as caught:
        place.open_db()
    message = str(caught.value)
    assert f"journal {last} holds the records from 7 on" in message and "end at 3" in message and "missing" in message
    assert place.listing() == before


def test_journal_missing_record_refuses(place):
    make_journals(place, [5])
    (journal,) = place.journals()
    data = place.read(journal)
    offsets = record_offsets(data)
    place.write(journal, data[: offsets[2]] + data[offsets[3] :])  # record 3 cut out
    before = place.listing()
    with pytest.raises(UnavailableError) as caught:
        place.open_db()
    assert f"holds record 4 at byte {offsets[2]}" in str(caught.value)
    assert place.listing() == before


def test_journals_without_their_start_refuse(place):
    """The oldest journal starts after the snapshot: records in between are missing."""
    make_journals(place, [3, 3])
    place.remove(place.journals()[0])
    before = place.listing()
    with pytest.raises(UnavailableError):
        place.open_db()
    assert place.listing() == before


def test_lost_snapshot_after_a_clean_stop_refuses(place):
    """A clean stop leaves the snapshot and an empty journal named after the record it continues
    from: without the snapshot, that name shows what is missing."""
    db = place.open_db()
    for i in range(3):
        db.commit([{"op": "set", "path": ["c", f"k{i}"], "value": {"n": i}}])
    db.close()
    (journal,) = place.journals()
    assert place.read(journal) == b"" and journal.name == "db.json.4.journal"
    place.remove(place.path)
    before = place.listing()
    with pytest.raises(UnavailableError) as caught:
        place.open_db()
    message = str(caught.value)
    assert f"the snapshot {place.path} is missing, but journal {journal} continues it from record 3" in message
    assert "Restore the snapshot from a backup" in message and "Nothing was changed" in message
    assert place.listing() == before, "a refused start changed files"


def test_empty_newest_journal_after_a_gap_refuses(place):
    """Records 4-6 lost with their journal, the next one still empty: nothing reads a record
    past the gap, the journal's name alone shows it."""
    make_journals(place, [3, 3, 0])
    first, middle, empty = place.journals()
    place.remove(middle)
    with pytest.raises(UnavailableError) as caught:
        place.open_db()
    assert f"journal {empty} holds the records from 7 on, but the records before it end at 3" in str(caught.value)


SNAPSHOT_DAMAGE = {
    "a digit changed": lambda data: data.replace(b'"n":1}', b'"n":7}', 1),
    "a key changed": lambda data: data.replace(b'"k1"', b'"k7"', 1),
    "the seq changed": lambda data: data.replace(b'"seq":3', b'"seq":2', 1),
    "the checksum changed": lambda data: data[:-3] + bytes([data[-3] ^ 1]) + data[-2:],
}


@pytest.mark.parametrize("damage", SNAPSHOT_DAMAGE.values(), ids=SNAPSHOT_DAMAGE.keys())
def test_snapshot_that_fails_its_checksum_refuses(place, damage):
    """Still valid JSON, still a snapshot: only its checksum shows it changed."""
    db = place.open_db()
    for i in range(3):
        db.commit([{"op": "set", "path": ["c", f"k{i}"], "value": {"n": i}}])
    db.close()
    data = place.read(place.path)
    assert json.loads(data)["crc32"] >= 0
    changed = damage(data)
    assert changed != data and json.loads(changed)
    place.write(place.path, changed)
    before = place.listing()
    with pytest.raises(UnavailableError) as caught:
        place.open_db()
    message = str(caught.value)
    assert f"the snapshot {place.path} is damaged: its checksum does not match its content" in message
    assert place.listing() == before

    unchecked = json.loads(changed)  # fixed by hand: without its checksum it loads as it says
    del unchecked["crc32"]
    place.write(place.path, json.dumps(unchecked, indent=2).encode())
    if unchecked["seq"] != 3:  # the journal after it still shows records 3 and before are covered
        with pytest.raises(UnavailableError, match="holds the records from 4 on"):
            place.open_db()
        return
    db = place.open_db()
    try:
        assert read_all(db) == unchecked["collections"]
    finally:
        db.close()


TORN = {
    "1 byte of header": lambda rec, last: last[:1],
    "header cut": lambda rec, last: last[:15],
    "header only": lambda rec, last: last[:16],
    "payload cut": lambda rec, last: last[: len(last) // 2 + 8],
    "all but 1 byte": lambda rec, last: last[:-1],
    "end never written (zeros)": lambda rec, last: last[:-8] + bytes(8),
    "garbage appended": lambda rec, last: last + b"\x8f\x02garbage\xff" * 3,
    "zeros appended": lambda rec, last: last + bytes(4096),
    "huge length appended": lambda rec, last: last + b"\xff\xff\xff\xff" + bytes(12),
}


@pytest.mark.parametrize("tear", TORN.values(), ids=TORN.keys())
def test_torn_tail_of_newest_journal_is_cut_with_warning(place, caplog, tear):
    make_journals(place, [3, 5])  # records 1-3, then 4-8 in the newest journal
    newest = place.journals()[-1]
    data = place.read(newest)
    last_start = record_offsets(data)[-1]
    torn = data[:last_start] + tear(None, data[last_start:])
    place.write(newest, torn)
    whole = len(torn) >= len(data) and torn[: len(data)] == data  # record 8 intact, junk after it
    keep = 8 if whole else 7
    good_end = len(data) if whole else last_start
    older = place.read(place.journals()[0])

    with caplog.at_level(logging.WARNING, logger="montybase.storage"):
        db = place.open_db()
    try:
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "torn" in r.getMessage()]
        assert len(warnings) == 1, caplog.text
        assert str(newest) in warnings[0].getMessage() and f"at byte {good_end}" in warnings[0].getMessage()
        assert read_all(db) == {"c": docs_of(range(1, keep + 1))}
        assert place.read(newest) == data[:good_end], "the torn end was not cut off exactly"
        assert place.read(place.journals()[0]) == older
        db.commit([{"op": "set", "path": ["c", "after"], "value": {"n": -1}}])
    finally:
        db.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="montybase.storage"):
        db = place.open_db()
    try:
        assert read_all(db) == {"c": {**docs_of(range(1, keep + 1)), "after": {"n": -1}}}
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    finally:
        db.close()


@pytest.mark.parametrize("where", ["payload", "last byte", "crc", "seq"])
def test_complete_last_record_with_bad_checksum_refuses(place, where):
    """Only a record cut short is a torn write: a whole last record that fails its checksum
    was written (perhaps acknowledged) and changed since. Cutting it would lose it silently."""
    make_journals(place, [3, 5])
    newest = place.journals()[-1]
    data = bytearray(place.read(newest))
    offset = record_offsets(bytes(data))[-1]
    data[{"payload": offset + 20, "last byte": len(data) - 1, "crc": offset + 5, "seq": offset + 15}[where]] ^= 0x01
    place.write(newest, bytes(data))
    before = place.listing()
    with pytest.raises(UnavailableError) as caught:
        place.open_db()
    message = str(caught.value)
    assert f"journal {newest} is damaged at byte {offset}: the record checksum does not match" in message
    assert f"truncate that file at byte {offset}" in message and "Nothing was changed" in message
    assert place.listing() == before, "a refused start changed files"


def test_torn_tail_of_older_journal_refuses(place):
    """Only the newest journal may end torn: an older one cut short means lost records."""
    make_journals(place, [4, 2])
    first = place.journals()[0]
    data = place.read(first)
    place.write(first, data[:-3])
    before = place.listing()
    with pytest.raises(UnavailableError) as caught:
        place.open_db()
    assert f"journal {first} is damaged at byte {record_offsets(data)[-1]}" in str(caught.value)
    assert place.listing() == before


# The storage lock

HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from server.storage import FileStorage
storage = FileStorage(sys.argv[1])
storage.load()
print("ready", flush=True)
time.sleep(60)
"""


def test_second_process_is_refused_and_named(tmp_path):
    path = tmp_path / "db.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(ROOT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline().strip() == b"ready", holder.stderr.read()
        with pytest.raises(UnavailableError) as caught:
            open_db(path)
        message = str(caught.value)
        assert f"process {holder.pid} " in message and str(path) in message and "in use" in message
        with pytest.raises(ClientUnavailableError):
            Montybase(config=tmp_path / "montybase.json")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        holder.stdout.close()
        holder.stderr.close()
    db = open_db(path)  # the dead holder's lock is gone
    try:
        db.commit([{"op": "set", "path": ["c", "k"], "value": {"n": 1}}])
    finally:
        db.close()


def test_second_process_is_refused_after_the_lock_file_was_removed(tmp_path):
    """The lock is the open journal's, not the lock file's existence: a writer that snapshots and
    switches journals every few milliseconds, its lock file gone, still refuses every start."""
    path = tmp_path / "db.json"
    writer = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "writer.py"), str(path), "0", "5", "w"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert writer.stdout.readline().strip() == b"R", writer.stderr.read()
        path.with_name("db.json.lock").unlink()
        for attempt in range(30):
            with pytest.raises(UnavailableError) as caught:
                open_db(path).close()
            message = str(caught.value)
            assert "in use by" in message and str(path) in message, f"attempt {attempt}: {message}"
            assert "damaged" not in message and "missing" not in message, f"attempt {attempt}: {message}"
            named = f"process {writer.pid}" in message
            assert named or "journals changed" in message, f"attempt {attempt}: the holder is not named: {message}"
            time.sleep(0.01)
        assert writer.poll() is None, "the writer stopped"
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=10)
        writer.stdout.close()
        writer.stderr.close()
    db = open_db(path)  # the dead writer's locks are gone
    db.close()


def test_second_open_in_same_process_is_refused(tmp_path):
    path = tmp_path / "db.json"
    first = open_db(path)
    try:
        first.commit([{"op": "set", "path": ["c", "k"], "value": {"n": 1}}])
        with pytest.raises(UnavailableError) as caught:
            open_db(path)
        assert f"process {os.getpid()} " in str(caught.value)
        first.commit([{"op": "set", "path": ["c", "k2"], "value": {"n": 2}}])  # the first one still works
    finally:
        first.close()
    second = open_db(path)
    try:
        assert read_all(second) == {"c": {"k": {"n": 1}, "k2": {"n": 2}}}
    finally:
        second.close()


# Reading beside a running storage (backup, export, rules)


def test_storage_reader_beside_snapshots_always_reads_a_whole_recent_state(tmp_path):
    database = Database(FileStorage(tmp_path / "db.json"), snapshot_seconds=3600)
    database.transact({"writes": [{"op": "set", "path": ["big", f"d{i}"], "value": {"pad": "y" * 1000}}
                                  for i in range(400)]}, None)  # a snapshot that takes a while to read
    stop = threading.Event()

    def writer() -> None:
        written = 0
        while not stop.is_set() and written < 200_000:
            database.write("set", {"path": ["c", "k"], "value": {"n": database.seq + 1, "pad": "x" * 2000}}, None)
            written += 1
            if written % 5 == 0:
                database.snapshot()  # a new snapshot, and the journals it covers dropped

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline, reads = time.monotonic() + 4, 0
        while time.monotonic() < deadline and reads < 400:
            before = database.seq
            seen = Database(StorageReader(tmp_path / "db.json"))
            assert seen.seq >= before, "every write committed before the read began is in it"
            assert seen.seq <= 1 or seen.document(("c", "k"))["n"] == seen.seq, "the state after one record"
            reads += 1
    finally:
        stop.set()
        thread.join(30)
        database.close()
    assert reads > 20


def test_a_snapshot_file_is_the_bytes_of_its_chunks_written_in_runs_and_they_count_every_document(tmp_path, monkeypatch):
    collections = {("users",): {f"u{i}": {"n": i, "name": "é ✓"} for i in range(2500)},
                   ("users", "u1", "posts"): {"p": {"title": "x"}}, ("empty",): {}}
    counted: list[int] = []
    pieces = list(snapshot_chunks(7, collections, 1234, counted.append))
    assert sum(counted) == 2501 and len(pieces) > 3
    writes: list[int] = []
    monkeypatch.setattr(storage_module, "WRITE_SIZE", 4000)
    monkeypatch.setattr(storage_module.LocalFiles, "write", lambda self, fd, data: writes.append(os.write(fd, data)))
    size = storage_module.LocalFiles().write_file(tmp_path / "snapshot", iter(pieces))
    assert (tmp_path / "snapshot").read_bytes() == b"".join(pieces) and size == sum(writes) == len(b"".join(pieces))
    assert len(writes) < len(pieces) and all(written >= 4000 for written in writes[:-1])


def test_a_snapshot_encoded_in_chunks_is_the_json_of_the_whole_with_its_crc():
    collections = {
        ("users",): {f"u{i}": {"name": "é" * (i % 3), "n": i, "tags": [i, None]} for i in range(2 * SNAPSHOT_CHUNK + 7)},
        ("users", "u1", "posts"): {},
        ("t",): {"x": {"k": {"deep": True}}},
    }
    data = b"".join(snapshot_chunks(12, collections, 345))
    text = json.dumps({"__montybase__": 1, "seq": 12, "idTime": 345,
                       "collections": {"/".join(path): docs for path, docs in collections.items()}},
                      ensure_ascii=False, separators=(",", ":"))
    data = bytes(data)
    covered = data[:data.rfind(b',"crc32":')]
    assert covered.replace(b"\n", b"") == text[:-1].encode("utf-8")  # line breaks only between the pieces
    assert data == covered + b',"crc32":%d}\n' % zlib.crc32(covered)
    # a line for the header, for each collection's opening and closing, each chunk, the checksum
    assert data.count(b"\n") == 1 + (2 + 3) + 2 + (2 + 1) + 1
    assert decode_snapshot(data)[:2] == (12, {path: docs for path, docs in collections.items() if docs})


def test_a_snapshot_read_a_line_at_a_time_equals_it_read_whole_and_stores_documents_by_shape(monkeypatch):
    monkeypatch.setattr(values, "_shapes", {})  # (whatever shapes other tests made)
    monkeypatch.setattr(values, "_seen_once", set())
    collections = {("users",): {f"u{i}": {"name": f"n{i}", "score": i / 3, "tags": ["a", i]} for i in range(2500)},
                   ("users", "u1", "posts"): {"p": {"title": "x"}}, ("empty",): {}, ("z",): {"d": {}}}
    data = b"".join(snapshot_chunks(5, collections, 77))
    seq, loaded, id_time = decode_snapshot(data)
    whole = orjson.loads(data)
    assert (seq, id_time) == (5, 77)
    assert {"/".join(path): docs for path, docs in loaded.items()} == {k: v for k, v in whole["collections"].items() if v}
    assert [list(docs) for docs in loaded.values()] == [list(docs) for docs in whole["collections"].values() if docs]
    document = loaded[("users",)]["u7"]
    assert sys.getsizeof(document) < sys.getsizeof(dict(document))
    # Laid out otherwise (on one line, as before lines; a member added by hand): read whole, the same.
    one_line = data[:data.rfind(b',"crc32":')].replace(b"\n", b"")
    one_line += b',"crc32":%d}\n' % zlib.crc32(one_line)
    edited = data.replace(b'\n},"crc32":', b'\n},"note":"mine","crc32":').split(b',"crc32":')[0] + b"}"
    for other in (one_line, edited):
        assert decode_snapshot(other) == (seq, loaded, id_time)


def test_a_damaged_line_of_a_snapshot_is_named_as_json_names_it():
    data = b"".join(snapshot_chunks(5, {("c",): {f"d{i}": {"n": i} for i in range(3000)}}, 0))
    damaged = data.replace(b'"d1500":{"n":1500}', b'"d1500":{"n":15x0}', 1)  # in the second chunk: line 4
    with pytest.raises(ValueError, match="not valid JSON .*line 4 column"):
        decode_snapshot(damaged.split(b',"crc32":')[0] + b"}")
    with pytest.raises(ValueError, match="checksum does not match"):
        decode_snapshot(data.replace(b'"d1500":{"n":1500}', b'"d1500":{"n":1501}', 1))


def test_a_snapshot_orjson_refuses_loads_as_json_reads_it():
    # A lone surrogate escape: json takes it, orjson does not (a snapshot fixed by hand, say).
    body = b'{"__montybase__":1,"seq":3,"idTime":0,"collections":{"c":{"d":{"s":"\\ud800"}}}}'
    assert decode_snapshot(body) == (3, {("c",): {"d": {"s": "\ud800"}}}, 0)


def test_an_original_tree_keeps_its_integers_beyond_64_bits():
    assert decode_snapshot(b'{"c":{"d":{"n":123456789012345678901234567890}}}')[1] == {
        ("c",): {"d": {"n": 123456789012345678901234567890}}}


def test_a_snapshot_holding_an_integer_beyond_64_bits_is_written_all_the_same():
    # Only an original tree brings one in (writes refuse integers beyond ±(2^53-1)).
    collections = {("c",): {"d": {"n": 2**70}, "e": {"n": 1.5}}}
    data = b"".join(snapshot_chunks(4, collections, 0))
    assert b'"d":{"n":1180591620717411303424}' in data
    assert decode_snapshot(data)[0] == 4


def test_a_collection_holding_a_value_that_is_no_document_is_refused():
    body = b'{"__montybase__":1,"seq":1,"idTime":0,"collections":{"c":{"d":{},"e":[1]}}}'
    with pytest.raises(ValueError, match="collection 'c' is not an object of documents"):
        decode_snapshot(body)
