"""Access rules over real sockets (DESIGN.md §8, research/security.md §2): the shared table of
`tests/cases/rules.json`, a config without rules, the open rule's warning, data type rules,
size limits and rate limits, all through the public Python client against an in-process server.

Every wait is bounded. "Nothing was notified" is checked with a marker document listened to on
the same handle: snapshots of one handle arrive in commit order, so once the marker's snapshot
has arrived, any snapshot of an earlier (refused) write would have arrived too.
"""

from __future__ import annotations

import json
import queue
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/procs.py

from conftest import Served, hand_handshake, server_bucket  # noqa: E402
from procs import Proc, server_command  # noqa: E402
from python_client import Montybase, Query, doc, increment  # noqa: E402
from python_client.errors import (  # noqa: E402
    ConnectionLostError,
    InternalError,
    InvalidArgumentError,
    LimitExceededError,
    MontybaseError,
    PermissionDeniedError,
    RateLimitedError,
    ValidationError,
)
from server.config import DEFAULTS, OPEN_RULES, create_config, open_database, public_key  # noqa: E402
from server.transport import Limits  # noqa: E402

CASES_FILE = Path(__file__).parent / "cases" / "rules.json"
CASES: dict[str, Any] = json.loads(CASES_FILE.read_text(encoding="utf-8"))
ROWS: list[dict[str, Any]] = CASES["rows"]
PRINCIPALS = ("anonymous", "user", "owner", "other", "admin")
OPERATIONS = ("get", "list", "listen", "create", "update", "delete", "set")
WRITES = ("create", "update", "delete", "set")
WAIT = 10.0  # seconds: the bound of every wait for a snapshot
PASSWORD = "correct horse battery"


# Helpers


def serve(loop_thread, folder: Path, rules: dict[str, Any] | None, limits: dict[str, Any] | None = None) -> Served:
    """A real server whose database has these `rules` (None: no `rules` key) and `limits`."""
    config = {**DEFAULTS, **({} if rules is None else {"rules": rules}), **({"limits": limits} if limits else {})}
    database = open_database(config, server_bucket())
    return Served(loop_thread, folder, database=database, limits=Limits.from_config(limits))


def reason(fn) -> str:
    """"allowed" if fn() returns, else the reason of the Montybase error it raises."""
    try:
        fn()
    except MontybaseError as exc:
        return exc.reason
    return "allowed"


class Snapshots:
    """A listener callback that queues snapshots, read back with a deadline."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()

    def __call__(self, snapshot: Any) -> None:
        self.queue.put(snapshot)

    def next(self, timeout: float = WAIT) -> Any:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no snapshot within {timeout}s") from None

    def pending(self) -> list[Any]:
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out


class Quiet:
    """Proves that refused writes notified nobody: `handle` listens to `ref` and to a marker
    document; `check()` writes the marker, waits for its snapshot, then asserts that `ref`'s
    listener got nothing after its first snapshot."""

    def __init__(self, handle: Montybase, ref: Any, marker: tuple[str, str] = ("marker", "m")):
        self.handle, self.marker = handle, doc(handle, *marker)
        self.watched, self.markers = Snapshots(), Snapshots()
        self.stops = [ref.on_snapshot(self.watched), self.marker.on_snapshot(self.markers)]
        self.first = self.watched.next()
        self.markers.next()
        self.count = 0

    def sync(self) -> list[Any]:
        """Every snapshot of the watched listener until now (after its first)."""
        self.count += 1
        self.marker.set({"n": self.count})
        assert self.markers.next().value == {"n": self.count}
        return self.watched.pending()

    def check(self) -> None:
        assert self.sync() == [], "a refused write notified a listener"

    def close(self) -> None:
        for stop in self.stops:
            stop()


# The shared table (tests/cases/rules.json)


class Table:
    """The table's server, one handle per principal, and the seed data."""

    def __init__(self, served: Served, handles: dict[str, Montybase], uids: dict[str, str]):
        self.served, self.handles = served, handles
        self.placeholders = {f"${name}": uid for name, uid in uids.items()}
        self.dirty = True
        collections = {path.split("/")[0] for path in CASES["seed"]}
        collections |= {row["path"].split("/")[0] for row in ROWS if row["path"]}
        self.collections = sorted(collections)

    def sub(self, value: Any) -> Any:
        """The value with "$owner", "$other", "$user" replaced by the real uids."""
        if isinstance(value, str):
            return self.placeholders.get(value, value)
        if isinstance(value, list):
            return [self.sub(item) for item in value]
        if isinstance(value, dict):
            return {key: self.sub(item) for key, item in value.items()}
        return value

    def segments(self, path: str) -> tuple[str, ...]:
        return tuple(self.sub(part) for part in path.split("/")) if path else ()

    def reset(self) -> None:
        admin = self.handles["admin"]
        batch = admin.batch()
        for name in self.collections:
            batch.delete(doc(admin, name))
        for path, value in CASES["seed"].items():
            batch.set(doc(admin, *self.segments(path)), self.sub(value))
        batch.commit()
        self.dirty = False


@pytest.fixture(scope="module")
def table(loop_thread, tmp_path_factory):
    served = serve(loop_thread, tmp_path_factory.mktemp("rules-table"), CASES["rules"])
    handles = {"anonymous": served.client(), "admin": served.client(admin=True)}
    uids = {}
    for name in ("owner", "other", "user"):
        handles[name] = served.client()
        uids[name] = handles[name].sign_up(f"{name}@rules.example", PASSWORD)["uid"]
    yield Table(served, handles, uids)
    for handle in handles.values():
        handle.close()
    served.stop()


def _row_id(index: int, row: dict[str, Any]) -> str:
    return f"{index:03d}-{row['principal']}-{row['op']}-{row['path'] or '(root)'}-{row['expect']}"


# Rows that fail because of bugs in server/ (reported; not fixed here). Strict: a fix makes them XPASS.
def _params() -> list[Any]:
    return [pytest.param(row, id=_row_id(index, row)) for index, row in enumerate(ROWS)]


