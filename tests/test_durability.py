"""Durability: kill -9 under load, simulated power loss, and failing disks (security.md §3.6).

No Montybase component is replaced. The one test double is the OS file layer (`LocalFiles`),
which stands for the disk: it records what a power loss would keep, or fails like a full disk.
The expected database contents come from `tests/writer.py`'s `Model`, written without Montybase code.
"""

from __future__ import annotations

import copy
import errno
import logging
import os
import json
import random
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/writer.py

import writer  # noqa: E402
from conftest import Served  # noqa: E402
from procs import Proc, server_command  # noqa: E402
from python_client import Montybase, doc  # noqa: E402
from python_client import UnavailableError as ClientUnavailableError  # noqa: E402
from python_client.errors import ConnectionLostError as ClientConnectionLostError  # noqa: E402
from server.config import create_config  # noqa: E402
from server.database import Database  # noqa: E402
from server.errors import UnavailableError  # noqa: E402
from server.storage import FileStorage, LocalFiles, MemoryFiles, MemoryStorage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WRITER = Path(__file__).resolve().parent / "writer.py"
SEED = 20240607
QUIET = 3600.0  # a tick interval that never comes during a test: no background flush or snapshot


def read_all(db: Database) -> dict[str, dict]:
    return {"/".join(path): copy.deepcopy(docs) for path, docs in db.tree.collections.items()}


def snapshot_seq(path: Path) -> int:
    return json.loads(path.read_bytes())["seq"] if path.exists() else 0


# a. kill -9 under load


class Output:
    """Reads the writer's lines in a thread, so a full pipe never slows it down."""

    def __init__(self, proc: subprocess.Popen):
        self.ready = threading.Event()
        self.acked: list[int] = []
        self.other: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for raw in stream:
            line = raw.decode().strip()
            if line == "R":
                self.ready.set()
            elif line.startswith("A "):
                self.acked.append(int(line[2:]))
            else:
                self.other.append(line)


@pytest.mark.parametrize("hot", [False, True], ids=["default", "hot"])
def test_kill_9_loses_no_acknowledged_write(tmp_path, hot, caplog):
    cycles = 25
    rng = random.Random(f"{SEED}/{hot}")
    print(f"\nkill -9 loop: seed {SEED}, hot={hot}, {cycles} cycles")
    path = tmp_path / "db.json"
    verified: dict[str, dict] = {}  # the collections of earlier cycles, as recovered
    stats = {"acked": 0, "idle_runs": 0, "in_flight_present": 0, "snapshots_during_run": 0, "torn_tails": 0}
    started = time.monotonic()
    timing = {"start": 0.0, "run": 0.0, "check": 0.0}
    for cycle in range(cycles):
        t0 = time.monotonic()
        namespace = f"c{cycle}"
        seq_before = snapshot_seq(path)
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), "1" if hot else "0", str(SEED), namespace],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        )
        output = Output(proc)
        try:
            assert output.ready.wait(15), f"cycle {cycle}: the writer did not start: {proc.stderr.read()!r}"
            delay = rng.uniform(0.05, 0.4)
            t1 = time.monotonic()
            time.sleep(delay)
        finally:
            os.kill(proc.pid, signal.SIGKILL)  # only the process started above, by its pid
            proc.wait(timeout=10)
        output.thread.join(timeout=10)
        stderr = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, f"cycle {cycle}: the writer ended by itself: {stderr}"
        assert not output.other, output.other
        acked = len(output.acked)
        assert output.acked == list(range(acked)), f"cycle {cycle}: acknowledgements out of order"
        stats["acked"] += acked
        stats["idle_runs"] += acked == 0
        stats["snapshots_during_run"] += snapshot_seq(path) > seq_before

        t2 = time.monotonic()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="montybase.storage"):
            db = Database(FileStorage(path))  # I3: it always starts
        try:
            stats["torn_tails"] += sum("torn" in r.getMessage() for r in caplog.records)
            recovered = read_all(db)
        finally:
            db.close()
        mine = {name: docs for name, docs in recovered.items() if name.split("/")[0] == namespace}
        others = {name: docs for name, docs in recovered.items() if name.split("/")[0] != namespace}
        where = f"seed {SEED}, hot={hot}, cycle {cycle}, {acked} writes acknowledged"
        assert others == verified, f"{where}: earlier cycles' data changed"
        acked_state, with_in_flight = writer.expected_states(SEED, namespace, acked)
        # I1 + I2: exactly the acknowledged writes, plus perhaps the one in flight.
        assert mine in (acked_state, with_in_flight), f"{where}: recovered state is not acked history (+1)"
        stats["in_flight_present"] += mine != acked_state
        verified.update(mine)
        t3 = time.monotonic()
        timing["start"] += t1 - t0
        timing["run"] += t2 - t1
        timing["check"] += t3 - t2
    elapsed = time.monotonic() - started
    print(f"kill -9 loop hot={hot}: {stats} in {elapsed:.1f} s ({ {k: round(v, 1) for k, v in timing.items()} })")
    assert stats["idle_runs"] <= cycles // 5, f"too many runs acknowledged nothing: {stats}"
    assert stats["snapshots_during_run"] >= cycles // 3, f"too few runs crossed a snapshot: {stats}"


