"""Unit tests of server/tree.py: the collections nested below a path, kept as documents and
collections come and go, against a scan of every collection."""

from __future__ import annotations

import random

import pytest

from server.tree import Tree


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