def test_the_table_is_well_formed():
    assert isinstance(CASES["description"], str) and CASES["description"]
    assert CASES["rules"] and CASES["seed"] and len(ROWS) > 100
    for row in ROWS:
        assert row["principal"] in PRINCIPALS and row["op"] in OPERATIONS, row
        assert set(row) <= {"principal", "op", "path", "expect", "value", "fields", "ids", "exists", "query", "note"}, row
        if row["op"] in ("create", "set"):
            assert isinstance(row["value"], dict), row
        if row["op"] == "update":
            assert isinstance(row["fields"], dict), row
        if row["op"] in ("list", "listen") and row["expect"] == "allowed" and len(row["path"].split("/")) % 2:
            assert isinstance(row["ids"], list), row
    # Each grant, each operation, each principal.
    seen = {(row["path"].split("/")[0], row["op"], row["principal"]) for row in ROWS}
    for collection in ("locked", "public", "members", "owned", "profiles", "staff"):
        for op in OPERATIONS:
            for principal in PRINCIPALS:
                assert (collection, op, principal) in seen, (collection, op, principal)


def _first_snapshot(ref_or_query: Any) -> Any:
    snapshots = Snapshots()
    stop = ref_or_query.on_snapshot(snapshots)
    try:
        return snapshots.next()
    finally:
        stop()


def _check_ids(table: Table, row: dict[str, Any], ids: list[str]) -> None:
    expected = table.sub(row["ids"])
    ordered = bool((row.get("query") or {}).get("orderBy"))
    assert (ids if ordered else sorted(ids)) == (expected if ordered else sorted(expected)), row


@pytest.mark.parametrize("row", _params())
def test_rule_table(table, row):
    if table.dirty:
        table.reset()
    handle, admin = table.handles[row["principal"]], table.handles["admin"]
    segments = table.segments(row["path"])
    ref = doc(handle, *segments)
    is_document = len(segments) % 2 == 0 and bool(segments)
    op, expect = row["op"], row["expect"]

    if op == "get":
        got: dict[str, Any] = {}
        assert reason(lambda: got.setdefault("value", ref.get())) == expect, row
        if expect == "allowed" and "value" in row:
            assert got["value"] == table.sub(row["value"]), row
        return

    if op == "list":
        query = Query(ref, table.sub(row.get("query") or {}))
        results: dict[str, Any] = {}
        ways = {"query": lambda: results.setdefault("query", query.stream()),
                "count": lambda: results.setdefault("count", query.count())}
        if "query" not in row:
            ways["get"] = lambda: results.setdefault("get", ref.get())
        for way, fn in ways.items():
            assert reason(fn) == expect, (way, row)
        if expect == "allowed":
            _check_ids(table, row, [entry["id"] for entry in results["query"]])
            assert results["count"] == len(row["ids"]), row
            if "get" in results:
                _check_ids(table, row, list(results["get"]))
        return

    if op == "listen":
        target = ref if is_document else Query(ref, table.sub(row.get("query") or {}))
        snapshot: dict[str, Any] = {}
        assert reason(lambda: snapshot.setdefault("first", _first_snapshot(target))) == expect, row
        if expect == "allowed":
            first = snapshot["first"]
            if is_document:
                assert first.exists is row["exists"], row
                if "value" in row:
                    assert first.value == table.sub(row["value"]), row
            else:
                _check_ids(table, row, [entry["id"] for entry in first.docs])
        return

    # Writes: compare the stored state before and after, with the admin key.
    table.dirty = True
    stored = doc(admin, *segments)
    before = stored.get()
    if op == "create":
        parent = doc(handle, *segments[:-1])
        action = lambda: parent.add(table.sub(row["value"]), key=segments[-1])  # noqa: E731
    elif op == "update":
        action = lambda: ref.update(table.sub(row["fields"]))  # noqa: E731
    elif op == "delete":
        action = lambda: ref.delete()  # noqa: E731
    else:
        action = lambda: ref.set(table.sub(row["value"]))  # noqa: E731
    assert reason(action) == expect, row
    after = stored.get()
    if expect != "allowed":
        assert after == before, f"a refused {op} changed the data: {row}"
    elif op in ("create", "set"):
        assert after == table.sub(row["value"]), row
    elif op == "update":
        assert after == {**before, **table.sub(row["fields"])}, row
    else:
        assert after == ({} if not is_document else None), row


# Without rules, and the open rule of a fresh config


def test_without_rules_client_keys_can_do_nothing_and_the_admin_key_everything(loop_thread, tmp_path):
    served = serve(loop_thread, tmp_path, None)
    admin, anonymous, user = served.client(admin=True), served.client(), served.client()
    try:
        user.sign_up("someone@rules.example", PASSWORD)  # accounts work; they grant nothing here
        doc(admin, "c").set({"n": 1}, key="a")
        for handle in (anonymous, user):
            calls = [
                lambda: doc(handle, "c", "a").get(), lambda: doc(handle, "c").get(), lambda: doc(handle, "c").count(),
                lambda: doc(handle, "c").stream(), lambda: doc(handle, "c").add({"n": 2}),
                lambda: doc(handle, "c").set({"n": 2}, key="b"), lambda: doc(handle, "c", "a").update({"n": 3}),
                lambda: doc(handle, "c", "a").delete(), lambda: doc(handle, "c").delete(), lambda: doc(handle).get(),
                lambda: doc(handle, "c", "a").on_snapshot(lambda s: None), lambda: doc(handle, "c").on_snapshot(lambda s: None),
                lambda: doc(handle, "c", "missing").get(), lambda: doc(handle, "c", "missing").update({"n": 1}),
            ]
            assert [reason(call) for call in calls] == ["PERMISSION_DENIED"] * len(calls)
        assert doc(admin, "c", "a").get() == {"n": 1}
        doc(admin, "c", "a").update({"n": 4})
        assert doc(admin).get() == {"c": {"a": {"n": 4}}}
        assert doc(admin, "c").delete() == {"a": {"n": 4}}
    finally:
        for handle in (admin, anonymous, user):
            handle.close()
        served.stop()


