"""A seeded fuzzer of a served Montybase (tests/test_fuzz.py runs it briefly, benchmarks/fuzz.py at length).

`campaign()` starts `python -m server` on 127.0.0.1, port 0, with rules that keep a control
collection read-only and every writable collection bounded, writes the control documents, then:

- over client-key connections, generated and mutated JSON-RPC requests (real and unknown methods,
  wrong types, deep nesting, strings within and over the message limit, lone surrogates written
  as escapes, odd ids, batches, notifications), a window of frames in flight at a time, every
  answer read and checked (JSON, an id that was sent, never INTERNAL); a few frames break the
  channel on purpose (a text frame, an altered record, one over twice the limit) and must close
  it with their documented code;
- over raw sockets, garbage before authentication: binary and text frames, truncated and mutated
  hellos, wrong proofs, malformed WebSocket frames and HTTP requests, frames after a refusal; every
  connection must end with a refusal's code (never 1011) or an HTTP error below 500.

Then a normal client must still be answered, the control collection must be as written, the
server's RSS must stay bounded and its log must hold no traceback or error line. Every input
comes from one random.Random(seed): the printed seed replays it.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import hand_handshake
from procs import Proc, server_command
from python_client import Montybase, doc
from server.channel import ClientHandshake
from server.config import create_config, public_key
from server.schemas import load_schema
from server.session import METHODS

__all__ = ["Report", "campaign", "seed_from_environment"]

MESSAGE_LIMIT = 16 * 1024  # maxMessageBytes of the fuzzed server: huge strings stay cheap
FRAME_LIMIT = 2 * MESSAGE_LIMIT + 16 * 1024  # the transport's max_size: a larger frame closes 1009
METRICS_TOKEN = "fuzz-metrics-token-0123456789"
# Hops a proxy might pass on (the server trusts 127.0.0.1 as a proxy, so it reads them)
FORWARDED = ["203.0.113.5", "203.0.113.5, 127.0.0.1", "[2001:db8::1]:4711", '"192.0.2.1:80"', "for=192.0.2.9;proto=https",
             "unknown", "", ",,,", "999.1.1.1", "::ffff:192.0.2.1", "for=", "a" * 300, "1.2.3.4:99999", "[::1"]
LIMITS = {"maxMessageBytes": MESSAGE_LIMIT, "maxDocBytes": 8192, "handshakeTimeout": 1.0}
BOUNDED = {"maxDocs": 200, "maxDocBytes": 4096}
RULES: dict[str, Any] = {
    "control": {"read": "public", "write": "none"},
    "after": {"read": "public", "write": "public"},  # the normal client's, afterwards (the fuzzer never names it)
    "fuzz": {"read": "public", "write": "public", **BOUNDED},
    "scores": {
        "read": "public", "create": "public", "rate": {"create": "600/min"}, **BOUNDED,
        "schema": {"type": "object", "required": ["score"], "properties": {"score": {"type": "integer"}}},
    },
    "profiles": {"read": "public", "write": "owner", "immutable": ["joined"], "serverFields": {"joined": "now"}, **BOUNDED},
    "notes": {"read": "owner", "create": "user", "update": "owner", "delete": "owner", "owner": "by",
              "serverFields": {"by": "uid"}, **BOUNDED},
}
CONTROL = {f"c{n}": {"n": n, "name": f"control {n}", "tags": ["x", n], "deep": {"a": [1, {"b": None}]}} for n in range(20)}
REASONS = {entry["reason"] for entry in load_schema("errors")["errors"]}
PRE_AUTH_CLOSES = {1002, 1007, 1008, 1009, 4001}  # protocol error, bad UTF-8, refused, too big, too slow
WINDOW = 24  # frames in flight on one connection before the answers are read
ANSWER_TIMEOUT = 30.0  # seconds for a window's answers (a sign-up hashes a password)
GARBAGE_WORKERS = 8

REAL_METHODS = [*METHODS, "hello", "auth"]
COLLECTIONS = ["fuzz", "fuzz", "scores", "profiles", "notes", "control", "rooms", "__accounts__", "__sessions__", "x"]
IDS = ["a", "b", "c", "d", "e", "f", "c1", "c7", "0", "ü", "\U0001f600", "a b", "k" * 128]
BAD_IDS = ["__proto__", "$id", ".", "..", "", "k" * 129, "a/b"]
FIELDS = ["n", "score", "name", "tags", "deep", "deep.a", "a.b.c", "joined", "by", "__proto__", "$x", "", "n.", "x" * 200]
OPERATORS = ["==", "!=", "<", "<=", ">", ">=", "in", "not-in", "array-contains", "array-contains-any", "like", ""]
TRANSFORMS = ["$increment", "$maximum", "$minimum", "$arrayUnion", "$arrayRemove", "$serverTimestamp", "$delete", "$nope"]
WRITABLE = ["fuzz", "fuzz", "scores", "profiles", "notes"]
CLEAN_FIELDS = ["n", "score", "name", "tags", "deep", "deep.a", "by"]
CLEAN_WORDS = ["a", "b", "fuzz", "é", "\U0001f600", "x y", "0"]
CLEAN_METHODS = ["get", "query", "aggregate", "add", "set", "update", "delete", "commit", "subscribe", "unsubscribe"]
WORDS = ["", "a", "fuzz", "null", "0", "-1", "true", "constructor", "toString", "__proto__", "$where", "a/b", "\x00",
         "\x7f", "\x9f", "tab\t", "é", "e\u0301", "ｆｕｌｌ", "\U0001d518", "\U0001f600", "\u202erlo", "\ufeff", "\uffff",
         "line\nbreak", "quote\"", "back\\slash"]
NUMBERS: list[Any] = [0, -0.0, 1, -1, 0.5, 7, 2**53 - 1, -(2**53 - 1), 2**53, 2**63, 10**30, 1.7e308, -1.7e308, 5e-324,
                      1e-7, 3.14159, 1e15]
RAW_NUMBERS = ["1e999", "-1e999", "1E400", "-0", "0.0e0", "1" * 5000, "NaN", "Infinity", "-Infinity"]
LONE = ["\ud800", "\udbff", "\udc00", "\udfff", "a\ud83d", "\ude00b"]
SURROGATE = re.compile("[\ud800-\udfff]")
SPLICE = re.compile('"\ue000([0-9]+)\ue001"')


@dataclass
class Report:
    """What a campaign did and found; `findings` lists every way the server misbehaved."""

    seed: int
    requests: int = 0  # request objects sent over authenticated connections (a junk frame counts one)
    frames: int = 0
    garbage_frames: int = 0  # frames and broken HTTP requests sent before authentication
    garbage_connections: int = 0
    connections: int = 0  # authenticated connections opened
    seconds: float = 0.0  # of the authenticated requests
    garbage_seconds: float = 0.0
    rss_before: int = 0  # bytes
    rss_half: int = 0  # halfway through the authenticated requests
    rss_middle: int = 0  # after them
    rss_after: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # "result", or the error's reason
    closes: Counter[str] = field(default_factory=Counter)  # how connections ended, by code or HTTP status
    notifications: int = 0
    findings: list[str] = field(default_factory=list)
    control_unchanged: bool = False
    log_problems: list[str] = field(default_factory=list)

    def find(self, what: str) -> None:
        if len(self.findings) < 200:  # the first ones say enough
            self.findings.append(what)

    def summary(self) -> str:
        mib = 1024 * 1024
        lines = [
            f"seed {self.seed}",
            f"authenticated: {self.requests} requests in {self.frames} frames over {self.connections} connections, "
            f"{self.seconds:.1f} s, {self.requests / max(self.seconds, 1e-9):,.0f} requests/s",
            f"unauthenticated: {self.garbage_frames} garbage frames and requests over {self.garbage_connections} "
            f"connections, {self.garbage_seconds:.1f} s, {self.garbage_frames / max(self.garbage_seconds, 1e-9):,.0f} frames/s",
            f"server RSS: {self.rss_before / mib:.1f} MiB before, {self.rss_half / mib:.1f} MiB halfway through the "
            f"authenticated requests, {self.rss_middle / mib:.1f} MiB after them, {self.rss_after / mib:.1f} MiB at the end",
            "answers: " + ", ".join(f"{reason} {count}" for reason, count in self.answers.most_common()),
            f"notifications: {self.notifications}",
            "connections ended: " + ", ".join(f"{how} {count}" for how, count in self.closes.most_common()),
            f"control collection unchanged: {self.control_unchanged}; log clean: {not self.log_problems}",
        ]
        lines += [f"FINDING: {finding}" for finding in self.findings]
        lines += [f"LOG: {line}" for line in self.log_problems[:20]]
        return "\n".join(lines)


# JSON text with what json.dumps cannot write: raw numbers, deep nesting, lone surrogates as escapes


class Text:
    """Builds one frame's JSON text: text given to `splice` goes in unquoted after encoding, and
    lone surrogates become `\\ud800` escapes, as a browser's JSON.stringify writes them."""

    def __init__(self) -> None:
        self.raw: list[str] = []

    def splice(self, text: str) -> str:
        """A placeholder string that becomes `text`, unquoted, in the frame."""
        self.raw.append(text)
        return f"\ue000{len(self.raw) - 1}\ue001"

    def encode(self, value: Any) -> bytes:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if self.raw:
            text = SPLICE.sub(lambda m: self.raw[int(m.group(1))], text)
        if not text.isascii():  # a surrogate can only be inside a string, where its escape means it
            text = SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
        return text.encode()


