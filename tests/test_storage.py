"""File storage: round trips, snapshots and their policy, legacy files, damage, the storage lock.

Everything here runs the real `FileStorage` / `Database` on real files in a temporary folder.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from python_client import Montybase, doc, increment
from python_client import UnavailableError as ClientUnavailableError
from server.config import create_config
from server.database import Database
from server.errors import UnavailableError
from server.storage import FileStorage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/writer.py


# Helpers


def listing(folder: Path) -> dict[str, bytes]:
    """Every file in `folder` (but the lock) with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.endswith(".lock")}


def journals(folder: Path, name: str = "db.json") -> list[Path]:
    found = [p for p in folder.iterdir() if p.name.startswith(name + ".") and p.name.endswith(".journal")]
    return sorted(found, key=lambda p: int(p.name[len(name) + 1 : -len(".journal")]))


def snapshot_header(path: Path) -> dict | None:
    if not path.exists():
        return None
    return json.loads(path.read_bytes())


def record_offsets(data: bytes) -> list[int]:
    """Start offsets of the records of a journal (written here without Montybase code):
    u32 length | u32 crc | u64 seq | payload."""
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += 16 + int.from_bytes(data[offset : offset + 4], "big")
    assert offset == len(data)
    return offsets


def make_journals(path: Path, sizes: list[int]) -> int:
    """Journals holding records 1.. (one `set` of c/k<seq> each), a new journal per entry of `sizes`."""
    storage = FileStorage(path)
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


def test_round_trip_public_api(tmp_path):
    config = tmp_path / "montybase.json"
    db = Montybase(config=config)
    users = doc(db, "users")
    users.set({"name": "Amor", "n": 1}, key="amor")
    generated = users.add({"name": "Generated"})
    users.update({"n": increment(4), "city.name": "Paris"}, key="amor")
    doc(db, "users", "amor").append("posts").set({"title": "first"}, key="p1")
    users.set({"name": "Gone"}, key="gone")
    db.batch().set(users, {"name": "Batch"}, key="b1").delete(users, key="gone").commit()
    db.close()
    assert (tmp_path / "db.json").exists()

    again = Montybase(config=config)
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
    third = Montybase(config=config)
    try:
        assert doc(third, "users").get() == {"b1": {"name": "Batch"}, generated: {"name": "Generated"}}
        assert doc(third, "users", "amor").append("posts").get() == {}
    finally:
        third.close()


@pytest.mark.parametrize("hot", [False, True], ids=["default", "hot"])
def test_round_trip_many_writes(tmp_path, hot):
    import writer

    path = tmp_path / "db.json"
    model = writer.Model()
    db = open_db(path, hot=hot, snapshot_changes=40, snapshot_seconds=300)
    for count, item in zip(range(300), writer.workload(7, "c")):
        writer.apply_write(db, item)
        model.apply_item(item)
        if count % 97 == 96:
            db.snapshot()
    db.close()
    db = open_db(path)
    try:
        assert read_all(db) == model.collections
    finally:
        db.close()


def test_close_writes_snapshot_and_drops_journals(tmp_path):
    path = tmp_path / "db.json"
    db = open_db(path, snapshot_changes=1000, snapshot_seconds=300)
    for i in range(10):
        db.commit([{"op": "set", "path": ["c", f"k{i}"], "value": {"n": i}}])
    db.commit([{"op": "set", "path": ["c", "k0", "sub"], "value": {"deep": True}}])  # a generated id in a subcollection
    assert not path.exists(), "no snapshot before the policy or close asks for one"
    assert len(record_offsets(journals(tmp_path)[0].read_bytes())) == 11
    expected = read_all(db)
    db.close()

    header = snapshot_header(path)
    assert header["__montybase__"] == 1 and header["seq"] == 11
    assert header["collections"] == expected
    assert "c/k0/sub" in header["collections"]
    for journal in journals(tmp_path):  # the covered journal is gone; at most an empty one follows
        assert journal.stat().st_size == 0 and int(journal.name.split(".")[2]) > 11, journal.name
    db = open_db(path)
    try:
        assert read_all(db) == expected
    finally:
        db.close()


def test_snapshot_policy_public_api(tmp_path):
    """storeMin=3, updateTime=0.5: nothing after 2 changes; a snapshot 0.5 s (and the next
    one-second tick) after the 3rd change, which also drops the journal it covers."""
    path = tmp_path / "db.json"
    db = Montybase(config=tmp_path / "montybase.json", storeMin=3, updateTime=0.5)
    try:
        c = doc(db, "c")
        c.set({"n": 1}, key="a")
        c.set({"n": 2}, key="b")
        time.sleep(1.3)  # at least one tick (1 s) has passed
        assert not path.exists(), "a snapshot after 2 changes though storeMin is 3"
        c.set({"n": 3}, key="c")
        third = time.monotonic()
        assert wait_until(path.exists, timeout=5), "no snapshot 5 s after the 3rd change"
        assert time.monotonic() - third >= 0.45, "the snapshot did not wait updateTime"
        assert wait_until(lambda: snapshot_header(path)["seq"] == 3, timeout=2)
        assert snapshot_header(path)["collections"] == {"c": {"a": {"n": 1}, "b": {"n": 2}, "c": {"n": 3}}}
        assert wait_until(lambda: all(j.stat().st_size == 0 for j in journals(tmp_path)), timeout=2)
        c.set({"n": 4}, key="d")  # one change: below storeMin again
        time.sleep(1.2)
        assert snapshot_header(path)["seq"] == 3
    finally:
        db.close()
    assert snapshot_header(path)["seq"] == 4  # close takes the last one


