"""The one exception tree; codes and reasons come from `schemas/errors.json`."""

from __future__ import annotations

from typing import Any

from .schemas import load_schema

__all__ = [
    "MontybaseError",
    "ParseError",
    "InvalidRequestError",
    "MethodNotFoundError",
    "InvalidArgumentError",
    "InternalError",
    "UnauthenticatedError",
    "PermissionDeniedError",
    "NotFoundError",
    "AlreadyExistsError",
    "ValidationError",
    "LimitExceededError",
    "RateLimitedError",
    "ConflictError",
    "UnavailableError",
    "ConnectionLostError",
    "error_class",
]


class MontybaseError(Exception):
    """Base of every Montybase error: `code` (JSON-RPC), `reason` (stable string), `data`."""

    code: int = -32603
    reason: str = "INTERNAL"

    def __init__(self, message: str = "", data: dict[str, Any] | None = None):
        super().__init__(message or self.reason)
        self.message = message or self.reason
        self.data: dict[str, Any] = dict(data or {})

    def to_error(self) -> dict[str, Any]:
        """The JSON-RPC error object for this exception."""
        return {"code": self.code, "message": self.message, "data": {"reason": self.reason, **self.data}}


# Extra Python bases, so `except ValueError` and `except LookupError` keep working.
_BASES: dict[str, tuple[type, ...]] = {
    "InvalidArgumentError": (ValueError,),
    "NotFoundError": (LookupError,),
}

_BY_REASON: dict[str, type[MontybaseError]] = {}
for _entry in load_schema("errors")["errors"]:
    _cls = type(
        _entry["class"],
        (MontybaseError, *_BASES.get(_entry["class"], ())),
        {"code": _entry["code"], "reason": _entry["reason"], "__doc__": _entry["when"], "__module__": __name__},
    )
    globals()[_entry["class"]] = _cls
    _BY_REASON[_entry["reason"]] = _cls
del _entry, _cls


def error_class(reason: str | None) -> type[MontybaseError]:
    """The exception class for a reason string; unknown reasons map to the base class."""
    return _BY_REASON.get(reason or "", MontybaseError)