def test_a_fresh_config_carries_the_open_rule(tmp_path):
    config = create_config(tmp_path / "montybase.json")
    assert config["rules"] == OPEN_RULES == {"**": {"read": "public", "write": "public"}}
    on_disk = json.loads((tmp_path / "montybase.json").read_text())
    assert on_disk["rules"] == OPEN_RULES
    assert open_database(config, ":memory:").rules.open
    assert not open_database({**config, "rules": {"**": {"read": "user"}}}, ":memory:").rules.open
    assert not open_database({**config, "rules": {"scores": {"read": "public"}}}, ":memory:").rules.open


def _start_and_stop(folder: Path) -> str:
    """Run `python -m server` in `folder` until it serves, stop it; its stderr."""
    with Proc(server_command("--port", "0"), cwd=folder) as proc:
        proc.endpoint()
        assert proc.stop() == 0, proc.describe()
        return proc.stderr


OPEN_WARNING = 'the rule "**" in montybase.json opens every collection'
NO_RULES_WARNING = "no rules in montybase.json"


@pytest.mark.not_on_postgres("the rules' warnings at start, from montybase.json: nothing a storage changes")
def test_the_server_warns_at_every_start_while_the_open_rule_is_in_force(tmp_path):
    first = _start_and_stop(tmp_path)  # a first run: the config is created with the open rule
    assert OPEN_WARNING in first and "WARNING" in first.split(OPEN_WARNING)[0].splitlines()[-1]
    assert OPEN_WARNING in _start_and_stop(tmp_path)  # and again at the next start

    config_path = tmp_path / "montybase.json"
    config = json.loads(config_path.read_text())
    config["rules"] = {"scores": {"read": "public", "create": "user"}}
    config_path.write_text(json.dumps(config))
    closed = _start_and_stop(tmp_path)
    assert OPEN_WARNING not in closed and NO_RULES_WARNING not in closed
    assert not [line for line in closed.splitlines() if "WARNING" in line and "rule" in line]

    del config["rules"]
    config_path.write_text(json.dumps(config))
    none = _start_and_stop(tmp_path)
    assert NO_RULES_WARNING in none and OPEN_WARNING not in none


@pytest.mark.not_on_postgres("montybase.json is refused before any storage opens")
def test_a_broken_schema_stops_the_server_at_start_with_a_clear_error(tmp_path):
    config = create_config(tmp_path / "montybase.json")
    config["rules"] = {"scores": {"read": "public", "schema": {"type": "nonsense"}}}
    (tmp_path / "montybase.json").write_text(json.dumps(config))
    with Proc(server_command("--port", "0"), cwd=tmp_path) as proc:
        assert proc.wait() == 1, proc.describe()
        assert "/rules/scores/schema: not a valid JSON Schema" in proc.stderr, proc.describe()
        assert "Traceback" not in proc.stderr


# Listeners only show what the caller may read, as it changes


@pytest.fixture
def owned(loop_thread, tmp_path):
    """A server with an owner-only collection, an admin handle and two signed-in handles."""
    served = serve(loop_thread, tmp_path, {"owned": {"read": "owner", "write": "owner", "owner": "ownerId"},
                                           "marker": {"read": "public", "write": "public"}})
    admin, alice, bob = served.client(admin=True), served.client(), served.client()
    uids = {"alice": alice.sign_up("alice@rules.example", PASSWORD)["uid"],
            "bob": bob.sign_up("bob@rules.example", PASSWORD)["uid"]}
    yield served, admin, alice, bob, uids
    for handle in (admin, alice, bob):
        handle.close()
    served.stop()


def test_a_document_listener_shows_exists_false_once_the_document_belongs_to_someone_else(owned):
    _, admin, alice, _, uids = owned
    doc(admin, "owned").set({"ownerId": uids["alice"], "n": 1}, key="a")
    snapshots = Snapshots()
    stop = doc(alice, "owned", "a").on_snapshot(snapshots)
    first = snapshots.next()
    assert first.exists and first.value == {"ownerId": uids["alice"], "n": 1}
    doc(admin, "owned", "a").update({"ownerId": uids["bob"], "secret": "for bob"})
    gone = snapshots.next()
    assert gone.exists is False and gone.value is None
    doc(admin, "owned", "a").update({"secret": "still for bob"})
    doc(admin, "owned", "a").update({"ownerId": uids["alice"], "secret": "for alice"})
    seen = [snapshots.next()]
    while seen[-1].value is None:
        seen.append(snapshots.next())
    assert all(s.exists is False and s.value is None for s in seen[:-1])
    assert seen[-1].exists and seen[-1].value == {"ownerId": uids["alice"], "n": 1, "secret": "for alice"}
    stop()


def test_a_query_listener_drops_a_document_that_changes_owner(owned):
    _, admin, alice, _, uids = owned
    doc(admin, "owned").set({"ownerId": uids["alice"], "n": 1}, key="a")
    doc(admin, "owned").set({"ownerId": uids["alice"], "n": 2}, key="b")
    doc(admin, "owned").set({"ownerId": uids["bob"], "n": 3}, key="c")
    snapshots = Snapshots()
    stop = doc(alice, "owned").order_by("n", "desc").limit(5).on_snapshot(snapshots)
    assert [d["id"] for d in snapshots.next().docs] == ["b", "a"]
    doc(admin, "owned", "b").update({"ownerId": uids["bob"]})
    after = snapshots.next()
    assert [d["id"] for d in after.docs] == ["a"]
    assert [(c["type"], c["id"]) for c in after.changes] == [("removed", "b")]
    doc(admin, "owned", "c").update({"ownerId": uids["alice"]})
    assert [d["id"] for d in snapshots.next().docs] == ["c", "a"]
    stop()


def test_a_query_listener_on_one_document_stops_showing_it_once_it_belongs_to_someone_else(owned):
    _, admin, alice, _, uids = owned
    doc(admin, "owned").set({"ownerId": uids["alice"], "n": 1}, key="a")
    snapshots = Snapshots()
    stop = doc(alice, "owned", "a").query().on_snapshot(snapshots)
    assert [d["id"] for d in snapshots.next().docs] == ["a"]
    doc(admin, "owned", "a").set({"ownerId": uids["bob"], "secret": "for bob"})
    after = snapshots.next()
    stop()
    assert after.docs == [], f"alice still sees bob's document: {after.docs}"