# Requests


class Requests:
    """Draws requests, frames of them, and raw junk from one random.Random."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.ids = iter(range(1, 1 << 62))
        self.clean = False  # drawing a well-formed request: valid paths, keys and values only
        self.signups = 0

    # Values

    def word(self) -> str:
        rng = self.rng
        pick = rng.random()
        if self.clean:
            return rng.choice(CLEAN_WORDS)
        if pick < 0.7:
            return rng.choice(WORDS)
        if pick < 0.8:
            return rng.choice("abcdefghij") + rng.choice(["", ".", "/", "$", " ", "-"]) + str(rng.randrange(100))
        if pick < 0.9:
            return chr(rng.randint(0xA0, 0x2FFF)) + chr(rng.randint(0x10000, 0x1F9FF)) + chr(rng.randint(0, 0x7F))
        return rng.choice(LONE) if pick < 0.95 else rng.choice(WORDS) + rng.choice(LONE)

    def number(self, text: Text) -> Any:
        pick = self.rng.random()
        if pick < 0.05 and not self.clean:
            return text.splice(self.rng.choice(RAW_NUMBERS))
        return self.rng.choice(NUMBERS) if pick < 0.6 else self.rng.randint(-1000, 1000)

    def value(self, text: Text, depth: int = 0) -> Any:
        rng = self.rng
        pick = rng.random()
        if depth > 2 or pick < 0.5:
            pick = rng.random()
            return self.number(text) if pick < 0.4 else self.word() if pick < 0.8 else rng.choice([None, True, False])
        if pick < 0.65:
            return [self.value(text, depth + 1) for _ in range(rng.randint(0, 3))]
        if pick < 0.75:
            return {rng.choice(TRANSFORMS): self.value(text, depth + 1)}
        return {self.key(): self.value(text, depth + 1) for _ in range(rng.randint(0, 3))}

    def key(self) -> str:
        if self.clean:
            return self.rng.choice(CLEAN_FIELDS)
        return self.rng.choice(FIELDS) if self.rng.random() < 0.6 else self.word()

    def document(self, text: Text) -> dict[str, Any]:
        rng = self.rng
        out: dict[str, Any] = {}
        for _ in range(rng.randint(0, 5)):
            name = rng.choice(["n", "score", "name", "tags", "deep", "by", "joined"]) if rng.random() < 0.7 else self.key()
            out[name] = self.value(text) if rng.random() < 0.5 else self.number(text)
        return out

    def segment(self) -> str:
        pick = self.rng.random()
        return self.rng.choice(IDS) if pick < 0.85 or self.clean else self.rng.choice(BAD_IDS) if pick < 0.92 else self.word()

    def path(self, document: bool | None = None) -> list[str]:
        rng = self.rng
        if self.clean:
            return [rng.choice(WRITABLE), rng.choice(IDS)] if document or document is None and rng.random() < 0.6 else [
                rng.choice(WRITABLE)]
        collection = rng.choice(COLLECTIONS) if rng.random() < 0.9 else self.word()
        if document is None:
            document = rng.random() < 0.6
        parts = [collection, self.segment()] if document else [collection]
        if rng.random() < 0.1:
            parts += [rng.choice(["sub", "notes", "fuzz"]), self.segment()][: rng.randint(1, 2)]
        if rng.random() < 0.02:
            parts = ["fuzz", "a"] * rng.randint(0, 40)
        return parts

    def query(self, text: Text) -> dict[str, Any]:
        rng = self.rng
        query: dict[str, Any] = {"path": self.path(document=False)}
        if rng.random() < 0.5:
            operators = OPERATORS[:-2] if self.clean else OPERATORS  # the last ones are no operators
            query["where"] = [[self.key(), rng.choice(operators), self.value(text)] for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.5:
            query["orderBy"] = [[self.key(), rng.choice(["asc", "desc", "asc" if self.clean else "up"])]
                                for _ in range(rng.randint(1, 2))]
        for name in ("limit", "limitToLast", "offset"):
            if rng.random() < 0.2:
                query[name] = rng.choice([0, 1, 3, 10, 1000, 10**9, -1])
        for name in ("startAt", "startAfter", "endAt", "endBefore"):
            if rng.random() < 0.1:
                query[name] = [self.value(text) for _ in range(rng.randint(0, 3))]
        return query

    def write(self, text: Text) -> dict[str, Any]:
        op = self.rng.choice(["add", "set", "update", "delete"])
        if op == "delete":
            return {"op": op, "path": self.path(document=True)}
        if op == "update":
            return {"op": op, "path": self.path(document=True), "fields": self.fields(text)}
        return {"op": op, "path": self.path(document=op == "set"), "value": self.document(text)}

    def fields(self, text: Text) -> list[list[Any]]:
        rng = self.rng
        return [[self.key() if rng.random() < 0.8 else [self.key(), self.key()],
                 self.value(text) if rng.random() < 0.6 else {rng.choice(TRANSFORMS): self.number(text)}]
                for _ in range(rng.randint(1, 3))]

    def credentials(self) -> dict[str, Any]:
        rng = self.rng
        email = f"u{rng.randint(0, 30)}@fuzz.example" if rng.random() < 0.8 else self.word()
        # a well-formed new account costs a password hash: only a few of them per run
        password = "correct horse" if self.signups < 12 and rng.random() < 0.5 else rng.choice(["short", "", "x" * 1025])
        return {"email": email, "password": password}

    def params(self, method: str, text: Text) -> dict[str, Any]:
        rng = self.rng
        if method in ("get", "delete"):
            return {"path": self.path()}
        if method in ("add", "set"):
            return {"path": self.path(document=method == "set"), "value": self.document(text)}
        if method == "update":
            return {"path": self.path(document=True), "fields": self.fields(text)}
        if method == "commit":
            params: dict[str, Any] = {"writes": [self.write(text) for _ in range(rng.randint(1, 4))]}
            if rng.random() < 0.3:
                params["reads"] = [{"path": self.path(), "value": self.value(text)} for _ in range(rng.randint(1, 2))]
            return params
        if method == "query":
            return {"query": self.query(text)}
        if method == "aggregate":
            params = {"query": self.query(text), "op": rng.choice(["count", "exists", "sum", "avg", "max"])}
            if rng.random() < 0.8:
                params["field"] = rng.choice(["n", "score", "n", ["deep", "a"]]) if rng.random() < 0.7 else self.key()
            return params
        if method == "subscribe":
            target = {"path": self.path()} if rng.random() < 0.5 else {"query": self.query(text)}
            return {"sub": rng.randint(1, 12), **target}
        if method == "unsubscribe":
            return {"sub": rng.randint(1, 12)}
        if method in ("signUp", "signIn"):
            params = self.credentials()
            if method == "signUp" and params["password"] == "correct horse":
                self.signups += 1
            return params
        if method in ("resume", "signOut"):
            return {"token": self.word() if rng.random() < 0.5 else base64.urlsafe_b64encode(rng.randbytes(32)).decode()}
        if method == "hello":
            return ClientHandshake("client", "mb-not-the-key", None, nonce=rng.randbytes(32)).hello()
        return {"cmac": base64.urlsafe_b64encode(rng.randbytes(16)).decode().rstrip("=")}

    # Requests

    def request(self, text: Text) -> Any:
        """One request object: a real method's well-formed params (which do real work), the same
        drawn from every value and often mutated, or something made up."""
        rng = self.rng
        self.clean = rng.random() < 0.3
        if self.clean:
            method = rng.choice(CLEAN_METHODS)
            return {"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": self.params(method, text)}
        pick = rng.random()
        method = rng.choice(REAL_METHODS) if pick < 0.9 else self.word()
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self.ids), "method": method}
        if pick < 0.9:
            message["params"] = self.params(method, text)
        elif rng.random() < 0.7:
            message["params"] = self.value(text)
        if rng.random() < 0.5:
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                self.mutate(message, text)
        return message

    def mutate(self, message: dict[str, Any], text: Text) -> None:
        rng = self.rng
        pick = rng.random()
        if pick < 0.12:  # the envelope
            name = rng.choice(["jsonrpc", "id", "method", "params", "extra"])
            if rng.random() < 0.3:
                message.pop(name, None)  # no id: a notification
            elif name == "id":
                message["id"] = self.odd_id(text)
            elif name == "method":
                message["method"] = rng.choice(REAL_METHODS) if rng.random() < 0.6 else self.value(text)
            else:
                message[name] = self.value(text)
            return
        params = message.get("params")
        if not isinstance(params, (dict, list)) or not params:
            message["params"] = self.value(text)
            return
        holder, slot = self.pick_slot(params)
        current = holder[slot]
        if pick < 0.4:
            new: Any = self.value(text)
        elif pick < 0.5:
            if isinstance(holder, dict):
                del holder[slot]
            else:
                holder.pop(slot)
            return
        elif pick < 0.58:
            new = self.deep(current, text)
        elif pick < 0.68:
            new = self.huge()
        elif pick < 0.78:
            new = (current + rng.choice(LONE)) if isinstance(current, str) else rng.choice(LONE)
        elif pick < 0.85:
            new = text.splice(rng.choice(RAW_NUMBERS))
        elif pick < 0.92:
            new = [current] * rng.choice([2, 20, 100])
        else:
            if isinstance(holder, dict):
                holder[self.key()] = self.value(text)
                return
            new = {self.key(): current}
        holder[slot] = new

    def pick_slot(self, value: Any) -> tuple[Any, Any]:
        """A random (container, key or index) inside `value`, at a random depth."""
        holder, slot = None, None
        while isinstance(value, (dict, list)) and value and (holder is None or self.rng.random() < 0.6):
            slot = self.rng.choice(list(value)) if isinstance(value, dict) else self.rng.randrange(len(value))
            holder, value = value, value[slot]
        return holder, slot

    def deep(self, inner: Any, text: Text) -> Any:
        """`inner` nested deeply: within Python's JSON nesting, or as raw text far beyond it."""
        rng = self.rng
        if rng.random() < 0.5:
            for _ in range(rng.randint(20, 200)):
                inner = [inner] if rng.random() < 0.5 else {"d": inner}
            return inner
        depth = rng.choice([500, 990, 1200, 5000])
        return text.splice("[" * depth + json.dumps(self.rng.choice([1, "x", None])) + "]" * depth)

    def huge(self) -> str:
        """A string within the message limit, or over it (but within what the transport reads)."""
        size = self.rng.randint(1000, MESSAGE_LIMIT - 1000) if self.rng.random() < 0.6 else self.rng.randint(
            MESSAGE_LIMIT + 100, 2 * MESSAGE_LIMIT - 200)
        return self.rng.choice("xé\U0001f600") * (size // 4 if self.rng.random() < 0.3 else size // 2)

    def odd_id(self, text: Text) -> Any:
        rng = self.rng
        return rng.choice([
            None, 0, -1, 2**53, 10**40, 1.5, -0.0, True, [], {}, [1], "", "x" * 1000, self.word(), self.word(),
            rng.choice(LONE), text.splice(rng.choice(RAW_NUMBERS)), "sentinel",
        ])

    # Frames

    def frame(self) -> tuple[bytes, int]:
        """One frame's plaintext and how many requests it carries; never so large that the
        transport closes the connection (that is `_breaker`'s job)."""
        rng = self.rng
        pick = rng.random()
        if pick < 0.6:
            return self.sized(), 1
        if pick < 0.85:
            size = rng.choice([1, 2, 3, 5, 8, 10, 20, 30, 50]) if rng.random() < 0.95 else rng.choice([0, 51, 60])
            items: list[bytes] = []
            room = FRAME_LIMIT - 1024
            for _ in range(size):
                item = self.sized()
                room -= len(item) + 1
                if room < 0:
                    break
                items.append(item)
            return b"[" + b",".join(items) + b"]", max(len(items), 1)
        return self.junk()[: FRAME_LIMIT - 1024], 1

    def sized(self) -> bytes:
        """One request's JSON text, small enough for a frame of its own."""
        while True:
            text = Text()
            encoded = text.encode(self.request(text))
            if len(encoded) < FRAME_LIMIT - 1024:
                return encoded

    def junk(self) -> bytes:
        """A plaintext that is not a request: broken or odd JSON, or not text at all."""
        rng = self.rng
        text = Text()
        valid = text.encode(self.request(text))
        return rng.choice([
            lambda: rng.randbytes(rng.randint(0, 64)),
            lambda: valid[: rng.randrange(len(valid))],
            lambda: valid + b"}",
            lambda: b"\xef\xbb\xbf" + valid,
            lambda: valid.replace(b'"id":', b'"id":1,"id":', 1),
            lambda: b"[" * (FRAME_LIMIT - 2048),
            lambda: b"[" * 3000 + b"]" * 3000,
            lambda: rng.choice([b"null", b"5", b'"x"', b"[[]]", b"[null]", b"{}", b"true", b" ", b"", b"[1,]"]),
            lambda: b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"path":["c",NaN]}}',
            lambda: b'{"jsonrpc":"2.0","id":' + rng.choice(RAW_NUMBERS).encode() + b',"method":"get","params":{"path":[]}}',
            lambda: valid.replace(b'"', b"'"),
            lambda: bytes(b ^ 0x80 for b in valid[:200]),
        ])()