def test_kill_9_of_a_server_during_a_snapshot_loses_no_acknowledged_write(tmp_path):
    """A real server holding 50,000 documents takes a snapshot (SIGUSR1, as `montybase compact`)
    while a client writes; it is killed at a random moment within the snapshot's duration (the
    first cycle measures it), several times. Every acknowledged write is there after each kill,
    and no write nobody made."""
    seed = int(os.environ.get("MONTYBASE_TEST_SEED", time.time_ns() % 2**32))
    print(f"\nkill -9 during snapshots: seed {seed} (MONTYBASE_TEST_SEED={seed} repeats it)")
    rng = random.Random(seed)
    config = create_config(tmp_path / "montybase.json")
    config.update(storageMinCount=10**9)  # snapshots only when asked (and at stops)
    (tmp_path / "montybase.json").write_text(json.dumps(config))
    path = tmp_path / "db.json"
    database = Database(FileStorage(path), sync_interval=QUIET)
    for start in range(0, 50_000, 500):
        database.commit([{"op": "set", "path": ["base", f"b{i:05}"], "value": {"n": i, "s": "x" * 40}}
                         for i in range(start, start + 500)])
    database.close()
    acked: dict[str, dict] = {}  # every write acknowledged so far: id -> value
    duration, during = 0.0, 0
    for cycle in range(6):
        stop = threading.Event()
        issued: list[str] = []

        def write(url: str) -> None:
            with Montybase(api=url, config=str(tmp_path / "montybase.json")) as client:
                try:
                    for i in range(100_000):
                        if stop.is_set():
                            return
                        key, value = f"c{cycle}-{i}", {"cycle": cycle, "i": i}
                        issued.append(key)
                        doc(client, "w").set(value, key=key)
                        acked[key] = value
                except (ClientConnectionLostError, ClientUnavailableError):
                    return  # killed under this call

        with Proc(server_command("--port", "0"), cwd=tmp_path) as server:
            writer_thread = threading.Thread(target=write, args=(server.endpoint(),))
            writer_thread.start()
            try:
                time.sleep(0.3)
                seq_before = snapshot_seq(path)
                snapshots = server.stderr.count("snapshot at record")
                server.send(signal.SIGUSR1)
                if cycle == 0:  # measure a whole snapshot under writes
                    assert wait_until(lambda: server.stderr.count("snapshot at record") > snapshots, 30), server.describe()
                    duration = float(re.findall(r"snapshot at record \d+: \d+ collections in (\d+) ms", server.stderr)[-1]) / 1000
                else:
                    time.sleep(rng.uniform(0.0, 0.8) * duration)
                server.kill9()
                # Killed before its log line and before the new file replaced the old: during it.
                during += server.stderr.count("snapshot at record") == snapshots and snapshot_seq(path) == seq_before
            finally:
                stop.set()
                writer_thread.join(30)
        assert not writer_thread.is_alive(), "a client call hung after kill -9"
        recovered = Database(FileStorage(path), sync_interval=QUIET)
        try:
            written = dict(recovered.tree.collections.get(("w",), {}))
            base = recovered.tree.collections[("base",)]
        finally:
            recovered.close()
        where = f"seed {seed}, cycle {cycle}"
        assert len(base) == 50_000, where
        lost = acked.keys() - written.keys()
        assert not lost, f"{where}: {len(lost)} acknowledged writes lost, e.g. {sorted(lost)[:3]}"
        assert all(written[key] == value for key, value in acked.items()), where
        assert written.keys() <= set(issued) | acked.keys(), f"{where}: documents nobody wrote"
        acked.update((key, written[key]) for key in issued if key in written)  # the one in flight, if kept
    print(f"6 cycles, {len(acked)} writes, a snapshot took {duration * 1000:.0f} ms, {during} kills during one")
    assert during >= 2, f"too few kills landed during a snapshot ({during}): the test proves little"


