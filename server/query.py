"""Queries as plain data: parsing the wire form, matching, ordering, cursors and windows."""

from __future__ import annotations

import gc
import math
import operator
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sortedcontainers import SortedList

from .errors import InvalidArgumentError
from .paths import check_path, field_path, pointer
from .values import MAX_SAFE_INTEGER, json_equal, prepare, untracked

__all__ = [
    "OPERATORS", "ElementIndex", "OrderIndex", "Query", "aggregate", "compile_where", "count", "field_value", "matches",
    "filled", "parse_query", "pause", "pause_between_steps", "pausing", "run", "sort_in_steps",
]

OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "not-in", "array-contains", "array-contains-any")
_LIST_OPERATORS = ("in", "not-in", "array-contains-any")
_MISSING = object()
_NUMBERS = (int, float)


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query. `order_by` holds (field, descending) pairs; cursors are key tuples."""

    path: tuple[str, ...]
    where: tuple[tuple[tuple[str, ...], str, Any], ...] = ()
    order_by: tuple[tuple[tuple[str, ...], bool], ...] = ()
    limit: int | None = None
    limit_to_last: int | None = None
    offset: int = 0
    start: tuple[tuple[Any, ...], bool] | None = None  # (key, inclusive)
    end: tuple[tuple[Any, ...], bool] | None = None
    # Set by access rules, never from the wire: only documents whose owner field (None: the
    # document id) equals this uid.
    owner: tuple[tuple[str, ...] | None, str] | None = None

    @property
    def plain(self) -> bool:
        """No filter, cursor or window: every document of the collection, in id order."""
        return not (self.where or self.order_by or self.start or self.end or self.offset or self.owner) and (
            self.limit is None and self.limit_to_last is None
        )

    def admits(self, doc_id: str, document: Any) -> bool:
        """Whether a document passes the filters (not the window)."""
        if self.owner is not None and not _owned(self.owner, doc_id, document):
            return False
        return not self.where or matches(document, self.where)


def _owned(owner: tuple[tuple[str, ...] | None, str], doc_id: str, document: Any) -> bool:
    field, uid = owner
    return (doc_id if field is None else field_value(document, field)) == uid


def _integer(data: Mapping[str, Any], name: str, minimum: int, where: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if type(value) is not int or value < minimum:
        at = pointer(where, name)
        raise InvalidArgumentError(f"{at}: {name} must be an integer ≥ {minimum}, got {value!r}", {"path": at})
    return value


def parse_query(data: Any, where: str = "/query") -> Query:
    """Turn the wire form of a query into a Query, or raise InvalidArgumentError naming the fault.

    Wire form: {"path": [...], "where": [[field, op, value], ...], "orderBy": [[field, "asc"|"desc"], ...],
    "limit": n, "limitToLast": n, "offset": n, "startAt" | "startAfter": [values], "endAt" | "endBefore": [values]}.
    A field is a dotted string or a list of keys. `where` is the query's JSON Pointer in the params.
    """
    if not isinstance(data, Mapping):
        raise InvalidArgumentError(f"{where}: a query is an object", {"path": where})
    unknown = set(data) - {"path", "where", "orderBy", "limit", "limitToLast", "offset", "startAt", "startAfter", "endAt", "endBefore"}
    if unknown:
        raise InvalidArgumentError(f"{where}: the query has unknown members {sorted(unknown)}", {"path": where})
    path = check_path(data.get("path"), pointer(where, "path"))
    clauses = []
    for i, clause in enumerate(data.get("where") or ()):
        where_at = pointer(where, "where", i)
        if not isinstance(clause, (list, tuple)) or len(clause) != 3:
            raise InvalidArgumentError(f"{where_at}: a where clause is [field, op, value]", {"path": where_at})
        field, op, value = clause
        if op not in OPERATORS:
            raise InvalidArgumentError(f"{where_at}: unknown operator {op!r}; use one of {', '.join(OPERATORS)}", {"path": where_at})
        value = prepare(value, None, pointer(where_at, 2), 0, None)
        if op in _LIST_OPERATORS and type(value) is not list:
            raise InvalidArgumentError(f"{where_at}: {op!r} needs a list of values", {"path": where_at})
        clauses.append((field_path(field, pointer(where_at, 0)), op, value))
    order_by = []
    for i, clause in enumerate(data.get("orderBy") or ()):
        order_at = pointer(where, "orderBy", i)
        if not isinstance(clause, (list, tuple)) or len(clause) != 2 or clause[1] not in ("asc", "desc"):
            raise InvalidArgumentError(f"{order_at}: an order is [field, 'asc' | 'desc']", {"path": order_at})
        order_by.append((field_path(clause[0], pointer(order_at, 0)), clause[1] == "desc"))
    limit, limit_to_last = _integer(data, "limit", 0, where), _integer(data, "limitToLast", 0, where)
    if limit is not None and limit_to_last is not None:
        at = pointer(where, "limitToLast")
        raise InvalidArgumentError(f"{at}: the query has both limit and limitToLast", {"path": at})
    query = Query(path, tuple(clauses), tuple(order_by), limit, limit_to_last, _integer(data, "offset", 0, where) or 0)
    cursors = {}
    for side, names in (("start", ("startAt", "startAfter")), ("end", ("endAt", "endBefore"))):
        given = [name for name in names if data.get(name) is not None]
        if len(given) > 1:
            at = pointer(where, given[1])
            raise InvalidArgumentError(f"{at}: the query has both {given[0]} and {given[1]}", {"path": at})
        if given:
            name = given[0]
            cursors[side] = (_cursor_key(data[name], query.order_by, pointer(where, name)), name.endswith("At"))
    return Query(**{**{f: getattr(query, f) for f in Query.__slots__}, **cursors})


def _cursor_key(values: Any, order_by: tuple, where: str) -> tuple[Any, ...]:
    """Cursor values follow the order fields; one more value may name the id (ties)."""
    if not isinstance(values, (list, tuple)) or not values or len(values) > len(order_by) + 1:
        raise InvalidArgumentError(
            f"{where} takes 1 to {len(order_by) + 1} values (one per order_by field, then an id)", {"path": where}
        )
    key = []
    for i, value in enumerate(values):
        value = prepare(value, None, pointer(where, i), 0, None)
        if i < len(order_by):
            key.extend(sort_key(value, order_by[i][1]))
        elif type(value) is not str:
            at = pointer(where, i)
            raise InvalidArgumentError(f"{at}: the value after the order fields is an id, a string", {"path": at})
        else:
            key.append(value)
    return tuple(key)


class _Reverse:
    """Inverts the order of what it wraps (descending arrays and objects; strings: _descending)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __lt__(self, other: Any) -> bool:
        # Anything else (the _TOP bound) answers for itself.
        return other.value < self.value if type(other) is _Reverse else NotImplemented

    def __gt__(self, other: Any) -> bool:
        return other.value > self.value if type(other) is _Reverse else NotImplemented

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reverse) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"Reverse({self.value!r})"


