"""The shared cases of reads at any depth (`tests/cases/reads.json`, DESIGN.md §2).

Each case writes its documents into a fresh database and reads one path four ways (`get`,
`exists`, `count`, `stream`): through the engine's method table (the params the network
carries), then through the public client, embedded and over the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import CLIENTS, NO_SERVER, Served, json_equal

from python_client import Montybase, doc
from server.database import Database
from server.session import Service

CASES: list[dict[str, Any]] = json.loads((Path(__file__).parent / "cases" / "reads.json").read_text(encoding="utf-8"))["cases"]
READS = ("get", "exists", "count", "stream")


def _check(case: dict[str, Any], answers: dict[str, Any]) -> None:
    for read in READS:
        assert json_equal(answers[read], case["expect"][read]), f"{read}: expected {case['expect'][read]!r}, got {answers[read]!r}"


@NO_SERVER
def test_cases_file_is_well_formed():
    names = [case["name"] for case in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    for case in CASES:
        assert set(case) == {"name", "documents", "path", "expect"} and set(case["expect"]) == set(READS), case["name"]
        assert all(len(path) % 2 == 0 and path[0] == "c" for path, _ in case["documents"]), case["name"]
        assert case["path"][0] == "c", case["name"]


@NO_SERVER
@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_read_case(case):
    database = Database()
    session = Service(database).admin(lambda tags, message: None)
    try:
        for path, document in case["documents"]:
            session.call("set", {"path": path, "value": document})
        query = {"path": case["path"]}
        _check(case, {
            "get": session.call("get", {"path": case["path"]})["value"],
            "exists": session.call("aggregate", {"query": query, "op": "exists"})["value"],
            "count": session.call("aggregate", {"query": query, "op": "count"})["value"],
            "stream": session.call("query", {"query": query})["docs"],
        })
    finally:
        database.close()


@pytest.fixture(scope="module")
def server(loop_thread, tmp_path_factory):
    served = Served(loop_thread, tmp_path_factory.mktemp("server"))
    yield served
    served.stop()


@pytest.fixture(params=CLIENTS)
def client(request):
    """An empty database: embedded in memory, or a server's over the network with the admin key
    (one server for the module: `c` is emptied afterwards)."""
    if request.param == "embedded":
        database = Montybase(storageBucket=":memory:")
        yield database
    else:
        database = request.getfixturevalue("server").client(admin=True)
        yield database
        doc(database, "c").delete()
    database.close()


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_read_case_through_client(client, case):
    for path, document in case["documents"]:
        doc(client, *path).set(document)
    ref = doc(client, *case["path"])
    _check(case, {read: getattr(ref, read)() for read in READS})
