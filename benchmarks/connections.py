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
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(ROOT))

import websockets  # noqa: E402

from server.channel import ClientHandshake  # noqa: E402
from server.config import create_config  # noqa: E402


def start_server(folder: Path, count: int) -> tuple[subprocess.Popen, str]:
    config = create_config(folder / "montybase.json")
    config["limits"] = {"maxConnections": count + 10, "maxConnectionsPerAddress": count + 10,
                        "maxUnauthenticated": 200, "maxUnauthenticatedPerAddress": 200}
    config["rules"] = {"scores": {"read": "public", "write": "public"}}
    (folder / "montybase.json").write_text(json.dumps(config), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "server", "--config", str(folder / "montybase.json"), "--port", "0",
                             "--log-level", "warning"],
                            cwd=folder, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("endpoint: "):
            return proc, line.split(" ", 1)[1].strip()
    proc.kill()
    raise RuntimeError("the server did not start")


def rss(pid: int) -> int:
    """Resident bytes of process `pid` (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


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
    ws = await websockets.connect(url, max_size=16 * 1024 * 1024, open_timeout=60)
    handshake = ClientHandshake("client", key)
    for method, params in (("hello", handshake.hello()), ("auth", None)):
        if method == "auth":
            params, session = handshake.finish(result)
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 0, "method": method, "params": params}))
        answer = json.loads(await ws.recv())
        if "error" in answer:
            raise RuntimeError(answer["error"]["message"])
        result = answer["result"]
    handshake.confirm(result)
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
        proc, url = start_server(Path(folder), limit)
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