def _descending(value: str) -> bytes:
    """A key that sorts strings in reverse code point order, as bytes (compared in C, and never
    tracked by the cyclic garbage collector, whose full collections hold every thread: 100,000
    _Reverse objects in an index made each one 100 ms longer). UTF-8 orders bytes as code points;
    each byte b (never above 0xF4) becomes 254 - b, and 0xFF, above all of those, ends the key:
    a string sorts after the longer strings that begin with it."""
    return value.encode("utf-8", "surrogatepass").translate(_INVERTED) + b"\xff"


_INVERTED = bytes(max(254 - b, 0) for b in range(256))


class _Top:
    """Sorts after every key element; closes a cursor prefix for "after" bounds."""

    def __lt__(self, other: object) -> bool:
        return False

    def __gt__(self, other: object) -> bool:
        return other is not self


_TOP = _Top()


def sort_key(value: Any, descending: bool = False) -> tuple[int, Any]:
    """Total order over JSON values: null < booleans < numbers < strings < arrays < objects."""
    kind = type(value)
    if kind is int or kind is float:
        return (-2, -value) if descending else (2, value)
    if kind is str:
        return (-3, _descending(value)) if descending else (3, value)
    if kind is bool:
        return (-1, -value) if descending else (1, int(value))
    if value is None:
        return (0, 0)
    if kind is list:
        inner: Any = tuple(sort_key(item) for item in value)
        rank = 4
    else:
        inner = tuple((k, sort_key(v)) for k, v in sorted(value.items()))
        rank = 5
    return (-rank, _Reverse(inner)) if descending else (rank, inner)


