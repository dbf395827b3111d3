"""Subscriptions: the write path's changes in, one message per affected target out, handed to
each sink (a connection, an embedded handle) once with the tags of its listeners.

A query listener first gets every document of the result; after that, only `changes`, each
`{"type": "added"|"modified"|"removed", "id", "value", "oldIndex", "newIndex"}` with Firestore's
sequential indexes: apply them in order to the previous docs (remove at oldIndex when ≥ 0, then
insert at newIndex when ≥ 0) and you have the new docs. Listeners of equal queries share one
computation (a query is data); a change that cannot affect a result is skipped without running
the query; a result without a window is kept up to date by insertions, never recomputed.
Values are the stored documents themselves (replaced, never changed in place): a sink encodes
them or copies them, and must not change them.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Callable, Iterable
from typing import Any

from sortedcontainers import SortedList

from .query import OrderIndex, Query, field_value
from .tree import Change, Tree

__all__ = ["Sink", "Watcher", "nothing_readable", "query_key"]

Path = tuple[str, ...]
Sink = Callable[[tuple[Any, ...], dict[str, Any]], None]  # (tags of its listeners, snapshot or changes) → deliver it


def query_key(query: Query) -> str:
    """Equal for queries that select the same documents: JSON keeps true and 1 apart (Python's
    == does not) and holds lists and objects (which Python cannot hash)."""
    return json.dumps([getattr(query, name) for name in query.__slots__], default=repr, sort_keys=True)


def nothing_readable(target: dict[str, Any]) -> dict[str, Any]:
    """The snapshot of a listener whose caller may read nothing of its target ({"path"} or
    {"query"}, as subscribed): a missing document, or an empty result."""
    path = target.get("path")
    if path is not None and len(path) % 2 == 0:
        return {"id": path[-1], "value": None, "exists": False}
    return {"docs": [], "changes": []}


def _change(kind: str, doc_id: str, document: Any, old_index: int, new_index: int) -> dict[str, Any]:
    return {"type": kind, "id": doc_id, "value": document, "oldIndex": old_index, "newIndex": new_index}


class _Listeners:
    """Everyone listening to one target, grouped by sink: a sink gets each message once, with the
    tags of all its listeners (a connection's, say), in the order they subscribed."""

    def __init__(self) -> None:
        self.sinks: dict[Sink, dict[int, Any]] = {}  # sink → subscription → tag
        self.groups: list[tuple[Sink, tuple[Any, ...]]] = []

    def add(self, subscription: int, sink: Sink, tag: Any) -> None:
        self.sinks.setdefault(sink, {})[subscription] = tag
        self._regroup()

    def remove(self, subscription: int, sink: Sink) -> None:
        tags = self.sinks[sink]
        del tags[subscription]
        if not tags:
            del self.sinks[sink]
        self._regroup()

    def _regroup(self) -> None:
        self.groups = [(sink, tuple(tags.values())) for sink, tags in self.sinks.items()]


class _DocumentTarget(_Listeners):
    """One document, as seen by listeners who may read it only while they own it (`owner`:
    its owner field and their uid), or always (`owner` None)."""

    def __init__(self, path: Path, owner: tuple[tuple[str, ...], str | None] | None):
        super().__init__()
        self.path = path
        self.owner = owner

    def snapshot(self, tree: Tree) -> dict[str, Any]:
        document = tree.document(self.path)
        if self.owner is not None and document is not None and field_value(document, self.owner[0]) != self.owner[1]:
            document = None
        return {"id": self.path[-1], "value": document, "exists": document is not None}


class _WindowTarget(_Listeners):
    """A query with a window (limit, offset, cursors) or on one document: re-run, then diff."""

    def __init__(self, query: Query, tree: Tree):
        super().__init__()
        self.query = query
        self.result = tree.select(query)
        self.ids = {doc_id for doc_id, _ in self.result}
        self.order = OrderIndex(query.order_by, {})
        self.keys = [self.order.key(doc_id, doc) for doc_id, doc in self.result]  # sorted, ids last

    def docs(self) -> list[tuple[str, Any]]:
        return self.result

    def may_change(self, change: Change) -> bool:
        """False only when the result surely stays as it is."""
        query = self.query
        if len(query.path) % 2 == 0:
            return change.id == query.path[-1]
        if change.id in self.ids:
            return True
        matched = change.old is not None and query.admits(change.id, change.old)
        matches = change.new is not None and query.admits(change.id, change.new)
        if not (matched or matches):
            return False
        if query.offset:  # a document before the window, coming or going, shifts it
            return True
        if not matches:  # it left from outside the window: nothing moves
            return False
        full = query.limit is not None and len(self.result) >= query.limit
        if full and not (query.start or query.end) and self.result:
            key = self.order.key(change.id, change.new)
            return key is not None and key < self.keys[-1]
        return True

    def update(self, changes: list[Change], tree: Tree) -> list[dict[str, Any]]:
        """One change per document that was written, entered or left the window; the documents
        that only shifted are not reported (their positions follow from the others)."""
        if not any(self.may_change(change) for change in changes):
            return []
        new = tree.select(self.query)
        old_docs, new_docs = dict(self.result), dict(new)
        position = {doc_id: j for j, (doc_id, _) in enumerate(new)}
        affected = ({change.id for change in changes} & (old_docs.keys() | new_docs.keys())) | (
            old_docs.keys() ^ new_docs.keys()
        )
        keys = list(self.keys)  # becomes the new result's
        out = []
        for doc_id in sorted(affected, key=lambda i: (i in new_docs, position.get(i, 0))):  # leavers first
            old_index = new_index = -1
            if doc_id in old_docs:
                old_index = next(i for i, key in enumerate(keys) if key[-1] == doc_id)
                del keys[old_index]
            if doc_id in new_docs:
                key = self.order.key(doc_id, new_docs[doc_id])
                new_index = bisect.bisect_left(keys, key)
                keys.insert(new_index, key)
            kind = "modified" if old_index >= 0 and new_index >= 0 else "removed" if new_index < 0 else "added"
            out.append(_change(kind, doc_id, new_docs.get(doc_id, old_docs.get(doc_id)), old_index, new_index))
        self.result, self.ids, self.keys = new, set(new_docs), keys
        return out


class _OrderedTarget(_Listeners):
    """A query without a window: its result kept sorted; each change moves one entry."""

    def __init__(self, query: Query, tree: Tree):
        super().__init__()
        self.query = query
        self.order = OrderIndex(query.order_by, {})
        self.documents = {doc_id: doc for doc_id, doc in tree.select(query)}
        self.keys = SortedList(self.order.key(doc_id, doc) for doc_id, doc in self.documents.items())

    def docs(self) -> list[tuple[str, Any]]:
        return [(key[-1], self.documents[key[-1]]) for key in self.keys]

    def update(self, changes: list[Change], tree: Tree) -> list[dict[str, Any]]:
        out = []
        for change in changes:
            old_index = -1
            if change.id in self.documents:
                old_key = self.order.key(change.id, self.documents.pop(change.id))
                old_index = self.keys.index(old_key)
                del self.keys[old_index]
            new_index = -1
            if change.new is not None and self.query.admits(change.id, change.new):
                key = self.order.key(change.id, change.new)
                if key is not None:
                    self.keys.add(key)
                    self.documents[change.id] = change.new
                    new_index = self.keys.index(key)
            if old_index >= 0 or new_index >= 0:
                kind = "modified" if old_index >= 0 and new_index >= 0 else "removed" if new_index < 0 else "added"
                out.append(_change(kind, change.id, change.new if new_index >= 0 else change.old, old_index, new_index))
        return out


def _per_document(changes: Iterable[Change]) -> list[Change]:
    """One change per document a commit wrote (first old, last new); none for a document
    that a batch created and deleted again."""
    merged: dict[tuple[Path, str], Change] = {}
    for change in changes:
        key = (change.collection, change.id)
        first = merged.get(key)
        merged[key] = change if first is None else change._replace(old=first.old)
    return [change for change in merged.values() if change.old is not None or change.new is not None]


class Watcher:
    """Listeners of documents and queries over one tree. Not thread-safe: the database calls it
    under its lock, right after a write is applied, so each notification is of one moment."""

    def __init__(self, tree: Tree):
        self.tree = tree
        self._ids = itertools.count(1)
        self._documents: dict[Path, dict[Any, _DocumentTarget]] = {}  # path → owner filter → target
        self._queries: dict[str, _WindowTarget | _OrderedTarget] = {}  # by query_key
        self._targets: dict[int, tuple[_Listeners, Sink]] = {}

    def __len__(self) -> int:
        return len(self._targets)

    def watch_document(
        self, path: Path, sink: Sink, tag: Any, owner: tuple[tuple[str, ...], str | None] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Listen to one document: the subscription id and its snapshot {id, value, exists}.
        `sink` gets every later snapshot, with `tag` among the tags it names."""
        targets = self._documents.setdefault(path, {})
        target = targets.get(owner)
        if target is None:
            target = targets[owner] = _DocumentTarget(path, owner)
        return self._add(target, sink, tag), target.snapshot(self.tree)

    def watch_query(self, query: Query, sink: Sink, tag: Any) -> tuple[int, dict[str, Any]]:
        """Listen to a query: the subscription id and {docs, changes} with every document added."""
        key = query_key(query)
        target = self._queries.get(key)
        if target is None:
            windowed = (query.limit is not None or query.limit_to_last is not None or query.offset
                        or query.start or query.end or len(query.path) % 2 == 0)
            target = (_WindowTarget if windowed else _OrderedTarget)(query, self.tree)
            self._queries[key] = target
        docs = target.docs()
        snapshot = {
            "docs": [{"id": doc_id, "value": doc} for doc_id, doc in docs],
            "changes": [_change("added", doc_id, doc, -1, j) for j, (doc_id, doc) in enumerate(docs)],
        }
        return self._add(target, sink, tag), snapshot

    def _add(self, target: _Listeners, sink: Sink, tag: Any) -> int:
        subscription = next(self._ids)
        target.add(subscription, sink, tag)
        self._targets[subscription] = (target, sink)
        return subscription

    def unwatch(self, subscription: int) -> bool:
        """Stop one listener; False if it was not listening."""
        found = self._targets.pop(subscription, None)
        if found is None:
            return False
        target, sink = found
        target.remove(subscription, sink)
        if not target.sinks:
            if isinstance(target, _DocumentTarget):
                targets = self._documents[target.path]
                del targets[target.owner]
                if not targets:
                    del self._documents[target.path]
            else:
                del self._queries[query_key(target.query)]
        return True

    def notify(self, changes: Iterable[Change]) -> list[tuple[Sink, tuple[Any, ...], dict[str, Any]]]:
        """What one committed write sends: a document snapshot, or {"changes": […]} per query,
        once to each sink with the tags of its listeners."""
        deliveries: list[tuple[Sink, tuple[Any, ...], dict[str, Any]]] = []
        if not self._targets:
            return deliveries
        by_collection: dict[Path, list[Change]] = {}
        for change in _per_document(changes):
            by_collection.setdefault(change.collection, []).append(change)
        if self._documents:
            touched = {change.collection + (change.id,) for changes_of in by_collection.values() for change in changes_of}
            for path in touched & self._documents.keys():
                for target in self._documents[path].values():
                    snapshot = target.snapshot(self.tree)
                    deliveries.extend((sink, tags, snapshot) for sink, tags in target.groups)
        for target in self._queries.values():
            path = target.query.path
            relevant = by_collection.get(path if len(path) % 2 else path[:-1])
            if relevant:
                found = target.update(relevant, self.tree)
                if found:
                    message = {"changes": found}
                    deliveries.extend((sink, tags, message) for sink, tags in target.groups)
        return deliveries