def test_reading_below_a_document_is_no_existence_oracle(loop_thread, tmp_path):
    served = serve(loop_thread, tmp_path / "oracle", {"owned": {"read": "owner", "write": "owner", "owner": "ownerId"},
                                                      "**": {"read": "public"}})
    admin, bob = served.client(admin=True), served.client()
    try:
        bob.sign_up("bob@rules.example", PASSWORD)
        doc(admin, "owned").set({"ownerId": "someone-else", "x": 1}, key="exists")
        existing = reason(lambda: doc(bob, "owned", "exists", "x").get())
        missing = reason(lambda: doc(bob, "owned", "missing", "x").get())
        assert existing == "PERMISSION_DENIED"
        assert missing == existing, "the answer tells whether owned/exists exists"
    finally:
        admin.close()
        bob.close()
        served.stop()


def test_a_batch_with_one_refused_write_writes_nothing(owned):
    _, admin, alice, _, uids = owned
    doc(admin, "owned").set({"ownerId": uids["bob"], "n": 1}, key="bobs")
    quiet = Quiet(admin, doc(admin, "owned"))
    batch = alice.batch()
    batch.set(doc(alice, "owned", "mine"), {"ownerId": uids["alice"], "n": 1})
    batch.update(doc(alice, "owned", "bobs"), {"n": 2})
    with pytest.raises(PermissionDeniedError):
        batch.commit()
    assert doc(admin, "owned").get() == {"bobs": {"ownerId": uids["bob"], "n": 1}}
    quiet.check()
    quiet.close()


# Every door: what a delete takes along, what a transaction reads


DOOR_RULES = {
    "profiles": {"read": "owner", "write": "owner"},  # the document id is the owner's uid
    "profiles/*/badges": {"read": "owner", "owner": "holder"},  # only the admin key writes badges
    "profiles/*/notes": {"read": "owner", "write": "owner", "owner": "author"},
    "rooms": {"read": "public", "write": "public"},
    "rooms/*/messages": {"read": "public", "create": "public"},
    "rooms/*/drafts": {"create": "public"},  # nobody reads them
    "notes": {"read": "owner", "write": "owner", "owner": "author"},
    "marker": {"read": "public", "write": "public"},
}


@pytest.fixture
def doors(loop_thread, tmp_path):
    """A server with DOOR_RULES: an admin handle, two signed-in handles and an anonymous one."""
    served = serve(loop_thread, tmp_path, DOOR_RULES)
    admin, alice, bob, anonymous = served.client(admin=True), served.client(), served.client(), served.client()
    uids = {"alice": alice.sign_up("alice@rules.example", PASSWORD)["uid"],
            "bob": bob.sign_up("bob@rules.example", PASSWORD)["uid"]}
    yield admin, alice, bob, anonymous, uids
    for handle in (admin, alice, bob, anonymous):
        handle.close()
    served.stop()


def _denied(fn) -> PermissionDeniedError:
    with pytest.raises(PermissionDeniedError) as caught:
        fn()
    return caught.value


def test_a_delete_that_would_take_a_protected_document_along_is_refused_and_deletes_nothing(doors):
    admin, alice, bob, _, uids = doors
    alice_id, bob_id = uids["alice"], uids["bob"]
    doc(admin, "profiles").set({"name": "Alice"}, key=alice_id)
    doc(admin, "profiles", alice_id, "notes").set({"author": alice_id}, key="n1")
    doc(admin, "profiles", alice_id, "badges").set({"holder": alice_id, "why": "spam"}, key="banned")
    doc(admin, "profiles", bob_id, "badges").set({"holder": bob_id}, key="banned")  # bob has no profile
    before = {name: doc(admin, "profiles", uid).get() for name, uid in uids.items()}
    below = {(uid, sub): doc(admin, "profiles", uid, sub).get() for uid in uids.values() for sub in ("badges", "notes")}
    quiet = Quiet(admin, doc(admin, "profiles", alice_id, "badges"))
    refused = _denied(doc(alice, "profiles", alice_id).delete)
    assert refused.data["document"] == ["profiles", alice_id, "badges", "banned"]
    assert f"profiles/{alice_id}/badges/banned" in str(refused)
    refused = _denied(doc(bob, "profiles", bob_id).delete)  # whether or not the profile exists
    assert refused.data["document"] == ["profiles", bob_id, "badges", "banned"]
    assert {name: doc(admin, "profiles", uid).get() for name, uid in uids.items()} == before
    assert {(uid, sub): doc(admin, "profiles", uid, sub).get() for uid in uids.values() for sub in ("badges", "notes")} == below
    quiet.check()
    quiet.close()


def test_a_public_delete_of_a_room_leaves_its_create_only_messages(doors):
    admin, _, _, anonymous, _ = doors
    doc(anonymous, "rooms").set({"name": "r1"}, key="r1")
    doc(anonymous, "rooms", "r1", "messages").add({"text": "hi"}, key="m1")
    doc(anonymous, "rooms", "r2", "messages").add({"text": "yo"}, key="m2")  # room r2 does not exist
    for room, message in (("r1", "m1"), ("r2", "m2")):
        refused = _denied(doc(anonymous, "rooms", room).delete)
        assert refused.data["document"] == ["rooms", room, "messages", message]
    batch = anonymous.batch()  # what the batch itself wrote is taken along too
    batch.set(doc(anonymous, "rooms", "r3", "messages", "m3"), {"text": "new"})
    batch.delete(doc(anonymous, "rooms", "r3"))
    assert _denied(batch.commit).data["document"] == ["rooms", "r3", "messages", "m3"]
    assert doc(admin, "rooms").get() == {"r1": {"name": "r1"}}
    assert doc(admin, "rooms", "r1", "messages").get() == {"m1": {"text": "hi"}}
    assert doc(admin, "rooms", "r2", "messages").get() == {"m2": {"text": "yo"}}
    assert doc(admin, "rooms", "r3", "messages").get() == {}


