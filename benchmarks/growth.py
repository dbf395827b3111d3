"""How costs grow with the number of documents: Montybase's engine beside sqlite3 (with an index
on each filtered field) and a plain dict, at each size, every system in a process of its own.

    python benchmarks/growth.py                     # 10,000 and 100,000 documents: a few minutes
    python benchmarks/growth.py --max 1000000       # also 1,000,000 (about 10 minutes, 3 GB)

Documents are {name, score (uniform in [0, 1)), level (0-999), tags (2 of 20)}. Every timed cell
is the median of its repetitions. Montybase is the engine itself (server.database.Database over
a FileStorage: what the embedded client and the server call). The engine hands out its stored
documents, as the server encodes them; the row "copied" adds the copy the embedded client makes
of each document it returns (sqlite3's rows are decoded anew every time; the dict's are copied).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("montybase", "sqlite", "dict")
TITLES = {"montybase": "Montybase", "sqlite": "sqlite3 + indexes", "dict": "dict"}
ROWS = (
    ("where", "where score > x (0.1%), q/s"),
    ("copied", "the same, each document copied for the caller (the embedded client's stream()), q/s"),
    ("where10", "where score > x (10 documents), q/s"),
    ("second", "where level == k and score > x, q/s"),
    ("count", "count() where score > x (1%), q/s"),
    ("top10", "top-10 by score desc, q/s"),
    ("get", "get by id, ops/s"),
    ("add", "add, ops/s"),
    ("written_gc", "a full garbage collection once they are written, ms"),
    ("snapshot", "snapshot, s"),
    ("pause", "longest pause of a reader during it, ms (without: noise)"),
    ("cold", "cold start, s"),
    ("gc", "a full garbage collection after it, ms"),
    ("write_pause", "longest wait of a writer during a snapshot then (without: noise), ms"),
    ("rss", "RSS per document, bytes"),
)
REPEAT = 7


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def document(rng: random.Random, i: int) -> dict[str, Any]:
    return {"name": f"player{i}", "score": rng.random(), "level": rng.randrange(1000),
            "tags": rng.sample(TAGS, 2)}


TAGS = [f"t{i}" for i in range(20)]


def rate(action: Callable[[int], Any], runs: int) -> float:
    """Operations per second: the median of REPEAT rounds of `runs` calls."""
    rounds = []
    for r in range(REPEAT):
        started = time.perf_counter()
        for i in range(runs):
            action(r * runs + i)
        rounds.append(runs / (time.perf_counter() - started))
    return statistics.median(rounds)


def longest_pause(reader: Callable[[int], Any], during: Callable[[], Any]) -> tuple[float, float, float]:
    """(seconds `during` took, the longest gap between two reads of a thread reading meanwhile,
    the longest gap over as long without it: the machine's noise)."""
    gaps: list[float] = []
    stop = threading.Event()

    def read() -> None:
        last, i = time.perf_counter(), 0
        while not stop.is_set():
            reader(i)
            i += 1
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    thread = threading.Thread(target=read)
    thread.start()
    time.sleep(0.2)
    gaps.clear()
    started = time.perf_counter()
    during()
    took = time.perf_counter() - started
    pause = max(gaps, default=took)
    gaps.clear()
    time.sleep(min(took, 5.0))
    noise = max(gaps, default=0.0)
    stop.set()
    thread.join()
    return took, pause, noise


class Montybase:
    def __init__(self, folder: Path, count: int):
        from server.database import Database
        from server.storage import FileStorage

        self.embedded = None
        self.open = lambda: Database(FileStorage(folder / "db.json"), snapshot_seconds=1e9, sync_interval=3600)
        self.db = self.open()
        rng = random.Random(1)
        for start in range(0, count, 500):
            self.db.commit([{"op": "set", "path": ["c", f"d{i:07}"], "value": document(rng, i)}
                            for i in range(start, min(count, start + 500))])

    def query(self, where: list, **more: Any) -> list:
        return self.db.query({"query": {"path": ["c"], "where": where, **more}}, None)[0]["docs"]

    def copied(self, where: list) -> list:
        from python_client.embedded import EmbeddedBackend

        self.embedded = self.embedded or EmbeddedBackend(self.db)
        return self.embedded.call("query", {"query": {"path": ["c"], "where": where}})["docs"]

    def count(self, where: list) -> int:
        return self.db.aggregate({"op": "count", "query": {"path": ["c"], "where": where}}, None)[0]["value"]

    def top10(self) -> list:
        return self.db.query({"query": {"path": ["c"], "orderBy": [["score", "desc"]], "limit": 10}}, None)[0]["docs"]

    def get(self, doc_id: str) -> Any:
        return self.db.get({"path": ["c", doc_id]}, None)[0]["value"]

    def add(self, value: dict) -> None:
        self.db.write("add", {"path": ["c"], "value": value}, None)

    def writer(self) -> Callable[[dict], None]:
        return self.add

    def snapshot(self) -> None:
        self.db.snapshot()

    def stop(self) -> None:
        self.db.close()
        self.db = self.embedded = None

    def cold(self, doc_id: str) -> None:
        self.db = self.open()
        self.get(doc_id)


class Sqlite:
    def __init__(self, folder: Path, count: int):
        self.file = folder / "db.sqlite"
        self.conn = self.connect()
        self.conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, doc TEXT, score REAL, level INTEGER)")
        self.conn.execute("CREATE INDEX t_score ON t (score)")
        self.conn.execute("CREATE INDEX t_level ON t (level)")
        rng = random.Random(1)
        for start in range(0, count, 500):
            self.conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", [
                (f"d{i:07}", json.dumps(d), d["score"], d["level"])
                for i in range(start, min(count, start + 500)) for d in (document(rng, i),)])
            self.conn.commit()
        self.added = count

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.file, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def query(self, where: list, **more: Any) -> list:
        if len(where) == 1:
            rows = self.conn.execute("SELECT id, doc FROM t WHERE score > ?", (where[0][2],))
        else:
            rows = self.conn.execute("SELECT id, doc FROM t WHERE level = ? AND score > ?", (where[0][2], where[1][2]))
        return [(i, json.loads(d)) for i, d in rows]

    copied = query  # every row is decoded anew

    def count(self, where: list) -> int:
        return self.conn.execute("SELECT count(*) FROM t WHERE score > ?", (where[0][2],)).fetchone()[0]

    def top10(self) -> list:
        return [(i, json.loads(d)) for i, d in self.conn.execute("SELECT id, doc FROM t ORDER BY score DESC LIMIT 10")]

    def get(self, doc_id: str, conn: sqlite3.Connection | None = None) -> Any:
        row = (conn or self.conn).execute("SELECT doc FROM t WHERE id = ?", (doc_id,)).fetchone()
        return json.loads(row[0])

    def add(self, value: dict) -> None:
        self.added += 1
        self.conn.execute("INSERT INTO t VALUES (?, ?, ?, ?)", (f"a{self.added:07}", json.dumps(value), value["score"], value["level"]))
        self.conn.commit()

    def writer(self) -> Callable[[dict], None]:  # a connection of its own, as another thread would have
        conn = self.connect()

        def add(value: dict) -> None:
            self.added += 1
            conn.execute("INSERT INTO t VALUES (?, ?, ?, ?)", (f"a{self.added:07}", json.dumps(value), value["score"], value["level"]))
            conn.commit()
        return add

    def snapshot(self) -> None:  # a consistent copy of the file: the backup API
        target = sqlite3.connect(self.file.with_suffix(".backup"))
        self.conn.backup(target)
        target.close()

    def stop(self) -> None:
        self.conn.close()

    def cold(self, doc_id: str) -> None:
        self.conn = self.connect()
        self.get(doc_id)


