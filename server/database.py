"""The database: one write path (check → journal → apply) and the reads, over a Tree and a Storage."""

from __future__ import annotations

import copy
import ctypes
import functools
import gc
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from .errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidArgumentError,
    LimitExceededError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from .paths import advance_id_clock, check_path, field_path, id_clock, new_id, pointer
from .query import _MISSING, Query, aggregate, field_value, parse_query, run
from .rules import Principal, RateLimiter, Rules
from .storage import Recovered, Storage
from .tree import Change, Tree, build_index
from .values import DELETE, TRANSFORMS, json_equal, prepare
from .watch import Sink, Watcher

__all__ = ["Database"]

log = logging.getLogger("montybase.database")
Path = tuple[str, ...]
WRITE_OPS = ("add", "set", "update", "delete")
AGGREGATES = ("count", "exists", "sum", "avg")
_NO_DOCUMENTS: dict[str, Any] = {}
# A store loaded with at least this many documents is moved out of the garbage collector's
# view (gc.freeze): at 1,000,000 documents each full collection walked it for 0.6 s, pausing
# every thread, though JSON holds no cycle to collect. A smaller one costs little to walk, and
# an embedded program that opens small stores keeps its own objects collected as usual.
FREEZE_FROM = 100_000
# Shared storage: at most this many writes of a node go to the storage in one transaction (a
# bound on the transaction's size and on what one failure turns UNAVAILABLE).
GROUP_WRITES = 64


@functools.cache
def _return_large_blocks() -> None:
    """Have glibc give every freed block of more than 128 KiB back to the system. By default it
    does so only until such a block is freed, then raises that bound to the freed block's size
    (up to 32 MiB) and keeps what is freed below it for reuse: the tables a collection's dict
    leaves behind as it grows stayed in the process (a million documents: 31 MB, 31 bytes a
    document). Setting the bound keeps it (mallopt M_MMAP_THRESHOLD); elsewhere nothing changes."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
        except (OSError, AttributeError):  # a C library without mallopt
            pass


class _Batch:
    """The documents a commit has written so far, seen over the tree (later writes see earlier ones)."""

    def __init__(self, tree: Tree):
        self.tree = tree
        self.docs: dict[Path, Any] = {}
        self.removed: list[Path] = []  # deleted documents and collections (everything below goes too)

    def document(self, path: Path) -> Any:
        if path in self.docs:
            return self.docs[path]
        if any(path[: len(gone)] == gone for gone in self.removed):
            return None
        return self.tree.document(path)

    def collection(self, path: Path) -> dict[str, Any]:
        docs = {doc_id: doc for doc_id in self.tree.collections.get(path, {}) if (doc := self.document(path + (doc_id,))) is not None}
        for doc_path, doc in self.docs.items():
            if doc_path[:-1] == path and doc is not None:
                docs[doc_path[-1]] = doc
        return docs

    def below(self, path: Path) -> list[tuple[Path, Any]]:
        """Every document in the collections below the document at `path`: what deleting it deletes too."""
        collections = dict.fromkeys(self.tree.subcollections(path))
        collections.update(dict.fromkeys(p[:-1] for p in self.docs if len(p) > len(path) and p[: len(path)] == path))
        return [(collection + (doc_id,), doc)
                for collection in collections for doc_id, doc in self.collection(collection).items()]

    def remove(self, path: Path) -> None:
        self.docs = {p: d for p, d in self.docs.items() if p[: len(path)] != path}
        self.removed.append(path)


def _asked(query: Query) -> int | None:
    """How many documents a query asks for (its limit or limitToLast), None if it has no limit."""
    return query.limit if query.limit is not None else query.limit_to_last


def _document_value(value: Any, where: str) -> dict:
    if type(value) is not dict or (len(value) == 1 and next(iter(value)) in TRANSFORMS):
        kind = "a transform" if type(value) is dict else type(value).__name__
        raise InvalidArgumentError(f"{where}: a document is an object, got {kind}", {"path": where})
    return value


def _updated(old: dict, fields: Any, now_ms: int, where: str) -> dict:
    """`old` with `fields` ([field path, value] pairs) merged in, copying only what changes."""
    if not isinstance(fields, (list, tuple)):
        raise InvalidArgumentError(f"{where}: fields are a list of [field, value] pairs", {"path": where})
    new = dict(old)
    for i, pair in enumerate(fields):
        at = pointer(where, i)
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise InvalidArgumentError(f"{at}: a field to update is a [field, value] pair", {"path": at})
        field = field_path(pair[0], pointer(at, 0))
        parent = new
        for key in field[:-1]:
            child = parent.get(key)
            parent[key] = child = dict(child) if type(child) is dict else {}
            parent = child
        leaf = field[-1]
        value = prepare(pair[1], parent.get(leaf), pointer(at, 1), now_ms, "update")
        if value is DELETE:
            parent.pop(leaf, None)
        else:
            parent[leaf] = value
    return new


def _changes(computed: list[tuple[_Pending, int, list[list]]]) -> list[tuple[int, list[list]]]:
    return [(seq, operations) for _, seq, operations in computed]


class _Pending:
    """A write waiting in a group commit, then its outcome (results, or the error it raises).
    `woken` is held until the write's thread is told something: its outcome, or that it leads."""

    __slots__ = ("writes", "reads", "principal", "private", "single", "results", "error", "done", "leads", "woken")

    def __init__(self, writes: Sequence[dict], reads: Sequence[dict] | None, principal: Principal | None,
                 private: bool, single: bool):
        self.writes, self.reads, self.principal, self.private, self.single = writes, reads, principal, private, single
        self.results: list[dict] = []
        self.error: Exception | None = None
        self.done = self.leads = False
        self.woken = threading.Lock()
        self.woken.acquire()


