"""Several Montybase nodes on one PostgreSQL, beside a single file-storage server and a bare
PostgreSQL insert loop: round trips, cross-node listener latency, visibility, start-up and memory.

    python benchmarks/nodes.py [--quick] [--docs 100000] [--seconds 5]

One run, side by side:
- a PostgreSQL of its own (tests/pg.py: initdb into a temporary folder, pg_ctl on a free port of
  127.0.0.1, run as the `postgres` user under root; fsync and full_page_writes off, as in the
  tests), stopped at the end by the pid it started;
- `--docs` documents `{name, score, level, tags}` in collection `items`, put into PostgreSQL with
  `montybase migrate`'s import and, for the file-storage server, migrated out into a `db.json`;
- one file-storage server and three node processes (`python -m server`, one montybase.json whose
  storageBucket is the PostgreSQL URL), on 127.0.0.1 port 0;
- the limit: a bare insert loop with the driver the nodes use (psycopg 3), a commit per insert.

Rows: add and get round trips per second with 1 and 16 clients (each client a process of its own,
so the clients' GIL is not the limit; with 3 nodes the clients are spread over them); the time
from a write on node 1 to a callback of a listener on nodes 2 and 3 (1,000 subscribers of one
top-10 query spread over the 3 nodes: 20 listeners per connection, as in benchmarks/network.py);
the delay from a write acknowledged on node 1 until a get on node 2 sees it; start-up time and RSS
of a node and of the file-storage server at `--docs` documents (and empty, for the bytes per
document). Clients use the admin key. Every loop is bounded by a count and a time; nothing is
asserted: the targets are printed beside.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for entry in (str(ROOT), str(ROOT / "tests")):  # runnable from a checkout; tests/pg.py, tests/procs.py
    if entry not in sys.path:
        sys.path.insert(0, entry)

from raw import open_channel, rss  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

TOP10 = {"path": ["pulse"], "orderBy": [["score", "desc"]], "limit": 10}
LISTENERS_PER_CONNECTION = 20
CLIENT_COUNTS = (1, 16)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def item(n: int) -> dict[str, Any]:
    """A document of benchmarks/growth.py's shape."""
    return {"name": f"player{n}", "score": (n * 7919) % 100_000, "level": n % 50, "tags": ["a", "b"] if n % 2 else ["c"]}


# Client processes: `nodes.py --worker SPEC` connects, prints "ready", waits for the start time on
# stdin, runs its loop until the time or the count is up, and prints its result as one JSON line.


def worker(spec: dict[str, Any]) -> None:
    kind, docs = spec["kind"], spec["docs"]
    rng = random.Random(spec["seed"])
    if kind.startswith("pg-"):
        import psycopg

        connection = psycopg.connect(spec["url"], autocommit=kind == "pg-get")
        if kind == "pg-add":
            def step(n: int) -> None:
                connection.execute("INSERT INTO bare_inserts (id, value) VALUES (%s, %s)",
                                   (f"{spec['seed']}-{n}", json.dumps(item(n))))
                connection.commit()  # a commit per insert, as a node commits each write
        else:
            def step(n: int) -> None:
                connection.execute("SELECT value FROM montybase_documents WHERE collection = 'items' AND id = %s",
                                   (f"i{rng.randrange(docs):07d}",)).fetchone()
    else:
        from python_client import Montybase, doc

        handle = Montybase(api=spec["url"], config=spec["config"])
        bench = doc(handle, "bench")
        if kind == "add":
            def step(n: int) -> None:
                bench.add(item(n))
        else:
            def step(n: int) -> None:
                doc(handle, "items", f"i{rng.randrange(docs):07d}").get()
    step(0)  # warm: the connection and the first round trip are not timed
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    time.sleep(max(0.0, start_at - time.time()))
    latencies: list[float] = []
    started = time.perf_counter()
    end = started + spec["seconds"]
    n = 1
    while n <= spec["count"]:
        before = time.perf_counter()
        if before >= end:
            break
        step(n)
        latencies.append(time.perf_counter() - before)
        n += 1
    print(json.dumps({"ops": len(latencies), "seconds": time.perf_counter() - started,
                      "p50": percentile(latencies, 0.5)}), flush=True)


