"""The JSON tree in memory: collections of documents; a mutation returns the changes it made."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any, NamedTuple

from .query import ElementIndex, OrderIndex, Query, count, filled, pause, pausing, run
from .values import settled, untracked

__all__ = ["Change", "Copy", "Frozen", "Tree", "build_index"]

Path = tuple[str, ...]
MAX_INDEXES_PER_COLLECTION = 16
# Index builds are handed to the caller's `build` (see `index`) only for collections at least
# this large: smaller ones build in a few milliseconds, less than handing them over costs.
HAND_OVER_BUILDS_FROM = 5000
LIST_STEP = 200_000  # ids list_ids lists in one C call (about 8 ms)
Build = Callable[[Path, tuple], OrderIndex]


def build_index(spec: tuple, documents: dict[str, Any] | Frozen) -> OrderIndex:
    """A new index for a spec: ("elements", field) or an order spec. A build from a Frozen view
    runs without the lock (see `begin_build`), so it pauses between its steps (query.pausing)."""
    with pausing() if type(documents) is Frozen else nullcontext():
        return ElementIndex(spec[1], documents) if spec and spec[0] == "elements" else OrderIndex(spec, documents)


def list_ids(docs: dict[str, Any]) -> list[str]:
    """The ids of a collection in its order, LIST_STEP per C call (a million in 35 to 45 ms in
    all), so the lock-free readers get the GIL in between; out of the garbage collector's walks."""
    ids: list[str] = untracked([])
    remaining = iter(docs)
    while len(ids) < len(docs):
        ids += itertools.islice(remaining, LIST_STEP)
    return ids


class Frozen:
    """A collection as it was when `Tree.begin_copy` was called, readable without the lock while
    others write: the first `count` of `ids` (the tree's list of its ids, which writes since
    only append to), each document as stored now unless a write since logged the one it
    replaced."""

    __slots__ = ("count", "docs", "ids", "replaced")

    def __init__(self, docs: dict[str, Any], replaced: dict[str, Any], ids: list[str]):
        self.docs, self.replaced, self.ids = docs, replaced, ids
        self.count = len(ids)

    def __len__(self) -> int:
        return self.count

    def chunks(self, size: int) -> Iterator[dict[str, Any]]:
        """The documents as they were, `size` ids at a time, as {id: document}.

        A chunk's documents are all read before the log is consulted for them: a write logs the
        old document before it replaces it, so a document written since begin_copy, before or
        after that read, is found in the log as it was. Read in C a chunk at a time (one
        document at a time in Python took 0.8 s of a million documents' 1.3 s snapshot)."""
        docs, replaced = self.docs, self.replaced
        remaining = itertools.islice(self.ids, self.count)
        while ids := tuple(itertools.islice(remaining, size)):
            chunk = dict(zip(ids, map(docs.get, ids)))
            for doc_id in chunk.keys() & replaced.keys():
                chunk[doc_id] = replaced[doc_id]
            yield chunk

    def items(self) -> Iterator[tuple[str, Any]]:
        for chunk in self.chunks(256):  # about 0.1 ms of an index build's work each
            yield from chunk.items()
            filled(len(chunk))  # an index build fills its list as it reads


class Copy(NamedTuple):
    """What `Tree.begin_copy` returns: the collections, and the log that keeps them as they were."""

    collections: dict[Path, Frozen]
    replaced: dict[Path, dict[str, Any]]


class _Replaced(Exception):
    """What a query read changed while an index of it was built elsewhere."""


class Change(NamedTuple):
    """One document written: `old` or `new` is None where it did not / does not exist."""

    collection: Path
    id: str
    old: Any
    new: Any