class Database:
    """The whole tree in memory, journaled to `storage`.

    Every write from every client goes through `commit`: it checks, journals, then applies.
    `hot=True` also waits, after the lock is released, for an fsync shared with the writes
    that came together (group commit). Snapshots follow the original Montybase policy: once
    `snapshot_changes` changes have been made, one is taken `snapshot_seconds` later.
    `loading(done, total)` follows the start: called once the snapshot is read, then after each
    journal record replayed, counting the snapshot's documents and the records' writes.

    Reads (and listeners' messages) hand out the stored documents, not copies: a stored document
    is replaced, never changed in place, so it reads the same for as long as anyone holds it. The
    server encodes them as they are; the embedded client copies what it gives its program.
    """

    def __init__(
        self,
        storage: Storage | None = None,
        *,
        hot: bool = False,
        snapshot_changes: int = 1,
        snapshot_seconds: float = 300.0,
        sync_interval: float = 1.0,
        max_batch: int = 500,
        rules: Rules | None = None,
        loading: Callable[[int, int], None] | None = None,
    ):
        _return_large_blocks()
        self.storage = storage if storage is not None else Storage()
        self.rules = rules if rules is not None else Rules(None)
        self.rates = RateLimiter()
        self.hot = hot
        self.snapshot_changes = max(1, snapshot_changes)
        self.snapshot_seconds = snapshot_seconds
        self.max_batch = max_batch
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()  # shared storage: one group of this node's writes at a time (off the read lock)
        # Shared storage: the writes waiting to be committed, and whether a writer leads (commits groups).
        self._queued = threading.Lock()
        self._queue: list[_Pending] = []
        self._leading = False
        # Shared storage: told (under the lock) of the changes other nodes committed, once applied
        # here (a Service ends the connections of sessions signed out elsewhere).
        self.elsewhere: list[Callable[[list[Change]], None]] = []
        self._snapshot_lock = threading.Lock()
        self._closed = threading.Event()
        started = time.monotonic()
        # Decoding a million documents allocates millions of containers: with the collector on,
        # each few hundred thousand start a collection that walks all made so far (3.5 s of
        # decoding becomes 5). Nothing loaded is garbage: it runs again once the tree is built.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self.snapshot_seq, collections, id_time, records = self.storage.load()
            loaded = sum(map(len, collections.values()))
            done, total = loaded, loaded + sum(len(operations) for _, operations in records)
            if loading is not None:
                loading(done, total)
            self.tree = Tree(collections)
            for _, operations in records:
                self._apply(operations)
                for operation in operations:
                    if len(operation) > 3 and operation[3] > id_time:
                        id_time = operation[3]
                if loading is not None:
                    done += len(operations)
                    loading(done, total)
        finally:
            if collecting:
                gc.enable()
        if loaded >= FREEZE_FROM:
            gc.freeze()
        advance_id_clock(id_time)  # ids stay in order though the clock went back since
        self.watcher = Watcher(self.tree)
        self.seq = records[-1][0] if records else self.snapshot_seq
        self.load_seconds = time.monotonic() - started  # reading the snapshot and replaying the journals
        self._changes = len(records)
        self._snapshot_due: float | None = None
        self._sync_interval = sync_interval
        # After a storage failure: when to try again to resume, and the wait after that one.
        self._resume_at, self._resume_wait = 0.0, sync_interval
        self.snapshot_duration: float | None = None  # seconds the last snapshot took
        self._ticker: threading.Thread | None = None
        if self.storage.durable:
            # The ticker holds the database weakly: one dropped without close() (a crash, for a
            # MemoryStorage reopened by another) stops being flushed once it is collected.
            self._ticker = threading.Thread(
                target=Database._tick, args=(weakref.ref(self), self._closed, sync_interval),
                name="montybase-storage", daemon=True,
            )
            self._ticker.start()
        if self.storage.shared:  # other nodes' writes arrive from here on
            self.storage.follow(lambda: self.seq, self._receive)

    # Requests, as the session routes them: each returns the result and the journal record that
    # must be durable before the result may be acknowledged (0 if none; see `wait_durable`).

    def wait_durable(self, seq: int) -> None:
        """Block until journal record `seq` is fsynced (group commit)."""
        self.storage.sync(seq)

    def write(self, op: str, params: dict, principal: Principal | None) -> tuple[dict, int]:
        """One `add`, `set`, `update` or `delete`."""
        results, seq = self._commit_writes([{**params, "op": op}], None, principal, single=True)
        return results[0], seq

    def transact(self, params: dict, principal: Principal | None) -> tuple[dict, int]:
        """A batch or transaction: `writes`, all or none, if the `reads` still hold."""
        results, seq = self._commit_writes(params.get("writes"), params.get("reads"), principal)
        return {"results": results}, seq

    def _reads_collection(self, path: Path) -> bool:
        """An odd path reads a collection if it has documents (or is top-level); otherwise it
        reads a field of the document above, whose `get` rule then decides, whether or not
        that document exists (no existence oracle)."""
        return len(path) % 2 == 1 and (len(path) == 1 or path in self.tree.collections)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _check_open(self) -> None:
        """Reads after close() answer as writes do (the storage is released, the data may be stale)."""
        if self._closed.is_set():
            raise UnavailableError("the database is closed")

    def get(self, params: dict, principal: Principal | None) -> tuple[dict, int]:
        """A document, a collection, or a field inside a document."""
        self._check_open()
        path = check_path(params.get("path"))
        if principal is None or principal.admin:  # the hot path of embedded reads
            if len(path) % 2 == 0 and path:
                # Stored documents are replaced, never changed in place, and a dict lookup is
                # atomic: reading one document needs no lock.
                document = self.tree.collections.get(path[:-1], _NO_DOCUMENTS).get(path[-1])
                if document is not None:
                    return {"value": document}, 0
            with self._lock:
                return {"value": self.tree.read(path)}, 0
        if not path:
            raise PermissionDeniedError("only the admin key may read the root", {"document": []})
        if not self._reads_collection(path):
            # A document or a field in one, without the lock: a query selecting under it would
            # hold every client's get of one document for as long. The rule checks the very
            # document read (stored documents are replaced, never changed in place; each dict
            # lookup is atomic), and the rules and the rate limiter are safe between threads.
            doc_path, document = self.tree.addressed(path)
            self._check_addressed(principal, path, doc_path, document)
            value = _MISSING if document is None else field_value(document, path[len(doc_path):])
            self.rates.take(principal, self.rules.match(doc_path[:-1]), "get")
            return {"value": ({} if len(path) % 2 else None) if value is _MISSING else value}, 0
        with self._lock:
            query = self.rules.narrow(principal, parse_query({"path": list(path)}))
            self.rates.take(principal, self.rules.match(path), "list")
            selected = self.tree.select(query)
            self.rules.check_results(principal, len(selected))
            return {"value": dict(selected)}, 0

    def collections(self, params: dict, principal: Principal | None) -> tuple[dict, int]:
        """The collections that hold documents directly under the document `path` (the root by
        default), with their sizes: the admin's map of the data (never the accounts' store)."""
        self._check_open()
        if principal is not None and not principal.admin:
            raise PermissionDeniedError("only an admin may list collections", {"document": []})
        path = check_path(params.get("path", []))
        if len(path) % 2:
            raise InvalidArgumentError("/path: collections are listed under a document (an even number of segments)",
                                       {"path": "/path"})
        depth = len(path) + 1
        with self._lock:
            found = sorted((collection[-1], len(docs)) for collection, docs in self.tree.collections.items()
                           if len(collection) == depth and collection[:-1] == path and docs
                           and not collection[0].startswith("__"))
        return {"collections": [{"id": name, "count": count} for name, count in found]}, 0

    def _check_addressed(self, principal: Principal, path: Path, doc_path: Path, document: Any) -> None:
        """A read of `path` that is not a collection: the `get` rule of the nearest document
        (`doc_path`) decides; when nothing is there, not even a field of that document, the
        path's own rule decides too, so what is missing answers as what exists would (no
        existence oracle below a readable document)."""
        self.rules.check_read(principal, doc_path, document)
        if len(doc_path) < len(path) and (document is None or field_value(document, path[len(doc_path):]) is _MISSING):
            if len(path) % 2:
                self.rules.narrow(principal, parse_query({"path": list(path)}))
            else:
                self.rules.check_read(principal, path, None)

    def document(self, path: Path) -> Any:
        """The stored document at `path` or None, for the layers above that keep collections of
        their own (accounts). Not a copy: stored documents are replaced, never changed in place."""
        return self.tree.collections.get(path[:-1], _NO_DOCUMENTS).get(path[-1])

    def documents(self, collection: Path) -> dict[str, Any]:
        """The documents of a collection by id (a shallow copy, with the same caveat)."""
        with self._lock:
            return dict(self.tree.collections.get(collection, _NO_DOCUMENTS))

    def _build(self, collection: Path, spec: tuple) -> Any:
        """Build an index of a large collection for a query without holding the lock (the
        query's, held once): from a copy of the collection, then caught up under the lock with
        the writes made meanwhile. Writers wait for the copy, not for the build."""
        documents, log = self.tree.begin_build(collection)
        index = None
        self._lock.release()
        try:
            index = build_index(spec, documents)
        finally:
            self._lock.acquire()
            self.tree.finish_build(collection, index, log)
        return index

    def _select(
        self, query: Query, principal: Principal | None, build: bool = False, counting: bool = False,
    ) -> list[tuple[str, Any]] | int:
        """Run a query as `principal` may (under the lock). A path that is neither a collection
        nor a document names a field, as for `get`: it reads as one document, the field's value
        with the path's last segment as id (nothing if the field is missing). `counting`: a
        collection's count may come instead of its documents (Tree.count)."""
        path = query.path
        guarded = principal is not None and not principal.admin
        if self._reads_collection(path):
            if guarded:
                query = self.rules.narrow(principal, query)
                self.rates.take(principal, self.rules.match(path), "list")
            return (self.tree.count if counting else self.tree.select)(query, self._build if build else None)
        doc_path, document = self.tree.addressed(path)
        if guarded:  # the document's get rule decides, whether or not it exists, as for a get
            self._check_addressed(principal, path, doc_path, document)
            if doc_path == path:
                query = self.rules.narrow(principal, query)
            self.rates.take(principal, self.rules.match(doc_path[:-1]), "list")
        if doc_path == path:
            return self.tree.select(query)
        found, value = self.tree.field(path)
        if not found or (query.where and type(value) is not dict):  # a where reads fields of an object
            return []
        return run(query, {path[-1]: value}, None)

    def query(self, params: dict, principal: Principal | None) -> tuple[dict, int]:
        self._check_open()
        query = parse_query(params.get("query"))
        with self._lock:  # (held once: `_build` lets it go while it builds an index)
            selected = self._select(query, principal, build=True)
            if principal is not None:
                self.rules.check_results(principal, len(selected), _asked(query))
        self.tree.free_evicted()
        return {"docs": [{"id": doc_id, "value": document} for doc_id, document in selected]}, 0

    def aggregate(self, params: dict, principal: Principal | None) -> tuple[dict, int]:
        self._check_open()
        op = params.get("op")
        if op not in AGGREGATES:
            raise InvalidArgumentError(f"/op: an aggregate op is one of {', '.join(AGGREGATES)}, got {op!r}", {"path": "/op"})
        query = parse_query(params.get("query"))
        field = field_path(params.get("field"), "/field") if op in ("sum", "avg") else None
        with self._lock:
            if op == "exists":
                empty_window = query.limit == 0 or query.limit_to_last == 0
                value: Any = not empty_window and bool(self._select(replace(query, limit=1, limit_to_last=None), principal, build=True))
            elif op == "count" and query.plain and principal is None and query.path in self.tree.collections:
                value = len(self.tree.collections[query.path])
            elif op == "count":
                found = self._select(query, principal, build=True, counting=True)
                value = found if type(found) is int else len(found)
            else:
                value = aggregate(op, field, self._select(query, principal, build=True))
        self.tree.free_evicted()
        return {"value": value}, 0

    # Listeners

    def watch(self, params: dict, sink: Sink, tag: Any, principal: Principal | None = None) -> int:
        """Start a listener on {"path": document path} or {"query": query}; `sink(tags, message)`
        gets the current state at once (tags: `(tag,)`), then every change, once for all its
        listeners of the same target (tags: theirs). It is called under the database lock: it
        must only enqueue. Returns the subscription id. A listener shows only what `principal`
        may read: a query is narrowed like a list, a document it stops owning reads as missing."""
        if params.get("query") is not None:
            target: Any = parse_query(params["query"])
        else:
            target = check_path(params.get("path"))
            if len(target) % 2:
                target = parse_query({"path": list(target)})
            elif not target:
                raise InvalidArgumentError("/path: a listener needs a collection, document or query", {"path": "/path"})
        with self._lock:
            if self._closed.is_set():
                raise UnavailableError("the database is closed")
            if isinstance(target, tuple):
                owner = None
                if principal is not None and not principal.admin:
                    self.rules.check_read(principal, target, self.tree.document(target))
                    owner = self.rules.owner_filter(principal, target)
                subscription, snapshot = self.watcher.watch_document(target, sink, tag, owner)
            else:
                if principal is not None and not principal.admin:
                    if len(target.path) % 2 == 0:
                        self.rules.check_read(principal, target.path, self.tree.document(target.path))
                    target = self.rules.narrow(principal, target)
                subscription, snapshot = self.watcher.watch_query(target, sink, tag)
                if principal is not None and len(snapshot["docs"]) > self.rules.max_results and not principal.admin:
                    self.watcher.unwatch(subscription)
                    self.rules.check_results(principal, len(snapshot["docs"]), _asked(target))
            sink((tag,), snapshot)
        return subscription

    def unwatch(self, subscription: int) -> bool:
        """Stop a listener; False if it was not listening."""
        with self._lock:
            return self.watcher.unwatch(subscription)

    # The one write path

    def commit(
        self, writes: Sequence[dict] | Any, reads: Sequence[dict] | None = None, principal: Principal | None = None,
        *, private: bool = False,
    ) -> list[dict]:
        """Apply writes all or nothing, as one journal record; `reads` ([{path, value}]) are
        the values a transaction saw: if any changed since, nothing is written (CONFLICT).
        `private` writes (the accounts store) may use reserved collection names."""
        results, seq = self._commit_writes(writes, reads, principal, private)
        if seq:
            self.storage.sync(seq)
        return results

    def _commit_writes(
        self, writes: Sequence[dict] | Any, reads: Sequence[dict] | None, principal: Principal | None,
        private: bool = False, single: bool = False,
    ) -> tuple[list[dict], int]:
        """`single`: one write whose params are the write itself (errors point into it), not a commit."""
        if not isinstance(writes, (list, tuple)) or not writes:
            raise InvalidArgumentError("/writes: writes are a non-empty list", {"path": "/writes"})
        if len(writes) > self.max_batch:
            raise LimitExceededError(
                f"/writes: a batch holds at most {self.max_batch} writes, got {len(writes)}",
                {"path": "/writes", "limit": self.max_batch, "actual": len(writes)},
            )
        if self.storage.shared:
            return self._commit_shared(writes, reads, principal, private, single)
        with self._lock:
            if self._closed.is_set():
                raise UnavailableError("the database is closed")
            self._check_reads(reads, principal)
            operations, results = self._resolve(writes, principal, private, single)
            if not operations:
                return results, 0
            seq = self.seq + 1
            self.storage.append(seq, operations)  # raises before anything is applied
            self._applied(seq, operations)
            if self._snapshot_due is None and self._changes >= self.snapshot_changes:
                self._snapshot_due = time.monotonic() + self.snapshot_seconds
        return results, seq if self.hot else 0

    def _applied(self, seq: int, operations: list[list]) -> list[Change]:
        """Apply the committed write `seq` to the tree and notify its listeners (under the lock,
        so every listener gets notifications in commit order; sinks only enqueue); its changes."""
        self.seq = seq
        changes = self._apply(operations)
        self._changes += 1
        for sink, tags, message in self.watcher.notify(changes):
            sink(tags, message)
        return changes

    # Several nodes on one shared storage (PostgreSQL: server/postgres.py)

    def _commit_shared(
        self, writes: Sequence[dict], reads: Sequence[dict] | None, principal: Principal | None,
        private: bool, single: bool,
    ) -> tuple[list[dict], int]:
        """The write path when several nodes share the storage (group commit): the writes waiting
        on this node go to the storage together, in one transaction under its lock of the change
        stream, each with its own change. One writer leads: it commits the group of whoever
        queued meanwhile (up to GROUP_WRITES) while the next writers queue, wakes each of them
        with its answer and, once its own write is answered, hands the lead to the first still
        queued. A write alone leads at once, waiting for no companion. (Each waiting thread is
        woken once, by its own lock: a condition shared by all woke every one at each group.)"""
        pending = _Pending(writes, reads, principal, private, single)
        with self._queued:
            self._queue.append(pending)
            pending.leads, self._leading = not self._leading, True
        if not pending.leads and not pending.woken.acquire(timeout=self.storage.write_wait):
            with self._queued:
                if not pending.leads and pending in self._queue:  # no leader took it: it was never tried
                    self._queue.remove(pending)
                    raise UnavailableError("the storage did not take this node's writes in time; try again")
            pending.woken.acquire()  # a leader took it (each of its steps is bounded), or handed it the lead
        if pending.leads:
            self._lead(pending)
        if pending.error is not None:
            raise pending.error
        return pending.results, 0

    def _lead(self, pending: _Pending) -> None:
        """Commit the queued groups up to the one holding `pending`, then hand the lead on."""
        try:
            while not pending.done:
                with self._queued:
                    group = self._queue[:GROUP_WRITES]
                    del self._queue[:GROUP_WRITES]
                try:
                    self._commit_group(group)
                finally:
                    for other in group:
                        if other is not pending:
                            other.woken.release()
        finally:
            with self._queued:
                if self._queue:
                    self._queue[0].leads = True
                    self._queue[0].woken.release()
                else:
                    self._leading = False

    def _commit_group(self, group: list[_Pending]) -> None:
        """Commit a group of writes, each checked and computed against the state that includes
        the group's writes before it (a write that fails its checks fails alone), in one
        transaction; only once it committed, the writes are applied here and answered. If it
        fails, every write of the group is UNAVAILABLE and memory is unchanged.

        First in one round trip, computed against this node's state: committed if no other node
        committed since (the storage checks under the stream's lock). Otherwise, and while other
        nodes write too (`storage.alone` is false), in two: under the stream's lock, first the
        writes other nodes committed, then the group computed (again).

        Each write is computed against the tree itself, applied to it and, once the group is
        computed, undone, all under the node's lock: so the rules, the transactions' reads, the
        counts and the cascades see exactly what a write alone sees, and no reader sees what is
        not committed. (An overlay of the tree would have to serve every read the checks make.)
        The round trips hold no lock that reads take: reads and listeners go on meanwhile."""
        computed: list[tuple[_Pending, int, list[list]]] = []
        try:
            if not self._write_lock.acquire(timeout=self.storage.write_wait):
                raise UnavailableError("the storage did not take this node's writes in time; try again")
            try:
                self._check_open()
                spent: list = []
                if self.storage.alone:
                    with self._lock, self.rates.recorded() as spent:
                        computed = self._compute(group)
                # (A group with nothing to commit takes the two steps too: its checks must see the latest state.)
                if not computed or not self.storage.append_latest(_changes(computed)):
                    self.rates.refund(spent)  # computed again: each write spends its rate-limit tokens once
                    computed = []
                    missed = self.storage.begin(self.seq)
                    try:
                        with self._lock:
                            self._catch_up(missed)
                            computed = self._compute(group)
                        if computed:  # commits, or rolls back and raises
                            self.storage.append_group(_changes(computed))
                    finally:
                        if not computed:  # nothing to commit: let go of the stream
                            self.storage.abort()
                with self._lock:
                    for _, seq, operations in computed:
                        if seq > self.seq:  # (the follower may have brought it in already)
                            self._applied(seq, operations)
            finally:
                self._write_lock.release()
        except Exception as exc:  # UNAVAILABLE (or a bug): every write of the group reports it
            for pending in group:  # (each raises its own copy: one instance raised in several threads mixes their tracebacks)
                pending.results, pending.error = [], copy.copy(exc) if isinstance(exc, UnavailableError) else exc
        finally:
            for pending in group:
                pending.done = True

    def _compute(self, group: list[_Pending]) -> list[tuple[_Pending, int, list[list]]]:
        """Each write's operations, numbered from the node's seq, computed in order against the
        tree with the writes before it applied (then undone; under the lock); a write that fails
        keeps its error and is left out."""
        computed, undo, seq = [], [], self.seq
        try:
            for pending in group:
                pending.error = None  # (computed again after the writes of other nodes: only that outcome counts)
                try:
                    self._check_reads(pending.reads, pending.principal)
                    operations, pending.results = self._resolve(pending.writes, pending.principal, pending.private,
                                                                 pending.single)
                except Exception as exc:  # this write alone fails (after the commit, it is told so)
                    pending.error = exc
                    continue
                if operations:
                    seq += 1
                    computed.append((pending, seq, operations))
                    undo.extend(self._apply(operations))
        finally:
            for change in reversed(undo):
                self.tree.undo(change)
        return computed

    def _receive(self, missed: list[tuple[int, list]] | Recovered) -> None:
        """Writes other nodes committed, from the storage's follower."""
        with self._lock:
            if not self._closed.is_set():
                self._catch_up(missed)

    def refresh(self) -> None:
        """Shared storage: apply what other nodes committed up to now (the follower would, a
        moment later). A no-op on a storage of this process alone."""
        if not self.storage.shared:
            return
        if not self._write_lock.acquire(timeout=self.storage.write_wait):
            raise UnavailableError("the storage did not answer in time; try again")
        try:
            missed = self.storage.changes(self.seq)
            with self._lock:
                self._catch_up(missed)
        finally:
            self._write_lock.release()

    def _catch_up(self, missed: list[tuple[int, list]] | Recovered) -> None:
        """Apply changes committed elsewhere, in order, skipping those applied already; a
        Recovered (the changes were dropped) replaces the state by the difference with it."""
        if isinstance(missed, Recovered):
            if missed.seq > self.seq:
                log.warning("changes %d to %d were dropped from the shared storage: reloading its %d collections",
                            self.seq + 1, missed.seq, len(missed.collections))
                self._told(self._applied(missed.seq, self._difference(missed.collections)))
                advance_id_clock(missed.id_time)
            return
        for seq, operations in missed:
            if seq <= self.seq:
                continue
            if seq != self.seq + 1:
                raise UnavailableError(f"the shared storage skipped from change {self.seq} to {seq}")
            self._told(self._applied(seq, operations))
            for operation in operations:
                if len(operation) > 3:
                    advance_id_clock(operation[3])  # ids made here sort after those made elsewhere

    def _told(self, changes: list[Change]) -> None:
        for told in self.elsewhere:
            try:
                told(changes)
            except Exception:  # the change is applied: a failing observer must not stop the stream
                log.exception("an observer of the changes committed elsewhere failed")

    def _difference(self, collections: dict[Path, dict[str, Any]]) -> list[list]:
        """The operations that turn the tree into `collections`."""
        operations: list[list] = []
        for path, docs in self.tree.collections.items():
            kept = collections.get(path, _NO_DOCUMENTS)
            operations.extend(["delete", [*path, doc_id]] for doc_id in docs if doc_id not in kept)
        for path, docs in collections.items():
            current = self.tree.collections.get(path, _NO_DOCUMENTS)
            operations.extend(["set", [*path, doc_id], doc] for doc_id, doc in docs.items()
                              if doc_id not in current or not json_equal(current[doc_id], doc))
        return operations

    def _check_reads(self, reads: Sequence[dict] | None, principal: Principal | None) -> None:
        if reads is None:
            return
        if not isinstance(reads, (list, tuple)):
            raise InvalidArgumentError("/reads: reads are a list of {path, value}", {"path": "/reads"})
        for i, read in enumerate(reads):
            at = pointer("/reads", i)
            if not isinstance(read, dict):
                raise InvalidArgumentError(f"{at}: a read is an object {{path, value}}", {"path": at})
            path = check_path(read.get("path"), pointer(at, "path"))
            # A read is compared with what a get would answer this principal, after the same
            # rules: a refused read is PERMISSION_DENIED, never a comparison (no value oracle).
            seen = self.tree.read(path) if principal is None else self.get({"path": path}, principal)[0]["value"]
            if not json_equal(seen, read.get("value")):
                raise ConflictError(
                    f"{'/'.join(path)} changed after the transaction read it", {"document": list(path)}
                )

    def _resolve(
        self, writes: Sequence[dict], principal: Principal | None, private: bool = False, single: bool = False
    ) -> tuple[list[list], list[dict]]:
        """The journal operations (["set", path, document], with the id's millisecond as a 4th
        member for a generated id, or ["delete", path]) and the results. With a principal,
        every write passes the rules (permission first, then data rules)."""
        batch = _Batch(self.tree)
        now_ms = int(time.time() * 1000)
        operations: list[list] = []
        results: list[dict] = []
        guarded = principal is not None and not private

        def check(op: str, path: Path, old: Any, new: Any, final: bool = True, replacing: bool = False) -> Any:
            """The rules for one write; `final` once per write (it spends a rate-limit token)."""
            if not guarded:
                return new
            collection = path[:-1] if len(path) % 2 == 0 else path
            if final and not principal.admin:
                self.rates.take(principal, self.rules.match(collection), op)
            size = 0
            if op == "create":  # for maxDocs: the stored documents and those this batch adds
                size = len(self.tree.collections.get(collection, ())) + sum(
                    1 for doc_path, doc in batch.docs.items() if doc_path[:-1] == collection and doc is not None
                )
            return self.rules.check_write(principal, op, path, old, new, now_ms, size, replacing=replacing)

        for i, write in enumerate(writes):
            where = "" if single else f"/writes/{i}"
            if not isinstance(write, dict) or write.get("op") not in WRITE_OPS:
                at = pointer(where, "op")
                raise InvalidArgumentError(f"{at}: op must be one of {', '.join(WRITE_OPS)}", {"path": at})
            op = write["op"]
            path = tuple(write.get("path") or ()) if private else check_path(write.get("path"), where + "/path")
            if not path:
                at = pointer(where, "path")
                raise InvalidArgumentError(f"{at}: the path is empty: {op} needs a collection or document", {"path": at})
            is_collection = len(path) % 2 == 1
            if op == "delete":
                old = batch.collection(path) if is_collection else batch.document(path)
                below = [] if is_collection else batch.below(path)
                check("delete", path, old, None)
                if guarded:  # a document's delete takes its subcollections along: each must allow it
                    self.rules.check_cascade(principal, path, below)
                if (old or self.tree.subcollections(path)) if is_collection else (old is not None or below):
                    operations.append(["delete", list(path)])
                    batch.remove(path)
                results.append({"value": old})
                continue
            if op == "update":
                if is_collection:
                    at = pointer(where, "path")
                    raise InvalidArgumentError(f"{at}: update needs a document; on a collection pass key=", {"path": at})
                old = batch.document(path)
                check("update", path, old, None, final=False)  # permission before existence: no oracle
                document = _updated(old or {}, write.get("fields"), now_ms, where + "/fields")  # bad fields first
                if old is None:
                    raise NotFoundError(f"no document at {'/'.join(path)} to update", {"document": list(path)})
                document = check("update", path, old, document)
            else:
                value = _document_value(write.get("value"), where + "/value")
                if is_collection:
                    doc_id, id_time = new_id()
                    path = path + (doc_id,)
                    old = None
                else:
                    old = batch.document(path)
                # set replaces the document first (as Firestore's does): its transforms start from nothing.
                document = prepare(value, None, where + "/value", now_ms, "set")
                if op == "add" and old is not None:
                    check("create", path, None, document, final=False)  # only creators learn it exists
                    raise AlreadyExistsError(f"a document already exists at {'/'.join(path)}", {"document": list(path)})
                document = check("create" if old is None else "update", path, old, document, replacing=True)
            operations.append(["set", list(path), document, id_time] if is_collection else ["set", list(path), document])
            batch.docs[path] = document
            results.append({"id": path[-1]})
        return operations, results

    def _apply(self, operations: list[list]) -> list[Change]:
        changes: list[Change] = []
        for operation in operations:
            if operation[0] == "set":
                changes.append(self.tree.put(tuple(operation[1]), operation[2]))
            else:
                changes.extend(self.tree.remove(tuple(operation[1])))
        return changes

    # Snapshots and the once-a-second fsync

    @staticmethod
    def _tick(database: weakref.ref[Database], closed: threading.Event, interval: float) -> None:
        while not closed.wait(interval):
            alive = database()
            if alive is None:
                return
            alive._maintain()
            del alive  # no strong reference while it waits

    def _maintain(self) -> None:
        """The once-a-second work: flush, and take a snapshot when the policy says so; after a
        storage failure, try to resume, waiting twice as long after each try (up to 30 s)."""
        try:
            if self.storage.failure is not None:
                if time.monotonic() >= self._resume_at and not self._resume():
                    self._resume_at = time.monotonic() + self._resume_wait
                    self._resume_wait = min(2 * self._resume_wait, 30.0)
                return
            self.storage.flush()
            due = self._snapshot_due
            if (due is not None and time.monotonic() >= due) or self.storage.journal_full:
                self.snapshot()
        except UnavailableError:
            pass  # a storage failure: the storage logged it once, writes report it
        except Exception:  # the next tick tries again
            log.exception("storage maintenance failed")

    def _resume(self) -> bool:
        """Write what is in memory as a new snapshot after a storage failure; True if writes
        are accepted again."""
        with self._snapshot_lock:
            with self._lock:  # no write gets in while the storage fails: this stays the latest state
                seq = self.seq
                collections = {path: dict(docs) for path, docs in self.tree.collections.items()}
            if not self.storage.resume(seq, collections, id_clock()):
                return False
            with self._lock:
                self.snapshot_seq, self._changes, self._snapshot_due = seq, 0, None
        self._resume_at, self._resume_wait = 0.0, self._sync_interval
        return True

    def snapshot(self) -> None:
        """Write the current state as the snapshot and drop the journals it covers."""
        if not self.storage.durable or self.storage.failure is not None:
            return
        with self._snapshot_lock:
            started = time.monotonic()
            if self.seq == self.snapshot_seq:
                return
            # The journal made durable before the lock is taken: under it, `rotate` syncs what
            # was written meanwhile (a second of writes took writers 20 to 100 ms to wait for).
            self.storage.sync(self.seq)
            with self._lock:
                seq = self.seq
                if seq == self.snapshot_seq:
                    return
                self.storage.rotate(seq)
                # Not a copy of a million documents under the lock: their ids, and a log of
                # what writes replace meanwhile (the snapshot is encoded while others go on).
                copy = self.tree.begin_copy()
                changes, self._changes, self._snapshot_due = self._changes, 0, None
            try:
                saved = self.storage.save_snapshot(seq, copy.collections, id_clock())
            finally:
                with self._lock:
                    self.tree.end_copy(copy)
            if saved:
                self.snapshot_seq = seq
                self.snapshot_duration = time.monotonic() - started
                log.info("snapshot at record %d: %d collections in %.0f ms", seq, len(copy.collections),
                         self.snapshot_duration * 1000)
            else:
                with self._lock:
                    self._changes += changes
                    self._snapshot_due = time.monotonic() + self.snapshot_seconds

    def close(self) -> None:
        """Take a last snapshot, flush and release the storage. Idempotent. A storage that fails
        is reported in the log (once), not raised: stopping is still a clean stop."""
        if self._closed.is_set():
            return
        with self._lock:
            self._closed.set()
        # A write being committed to a shared storage finishes first (those after it see the close).
        writing = self.storage.shared and self._write_lock.acquire(timeout=self.storage.write_wait)
        if self._ticker is not None:
            self._ticker.join()
        try:
            if self.storage.failure is not None and not self._resume():
                log.error("stopping without a last snapshot: the storage still fails (%s)", self.storage.failure)
            elif self.storage.durable and self.seq != self.snapshot_seq:
                self.snapshot()
        except UnavailableError:
            pass  # the storage failed just now, and logged it
        finally:
            try:
                self.storage.close()
            except UnavailableError:
                pass  # its last flush failed, and it logged that
            if writing:
                self._write_lock.release()