def field_value(document: Any, field: tuple[str, ...]) -> Any:
    """The value at a field path of a document, or _MISSING."""
    for key in field:
        if type(document) is not dict:
            return _MISSING
        document = document.get(key, _MISSING)
        if document is _MISSING:
            return _MISSING
    return document


def _range(op: str, value: Any, bound: Any) -> bool:
    """Range operators compare numbers with numbers and strings with strings; else False."""
    kind, bound_kind = type(value), type(bound)
    if not ((kind in _NUMBERS and bound_kind in _NUMBERS) or (kind is str and bound_kind is str)):
        return False
    if op == "<":
        return value < bound
    if op == "<=":
        return value <= bound
    if op == ">":
        return value > bound
    return value >= bound


def matches(document: Any, where: Iterable[tuple[tuple[str, ...], str, Any]]) -> bool:
    """Whether a document satisfies every clause (a missing field never matches)."""
    for field, op, bound in where:
        value = field_value(document, field)
        if value is _MISSING:
            return False
        if op == "==":
            ok = json_equal(value, bound)
        elif op == "!=":
            ok = not json_equal(value, bound)
        elif op == "in":
            ok = any(json_equal(value, item) for item in bound)
        elif op == "not-in":
            ok = not any(json_equal(value, item) for item in bound)
        elif op == "array-contains":
            ok = type(value) is list and any(json_equal(item, bound) for item in value)
        elif op == "array-contains-any":
            ok = type(value) is list and any(json_equal(item, b) for item in value for b in bound)
        else:
            ok = _range(op, value, bound)
        if not ok:
            return False
    return True


_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def compile_where(where: tuple[tuple[tuple[str, ...], str, Any], ...]) -> Callable[[dict], bool] | None:
    """`matches(document, where)` as one function of a document (None when there is no clause),
    for a scan that tests many documents against the same clauses."""
    if not where:
        return None
    checks = [_clause(field, op, bound) for field, op, bound in where]
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda document: first(document) and second(document)
    return lambda document: all(check(document) for check in checks)


def _clause(field: tuple[str, ...], op: str, bound: Any) -> Callable[[dict], bool]:
    """One clause on a document: a top-level field compared with a number or a string (or, for
    == and !=, a boolean or null) is read and compared in place; any other through matches()."""
    kind = type(bound)
    simple = kind in _NUMBERS or kind is str or (op in ("==", "!=") and (kind is bool or bound is None))
    if len(field) != 1 or not simple or op not in _COMPARE and op not in ("==", "!="):
        clause = ((field, op, bound),)
        return lambda document: matches(document, clause)
    key = field[0]
    if op in _COMPARE:  # numbers with numbers, strings with strings (as _range)
        compare = _COMPARE[op]
        if kind is str:
            return lambda document: type(value := document.get(key)) is str and compare(value, bound)
        return lambda document: ((t := type(value := document.get(key))) is int or t is float) and compare(value, bound)
    if bound is None:  # JSON equality (as json_equal): null only equals null
        equal: Callable[[Any], bool] = lambda value: value is None
    elif kind is str or kind is bool:  # a string only equals a string, a boolean a boolean
        equal = lambda value: type(value) is kind and value == bound
    else:  # a number equals a number of the same value (1 == 1.0), never a boolean
        equal = lambda value: ((t := type(value)) is int or t is float) and value == bound
    if op == "==":
        return lambda document: equal(document.get(key, _MISSING))
    return lambda document: (value := document.get(key, _MISSING)) is not _MISSING and not equal(value)


# The most items one C call sorts, merges or copies while a query runs. A thread running C code
# keeps the GIL until the call returns, whatever the switch interval: a 100,000-key list.sort
# holds every other connection for tens of milliseconds, a sort of this many for about 0.1 ms
# (the event loop, waking while a step runs, waits for its end: at 1024, a get's median beside
# index builds was 0.1 ms longer).
STEP = 256


_pause: Callable[[], None] | None = None


def pause_between_steps(hook: Callable[[], None] | None) -> None:
    """Have long work (index builds, sorts) call `hook` between its steps where it may (see
    `pausing`; None: nothing): the server's, which lets its event loop go first
    (server/transport.py, Foreground)."""
    global _pause
    _pause = hook


_pausing = threading.local()


@contextmanager
def pausing() -> Iterator[None]:
    """Let long work in this block pause between its steps: only work that holds no lock the
    event loop may wait for (the database's: writes take it on the loop), or a pause would
    hold the loop up instead."""
    before = getattr(_pausing, "on", False)
    _pausing.on = True
    try:
        yield
    finally:
        _pausing.on = before


