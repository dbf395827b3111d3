"""Segment and key rules, field paths, and time-sortable generated ids."""

from __future__ import annotations

import base64
import os
import re
import secrets
import threading
import time
from collections.abc import Sequence

from .errors import InvalidArgumentError, LimitExceededError

__all__ = [
    "ID_ALPHABET",
    "MAX_KEY_BYTES",
    "MAX_PATH_SEGMENTS",
    "CheckedPath",
    "advance_id_clock",
    "check_key",
    "check_path",
    "field_path",
    "generate_id",
    "id_clock",
    "lone_surrogate",
    "new_id",
    "pointer",
    "simple_key",
]

MAX_KEY_BYTES = 128
MAX_PATH_SEGMENTS = 64

# Control characters (C0, DEL, C1), the path separator, and lone surrogates,
# which Python accepts in str but cannot encode as UTF-8.
_FORBIDDEN_CHARS = re.compile("[\x00-\x1f\x7f-\x9f/\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> bool:
    """Whether `text` holds a surrogate code point: one comes from a JSON escape such as
    `\\ud800` without its pair (JSON joins a pair into one code point), and UTF-8 cannot encode it."""
    return not text.isascii() and _SURROGATE.search(text) is not None


# Most keys (generated ids, plain names) are ASCII letters, digits, "_" and "-", and do not start
# with "__": such a key breaks no rule below, and one regex match says so.
simple_key = re.compile(r"(?!__)[A-Za-z0-9_\-]{1,128}").fullmatch


def pointer(where: str, *parts: object) -> str:
    """A JSON Pointer (RFC 6901) below `where`: how every error's `data.path` names a place in
    the request's params ("" the params, "/value/stats/best", "/writes/0/path/1")."""
    for part in parts:
        text = part if type(part) is str else str(part)
        if "~" in text or "/" in text:
            text = text.replace("~", "~0").replace("/", "~1")
        where += "/" + text
    return where


def check_key(key: object, where: str = "/key") -> str:
    """Return `key` if it is a valid segment or object key, else raise InvalidArgumentError.

    A key is a non-empty string of at most 128 UTF-8 bytes, without `/` or control
    characters, not `.` or `..`, not `__…__` (covers `__proto__`), not starting with `$`.
    """
    if type(key) is str and simple_key(key) is not None:
        return key
    if type(key) is not str:
        raise InvalidArgumentError(
            f"{where}: a key must be a string, got {type(key).__name__} {key!r}", {"path": where}
        )
    problem = None
    if not key:
        problem = "is empty"
    elif key in (".", ".."):
        problem = "may not be '.' or '..'"
    elif key[0] == "$":
        problem = "may not start with '$'"
    elif len(key) >= 4 and key.startswith("__") and key.endswith("__"):
        problem = "may not have the form __name__"
    elif _FORBIDDEN_CHARS.search(key):
        problem = "may not contain '/', control characters or lone surrogates"
    elif len(key) > MAX_KEY_BYTES // 4 and (size := len(key.encode("utf-8"))) > MAX_KEY_BYTES:
        raise LimitExceededError(
            f"{where}: key {key!r} is longer than {MAX_KEY_BYTES} UTF-8 bytes ({size})",
            {"path": where, "limit": MAX_KEY_BYTES, "actual": size},
        )
    if problem:
        raise InvalidArgumentError(f"{where}: key {key!r} {problem}", {"path": where})
    return key


class CheckedPath(tuple):
    """A path check_path has passed: references hold one, and check_path takes it as it is."""

    __slots__ = ()


def check_path(path: object, where: str = "/path") -> CheckedPath:
    """Validate a path (a list or tuple of segments) and return it as a CheckedPath."""
    if type(path) is CheckedPath:
        return path
    if not isinstance(path, (list, tuple)):
        raise InvalidArgumentError(f"{where}: a path is a list of segments, got {type(path).__name__}", {"path": where})
    if len(path) > MAX_PATH_SEGMENTS:
        raise InvalidArgumentError(f"{where}: a path has at most {MAX_PATH_SEGMENTS} segments, got {len(path)}", {"path": where})
    for index, segment in enumerate(path):
        if type(segment) is not str or simple_key(segment) is None:
            check_key(segment, pointer(where, index))
    return CheckedPath(path)


def field_path(field: object, where: str = "/field") -> tuple[str, ...]:
    """A field path: `"a.b"` (split on dots) or a list/tuple of keys (taken literally)."""
    if isinstance(field, str):
        parts: Sequence[object] = field.split(".")
    elif isinstance(field, (list, tuple)) and field:
        parts = field
    else:
        raise InvalidArgumentError(
            f"{where}: a field is a dotted string or a non-empty list of keys, got {field!r}", {"path": where}
        )
    return tuple(check_key(part, where) for part in parts)


ID_ALPHABET = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
_RANDOM_BITS = 72  # 12 characters of 6 bits
_RANDOM_MAX = (1 << _RANDOM_BITS) - 1
clock_ns = time.time_ns  # the clock ids read (tests set one that went back)
_id_lock = threading.Lock()
_floor_ms = -1  # ids exist up to this millisecond (advance_id_clock): never one at or below it
_last_ms = -1
_last_random = 0
# Random bytes from `secrets`, read 456 ids' worth at a time (one read costs about as much as
# one id's). A forked child starts afresh: never on bytes, or a counter, its parent also uses.
_POOL_BYTES = 9 * 456
_pool = b""
_pool_at = 0


def _start_afresh() -> None:
    global _pool, _pool_at, _last_ms, _last_random
    _pool, _pool_at, _last_ms, _last_random = b"", 0, _floor_ms, _RANDOM_MAX


os.register_at_fork(after_in_child=_start_afresh)


def _random_part() -> int:
    """72 random bits (under _id_lock)."""
    global _pool, _pool_at
    if _pool_at == len(_pool):
        _pool, _pool_at = secrets.token_bytes(_POOL_BYTES), 0
    start = _pool_at
    _pool_at += 9
    return int.from_bytes(_pool[start:_pool_at], "big")


# base64 digits map value v to B64[v]; translating them to ID_ALPHABET[v] keeps the
# value but makes the characters sort in numeric order.
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_ID = bytes.maketrans(_B64, ID_ALPHABET.encode())


def new_id() -> tuple[str, int]:
    """A generated id and its millisecond (see generate_id)."""
    global _last_ms, _last_random
    with _id_lock:
        now = clock_ns() // 1_000_000
        if now <= _last_ms:
            now, random_part = _last_ms, _last_random + 1
            if random_part > _RANDOM_MAX:  # 2^72 ids in one millisecond: borrow the next one
                now, random_part = now + 1, _random_part()
        else:
            random_part = _random_part()
        _last_ms, _last_random = now, random_part
    # 48 bits of time then 72 random bits: 15 bytes, exactly 20 base64 characters.
    raw = ((now << _RANDOM_BITS) | random_part).to_bytes(15, "big")
    return base64.urlsafe_b64encode(raw).translate(_TO_ID).decode(), now


def generate_id() -> str:
    """A 20-character id: 8 characters of milliseconds, then 12 random ones.

    Ids from one process sort in creation order: within one millisecond the random
    part is incremented, as Realtime Database push ids do; and after advance_id_clock,
    every id sorts after those of the storage it was given for.
    """
    return new_id()[0]


def id_clock() -> int:
    """The millisecond of the latest id this process generated or was told of: the id time a
    storage keeps, so that ids after a restart sort after it (0 before any)."""
    return max(_last_ms, 0)


def advance_id_clock(ms: int) -> None:
    """Ids exist up to millisecond `ms` (a reopened storage's): generate none at or before it,
    though the clock went back."""
    global _floor_ms, _last_ms, _last_random
    with _id_lock:
        _floor_ms = max(_floor_ms, ms)
        if ms >= _last_ms:
            # The next id borrows the millisecond after `ms`: the random parts of the ids at `ms`
            # are not known, so it may not share it.
            _last_ms, _last_random = ms, _RANDOM_MAX
