"""The shared query cases (`tests/cases/queries.json`, DESIGN.md §3.2).

Each case loads its documents into the collection `c` of a fresh in-memory database and runs
its query through the engine's method table (`Database.call`, the very params the network
carries). The non-error cases run again through the public client API
(`doc(db, "c").where(...).order_by(...)...`), embedded and over the network, which must build
the same wire form; the error cases through the client's backend, embedded and remote (which
refuses before sending), and sent unchecked to a server, which refuses with the same reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import CLIENTS, NO_SERVER, Served, Stranger, json_equal

from python_client import Montybase, doc
from python_client.errors import MontybaseError as ClientError
from server.database import Database
from server.errors import MontybaseError
from server.session import Service, Session

CASES_FILE = Path(__file__).parent / "cases" / "queries.json"
COLLECTION = ["c"]
QUERY_MEMBERS = {"where", "orderBy", "limit", "limitToLast", "offset", "startAt", "startAfter", "endAt", "endBefore"}
AGGREGATES = {"count", "exists", "sum", "avg"}


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


CASES: list[dict[str, Any]] = json.loads(CASES_FILE.read_text(encoding="utf-8"), parse_constant=_no_constants)["cases"]
RESULT_CASES = [case for case in CASES if "error" not in case]
ERROR_CASES = [case for case in CASES if "error" in case]




def _params(case: dict[str, Any]) -> dict[str, Any]:
    return {"path": COLLECTION, **case["query"]}


def _check_docs(case: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    assert [d["id"] for d in docs] == case["expect"]
    for d in docs:
        assert json_equal(d["value"], case["documents"][d["id"]]), d["id"]


def _check_aggregate(case: dict[str, Any], value: Any) -> None:
    assert json_equal(value, case["expect"]), f"expected {case['expect']!r}, got {value!r}"


# The file itself


@NO_SERVER
def test_cases_file_is_well_formed():
    names = [case.get("name") for case in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    for case in CASES:
        name = case.get("name")
        assert isinstance(name, str) and name, case
        assert set(case) <= {"name", "documents", "query", "aggregate", "page", "expect", "error"}, name
        assert ("expect" in case) != ("error" in case), f"{name}: exactly one of expect / error"
        assert isinstance(case["documents"], dict) and all(isinstance(d, dict) for d in case["documents"].values()), name
        assert isinstance(case["query"], dict) and "path" not in case["query"], name
        if "error" in case:
            assert case["error"] == "INVALID_ARGUMENT", name
        if "page" in case:
            assert type(case["page"]) is int and case["page"] > 0 and "aggregate" not in case and "expect" in case, name
            assert not {"limit", "limitToLast", "startAt", "startAfter"} & set(case["query"]), name
        if "aggregate" in case:
            assert isinstance(case["aggregate"], dict) and set(case["aggregate"]) <= {"op", "field"}, name
        elif "expect" in case:
            assert set(case["query"]) <= QUERY_MEMBERS, name
            assert isinstance(case["expect"], list) and all(i in case["documents"] for i in case["expect"]), name


# Through the session's method table, with no client in between


@pytest.fixture
def engine():
    database = Database()
    yield Service(database).admin(lambda tags, message: None)
    database.close()


def _load(session: Session, documents: dict[str, Any]) -> None:
    for doc_id, document in documents.items():
        session.call("add", {"path": [*COLLECTION, doc_id], "value": document})


def _pages(case: dict[str, Any], run_page: Any, after: Any) -> list[dict[str, Any]]:
    """Every document of a `page` case, read in pages: `run_page(cursor)` reads one page (cursor
    None: the first), `after(document)` is the cursor that starts after a document."""
    docs: list[dict[str, Any]] = []
    cursor = None
    for _ in range(len(case["documents"]) + 1):  # bounded: one page per document is the most
        page = run_page(cursor)
        docs += page
        if len(page) < case["page"]:
            return docs
        cursor = after(page[-1])
    raise AssertionError(f"{case['name']}: paging never reached the end")


def _order_values(case: dict[str, Any], document: dict[str, Any]) -> list[Any]:
    """What a client sends for a document cursor: its order fields' values, then its id."""
    values = []
    for field, _ in case["query"].get("orderBy", ()):
        value = document["value"]
        for key in field if isinstance(field, list) else field.split("."):
            value = value[key]
        values.append(value)
    return [*values, document["id"]]


def _engine_run(session: Session, case: dict[str, Any]) -> Any:
    if "aggregate" in case:
        return session.call("aggregate", {"query": _params(case), **case["aggregate"]})["value"]
    if "page" in case:
        def run_page(cursor: Any) -> list[dict[str, Any]]:
            query = {**_params(case), "limit": case["page"], **({"startAfter": cursor} if cursor else {})}
            return session.call("query", {"query": query})["docs"]

        return _pages(case, run_page, lambda document: _order_values(case, document))
    return session.call("query", {"query": _params(case)})["docs"]