def pause() -> None:
    """A step of long work is done: let more urgent work go first, if the server says so and
    the work may (`pausing`)."""
    if _pause is not None and getattr(_pausing, "on", False):
        _pause()


_filling = [0, 0]  # items put in new lists since the last step; steps so far


def filled(items: int) -> None:
    """Note `items` more put in new lists; after every STEP, a step of long work is done: then
    `pause`, after a short pass of the garbage collector every 4th step.

    A collection walks every item of every container in the generations it collects, holding
    every thread meanwhile. Filling lists hardly counts as allocating (their temporaries are
    freed as fast), so an index build's lists stayed young until a pass walked all 100,000
    entries at once, twice (5 ms each). The young generation collected after every 1,024 items
    and the middle one after every 2,048, each pass walks a few thousand (at most about 0.2 ms;
    the middle one every 8,192 items walked up to 1 ms); the oldest is left to its own schedule."""
    _filling[0] += items
    if _filling[0] >= STEP:
        _filling[0] = 0
        _filling[1] += 1
        if _filling[1] % 4 == 0:
            gc.collect(1 if _filling[1] % 8 == 0 else 0)
        pause()


def sort_in_steps(items: list, step: int | None = None) -> list:
    """`sorted(items)` in C calls over at most 2 * step items each (sorted runs of `step`, then
    merged two by two in bounded slices), so another thread waiting for the GIL gets it in
    between. Stable, as sorted() is: equal items keep their order."""
    step = step or STEP
    if len(items) <= step:  # one call, and no young lists to speak of
        return sorted(items)
    runs = []
    for low in range(0, len(items), step):
        runs.append(sorted(items[low:low + step]))
        filled(len(runs[-1]))
    while len(runs) > 1:
        runs = [_merge(runs[i], runs[i + 1], step) if i + 1 < len(runs) else runs[i] for i in range(0, len(runs), 2)]
    return runs[0] if runs else []


def _merge(a: list, b: list, step: int) -> list:
    """Two sorted lists as one, a slice at a time: the next `step` items of each, cut at the
    smaller of their last items; sorting such a slice merges its two runs (timsort finds them)."""
    out: list = []
    i, j, a_len, b_len = 0, 0, len(a), len(b)
    while i < a_len and j < b_len:
        a_end, b_end = min(i + step, a_len), min(j + step, b_len)
        if not b[b_end - 1] < a[a_end - 1]:  # all of a's slice goes; b's items before its last (an equal one comes after a's)
            cut = bisect_left(b, a[a_end - 1], j, b_end)
            part = a[i:a_end] + b[j:cut]
            i, j = a_end, cut
        else:  # all of b's slice goes; a's items up to its last, equal ones included (a's come first)
            cut = bisect_right(a, b[b_end - 1], i, a_end)
            part = a[i:cut] + b[j:b_end]
            i, j = cut, b_end
        part.sort()
        out += part
        filled(len(part))
    for rest, start, end in ((a, i, a_len), (b, j, b_len)):
        for low in range(start, end, step):
            out += rest[low:min(low + step, end)]
            filled(min(step, end - low))
    return out


def _sorted_list(items: list) -> SortedList:
    """A SortedList of `items`, sorted in steps (SortedList(items) sorts them in one call), its
    parts out of the garbage collector's walks. Its entries are tuples of numbers and strings,
    which the collector itself stops following once it saw them, yet each full collection walked
    every entry of every part: with the three indexes of a million documents, 135 of its 145 ms,
    pausing every thread."""
    ordered = sort_in_steps(items)
    entries = SortedList()
    load = entries._load  # filled as SortedList.update fills an empty list, from values sorted here
    entries._lists = []
    for low in range(0, len(ordered), load):
        entries._lists.append(untracked(ordered[low:low + load]))
        if len(ordered) > load:
            filled(load)
    entries._maxes = [part[-1] for part in entries._lists]
    entries._len = len(ordered)
    return entries


def _add(entries: SortedList, key: tuple[Any, ...]) -> None:
    """entries.add(key), a part it splits off or starts out of the collector's walks too."""
    parts = entries._lists
    count = len(parts)
    entries.add(key)
    if len(parts) != count:
        for part in parts:
            if gc.is_tracked(part):
                untracked(part)


