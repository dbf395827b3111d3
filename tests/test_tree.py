"""Unit tests of server/tree.py: the collections nested below a path, kept as documents and
collections come and go, against a scan of every collection; the bound on its indexes."""

from __future__ import annotations

import gc
import random
import sys

import pytest

from server import query as query_module
from server import tree as tree_module
from server import values
from server.query import parse_query, run
from server.tree import HAND_OVER_BUILDS_FROM, MAX_INDEXES_PER_COLLECTION, Frozen, Tree, build_index


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


def test_documents_written_are_stored_by_shape(monkeypatch):
    monkeypatch.setattr(values, "_shapes", {})  # (whatever shapes other tests made)
    monkeypatch.setattr(values, "_seen_once", set())

    def plain(n: int) -> dict:
        return {"name": f"n{n}", "score": n / 3, "level": n, "tags": ["a"]}

    tree = Tree({("c",): {"loaded": plain(1)}})
    tree.put(("c", "first"), plain(0))  # a shape is made the second time it is seen
    changes = [tree.put(("c", "written"), plain(2)), tree.put(("c", "loaded"), plain(3))]
    for doc_id, n in (("written", 2), ("loaded", 3)):
        stored = tree.document(("c", doc_id))
        assert stored == plain(n) and list(stored) == list(plain(n))
        assert sys.getsizeof(stored) < sys.getsizeof(plain(n))
    assert [change.new for change in changes] == [plain(2), plain(3)]
    assert changes[0].new is tree.document(("c", "written"))  # listeners are told of what is stored
    assert not gc.is_tracked(changes[0].new) and not gc.is_tracked(changes[0].new["tags"])  # values.settled
    assert changes[1].old == plain(1)


def test_collections_and_the_parts_of_their_indexes_stay_out_of_the_collectors_walks():
    """A full collection walked every document of a collection and every entry of its indexes,
    though none of them can hold a cycle: 145 ms at a million documents and three indexes."""
    tree = Tree({("loaded",): {"a": {"n": 1}}})
    assert not gc.is_tracked(tree.collections[("loaded",)])
    tree.put(("c", "d00000"), {"n": 0, "tags": [0]})
    tree.index(("c",), ((("n",), False),))
    for i in range(1, 5000):  # the index's parts split as they fill
        tree.put(("c", f"d{i:05}"), {"n": i % 97, "tags": [i % 5]})
    tree.put(("loaded", "b"), {"n": 2})
    tree.index(("c",), ("elements", ("tags",)))
    for i in range(5000, 6000):
        tree.put(("c", f"d{i:05}"), {"n": i % 97, "tags": [i % 5, 9]})
    indexes = [tree.index(("c",), spec) for spec in tree.indexes(("c",))]
    parts = [part for index in indexes for part in index.entries._lists]
    assert len(parts) > 4 and sum(map(len, parts)) == 6000 + 7000
    assert [gc.is_tracked(part) for part in parts] == [False] * len(parts)
    assert [gc.is_tracked(docs) for docs in tree.collections.values()] == [False, False]
    query = parse_query({"path": ["c"], "where": [["n", "==", 3]]})
    assert tree.select(query) == run(query, tree.collections[("c",)], None) != []


def test_a_copy_lists_no_id_while_documents_are_only_added_and_replaced(monkeypatch):
    monkeypatch.setattr(tree_module, "LIST_STEP", 3)  # a store loaded at start is listed once, 3 ids per call
    tree = Tree({("c",): {f"d{i}": {"n": i} for i in range(10)}})
    kept = tree._ids[("c",)]
    assert kept == [f"d{i}" for i in range(10)] and not gc.is_tracked(kept)
    tree.put(("c", "d3"), {"n": 33})
    tree.put(("c", "added"), {"n": 10})
    copy = tree.begin_copy()
    frozen = copy.collections[("c",)]
    assert frozen.ids is kept and len(frozen) == 11  # nothing listed for it
    tree.put(("c", "later"), {"n": 11})  # after the copy began: appended beyond what it reads
    tree.remove(("c", "d4"))
    chunks = [dict(chunk) for chunk in frozen.chunks(4)]
    assert {k: v for chunk in chunks for k, v in chunk.items()} == \
        {**{f"d{i}": {"n": i} for i in range(10)}, "d3": {"n": 33}, "added": {"n": 10}}
    assert list(chunks[0]) == ["d0", "d1", "d2", "d3"]
    tree.end_copy(copy)
    assert tree._ids[("c",)] is None  # a removal: the next copy lists the ids again
    again = tree.begin_copy().collections[("c",)]
    assert again.ids == list(tree.collections[("c",)]) and again.ids is not kept


@pytest.mark.parametrize("seed", range(4))
def test_the_kept_ids_are_the_collections_ids_in_order_through_random_writes_undos_and_copies(seed):
    rng = random.Random(seed)
    tree, copies = Tree(), []
    for _ in range(600):
        path = ("c", f"d{rng.randrange(40)}") if rng.random() < 0.9 else ("e", f"d{rng.randrange(3)}")
        roll = rng.random()
        if roll < 0.55:
            change = tree.put(path, {"n": rng.randrange(5)})
            if rng.random() < 0.3:
                tree.undo(change)  # an add undone (a group commit's), or a replace
        elif roll < 0.75:
            tree.remove(path)
        elif roll < 0.9 or not copies:
            copies.append((tree.begin_copy(), {c: dict(docs) for c, docs in tree.collections.items()}))
        else:
            copy, before = copies.pop(rng.randrange(len(copies)))
            read = {c: {k: v for chunk in f.chunks(7) for k, v in chunk.items()}
                    for c, f in copy.collections.items()}
            tree.end_copy(copy)
            assert read == before
        for collection, docs in tree.collections.items():
            assert tree._ids[collection] in (None, list(docs))
        assert set(tree._ids) == set(tree.collections)


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


