"""Unit tests of server/tree.py: the collections nested below a path, kept as documents and
collections come and go, against a scan of every collection; the bound on its indexes."""

from __future__ import annotations

import random

import pytest

from server.query import parse_query, run
from server.tree import MAX_INDEXES_PER_COLLECTION, Tree


def scanned(tree: Tree, path: tuple[str, ...]) -> list[tuple[str, ...]]:
    depth = len(path)
    return [p for p in tree.collections if len(p) > depth and p[:depth] == path]


def random_document_path(rng: random.Random) -> tuple[str, ...]:
    path: tuple[str, ...] = ()
    for _ in range(rng.choice((1, 1, 2, 3))):
        path += (rng.choice(("users", "posts", "likes")), rng.choice(("a", "b", "c")))
    return path


@pytest.mark.parametrize("seed", range(6))
def test_subcollections_follow_writes_and_deletes(seed):
    rng = random.Random(seed)
    start = {("users",): {"a": {"n": 1}}, ("users", "a", "posts"): {"p": {"n": 2}}, ("users", "z", "likes"): {}}
    tree = Tree({path: dict(docs) for path, docs in start.items()})
    for step in range(400):
        path = random_document_path(rng)
        roll = rng.random()
        if roll < 0.6:
            tree.put(path, {"step": step})
        elif roll < 0.85:
            tree.remove(path)
        else:
            tree.remove(path[:-1])  # a whole collection, with everything below it
        for prefix in {p[:depth] for p in tree.collections for depth in range(1, len(p) + 1)} | {path, path[:-1]}:
            assert tree.subcollections(prefix) == scanned(tree, prefix), (step, prefix)


def test_removing_a_document_removes_what_is_nested_below_it():
    tree = Tree()
    tree.put(("users", "a"), {"n": 1})
    tree.put(("users", "a", "posts", "p"), {"n": 2})
    tree.put(("users", "a", "posts", "p", "likes", "l"), {"n": 3})
    tree.put(("users", "b", "posts", "q"), {"n": 4})  # below a document that does not exist
    changes = tree.remove(("users", "a"))
    assert [(c.collection, c.id) for c in changes] == [
        (("users",), "a"), (("users", "a", "posts"), "p"), (("users", "a", "posts", "p", "likes"), "l"),
    ]
    assert sorted(tree.collections) == [("users", "b", "posts")]
    assert tree.subcollections(("users",)) == [("users", "b", "posts")]
    assert [(c.collection, c.id) for c in tree.remove(("users", "b"))] == [(("users", "b", "posts"), "q")]
    assert tree.collections == {} and tree.subcollections(("users",)) == []


def test_indexes_per_collection_stay_within_the_cap_and_results_stay_right_after_eviction():
    rng = random.Random(3)
    tree = Tree()
    fields = [f"f{i}" for i in range(MAX_INDEXES_PER_COLLECTION + 8)]
    for i in range(200):
        tree.put(("c", f"d{i:03}"), {field: rng.randrange(10) for field in fields})
    for step in range(300):
        field = rng.choice(fields)
        query = parse_query({"path": ["c"], "where": [[field, ">=", 5]], "orderBy": [[rng.choice(fields), "desc"]], "limit": 7})
        assert tree.select(query) == run(query, tree.collections[("c",)], None), step
        assert len(tree.indexes(("c",))) <= MAX_INDEXES_PER_COLLECTION
        tree.put(("c", f"d{rng.randrange(200):03}"), {f: rng.randrange(10) for f in fields})  # evicted ones are rebuilt from this


def test_the_least_recently_used_index_is_evicted_first():
    tree = Tree({("c",): {"a": {"n": 1}}})
    specs = [(((f"f{i}",), False),) for i in range(MAX_INDEXES_PER_COLLECTION)]
    for spec in specs:
        tree.index(("c",), spec)
    tree.index(("c",), specs[0])  # used again: now the most recent
    tree.index(("c",), ((("new",), False),))
    assert specs[0] in tree.indexes(("c",)) and specs[1] not in tree.indexes(("c",))