class Dict:
    def __init__(self, folder: Path, count: int):
        self.file = folder / "db.json"
        rng = random.Random(1)
        self.data = {f"d{i:07}": document(rng, i) for i in range(count)}
        self.added = count

    def query(self, where: list, **more: Any) -> list:
        if len(where) == 1:
            bound = where[0][2]
            return [(i, d) for i, d in self.data.items() if d["score"] > bound]
        level, bound = where[0][2], where[1][2]
        return [(i, d) for i, d in self.data.items() if d["level"] == level and d["score"] > bound]

    def copied(self, where: list) -> list:
        from server.values import clone_all

        found = self.query(where)
        return list(zip([i for i, _ in found], clone_all([d for _, d in found])))

    def count(self, where: list) -> int:
        bound = where[0][2]
        return sum(1 for d in self.data.values() if d["score"] > bound)

    def top10(self) -> list:
        import heapq
        return heapq.nlargest(10, self.data.items(), key=lambda item: item[1]["score"])

    def get(self, doc_id: str) -> Any:
        return self.data[doc_id]

    def add(self, value: dict) -> None:
        self.added += 1
        self.data[f"a{self.added:07}"] = value

    def writer(self) -> None:  # json.dump of a dict another thread changes fails: no writer
        return None

    def snapshot(self) -> None:  # json.dump, as a dict would be saved
        self.file.write_text(json.dumps(self.data), encoding="utf-8")

    def stop(self) -> None:
        self.data = None

    def cold(self, doc_id: str) -> None:
        self.data = json.loads(self.file.read_text(encoding="utf-8"))
        self.get(doc_id)