# b. simulated power loss


class Inode:
    __slots__ = ("data", "durable")

    def __init__(self, data: bytes = b"", durable: bytes = b""):
        self.data = bytearray(data)
        self.durable = bytes(durable)


class PowerLossFiles(LocalFiles):
    """The real file operations, plus a record of what a power loss would keep of them.

    A file's bytes are durable as of its last fsync; what was written since is volatile. A
    directory entry created, renamed or removed is volatile until the next fsync of the folder
    (a crash keeps some of those changes). Before every operation (a point where
    the power may fail) `capture` is called with the state a crash there would start from.
    """

    def __init__(self, folder: Path, capture):
        self.folder = folder
        self.capture = capture
        self.inodes: dict[int, Inode] = {}
        self.names: dict[str, int] = {}  # the directory now
        self.durable_names: dict[str, int] = {}  # the directory after a crash, before pending changes
        self.pending: list[tuple] = []  # ("create", name, inode) / ("rename", src, dst) / ("unlink", name)
        self.fds: dict[int, int] = {}
        for entry in sorted(folder.iterdir()):
            if entry.is_file() and not entry.name.endswith(".lock"):  # the lock is not LocalFiles'
                number = self._new(entry.read_bytes(), entry.read_bytes())
                self.names[entry.name] = self.durable_names[entry.name] = number

    def _new(self, data: bytes = b"", durable: bytes = b"") -> int:
        number = len(self.inodes)
        self.inodes[number] = Inode(data, durable)
        return number

    def _name(self, path: Path) -> str:
        assert Path(path).parent == self.folder, path
        return Path(path).name

    def _create(self, name: str) -> Inode:
        if name not in self.names:
            self.names[name] = self._new()
            self.pending.append(("create", name, self.names[name]))
        return self.inodes[self.names[name]]

    def point(self, what: str) -> None:
        self.capture(what, files_state(self))

    def open_append(self, path):
        self.point("open_append")
        fd = super().open_append(path)
        self._create(self._name(path))
        self.fds[fd] = self.names[self._name(path)]
        return fd

    def write(self, fd, data):
        self.point("write")
        super().write(fd, data)
        self.inodes[self.fds[fd]].data += data

    def fsync(self, fd):
        self.point("fsync")
        super().fsync(fd)
        inode = self.inodes[self.fds[fd]]
        inode.durable = bytes(inode.data)

    def close(self, fd):
        super().close(fd)
        del self.fds[fd]

    def write_file(self, path, pieces):
        self.point("write_file")
        data = b"".join(pieces)
        LocalFiles().write_file(path, [data])  # the real I/O, without coming back through write()
        name = self._name(path)
        inode = self._create(name)
        inode.data, inode.durable = bytearray(), b""  # O_TRUNC
        inode.data += data
        self.point("write_file written")
        inode.durable = bytes(data)  # its fsync
        return len(data)

    def truncate(self, path, size):
        self.point("truncate")
        super().truncate(path, size)
        inode = self.inodes[self.names[self._name(path)]]
        del inode.data[size:]
        inode.durable = bytes(inode.data)

    def replace(self, source, target):
        self.point("replace")
        super().replace(source, target)
        src, dst = self._name(source), self._name(target)
        self.names[dst] = self.names.pop(src)
        self.pending.append(("rename", src, dst, self.names[dst]))

    def fsync_dir(self, path):
        self.point("fsync_dir")
        super().fsync_dir(path)
        self.durable_names = dict(self.names)
        self.pending = []

    def unlink(self, path):
        self.point("unlink")
        super().unlink(path)
        name = self._name(path)
        del self.names[name]
        self.pending.append(("unlink", name))


