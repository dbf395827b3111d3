"""Immutable references and queries; each call becomes one method call with JSON params."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..server.errors import ConflictError, InvalidArgumentError
from ..server.paths import MAX_PATH_SEGMENTS, CheckedPath, check_key, check_path, field_path, pointer, simple_key

from .listen import DocumentSnapshot, QuerySnapshot

__all__ = ["Backend", "CollectionReference", "DocumentReference", "Query", "Reference", "Transaction", "WriteBatch", "make_reference"]


class Backend(Protocol):
    """Where calls go: the engine in-process, or a server over a WebSocket."""

    user: dict[str, str] | None  # the signed-in account, and its session token
    token: str | None

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]: ...

    def subscribe(self, params: dict[str, Any], callback: Callable[[Any], None]) -> Callable[[], None]: ...

    def close(self) -> None: ...


def _segments(parts: tuple[Any, ...]) -> CheckedPath:
    """Segments from arguments; "users/alan" is shorthand for "users", "alan"."""
    for part in parts:
        if type(part) is not str or simple_key(part) is None:
            break
    else:  # the common case: every part a plain segment
        if len(parts) <= MAX_PATH_SEGMENTS:
            return CheckedPath(parts)
    out: list[str] = []
    for part in parts:
        if isinstance(part, str) and "/" in part:
            out.extend(part.split("/"))
        else:
            out.append(part)
    for i, segment in enumerate(out):
        check_key(segment, pointer("/path", i))
    return check_path(out)


def make_reference(backend: Backend, segments: CheckedPath) -> Reference:
    """A collection reference at odd depths, a document reference at even ones."""
    kind = DocumentReference if segments and len(segments) % 2 == 0 else CollectionReference
    return kind(backend, segments)


def _field(field: Any) -> Any:
    """A field path for the wire: a dotted string as it is, a tuple as a list of keys."""
    return list(field) if isinstance(field, (tuple, list)) else field


def _fields(value: Any) -> list[list[Any]]:
    """`update` values as [field, value] pairs; "a.b" names a nested field, a tuple a literal one."""
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"/fields: update takes a dict of fields, got {type(value).__name__}", {"path": "/fields"})
    return [[_field(field), item] for field, item in value.items()]


def _snapshot(value: Any, cursor: str) -> tuple[str, dict[str, Any]] | None:
    """(id, document) of a document given as a cursor: a `stream()` item {"id", "value"} or a
    DocumentSnapshot; None for anything else (a plain cursor value)."""
    if isinstance(value, DocumentSnapshot):
        if not value.exists:
            raise InvalidArgumentError(f"{cursor}: document {value.id!r} does not exist", {"path": f"/query/{cursor}"})
        return value.id, value.value
    if type(value) is dict and value.keys() == {"id", "value"} and type(value["id"]) is str and type(value["value"]) is dict:
        return value["id"], value["value"]
    return None


_CURSORS = ("startAt", "startAfter", "endAt", "endBefore")


def _order_value(document: dict[str, Any], field: Any, doc_id: str, cursor: str) -> Any:
    """The value of an order field in a cursor document; INVALID_ARGUMENT if it lacks it (no
    position in the order would then be its own)."""
    value: Any = document
    for key in field_path(field, f"/query/{cursor}"):
        if type(value) is not dict or key not in value:
            raise InvalidArgumentError(
                f"{cursor}: document {doc_id!r} has no field {field!r} to order by", {"path": f"/query/{cursor}"}
            )
        value = value[key]
    return value


class Query:
    """An immutable query: every method returns a new one; terminals run it."""

    __slots__ = ("_ref", "_spec")

    def __init__(self, ref: Reference, spec: dict[str, Any] | None = None):
        self._ref = ref
        self._spec: dict[str, Any] = spec or {}

    def _with(self, drop: tuple[str, ...] = (), **changes: Any) -> Query:
        spec = {k: v for k, v in self._spec.items() if k not in drop}
        for key, value in changes.items():
            spec[key] = spec.get(key, []) + [value] if key in ("where", "orderBy") else value
        return Query(self._ref, spec)

    @property
    def wire(self) -> dict[str, Any]:
        """The query as it crosses the wire."""
        return {"path": list(self._ref.segments), **self._spec}

    def __repr__(self) -> str:
        return f"Query({self.wire!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Query) and self.wire == other.wire

    # Building

    def where(self, field: str | tuple[str, ...], op: str, value: Any) -> Query:
        """Keep documents whose `field` compares to `value` with `op` (==, !=, <, <=, >, >=,
        in, not-in, array-contains, array-contains-any)."""
        return self._with(where=[_field(field), op, value])

    def order_by(self, field: str | tuple[str, ...], direction: str = "asc") -> Query:
        """Order by `field`, "asc" or "desc"; documents lacking it are left out. Before any
        cursor (as in Firestore), whose values follow the order fields."""
        cursor = next((name for name in _CURSORS if name in self._spec), None)
        if cursor is not None:
            raise InvalidArgumentError(f"order_by must come before the cursor ({cursor})", {"path": f"/query/{cursor}"})
        normalized = {"asc": "asc", "ascending": "asc", "desc": "desc", "descending": "desc"}.get(
            direction.lower() if isinstance(direction, str) else direction
        )
        if normalized is None:
            at = pointer("/query/orderBy", len(self._spec.get("orderBy", ())), 1)
            raise InvalidArgumentError(f"{at}: direction must be 'asc' or 'desc', got {direction!r}", {"path": at})
        return self._with(orderBy=[_field(field), normalized])

    def limit(self, n: int) -> Query:
        """At most `n` documents, from the front."""
        return self._with(("limitToLast",), limit=n)

    def limit_to_last(self, n: int) -> Query:
        """At most `n` documents, from the back (still returned in order)."""
        return self._with(("limit",), limitToLast=n)

    def offset(self, n: int) -> Query:
        """Skip the first `n` matching documents."""
        return self._with(offset=n)

    def _cursor(self, name: str, values: tuple[Any, ...], drop: str) -> Query:
        """A cursor: the order fields' values, then optionally an id (ties break by id); or one
        document, which stands for its order fields' values and its id (as in Firestore)."""
        document = _snapshot(values[0], name) if len(values) == 1 else None
        if document is not None:
            doc_id, value = document
            values = (*(_order_value(value, field, doc_id, name) for field, _ in self._spec.get("orderBy", ())), doc_id)
        return self._with((drop,), **{name: list(values)})

    def start_at(self, *values: Any) -> Query:
        """Start at the document whose order fields equal `values` (inclusive); a last extra
        value is an id, and a document ({"id", "value"} or a snapshot) stands for both."""
        return self._cursor("startAt", values, "startAfter")

    def start_after(self, *values: Any) -> Query:
        """Start after the document whose order fields (then id) equal `values`, or after a document."""
        return self._cursor("startAfter", values, "startAt")

    def end_at(self, *values: Any) -> Query:
        """End at the document whose order fields (then id) equal `values`, or at a document (inclusive)."""
        return self._cursor("endAt", values, "endBefore")

    def end_before(self, *values: Any) -> Query:
        """End before the document whose order fields (then id) equal `values`, or before a document."""
        return self._cursor("endBefore", values, "endAt")

    # Terminals

    def stream(self) -> list[dict[str, Any]]:
        """The matching documents as [{"id": …, "value": …}, …], in order."""
        return self._ref._backend.call("query", {"query": self.wire})["docs"]

    def get(self) -> dict[str, Any]:
        """The matching documents as {id: value}, in order."""
        return {doc["id"]: doc["value"] for doc in self.stream()}

    def _aggregate(self, op: str, field: Any = None) -> Any:
        params: dict[str, Any] = {"query": self.wire, "op": op}
        if field is not None:
            params["field"] = _field(field)
        return self._ref._backend.call("aggregate", params)["value"]

    def exists(self) -> bool:
        """Whether any document matches."""
        return self._aggregate("exists")

    exist = exists

    def count(self) -> int:
        """How many documents match."""
        return self._aggregate("count")

    def sum(self, field: str | tuple[str, ...]) -> int | float:
        """The sum of the numeric values of `field` over the matching documents."""
        return self._aggregate("sum", field)

    def avg(self, field: str | tuple[str, ...]) -> float | None:
        """The mean of the numeric values of `field`, or None if there are none."""
        return self._aggregate("avg", field)

    def on_snapshot(self, callback: Callable[[QuerySnapshot], None]) -> Callable[[], None]:
        """Call `callback(snapshot)` with the current result, then after every change to it
        (on a background thread). Returns the function that stops listening."""
        return self._ref._backend.subscribe({"query": self.wire}, callback)