class Tree:
    """Collections keyed by their path (`("users",)`, `("users", "u1", "posts")`), each a dict
    of id → document. Stored documents are never changed in place: a write replaces them, so
    a shallow copy of the collections is a consistent snapshot. Documents are stored `shaped`
    (those with the same fields share one table of keys): `put` shapes what it stores (and takes
    it out of the garbage collector's walks: `settled`), the storages what they load
    (decode_snapshot a chunk at a time, where the copies reuse the memory of what they replace).
    """

    def __init__(self, collections: dict[Path, dict[str, Any]] | None = None):
        self.collections: dict[Path, dict[str, Any]] = collections or {}
        for docs in self.collections.values():
            untracked(docs)
        # collection → its ids in the order they came, kept while its documents are only added
        # and replaced, so that a copy (a snapshot, an index build) lists nothing under the lock
        # (a million ids: 35 to 45 ms, which writers waited); None once one is removed, until the
        # next copy lists them again.
        self._ids: dict[Path, list[str] | None] = {path: list_ids(docs) for path, docs in self.collections.items()}
        self._indexes: dict[Path, dict[tuple, OrderIndex]] = {}
        self._evicted: list[OrderIndex] = []  # to free in parts (free_evicted)
        # collection → the change logs of the index builds under way outside the lock
        self._building: dict[Path, list[list[tuple[str, Any, Any]]]] = {}
        # per copy under way (begin_copy, begin_build): collection → id → the document before its first write since
        self._copies: list[dict[Path, dict[str, Any]]] = []
        self._build_copies: dict[int, dict[Path, dict[str, Any]]] = {}  # id of a build's log → its copy's log
        # path → the collections nested below it, in the order they appeared (dicts as ordered sets)
        self._nested: dict[Path, dict[Path, None]] = {}
        for collection in self.collections:
            self._nest(collection)

    def _nest(self, collection: Path) -> None:
        for depth in range(1, len(collection)):
            self._nested.setdefault(collection[:depth], {})[collection] = None

    def _unnest(self, collection: Path) -> None:
        for depth in range(1, len(collection)):
            below = self._nested[collection[:depth]]
            del below[collection]
            if not below:
                del self._nested[collection[:depth]]

    # Reads (they return stored objects: callers copy before handing them out)

    def document(self, path: Path) -> Any:
        """The document at a document path, or None."""
        docs = self.collections.get(path[:-1])
        return None if docs is None else docs.get(path[-1])

    def read(self, path: Path) -> Any:
        """A collection as {id: document} in id order, a document, or a field inside one.

        A path that is neither an existing collection nor document reads the field it names
        in the nearest existing document above it: ("users", uid, "stats") is that user's
        `stats` field. What does not exist reads as None ({} for a collection path).
        """
        if not path:  # reserved collections (`__accounts__`) are not part of the readable tree
            return {p[0]: self.read(p) for p in sorted(self.collections) if len(p) == 1 and not p[0].startswith("__")}
        if len(path) % 2:
            docs = self.collections.get(path)
            if docs:
                return {doc_id: docs[doc_id] for (doc_id,) in self.index(path, ()).entries}
        else:
            docs = self.collections.get(path[:-1])
            if docs is not None and path[-1] in docs:
                return docs[path[-1]]
        found, value = self.field(path)
        if found:
            return value
        return {} if len(path) % 2 else None

    def field(self, path: Path) -> tuple[bool, Any]:
        """Whether the value a path names inside the nearest existing document at or above it
        is there, and that value (the document itself for an existing document path)."""
        doc_path, value = self.addressed(path)
        if value is None:
            return False, None
        for key in path[len(doc_path):]:
            if type(value) is not dict or key not in value:
                return False, None
            value = value[key]
        return True, value

    def addressed(self, path: Path) -> tuple[Path, Any]:
        """The nearest existing document at or above `path`, and its path; else the document
        path `path` names (itself, or its parent for an odd path) and None."""
        for depth in range(len(path) - len(path) % 2, 1, -2):
            document = self.document(path[:depth])
            if document is not None:
                return path[:depth], document
        return (path if len(path) % 2 == 0 else path[:-1]), None

    def index(self, collection: Path, spec: tuple, build: Build | None = None) -> OrderIndex:
        """The index of a collection for an order spec (or ("elements", field): an
        ElementIndex), built on first use: by `build(collection, spec)` for a large collection
        when given (see `begin_build`). At most MAX_INDEXES_PER_COLLECTION are kept per
        collection: the least recently used goes first."""
        found = self._indexes.get(collection, {}).get(spec)
        if found is None:
            docs = self.collections.get(collection, {})
            found = build(collection, spec) if build and len(docs) >= HAND_OVER_BUILDS_FROM else build_index(spec, docs)
        if collection in self.collections:  # (a build elsewhere may have seen it emptied)
            self._keep(collection, spec, found)
        return found

    def _keep(self, collection: Path, spec: tuple, index: OrderIndex) -> None:
        indexes = self._indexes.setdefault(collection, {})
        indexes.pop(spec, None)
        while len(indexes) >= MAX_INDEXES_PER_COLLECTION:
            if len(self._evicted) >= MAX_INDEXES_PER_COLLECTION:  # evicted by listeners, no query freed them: at once
                del self._evicted[0]
            self._evicted.append(indexes.pop(next(iter(indexes))))
        indexes[spec] = index  # last: the most recently used

    def free_evicted(self) -> None:
        """Free the indexes evicted since, a part of their entries at a time (to call without
        the lock). Dropped at once, the last reference to a 100,000-entry index freed every
        entry in one C call, holding the GIL, so every other connection, for 10 ms and more.
        An index a query still holds (see `_over`) is left to that query, to go when it ends."""
        while self._evicted:
            try:
                index = self._evicted.pop()
            except IndexError:  # another thread took the last one meanwhile
                return
            if sys.getrefcount(index) > 2:  # (this name and the call's argument)
                continue
            parts = index.entries._lists
            with pausing():  # (called without the lock)
                while parts:
                    parts.pop()  # a list of at most a few thousand entries: a fraction of a millisecond
                    pause()

    def indexes(self, collection: Path) -> list[tuple]:
        """The specs of a collection's indexes, least recently used first."""
        return list(self._indexes.get(collection, ()))

    def begin_build(self, collection: Path) -> tuple[Frozen, list[tuple[str, Any, Any]]]:
        """A collection as it is now, to build an index from while others write, and the log of
        the changes made to it from now on, to give `finish_build`. A Frozen view (its ids, and
        the documents writes replace meanwhile), not a copy: the garbage collector's young
        passes walked a copy of 100,000 documents twice, holding every thread 5 ms each time."""
        log: list[tuple[str, Any, Any]] = []
        self._building.setdefault(collection, []).append(log)
        replaced: dict[Path, dict[str, Any]] = {}
        self._copies.append(replaced)
        self._build_copies[id(log)] = replaced
        return self._frozen(collection, replaced), log

    def finish_build(self, collection: Path, index: OrderIndex | None, log: list[tuple[str, Any, Any]]) -> None:
        """Catch an index built from `begin_build`'s copy up with the changes made since (None:
        the build failed, only stop logging)."""
        logs = self._building[collection]
        logs.remove(log)
        if not logs:
            del self._building[collection]
        replaced = self._build_copies.pop(id(log))
        self._copies = [other for other in self._copies if other is not replaced]
        if index is not None:
            for doc_id, old, new in log:
                index.update(doc_id, old, new)

    def begin_copy(self) -> Copy:
        """Every collection as it is now, to read while others write (a snapshot); each write
        from now on logs the document it replaces, until `end_copy`. Costs nothing per document
        unless documents were removed since the last copy (then their ids are listed again)."""
        replaced: dict[Path, dict[str, Any]] = {}
        self._copies.append(replaced)
        return Copy({path: self._frozen(path, replaced) for path in self.collections}, replaced)

    def _frozen(self, collection: Path, replaced: dict[Path, dict[str, Any]]) -> Frozen:
        log = replaced.setdefault(collection, {})
        docs = self.collections.get(collection)
        if docs is None:
            return Frozen({}, log, [])
        ids = self._ids[collection]
        if ids is None:
            ids = self._ids[collection] = list_ids(docs)
        return Frozen(docs, log, ids)

    def end_copy(self, copy: Copy) -> None:
        """Stop logging for a copy from `begin_copy`."""
        self._copies = [replaced for replaced in self._copies if replaced is not copy.replaced]

    def select(self, query: Query, build: Build | None = None) -> list[tuple[str, Any]]:
        """Run a query over its collection, or over the one document its path names; `build`
        builds the indexes of a large collection it lacks (see `index`)."""
        return self._over(query, build, run)

    def count(self, query: Query, build: Build | None = None) -> int:
        """How many documents `select` would return (counted in the index when it can be)."""
        return self._over(query, build, count)

    def _over(self, query: Query, build: Build | None, read: Callable[..., Any]) -> Any:
        path = query.path
        if len(path) % 2:
            docs = self.collections.get(path)
            if not docs:
                return read(query, {}, None)
            if build is None:
                return read(query, docs, lambda spec: self.index(path, spec))

            used: dict[tuple, OrderIndex] = {}

            def index(spec: tuple) -> OrderIndex:
                used[spec] = self.index(path, spec, build)
                kept = self._indexes.get(path, {})
                # While a build let writers in, the collection may have been emptied and filled
                # again, or an index this query holds evicted (and no longer kept up to date).
                if self.collections.get(path) is not docs or any(kept.get(s) is not i for s, i in used.items()):
                    raise _Replaced
                return used[spec]

            try:
                return read(query, docs, index)
            except _Replaced:
                return self._over(query, None, read)  # (built in place this time: rare)
        document = self.document(path) if path else None
        return read(query, {} if document is None else {path[-1]: document}, None)

    def subcollections(self, path: Path) -> list[Path]:
        """Collections nested anywhere below a document or collection path."""
        return list(self._nested.get(path, ()))

    # Writes (the database calls these after journaling)

    def put(self, path: Path, document: Any) -> Change:
        """Create or replace the document at `path` (stored `settled`)."""
        collection, doc_id = path[:-1], path[-1]
        document = settled(document)
        docs = self.collections.get(collection)
        if docs is None:
            docs = self.collections[collection] = {}
            self._ids[collection] = untracked([])
            self._nest(collection)
        old = docs.get(doc_id)
        for replaced in self._copies:  # before the write: see Frozen.chunks
            replaced.setdefault(collection, {}).setdefault(doc_id, old)
        docs[doc_id] = document
        untracked(docs)  # (given a dict, a dict is followed again: CPython's rule)
        if old is None and (ids := self._ids[collection]) is not None:
            ids.append(doc_id)
        for log in self._building.get(collection, ()):
            log.append((doc_id, old, document))
        for index in self._indexes.get(collection, {}).values():
            index.update(doc_id, old, document)
        return Change(collection, doc_id, old, document)

    def remove(self, path: Path) -> list[Change]:
        """Delete a document (with its subcollections) or a whole collection (with everything in it)."""
        if len(path) % 2 == 0:
            changes = []
            docs = self.collections.get(path[:-1])
            if docs is not None and path[-1] in docs:
                changes.append(self._take(path[:-1], path[-1]))
            targets = self.subcollections(path)
        else:
            changes, targets = [], [path, *self.subcollections(path)]
        for collection in targets:
            for doc_id in list(self.collections.get(collection, ())):
                changes.append(self._take(collection, doc_id))
        return changes

    def undo(self, change: Change) -> None:
        """Put back what `change` (made by put or remove) replaced; changes are undone last first."""
        if change.old is None:
            self._take(change.collection, change.id)
        else:
            self.put(change.collection + (change.id,), change.old)

    def _take(self, collection: Path, doc_id: str) -> Change:
        docs = self.collections[collection]
        for replaced in self._copies:  # before the write: see Frozen.chunks
            replaced.setdefault(collection, {}).setdefault(doc_id, docs[doc_id])
        old = docs.pop(doc_id)
        ids = self._ids[collection]
        if ids is not None:
            if not self._copies and ids[-1] == doc_id:  # the last added (an add undone): no copy reads it
                ids.pop()
            else:  # listed again by the next copy (a copy under way keeps the list it has)
                self._ids[collection] = None
        for log in self._building.get(collection, ()):
            log.append((doc_id, old, None))
        if docs:
            for index in self._indexes.get(collection, {}).values():
                index.update(doc_id, old, None)
        else:
            del self.collections[collection]
            del self._ids[collection]
            self._indexes.pop(collection, None)
            self._unnest(collection)
        return Change(collection, doc_id, old, None)