def record_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each journal record in `data` (u32 length | u32 crc | u64 seq | payload)."""
    spans, offset = [], 0
    while offset < len(data):
        end = offset + 16 + int.from_bytes(data[offset:offset + 4], "big")
        spans.append((offset, end))
        offset = end
    assert offset == len(data), "volatile bytes that are not whole records"
    return spans


def crash_image(state, rng: random.Random) -> dict[str, bytes]:
    """Files a power loss at that point could leave. Of the directory changes since the last
    fsync of the folder: a prefix (file systems that commit metadata in order, like ext4), or any
    subset (POSIX promises no order). Of each file's volatile bytes: none, all, a prefix, a
    prefix followed by zeros (blocks allocated but never written), or a prefix followed by
    garbage that, in a journal, leaves the record it overwrites cut short. Garbage that makes a
    record look whole is damage, not a power loss: that start is refused (README, Durability)."""
    names, pending, inodes = state
    names = dict(names)
    if rng.random() < 0.5:
        kept = pending[: rng.randint(0, len(pending))]
    else:
        kept = [change for change in pending if rng.random() < 0.5]
    for change in kept:
        if change[0] == "create":
            names[change[1]] = change[2]
        elif change[0] == "rename":
            names.pop(change[1], None)
            names[change[2]] = change[3]
        else:
            names.pop(change[1], None)
    files = {}
    for name, number in names.items():
        durable, data = inodes[number]
        if data.startswith(durable):
            volatile = data[len(durable):]
        else:  # rewritten since its fsync (cannot happen with this storage, but stay honest)
            durable, volatile = b"", data
        choice = rng.choice(["drop", "keep", "cut", "garbage", "zeros"]) if volatile else "keep"
        if choice == "drop":
            kept = b""
        elif choice == "keep":
            kept = volatile
        elif choice == "cut":
            kept = volatile[: rng.randint(0, max(0, len(volatile) - 1))]
        elif choice == "garbage" and name.endswith(".journal"):
            start, end = rng.choice(record_spans(volatile))
            cut = rng.randint(start + 4, end - 2)  # its length intact: the record stays cut short
            kept = volatile[:cut] + rng.randbytes(rng.randint(1, min(64, end - cut - 1)))
        elif choice == "garbage":  # a snapshot being written (to its temporary file)
            kept = volatile[: rng.randint(0, len(volatile))] + rng.randbytes(rng.randint(1, 64))
        else:
            kept = volatile[: rng.randint(0, len(volatile))] + bytes(rng.randint(1, 512))
        files[name] = durable + kept
    return files


def run_power_loss_workload(folder: Path, seed: int, count: int, hot: bool):
    """Run `count` writes with snapshots (and, by default, flushes) between; return every captured
    crash point as (label, state, floor, acknowledged, in flight) and the model's states: a crash
    there must recover `states[k]` for some floor <= k <= acknowledged (+1 if a write was in flight).
    In hot mode the floor is every acknowledged write; by default, those written before the last
    flush or snapshot had returned."""
    # A first life of the storage (a snapshot, then a journal holding two more records, as a
    # crash leaves it), so that start-up, replay and a journal created at start take part too.
    initial = writer.Model()
    db = Database(FileStorage(folder / "db.json"), hot=True, sync_interval=QUIET)
    for item in [[{"op": "set", "path": ["init", f"i{i}"], "value": {"n": i}}] for i in range(3)]:
        writer.apply_write(db, item)
        initial.apply_item(item)
    db.close()
    storage = FileStorage(folder / "db.json")
    storage.load()
    for seq in (4, 5):
        storage.append(seq, [["set", ["init", f"i{seq}"], {"n": seq}]])
        initial.apply({"op": "set", "path": ["init", f"i{seq}"], "value": {"n": seq}})
    storage.close()

    points: list[tuple] = []
    progress = {"floor": 0, "acked": 0, "in_flight": False}

    def capture(label, state):
        points.append((label, state, progress["floor"], progress["acked"], progress["in_flight"]))

    files = PowerLossFiles(folder, capture)
    # The tick never comes (QUIET): snapshots and flushes happen exactly where the loop asks.
    db = Database(FileStorage(folder / "db.json", files=files), hot=hot,
                  snapshot_changes=5, snapshot_seconds=0, sync_interval=QUIET)
    rng = random.Random(f"power/{seed}")
    items = []
    try:
        for i, item in zip(range(count), writer.workload(seed, "p")):
            items.append(item)
            progress["in_flight"] = True
            writer.apply_write(db, item)  # hot: returns after the fsync covering it
            progress["acked"], progress["in_flight"] = i + 1, False
            if hot:
                progress["floor"] = i + 1
            roll = rng.random()
            if roll < 0.2:
                db.snapshot()
                progress["floor"] = i + 1
            elif roll < 0.35 and not hot:
                db.storage.flush()  # what the once-a-second tick does
                progress["floor"] = i + 1
    finally:
        db.close()
    points.append(("after close", files_state(files), count, count, False))

    states = []
    model = initial.copy()
    states.append(copy.deepcopy(model.collections))
    for item in items:
        model.apply_item(item)
        states.append(copy.deepcopy(model.collections))
    return points, states


def files_state(files: PowerLossFiles):
    return (
        dict(files.durable_names),
        list(files.pending),
        {n: (bytes(i.durable), bytes(i.data)) for n, i in files.inodes.items()},
    )


@pytest.mark.parametrize("seed,hot", [(1, True), (2, True), (3, True), (4, False)],
                         ids=["hot-1", "hot-2", "hot-3", "default-4"])
def test_power_loss_loses_no_acknowledged_write(tmp_path, seed, hot, caplog):
    """Hot mode: every acknowledged write survives a power loss at any point. Default mode: what
    was flushed survives; the rest may be lost, but only as a suffix of the history."""
    variants = 4
    started = time.monotonic()
    points, states = run_power_loss_workload(tmp_path / "live", seed, count=40, hot=hot)
    labels = {label for label, *_ in points}
    assert {"write", "fsync", "write_file", "replace", "fsync_dir", "unlink", "open_append"} <= labels, labels
    rng = random.Random(f"{SEED}/power/{seed}")
    checked = torn = 0
    seen = set()
    for number, (label, state, floor, acked, in_flight) in enumerate(points):
        for variant in range(variants):
            image = crash_image(state, rng)
            key = (tuple(sorted(image.items())), floor, acked, in_flight)
            if key in seen:  # the same disk with the same expectations: checked already
                continue
            seen.add(key)
            folder = tmp_path / f"crash-{number}-{variant}"
            folder.mkdir()
            for name, data in image.items():
                (folder / name).write_bytes(data)
            where = (f"hot={hot}, seed {seed}, crash point {number} (before {label}), variant {variant}, "
                     f"{floor} writes durable, {acked} acknowledged, in flight: {in_flight}, files {sorted(image)}")
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="montybase.storage"):
                try:
                    db = Database(FileStorage(folder / "db.json"), sync_interval=QUIET)
                except UnavailableError as exc:
                    pytest.fail(f"{where}: recovery refused: {exc}")
            try:
                problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
                assert all("torn end" in message for message in problems), f"{where}: {problems}"
                torn += bool(problems)
                recovered = read_all(db)
                allowed = states[floor : acked + 1 + in_flight]
                assert recovered in allowed, f"{where}: recovered state is not the acknowledged history (+ in flight)"
                if variant == 0 and number % 4 == 0:  # the recovered storage keeps working
                    db.commit([{"op": "set", "path": ["after", "x"], "value": {"n": number}}])
                    recovered = read_all(db)
            finally:
                db.close()
            if variant == 0 and number % 4 == 0:
                db = Database(FileStorage(folder / "db.json"), sync_interval=QUIET)
                try:
                    assert read_all(db) == recovered, f"{where}: not the same after a clean reopen"
                finally:
                    db.close()
            checked += 1
    elapsed = time.monotonic() - started
    print(f"\npower loss hot={hot} seed {seed}: {len(points)} crash points x {variants} images: {checked} distinct recoveries "
          f"({torn} cut a torn tail) in {elapsed:.1f} s")


# c. a failing disk


class FailingFiles(LocalFiles):
    """Real files, but the `at`-th journal write or fsync fails like a full or broken disk.
    A failing write first writes part of the record, as a short write before ENOSPC does."""

    def __init__(self, call: str, at: int, error: int):
        self.call, self.at, self.error = call, at, error
        self.count = 0
        self.journal_fds: set[int] = set()
        self.failed = False

    def open_append(self, path):
        fd = super().open_append(path)
        self.journal_fds.add(fd)
        return fd

    def close(self, fd):
        self.journal_fds.discard(fd)
        super().close(fd)

    def _hit(self, call: str, fd: int) -> bool:
        if call != self.call or fd not in self.journal_fds:
            return False
        self.count += 1
        if self.count == self.at:
            self.failed = True
            return True
        return False

    def write(self, fd, data):
        if self._hit("write", fd):
            if self.error == errno.ENOSPC:
                os.write(fd, data[: len(data) // 2])
            raise OSError(self.error, os.strerror(self.error))
        super().write(fd, data)

    def fsync(self, fd):
        if self._hit("fsync", fd):
            raise OSError(self.error, os.strerror(self.error))
        super().fsync(fd)


FAILURES = [
    ("write", errno.ENOSPC, False), ("write", errno.EIO, False),
    ("write", errno.ENOSPC, True), ("fsync", errno.EIO, True), ("fsync", errno.ENOSPC, True),
]


@pytest.mark.parametrize("call,error,hot", FAILURES, ids=[f"{c}-{errno.errorcode[e]}-{'hot' if h else 'default'}" for c, e, h in FAILURES])
def test_storage_failure_refuses_writes_and_keeps_acknowledged(tmp_path, call, error, hot, caplog):
    for at in range(1, 26):
        folder = tmp_path / f"at{at}"
        files = FailingFiles(call, at, error)
        db = Database(FileStorage(folder / "db.json", files=files), hot=hot,
                      snapshot_changes=5, snapshot_seconds=0, sync_interval=QUIET)
        rng = random.Random(f"fail/{at}")
        model = writer.Model()
        failed_item = None
        stream = writer.workload(at, "f")
        where = f"{call} {errno.errorcode[error]} at call {at}, hot={hot}"
        try:
            for i in range(30):
                item = next(stream)
                try:
                    writer.apply_write(db, item)
                except UnavailableError as exc:
                    assert files.failed, f"{where}: refused without a failure: {exc}"
                    assert "storage failed" in str(exc), exc
                    failed_item = item
                    break
                model.apply_item(item)
                if rng.random() < 0.2:
                    try:
                        db.snapshot()
                    except UnavailableError:  # the failure hit the fsync before a journal switch
                        assert files.failed and call == "fsync", where
                        break
            if not files.failed:
                assert at > 1, f"{where}: the failure never came"
                continue
            calls = files.count
            for _ in range(3):  # later writes are refused, without trying the disk again
                with pytest.raises(UnavailableError, match="storage failed"):
                    writer.apply_write(db, next(stream))
            assert files.count == calls, f"{where}: the journal was written or fsynced after the failure"
        finally:
            try:
                db.close()
            except UnavailableError:
                pass  # closing a failed storage may report the failure again; it still releases it
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="montybase.storage"):
            reopened = Database(FileStorage(folder / "db.json"), sync_interval=QUIET)
        try:
            recovered = read_all(reopened)
        finally:
            reopened.close()
        if call == "write":  # the part of the record that did get written was cut off at once
            assert "torn" not in caplog.text, f"{where}: {caplog.text}"
        allowed = [model.collections]
        if failed_item is not None and call == "fsync":
            # The record reached the file before its fsync failed: it may survive, unacknowledged.
            in_flight = model.copy()
            in_flight.apply_item(failed_item)
            allowed.append(in_flight.collections)
        assert recovered in allowed, f"{where}: reopened state is not the acknowledged writes"


def test_fsync_failure_in_background_flush_refuses_later_writes(tmp_path):
    """Default mode: the once-a-second flush fails; later writes are refused; acknowledged ones stay."""
    path = tmp_path / "db.json"
    files = FailingFiles("fsync", 1, errno.EIO)
    db = Database(FileStorage(path, files=files), sync_interval=QUIET)
    try:
        for i in range(5):
            db.commit([{"op": "set", "path": ["c", f"k{i}"], "value": {"n": i}}])
        with pytest.raises(UnavailableError):
            db.storage.flush()  # what the tick does
        with pytest.raises(UnavailableError, match="storage failed"):
            db.commit([{"op": "set", "path": ["c", "late"], "value": {"n": -1}}])
    finally:
        try:
            db.close()
        except UnavailableError:
            pass
    db = Database(FileStorage(path), sync_interval=QUIET)
    try:
        assert read_all(db) == {"c": {f"k{i}": {"n": i} for i in range(5)}}
    finally:
        db.close()


class FailingSnapshotFiles(LocalFiles):
    """The disk fills up while a snapshot is written (not the journal)."""

    def __init__(self):
        self.fail = False

    def write_file(self, path, pieces):
        if self.fail:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, b"".join(pieces)[:10])
            os.close(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write_file(path, pieces)


def test_failed_snapshot_loses_nothing_and_writes_continue(tmp_path, caplog):
    path = tmp_path / "db.json"
    files = FailingSnapshotFiles()
    db = Database(FileStorage(path, files=files), hot=True, sync_interval=QUIET)
    try:
        db.commit([{"op": "set", "path": ["c", "a"], "value": {"n": 1}}])
        db.snapshot()
        good = path.read_bytes()
        db.commit([{"op": "set", "path": ["c", "b"], "value": {"n": 2}}])
        files.fail = True
        with caplog.at_level(logging.ERROR, logger="montybase.storage"):
            db.snapshot()
        assert "snapshot at record 2 failed" in caplog.text
        assert path.read_bytes() == good
        db.commit([{"op": "set", "path": ["c", "c"], "value": {"n": 3}}])  # writes go on
        files.fail = False
    finally:
        db.close()
    db = Database(FileStorage(path), sync_interval=QUIET)
    try:
        assert read_all(db) == {"c": {"a": {"n": 1}, "b": {"n": 2}, "c": {"n": 3}}}
    finally:
        db.close()


def test_close_releases_the_lock_when_its_flush_fails(tmp_path):
    """FileStorage.close flushes and releases: a failing flush must not keep the lock."""
    path = tmp_path / "db.json"
    storage = FileStorage(path, files=FailingFiles("fsync", 1, errno.EIO))
    storage.load()
    storage.append(1, [["set", ["c", "k"], {"n": 1}]])
    with pytest.raises(UnavailableError):
        storage.close()  # the flush fails: reported, fine
    db = Database(FileStorage(path), sync_interval=QUIET)  # but the storage must be free again
    try:
        assert read_all(db) == {"c": {"k": {"n": 1}}}
    finally:
        db.close()


# d. a disk that fails, then works again: a server keeps reading, refuses writes, resumes


def switchable(base: type[LocalFiles]) -> type[LocalFiles]:
    """`base`'s file operations, failing with `error` (an errno) while it is set, like a full disk."""

    class Switchable(base):
        error: int | None = None

        def _maybe_fail(self) -> None:
            if self.error is not None:
                raise OSError(self.error, os.strerror(self.error))

        def open_append(self, path):
            self._maybe_fail()
            return super().open_append(path)

        def write(self, fd, data):
            self._maybe_fail()
            super().write(fd, data)

        def fsync(self, fd):
            self._maybe_fail()
            super().fsync(fd)

        def write_file(self, path, pieces):
            self._maybe_fail()
            return super().write_file(path, pieces)

    return Switchable


