"""Montybase over the network, each section beside its limit: remote round trips, listeners, rules.

bench.py runs these sections after its engine table (`--sections remote listeners rules`). This
file is also the entry point of the child processes they use:

    network.py --serve SPEC FOLDER    a server (Montybase, or a bare websockets JSON echo server)
    network.py --load                 a load client: opens connections, runs timed rounds on request
    network.py --listen               subscribers: listeners of one top-10 query, timing each callback

Every server runs in a process of its own on 127.0.0.1 (port 0), and the clients that load it run
in other processes, so no client's GIL slows a server. As in bench.py the parent only
coordinates (one JSON line per request and per answer), rounds of the systems compared are
interleaved, every figure is the best of its rounds, and every loop is bounded by a count and a
time. Nothing here asserts a timing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import shutil
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(ROOT))

SCORE_RANGE = 1_000_000
FILL = 10_000  # documents in "scores" before a remote or rules server takes requests
LISTEN_FILL = 1_000
CLIENTS = 16  # concurrent clients
WINDOW = 32  # requests in flight on one connection when pipelining
MAX_OPS = 200_000  # per thread and round (the time bound comes first on any real machine)
ORIGINAL_RPS = 400  # what the original Montybase served, requests per second
ANSWER_TIMEOUT = 120  # seconds a child may take to answer one request
LISTEN_PROCS = 4  # subscriber processes (the connections are spread over them)
TOP10 = {"path": ["scores"], "orderBy": [["score", "desc"]], "limit": 10}

# The highscores rules of README.md "Securing a public app", without the rate limit
HIGHSCORES_RULES: dict[str, Any] = {
    "scores": {
        "read": "public",
        "create": "public",
        "schema": {
            "type": "object", "additionalProperties": False, "required": ["name", "score"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 32},
                "score": {"type": "integer", "minimum": 0, "maximum": 1000000000},
            },
        },
        "maxDocBytes": 512,
    },
    "profiles": {
        "read": "public", "write": "owner", "owner": "$id", "immutable": ["joined"],
        "serverFields": {"joined": "now"},
    },
}


# Helpers shared by the parent and the children


def percentile(ordered: Sequence[float], q: float) -> float | None:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def request(op: str, request_id: int, rng: random.Random) -> dict[str, Any]:
    """The JSON-RPC request the Python client sends for `op` (also what the echo server gets)."""
    if op == "get":
        return {"jsonrpc": "2.0", "id": request_id, "method": "get", "params": {"path": ["scores", f"p{rng.randrange(FILL)}"]}}
    if op == "add":
        return {"jsonrpc": "2.0", "id": request_id, "method": "add",
                "params": {"path": ["scores"], "value": {"name": "new", "score": rng.randrange(SCORE_RANGE)}}}
    if op == "query":
        return {"jsonrpc": "2.0", "id": request_id, "method": "query", "params": {"query": TOP10}}
    raise ValueError(f"unknown op {op!r}")


def encode(message: Any) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def ws_connect(url: str) -> Any:
    """The websockets sync client, with the options the Montybase client uses."""
    from websockets.sync.client import connect

    return connect(url, compression=None, proxy=None, max_size=16 * 1024 * 1024, user_agent_header=None,
                   open_timeout=30, legacy=True)


def serve_child(answer: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
    """A child's loop: a JSON request per stdin line, a JSON answer per stdout line."""
    channel, sys.stdout = sys.stdout, sys.stderr  # the answers alone go to stdout

    def reply(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    reply({"ready": True})
    for line in sys.stdin:
        request_ = json.loads(line)
        if request_.get("do") == "quit":
            break
        try:
            reply(answer(request_) or {})
        except Exception as exc:  # reported to the parent, which marks the cell "err"
            reply({"error": f"{type(exc).__name__}: {exc}"})


# Servers (child role --serve)


def serve_role(spec: dict[str, Any], folder: Path) -> None:
    """Run one server until SIGTERM; print {"url", ...} once it listens."""
    profiler = None
    if spec.get("profile"):  # the serving only (not the fill), the event loop's thread only
        import cProfile

        profiler = cProfile.Profile()
    try:
        if spec["kind"] == "echo":
            if profiler is not None:
                profiler.enable()
            asyncio.run(echo_server())
        else:
            serve_montybase(spec, folder, profiler)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(spec["profile"])


def ready(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def echo_server() -> None:
    """The transport limit: a websockets asyncio server that decodes each JSON message and sends
    it back encoded (no crypto, no rules, no database), with the Montybase server's options."""
    from websockets.asyncio.server import serve

    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(encode(json.loads(message)))

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with serve(echo, "127.0.0.1", 0, compression=None, server_header=None, max_queue=8) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        ready({"url": f"ws://{host}:{port}"})
        await stop.wait()


def serve_montybase(spec: dict[str, Any], folder: Path, profiler: Any = None) -> None:
    """A Montybase server as `montybase --config ...` runs one (server.cli.serve), over a fresh
    montybase.json (file storage in `folder`) with the spec's rules, limits and hot flag, and
    `fill` leaderboard documents scores/p0... written before it listens."""
    from server.cli import serve
    from server.config import create_config, load_config, open_database, storage_path

    path = folder / "montybase.json"
    config = create_config(path)
    if "rules" in spec:
        config["rules"] = spec["rules"]
    if spec.get("limits"):
        config["limits"] = spec["limits"]
    config["hot"] = bool(spec.get("hot"))
    path.write_text(json.dumps(config, indent=2) + "\n")
    config, _ = load_config(path)
    database = open_database(config, storage_path(config, path))
    rng = random.Random(1)
    for start in range(0, spec.get("fill", 0), 500):
        database.commit([
            {"op": "set", "path": ["scores", f"p{i}"], "value": {"name": f"player{i}", "score": rng.randrange(SCORE_RANGE)}}
            for i in range(start, min(start + 500, spec["fill"]))
        ])
    announce = {"admin": str(path), "client": str(folder / "client-config.json")}
    if profiler is not None:
        profiler.enable()
    asyncio.run(serve(database, config, path, "127.0.0.1", 0, ready=lambda url: ready({"url": url, **announce})))


# Load clients (child role --load)


class RawChannel:
    """A hand-driven Montybase connection (as tests/test_transport.py's Raw): the handshake,
    then sealed requests sent back to back, so many are in flight on one connection."""

    def __init__(self, url: str, config_path: str):
        from server.channel import ClientHandshake
        from server.config import public_key

        config = json.loads(Path(config_path).read_text())
        if config.get("adminKey"):
            kid, key, server_key = "admin", config["adminKey"], public_key(config["serverKey"])
        else:
            kid, key, server_key = "client", config["apiKey"], config.get("serverKey")
        self.ws = ws_connect(url)
        handshake = ClientHandshake(kid, key, server_key)
        auth, self.session = handshake.finish(self._step("hello", handshake.hello()))
        handshake.confirm(self._step("auth", auth))

    def _step(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.ws.send(encode({"jsonrpc": "2.0", "id": 0, "method": method, "params": params}))
        answer = json.loads(self.ws.recv(timeout=30))
        if "error" in answer:
            raise RuntimeError(answer["error"].get("message"))
        return answer["result"]

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(self.session.seal(encode(message).encode()))

    def recv(self) -> dict[str, Any]:
        answer = json.loads(self.session.open(self.ws.recv(timeout=30)))
        if "error" in answer:
            raise RuntimeError(answer["error"].get("message"))
        return answer

    def close(self) -> None:
        self.ws.close()


class RawEcho:
    """The same, to the echo server: plain text frames."""

    def __init__(self, url: str):
        self.ws = ws_connect(url)

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(encode(message))

    def recv(self) -> dict[str, Any]:
        return json.loads(self.ws.recv(timeout=30))

    def close(self) -> None:
        self.ws.close()


class Target:
    """Connections to one server, used by `threads` threads (thread i uses connection i mod n).

    kind "client": Montybase(api=url, config=...) handles; "echo": websockets sync connections;
    "raw" / "raw-echo": hand-driven connections with `window` requests in flight (sent back to
    back, then their answers read, in order; window 1 is one request at a time)."""

    def __init__(self, kind: str, url: str, config: str | None = None, handles: int = 1, threads: int = 1,
                 window: int = WINDOW):
        self.kind, self.threads, self.window = kind, threads, window
        if kind == "client":
            from python_client import Montybase

            self.conns: list[Any] = [Montybase(api=url, config=config) for _ in range(handles)]
        elif kind == "echo":
            self.conns = [RawEcho(url) for _ in range(handles)]
        elif kind == "raw":
            self.conns = [RawChannel(url, config) for _ in range(handles)]
        elif kind == "raw-echo":
            self.conns = [RawEcho(url) for _ in range(handles)]
        else:
            raise ValueError(f"unknown kind {kind!r}")
        rng = random.Random(0)
        for conn in self.conns:  # connected (the client connects on its first call) and warm
            step = self.operation(conn, "get", rng)
            for _ in range(10 if window == 1 else 2):
                step()

    def operation(self, conn: Any, op: str, rng: random.Random) -> Callable[[], list[float] | None]:
        """One step of the workload: a call (returns None; its caller times it) or, hand-driven,
        a window of requests (returns their latencies)."""
        if self.kind == "client":
            from python_client import doc

            db = conn
            def get() -> None:
                doc(db, "scores", f"p{rng.randrange(FILL)}").get()

            def add() -> None:
                doc(db, "scores").add({"name": "new", "score": rng.randrange(SCORE_RANGE)})

            def query() -> None:
                doc(db, "scores").order_by("score", "desc").limit(10).stream()

            return {"get": get, "add": add, "query": query}[op]
        ids = itertools.count(1)
        if self.kind == "echo":
            def call() -> None:
                conn.send(request(op, next(ids), rng))
                conn.recv()

            return call

        def window() -> list[float]:
            perf = time.perf_counter
            sent = []
            for _ in range(self.window):
                message = request(op, next(ids), rng)
                sent.append(perf())
                conn.send(message)
            latencies = []
            for started in sent:
                conn.recv()
                latencies.append(perf() - started)
            return latencies

        return window

    def run(self, op: str, start: float, seconds: float) -> dict[str, Any]:
        """Every thread runs `op` from wall-clock `start` until `start + seconds` (time.time(),
        shared by all processes) or MAX_OPS: wall-clock span, latencies in ms."""
        results: list[dict[str, Any]] = [{} for _ in range(self.threads)]

        def work(i: int) -> None:
            try:
                rng = random.Random(1000 * i + int(start * 1000) % 1000)
                step = self.operation(self.conns[i % len(self.conns)], op, rng)
                latencies: list[float] = []
                perf = time.perf_counter
                delay = start - time.time()
                if delay > 0:
                    time.sleep(delay)
                began = time.time()
                end = perf() + (start + seconds - began)
                while len(latencies) < MAX_OPS:
                    started = perf()
                    if started >= end:
                        break
                    window = step()
                    if window is None:
                        latencies.append(perf() - started)
                    else:
                        latencies.extend(window)
                results[i] = {"began": began, "ended": time.time(), "lat": [round(x * 1000, 4) for x in latencies]}
            except Exception as exc:
                results[i] = {"error": f"{type(exc).__name__}: {exc}"}

        workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(self.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(seconds + 60)
        errors = [r["error"] for r in results if "error" in r] + ["a thread did not finish" for r in results if not r]
        if errors:
            return {"error": errors[0]}
        return {
            "began": min(r["began"] for r in results),
            "ended": max(r["ended"] for r in results),
            "lat": [x for r in results for x in r["lat"]],
        }

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


def load_role() -> None:
    targets: dict[str, Target] = {}

    def answer(request_: dict[str, Any]) -> dict[str, Any] | None:
        action = request_["do"]
        if action == "open":
            if request_["key"] not in targets:
                targets[request_["key"]] = Target(**request_["spec"])
            return None
        if action == "run":
            return targets[request_["key"]].run(request_["op"], request_["start"], request_["seconds"])
        if action == "close":
            for key in [key for key in targets if key.startswith(request_["prefix"])]:
                targets.pop(key).close()
            return None
        raise ValueError(f"unknown request {action!r}")

    serve_child(answer)
    for target in targets.values():
        target.close()


# Subscribers (child role --listen)


class Subscriber:
    """One listener of the top-10 query: the latency of every write it sees enter, measured as
    time.time() at the callback minus the "t" the writer put in the document before sending it."""

    def __init__(self, since: int):
        self.since = since
        self.started = False
        self.last = -1  # the highest write number seen
        self.resyncs = 0  # full snapshots after the first (a reconnect): not timed
        self.latencies: list[float] = []

    def __call__(self, snapshot: Any) -> None:
        now = time.time()
        resync = self.started and len(snapshot.changes) > 2  # one write: one added, one removed
        self.resyncs += resync
        first, self.started = not self.started, True
        for change in snapshot.changes:
            value = change["value"]
            if change["type"] == "added" and "w" in value and value["w"] > self.last:
                self.last = value["w"]
                if not first and not resync and value["w"] >= self.since:
                    self.latencies.append(now - value["t"])


class RawSubscribers:
    """Hand-driven listeners, no python_client: one connection subscribed `per` times, whose
    frames a thread of its own receives, opens and hands to a Subscriber per listener."""

    def __init__(self, url: str, config: str, per: int, since: int):
        from types import SimpleNamespace

        self.wrap = SimpleNamespace
        self.channel = RawChannel(url, config)
        self.subscribers = [Subscriber(since) for _ in range(per)]
        self.error: str | None = None
        for chosen in range(1, per + 1):
            self.channel.send({"jsonrpc": "2.0", "id": chosen, "method": "subscribe", "params": {"sub": chosen, "query": TOP10}})
        threading.Thread(target=self._read, name="raw-subscriber", daemon=True).start()

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        channel = self.channel
        try:
            while True:
                message = json.loads(channel.session.open(channel.ws.recv()))
                for item in message if isinstance(message, list) else [message]:
                    if item.get("method") == "snapshot":
                        params = item["params"]
                        for chosen in params["subs"]:
                            self.subscribers[chosen - 1](self.wrap(changes=params["snapshot"]["changes"]))
                    elif "error" in item:
                        self.error = str(item["error"].get("message"))
        except (ConnectionClosed, OSError):
            pass

    def close(self) -> None:
        self.channel.close()


def listen_role() -> None:
    from python_client import Montybase, doc

    handles: list[Any] = []
    subscribers: list[Subscriber] = []

    def answer(request_: dict[str, Any]) -> dict[str, Any] | None:
        action = request_["do"]
        if action == "subscribe" and request_.get("raw"):
            for _ in range(request_["connections"]):
                raw = RawSubscribers(request_["url"], request_["config"], request_["per"], request_["since"])
                handles.append(raw)
                subscribers.extend(raw.subscribers)
            deadline = time.monotonic() + 60
            while not all(s.started for s in subscribers) and time.monotonic() < deadline:
                time.sleep(0.005)
            return {"listeners": len(subscribers)}
        if action == "subscribe":
            for _ in range(request_["connections"]):
                db = Montybase(api=request_["url"], config=request_["config"])
                handles.append(db)
                for _ in range(request_["per"]):
                    subscriber = Subscriber(request_["since"])
                    subscribers.append(subscriber)
                    doc(db, "scores").order_by("score", "desc").limit(10).on_snapshot(subscriber)
            deadline = time.monotonic() + 60
            while not all(s.started for s in subscribers) and time.monotonic() < deadline:
                time.sleep(0.005)
            return {"listeners": len(subscribers)}
        if action == "wait":  # until every listener has seen write `upto` (or the timeout)
            deadline = time.monotonic() + request_["timeout"]
            while any(s.last < request_["upto"] for s in subscribers) and time.monotonic() < deadline:
                time.sleep(0.002)
            return {
                "done": time.time(),
                "missing": sum(s.last < request_["upto"] for s in subscribers),
                "resyncs": sum(s.resyncs for s in subscribers),
                "lat": [round(x * 1000, 3) for s in subscribers for x in s.latencies],
            }
        if action == "unsubscribe":  # closing a connection ends its listeners on the server
            for db in handles:
                db.close()
            handles.clear()
            subscribers.clear()
            return None
        raise ValueError(f"unknown request {action!r}")

    serve_child(answer)


# The parent: child processes, rounds, tables


class ChildError(RuntimeError):
    pass


FAILURES: list[str] = []  # cells that could not be measured (shown as "err")


class Child:
    """A child process of this file, driven by one JSON line per request and per answer."""

    started: list[Child] = []  # every child not yet stopped, so a failure anywhere ends them all

    def __init__(self, name: str, args: list[str], logs: Path):
        self.name = name
        self.log = open(logs / f"{name}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT,
        )
        Child.started.append(self)

    def send(self, **message: Any) -> None:
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise ChildError(f"{self.name}: {exc}; {self._last_log()}") from None

    def read(self, timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            self.proc.kill()  # out of step from here on: it answers nothing more
            raise ChildError(f"{self.name}: no answer within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise ChildError(f"{self.name} exited: {self._last_log()}")
        answer = json.loads(line)
        if "error" in answer:
            raise ChildError(f"{self.name}: {answer['error']}")
        return answer

    def ask(self, **message: Any) -> dict[str, Any]:
        self.send(**message)
        return self.read()

    def _last_log(self) -> str:
        self.log.flush()
        self.log.seek(0)
        lines = self.log.read().strip().splitlines()
        return lines[-1] if lines else f"exit {self.proc.poll()}"

    def stop(self, terminate: bool = False) -> None:
        """Quit (a server: SIGTERM, which snapshots and stops it); kill it if it lingers."""
        if self not in Child.started:
            return
        Child.started.remove(self)
        if self.proc.poll() is None:
            try:
                if terminate:
                    self.proc.send_signal(signal.SIGTERM)
                else:
                    self.proc.stdin.write(json.dumps({"do": "quit"}) + "\n")
                    self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def ask_all(children: Sequence[Child], **message: Any) -> list[dict[str, Any]]:
    """The same request to several children at once; their answers (every answer is read
    before an error is raised, so each child stays in step)."""
    for child in children:
        child.send(**message)
    answers, failure = [], None
    for child in children:
        try:
            answers.append(child.read())
        except ChildError as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
    return answers


class Server(Child):
    def __init__(self, name: str, spec: dict[str, Any], root: Path, profile: Path | None):
        folder = root / name
        folder.mkdir(parents=True)
        if profile is not None:
            spec = {**spec, "profile": str(profile / f"{name}.prof")}
        super().__init__(name, ["--serve", json.dumps(spec), str(folder)], root)
        info = self.read()
        self.url, self.admin, self.client = info["url"], info.get("admin"), info.get("client")

    def stop(self, terminate: bool = True) -> None:
        super().stop(terminate=True)


class Stats:
    """One cell: the best of its rounds, each figure on its own (timeit's rule)."""

    def __init__(self) -> None:
        self.ops: float | None = None
        self.p50: float | None = None
        self.p99: float | None = None
        self.n = 0
        self.error: str | None = None
        self.cpu_server = self.cpu_clients = 0.0  # CPU seconds over all rounds (Linux), for self.n requests

    def add(self, ops: float, ordered: Sequence[float]) -> None:
        self.n += len(ordered)
        p50, p99 = percentile(ordered, 0.5), percentile(ordered, 0.99)
        self.ops = ops if self.ops is None else max(self.ops, ops)
        self.p50 = p50 if self.p50 is None else min(self.p50, p50)
        self.p99 = p99 if self.p99 is None else min(self.p99, p99)


class Cell:
    """One workload: `op` run by a target (a set of connections) opened in each of `children`."""

    def __init__(self, children: Sequence[Child], server: Server, kind: str, op: str, *, admin: bool = True,
                 handles: int = 1, threads: int = 1, window: int = WINDOW):
        self.children, self.op = list(children), op
        config = (server.admin if admin else server.client) if kind in ("client", "raw") else None
        self.spec = {"kind": kind, "url": server.url, "config": config, "handles": handles, "threads": threads,
                     "window": window}
        self.key = f"{server.name}:{kind}:{'admin' if admin else 'client'}:{handles}x{threads}:{window}"
        self.stats = Stats()
        self.server_pid = server.proc.pid

    def open(self) -> None:
        ask_all(self.children, do="open", key=self.key, spec=self.spec)

    def round(self, seconds: float) -> None:
        if self.stats.error is not None:
            return
        start = time.time() + 0.02
        pids = [child.proc.pid for child in self.children]
        server_before, clients_before = cpu_seconds(self.server_pid), [cpu_seconds(pid) for pid in pids]
        try:
            answers = ask_all(self.children, do="run", key=self.key, op=self.op, start=start, seconds=seconds)
        except ChildError as exc:
            self.stats.error = str(exc)
            FAILURES.append(str(exc))
            print(f"  {self.key} {self.op}: {exc}", file=sys.stderr)
            return
        server_after, clients_after = cpu_seconds(self.server_pid), [cpu_seconds(pid) for pid in pids]
        if server_before is not None and server_after is not None and None not in clients_before + clients_after:
            self.stats.cpu_server += server_after - server_before
            self.stats.cpu_clients += sum(clients_after) - sum(clients_before)
        ordered = sorted(x for answer in answers for x in answer["lat"])
        span = max(a["ended"] for a in answers) - min(a["began"] for a in answers)
        self.stats.add(len(ordered) / span if span > 0 else 0.0, ordered)


def open_cells(cells: Sequence[Cell]) -> None:
    """Open every cell's connections (untimed, warmed up), one request per child at a time."""
    for cell in cells:
        try:
            cell.open()
        except ChildError as exc:
            cell.stats.error = str(exc)
            FAILURES.append(str(exc))
            print(f"  {cell.key}: {exc}", file=sys.stderr)


def run_rounds(cells: Sequence[Cell], rounds: int, seconds: float, note: Callable[[str], None], what: str) -> None:
    """Round 1 of every cell, then round 2, ...: load from elsewhere falls on all alike."""
    for _ in range(rounds):
        for cell in cells:
            cell.round(seconds)
    note(what)


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def triple(stats: Stats | None) -> str:
    """ops/s, p50 ms, p99 ms in 22 characters."""
    if stats is None:
        return f"{'—':>7}{'':>15}"
    if stats.error is not None:
        return f"{'err':>7}{'':>15}"
    return f"{fmt_rate(stats.ops):>7}{fmt_ms(stats.p50):>7}{fmt_ms(stats.p99):>8}"


def cpu_pair(cell: Cell | None) -> str:
    """Server and client CPU microseconds per request, in 22 characters."""
    if cell is None or not cell.stats.n or cell.stats.error:
        return f"{'—':>12}{'':>10}"
    per = 1e6 / cell.stats.n
    return f"{cell.stats.cpu_server * per:>12.0f}{cell.stats.cpu_clients * per:>10.0f}"


class Verdicts:
    """A targets block: each check PASS or MISS (n/a when a figure is missing)."""

    def __init__(self, title: str):
        print(f"\n{title}")
        self.passed = True

    def check(self, title: str, value: float | None, target: str, ok: Callable[[float], bool], unit: str = "×") -> None:
        if value is None:
            shown, verdict = "n/a", "n/a"
        else:
            shown = f"{value:.2f}{unit}" if unit == "×" else f"{value:.1f}{unit}" if unit == " ms" else f"{value:,.0f}{unit}"
            verdict = "PASS" if ok(value) else "MISS"
        self.passed &= verdict == "PASS"
        print(f"  {title:<48}{shown:>10}   target {target:<16}{verdict}")


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# Section 1: remote round trips


def node_client(server: Server, options: Options) -> dict[str, Any] | str:
    """The JS client's get round trips (benchmarks/node_client.mjs) against `server`, best of
    the rounds; a string says why there are none (no node, no `npm ci`)."""
    script = Path(__file__).resolve().parent / "node_client.mjs"
    if shutil.which("node") is None:
        return "node is not installed"
    best: dict[str, Any] | None = None
    for _ in range(options.rounds):
        try:
            done = subprocess.run(
                ["node", str(script), server.url, server.admin, "--seconds", str(options.seconds * 2)],
                capture_output=True, text=True, timeout=120,
            )
        except subprocess.TimeoutExpired:
            return "the node client took over 120 s"
        if done.returncode != 0:
            return (done.stderr.strip().splitlines() or ["failed"])[-1]
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        if best is None:
            best = figures
        else:  # the best of each figure, as for every other cell
            best = {"sequential_rps": max(best["sequential_rps"], figures["sequential_rps"]),
                    "p50_ms": min(best["p50_ms"], figures["p50_ms"]), "p99_ms": min(best["p99_ms"], figures["p99_ms"]),
                    "concurrent16_rps": max(best["concurrent16_rps"], figures["concurrent16_rps"])}
    return best if best is not None else "no rounds"


def print_node(node: dict[str, Any] | str, cells: dict[tuple[str, str], Cell], verdicts: Verdicts) -> None:
    python_seq, python_shared = cells["seq", "get"].stats, cells["shared", "get"].stats
    print(f"\n  Node client (js_client, Node {node_version()}) on the same server, get; beside the Python client:")
    if isinstance(node, str):
        print(f"    n/a: {node}")
        verdicts.check("Node / Python, 1 client sequential", None, "≥ 0.67×", lambda r: r >= 2 / 3)
        return
    print(f"    1 client, sequential          Node {fmt_rate(node['sequential_rps'])}/s "
          f"(p50 {node['p50_ms']:.2f} ms, p99 {node['p99_ms']:.2f} ms)   Python {fmt_rate(python_seq.ops)}/s "
          f"(p50 {fmt_ms(python_seq.p50).strip()} ms)")
    print(f"    {CLIENTS} in flight on 1 connection   Node {fmt_rate(node['concurrent16_rps'])}/s   "
          f"Python ({CLIENTS} threads on 1 handle) {fmt_rate(python_shared.ops)}/s")
    verdicts.check("Node / Python, 1 client sequential", ratio(node["sequential_rps"], python_seq.ops), "≥ 0.67×",
                   lambda r: r >= 2 / 3)
    verdicts.check(f"Node / Python, {CLIENTS} in flight on 1 connection", ratio(node["concurrent16_rps"], python_shared.ops),
                   "≥ 0.67×", lambda r: r >= 2 / 3)


def node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def remote_section(pool: list[Child], root: Path, options: Options, note: Callable[[str], None]) -> bool:
    profile = options.profile
    monty = Server("monty", {"kind": "montybase", "fill": FILL}, root, profile)
    hot = Server("monty-hot", {"kind": "montybase", "fill": FILL, "hot": True}, root, profile)
    echo = Server("echo", {"kind": "echo"}, root, profile)
    note("remote: servers up")
    one, clients = pool[:1], pool[:CLIENTS]  # about 50 connections to the Montybase server (the cap is 64)
    modes = {  # mode → (children, kind for Montybase, kind for echo, handles, threads, window)
        "seq": (one, "client", "echo", 1, 1, 1),
        "raw-seq": (one, "raw", None, 1, 1, 1),
        "procs": (clients, "client", "echo", 1, 1, 1),
        "raw-procs": (clients, "raw", None, 1, 1, 1),
        "threads": (one, "client", "echo", CLIENTS, CLIENTS, 1),
        "shared": (one, "client", None, 1, CLIENTS, 1),
        "pipe": (one, "raw", "raw-echo", 1, 1, WINDOW),
    }
    cells: dict[tuple[str, str], Cell] = {}
    for mode, (children, kind, echo_kind, handles, threads, window) in modes.items():
        for op in ("get", "add") if mode != "shared" else ("get",):
            cells[mode, op] = Cell(children, monty, kind, op, handles=handles, threads=threads, window=window)
        if mode in ("seq", "procs"):
            cells[mode, "add-hot"] = Cell(children, hot, kind, "add", handles=handles, threads=threads)
        if echo_kind is not None:
            cells[mode, "echo"] = Cell(children, echo, echo_kind, "get", handles=handles, threads=threads, window=window)
    try:
        open_cells(list(cells.values()))
        note("remote: connected")
        run_rounds(list(cells.values()), options.rounds, options.seconds, note, "remote")
        ask_all(pool, do="close", prefix="")
        node = node_client(monty, options)  # on the same server, now idle
        note("remote: node client done")
    finally:
        ask_all(pool, do="close", prefix="")
        for server in (monty, hot, echo):
            server.stop()

    titles = {
        "seq": "1 client, sequential",
        "raw-seq": "  hand-driven, no python_client",
        "procs": f"{CLIENTS} clients ({CLIENTS} processes)",
        "raw-procs": "  hand-driven, no python_client",
        "threads": f"{CLIENTS} clients ({CLIENTS} threads, 1 process)",
        "shared": f"{CLIENTS} threads on 1 handle",
        "pipe": f"pipelined ({WINDOW} in flight, 1 conn)",
    }
    label = 36
    print("\nRemote: the Python client against a Montybase server and a bare websockets JSON echo server (the transport limit)")
    groups = ("get", "add", "add-hot", "echo")
    heads = ("Montybase get", "Montybase add", "add, hot=True", "echo server")
    print(f"{'':<{label}}" + "".join(f"{head:>22}" for head in heads))
    print(f"{'':<{label}}" + f"{'ops/s':>7}{'p50':>7}{'p99 ms':>8}" * len(groups))
    for mode, title in titles.items():
        print(f"  {title:<{label - 2}}" + "".join(triple(cells[mode, group].stats if (mode, group) in cells else None)
                                                   for group in groups))
    if os.path.exists("/proc/self/stat"):
        print(f"{'':<{label}}" + "".join(f"{head:>22}" for head in heads))
        print(f"  {'CPU µs per request':<{label - 2}}" + f"{'server':>12}{'clients':>10}" * len(groups))
        for mode, title in titles.items():
            print(f"  {title:<{label - 2}}" + "".join(cpu_pair(cells.get((mode, group))) for group in groups))
    print(
        f"""
Servers run in processes of their own, on 127.0.0.1, with default limits; each Montybase server
holds {FILL:,} documents scores/p0... in file storage (a temp folder; default durability: journaled
before the answer, fsync once a second; "hot=True": the answer waits for the fsync, shared by
writes that arrive together). Clients use the admin key. get reads one document by id, add creates
one ({{"name", "score"}}); the echo server gets the get request as plain JSON text and sends it back
(websockets asyncio server, json.loads + json.dumps per message; no encryption, rules or database).
Clients, in processes apart from the servers and the parent:
- 1 client: one Montybase(api=...) handle (echo: one websockets sync connection), a call at a time.
  A handle drives websockets' sans-I/O protocol on its socket in the calling thread; a websockets
  sync connection (echo, hand-driven) reads in a thread of its own and hands each message over.
- {CLIENTS} processes: one such client in each of {CLIENTS} processes (no GIL shared between clients).
- hand-driven: the same, without python_client: a websockets sync connection, the server.channel
  handshake, then each request sealed, sent, and its answer received and opened in the calling
  thread (the protocol's own cost; compare with the echo server's cells in the row above).
- {CLIENTS} threads: {CLIENTS} handles (echo: connections) used by {CLIENTS} threads of one process (one GIL).
- {CLIENTS} threads on 1 handle: one Montybase handle called from {CLIENTS} threads (a caller that finds
  the connection unread reads it and hands the others their answers), so up to {CLIENTS} requests
  are in flight on one connection.
- pipelined: a hand-driven connection (server.channel handshake and records) that sends {WINDOW}
  requests back to back, then reads their {WINDOW} answers; latency is from a request's send to
  its answer being read.
Cells: requests per second (wall clock, all clients together) and latency p50 / p99 in ms, each
the best of {options.rounds} rounds of ~{options.seconds:g} s, the rounds of all cells interleaved. This machine
also runs the clients: on {os.cpu_count()} CPUs servers and clients share the cores, so a request's CPU
time on both sides (user + system, from /proc, over all rounds) bounds the throughput.
The original Montybase served about {ORIGINAL_RPS} requests/s (reference line below)."""
    )

    verdicts = Verdicts("targets (remote)")
    for op in ("get", "add"):
        verdicts.check(f"{op}: {CLIENTS} processes / echo {CLIENTS} processes",
                       ratio(cells["procs", op].stats.ops, cells["procs", "echo"].stats.ops), "≥ 0.6×", lambda r: r >= 0.6)
    for op in ("get", "add"):
        verdicts.check(f"{op}: {CLIENTS} threads / echo {CLIENTS} threads",
                       ratio(cells["threads", op].stats.ops, cells["threads", "echo"].stats.ops), "≥ 0.6×", lambda r: r >= 0.6)
    for op in ("get", "add"):
        verdicts.check(f"{op}: 1 client p50 / echo p50", ratio(cells["seq", op].stats.p50, cells["seq", "echo"].stats.p50),
                       "≤ 1.5×", lambda r: r <= 1.5)
    for op in ("get", "add"):  # what the ratio would be with the clients on other machines
        mine, echoed = cells["procs", op].stats, cells["procs", "echo"].stats
        if mine.n and echoed.n and mine.cpu_server:
            print(f"  (info) {op}: server CPU per request, echo ÷ Montybase, {CLIENTS} processes: "
                  f"{echoed.cpu_server / echoed.n / (mine.cpu_server / mine.n):.2f}× "
                  f"({mine.cpu_server / mine.n * 1e6:.0f} µs against {echoed.cpu_server / echoed.n * 1e6:.0f} µs)")
    print_node(node, cells, verdicts)
    best = max((cells[mode, "get"].stats.ops or 0 for mode in titles), default=0)
    print(f"  reference: the original Montybase served about {ORIGINAL_RPS} requests/s; "
          f"get here, best mode: {fmt_rate(best)}/s ({best / ORIGINAL_RPS:.0f}×)")
    return verdicts.passed and not any(cell.stats.error for cell in cells.values())


# Section 2: listeners


def listeners_section(root: Path, options: Options, note: Callable[[str], None]) -> bool:
    from python_client import Montybase, doc
    from server.errors import MontybaseError

    limits = {"maxConnectionsPerAddress": 256}
    server = Server("listen", {"kind": "montybase", "fill": LISTEN_FILL, "limits": limits}, root, options.profile)
    subs = [Child(f"subscribers-{i}", ["--listen"], root) for i in range(LISTEN_PROCS)]
    for child in subs:
        child.read()
    writer = Montybase(api=server.url, config=server.admin)
    scores = doc(writer, "scores")
    numbers = itertools.count(0)
    errors: list[str] = []

    def write() -> int:
        number = next(numbers)
        scores.add({"name": "w", "score": 10**9 + number, "t": time.time(), "w": number})  # always the new top score
        return number

    def subscribe(connections: int, per: int, since: int, raw: bool = False) -> list[Child]:
        """`connections` × `per` listeners, the connections spread over the subscriber processes."""
        used = subs[:min(len(subs), connections)]
        shares = [connections // len(used) + (i < connections % len(used)) for i in range(len(used))]
        for child, share in zip(used, shares):
            child.send(do="subscribe", url=server.url, config=server.admin, connections=share, per=per, since=since, raw=raw)
        for child in used:
            child.read()
        return used

    def unsubscribe(used: list[Child]) -> None:
        ask_all(used, do="unsubscribe")

    def gather(used: list[Child], upto: int, timeout: float) -> dict[str, Any]:
        answers = ask_all(used, do="wait", upto=upto, timeout=timeout)
        return {
            "lat": sorted(x for a in answers for x in a["lat"]),
            "missing": sum(a["missing"] for a in answers),
            "resyncs": sum(a["resyncs"] for a in answers),
            "done": max(a["done"] for a in answers),
        }

    # write → callback latency: writes spaced so that one is delivered before the next is sent
    plans = [  # (name, subscribers, connections, listeners per connection, gap between writes, hand-driven)
        ("1", 1, 1, 1, 0.01, False), ("100", 100, 5, 20, 0.03, False), ("1000", 1000, 50, 20, 0.1, False),
        ("1000 raw", 1000, 50, 20, 0.1, True),
    ]
    writes = {1: 100, 100: 50, 1000: 30} if not options.quick else {1: 30, 100: 15, 1000: 10}
    latency: dict[str, dict[str, Any]] = {}
    try:
        for name, count, connections, per, gap, raw in plans:
            try:
                since = next(numbers) + 3  # the first writes warm up every path
                used = subscribe(connections, per, since, raw)
                for _ in range(2):
                    write()
                    time.sleep(gap)
                next_at = time.perf_counter()
                last = since
                for _ in range(writes[count]):
                    time.sleep(max(0.0, next_at - time.perf_counter()))
                    last = write()
                    next_at += gap
                latency[name] = gather(used, last, 60)
                latency[name]["writes"] = writes[count]
                unsubscribe(used)
            except (ChildError, OSError, MontybaseError) as exc:
                errors.append(str(exc))
                FAILURES.append(str(exc))
                latency[name] = {"error": str(exc)}
            note(f"listeners: {name} subscribers")

        # the writer's throughput, flat out, with 100 subscribers and with none (rounds interleaved)
        loads = ("none", "client", "raw")  # no listeners; 100 python_client listeners; 100 hand-driven
        rates: dict[str, list[float]] = {load: [] for load in loads}
        drains: dict[str, list[float]] = {load: [] for load in loads}
        missing = resyncs = 0
        cpu: dict[str, dict[str, float]] = {load: {} for load in loads}  # CPU seconds per role, and writes
        processes = {"server": [server.proc.pid], "subscribers": [child.proc.pid for child in subs], "writer": [os.getpid()]}

        def used_cpu() -> dict[str, float]:
            return {role: sum(cpu_seconds(pid) or 0.0 for pid in pids) for role, pids in processes.items()}

        try:
            for _ in range(options.rounds):
                for count in loads:
                    used = subscribe(5, 20, next(numbers) + 1, count == "raw") if count != "none" else []
                    last, done = -1, 0
                    before = used_cpu()
                    began = time.perf_counter()
                    end = began + options.seconds * 2
                    while done < MAX_OPS and time.perf_counter() < end:
                        last = write()
                        done += 1
                    took = time.perf_counter() - began
                    stopped = time.time()
                    rates[count].append(done / took)
                    if used:
                        got = gather(used, last, 60)
                        drains[count].append(max(0.0, got["done"] - stopped))
                        missing += got["missing"]
                        resyncs += got["resyncs"]
                    after = used_cpu()  # the subscribers' share includes catching up
                    for role in processes:
                        cpu[count][role] = cpu[count].get(role, 0.0) + after[role] - before[role]
                    cpu[count]["writes"] = cpu[count].get("writes", 0) + done
                    if used:
                        unsubscribe(used)
        except (ChildError, OSError, MontybaseError) as exc:
            errors.append(str(exc))
            FAILURES.append(str(exc))
            print(f"  listeners, writer throughput: {exc}", file=sys.stderr)
        note("listeners: writer throughput")
    finally:
        writer.close()
        for child in subs:
            child.stop()
        server.stop()

    print("\nListeners: one top-10 query (order_by(\"score\", \"desc\").limit(10).on_snapshot), every write entering it")
    print(f"  {'subscribers':<22}{'connections':<22}{'writes':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'missed':>8}{'resyncs':>8}")
    for name, count, connections, per, gap, raw in plans:
        got = latency.get(name, {})
        title = f"{count:,}" + (" hand-driven" if raw else "")
        layout = f"{connections} × {per}" + (f" in {min(LISTEN_PROCS, connections)} procs" if connections > 1 else "")
        if "error" in got or not got.get("lat"):
            print(f"  {title:<22}{layout:<22}{'err':>7}")
            continue
        lat = got["lat"]
        print(f"  {title:<22}{layout:<22}{got['writes']:>7}{fmt_ms(percentile(lat, 0.5)):>9}{fmt_ms(percentile(lat, 0.99)):>9}"
              f"{fmt_ms(lat[-1]):>9}{got['missing']:>8}{got['resyncs']:>8}")
    best = {load: max(rates[load]) if rates[load] else None for load in loads}
    titles = {"none": "no listeners", "client": "100 subscribers", "raw": "100 hand-driven subscribers"}
    print(f"\n  {'writer, sequential adds':<36}{'adds/s':>8}{'caught up':>11}   CPU ms per write: "
          + ", ".join(processes))
    for load in loads:
        writes = cpu[load].get("writes") or 1
        shares = " / ".join(f"{cpu[load].get(role, 0.0) / writes * 1000:.2f}" for role in processes)
        caught = f"{max(drains[load]):.2f} s" if drains[load] else "—"
        print(f"  {'  ' + titles[load]:<36}{fmt_rate(best[load]):>8}{caught:>11}   {shares}")
    no_listeners, with_listeners = best["none"], best["client"]
    print(
        f"""
One Montybase server in its own process (file storage, {LISTEN_FILL:,} documents, admin key, limits
maxConnectionsPerAddress = {limits['maxConnectionsPerAddress']}). Subscribers: Montybase(api=...) handles, each with
`per` listeners of the same query, the handles spread over up to {LISTEN_PROCS} subscriber processes; the
writer (one handle, in the parent process) adds documents with a score above every other, so each
write enters the top 10 (and one leaves). Latency: time.time() in the callback minus time.time()
that the writer put in the document just before add() (one machine clock, shared by processes);
writes are spaced ({", ".join(f"{gap * 1000:g} ms for {count:,}" for _, count, _, _, gap, raw in plans if not raw)}) so one is delivered
before the next; the first snapshot and the first 2 writes are not timed. missed = listeners that
had not seen the last write after 60 s; resyncs = full snapshots after a reconnect (not timed).
Hand-driven subscribers (no python_client, as a lower bound for the client side): a connection
subscribed 20 times whose frames one thread receives, opens (server.channel) and json-decodes.
Writer throughput: sequential adds for ~{options.seconds * 2:g} s, best of {options.rounds} rounds, the rounds with 100
subscribers (5 connections × 20), with 100 hand-driven ones and with none interleaved; caught up =
how long after the writer stopped the last subscriber saw the last write (worst round); CPU ms per
write = user + system time of each process (/proc; subscribers include catching up), all rounds.
On {os.cpu_count()} CPUs the subscribers' processes take CPU time from the server and the writer."""
    )
    verdicts = Verdicts("targets (listeners)")
    lat = latency.get("1000", {}).get("lat")
    verdicts.check("1,000 subscribers: write → callback p99", percentile(lat, 0.99) if lat else None, "< 50 ms",
                   lambda v: v < 50, " ms")
    verdicts.check("writer with 100 subscribers / with none", ratio(with_listeners, no_listeners), "≥ 0.5×",
                   lambda r: r >= 0.5)
    return verdicts.passed and not errors


# Section 3: rules


def rules_section(pool: list[Child], root: Path, options: Options, note: Callable[[str], None]) -> bool:
    guarded = Server("rules", {"kind": "montybase", "fill": FILL, "rules": HIGHSCORES_RULES}, root, options.profile)
    open_ = Server("open", {"kind": "montybase", "fill": FILL}, root, options.profile)  # create_config's "**" rule
    note("rules: servers up")
    configs = {"guarded": (guarded, False), "open": (open_, False), "admin": (guarded, True)}
    modes = {"seq": (pool[:1], "1 client"), "procs": (pool[:CLIENTS], f"{CLIENTS} processes")}
    cells: dict[tuple[str, str, str], Cell] = {}
    for op in ("add", "get", "query"):
        for mode, (children, _) in modes.items():
            for name, (server, admin) in configs.items():
                cells[op, mode, name] = Cell(children, server, "client", op, admin=admin)
    try:
        open_cells(list(cells.values()))
        run_rounds(list(cells.values()), options.rounds, options.seconds, note, "rules")
    finally:
        ask_all(pool, do="close", prefix="")
        guarded.stop()
        open_.stop()

    label = 30
    heads = ("client key, schema rules", "client key, open rule", "admin key")
    print("\nRules: the same remote workload with the highscores rules (README \"Securing a public app\", no rate limit)")
    print(f"{'':<{label}}" + "".join(f"{head:>26}" for head in heads))
    print(f"{'':<{label}}" + f"{'ops/s':>11}{'p50':>7}{'p99 ms':>8}" * len(heads))
    for op in ("add", "get", "query"):
        for mode, (_, title) in modes.items():
            row = "".join(f"{'':>4}" + triple(cells[op, mode, name].stats) for name in configs)
            print(f"  {op + ', ' + title:<{label - 2}}{row}")
    if os.path.exists("/proc/self/stat"):
        print(f"  {'CPU µs per request':<{label - 2}}" + f"{'server':>16}{'clients':>10}" * len(heads))
        for op in ("add", "get", "query"):
            for mode, (_, title) in modes.items():
                row = "".join(f"{'':>4}" + cpu_pair(cells[op, mode, name]) for name in configs)
                print(f"  {op + ', ' + title:<{label - 2}}{row}")
    print(
        f"""
Two Montybase servers as in the remote section ({FILL:,} documents each): one with the rules
"scores" (read public, create public, a JSON Schema for {{name, score}}, maxDocBytes 512) and
"profiles", used with the client key (every call checked; every add validated against the
schema) and with the admin key (passes every rule); one with create_config's open rule
{{"**": {{"read": "public", "write": "public"}}}}, used with the client key. add creates
{{"name", "score"}}; get reads scores/pN; query is order_by("score", "desc").limit(10).stream().
Best of {options.rounds} rounds of ~{options.seconds:g} s, all cells interleaved."""
    )
    verdicts = Verdicts("targets (rules)")
    for op in ("add", "get", "query"):
        verdicts.check(f"{op}, {CLIENTS} processes: schema rules / open rule",
                       ratio(cells[op, "procs", "guarded"].stats.ops, cells[op, "procs", "open"].stats.ops), "≥ 0.8×",
                       lambda r: r >= 0.8)
    for op in ("add", "get", "query"):
        verdicts.check(f"{op}, {CLIENTS} processes: schema rules / admin key",
                       ratio(cells[op, "procs", "guarded"].stats.ops, cells[op, "procs", "admin"].stats.ops), "≥ 0.8×",
                       lambda r: r >= 0.8)
    return verdicts.passed and not any(cell.stats.error for cell in cells.values())


# Entry points


class Options:
    def __init__(self, quick: bool, profile: str | None):
        self.quick = quick
        self.rounds = 2 if quick else 5
        self.seconds = 0.15 if quick else 0.5
        self.profile = Path(profile).resolve() if profile else None
        if self.profile is not None:
            self.profile.mkdir(parents=True, exist_ok=True)


def run_network(sections: Sequence[str], quick: bool = False, profile: str | None = None) -> bool:
    """Measure and print the network sections asked for; False if anything could not be
    measured (a MISS is a result, not a failure). Raises ChildError if a server cannot start."""
    options = Options(quick, profile)
    progress = time.perf_counter()

    def note(what: str) -> None:
        nonlocal progress
        now = time.perf_counter()
        print(f"  {what}: {now - progress:.1f} s", file=sys.stderr, flush=True)
        progress = now

    with tempfile.TemporaryDirectory(prefix="montybase-net-") as tmp:
        root = Path(tmp)
        pool: list[Child] = []
        try:
            if "remote" in sections or "rules" in sections:
                pool = [Child(f"load-{i}", ["--load"], root) for i in range(CLIENTS)]
                for child in pool:
                    child.read()
                note("load clients started")
            if "remote" in sections:
                remote_section(pool, root, options, note)
            if "listeners" in sections:
                listeners_section(root, options, note)
            if "rules" in sections:
                rules_section(pool, root, options, note)
        finally:
            for child in reversed(list(Child.started)):  # the pool, and whatever a failure left running
                child.stop()
    return not FAILURES


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--serve"]:
        serve_role(json.loads(args[1]), Path(args[2]))
    elif args[:1] == ["--load"]:
        load_role()
    elif args[:1] == ["--listen"]:
        listen_role()
    else:
        print("run benchmarks/bench.py (this file holds its network sections and their child processes)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