# Authenticated connections


class Sealed:
    """A client-key connection; its websockets reader thread buffers what arrives without bound, so
    a window of answers never waits on this side."""

    def __init__(self, url: str, config: dict[str, Any]):
        self.ws = connect(url, compression=None, proxy=None, max_queue=None, max_size=None, open_timeout=10, legacy=True,
                          close_timeout=2)
        self.records, _ = hand_handshake(self.ws, "client", config["apiKey"], public_key(config["serverKey"]))

    def send(self, plaintext: bytes) -> None:
        self.ws.send(self.records.seal(plaintext))

    def recv(self, timeout: float) -> bytes:
        return self.records.open(self.ws.recv(timeout=timeout))

    def close(self) -> None:
        self.ws.close()


def _strict(text: bytes) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} in an answer")

    return json.loads(text.decode("utf-8"), parse_constant=refuse)


def _canonical(request_id: Any) -> str:
    return json.dumps(request_id, sort_keys=True)


def _check_answer(report: Report, message: Any, sent_ids: set[str]) -> None:
    """One answer or notification of a window."""
    if not isinstance(message, dict):
        report.find(f"an answer that is not an object: {str(message)[:200]}")
        return
    if message.get("method") == "snapshot":
        report.notifications += 1
        return
    if message.get("jsonrpc") != "2.0" or "id" not in message or ("result" in message) == ("error" in message):
        report.find(f"a malformed answer: {str(message)[:300]}")
        return
    if message["id"] is not None and _canonical(message["id"]) not in sent_ids:
        report.find(f"an answer to an id never sent: {str(message)[:300]}")
    if "result" in message:
        report.answers["result"] += 1
        return
    error = message["error"]
    data = error.get("data") if isinstance(error, dict) else None
    reason = data.get("reason") if isinstance(data, dict) else None
    if reason not in REASONS or not isinstance(error.get("code"), int) or not isinstance(error.get("message"), str):
        report.find(f"a malformed error: {str(message)[:300]}")
        return
    report.answers[reason] += 1
    if reason == "INTERNAL":
        report.find(f"INTERNAL: {str(message)[:300]}")