def storage_errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.mark.parametrize("kind", ["file", "memory"])
@pytest.mark.parametrize("hot", [False, True], ids=["default", "hot"])
def test_after_a_storage_failure_reads_go_on_writes_are_unavailable_until_it_works_again(
    tmp_path, loop_thread, caplog, kind, hot
):
    """In-process, over a real server: the disk is simulated through the storage's `files` seam."""
    files = switchable(LocalFiles if kind == "file" else MemoryFiles)()
    storage = FileStorage(tmp_path / "db.json", files=files) if kind == "file" else MemoryStorage(files=files)
    database = Database(storage, hot=hot, snapshot_changes=1, snapshot_seconds=0, sync_interval=0.05)
    served = Served(loop_thread, tmp_path / "server", database=database)
    try:
        with served.client(admin=True) as client, caplog.at_level(logging.INFO):
            scores = doc(client, "scores")
            scores.set({"n": 1}, key="a")
            files.error = errno.ENOSPC
            for i in range(3):
                with pytest.raises(ClientUnavailableError, match="storage failed"):
                    scores.set({"n": 2}, key=f"refused{i}")
            assert doc(client, "scores", "a").get() == {"n": 1}  # reads go on
            assert scores.get() == {"a": {"n": 1}}
            time.sleep(1.0)  # 20 ticks: resume tries (1, 2, 4, 8 ticks apart) fail quietly
            errors = storage_errors(caplog)
            assert len(errors) == 1 and "refusing writes" in errors[0].getMessage(), caplog.text
            assert not any(r.exc_info for r in caplog.records), "a traceback in the log"
            assert "works again" not in caplog.text
            files.error = None
            assert wait_until(lambda: "works again" in caplog.text, timeout=10), caplog.text
            scores.set({"n": 3}, key="c")  # accepted again
            assert scores.get() == {"a": {"n": 1}, "c": {"n": 3}}
            assert len(storage_errors(caplog)) == 1 and caplog.text.count("works again") == 1
    finally:
        served.stop()  # closes the database
    database = Database(storage if kind == "memory" else FileStorage(tmp_path / "db.json"), sync_interval=QUIET)
    try:
        assert read_all(database) == {"scores": {"a": {"n": 1}, "c": {"n": 3}}}
    finally:
        database.close()