def test_snapshot_policy_seconds(tmp_path):
    """snapshot_changes=1, snapshot_seconds=0.8 with a 50 ms tick: not before 0.8 s, soon after."""
    path = tmp_path / "db.json"
    db = open_db(path, snapshot_changes=1, snapshot_seconds=0.8, sync_interval=0.05)
    try:
        db.commit([{"op": "set", "path": ["c", "a"], "value": {"n": 1}}])
        start = time.monotonic()
        time.sleep(0.4)
        assert not path.exists()
        assert wait_until(path.exists, timeout=3)
        assert time.monotonic() - start >= 0.75
        assert snapshot_header(path)["seq"] == 1
    finally:
        db.close()


def test_original_bare_tree_loads_and_accepts_writes(tmp_path):
    path = tmp_path / "db.json"
    original = json.dumps({"users": {"amor": {"name": "Amor"}}}).encode()
    path.write_bytes(original)
    config = tmp_path / "montybase.json"
    db = Montybase(config=config)
    try:
        assert doc(db, "users").get() == {"amor": {"name": "Amor"}}
        doc(db, "users").set({"name": "Bo"}, key="bo")
        doc(db, "users").update({"age": 30}, key="amor")
    finally:
        db.close()
    header = snapshot_header(path)
    assert header["__montybase__"] == 1  # rewritten in the new format
    again = Montybase(config=config)
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
def test_corrupt_snapshot_refuses_to_start(tmp_path, content):
    path = tmp_path / "db.json"
    make_journals(path, [2])  # a journal beside it, which must not be touched either
    path.write_bytes(content)
    create_config(tmp_path / "montybase.json")
    before = listing(tmp_path)

    with pytest.raises(UnavailableError) as caught:
        open_db(path)
    message = str(caught.value)
    assert str(path) in message
    assert "damaged" in message and "Restore it from a backup" in message and "Nothing was changed" in message
    assert caught.value.data["file"] == str(path)
    with pytest.raises(ClientUnavailableError):  # the public API refuses the same way
        Montybase(config=tmp_path / "montybase.json")
    assert listing(tmp_path) == before, "a refused start changed files"

    # The lock was released: once repaired, the storage opens in this same process.
    path.write_bytes(b'{"c": {"fixed": {"n": 0}}}')
    db = open_db(path)
    try:
        assert read_all(db) == {"c": {"fixed": {"n": 0}, **docs_of([1, 2])}}
    finally:
        db.close()


@pytest.mark.parametrize("where", ["payload", "crc", "seq", "length"])
def test_corrupt_record_in_older_journal_refuses(tmp_path, where):
    path = tmp_path / "db.json"
    make_journals(path, [4, 4])
    first, second = journals(tmp_path)
    data = bytearray(first.read_bytes())
    offset = record_offsets(bytes(data))[1]
    data[offset + {"payload": 20, "crc": 5, "seq": 15, "length": 3}[where]] ^= 0x01
    first.write_bytes(bytes(data))
    before = listing(tmp_path)

    with pytest.raises(UnavailableError) as caught:
        open_db(path)
    message = str(caught.value)
    assert f"journal {first} is damaged at byte {offset}" in message
    assert f"truncate that file at byte {offset}" in message
    assert listing(tmp_path) == before, "a refused start changed files"


@pytest.mark.parametrize("where", ["payload", "crc", "seq", "length"])
@pytest.mark.parametrize("record", [0, 2, 3], ids=["first", "middle", "next to last"])
def test_corrupt_record_in_middle_of_newest_journal_refuses(tmp_path, where, record):
    """Damage followed by intact records is not a torn tail, even in the newest journal."""
    path = tmp_path / "db.json"
    make_journals(path, [5])  # one journal: it is the newest
    (journal,) = journals(tmp_path)
    data = bytearray(journal.read_bytes())
    offset = record_offsets(bytes(data))[record]
    data[offset + {"payload": 20, "crc": 5, "seq": 15, "length": 3}[where]] ^= 0x01
    journal.write_bytes(bytes(data))
    before = listing(tmp_path)

    try:
        with pytest.raises(UnavailableError) as caught:
            open_db(path).close()
        assert f"journal {journal} is damaged at byte {offset}" in str(caught.value)
    finally:
        assert listing(tmp_path) == before, "intact records were cut off the journal"


