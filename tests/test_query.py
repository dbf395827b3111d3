"""Unit tests of server/query.py beyond the shared cases: the compiled filter of a scan
(`compile_where`) against the clause-by-clause `matches`, over random documents and clauses;
queries read through indexes against the same queries scanned; sorts in steps against sorted()."""

from __future__ import annotations

import gc
import json
import random
from pathlib import Path
from typing import Any

import pytest

from sortedcontainers import SortedList

from server import query as query_module
from server.query import (
    OPERATORS, ElementIndex, OrderIndex, compile_where, matches, parse_query, run, sort_in_steps, sort_key,
)
from server.tree import Tree
from server.values import clone_all

CASES = json.loads((Path(__file__).parent / "cases" / "queries.json").read_text(encoding="utf-8"))["cases"]

SCALARS: list[Any] = [None, True, False, 0, 1, 1.0, -2, 2.5, 10**15, "", "1", "a", "b", "é", "zz"]
VALUES: list[Any] = [*SCALARS, [], [1, "a"], [True, None], {"k": 1}, {"k": [1]}]
FIELDS = ["a", "b", "c.d", "missing"]


def random_value(rng: random.Random) -> Any:
    return rng.choice(VALUES)


def random_document(rng: random.Random) -> dict[str, Any]:
    document = {key: random_value(rng) for key in ("a", "b") if rng.random() < 0.85}
    if rng.random() < 0.5:
        document["c"] = {"d": random_value(rng)} if rng.random() < 0.8 else random_value(rng)
    return document


def random_clause(rng: random.Random) -> list[Any]:
    op = rng.choice(OPERATORS)
    if op in ("in", "not-in", "array-contains-any"):
        bound: Any = [random_value(rng) for _ in range(rng.randrange(1, 4))]
    else:
        bound = random_value(rng)
    return [rng.choice(FIELDS), op, bound]


@pytest.mark.parametrize("seed", range(8))
def test_a_compiled_filter_matches_exactly_what_matches_does(seed):
    rng = random.Random(seed)
    documents = [random_document(rng) for _ in range(60)]
    for _ in range(150):
        query = parse_query({"path": ["c"], "where": [random_clause(rng) for _ in range(rng.randrange(1, 4))]})
        check = compile_where(query.where)
        for document in documents:
            assert check(document) == matches(document, query.where), (query.where, document)


def test_no_clause_compiles_to_no_filter():
    assert compile_where(()) is None


@pytest.mark.parametrize(("clause", "document", "expected"), [
    (["a", ">", 1], {"a": True}, False),  # a boolean is not a number
    (["a", "==", 1], {"a": 1.0}, True),
    (["a", "==", True], {"a": 1}, False),
    (["a", "!=", None], {}, False),  # a document lacking the field never matches, != included
    (["a", "!=", None], {"a": None}, False),
    (["a", "!=", 120], {"a": "120"}, True),
    (["a", "<", "b"], {"a": "a"}, True),
    (["a", "<", "b"], {"a": 1}, False),  # strings compare with strings only
])
def test_compiled_clauses_keep_json_equality_and_range_rules(clause, document, expected):
    query = parse_query({"path": ["c"], "where": [clause]})
    assert compile_where(query.where)(document) is expected
    assert matches(document, query.where) is expected


@pytest.mark.parametrize("spec", [(), ((("s",), False),), ((("s",), True), (("t",), False))], ids=["id", "s", "s desc, t"])
def test_an_order_index_kept_up_to_date_equals_one_built_afresh(spec):
    rng = random.Random(7)
    documents: dict[str, Any] = {}
    index = OrderIndex(spec, documents)
    for _ in range(600):
        doc_id = f"d{rng.randrange(30)}"
        old = documents.get(doc_id)
        if rng.random() < 0.2:
            new = None
        elif old is not None and rng.random() < 0.4:  # a write that leaves the order fields as they are
            new = {**old, "other": rng.random()}
        else:
            new = {key: rng.choice([1, 1.0, 2, "a", "b", None, True]) for key in ("s", "t") if rng.random() < 0.9}
        if new is None:
            documents.pop(doc_id, None)
        else:
            documents[doc_id] = new
        index.update(doc_id, old, new)
        assert list(index.entries) == list(OrderIndex(spec, documents).entries)


