"""What several benchmarks share: a server process of their own, its RSS, and a connection that
goes through the MBSC1 handshake by hand (asyncio, no client library), for many connections from
one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import websockets

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(ROOT))

from server.channel import ClientHandshake, Records  # noqa: E402
from server.config import create_config  # noqa: E402


def start_server(folder: Path, **settings: Any) -> tuple[subprocess.Popen, str]:
    """A `python -m server` in `folder` with a new montybase.json (plus `settings`) on a free port
    of 127.0.0.1: the process and its endpoint."""
    config = create_config(folder / "montybase.json")
    config.update(settings)
    (folder / "montybase.json").write_text(json.dumps(config), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "server", "--config", str(folder / "montybase.json"), "--port", "0",
                             "--log-level", "warning"],
                            cwd=folder, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
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


async def open_channel(url: str, kid: str, key: str, server_key: str | None = None) -> tuple[Any, Records]:
    """An authenticated connection: the websocket and its records (seal what you send, open what
    comes)."""
    ws = await websockets.connect(url, max_size=16 * 1024 * 1024, open_timeout=60)
    handshake = ClientHandshake(kid, key, server_key)
    result: Any = None
    for method in ("hello", "auth"):
        if method == "hello":
            params = handshake.hello()
        else:
            params, session = handshake.finish(result)
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 0, "method": method, "params": params}))
        answer = json.loads(await ws.recv())
        if "error" in answer:
            raise RuntimeError(answer["error"]["message"])
        result = answer["result"]
    handshake.confirm(result)
    return ws, session