def run_clients(specs: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    """Start one worker per spec, start them together, sum what they did."""
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
             for spec in specs]
    try:
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a client did not start")
        start_at = time.time() + 0.3
        for proc in procs:
            proc.stdin.write(f"{start_at}\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate(timeout=timeout)[0].strip().splitlines()[-1]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    seconds = max(result["seconds"] for result in results)
    return {"rate": sum(result["ops"] for result in results) / seconds,
            "p50": statistics.median(result["p50"] for result in results if result["p50"] is not None)}


# Listener processes: `nodes.py --listen SPEC`, hand-driven connections (no python_client, as
# benchmarks/connections.py), `per` listeners each on one connection; prints "ready" once every
# listener has its first snapshot, then, on a line "wait UPTO TIMEOUT" on stdin, the latencies.


async def listen(spec: dict[str, Any]) -> None:
    from server.config import public_key

    config = json.loads(Path(spec["config"]).read_text())
    seen: dict[int, int] = {}  # listener -> highest write number seen
    latencies: list[float] = []
    since = spec["since"]

    async def connect(base: int, per: int) -> Any:
        ws, session = await open_channel(spec["url"], "admin", config["adminKey"], public_key(config["serverKey"]))
        for sub in range(base, base + per):
            await ws.send(session.seal(json.dumps({"jsonrpc": "2.0", "id": sub, "method": "subscribe",
                                                   "params": {"sub": sub, "query": TOP10}}).encode()))
        return ws, session

    async def read(ws: Any, session: Any) -> None:
        try:
            async for frame in ws:
                now = time.time()
                message = json.loads(session.open(frame))
                for entry in message if isinstance(message, list) else [message]:
                    if entry.get("method") != "snapshot":
                        continue
                    params = entry["params"]
                    for change in params["snapshot"]["changes"]:
                        value = change.get("value") or {}
                        if change["type"] != "added" or "w" not in value:
                            continue
                        for sub in params["subs"]:
                            if value["w"] > seen.get(sub, -1):
                                if sub in seen and value["w"] >= since:
                                    latencies.append(now - value["t"])
                                seen[sub] = value["w"]
                    for sub in params["subs"]:
                        seen.setdefault(sub, -1)  # its first snapshot arrived
        except ConnectionClosed:
            pass

    total, per = spec["listeners"], LISTENERS_PER_CONNECTION
    connections = [await connect(base, min(per, total + 1 - base)) for base in range(1, total + 1, per)]  # ids from 1
    readers = [asyncio.create_task(read(ws, session)) for ws, session in connections]
    deadline = time.monotonic() + 60
    while len(seen) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    print(f"ready {len(seen)}", flush=True)
    line = (await asyncio.to_thread(sys.stdin.readline)).split()
    upto, timeout = int(line[1]), float(line[2])
    deadline = time.monotonic() + timeout
    while any(value < upto for value in seen.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    print(json.dumps({"lat": latencies, "missing": sum(value < upto for value in seen.values())}), flush=True)
    for task in readers:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws, _ in connections), return_exceptions=True)


# The parent


class Server:
    """One `python -m server` process; its start-up time (launch to its endpoint line) and RSS."""

    def __init__(self, config: Path, name: str):
        from procs import Proc, server_command

        self.name, self.config = name, config
        started = time.perf_counter()
        self.proc = Proc(server_command("--config", str(config), "--port", "0", "--log-level", "warning"),
                         config.parent, env={"PYTHONPATH": str(ROOT)})
        self.url = self.proc.endpoint(300)
        self.start_seconds = time.perf_counter() - started
        time.sleep(0.5)  # let it settle before reading its RSS
        self.rss = rss(self.proc.pid)

    def close(self) -> None:
        self.proc.cleanup()


def write_config(folder: Path, bucket: str, keys: dict[str, Any] | None = None) -> Path:
    from server.config import create_config

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "montybase.json"
    config = keys or create_config(path)
    config = {**config, "storageBucket": bucket,
              "limits": {**config.get("limits", {}), "maxConnectionsPerAddress": 256}}
    path.write_text(json.dumps(config))
    return path


def fill(url: str, docs: int) -> None:
    from server.postgres import import_state

    import_state(url, {("items",): {f"i{n:07d}": item(n) for n in range(docs)}}, 0, lambda _: None)


def rates(targets: dict[str, tuple[list[str], Path | None]], pg_url: str, options: argparse.Namespace,
          note: Any) -> dict[tuple[str, str, int], dict[str, Any]]:
    """(op, column, clients) -> {"rate", "p50"}; the columns' cells interleaved, op by op."""
    cells: dict[tuple[str, str, int], dict[str, Any]] = {}
    seeds = iter(range(1, 1_000_000))
    for op in ("add", "get"):
        for clients in CLIENT_COUNTS:
            for column, (urls, config) in targets.items():
                kind, spread = (f"pg-{op}", [pg_url]) if config is None else (op, urls)
                specs = [{"kind": kind, "url": spread[i % len(spread)], "config": str(config),
                          "docs": options.docs, "seed": next(seeds), "seconds": options.seconds,
                          "count": 200_000} for i in range(clients)]
                cells[op, column, clients] = run_clients(specs, options.seconds + 120)
                note(f"{op} {column} {clients} clients: {cells[op, column, clients]['rate']:,.0f}/s")
    return cells