def measure(system: str, count: int) -> dict[str, Any]:
    """One system at one size, in this process."""
    rng = random.Random(2)
    sys.path.insert(0, str(ROOT))
    import server.database, server.storage  # noqa: E401, F401  (loaded before the memory baseline)

    with tempfile.TemporaryDirectory(prefix="growth-") as folder:
        gc.collect()
        before = rss()
        store = {"montybase": Montybase, "sqlite": Sqlite, "dict": Dict}[system](Path(folder), count)
        gc.collect()
        out: dict[str, Any] = {"rss": (rss() - before) / count}
        started = time.perf_counter()
        gc.collect()  # what a full collection costs every thread once the documents are written
        out["written_gc"] = (time.perf_counter() - started) * 1000
        ids = [f"d{rng.randrange(count):07}" for _ in range(1000)]
        few = max(3, min(50, 2_000_000 // count))  # queries per round
        out["where"] = rate(lambda i: store.query([["score", ">", 0.999 - (i % 7) * 1e-5]]), few)
        out["copied"] = rate(lambda i: store.copied([["score", ">", 0.999 - (i % 7) * 1e-5]]), few)
        out["where10"] = rate(lambda i: store.query([["score", ">", 1 - 10 / count - (i % 7) * 1e-9]]), few)
        out["second"] = rate(lambda i: store.query([["level", "==", i % 1000], ["score", ">", 0.5]]), few)
        out["count"] = rate(lambda i: store.count([["score", ">", 0.99 - (i % 7) * 1e-5]]), few)
        out["top10"] = rate(lambda i: store.top10(), few)
        out["get"] = rate(lambda i: store.get(ids[i % 1000]), 1000)
        out["add"] = rate(lambda i: store.add(document(rng, i)), 500)
        reader = store.get
        if system == "sqlite":  # a reader of its own, as another thread would have
            conn = store.connect()
            reader = lambda doc_id: store.get(doc_id, conn)  # noqa: E731
        took, pause, noise = longest_pause(lambda i: reader(ids[i % 1000]), store.snapshot)
        out["snapshot"], out["pause"], out["noise"] = took, pause * 1000, noise * 1000
        # A start as a new process would make it: the data of the last one is gone (freeing a
        # million documents takes 0.2 s, which no start pays).
        store.stop()
        gc.collect()
        started = time.perf_counter()
        store.cold(ids[0])
        out["cold"] = time.perf_counter() - started
        started = time.perf_counter()
        gc.collect()  # what a full collection costs every thread once the data is loaded
        out["gc"] = (time.perf_counter() - started) * 1000
        out["write_pause"] = out["write_noise"] = None
        if (writer := store.writer()) is not None:
            store.add(document(rng, 0))  # something for the snapshot to write
            _, pause, noise = longest_pause(lambda i: writer(document(rng, i)), store.snapshot)
            out["write_pause"], out["write_noise"] = pause * 1000, noise * 1000
        return out


def cell(row: str, result: dict[str, Any]) -> str:
    value = result[row]
    if value is None:
        return "–"
    if row in ("pause", "write_pause"):
        return f"{value:.0f} ({result[row.replace('pause', 'noise')]:.0f})"
    if row in ("gc", "written_gc"):
        return f"{value:.0f}"
    if row in ("snapshot", "cold"):
        return f"{value:.3f}" if value < 1 else f"{value:.2f}"
    if row == "rss":
        return f"{value:.0f}"
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= 10 * limit:
            return f"{value / limit:.0f}{suffix}"
        if value >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=100_000, help="the largest size (sizes go ×10 from 10,000)")
    parser.add_argument("--child", nargs=2, metavar=("SYSTEM", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]))))
        return
    sizes = [n for n in (10_000, 100_000, 1_000_000, 10_000_000) if n <= args.max]
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for count in sizes:
        for system in SYSTEMS:
            done = subprocess.run([sys.executable, __file__, "--child", system, str(count)],
                                  check=True, capture_output=True, text=True)
            results[system, count] = json.loads(done.stdout)
            print(f"{TITLES[system]} at {count:,}: done", file=sys.stderr, flush=True)
    header = " | ".join(f"{TITLES[s]} {n // 1000:,}k" if n < 1_000_000 else f"{TITLES[s]} {n // 1_000_000}M"
                        for n in sizes for s in SYSTEMS)
    print(f"| | {header} |")
    print("|---|" + "---|" * (len(sizes) * len(SYSTEMS)))
    for row, title in ROWS:
        print(f"| {title} | " + " | ".join(cell(row, results[s, n]) for n in sizes for s in SYSTEMS) + " |")


if __name__ == "__main__":
    main()
