"""Access rules through every door: each row of tests/cases/doors.json (operation × grant ×
principal, written by tests/make_doors.py) through the Python remote client against a real
server, one server per grant (tests/js/doors.test.js is the JS twin)."""

from __future__ import annotations

import importlib.util
import json
import queue
from pathlib import Path
from typing import Any

import pytest

from conftest import Served, server_bucket
from python_client import Montybase, Query, doc
from python_client.errors import MontybaseError
from server.config import DEFAULTS, open_database

HERE = Path(__file__).resolve().parent
CASES: dict[str, Any] = json.loads((HERE / "cases" / "doors.json").read_text(encoding="utf-8"))
ROWS: list[dict[str, Any]] = CASES["rows"]
OPS: dict[str, dict[str, Any]] = CASES["ops"]
READING = ("transactionRead", "transactionList")  # a commit whose reads are the door
PASSWORD = "correct horse battery"
WAIT = 10.0  # seconds: the bound of the wait for a listener's first snapshot


def test_the_table_is_what_its_generator_writes():
    spec = importlib.util.spec_from_file_location("make_doors", HERE / "make_doors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == (HERE / "cases" / "doors.json").read_text(encoding="utf-8"), "run python tests/make_doors.py"


def test_the_table_has_every_door_grant_and_principal_once():
    doors = {"get", "list", "query", "aggregate", "listen", "add", "set", "update", "delete", "cascadeDelete",
             "batch", "transactionRead", "transactionList", "transactionWrite"}
    assert set(OPS) == doors
    cells = [(row["op"], row["grant"], row["principal"]) for row in ROWS]
    assert sorted(cells) == sorted(
        (op, grant, principal) for op in doors for grant in ("none", "public", "user", "owner", "admin")
        for principal in ("anonymous", "owner", "other", "admin")
    )
    assert {row["expect"] for row in ROWS} == {"allowed", "PERMISSION_DENIED"}


class Door:
    """The server of one grant, a handle per principal, and the table's placeholders."""

    def __init__(self, loop_thread: Any, folder: Path, grant: str):
        rules = json.loads(json.dumps(CASES["rules"]).replace('"$grant"', json.dumps(grant)))
        self.served = Served(loop_thread, folder, database=open_database({**DEFAULTS, "rules": rules}, server_bucket()))
        self.handles: dict[str, Montybase] = {"anonymous": self.served.client(), "admin": self.served.client(admin=True)}
        self.placeholders = {}
        for name in ("owner", "other"):
            self.handles[name] = self.served.client()
            self.placeholders[f"${name}"] = self.handles[name].sign_up(f"{name}@doors.example", PASSWORD)["uid"]
        self.dirty = True

    def sub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.placeholders.get(value, value)
        if isinstance(value, list):
            return [self.sub(item) for item in value]
        if isinstance(value, dict):
            return {key: self.sub(item) for key, item in value.items()}
        return value

    def reset(self) -> None:
        admin = self.handles["admin"]
        batch = admin.batch()
        batch.delete(doc(admin, "docs"))
        batch.delete(doc(admin, "log"))
        for path, value in CASES["seed"].items():
            batch.set(doc(admin, *path.split("/")), self.sub(value))
        batch.commit()
        self.dirty = False

    def state(self) -> dict[str, Any]:
        """Everything a write could change, read with the admin key."""
        admin = self.handles["admin"]
        return {path: doc(admin, *path.split("/")).get() for path in ("docs", "log", *CASES["seed"])}

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.served.stop()


@pytest.fixture(scope="module")
def doors(loop_thread, tmp_path_factory):
    """The server of a grant, started at its first row (the rows come grouped by grant)."""
    started: dict[str, Door] = {}

    def door(grant: str) -> Door:
        if grant not in started:
            started[grant] = Door(loop_thread, tmp_path_factory.mktemp(f"doors-{grant}"), grant)
        return started[grant]

    yield door
    for each in started.values():
        each.close()


def reason(fn) -> str:
    """"allowed" if fn() returns, else the reason of the Montybase error it raises."""
    try:
        fn()
    except MontybaseError as exc:
        return exc.reason
    return "allowed"


def first_snapshot(query: Query) -> Any:
    snapshots: queue.Queue[Any] = queue.Queue()
    stop = query.on_snapshot(snapshots.put)
    try:
        return snapshots.get(timeout=WAIT)
    finally:
        stop()


def _read(handle: Montybase, op: str, spec: dict[str, Any]) -> Any:
    """Run a read door: the document, the ids it returned (in order), or the count."""
    ref = doc(handle, *spec["path"].split("/"))
    query = Query(ref, spec.get("query"))
    if op == "get":
        return ref.get()
    if op == "list":
        return sorted(ref.get())
    if op == "query":
        return [entry["id"] for entry in query.stream()]
    if op == "aggregate":
        return query.count()
    return [entry["id"] for entry in first_snapshot(query).docs]


def _expected(door: Door, row: dict[str, Any]) -> Any:
    """What an allowed read door returns, as `_read` gives it."""
    if row["op"] == "get":
        return door.sub(CASES["seed"][OPS["get"]["path"]])
    return {"list": sorted(row["ids"]), "aggregate": len(row["ids"])}.get(row["op"], row["ids"])


def _write(door: Door, handle: Montybase, op: str, spec: dict[str, Any]) -> Any:
    """The call of a write door."""
    segments = spec["path"].split("/")
    ref = doc(handle, *segments)
    if op == "add":
        return lambda: doc(handle, *segments[:-1]).add(door.sub(spec["value"]), key=segments[-1])
    if op == "set":
        return lambda: ref.set(door.sub(spec["value"]))
    if op == "update":
        return lambda: ref.update(spec["fields"])
    if op in ("delete", "cascadeDelete"):
        return ref.delete
    if op == "batch":
        batch = handle.batch()
        batch.set(ref, door.sub(spec["value"]))
        batch.update(doc(handle, "docs", "d1"), spec["fields"])
        return batch.commit
    return lambda: handle.transaction(lambda tx: (tx.get(doc(handle, "log", "anchor")), tx.update(ref, spec["fields"])))


def _commit_reading(handle: Montybase, path: str, value: Any) -> Any:
    """A commit whose reads hold `path` with `value` (a transaction's commit, sent as it is)."""
    params = {"reads": [{"path": path.split("/"), "value": value}], "writes": [{"op": "add", "path": ["log"], "value": {"n": 1}}]}
    return lambda: handle._backend.call("commit", params)


@pytest.mark.parametrize("row", [pytest.param(row, id=f"{row['grant']}-{row['principal']}-{row['op']}") for row in ROWS])
def test_door(doors, row):
    door = doors(row["grant"])
    if door.dirty:
        door.reset()
    handle, op, spec, expect = door.handles[row["principal"]], row["op"], OPS[row["op"]], row["expect"]
    if "after" not in spec:  # a read
        got: dict[str, Any] = {}
        assert reason(lambda: got.setdefault("value", _read(handle, op, spec))) == expect, row
        if expect == "allowed":
            assert got["value"] == _expected(door, row), row
        return

    before = door.state()
    door.dirty = True  # until the data is known to be unchanged
    if op in READING:
        right = door.sub(spec.get("value", {i: CASES["seed"][f"docs/{i}"] for i in row.get("ids", ())}))
        wrong = reason(_commit_reading(handle, spec["path"], door.sub(spec["wrong"])))
        assert wrong == ("CONFLICT" if expect == "allowed" else expect), ("a wrong guess", row)
        assert door.state() == before, row
        action = _commit_reading(handle, spec["path"], right)
    else:
        action = _write(door, handle, op, spec)
    assert reason(action) == expect, row
    after = door.state()
    if expect != "allowed":
        assert after == before, f"a refused {op} changed the data: {row}"
        door.dirty = False
        return
    for path, value in spec["after"].items():
        assert doc(door.handles["admin"], *path.split("/")).get() == door.sub(value), (path, row)
    if op in READING:
        assert len(after["log"]) == len(before["log"]) + 1, row
