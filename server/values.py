"""Document values: JSON validation, JSON equality, copies, and field transforms."""

from __future__ import annotations

import ctypes
import marshal
import math
import sys
from typing import Any

from .errors import InvalidArgumentError, LimitExceededError
from .paths import check_key, pointer

__all__ = [
    "DELETE",
    "MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "TRANSFORMS",
    "clone",
    "clone_all",
    "json_equal",
    "prepare",
    "settled",
    "shaped",
    "untracked",
]

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 32

# A transform is a one-key object whose key starts with "$" (user keys never do).
TRANSFORMS = frozenset(
    {"$increment", "$maximum", "$minimum", "$arrayUnion", "$arrayRemove", "$serverTimestamp", "$delete"}
)


class _Delete:
    """Marks a field that a `$delete` transform removes."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: a string never equals a number, `true` never equals 1, 1 equals 1.0."""
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if ta in (int, float) and tb in (int, float):
        return a == b
    if ta is not tb:
        return False
    if ta is list:
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if ta is dict:
        return a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    return a == b


def clone(value: Any) -> Any:
    """A deep copy of a JSON value (stored values are never handed out): a C-level copy of
    each container, then only its nested containers copied again."""
    kind = type(value)
    if kind is dict:
        out = value.copy()
        for key, item in out.items():  # replacing values of existing keys while iterating is safe
            kind = type(item)
            if kind is dict or kind is list:
                out[key] = clone(item)
        return out
    if kind is list:
        out = value.copy()
        for index, item in enumerate(out):
            kind = type(item)
            if kind is dict or kind is list:
                out[index] = clone(item)
        return out
    return value


def clone_all(values: list[Any], step: int = 1000) -> list[Any]:
    """[clone(value) for value in values], copied in C (marshal: about twice as fast for small
    documents), `step` values per call so that no call holds the GIL for long (a millisecond per
    thousand small documents). Marshal writes an object held twice as one shared object; stored
    values never share a list or an object (every write stores a fresh copy), so the copies
    share none either."""
    if len(values) < 8:  # below that, marshal's fixed cost is more than it saves
        return [clone(value) for value in values]
    out: list[Any] = []
    for low in range(0, len(values), step):
        out += marshal.loads(marshal.dumps(values[low:low + step]))
    return out


# Objects of one shape (the same keys in the same order) share one table of keys, as the
# attributes of a class's instances do in CPython (key-sharing dictionaries, PEP 412): a dict of
# four fields takes 104 bytes instead of 184 and is still a plain dict (a key added later makes it
# an ordinary one again). A shape's first object is the attributes of an instance of a class of
# its own; its other objects are copies of that one, which share its keys. A shape is made the
# second time it is seen (a map keyed by ids, each seen once, makes none), at most MAX_SHAPES of
# them (a class each: about 2 KiB, made in 50 µs); objects of other shapes stay as they are.
MAX_SHAPES = 4096
_SHARED_KEYS = 30  # CPython shares at most 30 keys of a class
_UNSEEN = object()
_shapes: dict[tuple[str, ...], dict | None] = {}
_seen_once: set[tuple[str, ...]] = set()  # shapes seen once and not made yet (at most MAX_SHAPES)


def shaped(value: Any) -> Any:
    """A dict equal to `value` (keys in the same order) that shares the keys of its shape; what is
    not a dict as it is."""
    if type(value) is not dict or not value or len(value) > _SHARED_KEYS:
        return value
    template = _shapes.get(keys := tuple(value), _UNSEEN)
    if template is _UNSEEN:
        if keys not in _seen_once:
            if len(_seen_once) >= MAX_SHAPES:
                _seen_once.clear()
            _seen_once.add(keys)
            return value
        _seen_once.discard(keys)
        template = _shape(keys)
    if template is None:
        return value
    out = template.copy()
    out.update(value)
    return out


def _shape(keys: tuple[str, ...]) -> dict | None:
    if len(_shapes) >= MAX_SHAPES:
        return None
    _shapes[keys] = template = _template(keys)
    return template


def _template(keys: tuple[str, ...]) -> dict | None:
    """The first object of a shape (None: objects of it stay as they are)."""
    kind = type("Shape", (), {})
    first = kind()
    try:
        for key in keys:
            setattr(first, key, None)
    except (TypeError, AttributeError):  # `__class__`, `__dict__`: refused by check_key, not by old files
        return None
    # Each instance made narrows the room the class keeps for keys none of them has yet, down to
    # one: a copy of `first` then holds values for its keys and one more, not for 30.
    for _ in range(_SHARED_KEYS + 2):
        kind()
    template = vars(first)
    try:  # an interpreter without key-sharing dicts keeps its plain ones
        smaller = sys.getsizeof(template.copy()) < sys.getsizeof(dict(template))
    except TypeError:
        return None
    return template if smaller else None


try:  # CPython's C API: take a container out of the garbage collector's walks
    _untrack = ctypes.pythonapi.PyObject_GC_UnTrack
    _untrack.argtypes, _untrack.restype = [ctypes.py_object], None
except AttributeError:  # an interpreter without it walks them as before
    _untrack = None


# Values that repeat across documents (a level, a count, a tag, a status) are stored once: a
# decoded message makes an object of each, 32 bytes for an integer and 56 or more for a string.
# Integers in SAME_INTS are kept once each (at most 66,560 of them); strings of at most
# SHORT_STRING characters through a table of at most MAX_STRINGS, emptied when full (the strings
# that repeat come back at once; names seen once cost no more than that table).
SAME_INTS = range(-1024, 65536)
SHORT_STRING = 16
MAX_STRINGS = 16384
_ints: dict[int, int] = {}
_strings: dict[str, str] = {}