def test_an_evicted_index_is_freed_in_parts_unless_a_query_still_holds_it():
    """Freed at once, a large index held the GIL for its whole deallocation: free_evicted
    empties it a part at a time; one a query still reads stays whole for that query."""
    docs = {f"d{i:05}": {f"f{j}": (i * 7919 + j) % 1000 for j in range(3)} for i in range(5000)}
    tree = Tree({("c",): docs})
    held_spec, dropped_spec = ((("f0",), False),), ((("f1",), True),)
    held = tree.index(("c",), held_spec)  # as a query reading it holds it
    dropped_parts = tree.index(("c",), dropped_spec).entries._lists
    assert len(dropped_parts) > 1  # several parts to free one at a time
    for i in range(MAX_INDEXES_PER_COLLECTION):
        tree.index(("c",), ((("f2",), bool(i % 2)), (("n", str(i)), False)))
    assert held_spec not in tree.indexes(("c",)) and dropped_spec not in tree.indexes(("c",))
    tree.free_evicted()
    assert dropped_parts == []
    assert list(held.entries) == list(build_index(held_spec, docs).entries)
    tree.free_evicted()  # nothing left to free
    assert list(held.entries) == list(build_index(held_spec, docs).entries)
    for i in range(4 * MAX_INDEXES_PER_COLLECTION):  # evicted without a query to free them: a bounded number waits
        tree.index(("c",), ((("m", str(i)), False),))
    assert len(tree._evicted) <= MAX_INDEXES_PER_COLLECTION


def large_tree(rng: random.Random) -> Tree:
    return Tree({("c",): {f"d{i:05}": {"n": rng.randrange(50), "t": [rng.randrange(5)]} for i in range(HAND_OVER_BUILDS_FROM + 200)}})


def test_an_index_built_from_a_copy_while_others_write_is_caught_up_with_their_writes():
    rng = random.Random(5)
    tree = large_tree(rng)
    built = []

    def build(collection, spec):  # as the database does, with writers getting in during the build
        documents, log = tree.begin_build(collection)
        for _ in range(50):
            doc_id = f"d{rng.randrange(HAND_OVER_BUILDS_FROM + 10):05}"
            if rng.random() < 0.3:
                tree.remove(("c", doc_id))
            else:
                tree.put(("c", doc_id), {"n": rng.randrange(50), "t": [rng.randrange(5)]})
        index = build_index(spec, documents)
        tree.finish_build(collection, index, log)
        built.append(spec)
        return index

    for wire in ({"where": [["n", ">", 40]]}, {"where": [["t", "array-contains", 3]], "orderBy": [["n", "desc"]], "limit": 5}):
        query = parse_query({"path": ["c"], **wire})
        assert tree.select(query, build) == run(query, tree.collections[("c",)], None)
    assert built == [((("n",), False),), ("elements", ("t",)), ((("n",), True),)]
    for spec in built:
        assert list(tree.index(("c",), spec).entries) == list(build_index(spec, tree.collections[("c",)]).entries)
    assert not tree._building and not tree._copies  # finished builds no longer log the writes


def test_a_collection_emptied_and_filled_again_during_a_build_is_read_again_in_place():
    tree = large_tree(random.Random(6))

    def build(collection, spec):
        documents, log = tree.begin_build(collection)
        tree.remove(collection)
        tree.put(("c", "new"), {"n": 1})
        index = build_index(spec, documents)
        tree.finish_build(collection, index, log)
        return index

    query = parse_query({"path": ["c"], "where": [["n", "<", 10]]})
    assert tree.select(query, build) == [("new", {"n": 1})]
    assert list(tree.index(("c",), ((("n",), False),)).entries) == [(2, 1, "new")]


@pytest.mark.parametrize("seed", range(4))
def test_a_copy_reads_as_the_tree_was_when_it_began_whatever_is_written_while_it_is_read(seed):
    rng = random.Random(seed)
    tree = Tree()
    for i in range(300):
        tree.put((rng.choice(("a", "b")), f"d{i:03}"), {"n": i})
    before = {path: dict(docs) for path, docs in tree.collections.items()}
    copy = tree.begin_copy()
    read: dict = {path: {} for path in copy.collections}
    iterators = {path: iter(frozen.items()) for path, frozen in copy.collections.items()}
    while iterators:
        path = rng.choice(sorted(iterators))
        item = next(iterators[path], None)
        if item is None:
            del iterators[path]
            continue
        read[path][item[0]] = item[1]
        roll = rng.random()  # a write between every two documents read
        target = (rng.choice(("a", "b", "c")), f"d{rng.randrange(320):03}")
        if roll < 0.6:
            tree.put(target, {"n": -1})
        elif roll < 0.98:
            tree.remove(target)
        else:
            tree.remove(target[:1])  # the whole collection (it may come back)
    tree.end_copy(copy)
    assert read == before


def test_an_index_built_from_a_view_pauses_between_its_steps_and_one_built_under_the_lock_does_not():
    documents = {f"d{i:05}": {"a": -i} for i in range(3000)}
    pauses = []
    query_module.pause_between_steps(lambda: pauses.append(1))
    try:
        build_index(((("a",), False),), documents)
        assert pauses == []
        view = Frozen(documents, {}, list(documents))  # (made under the lock: no pause)
        assert pauses == []
        index = build_index(((("a",), False),), view)
    finally:
        query_module.pause_between_steps(None)
    assert len(pauses) >= 3000 // query_module.STEP and index.entries[0][-1] == "d02999"