def test_a_delete_whose_subcollections_allow_it_takes_them_along(doors):
    admin, alice, _, _, uids = doors
    alice_id, bob_id = uids["alice"], uids["bob"]
    doc(alice, "profiles").set({"name": "Alice"}, key=alice_id)
    doc(alice, "profiles", alice_id, "notes").add({"author": alice_id}, key="n1")
    doc(alice, "profiles", alice_id, "notes").add({"author": alice_id}, key="n2")
    assert doc(alice, "profiles", alice_id).delete() == {"name": "Alice"}
    assert doc(admin, "profiles", alice_id).get() is None
    assert doc(admin, "profiles", alice_id, "notes").get() == {}
    doc(admin, "profiles").set({"name": "Bob"}, key=bob_id)
    doc(admin, "profiles", bob_id, "badges").set({"holder": bob_id}, key="banned")
    doc(admin, "profiles", bob_id).delete()  # the admin key passes every rule
    assert doc(admin, "profiles", bob_id, "badges").get() == {}


def test_a_get_below_a_readable_document_is_no_existence_oracle(doors):
    admin, _, _, anonymous, _ = doors
    doc(admin, "rooms").set({"name": "r1"}, key="r1")
    doc(admin, "rooms", "r1", "drafts").set({"text": "secret"}, key="d1")
    doc(admin, "rooms").set({"name": "r2"}, key="r2")  # no drafts
    answers = {path: reason(doc(anonymous, *path.split("/")).get) for path in (
        "rooms/r1/drafts/d1", "rooms/r1/drafts/d9", "rooms/r1/drafts", "rooms/r2/drafts")}
    assert set(answers.values()) == {"PERMISSION_DENIED"}, answers


def _commit_reading(handle: Montybase, path: list[str], value: Any) -> Any:
    """A transaction's commit as it crosses the wire: one read, one write to the marker."""
    return lambda: handle._backend.call("commit", {"reads": [{"path": path, "value": value}],
                                                   "writes": [{"op": "set", "path": ["marker", "tx"], "value": {}}]})


def test_a_transaction_read_of_what_the_reader_may_not_read_is_refused_right_or_wrong(doors):
    admin, alice, _, anonymous, uids = doors
    doc(admin, "rooms").set({"name": "r1"}, key="r1")
    doc(admin, "rooms", "r1", "drafts").set({"text": "secret"}, key="d1")
    doc(admin, "notes").set({"author": uids["alice"], "text": "alice's"}, key="n1")
    right = {"d1": {"text": "secret"}}
    assert reason(doc(anonymous, "rooms", "r1", "drafts").get) == "PERMISSION_DENIED"
    for value in (right, {}, {"d1": {"text": "guess"}}):
        assert reason(_commit_reading(anonymous, ["rooms", "r1", "drafts"], value)) == "PERMISSION_DENIED"
        assert reason(_commit_reading(alice, ["rooms", "r1", "drafts"], value)) == "PERMISSION_DENIED"
    for value in ({"author": uids["alice"], "text": "alice's"}, None):
        assert reason(_commit_reading(anonymous, ["notes", "n1"], value)) == "PERMISSION_DENIED"
    assert doc(admin, "marker").get() == {}


def test_a_transaction_reads_a_collection_as_a_get_does_only_what_the_reader_may_list(doors):
    admin, alice, _, _, uids = doors
    doc(admin, "notes").set({"author": uids["alice"], "n": 1}, key="a1")
    doc(admin, "notes").set({"author": uids["bob"], "n": 2}, key="b1")
    attempts: list[Any] = []

    def count_mine(tx: Any) -> int:
        mine = tx.get(doc(alice, "notes"))
        attempts.append(sorted(mine))
        doc(admin, "notes").set({"author": uids["bob"], "n": len(attempts)}, key=f"b{len(attempts) + 1}")  # not hers
        if len(attempts) == 1:
            doc(admin, "notes").set({"author": uids["alice"], "n": 3}, key="a2")  # hers: the read changed
        tx.set(doc(alice, "marker", "tx"), {"mine": len(mine)})
        return len(mine)

    assert alice.transaction(count_mine) == 2
    assert attempts == [["a1"], ["a1", "a2"]]
    assert doc(admin, "marker", "tx").get() == {"mine": 2}


def test_a_transaction_read_of_the_root_or_a_top_level_collection_is_answered_under_the_open_rule(served):
    client, admin = served.client(), served.client(admin=True)
    try:
        doc(admin, "c").set({"n": 1}, key="a")
        assert reason(_commit_reading(client, [], {})) == "PERMISSION_DENIED"
        assert reason(_commit_reading(client, [], {"c": {"a": {"n": 1}}})) == "PERMISSION_DENIED"
        assert doc(admin, "marker").get() == {}
        assert reason(_commit_reading(client, ["c"], {})) == "CONFLICT"
        assert reason(_commit_reading(client, ["c"], {"a": {"n": 1}})) == "allowed"
        assert reason(_commit_reading(admin, [], {"c": {"a": {"n": 1}}, "marker": {"tx": {}}})) == "allowed"
    finally:
        client.close()
        admin.close()


# Data type rules


SCHEMA_RULES = {
    "scores": {
        "read": "public", "write": "user",
        "schema": {
            "type": "object", "additionalProperties": False, "required": ["name", "score"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 16},
                "score": {"type": "integer", "minimum": 0, "maximum": 100},
                "tags": {"type": "array", "items": {"type": "string"}},
                "author": {"type": "string"}, "created": {"type": "integer"},
            },
        },
        "immutable": ["name"],
        "serverFields": {"author": "uid", "created": "now"},
    },
    "marker": {"read": "public", "write": "public"},
}


@pytest.fixture
def scores(loop_thread, tmp_path):
    served = serve(loop_thread, tmp_path, SCHEMA_RULES)
    admin, user = served.client(admin=True), served.client()
    uid = user.sign_up("player@rules.example", PASSWORD)["uid"]
    yield admin, user, uid
    admin.close()
    user.close()
    served.stop()


def _validation_errors(fn) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as caught:
        fn()
    errors = caught.value.data["errors"]
    assert errors and all(set(error) == {"path", "keyword", "message"} for error in errors), errors
    assert all(isinstance(error["message"], str) and error["message"] for error in errors)
    return errors


