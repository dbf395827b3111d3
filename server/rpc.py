"""JSON-RPC 2.0: parse frames, validate params against `schemas/`, shape results and errors."""

from __future__ import annotations

import functools
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import fastjsonschema

from .errors import (
    InternalError, InvalidArgumentError, InvalidRequestError, LimitExceededError, MontybaseError, ParseError,
)
from .paths import CheckedPath, lone_surrogate, pointer
from .schemas import load_schema

__all__ = ["Call", "Refused", "Rpc", "compile_params", "dumps", "internal", "loads"]

log = logging.getLogger("montybase.rpc")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_decode = json.JSONDecoder(parse_constant=_reject_constant).decode  # one decoder, reused (json.loads makes one a call)


def loads(data: str | bytes) -> Any:
    """Strict JSON: no NaN or Infinity; bytes must be UTF-8."""
    return _decode(data if isinstance(data, str) else data.decode("utf-8"))


dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode  # one encoder, reused


@dataclass(frozen=True, slots=True)
class Call:
    """One request: `id` is None for a notification (which gets no answer)."""

    id: str | int | None
    method: str
    params: dict[str, Any]
    notification: bool


# A lone surrogate can only come from an escape (\ud800 to \udfff): UTF-8 cannot hold one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True, slots=True)
class Refused:
    """A request refused as its frame was parsed: the id to answer it by, and the error."""

    id: str | int | None
    error: MontybaseError


def _surrogate_in(value: Any) -> tuple[str, bool] | None:
    """Where `value` holds a lone surrogate, first in document order: a JSON Pointer, and whether
    the surrogate is in a key (then the pointer names the object holding that key). Iterative,
    since a frame may nest as deep as the JSON parser goes."""
    stack: list[tuple[Any, tuple[Any, str | int] | None]] = [(value, None)]  # (item, (its parent's trail, its key))
    while stack:
        item, trail = stack.pop()
        if type(item) is str:
            if lone_surrogate(item):
                return _pointer(trail), False
        elif type(item) is dict:
            if any(lone_surrogate(key) for key in item):
                return _pointer(trail), True
            stack.extend((child, (trail, key)) for key, child in reversed(item.items()))
        elif type(item) is list:
            stack.extend((item[index], (trail, index)) for index in range(len(item) - 1, -1, -1))
    return None


def _pointer(trail: tuple[Any, str | int] | None) -> str:
    keys = []
    while trail is not None:
        trail, key = trail
        keys.append(key)
    return pointer("", *reversed(keys))


def _screened(message: Any) -> Any:
    """The message, or a Refused if its id or params hold a lone surrogate: Python reads one from
    an escape (`\\ud800`) but cannot encode it as UTF-8 again, in an answer that echoes the id or
    names a key, or as a password to hash."""
    if not isinstance(message, dict):
        return message
    request_id = message.get("id")
    if type(request_id) is str and lone_surrogate(request_id):
        return Refused(None, InvalidArgumentError("the request id holds a lone surrogate, which is not text"))
    found = _surrogate_in(message.get("params"))
    if found is None:
        return message
    where, in_key = found
    what = f"a key of {where or 'params'}" if in_key else where or "params"
    error = InvalidArgumentError(f"{what} holds a lone surrogate, which is not text", {"path": where})
    return Refused(Rpc.request_id(message), error)


def _json_path(parts: list[str]) -> str:
    """fastjsonschema's path of a fault as a JSON Pointer into the params."""
    return pointer("", *parts[1:])  # parts[0] is fastjsonschema's name for the root


def _no_remote(uri: str) -> None:
    raise ValueError(f"remote schema reference refused: {uri}")


# fastjsonschema's code names every nested value with str.format(**locals()) before it checks
# it, which is most of what a small request costs; concatenating the same text costs a fifth.
_NAMING = re.compile(r'"([^"]*)\{(\w+)\}([^"]*)"\.format\(\*\*locals\(\)\)')
_PATH_CHECK = "validate_montybase_common___defs_path"  # the function it generates for common#/$defs/path


