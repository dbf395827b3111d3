"""Several nodes on one PostgreSQL, beside a single file-storage server and a bare insert loop.

    python benchmarks/postgres.py [--url postgresql://…] [--writes 2000] [--subscribers 1000]
                                  [--documents 100000] [--quick]

Without --url it starts a PostgreSQL of its own (tests/pg.py: Debian's binaries, a temporary
cluster; fsync off there, as in the tests, so the figures show Montybase's cost, not a disk's).
Rows: a bare psycopg insert loop with a commit per insert (the limit); add round trips for 1
and 16 clients through a file-storage server, one node and three nodes; the time from a write
on one node to the callbacks of subscribers spread over three nodes (p50/p99); the time until
a write acknowledged on one node is seen by a get on another (p50/p99); a node's start-up time
and memory at --documents documents. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import psycopg  # noqa: E402

from procs import Proc, server_command  # noqa: E402
from python_client import Montybase, doc  # noqa: E402
from server.config import create_config  # noqa: E402
from server.postgres import import_state  # noqa: E402


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Nodes:
    """Server processes on one montybase.json (storageBucket `bucket`) and admin clients of them."""

    def __init__(self, folder: Path, bucket: str, count: int):
        folder.mkdir(parents=True)
        self.folder, self.config_path = folder, folder / "montybase.json"
        self.config = {**create_config(self.config_path), "storageBucket": bucket}
        self.config_path.write_text(json.dumps(self.config))
        self.procs = [Proc(server_command("--config", str(self.config_path), "--port", "0", "--log-level", "warning"),
                           folder) for _ in range(count)]
        self.urls = [proc.endpoint(120) for proc in self.procs]
        self.clients: list[Montybase] = []

    def client(self, index: int) -> Montybase:
        handle = Montybase(api=self.urls[index % len(self.urls)], config=self.config_path)
        self.clients.append(handle)
        return handle

    def close(self) -> None:
        for handle in self.clients:
            handle.close()
        for proc in self.procs:
            proc.cleanup()


def bare_inserts(url: str, writes: int) -> float:
    value = json.dumps({"name": "Amor", "score": 100})
    with psycopg.connect(url) as connection:
        connection.execute("CREATE TABLE bench_bare (seq bigint PRIMARY KEY, value text)")
        connection.commit()
        started = time.perf_counter()
        for number in range(writes):
            connection.execute("INSERT INTO bench_bare VALUES (%s, %s)", (number, value))
            connection.commit()
        return writes / (time.perf_counter() - started)


def adds(nodes: Nodes, clients: int, writes: int) -> float:
    """Adds per second, `writes` in all, from `clients` threads spread over the nodes."""
    handles = [nodes.client(number) for number in range(clients)]
    each = max(1, writes // clients)
    start = threading.Barrier(clients + 1)

    def run(handle: Montybase) -> None:
        start.wait()
        for number in range(each):
            doc(handle, "scores").add({"name": "Amor", "score": number})

    threads = [threading.Thread(target=run, args=(handle,)) for handle in handles]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return each * clients / (time.perf_counter() - started)


def fan_out(nodes: Nodes, subscribers: int, rounds: int) -> tuple[float, float]:
    """Write on node 0 → callbacks of `subscribers` listeners (over 30 connections, spread over
    the nodes): p50 and p99 in ms."""
    connections = [nodes.client(number) for number in range(30)]
    latencies: list[float] = []
    sent: dict[int, float] = {}
    lock = threading.Lock()
    seen = threading.Semaphore(0)

    def callback(snapshot: Any) -> None:
        if snapshot.exists and snapshot.value.get("n") in sent:
            with lock:
                latencies.append(time.perf_counter() - sent[snapshot.value["n"]])
            seen.release()

    for number in range(subscribers):
        doc(connections[number % len(connections)], "fan", "out").on_snapshot(callback)
    writer = nodes.client(0)
    for number in range(rounds):
        sent[number] = time.perf_counter()
        doc(writer, "fan", "out").set({"n": number})
        for _ in range(subscribers):
            seen.acquire(timeout=30)
    return percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000


def visible(nodes: Nodes, rounds: int) -> tuple[float, float]:
    """A write acknowledged on node 0 → a get on node 1 sees it: p50 and p99 in ms."""
    writer, reader = nodes.client(0), nodes.client(1)
    latencies = []
    for number in range(rounds):
        doc(writer, "seen", "doc").set({"n": number})
        started = time.perf_counter()
        while (doc(reader, "seen", "doc").get() or {}).get("n") != number:
            pass
        latencies.append(time.perf_counter() - started)
    return percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000


def start_up(folder: Path, url: str, documents: int) -> tuple[float, float]:
    """A node's start-up (process start to serving) in s and its memory (RSS) in MB at `documents`."""
    docs = {f"p{number:07}": {"name": f"player {number}", "score": number, "tags": ["a", "b"]} for number in range(documents)}
    import_state(url, {("players",): docs}, 0, lambda _: None)
    started = time.perf_counter()
    nodes = Nodes(folder, url, 1)
    seconds = time.perf_counter() - started
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{nodes.procs[0].pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    nodes.close()
    return seconds, rss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an existing PostgreSQL server's URL (a database per section is made in it)")
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="small numbers, to see that it runs")
    args = parser.parse_args()
    if args.quick:
        args.writes, args.subscribers, args.documents = 200, 60, 2000
    own = None
    if args.url is None:
        from pg import Postgres

        own = Postgres()
    names = iter(range(1, 1000))

    def database() -> str:
        if own is not None:
            return own.create_database()
        name = f"montybase_bench_{int(time.time())}_{next(names)}"
        with psycopg.connect(args.url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return args.url.rsplit("/", 1)[0] + "/" + name

    rows: list[tuple[str, str]] = []
    folder = Path(tempfile.mkdtemp(prefix="montybase-pg-bench-"))
    try:
        bare = bare_inserts(database(), args.writes)
        rows.append(("bare insert + commit (psycopg)", f"{bare:,.0f}/s"))
        for label, bucket, count in (("file storage, 1 server", "db.json", 1), ("PostgreSQL, 1 node", None, 1),
                                     ("PostgreSQL, 3 nodes", None, 3)):
            for clients in (1, 16):
                nodes = Nodes(folder / f"{label}-{clients}".replace(" ", "_").replace(",", ""),
                              bucket or database(), count)
                try:
                    rate = adds(nodes, clients, args.writes)
                finally:
                    nodes.close()
                ratio = f" ({rate / bare:.2f}x bare)" if bucket is None else ""
                rows.append((f"add, {clients} client{'s' if clients > 1 else ''}, {label}", f"{rate:,.0f}/s{ratio}"))
        nodes = Nodes(folder / "fan-out", database(), 3)
        try:
            p50, p99 = fan_out(nodes, args.subscribers, 20)
            rows.append((f"write → callback, {args.subscribers} subscribers over 3 nodes", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"))
            p50, p99 = visible(nodes, 200)
            rows.append(("write on node A → get on node B sees it", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"))
        finally:
            nodes.close()
        seconds, megabytes = start_up(folder / "start-up", database(), args.documents)
        rows.append((f"node start-up, {args.documents:,} documents", f"{seconds:.2f} s, {megabytes:.0f} MB RSS"))
    finally:
        if own is not None:
            own.close()
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()