def _ids_of(plaintext: bytes) -> set[str]:
    """The ids a frame sent (best effort: junk has none we could expect back)."""
    try:
        message = json.loads(plaintext)
    except (ValueError, RecursionError):
        return set()
    messages = message if isinstance(message, list) else [message]
    return {_canonical(m["id"]) for m in messages if isinstance(m, dict) and "id" in m}


def _breaker(rng: random.Random, connection: Sealed, plaintext: bytes) -> tuple[Callable[[], None], int, str]:
    """A frame that breaks the channel on purpose: how to send it, the close code it must get, its name."""
    record = connection.records.seal(plaintext)
    return rng.choice([
        (lambda: connection.ws.send(plaintext.decode("utf-8", "replace")), 4002, "a text frame"),
        (lambda: connection.ws.send(record[:-1] + bytes([record[-1] ^ 1])), 4002, "an altered record"),
        (lambda: connection.ws.send(record[:10]), 4002, "a record shorter than its tag"),
        (lambda: connection.ws.send(rng.randbytes(FRAME_LIMIT + 1000)), 1009, "a frame over twice the limit"),
    ])


def _authenticated(url: str, config: dict[str, Any], requests: Requests, target: int, report: Report,
                   halfway: Callable[[], None]) -> None:
    """Windows of frames, each followed by a sentinel request whose answer comes after theirs."""
    rng = requests.rng
    connection: Sealed | None = None
    windows = 0
    while report.requests < target:
        if report.requests >= target // 2 and not report.rss_half:
            halfway()
        if connection is None or windows % 50 == 49:  # a fresh connection now and then: listeners, limits
            if connection is not None:
                connection.close()
            connection = Sealed(url, config)
            report.connections += 1
        windows += 1
        frames = []
        for _ in range(WINDOW):
            plaintext, count = requests.frame()
            frames.append(plaintext)
            report.requests += count
        breaking = rng.random() < 0.02
        sent_ids: set[str] = set()
        sentinel = f"sentinel {windows}"
        try:
            for plaintext in frames:
                connection.send(plaintext)
                sent_ids |= _ids_of(plaintext)
            report.frames += len(frames)
            if breaking:
                send, expected, name = _breaker(rng, connection, requests.sized())
                send()
                report.frames += 1
                _read_until_closed(connection, report, sent_ids, expected, name, frames)
                connection = None
                continue
            connection.send(json.dumps({"jsonrpc": "2.0", "id": sentinel, "method": "get",
                                        "params": {"path": ["fuzz", "sentinel"]}}).encode())
            sent_ids.add(_canonical(sentinel))
            _read_window(connection, report, sent_ids, sentinel, frames)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            report.closes[f"authenticated {code}"] += 1
            report.find(f"the connection closed ({code}) during window {windows}: {_sample(frames)}")
            connection = None
        except TimeoutError:
            report.find(f"no answer to the sentinel within {ANSWER_TIMEOUT} s (window {windows}): {_sample(frames)}")
            connection.close()
            connection = None
    if connection is not None:
        connection.close()