def test_an_element_index_kept_up_to_date_equals_one_built_afresh():
    rng = random.Random(11)
    documents: dict[str, Any] = {}
    index = ElementIndex(("tags",), documents)
    for _ in range(400):
        doc_id = f"d{rng.randrange(20)}"
        old = documents.get(doc_id)
        new = None if rng.random() < 0.2 else {"tags": [rng.choice([1, 1.0, "a", None, True, [1]]) for _ in range(rng.randrange(4))]}
        if new is None:
            documents.pop(doc_id, None)
        else:
            documents[doc_id] = new
        index.update(doc_id, old, new)
        assert list(index.entries) == list(ElementIndex(("tags",), documents).entries)


def indexed_and_scanned(documents: dict[str, Any], wire: dict[str, Any]) -> tuple[list, list]:
    """The (id, document) pairs a query selects read through the tree's indexes, and scanned."""
    tree = Tree({("c",): dict(documents)})
    query = parse_query({"path": ["c"], **wire})
    return tree.select(query), run(query, documents, None)


@pytest.mark.parametrize("case", [c for c in CASES if "error" not in c], ids=lambda c: c["name"])
def test_a_shared_case_reads_the_same_through_indexes_as_scanned(case):
    indexed, scanned = indexed_and_scanned(case["documents"], case["query"])
    assert indexed == scanned
    if "aggregate" not in case and "page" not in case:
        assert [doc_id for doc_id, _ in indexed] == case["expect"]


INDEXED_OPS = ("==", "in", "<", "<=", ">", ">=", "array-contains", "array-contains-any")
ORDER_VALUES: list[Any] = [0, 1, 1.0, 2, 2.5, -1, "a", "b", "", True, None, [1], {"k": 1}]


def random_indexed_clause(rng: random.Random) -> list[Any]:
    op = rng.choice(INDEXED_OPS + ("!=", "not-in"))
    if op in ("in", "not-in", "array-contains-any"):
        return [rng.choice("abt"), op, [rng.choice(ORDER_VALUES) for _ in range(rng.randrange(0, 4))]]
    return [rng.choice("abt"), op, rng.choice(ORDER_VALUES)]


@pytest.mark.parametrize("seed", range(10))
def test_random_queries_read_the_same_through_indexes_as_scanned(seed, monkeypatch):
    rng = random.Random(seed)
    documents = {
        f"d{rng.randrange(10**6):06}": {
            **{key: rng.choice(ORDER_VALUES) for key in "ab" if rng.random() < 0.9},
            **({"t": [rng.choice(ORDER_VALUES) for _ in range(rng.randrange(4))]} if rng.random() < 0.7 else {}),
        }
        for _ in range(rng.randrange(1, 120))
    }
    if seed % 2:  # sorts and index builds in many small steps (many runs merged)
        monkeypatch.setattr(query_module, "STEP", rng.choice((1, 2, 5)))
    for _ in range(120):
        wire: dict[str, Any] = {"where": [random_indexed_clause(rng) for _ in range(rng.randrange(1, 3))]}
        if rng.random() < 0.6:
            fields = rng.sample("ab", rng.randrange(1, 3))
            wire["orderBy"] = [[field, rng.choice(("asc", "desc"))] for field in fields]
            if rng.random() < 0.4:
                wire["startAfter" if rng.random() < 0.5 else "endAt"] = [rng.choice(ORDER_VALUES)]
        if rng.random() < 0.5:
            wire["limit" if rng.random() < 0.6 else "limitToLast"] = rng.randrange(0, 8)
        if rng.random() < 0.2:
            wire["offset"] = rng.randrange(0, 4)
        indexed, scanned = indexed_and_scanned(documents, wire)
        assert indexed == scanned, wire


@pytest.mark.parametrize("seed", range(4))
def test_a_count_read_in_an_index_is_the_number_of_documents_selected(seed):
    rng = random.Random(seed)
    documents = {f"d{i:03}": {"a": rng.choice(ORDER_VALUES), "t": [rng.choice(ORDER_VALUES) for _ in range(3)]} for i in range(80)}
    tree = Tree({("c",): dict(documents)})
    for _ in range(100):
        query = parse_query({"path": ["c"], "where": [random_indexed_clause(rng)]})
        assert tree.count(query) == len(run(query, documents, None)), query.where


SORTABLE: list[Any] = [(2, 1), (2, 1.0), (2, True), (2, 0.5), (3, "a"), (3, "b"), (1, 0), (0, 0), (2, -1)]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64])
def test_a_sort_in_steps_is_sorted_with_its_ties_in_the_same_order(step):
    rng = random.Random(step)
    for size in (0, 1, 2, step, step + 1, 2 * step + 1, 300):
        # Equal but distinct items ((2, 1), (2, 1.0), (2, True)) show that equal ones keep their order.
        items = [rng.choice(SORTABLE) for _ in range(size)]
        got = sort_in_steps(items, step)
        assert got == sorted(items)
        assert [id(item) for item in got] == [id(item) for item in sorted(items)]


