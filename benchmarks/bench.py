"""Montybase embedded against a plain dict, TinyDB and sqlite3, then over the network: one run.

    python benchmarks/bench.py [--sizes 10000 100000] [--quick] [--cap SECONDS]
                               [--sections engine remote listeners rules] [--profile DIR]

Each system holds its store in a process of its own per size (so no system pays for another's
heap); the parent interleaves their timed rounds and measures memory in one more fresh process
per system. Rows: add, add with an fsync per write, get by id, update one field, where score > x
(about 10% match), top-10 by score, cold start, memory. A "targets" block after the table
compares Montybase with the others at the largest size. Then the network sections (network.py):
remote round trips beside a bare websockets echo server, listeners (write → callback latency and
the writer's throughput), and rules (the cost of a schema), each with its targets. Nothing here
asserts a timing; the numbers depend on the machine (and on whatever else it is running).
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import os
import platform
import random
import select
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for folder in (ROOT, HERE):  # runnable from a checkout without installing; network.py beside this file
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from python_client import Montybase, doc  # noqa: E402
from server.paths import generate_id  # noqa: E402

SCORE_RANGE = 1_000_000
WHERE_FROM = 900_000  # `score > x` with x in [900000, 901000): about 10% of uniform scores
FILL_BATCH = 500  # documents per commit when filling a Montybase store (untimed)
REPEATS = 3  # cold start: best of this many opens
ROUNDS = 5  # every rate: best of this many rounds
WORKER_TIMEOUT = 600  # seconds; a worker that takes longer is killed and its cells read "err"

SECTIONS = ("engine", "remote", "listeners", "rules")
SYSTEMS = ("montybase", "montybase-mem", "dict", "tinydb-mem", "tinydb-json", "sqlite", "sqlite-idx")
HEADERS = {
    "montybase": "Montybase",
    "montybase-mem": "Monty :memory:",
    "dict": "dict",
    "tinydb-mem": "TinyDB mem",
    "tinydb-json": "TinyDB JSON",
    "sqlite": "sqlite3",
    "sqlite-idx": "sqlite3+idx",
}
ROWS = (
    ("add", "add", "ops/s"),
    ("add_sync", "add, fsync each write", "ops/s"),
    ("get", "get by id", "ops/s"),
    ("update", "update one field", "ops/s"),
    ("where", "where score > x (10%)", "q/s"),
    ("top10", "top-10 by score desc", "q/s"),
    ("cold", "cold start", "s"),
    ("memory", "memory", "MB"),
)
FEW = 100  # cells timed over fewer operations than this (cut by the time cap) are marked *


def documents(count: int, seed: int, prefix: str = "player") -> Iterator[dict[str, Any]]:
    """Leaderboard documents with uniform integer scores, generated lazily."""
    rng = random.Random(seed)
    for i in range(count):
        yield {"name": f"{prefix}{i}", "score": rng.randrange(SCORE_RANGE)}


def chunks(items: Iterator[Any] | Sequence[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# The systems: each runs the same operations through its own natural API.


class System:
    """One system under test, over a folder of its own."""

    durable_mode = False  # has an fsync-per-write add
    persistent = False  # can be reopened (cold start)

    def __init__(self, folder: Path):
        self.folder = folder

    def create(self, count: int) -> list[Any]:
        """A new store holding `count` documents, open; returns their ids."""
        raise NotImplementedError

    def add(self, docs: list[dict], out: list[Any]) -> None:
        raise NotImplementedError

    def remove(self, ids: list[Any]) -> None:
        """Take added documents out again (untimed), so later rows see N documents."""
        raise NotImplementedError

    def get(self, ids: list[Any]) -> None:
        raise NotImplementedError

    def update(self, pairs: list[tuple[Any, int]]) -> None:
        raise NotImplementedError

    def where(self, bounds: list[int]) -> None:
        raise NotImplementedError

    def top10(self, runs: list[int]) -> None:
        raise NotImplementedError

    def durable(self, on: bool) -> None:
        """Switch the fsync-per-write mode on or off (only where durable_mode)."""

    def close(self) -> None:
        """Close the store; a persistent one is left on disk holding the N documents."""

    def cold(self, first_id: Any) -> Any:
        """Open the store left by close() and read one document; returns the open store."""
        raise NotImplementedError

    def release(self, store: Any) -> None:
        """Close a store that cold() opened."""

    def hold(self, count: int, first_id: Any) -> Any:
        """For the memory measurement: the store holding N documents, having served a get, a
        where and a top-10 (so lazily built indexes count)."""
        store = self.cold(first_id) if self.persistent else None
        if store is None:
            ids = self.create(count)
            first_id = ids[0]
        self.get([first_id])
        self.where([WHERE_FROM])
        self.top10([0])
        return store


class MontybaseSystem(System):
    """Montybase embedded, natural API: `doc(db, "scores")...`."""

    def __init__(self, folder: Path, memory: bool = False):
        super().__init__(folder)
        self.memory = memory
        self.durable_mode = self.persistent = not memory
        self.config = folder / "montybase.json"
        self.db: Montybase | None = None

    @property
    def snapshot(self) -> Path:
        return self.folder / "db.json"

    def _open(self, hot: bool = False) -> Montybase:
        if self.memory:
            return Montybase(storageBucket=":memory:")
        return Montybase(config=self.config, hot=hot)

    def create(self, count: int) -> list[Any]:
        self.db = db = self._open()
        ids: list[Any] = []
        scores = doc(db, "scores")
        for batch_docs in chunks(documents(count, 1), FILL_BATCH):
            batch = db.batch()
            for value in batch_docs:
                batch.add(scores, value)
            ids += batch.commit()
        return ids

    def add(self, docs: list[dict], out: list[Any]) -> None:
        db = self.db
        for value in docs:
            out.append(doc(db, "scores").add(value))

    def remove(self, ids: list[Any]) -> None:
        db = self.db
        for part in chunks(ids, 100):
            batch = db.batch()
            for doc_id in part:
                batch.delete(doc(db, "scores", doc_id))
            batch.commit()

    def get(self, ids: list[Any]) -> None:
        db = self.db
        for doc_id in ids:
            doc(db, "scores", doc_id).get()

    def update(self, pairs: list[tuple[Any, int]]) -> None:
        db = self.db
        for doc_id, score in pairs:
            doc(db, "scores", doc_id).update({"score": score})

    def where(self, bounds: list[int]) -> None:
        db = self.db
        for bound in bounds:
            doc(db, "scores").where("score", ">", bound).stream()

    def top10(self, runs: list[int]) -> None:
        db = self.db
        for _ in runs:
            doc(db, "scores").order_by("score", "desc").limit(10).stream()

    def durable(self, on: bool) -> None:
        # hot is fixed when a database is opened: reopen (the snapshot written by close holds N)
        self.db.close()
        self.db = self._open(hot=on)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def cold(self, first_id: Any) -> Any:
        self.db = self._open()
        doc(self.db, "scores", first_id).get()
        return self.db

    def release(self, store: Any) -> None:
        store.close()
        self.db = None


class DictSystem(System):
    """A plain dict of id → document: the limit. Persisted as one JSON file for cold start."""

    persistent = True

    def create(self, count: int) -> list[Any]:
        self.data = {generate_id(): value for value in documents(count, 1)}
        return list(self.data)

    def add(self, docs: list[dict], out: list[Any]) -> None:
        data = self.data
        for value in docs:
            doc_id = generate_id()
            data[doc_id] = value
            out.append(doc_id)

    def remove(self, ids: list[Any]) -> None:
        for doc_id in ids:
            del self.data[doc_id]

    def get(self, ids: list[Any]) -> None:
        data = self.data
        for doc_id in ids:
            data[doc_id]

    def update(self, pairs: list[tuple[Any, int]]) -> None:
        data = self.data
        for doc_id, score in pairs:
            data[doc_id]["score"] = score

    def where(self, bounds: list[int]) -> None:
        data = self.data
        for bound in bounds:
            [(doc_id, value) for doc_id, value in data.items() if value["score"] > bound]

    def top10(self, runs: list[int]) -> None:
        data = self.data
        key = lambda item: item[1]["score"]  # noqa: E731
        for _ in runs:
            heapq.nlargest(10, data.items(), key=key)

    def close(self) -> None:
        with open(self.folder / "dict.json", "w", encoding="utf-8") as file:
            json.dump(self.data, file, ensure_ascii=False, separators=(",", ":"))
        self.data = {}

    def cold(self, first_id: Any) -> Any:
        with open(self.folder / "dict.json", encoding="utf-8") as file:
            self.data = json.load(file)
        self.data[first_id]
        return self.data


class TinyDBSystem(System):
    """TinyDB, table "scores", with MemoryStorage or JSONStorage (which rewrites and fsyncs the
    whole file on every write)."""

    def __init__(self, folder: Path, on_disk: bool):
        super().__init__(folder)
        self.on_disk = self.persistent = on_disk
        self.path = folder / "tinydb.json"

    def _open(self) -> Any:
        from tinydb import TinyDB
        from tinydb.storages import MemoryStorage

        return TinyDB(self.path) if self.on_disk else TinyDB(storage=MemoryStorage)

    def create(self, count: int) -> list[Any]:
        self.db = self._open()
        self.table = self.db.table("scores")
        return self.table.insert_multiple(documents(count, 1))

    def add(self, docs: list[dict], out: list[Any]) -> None:
        table = self.table
        for value in docs:
            out.append(table.insert(value))

    def remove(self, ids: list[Any]) -> None:
        if ids:
            self.table.remove(doc_ids=ids)

    def get(self, ids: list[Any]) -> None:
        table = self.table
        for doc_id in ids:
            table.get(doc_id=doc_id)

    def update(self, pairs: list[tuple[Any, int]]) -> None:
        table = self.table
        for doc_id, score in pairs:
            table.update({"score": score}, doc_ids=[doc_id])

    def where(self, bounds: list[int]) -> None:
        from tinydb import Query

        table, score = self.table, Query().score
        for bound in bounds:  # bounds vary, so TinyDB's query cache (10 queries) never answers
            table.search(score > bound)

    def top10(self, runs: list[int]) -> None:
        table, key = self.table, itemgetter("score")
        for _ in runs:  # TinyDB has no ordering: read all, keep the 10 largest
            heapq.nlargest(10, table.all(), key=key)

    def close(self) -> None:
        self.db.close()

    def cold(self, first_id: Any) -> Any:
        self.db = self._open()
        self.table = self.db.table("scores")
        self.table.get(doc_id=first_id)
        return self.db

    def release(self, store: Any) -> None:
        store.close()


class SqliteSystem(System):
    """sqlite3, WAL, synchronous=NORMAL, a commit per write; the document as JSON text beside
    a REAL score column; optionally an index on score."""

    durable_mode = persistent = True

    def __init__(self, folder: Path, indexed: bool):
        super().__init__(folder)
        self.indexed = indexed
        self.path = folder / "sqlite.db"

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    def create(self, count: int) -> list[Any]:
        self.con = con = self._connect()
        con.execute("CREATE TABLE scores (id TEXT PRIMARY KEY, doc TEXT NOT NULL, score REAL)")
        rows = [(generate_id(), json.dumps(value), value["score"]) for value in documents(count, 1)]
        con.executemany("INSERT INTO scores VALUES (?, ?, ?)", rows)
        if self.indexed:
            con.execute("CREATE INDEX scores_score ON scores (score)")
        con.commit()
        return [row[0] for row in rows]

    def add(self, docs: list[dict], out: list[Any]) -> None:
        con = self.con
        for value in docs:
            doc_id = generate_id()
            con.execute("INSERT INTO scores VALUES (?, ?, ?)", (doc_id, json.dumps(value), value["score"]))
            con.commit()
            out.append(doc_id)

    def remove(self, ids: list[Any]) -> None:
        self.con.executemany("DELETE FROM scores WHERE id = ?", [(doc_id,) for doc_id in ids])
        self.con.commit()

    def get(self, ids: list[Any]) -> None:
        con = self.con
        for doc_id in ids:
            json.loads(con.execute("SELECT doc FROM scores WHERE id = ?", (doc_id,)).fetchone()[0])

    def update(self, pairs: list[tuple[Any, int]]) -> None:
        con = self.con
        for doc_id, score in pairs:
            con.execute(
                "UPDATE scores SET doc = json_set(doc, '$.score', ?), score = ? WHERE id = ?", (score, score, doc_id)
            )
            con.commit()

    def where(self, bounds: list[int]) -> None:
        con = self.con
        for bound in bounds:
            [(doc_id, json.loads(text)) for doc_id, text in con.execute("SELECT id, doc FROM scores WHERE score > ?", (bound,))]

    def top10(self, runs: list[int]) -> None:
        con = self.con
        for _ in runs:
            [
                (doc_id, json.loads(text))
                for doc_id, text in con.execute("SELECT id, doc FROM scores ORDER BY score DESC LIMIT 10")
            ]

    def durable(self, on: bool) -> None:
        self.con.execute(f"PRAGMA synchronous={'FULL' if on else 'NORMAL'}")

    def close(self) -> None:
        self.con.close()

    def cold(self, first_id: Any) -> Any:
        self.con = self._connect()
        self.get([first_id])
        return self.con

    def release(self, store: Any) -> None:
        store.close()


def make_system(name: str, folder: Path) -> System:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "montybase": lambda: MontybaseSystem(folder),
        "montybase-mem": lambda: MontybaseSystem(folder, memory=True),
        "dict": lambda: DictSystem(folder),
        "tinydb-mem": lambda: TinyDBSystem(folder, on_disk=False),
        "tinydb-json": lambda: TinyDBSystem(folder, on_disk=True),
        "sqlite": lambda: SqliteSystem(folder, indexed=False),
        "sqlite-idx": lambda: SqliteSystem(folder, indexed=True),
    }[name]()


# Measuring: a worker process per system holds its store and times rounds on request


def timed_round(fn: Callable[[list], None], inputs: list, cap: float) -> tuple[float, int]:
    """`fn` over `inputs` in chunks that grow while they are quick, until every input is done
    or `cap` seconds have been spent: (operations per second, operations done)."""
    done, spent, size = 0, 0.0, 1
    while done < len(inputs) and spent < cap:
        part = inputs[done:done + size]
        start = time.perf_counter()
        fn(part)
        took = time.perf_counter() - start
        spent += took
        done += len(part)
        if took < 0.02:
            size = min(size * 2, 4096)
    return done / spent, done


class Worker:
    """One system at one size, inside its own process: fills the store, then answers the
    parent's requests (one JSON line each) until told to quit."""

    def __init__(self, name: str, count: int, folder: Path, cheap: int, queries: int):
        self.name = name
        self.system = system = make_system(name, folder)
        self.folder = folder
        ids = system.create(count)
        self.first_id = ids[0]
        rng = random.Random(2)
        adds = 200 if name == "tinydb-json" else min(count, cheap)
        inputs = {
            "add": list(documents(adds, 3, "new")),
            "get": rng.choices(ids, k=cheap),
            "update": [(doc_id, rng.randrange(SCORE_RANGE)) for doc_id in rng.choices(ids, k=cheap)],
            "where": [WHERE_FROM + (i * 7919) % 1000 for i in range(queries)],
            "top10": list(range(queries)),
        }
        inputs["add_sync"] = inputs["add"]
        self.rounds = {row: split(values, ROUNDS) for row, values in inputs.items()}
        del ids
        self.warm()

    def warm(self) -> None:
        """Steady state: indexes built on first use exist before writes are timed."""
        self.system.get([self.first_id])
        self.system.where([WHERE_FROM])
        self.system.top10([0])

    def round(self, row: str, number: int, cap: float) -> dict[str, Any]:
        system = self.system
        inputs = self.rounds[row][number]
        if not inputs:
            return {"ops": 0.0, "done": 0}
        if row in ("add", "add_sync"):
            added: list[Any] = []
            ops, done = timed_round(lambda part: system.add(part, added), inputs, cap)
            system.remove(added)  # untimed: the next row sees N documents again
        else:
            ops, done = timed_round(getattr(system, row), inputs, cap)
        return {"ops": ops, "done": done}

    def durable(self, on: bool) -> dict[str, Any]:
        if not self.system.durable_mode:
            return {"applies": False}
        self.system.durable(on)
        self.warm()
        return {"applies": True}

    def close(self) -> dict[str, Any]:
        self.system.close()
        (self.folder / "first_id.json").write_text(json.dumps(self.first_id))
        gc.collect()
        return {"persistent": self.system.persistent}

    def cold(self) -> dict[str, Any]:
        """One timed open of the closed store and first read; Montybase also times json.load
        of its own snapshot file."""
        system, out = self.system, {}
        gc.collect()
        start = time.perf_counter()
        store = system.cold(self.first_id)
        out["cold"] = time.perf_counter() - start
        system.release(store)
        del store
        if isinstance(system, MontybaseSystem):
            gc.collect()
            start = time.perf_counter()
            with open(system.snapshot, encoding="utf-8") as file:
                json.load(file)
            out["json_load"] = time.perf_counter() - start
            out["snapshot_bytes"] = system.snapshot.stat().st_size
        return out

    def serve(self, requests: Iterator[str], reply: Callable[[dict], None]) -> None:
        reply({"ready": True})
        for line in requests:
            request = json.loads(line)
            action = request.pop("do")
            if action == "quit":
                return
            reply(getattr(self, action)(**request))