def test_a_document_breaking_the_schema_is_refused_with_the_errors(scores):
    admin, user, _ = scores
    quiet = Quiet(admin, doc(admin, "scores"))
    errors = _validation_errors(lambda: doc(user, "scores").add({"name": "", "score": 101, "junk": 1}, key="a"))
    assert {(e["path"], e["keyword"]) for e in errors} == {("/name", "minLength"), ("/score", "maximum"),
                                                           ("/", "additionalProperties")}
    errors = _validation_errors(lambda: doc(user, "scores").set({"name": "x"}, key="a"))
    assert [(e["path"], e["keyword"]) for e in errors] == [("/", "required")]
    errors = _validation_errors(lambda: doc(user, "scores").add({"name": "x", "score": 1, "tags": ["a", 2]}))
    assert [(e["path"], e["keyword"]) for e in errors] == [("/tags/1", "type")]
    assert doc(admin, "scores").get() == {}
    quiet.check()
    quiet.close()


def test_the_schema_checks_the_document_after_the_merge_and_the_transforms(scores):
    admin, user, _ = scores
    ref = doc(user, "scores", "a")
    ref.set({"name": "ann", "score": 90})
    ref.update({"score": 95})  # a partial update: the merged document is valid
    quiet = Quiet(admin, doc(admin, "scores"))
    errors = _validation_errors(lambda: ref.update({"score": "high"}))
    assert [(e["path"], e["keyword"]) for e in errors] == [("/score", "type")]
    errors = _validation_errors(lambda: ref.update({"score": increment(10)}))  # 95 + 10 > 100
    assert [(e["path"], e["keyword"]) for e in errors] == [("/score", "maximum")]
    assert "105" in errors[0]["message"]
    errors = _validation_errors(lambda: ref.update({"extra": True}))
    assert [(e["path"], e["keyword"]) for e in errors] == [("/", "additionalProperties")]
    assert doc(admin, "scores", "a").get()["score"] == 95
    quiet.check()
    ref.update({"score": increment(5)})  # exactly the maximum
    assert doc(admin, "scores", "a").get()["score"] == 100
    quiet.close()


def test_server_fields_are_filled_on_create_and_never_change(scores):
    admin, user, uid = scores
    before = int(time.time() * 1000)
    doc(user, "scores").add({"name": "ann", "score": 1, "author": "forged", "created": 1}, key="a")
    stored = doc(admin, "scores", "a").get()
    assert stored["author"] == uid, "a client value of a server field is overwritten on create"
    assert before - 1000 <= stored["created"] <= int(time.time() * 1000) + 1000
    ref = doc(user, "scores", "a")
    for fields in ({"author": "someone"}, {"created": 2}, {"name": "bob"}):
        errors = _validation_errors(lambda: ref.update(fields))
        assert [e["keyword"] for e in errors] == ["immutable"], errors
        assert errors[0]["path"] == "/" + next(iter(fields))  # a JSON pointer, as schema errors give
    errors = _validation_errors(lambda: ref.set({**stored, "author": "someone", "name": "bob"}))  # a set may not change them
    assert {e["path"] for e in errors} == {"/author", "/name"}
    ref.update({"score": 3})
    ref.set({**stored, "score": 4})  # a set that repeats them is fine
    assert doc(admin, "scores", "a").get() == {**stored, "score": 4}
    ref.set({"score": 5})  # and one that leaves them out keeps them
    assert doc(admin, "scores", "a").get() == {**stored, "score": 5}


def test_setting_your_own_profile_keeps_its_server_set_and_immutable_fields(loop_thread, tmp_path):
    """The README's profiles rule: a set of your profile need not repeat `joined`."""
    served = serve(loop_thread, tmp_path, {"profiles": {"read": "public", "write": "owner", "owner": "$id",
                                                        "immutable": ["joined", "meta.since"],
                                                        "serverFields": {"joined": "now"}}})
    user, admin = served.client(), served.client(admin=True)
    try:
        me = user.sign_up("amor@rules.example", PASSWORD)
        ref = doc(user, "profiles", me["uid"])
        ref.set({"name": "Amor", "meta": {"since": 2020, "city": "Oslo"}})
        joined = doc(admin, "profiles", me["uid"]).get()["joined"]
        ref.set({"name": "Amor B.", "meta": {"city": "Bergen"}})
        assert doc(admin, "profiles", me["uid"]).get() == {"name": "Amor B.", "joined": joined,
                                                           "meta": {"since": 2020, "city": "Bergen"}}
        errors = _validation_errors(lambda: ref.set({"name": "Amor", "meta": 7}))  # no place to keep meta.since
        assert [e["path"] for e in errors] == ["/meta/since"]
    finally:
        user.close()
        admin.close()
        served.stop()


def test_a_broken_schema_is_refused_when_the_config_loads():
    config = {**DEFAULTS, "rules": {"bad": {"read": "public", "schema": {"type": "nonsense"}}}}
    with pytest.raises(InvalidArgumentError, match=r"/rules/bad/schema: not a valid JSON Schema"):
        open_database(config, ":memory:")
    with pytest.raises(InvalidArgumentError, match=r"/rules/bad/schema"):
        open_database({**config, "rules": {"bad": {"schema": {"minimum": "zero"}}}}, ":memory:")


def test_a_remote_ref_fails_cleanly_over_the_wire(loop_thread, tmp_path):
    rules = {"refs": {"read": "public", "write": "public", "schema": {"$ref": "https://example.org/x.json"}}}
    try:
        served = serve(loop_thread, tmp_path, rules)
    except InvalidArgumentError:
        return  # refused when the config loads: clean
    client = served.client()
    try:
        with pytest.raises(MontybaseError) as caught:
            doc(client, "refs").set({"a": 1}, key="k")
        assert not isinstance(caught.value, InternalError), caught.value
    finally:
        client.close()
        served.stop()


def test_a_remote_ref_opens_no_connection_even_over_the_wire(monkeypatch, loop_thread, tmp_path):
    """Checking a write against a schema with a remote $ref opens no socket but loopback ones."""
    real_connect = socket.socket.connect
    remote: list[Any] = []

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            remote.append(address)
            raise OSError("no network in tests")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    rules = {"refs": {"read": "public", "write": "public", "schema": {"$ref": "https://example.org/x.json"}}}
    try:
        served = serve(loop_thread, tmp_path, rules)
    except InvalidArgumentError:
        return
    client, admin = served.client(), served.client(admin=True)
    try:
        with pytest.raises(MontybaseError):
            doc(client, "refs").set({"a": 1}, key="k")
        assert doc(admin, "refs").get() == {}
    finally:
        client.close()
        admin.close()
        served.stop()
    assert remote == []