@pytest.mark.parametrize("step", [1, 3, 2048])
def test_an_index_built_in_steps_is_the_sorted_list_built_at_once_and_stays_usable(step, monkeypatch):
    monkeypatch.setattr(query_module, "STEP", step)
    rng = random.Random(step)
    documents = {f"d{rng.randrange(10**6):06}": {"s": rng.choice(ORDER_VALUES), "t": [rng.choice(ORDER_VALUES) for _ in range(2)]}
                 for _ in range(2500)}
    for index in (OrderIndex(((("s",), False),), documents), OrderIndex(((("s",), True),), documents), ElementIndex(("t",), documents)):
        expected = SortedList(entry for doc_id, doc in documents.items() for entry in (
            index.keys(doc_id, doc) if isinstance(index, ElementIndex) else [index.key(doc_id, doc)]))
        # Laid out as SortedList lays out what it sorts at once: the same sublists, maxes and length.
        assert (index.entries._lists, index.entries._maxes, len(index.entries)) == (expected._lists, expected._maxes, len(expected))
        doc_id = next(iter(documents))
        index.update(doc_id, documents[doc_id], None)
        index.update(doc_id, None, {"s": "new", "t": ["new"]})
        assert index.entries.bisect_left(expected[0]) == 0


def test_an_index_build_pauses_between_its_steps_only_where_it_may(monkeypatch):
    monkeypatch.setattr(query_module, "STEP", 64)
    documents = {f"d{i:04}": {"s": -i} for i in range(2000)}
    pauses = []
    query_module.pause_between_steps(lambda: pauses.append(1))
    try:
        OrderIndex(((("s",), False),), documents)  # as under the database's lock
        assert pauses == []
        with query_module.pausing():
            OrderIndex(((("s",), False),), documents)
    finally:
        query_module.pause_between_steps(None)
    assert len(pauses) >= 2000 // 64  # a pause at least every step of the first sort


def test_copies_of_stored_documents_are_equal_and_share_nothing_with_them():
    stored = [document for _ in range(6) for document in ({"a": [1, {"b": 1.0}], "c": {"d": [True, None, "é"]}, "e": -0.0, "f": 2**53 - 1}, {"g": []})]
    for copies in (clone_all(stored, step=5), clone_all(stored[:3])):  # in C, and (a few) in Python
        assert copies == stored[:len(copies)]
        assert [type(c["e"]) for c in copies[::2]] == [float] * len(copies[::2]) and str(copies[0]["e"]) == "-0.0"
        copies[0]["a"][1]["b"] = 2
        copies[1]["g"].append(1)
        assert stored[0]["a"][1]["b"] == 1.0 and stored[1]["g"] == []


def test_descending_strings_sort_in_reverse_code_point_order_prefixes_included():
    rng = random.Random(5)
    alphabet = ["a", "b", "\x00", "é", "\uffff", "\U00010000", "\U0010ffff", "\ud800"]
    strings = list({"".join(rng.choice(alphabet) for _ in range(rng.randrange(5))) for _ in range(3000)})
    descending = sorted(strings, key=lambda value: sort_key(value, True))
    assert descending == sorted(strings, reverse=True)
    assert len({sort_key(value, True) for value in strings}) == len(strings)


def test_an_index_of_descending_strings_holds_nothing_the_garbage_collector_walks():
    # Full collections hold every thread while they walk every tracked object.
    index = OrderIndex(((("s",), True),), {f"d{i}": {"s": f"name{i}"} for i in range(100)})
    gc.collect()
    assert not any(gc.is_tracked(entry) or any(gc.is_tracked(part) for part in entry) for entry in index.entries)


@pytest.mark.parametrize("where", [
    [["a", "==", 1], ["a", "==", True]], [["a", "==", True], ["a", "==", 1]],
    [["a", "in", [1]], ["a", "in", [True]]], [["a", ">=", 1], ["a", "==", 1.0], ["a", "==", True]],
], ids=["1 then true", "true then 1", "in", "three"])
def test_clauses_equal_in_python_but_not_in_json_are_each_checked(where):
    # 1 == True in Python: the clause an index serves is told from the others by identity.
    documents = {"d1": {"a": 1}, "d2": {"a": True}, "d3": {"a": 1.0}, "d4": {"a": [1]}}
    indexed, scanned = indexed_and_scanned(documents, {"where": where})
    assert indexed == scanned == []
