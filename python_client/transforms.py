"""Field transforms: values that the database resolves atomically when it applies a write.

Each is plain data (a one-key object such as `{"$increment": 1}`), so it crosses the wire as it is.
"""

from __future__ import annotations

from typing import Any

__all__ = ["array_remove", "array_union", "delete_field", "increment", "maximum", "minimum", "server_timestamp"]


def increment(n: int | float) -> dict[str, Any]:
    """Add `n` to the field (a missing or non-numeric field becomes `n`)."""
    return {"$increment": n}


def maximum(n: int | float) -> dict[str, Any]:
    """Keep the larger of the field and `n`: "keep the best score"."""
    return {"$maximum": n}


def minimum(n: int | float) -> dict[str, Any]:
    """Keep the smaller of the field and `n`."""
    return {"$minimum": n}


def array_union(*items: Any) -> dict[str, Any]:
    """Append each item the array does not hold yet."""
    return {"$arrayUnion": list(items)}


def array_remove(*items: Any) -> dict[str, Any]:
    """Remove every occurrence of each item from the array."""
    return {"$arrayRemove": list(items)}


def server_timestamp() -> dict[str, Any]:
    """The time the database applies the write, in milliseconds since the epoch."""
    return {"$serverTimestamp": True}


def delete_field() -> dict[str, Any]:
    """Remove the field (in `update` only)."""
    return {"$delete": True}