@functools.cache
def compile_params(method: str) -> Callable[[Any], Any]:
    """A validator for a method's params, compiled to Python once per process; `$ref`s resolve
    only to the local `schemas/common.json`. (fastjsonschema: about 10x faster than interpreting.)
    A path that `check_path` already passed (a CheckedPath, which references hold) is taken as it is."""
    common = load_schema("common")
    handlers = {"montybase": lambda uri: common, "http": _no_remote, "https": _no_remote, "file": _no_remote}
    code = fastjsonschema.compile_to_code(load_schema(method)["properties"]["params"], handlers=handlers)
    scope: dict[str, Any] = {}
    exec(_NAMING.sub(r'"\1" + str(\2) + "\3"', code), scope)  # noqa: S102 - code generated from our own schemas
    check_any_path = scope.get(_PATH_CHECK)
    if check_any_path is not None:
        scope[_PATH_CHECK] = lambda data, custom_formats={}, name_prefix=None: (  # noqa: B006 - fastjsonschema's signature
            data if type(data) is CheckedPath else check_any_path(data, custom_formats, name_prefix)
        )
    return scope["validate"]


class Rpc:
    """Validators compiled once from the schemas of `methods` (local references only), and the
    shapes of answers. Pure: values in, values out."""

    def __init__(self, methods: Iterable[str], *, max_batch: int = 50):
        self.max_batch = max_batch
        self.validators = {method: compile_params(method) for method in methods}

    def parse(self, data: str | bytes) -> tuple[list[Any], bool]:
        """The messages in a frame and whether it was a batch; one whose id or params hold a lone
        surrogate comes as a Refused, which `call` raises."""
        try:
            message = loads(data)
        except RecursionError:
            raise LimitExceededError("the message is nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError(f"the frame is not JSON: {exc}") from None
        batch = isinstance(message, list)
        if batch:
            if not message:
                raise InvalidRequestError("an empty batch")
            if len(message) > self.max_batch:
                raise InvalidRequestError(
                    f"a batch holds at most {self.max_batch} requests, got {len(message)}",
                    {"limit": self.max_batch, "actual": len(message)},
                )
        messages = message if batch else [message]
        if (_SURROGATE_ESCAPE_BYTES if isinstance(data, bytes) else _SURROGATE_ESCAPE).search(data):
            messages = [_screened(message) for message in messages]
        return messages, batch

    def call(self, message: Any) -> Call:
        """Check one request object and its params; raise the error to answer with."""
        if type(message) is Refused:
            raise message.error
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or not isinstance(message.get("method"), str):
            raise InvalidRequestError('a request is an object with "jsonrpc": "2.0" and a string "method"')
        notification = "id" not in message
        request_id = message.get("id")
        if not notification and not (
            request_id is None or isinstance(request_id, str) or (type(request_id) is int)
        ):
            raise InvalidRequestError("id must be a string, an integer or null")
        params = message.get("params", {})
        if not isinstance(params, dict):
            raise InvalidArgumentError("params must be an object", {"path": ""})
        method = message["method"]
        self.check(method, params)
        return Call(request_id, method, params, notification)

    def check(self, method: str, params: Any) -> None:
        """Check params against the method's schema (a method without one is for the router to refuse)."""
        validator = self.validators.get(method)
        if validator is None:
            return
        try:
            validator(params)
        except fastjsonschema.JsonSchemaValueException as exc:
            where = _json_path(exc.path)
            message = exc.message.split(" ", 1)[1] if " " in exc.message else exc.message
            raise InvalidArgumentError(f"{where or 'params'} {message}", {"path": where}) from None

    @staticmethod
    def request_id(message: Any) -> Any:
        """The id to answer a bad request with: its own if readable (not with a lone surrogate,
        which an answer cannot carry), else null."""
        if type(message) is Refused:
            return message.id
        if isinstance(message, dict):
            request_id = message.get("id")
            if request_id is None or type(request_id) is int:
                return request_id
            if type(request_id) is str and not lone_surrogate(request_id):
                return request_id
        return None

    @staticmethod
    def result(request_id: Any, result: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    @staticmethod
    def error(request_id: Any, exc: BaseException) -> dict[str, Any]:
        """The error answer; an unexpected exception becomes INTERNAL (see `internal`)."""
        if not isinstance(exc, MontybaseError):
            exc = internal(exc)
        return {"jsonrpc": "2.0", "id": request_id, "error": exc.to_error()}


def internal(exc: BaseException) -> InternalError:
    """An unexpected exception as the caller sees it: INTERNAL with an id; the log has the traceback."""
    error_id = secrets.token_hex(6)
    log.error("internal error %s", error_id, exc_info=exc)
    return InternalError(f"internal error {error_id}", {"errorId": error_id})