def _read_window(connection: Sealed, report: Report, sent_ids: set[str], sentinel: str, frames: list[bytes]) -> None:
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while True:
        plaintext = connection.recv(max(deadline - time.monotonic(), 0.001))
        try:
            answer = _strict(plaintext)
        except ValueError as exc:
            report.find(f"an answer that is not JSON ({exc}): {plaintext[:200]!r}")
            continue
        for message in answer if isinstance(answer, list) else [answer]:
            if isinstance(message, dict) and message.get("id") == sentinel:
                if "result" not in message:
                    report.find(f"the sentinel was refused: {message}")
                return
            _check_answer(report, message, sent_ids)


def _read_until_closed(connection: Sealed, report: Report, sent_ids: set[str], expected: int, name: str,
                       frames: list[bytes]) -> None:
    deadline = time.monotonic() + ANSWER_TIMEOUT
    try:
        while True:
            answer = _strict(connection.recv(max(deadline - time.monotonic(), 0.001)))
            for message in answer if isinstance(answer, list) else [answer]:
                _check_answer(report, message, sent_ids)
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
        report.closes[f"authenticated {code}"] += 1
        if code != expected:
            report.find(f"{name} closed the connection with {code}, not {expected}: {_sample(frames)}")
    except TimeoutError:
        report.find(f"{name} did not close the connection within {ANSWER_TIMEOUT} s")
    finally:
        connection.close()