# Size limits


SIZE_LIMITS = {"maxDocBytes": 300, "maxWrites": 5, "maxResults": 5, "maxMessageBytes": 2048}
SIZE_RULES = {
    "docs": {"read": "public", "write": "public"},
    "small": {"read": "public", "write": "public", "maxDocBytes": 60},
    "capped": {"read": "public", "write": "public", "maxDocs": 2},
    "marker": {"read": "public", "write": "public"},
}


@pytest.fixture
def sized(loop_thread, tmp_path):
    served = serve(loop_thread, tmp_path, SIZE_RULES, SIZE_LIMITS)
    admin, client = served.client(admin=True), served.client()
    yield served, admin, client
    admin.close()
    client.close()
    served.stop()


def _doc_bytes(value: dict[str, Any]) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _limit(fn) -> dict[str, Any]:
    with pytest.raises(LimitExceededError) as caught:
        fn()
    return caught.value.data


def test_document_bytes_global_and_per_collection(sized):
    _, admin, client = sized
    quiet = Quiet(admin, doc(admin, "docs"))
    quiet_small = Quiet(admin, doc(admin, "small"), marker=("marker", "s"))
    fits = {"s": "x" * (300 - _doc_bytes({"s": ""}))}
    assert _doc_bytes(fits) == 300
    doc(client, "docs").set(fits, key="fits")
    assert quiet.watched.next().docs[0]["id"] == "fits"
    big = {"s": "é" * 150}  # 300 characters of text, more bytes
    assert _limit(lambda: doc(client, "docs").set(big, key="big")) == {"limit": 300, "actual": _doc_bytes(big)}
    assert _limit(lambda: doc(client, "docs").add({**fits, "more": 1})) == {
        "limit": 300, "actual": _doc_bytes({**fits, "more": 1})}
    assert _limit(lambda: doc(client, "docs", "fits").update({"more": 1}))["limit"] == 300  # after the merge
    small = {"s": "x" * 60}
    assert _limit(lambda: doc(client, "small").set(small, key="a")) == {"limit": 60, "actual": _doc_bytes(small)}
    doc(client, "small").set({"s": "x" * 40}, key="b")
    assert quiet_small.watched.next().docs[0]["id"] == "b"
    assert doc(admin, "docs").get() == {"fits": fits} and doc(admin, "small").get() == {"b": {"s": "x" * 40}}
    quiet.check()
    quiet_small.check()
    quiet.close()
    quiet_small.close()


def test_documents_per_collection(sized):
    _, admin, client = sized
    ref = doc(client, "capped")
    ref.add({"n": 1}, key="a")
    ref.add({"n": 2}, key="b")
    quiet = Quiet(admin, doc(admin, "capped"))
    assert _limit(lambda: ref.add({"n": 3}, key="c")) == {"limit": 2, "actual": 3}
    assert _limit(lambda: ref.set({"n": 3}, key="c")) == {"limit": 2, "actual": 3}
    quiet.check()
    ref.set({"n": 20}, key="b")  # replacing one is not a new one
    ref.update({"n": 10}, key="a")
    ref.delete(key="b")
    assert len(quiet.sync()) == 3
    batch = client.batch()
    batch.set(doc(client, "capped", "x"), {"n": 1})
    batch.set(doc(client, "capped", "y"), {"n": 2})
    assert _limit(batch.commit) == {"limit": 2, "actual": 3}
    quiet.check()
    assert doc(admin, "capped").get() == {"a": {"n": 10}}
    ref.add({"n": 3}, key="c")
    assert ref.count() == 2
    quiet.close()


def test_writes_per_batch(sized):
    _, admin, client = sized
    quiet = Quiet(admin, doc(admin, "docs"))
    batch = client.batch()
    for i in range(6):
        batch.set(doc(client, "docs", f"d{i}"), {"i": i})
    assert _limit(batch.commit) == {"path": "/writes", "limit": 5, "actual": 6}
    assert doc(admin, "docs").get() == {}
    quiet.check()
    batch = client.batch()
    for i in range(5):
        batch.set(doc(client, "docs", f"d{i}"), {"i": i})
    batch.commit()
    assert doc(client, "docs").count() == 5
    quiet.close()


def _six_documents(admin: Montybase) -> None:
    for start in (0, 3):  # maxWrites (5) bounds the admin key's batches too
        batch = admin.batch()
        for i in range(start, start + 3):
            batch.set(doc(admin, "docs", f"d{i}"), {"i": i})
        batch.commit()


def test_results_per_read(sized):
    _, admin, client = sized
    _six_documents(admin)
    ref = doc(client, "docs")
    assert _limit(ref.get) == {"limit": 5, "actual": 6}
    assert _limit(ref.stream) == {"limit": 5, "actual": 6}
    assert _limit(lambda: ref.order_by("i").stream()) == {"limit": 5, "actual": 6}
    assert [d["id"] for d in ref.order_by("i").limit(5).stream()] == [f"d{i}" for i in range(5)]
    assert len(ref.where("i", ">", 0).get()) == 5
    assert ref.count() == 6  # an aggregate returns one number
    assert len(doc(admin, "docs").get()) == 6  # the admin key is not limited


def test_a_read_over_max_results_says_what_to_change(sized):
    _, admin, client = sized
    _six_documents(admin)
    ref = doc(client, "docs")
    with pytest.raises(LimitExceededError, match="add a limit of at most 5"):
        ref.stream()
    with pytest.raises(LimitExceededError) as caught:
        ref.order_by("i").limit(2000).stream()  # a limit, just too high: "add a limit" would mislead
    assert "asked for up to 2000" in str(caught.value) and "lower it to 5" in str(caught.value)
    assert "add a limit" not in str(caught.value)
    with pytest.raises(LimitExceededError, match="asked for up to 9"):
        ref.order_by("i").limit_to_last(9).on_snapshot(lambda snapshot: None)