def test_lost_block_in_middle_of_newest_journal_refuses(tmp_path):
    """A zeroed 4 KiB block spanning ~90 records, intact records after it: damage, not a torn tail."""
    path = tmp_path / "db.json"
    make_journals(path, [200])
    (journal,) = journals(tmp_path)
    data = bytearray(journal.read_bytes())
    data[4096:8192] = bytes(4096)  # a block lost: records on both sides of it are intact
    journal.write_bytes(bytes(data))
    before = listing(tmp_path)
    try:
        with pytest.raises(UnavailableError):
            open_db(path).close()
    finally:
        assert listing(tmp_path) == before, "intact records after the lost block were cut off"


def test_journal_gap_refuses(tmp_path):
    path = tmp_path / "db.json"
    make_journals(path, [3, 3, 3])
    first, middle, last = journals(tmp_path)
    middle.unlink()  # records 4-6 missing
    before = listing(tmp_path)
    with pytest.raises(UnavailableError) as caught:
        open_db(path)
    message = str(caught.value)
    assert f"journal {last} holds record 7" in message and "end at 3" in message and "missing" in message
    assert listing(tmp_path) == before


def test_journal_missing_record_refuses(tmp_path):
    path = tmp_path / "db.json"
    make_journals(path, [5])
    (journal,) = journals(tmp_path)
    data = journal.read_bytes()
    offsets = record_offsets(data)
    journal.write_bytes(data[: offsets[2]] + data[offsets[3] :])  # record 3 cut out
    before = listing(tmp_path)
    with pytest.raises(UnavailableError) as caught:
        open_db(path)
    assert f"holds record 4 at byte {offsets[2]}" in str(caught.value)
    assert listing(tmp_path) == before


def test_journals_without_their_start_refuse(tmp_path):
    """The oldest journal starts after the snapshot: records in between are missing."""
    path = tmp_path / "db.json"
    make_journals(path, [3, 3])
    journals(tmp_path)[0].unlink()
    before = listing(tmp_path)
    with pytest.raises(UnavailableError):
        open_db(path)
    assert listing(tmp_path) == before


TORN = {
    "1 byte of header": lambda rec, last: last[:1],
    "header cut": lambda rec, last: last[:15],
    "header only": lambda rec, last: last[:16],
    "payload cut": lambda rec, last: last[: len(last) // 2 + 8],
    "all but 1 byte": lambda rec, last: last[:-1],
    "last byte wrong": lambda rec, last: last[:-1] + bytes([last[-1] ^ 0x55]),
    "garbage appended": lambda rec, last: last + b"\x8f\x02garbage\xff" * 3,
    "zeros appended": lambda rec, last: last + bytes(4096),
    "huge length appended": lambda rec, last: last + b"\xff\xff\xff\xff" + bytes(12),
}


@pytest.mark.parametrize("tear", TORN.values(), ids=TORN.keys())
def test_torn_tail_of_newest_journal_is_cut_with_warning(tmp_path, caplog, tear):
    path = tmp_path / "db.json"
    make_journals(path, [3, 5])  # records 1-3, then 4-8 in the newest journal
    newest = journals(tmp_path)[-1]
    data = newest.read_bytes()
    last_start = record_offsets(data)[-1]
    torn = data[:last_start] + tear(None, data[last_start:])
    newest.write_bytes(torn)
    whole = len(torn) >= len(data) and torn[: len(data)] == data  # record 8 intact, junk after it
    keep = 8 if whole else 7
    good_end = len(data) if whole else last_start
    older = journals(tmp_path)[0].read_bytes()

    with caplog.at_level(logging.WARNING, logger="montybase.storage"):
        db = open_db(path)
    try:
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "torn" in r.getMessage()]
        assert len(warnings) == 1, caplog.text
        assert str(newest) in warnings[0].getMessage() and f"at byte {good_end}" in warnings[0].getMessage()
        assert read_all(db) == {"c": docs_of(range(1, keep + 1))}
        assert newest.read_bytes() == data[:good_end], "the torn end was not cut off exactly"
        assert journals(tmp_path)[0].read_bytes() == older
        db.commit([{"op": "set", "path": ["c", "after"], "value": {"n": -1}}])
    finally:
        db.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="montybase.storage"):
        db = open_db(path)
    try:
        assert read_all(db) == {"c": {**docs_of(range(1, keep + 1)), "after": {"n": -1}}}
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    finally:
        db.close()


def test_torn_tail_of_older_journal_refuses(tmp_path):
    """Only the newest journal may end torn: an older one cut short means lost records."""
    path = tmp_path / "db.json"
    make_journals(path, [4, 2])
    first = journals(tmp_path)[0]
    data = first.read_bytes()
    first.write_bytes(data[:-3])
    before = listing(tmp_path)
    with pytest.raises(UnavailableError) as caught:
        open_db(path)
    assert f"journal {first} is damaged at byte {record_offsets(data)[-1]}" in str(caught.value)
    assert listing(tmp_path) == before


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
