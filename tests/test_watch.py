"""Unit tests of server/watch.py: the Watcher over a Tree, driven as the database drives it
(apply a commit's operations, then `notify(changes)` once), and `apply_changes`."""

from __future__ import annotations

import random
from typing import Any

import pytest

from server.query import parse_query
from server.tree import Change, Tree
from server.watch import Watcher


def apply_changes(docs: list[dict[str, Any]], changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The docs after `changes` (sequential indexes), as clients rebuild them (the reference
    for python_client/listen.py and js_client/listen.js)."""
    docs = list(docs)
    for change in changes:
        if change["oldIndex"] >= 0:
            docs.pop(change["oldIndex"])
        if change["newIndex"] >= 0:
            docs.insert(change["newIndex"], {"id": change["id"], "value": change["value"]})
    return docs


class Harness:
    """A tree, its watcher, and what every subscription has received."""

    def __init__(self, documents: dict[str, Any] | None = None):
        self.tree = Tree({("c",): dict(documents)} if documents else {})
        self.watcher = Watcher(self.tree)
        self.messages: dict[int, list[dict[str, Any]]] = {}
        self.docs: dict[int, list[dict[str, Any]]] = {}

    def _sink(self, tags: tuple[Any, ...], message: dict[str, Any]) -> None:
        for tag in tags:
            subscription = tag[0]
            self.messages.setdefault(subscription, []).append(message)
            if "docs" in message:
                self.docs[subscription] = message["docs"]
            elif "changes" in message:
                self.docs[subscription] = apply_changes(self.docs[subscription], message["changes"])

    def watch(self, query: dict[str, Any]) -> int:
        tag: list[int] = []  # a listener's tag: here, its subscription id, known once it is made
        subscription, snapshot = self.watcher.watch_query(parse_query({"path": ["c"], **query}), self._sink, tag)
        tag.append(subscription)
        self._sink((tag,), snapshot)
        return subscription

    def watch_document(self, doc_id: str) -> int:
        tag: list[int] = []
        subscription, snapshot = self.watcher.watch_document(("c", doc_id), self._sink, tag)
        tag.append(subscription)
        self._sink((tag,), snapshot)
        return subscription

    def commit(self, *operations: tuple[str, str, Any]) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
        """Apply ("set", id, document) / ("delete", id, None) operations as one commit."""
        changes: list[Change] = []
        for op, doc_id, document in operations:
            if op == "set":
                changes.append(self.tree.put(("c", doc_id), document))
            else:
                changes.extend(self.tree.remove(("c", doc_id)))
        deliveries = self.watcher.notify(changes)
        for sink, tags, message in deliveries:
            sink(tags, message)
        return deliveries

    def last(self, subscription: int) -> dict[str, Any]:
        return self.messages[subscription][-1]

    def count(self, subscription: int) -> int:
        return len(self.messages.get(subscription, []))

    def selected(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"id": i, "value": d} for i, d in self.tree.select(parse_query({"path": ["c"], **query}))]


def summary(message: dict[str, Any]) -> list[tuple[str, str, int, int]]:
    return [(c["type"], c["id"], c["oldIndex"], c["newIndex"]) for c in message["changes"]]


# apply_changes


def test_apply_changes_uses_sequential_indexes():
    docs = [{"id": i, "value": {}} for i in "abcd"]
    changes = [
        {"type": "removed", "id": "b", "value": {}, "oldIndex": 1, "newIndex": -1},  # a c d
        {"type": "added", "id": "x", "value": {"n": 1}, "oldIndex": -1, "newIndex": 0},  # x a c d
        {"type": "modified", "id": "d", "value": {"n": 2}, "oldIndex": 3, "newIndex": 1},  # x d a c
    ]
    out = apply_changes(docs, changes)
    assert out == [{"id": "x", "value": {"n": 1}}, {"id": "d", "value": {"n": 2}}, {"id": "a", "value": {}},
                   {"id": "c", "value": {}}]
    assert [d["id"] for d in docs] == list("abcd"), "the input is not changed"
    assert apply_changes(docs, []) == docs


# Targets


def test_first_snapshot_lists_every_document_as_added():
    h = Harness({"b": {"s": 1}, "a": {"s": 2}, "c": {"t": 0}})
    sub = h.watch({"orderBy": [["s", "desc"]]})
    first = h.last(sub)
    assert [d["id"] for d in first["docs"]] == ["a", "b"]
    assert summary(first) == [("added", "a", -1, 0), ("added", "b", -1, 1)]
    assert first["changes"][0]["value"] == {"s": 2}


def test_notify_without_listeners_sends_nothing():
    h = Harness()
    assert h.commit(("set", "a", {"n": 1})) == []
    assert len(h.watcher) == 0


def test_a_document_target_sees_its_document_only():
    h = Harness({"y": {"n": 0}})
    sub = h.watch_document("x")
    assert h.last(sub) == {"id": "x", "value": None, "exists": False}
    h.commit(("set", "y", {"n": 1}))
    assert h.count(sub) == 1
    h.commit(("set", "x", {"n": 1}))
    assert h.last(sub) == {"id": "x", "value": {"n": 1}, "exists": True}
    h.commit(("set", "x", {"n": 2}), ("set", "x", {"n": 3}))
    assert h.count(sub) == 3 and h.last(sub)["value"] == {"n": 3}
    h.commit(("delete", "x", None))
    assert h.last(sub) == {"id": "x", "value": None, "exists": False}


def test_the_value_sent_is_the_stored_document_not_a_copy():
    h = Harness({"a": {"n": {"deep": 1}}})
    sub = h.watch({})
    stored = h.tree.document(("c", "a"))
    assert h.last(sub)["docs"][0]["value"] is stored and h.last(sub)["changes"][0]["value"] is stored
    h.commit(("set", "a", {"n": {"deep": 2}}))
    assert h.last(sub)["changes"][0]["value"] is h.tree.document(("c", "a"))
    assert stored == {"n": {"deep": 1}}  # replaced, not changed: what was sent reads the same


def test_equal_queries_share_one_computation_and_one_message():
    h = Harness({"a": {"s": 1}})
    first = h.watch({"orderBy": [["s", "desc"]], "limit": 3})
    second = h.watch({"orderBy": [["s", "desc"]], "limit": 3})
    other = h.watch({"orderBy": [["s", "desc"]], "limit": 4})
    deliveries = h.commit(("set", "b", {"s": 2}))
    assert [[tag[0] for tag in tags] for _, tags, _ in deliveries] == [[first, second], [other]]
    assert deliveries[0][2] is not deliveries[1][2]
    assert h.watcher.unwatch(first) and not h.watcher.unwatch(first)
    h.commit(("set", "c", {"s": 3}))
    assert h.count(first) == 2 and h.count(second) == 3
    assert h.watcher.unwatch(second) and h.watcher.unwatch(other) and len(h.watcher) == 0
    assert h.commit(("set", "d", {"s": 4})) == []


def test_a_change_below_a_full_window_is_skipped():
    h = Harness({k: {"s": v} for k, v in zip("abcde", (5, 4, 3, 2, 1))})
    sub = h.watch({"orderBy": [["s", "desc"]], "limit": 3})
    assert h.commit(("set", "e", {"s": 1.5})) == []
    assert h.commit(("set", "f", {"s": 0})) == []
    assert h.commit(("delete", "d", None)) == []
    h.commit(("set", "e", {"s": 10}))
    assert summary(h.last(sub)) == [("removed", "c", 2, -1), ("added", "e", -1, 0)]


def test_limit_to_last_window():
    h = Harness({k: {"s": v} for k, v in zip("abcd", (1, 2, 3, 4))})
    sub = h.watch({"orderBy": [["s", "asc"]], "limitToLast": 2})
    assert [d["id"] for d in h.last(sub)["docs"]] == ["c", "d"]
    h.commit(("set", "e", {"s": 5}))
    assert summary(h.last(sub)) == [("removed", "c", 0, -1), ("added", "e", -1, 1)]
    before = h.count(sub)
    h.commit(("set", "a", {"s": 0.5}))
    assert h.count(sub) == before


def test_unwindowed_target_moves_one_entry_per_change():
    h = Harness({k: {"s": v} for k, v in zip("abcde", (5, 4, 3, 2, 1))})
    sub = h.watch({"orderBy": [["s", "desc"]]})
    h.commit(("set", "a", {"s": 2.5}))
    assert summary(h.last(sub)) == [("modified", "a", 0, 2)]
    h.commit(("set", "b", {"t": 1}))  # loses the order field
    assert summary(h.last(sub)) == [("removed", "b", 0, -1)]
    assert h.last(sub)["changes"][0]["value"] == {"s": 4}, "a removed document carries its last value"


# Known bugs (strict: a fix turns them into XPASS)


def test_a_window_document_moving_down_is_the_only_change():
    h = Harness({k: {"s": v} for k, v in zip("abcde", (5, 4, 3, 2, 1))})
    sub = h.watch({"orderBy": [["s", "desc"]], "limit": 4})
    h.commit(("set", "a", {"s": 2.5}))
    assert [d["id"] for d in h.docs[sub]] == ["b", "c", "a", "d"]
    assert summary(h.last(sub)) == [("modified", "a", 0, 2)]


def test_an_offset_window_shifts_when_a_document_before_it_goes():
    h = Harness({k: {"s": v} for k, v in zip("abcd", (1, 2, 3, 4))})
    sub = h.watch({"orderBy": [["s", "asc"]], "offset": 1, "limit": 2})
    h.commit(("delete", "a", None))
    assert [d["id"] for d in h.docs[sub]] == ["c", "d"]


@pytest.mark.parametrize("clause", [["t", "in", ["red", "green"]], ["t", "not-in", ["blue"]],
                                    ["tags", "array-contains-any", ["x"]], ["o", "==", {"k": 1}]])
def test_queries_with_list_or_object_values_can_be_watched(clause):
    h = Harness({"a": {"t": "red", "tags": ["x"], "o": {"k": 1}}})
    sub = h.watch({"where": [clause]})
    assert [d["id"] for d in h.docs[sub]] == ["a"]


def test_true_and_one_are_different_queries():
    h = Harness({"t": {"v": True}, "one": {"v": 1}})
    on_true = h.watch({"where": [["v", "==", True]]})
    on_one = h.watch({"where": [["v", "==", 1]]})
    assert [d["id"] for d in h.docs[on_true]] == ["t"]
    assert [d["id"] for d in h.docs[on_one]] == ["one"]


def test_an_unwindowed_target_lists_each_document_once_per_commit():
    h = Harness({"a": {"n": 1}})
    sub = h.watch({})
    h.commit(("set", "a", {"n": 2}), ("set", "a", {"n": 3}))
    assert summary(h.last(sub)) == [("modified", "a", 0, 0)]
    before = h.count(sub)
    h.commit(("set", "x", {"n": 0}), ("delete", "x", None))
    assert h.count(sub) == before


# Random commits: whatever the target, the changes rebuild the query's result


QUERIES = [
    {},
    {"where": [["team", "==", "red"]]},
    {"orderBy": [["s", "asc"]]},
    {"orderBy": [["s", "desc"]], "limit": 5},
    {"orderBy": [["s", "desc"]], "limit": 1},
    {"orderBy": [["s", "asc"]], "limitToLast": 4},
    {"where": [["team", "==", "blue"]], "orderBy": [["s", "desc"]], "limit": 3},
    {"where": [["s", ">=", 10]], "orderBy": [["s", "asc"], ["team", "desc"]]},
    {"orderBy": [["s", "asc"]], "startAfter": [5], "limit": 4},
    {"orderBy": [["s", "desc"]], "endAt": [8]},
    {"limit": 6},
    {"orderBy": [["team", "asc"], ["s", "desc"]], "limit": 7},
]


@pytest.mark.parametrize("seed", range(6))
def test_random_commits_keep_every_listener_equal_to_its_query(seed):
    rng = random.Random(seed)
    h = Harness({f"d{i}": {"s": rng.randrange(20), "team": rng.choice(["red", "blue"])} for i in range(10)})
    subs = {h.watch(query): query for query in QUERIES}
    subs.update({h.watch(query): query for query in QUERIES[::3]})  # shared targets too

    def random_operation() -> tuple[str, str, Any]:
        doc_id = f"d{rng.randrange(25)}"
        roll = rng.random()
        if roll < 0.2:
            return ("delete", doc_id, None)
        if roll < 0.3:
            return ("set", doc_id, {"team": rng.choice(["red", "blue"])})  # no s: out of ordered queries
        return ("set", doc_id, {"s": rng.choice([rng.randrange(20), rng.random() * 20]), "team": rng.choice(["red", "blue"])})

    for step in range(150):
        operations = [random_operation() for _ in range(rng.choice([1, 1, 1, 2, 3, 5]))]
        counts = {sub: h.count(sub) for sub in subs}
        h.commit(*operations)
        for sub, query in subs.items():
            assert h.count(sub) - counts[sub] <= 1, "at most one message per commit"
            if h.count(sub) > counts[sub]:
                message = h.last(sub)
                assert message.keys() == {"changes"} and message["changes"], (step, query, message)
                for change in message["changes"]:
                    assert change["type"] in ("added", "modified", "removed")
                    assert (change["oldIndex"] < 0) == (change["type"] == "added"), change
                    assert (change["newIndex"] < 0) == (change["type"] == "removed"), change
            assert h.docs[sub] == h.selected(query), (seed, step, query, operations)