def test_results_per_read_also_bound_a_listener(sized):
    _, admin, client = sized
    _six_documents(admin)
    snapshots = Snapshots()
    try:
        stop = doc(client, "docs").on_snapshot(snapshots)
    except LimitExceededError as exc:
        assert exc.data == {"limit": 5, "actual": 6}
        return
    first = snapshots.next()
    stop()
    assert len(first.docs) <= 5, f"a listener returned {len(first.docs)} documents, above maxResults 5"


class RawClient:
    """Just enough of the protocol to send one sealed request of our choosing."""

    def __init__(self, served: Served):
        from websockets.sync.client import connect

        self.ws = connect(served.url, compression=None, proxy=None, open_timeout=5, max_size=None, legacy=True)
        self.session, _ = hand_handshake(self.ws, "client", served.config["apiKey"], public_key(served.config["serverKey"]))

    def call(self, raw: bytes) -> dict[str, Any]:
        self.ws.send(self.session.seal(raw))
        return json.loads(self.session.open(self.ws.recv(timeout=5)))

    def close(self) -> None:
        self.ws.close()


def _set_request(size: int, request_id: int = 7) -> bytes:
    """A `set` request of exactly `size` bytes."""
    def frame(n: int) -> bytes:
        return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "set",
                           "params": {"path": ["docs", "big"], "value": {"s": "x" * n}}}, separators=(",", ":")).encode()
    raw = frame(0)
    raw = frame(size - len(raw))
    assert len(raw) == size
    return raw


def test_a_message_just_over_the_limit_gets_a_limit_exceeded_answer(sized):
    served, admin, _ = sized
    quiet = Quiet(admin, doc(admin, "docs"))
    raw = RawClient(served)
    try:
        answer = raw.call(_set_request(2049))
        assert answer["error"]["data"] == {"reason": "LIMIT_EXCEEDED", "limit": 2048, "actual": 2049}
        assert answer["error"]["code"] == LimitExceededError.code
        # At the limit the message is read and answered; its document is then refused by maxDocBytes.
        at_limit = raw.call(_set_request(2048, request_id=8))
        assert at_limit["id"] == 8 and at_limit["error"]["data"]["reason"] == "LIMIT_EXCEEDED"
        assert at_limit["error"]["data"]["limit"] == 300
    finally:
        raw.close()
    assert doc(admin, "docs").get() == {}
    quiet.check()
    quiet.close()


def test_a_message_just_over_the_limit_is_a_limit_exceeded_error_in_the_client(sized):
    _, admin, client = sized
    client._backend.timeout = 2.0  # bound the wait; the call should fail at once
    with pytest.raises(LimitExceededError) as caught:
        doc(client, "docs").set({"s": "x" * 2100}, key="big")
    assert caught.value.data["limit"] == 2048 and caught.value.data["actual"] > 2048
    assert doc(admin, "docs").get() == {}


def test_a_message_far_over_the_limit_closes_the_connection_with_1009(sized):
    _, admin, client = sized
    quiet = Quiet(admin, doc(admin, "docs"))
    client._backend.timeout = 10.0
    with pytest.raises(ConnectionLostError) as caught:
        doc(client, "docs").set({"s": "x" * 40_000}, key="huge")
    assert "1009" in str(caught.value) or caught.value.data.get("closeCode") == 1009, caught.value
    assert doc(admin, "docs").get() == {}
    quiet.check()
    doc(client, "docs").set({"n": 1}, key="after")  # the next call connects again
    assert doc(admin, "docs").get() == {"after": {"n": 1}}
    quiet.close()


# Rate limits


RATE_RULES = {"limited": {"read": "public", "write": "public", "rate": {"create": "3/s", "get": "2/s"}}}


@pytest.fixture
def rated(loop_thread, tmp_path):
    served = serve(loop_thread, tmp_path, RATE_RULES)
    first, second, admin = served.client(), served.client(), served.client(admin=True)
    yield first, second, admin
    for handle in (first, second, admin):
        handle.close()
    served.stop()


def _rate_limited(fn) -> int:
    with pytest.raises(RateLimitedError) as caught:
        fn()
    wait_ms = caught.value.data["retryAfterMs"]
    assert isinstance(wait_ms, int) and 0 < wait_ms <= 1000, caught.value.data
    return wait_ms


def test_creates_are_rate_limited_per_connection_and_per_address(rated):
    first, second, admin = rated
    ref = doc(first, "limited")
    for i in range(3):
        ref.add({"i": i}, key=f"a{i}")
    _rate_limited(lambda: ref.add({"i": 3}, key="a3"))
    # Another connection from the same address (127.0.0.1) shares the address's bucket.
    wait_ms = _rate_limited(lambda: doc(second, "limited").add({"i": 4}, key="b0"))
    assert sorted(doc(admin, "limited").get()) == ["a0", "a1", "a2"]
    for i in range(5):  # the admin key is never rate limited
        doc(admin, "limited").add({"i": i}, key=f"admin{i}")
    time.sleep(min(wait_ms, 1000) / 1000 + 0.02)
    doc(second, "limited").add({"i": 4}, key="b0")
    assert "b0" in doc(admin, "limited").get()
    # Other operations have their own budget (update has none here).
    doc(first, "limited", "a0").update({"i": 10})


def test_a_transaction_read_spends_a_get_of_the_rate_as_a_get_does(rated):
    first, _, admin = rated
    doc(admin, "limited").set({"n": 1}, key="x")
    read = {"path": ["limited", "x"], "value": {"n": 1}}
    _rate_limited(lambda: first._backend.call("commit", {"reads": [read] * 3, "writes": [
        {"op": "set", "path": ["limited", "x"], "value": {"n": 2}}]}))  # get: 2/s
    assert doc(admin, "limited", "x").get() == {"n": 1}


def test_gets_are_rate_limited_and_work_again_after_the_wait(rated):
    first, second, _ = rated
    doc(first, "limited").set({"n": 1}, key="x")  # a set of a new document is a create
    ref = doc(first, "limited", "x")
    assert ref.get() == {"n": 1} and ref.get() == {"n": 1}
    wait_ms = _rate_limited(ref.get)
    _rate_limited(doc(second, "limited", "x").get)
    time.sleep(min(wait_ms, 1000) / 1000 + 0.02)
    assert ref.get() == {"n": 1}