class OrderIndex:
    """Documents of one collection kept sorted by an order spec, then by id.

    Built on first use, then maintained on every write, so `order_by` + `limit`
    reads the first entries instead of sorting the collection. An entry is flat,
    (rank, value) per order field then the id, so comparisons stay in C.
    """

    __slots__ = ("spec", "entries")

    def __init__(self, spec: tuple[tuple[tuple[str, ...], bool], ...], documents: Mapping[str, Any]):
        self.spec = spec
        self.entries = _sorted_list(self._keys(documents))

    def _keys(self, documents: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The entries of `documents` (as `key` gives them): for one top-level field, the common
        case, read in place, numbers without a call (about twice as fast as through `key`)."""
        if len(self.spec) != 1 or len(self.spec[0][0]) != 1:
            return [key for key in (self.key(doc_id, doc) for doc_id, doc in documents.items()) if key is not None]
        (name,), descending = self.spec[0]
        rank = -2 if descending else 2
        keys = []
        for doc_id, document in documents.items():
            value = document.get(name, _MISSING) if type(document) is dict else _MISSING
            kind = type(value)
            if kind is float or kind is int:
                keys.append((rank, -value if descending else value, doc_id))
            elif value is not _MISSING:
                keys.append((*sort_key(value, descending), doc_id))
        return keys

    def key(self, doc_id: str, document: Any) -> tuple[Any, ...] | None:
        """The entry of a document, or None if it lacks an order field."""
        if not self.spec:
            return (doc_id,)
        parts = []
        for field, descending in self.spec:
            value = field_value(document, field)
            if value is _MISSING:
                return None
            parts.extend(sort_key(value, descending))
        parts.append(doc_id)
        return tuple(parts)

    def update(self, doc_id: str, old: Any, new: Any) -> None:
        """Move a document's entry after a write (old or new is None when absent); an entry
        that stays the same (its order fields unchanged, the id index on every replace) stays."""
        old_key = None if old is None else self.key(doc_id, old)
        new_key = None if new is None else self.key(doc_id, new)
        if old_key == new_key:
            return
        if old_key is not None:
            self.entries.remove(old_key)
        if new_key is not None:
            _add(self.entries, new_key)


class ElementIndex(OrderIndex):
    """The elements of one array field, each (rank, value, id) once per document: the index
    `array-contains` and `array-contains-any` read. Its spec is ("elements", field)."""

    __slots__ = ()

    def __init__(self, field: tuple[str, ...], documents: Mapping[str, Any]):
        self.spec = ("elements", field)
        self.entries = _sorted_list([entry for doc_id, doc in documents.items() for entry in self.keys(doc_id, doc)])

    def keys(self, doc_id: str, document: Any) -> set[tuple[Any, ...]]:
        value = field_value(document, self.spec[1])
        return {(*sort_key(item), doc_id) for item in value} if type(value) is list else set()

    def update(self, doc_id: str, old: Any, new: Any) -> None:
        old_keys = set() if old is None else self.keys(doc_id, old)
        new_keys = set() if new is None else self.keys(doc_id, new)
        for key in old_keys - new_keys:
            self.entries.remove(key)
        for key in new_keys - old_keys:
            _add(self.entries, key)


Indexes = Callable[[tuple], OrderIndex]
Span = tuple[int, int]
_INDEXED = ("==", "in", "<", "<=", ">", ">=")


def _spans(entries: SortedList, op: str, bound: Any, descending: bool = False) -> list[Span]:
    """The positions of the entries whose first order value passes `field op bound` (the
    index's first field is the clause's field), in index order; a superset is fine, as every
    candidate is checked again, but nothing that matches may be left out."""
    if op in ("in", "array-contains-any"):
        keys = {sort_key(item, descending): None for item in bound}  # equal items once
        return sorted(_spans_of(entries, key) for key in keys)
    if op in ("==", "array-contains"):
        return [_spans_of(entries, sort_key(bound, descending))]
    kind = type(bound)
    if kind not in _NUMBERS and kind is not str:
        return []  # a range compares numbers with numbers, strings with strings: nothing else matches
    key = sort_key(bound, descending)
    after = (op in (">", ">=")) != descending  # the matching values follow the bound in the index
    inclusive = op in (">=", "<=")
    cut = entries.bisect_left(key if inclusive == after else key + (_TOP,))
    if after:
        return [(cut, entries.bisect_left((key[0], _TOP)))]
    return [(entries.bisect_left((key[0],)), cut)]


def _spans_of(entries: SortedList, key: tuple[Any, ...]) -> Span:
    return entries.bisect_left(key), entries.bisect_left(key + (_TOP,))


def _clause_index(indexes: Indexes, field: tuple[str, ...], op: str) -> OrderIndex:
    return indexes(("elements", field) if op.startswith("array-contains") else ((field, False),))


def _window(query: Query, index: OrderIndex, backwards: bool, spans: list[Span] | None = None) -> Iterator[tuple[Any, ...]]:
    """Index entries between the cursors (and within `spans`, if given), in result order or backwards."""
    entries = index.entries
    start, stop = 0, len(entries)
    if query.start:
        key, inclusive = query.start
        start = entries.bisect_left(key if inclusive else key + (_TOP,))
    if query.end:
        key, inclusive = query.end
        stop = entries.bisect_left(key + (_TOP,) if inclusive else key)
    if spans is None:
        return entries.islice(start, stop, reverse=backwards)
    clipped = [(max(start, low), min(stop, high)) for low, high in (reversed(spans) if backwards else spans)]
    return (entry for low, high in clipped if low < high for entry in entries.islice(low, high, reverse=backwards))


def run(query: Query, documents: Mapping[str, Any], indexes: Indexes | None) -> list[tuple[str, Any]]:
    """The (id, document) pairs a query selects, in order.

    `documents` is the collection; `indexes(spec)` its index for an order spec (or an
    ElementIndex for ("elements", field)), built on first use; None when the query addresses a
    single document, whose id is the only key in `documents` (then everything is a scan).

    A query with clauses on indexed operators reads the index of the most selective one: the
    entries it spans are the candidates, each checked against every clause. When the first
    order field is the clause's field, the order index itself is read within those spans.
    """
    check, owner = compile_where(query.where), query.owner
    if indexes is not None and query.where:
        plan = _plan(query, documents, indexes, check, owner)
        if plan is not None:
            return plan
    filtered = check is not None or owner is not None
    if filtered and _unwindowed(query):  # every match in id order: filtering the collection, then sorting the matches beats walking the ids
        ids = sort_in_steps([
            doc_id for doc_id, document in documents.items()
            if (owner is None or _owned(owner, doc_id, document)) and (check is None or check(document))
        ])
        return list(zip(ids, map(documents.__getitem__, ids)))
    index = OrderIndex(query.order_by, documents) if indexes is None else indexes(query.order_by)
    return _walk(query, documents, index, check, owner, None)


def _unwindowed(query: Query) -> bool:
    return not (query.order_by or query.start or query.end or query.offset) and (
        query.limit is None and query.limit_to_last is None
    )


def _plan(
    query: Query, documents: Mapping[str, Any], indexes: Indexes, check: Callable[[Any], bool],
    owner: tuple[tuple[str, ...] | None, str] | None,
) -> list[tuple[str, Any]] | None:
    """The query read through indexes, or None when none of its clauses can be."""
    clauses = [clause for clause in query.where if clause[1] in _INDEXED or clause[1].startswith("array-contains")]
    if not clauses:
        return None
    first = query.order_by[0][0] if query.order_by else None
    # Every index first, then the positions in them: getting an index may let writers in (see Tree.index).
    found = [_clause_index(indexes, field, op) for field, op, _ in clauses]
    ordered = indexes(query.order_by) if any(field == first and op in _INDEXED for field, op, _ in clauses) else None
    best: tuple[int, OrderIndex, list[Span], tuple] | None = None
    for clause, index in zip(clauses, found):
        spans = _spans(index.entries, clause[1], clause[2])
        count = sum(high - low for low, high in spans)
        if best is None or count < best[0]:
            best = (count, index, spans, clause)
    count, index, spans, chosen = best
    asked = _asked(query)
    # With the first order field filtered, its order index read within the clause's spans
    # is in result order: with a limit, that walk can stop early.
    for field, op, bound in clauses:
        if ordered is not None and field == first and op in _INDEXED:
            ordered_spans = _spans(ordered.entries, op, bound, query.order_by[0][1])
            walked = sum(high - low for low, high in ordered_spans)
            if asked is not None:  # about `asked` matches in every (walked / count) entries walked
                walked = min(walked, (asked + query.offset + 1) * walked // max(count, 1))
            if walked <= 2 * count:
                return _walk(query, documents, ordered, check, owner, ordered_spans)
            break
    if asked is not None and (asked + query.offset + 1) * len(documents) < count * max(count, 1):
        return None  # so many match that walking the order index until the limit checks fewer
    # The spans hold the chosen clause's matches and nothing else (equal values sort together,
    # 1 beside 1.0 and never true; a range stops at its type's rank; count() relies on it too),
    # so only the other clauses are checked (told apart by identity: 1 == True in Python).
    check = compile_where(tuple(clause for clause in query.where if clause is not chosen))
    ids: list[str] = []
    for low, high in spans:
        ids += map(_last, index.entries.islice(low, high))
    if chosen[1] == "array-contains-any":  # a document holding several of the values is in several spans
        ids = list(dict.fromkeys(ids))
    if check is not None or owner is not None:
        ids = [
            doc_id for doc_id, document in zip(ids, map(documents.__getitem__, ids))
            if (owner is None or _owned(owner, doc_id, document)) and (check is None or check(document))
        ]
    if _unwindowed(query):
        ids = sort_in_steps(ids)
        return list(zip(ids, map(documents.__getitem__, ids)))
    selected = dict(zip(ids, map(documents.__getitem__, ids)))
    return _walk(query, documents, OrderIndex(query.order_by, selected), None, None, None)


def count(query: Query, documents: Mapping[str, Any], indexes: Indexes | None) -> int:
    """How many documents a query selects. One clause on an indexed operator whose index entries
    are exactly its matches (not `array-contains-any`: a document may hold several of its
    values) counts them by position, reading no document."""
    if indexes is not None and len(query.where) == 1 and query.owner is None and _unwindowed(query):
        field, op, bound = query.where[0]
        if op in _INDEXED or op == "array-contains":
            return sum(high - low for low, high in _spans(_clause_index(indexes, field, op).entries, op, bound))
    return len(run(query, documents, indexes))


def _asked(query: Query) -> int | None:
    return query.limit if query.limit is not None else query.limit_to_last


def _walk(
    query: Query, documents: Mapping[str, Any], index: OrderIndex, check: Callable[[Any], bool] | None,
    owner: tuple[tuple[str, ...] | None, str] | None, spans: list[Span] | None,
) -> list[tuple[str, Any]]:
    """The documents of an index's entries that pass the filters, within the query's window."""
    # limit_to_last walks the window backwards, unless an offset (counted from the front) forces a full pass.
    backwards = query.limit_to_last is not None and not query.offset
    limit = query.limit_to_last if backwards else query.limit
    skip = query.offset
    out: list[tuple[str, Any]] = []
    if limit == 0:
        return out
    for entry in _window(query, index, backwards, spans):
        doc_id = entry[-1]
        document = documents[doc_id]
        if (owner is not None and not _owned(owner, doc_id, document)) or (check is not None and not check(document)):
            continue
        if skip:
            skip -= 1
            continue
        out.append((doc_id, document))
        if limit is not None and len(out) >= limit:
            break
    if backwards:
        out.reverse()
    elif query.limit_to_last is not None:
        out = out[max(0, len(out) - query.limit_to_last):] if query.limit_to_last else []
    return out


_last = operator.itemgetter(-1)  # an index entry's id


def aggregate(op: str, field: tuple[str, ...] | None, selected: list[tuple[str, Any]]) -> Any:
    """count, sum or avg over selected documents; sum and avg read numbers only.

    An integer sum outside ±(2^53−1) is answered as the nearest float, which JavaScript reads as
    the same number (it would round such an integer anyway, Python would not). A sum past the
    largest float is INVALID_ARGUMENT (JSON has no infinity); an average of finite numbers is
    finite, so one whose sum overflows is taken as the sum of the shares instead.
    """
    if op == "count":
        return len(selected)
    numbers = [
        value
        for _, document in selected
        if type(value := field_value(document, field or ())) in _NUMBERS
    ]
    total = sum(numbers)
    if op == "sum":
        if type(total) is int:
            return total if -MAX_SAFE_INTEGER <= total <= MAX_SAFE_INTEGER else float(total)
        if not math.isfinite(total):
            name = ".".join(field or ())
            raise InvalidArgumentError(f"the sum of {name!r} is beyond the largest number (about 1.8e308)", {"path": "/field"})
        return total
    if not numbers:
        return None
    if math.isfinite(total):
        return total / len(numbers)
    return sum(value / len(numbers) for value in numbers)