def split(values: list, parts: int) -> list[list]:
    per = max(1, -(-len(values) // parts))
    return [values[i * per:(i + 1) * per] for i in range(parts)]


def resident_bytes() -> int:
    """Resident set size now (Linux /proc; elsewhere the peak, which only grows)."""
    try:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def run_memory(name: str, count: int, folder: Path) -> dict[str, Any]:
    """RSS growth of this fresh process while the store comes to hold N documents."""
    with tempfile.TemporaryDirectory() as scratch:  # warm up: imports and first-use caches
        warm = make_system(name, Path(scratch))
        warm_ids = warm.create(50)
        warm.get(warm_ids[:1])
        warm.where([WHERE_FROM])
        warm.top10([0])
        warm.close()
        if warm.persistent:
            warm.release(warm.cold(warm_ids[0]))
        del warm
    first_id = json.loads((folder / "first_id.json").read_text())
    system = make_system(name, folder)
    gc.collect()
    before = resident_bytes()
    store = system.hold(count, first_id)
    gc.collect()
    after = resident_bytes()
    held = after - before
    if store is not None:
        system.release(store)
    elif name != "dict":
        system.close()
    return {"memory": held / 1e6}


# The parent: run every worker, print the table and the targets


class Remote:
    """A worker process, driven by one JSON line per request and per answer."""

    def __init__(self, name: str, size: int, folder: Path, options: list[str]):
        folder.mkdir(parents=True)
        self.name = name
        self.log = open(folder.parent / f"{folder.name}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", name, str(size), str(folder), *options],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT,
        )
        self.error: str | None = None

    def ask(self, **request: Any) -> dict[str, Any] | None:
        """Send a request (none: just read the next answer) and wait for its answer; None once
        this worker has failed."""
        if self.error is not None:
            return None
        try:
            if request:
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
            if not select.select([self.proc.stdout], [], [], WORKER_TIMEOUT)[0]:
                raise TimeoutError(f"no answer within {WORKER_TIMEOUT} s")
            line = self.proc.stdout.readline()
            if not line:
                self.log.seek(0)
                lines = self.log.read().strip().splitlines()
                raise RuntimeError(lines[-1] if lines else f"exit {self.proc.wait()}")
            return json.loads(line)
        except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
            self.error = str(exc)
            print(f"{self.name} failed: {exc}", file=sys.stderr)
            self.proc.kill()
            return None

    def finish(self) -> None:
        if self.error is None:
            try:
                self.proc.stdin.write(json.dumps({"do": "quit"}) + "\n")
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def measure_size(size: int, systems: Sequence[str], root: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every row of every system at one size. The systems' rounds are interleaved (round 1 of
    each system, then round 2, ...), so load from elsewhere on the machine falls on all alike."""
    options = ["--cap", str(args.cap)] + (["--quick"] if args.quick else [])
    remotes = {name: Remote(name, size, root / f"{name}-{size}", options) for name in systems}
    results: dict[str, dict[str, Any]] = {name: {} for name in systems}
    for remote in remotes.values():
        remote.ask()  # filled and warm
    progress = time.perf_counter()

    def note(what: str) -> None:
        nonlocal progress
        now = time.perf_counter()
        print(f"  N={size:,} {what}: {now - progress:.1f} s", file=sys.stderr, flush=True)
        progress = now

    def rounds(row: str, names: Sequence[str]) -> None:
        for number in range(ROUNDS):
            for name in names:
                answer = remotes[name].ask(do="round", row=row, number=number, cap=args.cap / ROUNDS)
                if answer and answer["done"]:
                    got = results[name]
                    got[row] = max(got.get(row, 0.0), answer["ops"])
                    got[row + "_n"] = got.get(row + "_n", 0) + answer["done"]
        note(row)

    for row in ("add", "get", "update", "where", "top10"):
        rounds(row, systems)
    durable = [name for name in systems if (remotes[name].ask(do="durable", on=True) or {}).get("applies")]
    rounds("add_sync", durable)
    for name in durable:
        remotes[name].ask(do="durable", on=False)
    if "tinydb-json" in results and "add" in results["tinydb-json"]:  # JSONStorage always fsyncs
        results["tinydb-json"]["add_sync"] = results["tinydb-json"]["add"]
        results["tinydb-json"]["add_sync_n"] = results["tinydb-json"]["add_n"]
    persistent = [name for name in systems if (remotes[name].ask(do="close") or {}).get("persistent")]
    for _ in range(REPEATS):
        for name in persistent:
            for key, value in (remotes[name].ask(do="cold") or {}).items():
                results[name][key] = min(results[name].get(key, value), value)
    note("cold start")
    for name, remote in remotes.items():
        remote.finish()
        if remote.error is not None:
            results[name] = {"error": remote.error}
    for name in systems:
        if "error" not in results[name]:
            try:
                results[name].update(memory_in_subprocess(name, size, root / f"{name}-{size}"))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"{name} memory at N={size:,} failed: {exc}", file=sys.stderr)
                results[name]["memory_error"] = str(exc)
    note("memory")
    return results


def memory_in_subprocess(name: str, size: int, folder: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory", name, str(size), str(folder)],
        capture_output=True, text=True, timeout=WORKER_TIMEOUT, cwd=ROOT,
        # glibc raises its mmap threshold after freeing a big block, after which freed file
        # buffers stay in the heap and RSS depends on history: pin it (ignored elsewhere).
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"},
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    if value >= 10:
        return f"{value:.0f}"
    return f"{value:.1f}"


def cell(results: dict[str, Any], row: str) -> str:
    if "error" in results or (row == "memory" and "memory_error" in results):
        return "err"
    value = results.get(row)
    if value is None:
        return "—"
    if row == "cold":
        return f"{value:.4f}" if value < 0.01 else f"{value:.3f}"
    if row == "memory":
        return f"{value:.1f}"
    text = fmt_rate(value)
    return text + "*" if results.get(row + "_n", FEW) < FEW else text


def revision() -> str:
    """The checkout's commit as ' at abc1234' (read-only git commands), or '' outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "--no-optional-locks", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", "server", "python_client")
    except (OSError, subprocess.SubprocessError):
        return ""
    return f" at {commit}" + (" + uncommitted changes" if changed else "")


def print_table(sizes: list[int], table: dict[tuple[str, int], dict[str, Any]], args: argparse.Namespace) -> None:
    import tinydb

    label, width = 30, 15
    print(
        f"Montybase benchmark{revision()} · Python {platform.python_version()} · {platform.system()} {platform.machine()} · "
        f"{os.cpu_count()} CPUs · sqlite {sqlite3.sqlite_version} · TinyDB {tinydb.__version__}"
    )
    print(f"{'':<{label}}" + "".join(f"{HEADERS[name]:>{width}}" for name in SYSTEMS))
    for size in sizes:
        print(f"N = {size:,} documents")
        for row, title, unit in ROWS:
            print(f"  {title + ', ' + unit:<{label - 2}}" + "".join(f"{cell(table[name, size], row):>{width}}" for name in SYSTEMS))
    print(
        f"""
Each system holds its store in a process of its own (one per system and size). Rates are
operations (q/s: queries) per second of perf_counter time, the best of {ROUNDS} rounds, the rounds of
all systems interleaved (round 1 of each, then round 2, ...) so that other load on the machine
falls on all alike and the best round is the most repeatable (timeit's rule). A cell is bounded to
{args.cheap:,} ops (adds: min(N, {args.cheap:,})) or {args.queries:,} queries, and ~{args.cap:g} s in all; * = fewer than {FEW}
operations fit in that time.
Every store first holds N documents (scores uniform in [0, {SCORE_RANGE:,})) and has served one get,
where and top-10, so indexes built on first use exist while writes are timed; timed adds go into
that store and are deleted again (untimed) before the next row.
- add: one document per call. Montybase journals each add before returning, fsync once a second
  (default); sqlite3 commits each insert (WAL, synchronous=NORMAL); dict and sqlite3 use Montybase's
  id generator (server.paths.generate_id) so every system pays for an id.
- add, fsync each write: Montybase hot=True (a single writer, so group commit has nothing to group);
  sqlite3 synchronous=FULL; TinyDB JSONStorage rewrites and fsyncs the whole file on every write (its
  only mode, the same measurement in both add rows), so it is timed over at most 200 adds (fewer
  where the time cap ends it first) into a table already holding N; its other rows re-read the whole
  file per call.
- get: the document by id (Montybase returns a copy; sqlite3: SELECT + json.loads; dict: d[id]).
- update: set "score" (Montybase update(); sqlite3 json_set + score column, committed; dict in place).
- where: score > x with x varying in [{WHERE_FROM:,}, {WHERE_FROM + 1000:,}) (defeats TinyDB's query
  cache); the matching ids and documents. dict: list comprehension; sqlite3+idx uses its index.
- top-10: Montybase order_by("score", "desc").limit(10); sqlite3 ORDER BY score DESC LIMIT 10;
  dict and TinyDB: heapq.nlargest over all documents.
- cold start: best of {REPEATS}: open the store written by the run and read one document. Montybase:
  Montybase(config=...) loads the snapshot that close() wrote; dict: json.load of the dict dumped
  as compact JSON; TinyDB JSON: open + get; sqlite3: connect + pragmas + one SELECT.
- memory: RSS growth (/proc/self/statm) of a fresh process, after imports and a 50-document
  warm-up, from before opening (or filling) the store to after it holds N documents and has served
  a get, a where and a top-10, with gc.collect() before each reading and glibc's mmap threshold
  pinned at 128 KiB (so freed file buffers leave RSS). RSS, unlike tracemalloc, also counts memory
  held by C code (sqlite3's page cache). sqlite3 and TinyDB JSON keep the data on disk;
  TinyDB JSON's figure is its query cache plus heap that parsing the whole file left behind.
— = not applicable (no fsync mode, nothing on disk to start from)."""
    )


def print_targets(size: int, table: dict[tuple[str, int], dict[str, Any]]) -> bool:
    monty, sqlite, indexed, plain = (table[name, size] for name in ("montybase", "sqlite", "sqlite-idx", "dict"))
    print(f"\ntargets at N = {size:,} (Montybase = embedded, default durability)")

    def ratio(a: dict, a_row: str, b: dict, b_row: str) -> float | None:
        x, y = a.get(a_row), b.get(b_row)
        return x / y if x is not None and y else None

    checks = [
        ("add / sqlite3 add (commit per op)", ratio(monty, "add", sqlite, "add"), "≥ 1.5×", lambda r: r >= 1.5, "×"),
        ("get / sqlite3 get", ratio(monty, "get", sqlite, "get"), "≥ 3×", lambda r: r >= 3, "×"),
        ("top-10 queries per second", monty.get("top10"), "≥ 5,000 q/s", lambda r: r >= 5000, " q/s"),
        ("top-10 / sqlite3+idx top-10", ratio(monty, "top10", indexed, "top10"), "≥ 0.5×", lambda r: r >= 0.5, "×"),
        ("cold start / json.load of its snapshot", ratio(monty, "cold", monty, "json_load"), "≤ 2×", lambda r: r <= 2, "×"),
        ("memory / plain dict", ratio(monty, "memory", plain, "memory"), "≤ 2×", lambda r: r <= 2, "×"),
    ]
    passed = True
    for title, value, target, ok, unit in checks:
        if value is None:
            shown, verdict = "n/a", "n/a"
        else:
            shown = f"{value:,.0f}{unit}" if unit == " q/s" else f"{value:.2f}{unit}"
            verdict = "PASS" if ok(value) else "MISS"
        passed &= verdict == "PASS"
        print(f"  {title:<40}{shown:>14}   target {target:<13}{verdict}")
    if "json_load" in monty:
        print(
            f"  (snapshot {monty['snapshot_bytes'] / 1e6:.1f} MB; json.load {monty['json_load']:.3f} s, "
            f"Montybase cold start {monty['cold']:.3f} s)"
        )
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="document counts (default 10000 100000)")
    parser.add_argument("--quick", action="store_true", help="sizes 1000 10000, a shorter time cap, fewer network rounds")
    parser.add_argument("--cap", type=float, help="seconds per cell, all rounds together (default 2, quick 0.4)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="what to run (default: all): the engine table, then the network sections")
    parser.add_argument("--profile", metavar="DIR",
                        help="run every network server under cProfile, writing DIR/<server>.prof (slows them)")
    parser.add_argument("--only", nargs="+", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=3, metavar=("SYSTEM", "N", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--memory", nargs=3, metavar=("SYSTEM", "N", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = args.sizes or ([1000, 10000] if args.quick else [10000, 100000])
    args.cap = args.cap if args.cap is not None else (0.4 if args.quick else 2.0)
    args.cheap, args.queries = (5000, 500) if args.quick else (20000, 2000)

    if args.worker:
        name, count, folder = args.worker
        channel, sys.stdout = sys.stdout, sys.stderr  # the answers alone go to stdout

        def reply(answer: dict) -> None:
            channel.write(json.dumps(answer) + "\n")
            channel.flush()

        Worker(name, int(count), Path(folder), args.cheap, args.queries).serve(sys.stdin, reply)
        return 0
    if args.memory:
        name, count, folder = args.memory
        print(json.dumps(run_memory(name, int(count), Path(folder))))
        return 0

    started = time.perf_counter()
    loads = os.getloadavg() if hasattr(os, "getloadavg") else None  # other work on the machine moves every figure
    failed = False
    if "engine" in args.sections:
        systems = [name for name in SYSTEMS if name in (args.only or SYSTEMS)]
        table: dict[tuple[str, int], dict[str, Any]] = {}
        with tempfile.TemporaryDirectory(prefix="montybase-bench-") as tmp:
            for size in args.sizes:
                measured = measure_size(size, systems, Path(tmp), args)
                for name in SYSTEMS:
                    table[name, size] = measured.get(name, {})
        print_table(args.sizes, table, args)
        print_targets(max(args.sizes), table)
        failed = any("error" in results for results in table.values())
    else:
        print(f"Montybase benchmark{revision()} · Python {platform.python_version()} · {platform.system()} "
              f"{platform.machine()} · {os.cpu_count()} CPUs")
    network = [name for name in args.sections if name != "engine"]
    if network:
        sys.stdout.flush()
        from network import ChildError, run_network  # benchmarks/network.py, beside this file

        try:
            failed |= not run_network(network, quick=args.quick, profile=args.profile)
        except (ChildError, OSError) as exc:
            print(f"\nnetwork sections failed: {exc}")
            failed = True
    load = f"; load average {loads[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end" if loads else ""
    print(f"\n(total {time.perf_counter() - started:.0f} s{load})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
