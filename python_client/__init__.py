"""Montybase for Python programs: `Montybase`, `doc`, references, queries and transforms."""

from __future__ import annotations

if __name__ == "python_client":  # the old name: the same modules as montybase.client (montybase/__init__.py)
    import montybase

    montybase.old_name(__name__)

from montybase.server import __version__

from . import errors
from .client import Montybase, doc
from .errors import *  # noqa: F403
from .refs import CollectionReference, DocumentReference, Query, Reference, Transaction, WriteBatch
from .transforms import array_remove, array_union, delete_field, increment, maximum, minimum, server_timestamp

__all__ = [
    "__version__",
    "CollectionReference",
    "DocumentReference",
    "Montybase",
    "Query",
    "Reference",
    "Transaction",
    "WriteBatch",
    "array_remove",
    "array_union",
    "delete_field",
    "doc",
    "errors",
    "increment",
    "maximum",
    "minimum",
    "server_timestamp",
    *errors.__all__,
]