class Reference:
    """A path in the tree. Immutable: `append` returns a new reference."""

    __slots__ = ("_backend", "segments")

    def __init__(self, backend: Backend, segments: CheckedPath):
        self._backend = backend
        self.segments = segments

    @property
    def path(self) -> str:
        """The path as "collection/document/…"."""
        return "/".join(self.segments)

    @property
    def id(self) -> str | None:
        """The last segment (None for the root)."""
        return self.segments[-1] if self.segments else None

    def append(self, *segments: str) -> Reference:
        """A new reference, `segments` further down."""
        return make_reference(self._backend, check_path(self.segments + _segments(segments)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.segments == self.segments and other._backend is self._backend

    def __hash__(self) -> int:
        return hash(self.segments)

    def _target(self, key: str | None) -> CheckedPath:
        raise NotImplementedError

    # Writes

    def add(self, value: dict[str, Any], key: str | None = None) -> str:
        """Create a document (a generated id, or `key`); ALREADY_EXISTS if it exists. Returns its id."""
        return self._backend.call("add", {"path": self._target(key), "value": value})["id"]

    def set(self, value: dict[str, Any], key: str | None = None) -> str:
        """Replace a document, creating it if missing (a new one if no key). Returns its id."""
        return self._backend.call("set", {"path": self._target(key), "value": value})["id"]

    def update(self, value: dict[str, Any], key: str | None = None) -> str:
        """Merge fields into an existing document ("a.b" sets a nested field). Returns its id."""
        return self._backend.call("update", {"path": self._update_target(key), "fields": _fields(value)})["id"]

    def _update_target(self, key: str | None) -> CheckedPath:
        return self._target(key)

    def delete(self, key: str | None = None) -> Any:
        """Delete a document (or, on a collection without key, the whole collection).
        Returns the deleted value, or None."""
        return self._backend.call("delete", {"path": self._target(key)})["value"]

    # Reads

    def get(self) -> Any:
        """A document's value (None if missing), or a collection as {id: document}."""
        return self._backend.call("get", {"path": self.segments})["value"]

    def query(self) -> Query:
        """A query over this collection (or, on a document, over that one document)."""
        return Query(self)

    def stream(self) -> list[dict[str, Any]]:
        return self.query().stream()

    def exists(self) -> bool:
        """Whether the document exists, or the collection holds a document."""
        return self.query().exists()

    exist = exists

    def count(self) -> int:
        return self.query().count()

    def where(self, field: str | tuple[str, ...], op: str, value: Any) -> Query:
        return self.query().where(field, op, value)

    def order_by(self, field: str | tuple[str, ...], direction: str = "asc") -> Query:
        return self.query().order_by(field, direction)

    def limit(self, n: int) -> Query:
        return self.query().limit(n)

    def limit_to_last(self, n: int) -> Query:
        return self.query().limit_to_last(n)

    def offset(self, n: int) -> Query:
        return self.query().offset(n)

    def start_at(self, *values: Any) -> Query:
        return self.query().start_at(*values)

    def start_after(self, *values: Any) -> Query:
        return self.query().start_after(*values)

    def end_at(self, *values: Any) -> Query:
        return self.query().end_at(*values)

    def end_before(self, *values: Any) -> Query:
        return self.query().end_before(*values)

    def sum(self, field: str | tuple[str, ...]) -> int | float:
        return self.query().sum(field)

    def avg(self, field: str | tuple[str, ...]) -> float | None:
        return self.query().avg(field)

    def on_snapshot(self, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Call `callback(snapshot)` now and after every change: a DocumentSnapshot (id, value,
        exists) for a document, a QuerySnapshot (docs, changes) for a collection. Callbacks run
        on a background thread. Returns the function that stops listening."""
        return self.query().on_snapshot(callback)


class CollectionReference(Reference):
    """A collection: `key=` names one of its documents."""

    __slots__ = ()

    def _target(self, key: str | None) -> CheckedPath:
        if key is None:
            return self.segments
        return CheckedPath((*self.segments, check_key(key, pointer("/path", len(self.segments)))))  # at most 63 + 1 segments

    def _update_target(self, key: str | None) -> CheckedPath:
        if key is None:
            raise InvalidArgumentError("update on a collection needs key= (the document to merge into)", {"path": "/path"})
        return self._target(key)


class DocumentReference(Reference):
    """A document: its children are subcollections, reached with `append`."""

    __slots__ = ()

    def on_snapshot(self, callback: Callable[[DocumentSnapshot], None]) -> Callable[[], None]:
        return self._backend.subscribe({"path": list(self.segments)}, callback)

    def _target(self, key: str | None) -> CheckedPath:
        if key is not None:
            raise InvalidArgumentError(
                f"key= is for collection references; {self.path} is a document (use append() for subcollections)",
                {"path": "/path"},
            )
        return self.segments


class WriteBatch:
    """Writes collected, then applied all or nothing by `commit()` (one journal record)."""

    def __init__(self, backend: Backend):
        self._backend = backend
        self._writes: list[dict[str, Any]] = []

    def add(self, ref: Reference, value: dict[str, Any], key: str | None = None) -> WriteBatch:
        self._writes.append({"op": "add", "path": ref._target(key), "value": value})
        return self

    def set(self, ref: Reference, value: dict[str, Any], key: str | None = None) -> WriteBatch:
        self._writes.append({"op": "set", "path": ref._target(key), "value": value})
        return self

    def update(self, ref: Reference, value: dict[str, Any], key: str | None = None) -> WriteBatch:
        self._writes.append({"op": "update", "path": ref._update_target(key), "fields": _fields(value)})
        return self

    def delete(self, ref: Reference, key: str | None = None) -> WriteBatch:
        self._writes.append({"op": "delete", "path": ref._target(key)})
        return self

    def _params(self) -> dict[str, Any]:
        return {"writes": self._writes}

    def commit(self) -> list[Any]:
        """Apply every write or none; returns each write's result (an id, or a deleted value)."""
        if not self._writes:
            return []
        results = self._backend.call("commit", self._params())["results"]
        self._writes = []
        return [result["id"] if "id" in result else result["value"] for result in results]


class Transaction(WriteBatch):
    """A batch that also records what it read; the commit fails with CONFLICT if any of it changed."""

    def __init__(self, backend: Backend):
        super().__init__(backend)
        self._reads: list[dict[str, Any]] = []

    def get(self, ref: Reference) -> Any:
        """Read a document (or any path) inside the transaction; reads come before writes."""
        if self._writes:
            raise InvalidArgumentError("a transaction reads before it writes", {"path": ref.path})
        value = ref.get()
        self._reads.append({"path": list(ref.segments), "value": value})
        return value

    def _params(self) -> dict[str, Any]:
        return {"writes": self._writes, "reads": self._reads}


# A transaction runs at most MAX_ATTEMPTS times; after its nth conflict it waits a random time up to
# 10 ms × 2^(n-1), at most 0.5 s (full-jitter exponential backoff), so contending writers spread
# out instead of colliding again. Under contention the writers that just committed start afresh
# while a loser waits, so a loser may need many attempts (8 clients × 25 increments of one
# counter took up to 8 here): hence more attempts than Firestore's 5.
MAX_ATTEMPTS = 20
BACKOFF_FIRST = 0.01
BACKOFF_CAP = 0.5


def run_transaction(backend: Backend, fn: Callable[[Transaction], Any], max_attempts: int) -> Any:
    """Run `fn(transaction)` and commit; on CONFLICT wait (randomized exponential backoff) and
    run it again, up to `max_attempts` times in all."""
    if type(max_attempts) is not int or max_attempts < 1:
        raise InvalidArgumentError(f"max_attempts must be an integer of at least 1, got {max_attempts!r}")
    for attempt in itertools.count(1):
        transaction = Transaction(backend)
        result = fn(transaction)
        try:
            transaction.commit()
            return result
        except ConflictError:
            if attempt >= max_attempts:
                raise
        time.sleep(random.uniform(0, min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (attempt - 1))))