def _sample(frames: list[bytes]) -> str:
    return "; ".join(repr(frame[:160]) for frame in frames[:3]) + (" ..." if len(frames) > 3 else "")


# Before authentication: raw sockets


def _ws_frame(rng: random.Random, opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    """A client frame (RFC 6455 §5.2), masked unless told otherwise."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    size = len(payload)
    length = bytes([(0x80 if mask else 0) | size]) if size < 126 else (
        bytes([(0x80 if mask else 0) | 126]) + struct.pack(">H", size) if size < 65536
        else bytes([(0x80 if mask else 0) | 127]) + struct.pack(">Q", size))
    if not mask:
        return head + length + payload
    key = rng.randbytes(4)
    return head + length + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _upgrade(rng: random.Random, host: str, port: int, headers: str = "") -> bytes:
    key = base64.b64encode(rng.randbytes(16)).decode()
    return (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n").encode()


@dataclass
class Garbage:
    """One unauthenticated connection: its HTTP request, the frames sent once the server accepts
    it, how many frames and broken requests that makes, and whether the server is expected to
    end the connection (else the client leaves as soon as it has sent everything)."""

    request: bytes
    count: int
    frames: bytes = b""
    wait: bool = True
    pipelined: bool = False


class Unauthenticated:
    """Draws garbage for the handshake from one random.Random."""

    def __init__(self, rng: random.Random, requests: Requests, host: str, port: int, config: dict[str, Any]):
        self.rng, self.requests, self.host, self.port = rng, requests, host, port
        self.server_public = public_key(config["serverKey"])

    def text(self, payload: str | bytes) -> bytes:
        # a lone surrogate passes as its three bytes: not UTF-8, which the protocol refuses (1007)
        return _ws_frame(self.rng, 0x1, payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload)

    def hello(self, mode: str = "psk") -> dict[str, Any]:
        kid = self.rng.choice(["client", "admin", "root"])
        server_public = self.server_public if mode == "nk" else None
        params = ClientHandshake("client", "mb-not-the-key", server_public, nonce=self.rng.randbytes(32)).hello()
        return {"jsonrpc": "2.0", "id": self.rng.choice([0, 1, "h"]), "method": "hello", "params": {**params, "kid": kid}}

    def first(self) -> tuple[list[bytes], bool]:
        """The frames that should make the server refuse, and whether it should refuse at all."""
        rng = self.rng
        text = Text()
        hello = self.hello(rng.choice(["psk", "nk"]))
        auth = {"jsonrpc": "2.0", "id": 0, "method": "auth",
                "params": {"cmac": base64.urlsafe_b64encode(rng.randbytes(32)).decode().rstrip("=")}}
        pick = rng.random()
        if pick < 0.15:
            return [_ws_frame(rng, 0x2, rng.randbytes(rng.randint(0, 300)))], True
        if pick < 0.25:
            return [self.text(self.requests.word() * rng.randint(1, 20))], True
        if pick < 0.35:
            return [self.text(text.encode(self.requests.request(text)))], True
        if pick < 0.45:
            encoded = json.dumps(hello).encode()
            return [self.text(encoded[: rng.randrange(len(encoded))])], True
        if pick < 0.6:
            self.requests.mutate(hello, text)
            return [self.text(text.encode(hello))], True
        if pick < 0.72:
            if rng.random() < 0.5:
                self.requests.mutate(auth, text)
            return [self.text(json.dumps(hello)), self.text(text.encode(auth))], True
        if pick < 0.78:
            return [self.text(json.dumps(rng.choice([[hello], [hello, hello], auth, hello | {"id": None}])))], True
        if pick < 0.9:
            return [self.malformed()], True
        if pick < 0.94:
            return [self.text(b"x" * (FRAME_LIMIT + rng.randint(1, 1000)))], True
        if pick < 0.96:  # a frame that never ends: the handshake deadline ends it
            return [_ws_frame(rng, 0x1, b"x" * 100)[:-50]], rng.random() < 0.2
        return [self.text(json.dumps(hello))], rng.random() < 0.2  # a hello, then silence

    def malformed(self) -> bytes:
        """A WebSocket frame the protocol itself refuses."""
        rng = self.rng
        payload = rng.randbytes(rng.randint(0, 40))
        return rng.choice([
            lambda: _ws_frame(rng, 0x1, payload, mask=False),
            lambda: _ws_frame(rng, 0x1, payload, rsv=rng.randint(1, 7)),
            lambda: _ws_frame(rng, rng.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), payload),
            lambda: _ws_frame(rng, 0x0, payload),
            lambda: _ws_frame(rng, 0x9, rng.randbytes(126)),
            lambda: _ws_frame(rng, 0x9, payload, fin=False),
            lambda: _ws_frame(rng, 0x8, b"\x03"),
            lambda: _ws_frame(rng, 0x8, struct.pack(">H", rng.choice([0, 999, 1005, 1006, 1015, 2999, 5000])) + b"x"),
            lambda: _ws_frame(rng, 0x8, b"\x03\xe8\xff\xfe"),
            lambda: _ws_frame(rng, 0x1, b"\xff\xfe\xc0\xaf" + payload),
            lambda: _ws_frame(rng, 0x1, b"{", fin=False) + _ws_frame(rng, 0x1, b"}"),
            lambda: b"\x81\xff" + struct.pack(">Q", 1 << 63) + rng.randbytes(8),
            lambda: rng.randbytes(rng.randint(1, 64)),
        ])()

    def after(self) -> bytes:
        """A frame sent after the refusal's cause."""
        rng = self.rng
        return rng.choice([
            lambda: self.text(json.dumps(self.hello())),
            lambda: _ws_frame(rng, 0x2, rng.randbytes(rng.randint(0, 100))),
            lambda: self.text(self.requests.word()),
            lambda: _ws_frame(rng, 0x9, rng.randbytes(8)),
            lambda: _ws_frame(rng, 0x8, struct.pack(">H", 1000)),
            lambda: self.malformed(),
        ])()

    def broken_http(self) -> Garbage:
        rng = self.rng
        host = f"{self.host}:{self.port}"
        return rng.choice([
            lambda: Garbage(rng.randbytes(rng.randint(1, 200)) + b"\r\n\r\n", 1),
            lambda: Garbage(f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            "Sec-WebSocket-Version: 13\r\n\r\n".encode(), 1),
            lambda: Garbage(_upgrade(rng, self.host, self.port).replace(b"Version: 13", b"Version: 8"), 1),
            lambda: Garbage(_upgrade(rng, self.host, self.port).replace(b"GET /", b"POST /"), 1),
            lambda: Garbage(_upgrade(rng, self.host, self.port, "X-Long: " + "a" * 9000 + "\r\n"), 1),
            lambda: Garbage(_upgrade(rng, self.host, self.port, "".join(f"X-{n}: y\r\n" for n in range(300))), 1),
            lambda: Garbage(_upgrade(rng, self.host, self.port, "Origin: https://evil.example\r\n"), 1),
            lambda: Garbage(_upgrade(rng, self.host, self.port)[: rng.randint(5, 60)], 1, wait=False),
            lambda: Garbage(b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n", 1),
            lambda: Garbage(f"GET /client-config.json HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), 1),
            lambda: Garbage(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), 1),
            lambda: Garbage(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nAuthorization: {self.requests.word()}"
                            f" {rng.choice([METRICS_TOKEN, 'x' * 40, ''])}\r\n\r\n".encode("utf-8", "surrogatepass"), 1),
            lambda: Garbage(_upgrade(rng, self.host, self.port, rng.choice(["X-Forwarded-For", "Forwarded"]) + ": "
                                     + rng.choice(FORWARDED) + "\r\n"), 1),
        ])()

    def draw(self) -> Garbage:
        rng = self.rng
        if rng.random() < 0.08:
            return self.broken_http()
        frames, wait = self.first()
        frames += [self.after() for _ in range(rng.choice([0, 1, 2, 3, 4, 6]))]
        return Garbage(_upgrade(rng, self.host, self.port), len(frames), b"".join(frames), wait, rng.random() < 0.15)


def _read_frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The server's frames (unmasked) in what it sent after its HTTP response."""
    at = 0
    while at + 2 <= len(data):
        opcode, size = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if size == 126:
            size, at = struct.unpack(">H", data[at:at + 2])[0], at + 2
        elif size == 127:
            size, at = struct.unpack(">Q", data[at:at + 8])[0], at + 8
        if at + size > len(data):
            return
        yield opcode, data[at:at + size]
        at += size


def _receive(sock: socket.socket, received: bytes, done: Callable[[bytes], bool]) -> bytes:
    """Read until `done` says so or the server closes."""
    while not done(received):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def _response(received: bytes) -> tuple[bytes, bytes, bool]:
    """The HTTP response's head and what follows it, and whether the head is complete. A client
    that sent frames with its request may see a frame first (websockets answers a ping at once)."""
    head, found, body = received[max(received.find(b"HTTP/1.1 "), 0):].partition(b"\r\n\r\n")
    return head, body, bool(found)


def _closed(received: bytes) -> bool:
    head, body, complete = _response(received)
    return complete and (not head.startswith(b"HTTP/1.1 101") or any(op == 0x8 for op, _ in _read_frames(body)))


def _garbage_connection(host: str, port: int, garbage: Garbage) -> tuple[str, str | None]:
    """One garbage connection, as a client that waits for the server's answer to its HTTP request
    before it sends frames, or sends them at once (`pipelined`): how it ended, and a finding if
    it ended wrongly."""
    sent = garbage.request + garbage.frames
    received = b""
    with socket.create_connection((host, port), timeout=10) as sock:
        try:
            sock.sendall(sent if garbage.pipelined else garbage.request)
            if not garbage.pipelined and (garbage.frames or garbage.wait):
                received = _receive(sock, received, lambda r: _response(r)[2])
                if received.startswith(b"HTTP/1.1 101") and garbage.frames:
                    sock.sendall(garbage.frames)
            if not garbage.wait:
                return "left", None
            # leaving at the close frame ends the connection on both sides
            received = _receive(sock, received, _closed)
        except (ConnectionResetError, BrokenPipeError):
            if not received:
                return "reset", None
        except TimeoutError:
            return "hung", f"no close within 10 s after {sent[:200]!r}"
    head, body, _ = _response(received)
    if not head.startswith(b"HTTP/1.1 "):  # pipelined bytes that are no frame end the connection unanswered
        return "no response", None if not received or garbage.pipelined else f"not HTTP: {received[:200]!r}"
    status = head.split(b" ", 2)[1].decode("ascii", "replace")
    if status != "101":
        problem = f"HTTP {status} for {sent[:200]!r}" if status.startswith("5") and status != "503" else None
        return f"HTTP {status}", problem
    code = None
    for opcode, payload in _read_frames(body):
        if opcode == 0x1:
            try:
                answer = _strict(payload)
            except ValueError:
                return "bad answer", f"a handshake answer that is not JSON: {payload[:200]!r}"
            error = answer.get("error") if isinstance(answer, dict) else None
            if not (isinstance(answer, dict) and "result" in answer) and not (
                    isinstance(error, dict) and isinstance(error.get("data"), dict)
                    and error["data"].get("reason") == "UNAUTHENTICATED"):
                return "bad answer", f"a handshake answer {payload[:200]!r} for {sent[:200]!r}"
        elif opcode == 0x8:
            code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
    if code not in PRE_AUTH_CLOSES and code != 1000:  # 1000: the echo of a client's own close
        return f"closed {code}", f"closed with {code} after {sent[:300]!r}"
    return f"closed {code}", None


def _unauthenticated(host: str, port: int, drawer: Unauthenticated, target: int, report: Report) -> None:
    batch: list[Garbage] = []
    while report.garbage_frames < target:
        garbage = drawer.draw()
        batch.append(garbage)
        report.garbage_frames += garbage.count
    report.garbage_connections += len(batch)
    with ThreadPoolExecutor(GARBAGE_WORKERS) as pool:
        for how, problem in pool.map(lambda g: _garbage_connection(host, port, g), batch):
            report.closes[f"unauthenticated {how}"] += 1
            if problem is not None:
                report.find(problem)


# The server and the checks around the fuzzing


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _log_problems(log: str) -> list[str]:
    """Lines of the server's log that show a bug: a traceback, an error, an exception nobody read."""
    markers = ("Traceback", " ERROR ", " CRITICAL ", "Task exception", "--- Logging error ---", "never retrieved")
    return [line for line in log.splitlines() if any(marker in line for marker in markers)]


def campaign(folder: Path, seed: int, requests: int, garbage: int, *, progress: Callable[[str], None] | None = None,
             storage: str = "db.json") -> Report:
    """Fuzz a fresh server in `folder` (its data in `storage`, its storageBucket) with `requests`
    authenticated requests and `garbage` unauthenticated frames drawn from `seed`; the report says
    what happened and what went wrong."""
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "montybase.json"
    config = create_config(config_path)
    config.update(rules=RULES, limits=LIMITS, origins=["https://game.example", None], trustedProxies=["127.0.0.1"],
                  metrics={"token": METRICS_TOKEN}, storageBucket=storage)
    config_path.write_text(json.dumps(config, indent=2))
    report = Report(seed)
    rng = random.Random(seed)
    say = progress or (lambda line: None)
    with Proc(server_command("--config", str(config_path), "--port", "0"), cwd=folder) as proc:
        url = proc.endpoint()
        host, port = url.removeprefix("ws://").rsplit(":", 1)
        admin = Montybase(api=url, config=config_path)
        try:
            for key, value in CONTROL.items():
                doc(admin, "control", key).set(value)
            for key in ("big1", "big2"):  # a sum of "n" over fuzz is past the largest float
                doc(admin, "fuzz", key).set({"n": 1.7e308, "score": 1})
            report.rss_before = _rss(proc.pid)
            say(f"fuzzing {url} (server pid {proc.pid}) with seed {seed}")
            drawer = Requests(rng)
            started = time.perf_counter()
            _authenticated(url, config, drawer, requests, report, lambda: setattr(report, "rss_half", _rss(proc.pid)))
            report.seconds = time.perf_counter() - started
            report.rss_middle = _rss(proc.pid)
            say(f"{report.requests} authenticated requests sent")
            started = time.perf_counter()
            _unauthenticated(host, int(port), Unauthenticated(rng, drawer, host, int(port), config), garbage, report)
            report.garbage_seconds = time.perf_counter() - started
            say(f"{report.garbage_frames} garbage frames sent")
            normal = Montybase(api=url, config=folder / "client-config.json")
            try:
                doc(normal, "after", "a").set({"ok": True})
                if doc(normal, "after", "a").get() != {"ok": True}:
                    report.find("a normal client's write did not read back")
            finally:
                normal.close()
            report.control_unchanged = doc(admin, "control").get() == CONTROL
            report.rss_after = _rss(proc.pid)
        finally:
            admin.close()
        code = proc.stop()
        if code != 0:
            report.find(f"the server exited with {code}")
        (folder / "server.log").write_text(proc.stderr)
        report.log_problems = _log_problems(proc.stderr)
    return report


def seed_from_environment(name: str = "MONTYBASE_FUZZ_SEED") -> int:
    """The seed to replay from the environment, else a fresh one."""
    given = os.environ.get(name)
    return int(given) if given else random.SystemRandom().randrange(2**32)