def test_storage_still_failing_at_stop_is_logged_not_raised(tmp_path, caplog):
    files = switchable(LocalFiles)()
    database = Database(FileStorage(tmp_path / "db.json", files=files), sync_interval=QUIET)
    database.commit([{"op": "set", "path": ["c", "a"], "value": {"n": 1}}])
    files.error = errno.EIO
    with pytest.raises(UnavailableError):
        database.commit([{"op": "set", "path": ["c", "b"], "value": {"n": 2}}])
    with caplog.at_level(logging.ERROR):
        database.close()  # does not raise
    assert "stopping without a last snapshot: the storage still fails" in caplog.text
    database = Database(FileStorage(tmp_path / "db.json"), sync_interval=QUIET)
    try:
        assert read_all(database) == {"c": {"a": {"n": 1}}}  # the journal kept the acknowledged write
    finally:
        database.close()


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs Linux prlimit")
def test_a_server_whose_files_may_not_grow_refuses_writes_keeps_reading_resumes_and_exits_0(tmp_path):
    """A real server process and a real OS error: its file size limit (RLIMIT_FSIZE, which binds
    root too, unlike a read-only folder) is lowered to 1 byte while it runs, so every journal and
    snapshot write fails with EFBIG, as on a full disk; then raised again."""
    config = create_config(tmp_path / "montybase.json")
    config.update(storageMinCount=1, storageUpdate=0)  # a snapshot at every tick after a change
    (tmp_path / "montybase.json").write_text(json.dumps(config))
    with Proc(server_command("--port", "0"), cwd=tmp_path) as server:
        url = server.endpoint()
        with Montybase(api=url, config=str(tmp_path / "montybase.json")) as client:
            scores = doc(client, "scores")
            scores.set({"n": 1}, key="a")
            limits = resource.prlimit(server.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (1, limits[1]))
            try:
                for i in range(3):
                    with pytest.raises(ClientUnavailableError, match="storage failed"):
                        scores.set({"n": 2}, key=f"refused{i}")
                assert doc(client, "scores", "a").get() == {"n": 1}
                time.sleep(3.5)  # three ticks and resume tries, all failing
                assert doc(client, "scores", "a").get() == {"n": 1}
            finally:
                resource.prlimit(server.pid, resource.RLIMIT_FSIZE, limits)
            assert wait_until(lambda: "works again" in server.stderr, timeout=15), server.describe()
            scores.set({"n": 3}, key="c")
        assert server.stop() == 0, server.describe()
        log = server.stderr
    assert "Traceback" not in log, log
    assert log.count("refusing writes") == 1 and log.count("works again") == 1, log
    assert [line for line in log.splitlines() if " ERROR " in line] == [
        line for line in log.splitlines() if "refusing writes" in line
    ], log
    database = Database(FileStorage(tmp_path / "db.json"), sync_interval=QUIET)
    try:
        assert read_all(database) == {"scores": {"a": {"n": 1}, "c": {"n": 3}}}
    finally:
        database.close()