@NO_SERVER
@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_query_case(engine, case):
    _load(engine, case["documents"])
    if "error" in case:
        with pytest.raises(MontybaseError) as raised:
            _engine_run(engine, case)
        assert raised.value.reason == case["error"]
    elif "aggregate" in case:
        _check_aggregate(case, _engine_run(engine, case))
    else:
        _check_docs(case, _engine_run(engine, case))


# Through the public Python client


def _client_field(field: Any) -> Any:
    """The client's spelling of a wire field: a dotted string as it is, a list of keys as a tuple."""
    return tuple(field) if isinstance(field, list) else field


def _build(ref: Any, wire: dict[str, Any]) -> Any:
    query = ref.query()
    for field, op, value in wire.get("where", ()):
        query = query.where(_client_field(field), op, value)
    for field, direction in wire.get("orderBy", ()):
        query = query.order_by(_client_field(field), direction)
    for member, method in (("limit", "limit"), ("limitToLast", "limit_to_last"), ("offset", "offset")):
        if member in wire:
            query = getattr(query, method)(wire[member])
    for member, method in (("startAt", "start_at"), ("startAfter", "start_after"), ("endAt", "end_at"), ("endBefore", "end_before")):
        if member in wire:
            query = getattr(query, method)(*wire[member])
    return query


@pytest.fixture(scope="module")
def server(loop_thread, tmp_path_factory):
    served = Served(loop_thread, tmp_path_factory.mktemp("server"))
    yield served
    served.stop()


@pytest.fixture(params=CLIENTS)
def client(request):
    """A database with an empty collection `c`: embedded in memory, or a server's, over the
    network with the admin key (one server for the module: `c` is emptied afterwards)."""
    if request.param == "embedded":
        database = Montybase(storageBucket=":memory:")
        yield database
    else:
        database = request.getfixturevalue("server").client(admin=True)
        yield database
        doc(database, *COLLECTION).delete()
    database.close()


@pytest.mark.parametrize("case", RESULT_CASES, ids=[case["name"] for case in RESULT_CASES])
def test_query_case_through_client(client, case):
    ref = doc(client, *COLLECTION)
    for doc_id, document in case["documents"].items():
        ref.add(document, key=doc_id)
    query = _build(ref, case["query"])
    assert query.wire == _params(case)
    if "page" in case:  # the client's cursor is the last document of the page itself
        def run_page(cursor: Any) -> list[dict[str, Any]]:
            return (query.start_after(cursor) if cursor else query).limit(case["page"]).stream()

        _check_docs(case, _pages(case, run_page, lambda document: document))
        return
    aggregate = case.get("aggregate")
    if aggregate is None:
        _check_docs(case, query.stream())
        return
    op, field = aggregate["op"], aggregate.get("field")
    value = getattr(query, op)() if field is None else getattr(query, op)(_client_field(field))
    _check_aggregate(case, value)


def test_client_chain_matches_handwritten_wire(client):
    """A leaderboard query written the way a user writes it carries exactly the documented wire form."""
    query = (
        doc(client, "c")
        .where("team", "==", "red")
        .where(("stats", "wins"), ">=", 1)
        .order_by("score", "desc")
        .start_after(80, "cat")
        .limit(2)
    )
    assert query.wire == {
        "path": ["c"],
        "where": [["team", "==", "red"], [["stats", "wins"], ">=", 1]],
        "orderBy": [["score", "desc"]],
        "startAfter": [80, "cat"],
        "limit": 2,
    }


@NO_SERVER
def test_client_raises_engine_reason():
    """An error case seen through the client carries the same reason."""
    with Montybase(storageBucket=":memory:") as database:
        with pytest.raises(ClientError) as raised:
            doc(database, "c").where("score", "=", 1).stream()
        assert raised.value.reason == "INVALID_ARGUMENT"


def _request(case: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The method and params a case's query makes."""
    if "aggregate" in case:
        return "aggregate", {"query": _params(case), **case["aggregate"]}
    return "query", {"query": _params(case)}


@pytest.mark.parametrize("case", ERROR_CASES, ids=[case["name"] for case in ERROR_CASES])
def test_query_error_case_through_client(client, case):
    ref = doc(client, *COLLECTION)
    for doc_id, document in case["documents"].items():
        ref.add(document, key=doc_id)
    with pytest.raises(MontybaseError) as raised:
        client._backend.call(*_request(case))
    assert raised.value.reason == case["error"]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[case["name"] for case in ERROR_CASES])
def test_query_error_case_sent_unchecked_is_refused_by_the_server(server, case):
    stranger = Stranger(server, kid="admin")  # no client checks: the server's own answer
    try:
        for doc_id, document in case["documents"].items():
            assert "result" in stranger.call("add", {"path": [*COLLECTION, doc_id], "value": document})
        answer = stranger.call(*_request(case))
        assert "result" in stranger.call("delete", {"path": COLLECTION})
    finally:
        stranger.close()
    assert answer["error"]["data"]["reason"] == case["error"], answer
