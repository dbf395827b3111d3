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
from .paths import CheckedPath, pointer
from .schemas import load_schema

__all__ = ["Call", "Rpc", "compile_params", "dumps", "internal", "loads"]

log = logging.getLogger("montybase.rpc")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def loads(data: str | bytes) -> Any:
    """Strict JSON: no NaN or Infinity."""
    return json.loads(data, parse_constant=_reject_constant)


dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode  # one encoder, reused


@dataclass(frozen=True, slots=True)
class Call:
    """One request: `id` is None for a notification (which gets no answer)."""

    id: str | int | None
    method: str
    params: dict[str, Any]
    notification: bool


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
        """The messages in a frame and whether it was a batch."""
        try:
            message = loads(data)
        except RecursionError:
            raise LimitExceededError("the message is nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError(f"the frame is not JSON: {exc}") from None
        if isinstance(message, list):
            if not message:
                raise InvalidRequestError("an empty batch")
            if len(message) > self.max_batch:
                raise InvalidRequestError(
                    f"a batch holds at most {self.max_batch} requests, got {len(message)}",
                    {"limit": self.max_batch, "actual": len(message)},
                )
            return message, True
        return [message], False

    def call(self, message: Any) -> Call:
        """Check one request object and its params; raise the error to answer with."""
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
        """The id to answer a bad request with: its own if readable, else null."""
        if isinstance(message, dict):
            request_id = message.get("id")
            if request_id is None or isinstance(request_id, str) or type(request_id) is int:
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
