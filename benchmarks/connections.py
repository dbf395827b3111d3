"""How many idle authenticated connections one Montybase server holds, and what each costs it:
the server's RSS as connections are opened in steps (each one through the full encrypted
handshake with the client key, then idle; with --listen, each also holds one listener on a
small query), up to a count or the open-files limit, whichever comes first.

    python benchmarks/connections.py [--max 15000] [--step 2500] [--listen]

The server runs in a process of its own on 127.0.0.1 with its connection caps raised to the
count asked for (the defaults are 1,000 connections and 64 per address). The connecting side is
one asyncio process, and holds one socket per connection: both processes need open files for
all of them (the server raises its soft limit to the hard one at start; so does this script).
Every loop is bounded by the count and a time; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

import websockets
from raw import open_channel, rss, start_server


async def request(ws, session, request_id: int, method: str, params: dict) -> dict:
    await ws.send(session.seal(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method,
                                           "params": params}).encode()))
    while True:  # notifications may come before the answer
        message = json.loads(session.open(await ws.recv()))
        for answer in message if isinstance(message, list) else [message]:
            if answer.get("id") == request_id:
                if "error" in answer:
                    raise RuntimeError(answer["error"]["message"])
                return answer["result"]


async def connect(url: str, key: str, listen: bool) -> websockets.ClientConnection:
    ws, session = await open_channel(url, "client", key)
    if listen:
        await request(ws, session, 1, "subscribe",
                      {"sub": 1, "query": {"path": ["scores"], "where": [["score", ">", 10]], "limit": 5}})
    return ws


async def measure(url: str, key: str, pid: int, limit: int, step: int, listen: bool) -> list[tuple[int, int, float]]:
    held: list = []
    rows = [(0, rss(pid), 0.0)]
    deadline = time.monotonic() + 900
    while len(held) < limit and time.monotonic() < deadline:
        target = min(limit, len(held) + step)
        started = time.perf_counter()
        while len(held) < target:
            wave = min(100, target - len(held))  # at most 100 handshakes at a time (the server's cap is 200)
            held.extend(await asyncio.gather(*(connect(url, key, listen) for _ in range(wave))))
        seconds = time.perf_counter() - started
        await asyncio.sleep(1.0)  # let the server settle before reading its RSS
        rows.append((len(held), rss(pid), seconds))
        print(f"  {len(held):>6,} connections: server RSS {rows[-1][1] / 2**20:,.0f} MiB", flush=True)
    await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=15_000, help="connections at most (default 15,000)")
    parser.add_argument("--step", type=int, default=2_500)
    parser.add_argument("--listen", action="store_true", help="each connection also holds one listener")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limit = min(args.max, hard - 200)  # sockets, plus what both processes have open besides
    with tempfile.TemporaryDirectory() as folder:
        limits = {"maxConnections": limit + 10, "maxConnectionsPerAddress": limit + 10,
                  "maxUnauthenticated": 200, "maxUnauthenticatedPerAddress": 200}
        proc, url = start_server(Path(folder), limits=limits, rules={"scores": {"read": "public", "write": "public"}})
        key = json.loads((Path(folder) / "montybase.json").read_text())["apiKey"]
        try:
            rows = asyncio.run(measure(url, key, proc.pid, limit, args.step, args.listen))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    base = rows[0][1]
    what = "idle authenticated connections, one listener each" if args.listen else "idle authenticated connections"
    print(f"\n{what} (open-files limit {hard:,}):")
    print("| connections | server RSS | per connection | handshakes/s |\n|---|---|---|---|")
    for (previous, _, _), (count, size, seconds) in zip(rows, rows[1:]):
        rate = (count - previous) / seconds if seconds else 0
        print(f"| {count:,} | {size / 2**20:,.0f} MiB | {(size - base) / count / 1024:,.1f} KiB | {rate:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