def untracked(container: Any) -> Any:
    """`container`, out of the garbage collector's walks (see `settled`) where the interpreter
    allows it: a list stays out, a dict until it is given a dict or a list (CPython's rule)."""
    if _untrack is not None:
        _untrack(container)
    return container


def settled(document: Any) -> Any:
    """`document` as the tree keeps it: `shaped`, its small integers and short strings (at any
    depth) the equal ones other stored documents hold, and it and the objects and arrays in it
    out of the garbage collector's walks. JSON holds no reference cycle and a stored document is
    never changed, so the collector has nothing to find there; yet a full collection walked every
    document written since the start (a million: 460 ms, pausing every thread, again each time
    the objects that live long had grown by a quarter). Loaded documents are frozen out of its
    view at once instead (Database: gc.freeze)."""
    document = shaped(document)
    if type(document) is dict:
        _settle(document)
    return document


def _settle(container: dict | list) -> None:
    untracked(container)
    ints, strings = _ints, _strings
    for key, item in container.items() if type(container) is dict else enumerate(container):
        kind = type(item)  # replacing the values of existing keys or places is safe
        if kind is str:
            if len(item) <= SHORT_STRING:
                container[key] = strings.get(item) or _remember(item)
        elif kind is int:
            if item in SAME_INTS:
                container[key] = ints.setdefault(item, item)
        elif kind is dict or kind is list:
            _settle(item)


def _remember(text: str) -> str:
    if len(_strings) >= MAX_STRINGS:
        _strings.clear()
    _strings[text] = text
    return text


def _number(value: Any, where: str) -> int | float:
    if type(value) is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return value
        raise InvalidArgumentError(
            f"{where}: integer {value} is outside ±(2^53-1), which JavaScript cannot hold exactly",
            {"path": where},
        )
    if type(value) is float:
        if math.isfinite(value):
            return value
        raise InvalidArgumentError(f"{where}: {value} is not a finite number", {"path": where})
    raise InvalidArgumentError(f"{where}: expected a number, got {type(value).__name__}", {"path": where})


_known_keys: set[str] = set()


def _key(key: Any, where: str) -> None:
    """Check an object key; keys seen valid before are remembered (they repeat a lot)."""
    check_key(key, pointer(where, key))
    if len(_known_keys) < 10_000:
        _known_keys.add(key)


def _string(value: str, where: str) -> str:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"{where}: string holds a lone surrogate", {"path": where}) from None
    return value


def _transform(name: str, operand: Any, old: Any, where: str, now_ms: int, allow_delete: bool) -> Any:
    if name == "$increment":
        step = _number(operand, where)
        if type(old) in (int, float) and type(old) is not bool:
            return _number(old + step, where)
        return step
    if name == "$maximum" or name == "$minimum":
        bound = _number(operand, where)
        if type(old) in (int, float) and type(old) is not bool:
            return max(old, bound) if name == "$maximum" else min(old, bound)
        return bound
    if name == "$arrayUnion" or name == "$arrayRemove":
        if type(operand) is not list:
            raise InvalidArgumentError(f"{where}: {name} takes a list of items", {"path": where})
        items = prepare(operand, None, where, now_ms, None, 2)
        current = [clone(v) for v in old] if type(old) is list else []
        if name == "$arrayRemove":
            return [v for v in current if not any(json_equal(v, item) for item in items)]
        for item in items:
            if not any(json_equal(v, item) for v in current):
                current.append(item)
        return current
    if name == "$serverTimestamp":
        return now_ms
    if name == "$delete":
        if not allow_delete:
            raise InvalidArgumentError(f"{where}: delete_field() is only allowed in update", {"path": where})
        return DELETE
    raise InvalidArgumentError(f"{where}: unknown transform {name!r}", {"path": where})


def prepare(
    value: Any, old: Any, where: str, now_ms: int, transforms: str | None = "set", depth: int = 1
) -> Any:
    """Validate a JSON value and return a fresh copy of it.

    With `transforms` ("set" or "update"), one-key objects like `{"$increment": 1}` are
    resolved against `old`, the value they replace; "update" also allows `$delete`, which
    resolves to DELETE. Inside arrays no transforms apply.
    """
    kind = type(value)
    if kind is str:
        return _string(value, where)
    if kind is int or kind is float:
        return _number(value, where)
    if kind is bool or value is None:
        return value
    if depth > MAX_DEPTH:
        raise LimitExceededError(
            f"{where}: nested deeper than {MAX_DEPTH} levels", {"path": where, "limit": MAX_DEPTH, "actual": depth}
        )
    if kind is dict:
        if transforms and len(value) == 1:
            (key,) = value
            if type(key) is str and key in TRANSFORMS:
                return _transform(key, value[key], old, where, now_ms, transforms == "update")
        base = old if type(old) is dict else None
        out = {}
        for key, item in value.items():
            if key not in _known_keys:
                _key(key, where)
            kind = type(item)
            if kind is str:
                if not item.isascii():
                    _string(item, pointer(where, key))
            elif kind is int:
                if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                    _number(item, pointer(where, key))
            elif kind is not bool and item is not None:
                item = prepare(item, base.get(key) if base else None, pointer(where, key), now_ms, transforms, depth + 1)
                if item is DELETE:
                    continue
            out[key] = item
        return shaped(out)
    if kind is list or kind is tuple:
        out = [None] * len(value)  # sized exactly (a list built by appends keeps room for more)
        for i, item in enumerate(value):
            out[i] = prepare(item, None, pointer(where, i), now_ms, None, depth + 1)
        return out
    raise InvalidArgumentError(
        f"{where}: {kind.__name__} is not a JSON value (use null, bool, number, string, list or dict)",
        {"path": where},
    )
