"""The exception tree matches the shared error table (server/errors.py, schemas/errors.json)."""

from __future__ import annotations

import python_client.errors as client_errors
from server import errors
from server.schemas import load_schema


def test_every_table_entry_is_a_class_with_its_code_and_reason():
    table = load_schema("errors")["errors"]
    assert len({e["code"] for e in table}) == len(table)
    for entry in table:
        cls = getattr(errors, entry["class"])
        assert issubclass(cls, errors.MontybaseError)
        assert (cls.code, cls.reason) == (entry["code"], entry["reason"])
        assert errors.error_class(entry["reason"]) is cls
        assert getattr(client_errors, entry["class"]) is cls


def test_python_bases_are_kept():
    assert issubclass(errors.InvalidArgumentError, ValueError)
    assert issubclass(errors.NotFoundError, LookupError)


def test_to_error_is_a_json_rpc_error_object():
    error = errors.LimitExceededError("too big", {"limit": 1, "actual": 2})
    assert error.to_error() == {"code": -32005, "message": "too big", "data": {"reason": "LIMIT_EXCEEDED", "limit": 1, "actual": 2}}


def test_unknown_reason_maps_to_the_base_class():
    assert errors.error_class("SOMETHING_NEW") is errors.MontybaseError