def callback_latency(nodes: list[Server], options: argparse.Namespace, note: Any) -> dict[str, Any]:
    """A writer on node 1; `options.subscribers` listeners spread over the 3 nodes."""
    from python_client import Montybase, doc

    writes = 30 if options.quick else 100
    shares = [options.subscribers // 3 + (i < options.subscribers % 3) for i in range(3)]
    listeners = [subprocess.Popen([sys.executable, __file__, "--listen",
                                   json.dumps({"url": node.url, "config": str(node.config), "listeners": share, "since": 3})],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
                 for node, share in zip(nodes, shares)]
    writer = Montybase(api=nodes[0].url, config=nodes[0].config)
    try:
        ready = [int(proc.stdout.readline().split()[1]) for proc in listeners]
        pulse = doc(writer, "pulse")
        for number in range(writes + 3):  # spaced so that one write is delivered before the next
            pulse.add({"score": 10**9 + number, "t": time.time(), "w": number})
            time.sleep(0.1)
        answers = []
        for proc in listeners:
            proc.stdin.write(f"wait {writes + 2} 60\n")
            proc.stdin.flush()
        for proc in listeners:
            answers.append(json.loads(proc.communicate(timeout=120)[0].strip().splitlines()[-1]))
    finally:
        writer.close()
        for proc in listeners:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    same = [x * 1000 for x in answers[0]["lat"]]
    other = [x * 1000 for answer in answers[1:] for x in answer["lat"]]
    note(f"callbacks: {sum(ready)} listeners ready")
    return {"same": same, "other": other, "missing": sum(a["missing"] for a in answers), "ready": sum(ready),
            "writes": writes}


def visibility(nodes: list[Server], options: argparse.Namespace) -> dict[str, Any]:
    """A write acknowledged on node 1, then gets on node 2 until they see it: the delay."""
    from python_client import Montybase, doc

    samples = 50 if options.quick else 300
    writer = Montybase(api=nodes[0].url, config=nodes[0].config)
    reader = Montybase(api=nodes[1].url, config=nodes[1].config)
    delays, at_once, unseen = [], 0, 0
    try:
        written, read = doc(writer, "seen", "v"), doc(reader, "seen", "v")
        written.set({"n": -1})
        time.sleep(0.2)
        for n in range(samples):
            written.set({"n": n})
            acknowledged = time.perf_counter()
            gets = 0
            while time.perf_counter() - acknowledged < 2.0:
                gets += 1
                value = read.get()
                if value and value["n"] == n:
                    delays.append((time.perf_counter() - acknowledged) * 1000)
                    at_once += gets == 1
                    break
            else:
                unseen += 1
            time.sleep(0.02)
    finally:
        writer.close()
        reader.close()
    return {"delays": delays, "at_once": at_once, "unseen": unseen, "samples": samples}


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms" if value >= 1 else f"{value:.2f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run: 10,000 documents, 1.5 s per cell")
    parser.add_argument("--docs", type=int, help="documents in the database (default 100,000; --quick 10,000)")
    parser.add_argument("--seconds", type=float, help="seconds per round-trip cell (default 5; --quick 1.5)")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--listen", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker:
        worker(json.loads(options.worker))
        return 0
    if options.listen:
        asyncio.run(listen(json.loads(options.listen)))
        return 0
    options.docs = options.docs or (10_000 if options.quick else 100_000)
    options.seconds = options.seconds or (1.5 if options.quick else 5.0)

    from pg import Postgres

    began = time.monotonic()

    def note(text: str) -> None:
        print(f"  [{time.monotonic() - began:6.1f} s] {text}", file=sys.stderr, flush=True)

    postgres = Postgres()
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="montybase-nodes-") as folder:
        root = Path(folder)
        try:
            import psycopg

            url, empty_url = postgres.create_database(), postgres.create_database()
            fill(url, options.docs)
            with psycopg.connect(url, autocommit=True) as connection:
                connection.execute("CREATE TABLE bare_inserts (id text PRIMARY KEY, value text NOT NULL)")
            note(f"PostgreSQL on port {postgres.port}, {options.docs:,} documents")

            # the file-storage server holds the same documents, migrated out of PostgreSQL
            file_config = write_config(root / "file", "db.json")
            subprocess.run([sys.executable, "-m", "server", "migrate", "--from", url, "--to", "db.json"],
                           cwd=root / "file", check=True, capture_output=True, timeout=600,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})

            empty_node = Server(write_config(root / "empty", empty_url), "empty node")
            empty_node.close()
            empty_file = Server(write_config(root / "empty-file", "db.json"), "empty file server")
            empty_file.close()
            single = Server(file_config, "file server")
            servers.append(single)
            node_config = write_config(root / "nodes", url)
            nodes = []
            for _ in range(3):  # one at a time: each writes client-config.json at start
                nodes.append(Server(node_config, "node"))
                servers.append(nodes[-1])
            note(f"servers up: file {single.start_seconds:.2f} s, nodes "
                 + ", ".join(f"{node.start_seconds:.2f} s" for node in nodes))

            targets = {"file": ([single.url], file_config), "1 node": ([nodes[0].url], node_config),
                       "3 nodes": ([n.url for n in nodes], node_config), "pg": ([], None)}
            cells = rates(targets, url, options, note)
            callbacks = callback_latency(nodes, options, note)
            visible = visibility(nodes, options)
            note("done")
        finally:
            for server in servers:
                server.close()
            postgres.close()

    per_doc_node = (statistics.median(n.rss for n in nodes) - empty_node.rss) / options.docs
    per_doc_file = (single.rss - empty_file.rss) / options.docs
    print(f"\nMontybase nodes on one PostgreSQL ({options.docs:,} documents; psycopg {psycopg.__version__}; "
          f"{os.cpu_count()} cores{'; --quick' if options.quick else ''}). Clients use the admin key, "
          "each client a process of its own.\n")
    print("| round trips, ops/s (p50 per call) | file server | 1 node | 3 nodes | bare PostgreSQL |")
    print("|---|---|---|---|---|")
    names = {"add": "add (bare: INSERT + COMMIT)", "get": "get by id (bare: SELECT by key)"}
    for op in ("add", "get"):
        for clients in CLIENT_COUNTS:
            row = [f"{fmt_rate(cells[op, column, clients]['rate'])} ({fmt_ms(cells[op, column, clients]['p50'] * 1000)})"
                   for column in ("file", "1 node", "3 nodes", "pg")]
            print(f"| {names[op]}, {clients} client{'s' if clients > 1 else ''} | " + " | ".join(row) + " |")
    print()
    other, same = callbacks["other"], callbacks["same"]
    delays = visible["delays"]
    print("| nodes | measured | target |")
    print("|---|---|---|")
    for clients in CLIENT_COUNTS:
        share = cells["add", "1 node", clients]["rate"] / cells["add", "pg", clients]["rate"]
        share3 = cells["add", "3 nodes", clients]["rate"] / cells["add", "pg", clients]["rate"]
        print(f"| add through nodes / bare insert loop, {clients} client{'s' if clients > 1 else ''} | "
              f"1 node {share:.2f}×, 3 nodes {share3:.2f}× | ≥ 0.5× |")
    print(f"| write on node 1 → callback on nodes 2, 3 ({callbacks['ready']:,} subscribers over 3 nodes, "
          f"{callbacks['writes']} writes) p50 / p99 | {fmt_ms(percentile(other, 0.5))} / {fmt_ms(percentile(other, 0.99))} "
          f"| p99 < 100 ms |")
    print(f"| same, callback on node 1 (the writer's node) p50 / p99 | {fmt_ms(percentile(same, 0.5))} / "
          f"{fmt_ms(percentile(same, 0.99))} | |")
    print(f"| listeners that missed a write | {callbacks['missing']} | 0 |")
    print(f"| write acknowledged on node 1 → visible to a get on node 2, p50 / p99 / max ({len(delays)} writes; "
          f"{visible['at_once']} seen by the first get, {sum(d > 50 for d in delays)} after 50 ms, "
          f"{visible['unseen']} not within 2 s) | {fmt_ms(percentile(delays, 0.5))} / {fmt_ms(percentile(delays, 0.99))} / "
          f"{fmt_ms(max(delays, default=None))} | p99 < 50 ms |")
    print(f"| start-up at {options.docs:,} documents: node (median of 3) / file server | "
          f"{statistics.median(n.start_seconds for n in nodes):.2f} s / {single.start_seconds:.2f} s | |")
    print(f"| start-up empty: node / file server | {empty_node.start_seconds:.2f} s / {empty_file.start_seconds:.2f} s | |")
    print(f"| RSS at {options.docs:,} documents: node / file server | {statistics.median(n.rss for n in nodes) / 2**20:.0f} MiB / "
          f"{single.rss / 2**20:.0f} MiB | |")
    print(f"| RSS per document: node / file server | {per_doc_node:.0f} B / {per_doc_file:.0f} B | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
