"""server/values.py: objects stored by shape, and the copies `prepare` makes."""

from __future__ import annotations

import gc
import json
import marshal
import random
import sys

import orjson
import pytest

from server import values
from server.values import prepare, settled, shaped


@pytest.fixture(autouse=True)
def fresh_shapes(monkeypatch):
    """Each test starts with no shape and no shared value seen (other tests of this process make them too)."""
    monkeypatch.setattr(values, "_shapes", {})
    monkeypatch.setattr(values, "_seen_once", set())
    monkeypatch.setattr(values, "_ints", {})
    monkeypatch.setattr(values, "_strings", {})


def _random_object(rng: random.Random) -> dict:
    keys = rng.sample(["name", "score", "level", "tags", "owner", "x", "y", "nested", "é", "a b"], rng.randrange(1, 8))
    return {key: rng.choice([None, True, 3, -2.5, "text", [1, "two"], {"inner": 1}]) for key in keys}


def test_a_shaped_object_is_a_plain_dict_equal_to_it_with_its_keys_in_the_same_order():
    rng = random.Random(5)
    for _ in range(500):
        original = _random_object(rng)
        copy = shaped(dict(original))
        assert type(copy) is dict
        assert copy == original and list(copy) == list(original)
        assert json.dumps(copy) == json.dumps(original)
        assert orjson.dumps(copy) == orjson.dumps(original)
        assert marshal.loads(marshal.dumps(copy)) == original


def test_objects_of_one_shape_share_their_keys_and_take_less_memory_from_the_second_one_seen():
    documents = [shaped({"name": f"player{i}", "score": i / 7, "level": i, "tags": ["a", "b"]}) for i in range(100)]
    plain = {"name": "player0", "score": 0.0, "level": 0, "tags": ["a", "b"]}
    assert sys.getsizeof(documents[0]) == sys.getsizeof(plain)  # a shape seen once is not made
    assert all(sys.getsizeof(document) < sys.getsizeof(plain) - 64 for document in documents[1:])
    assert documents[42] == {"name": "player42", "score": 6.0, "level": 42, "tags": ["a", "b"]}


def test_a_map_keyed_by_ids_makes_no_shape(monkeypatch):
    monkeypatch.setattr(values, "MAX_SHAPES", 8)
    maps = [{f"user{i}": True, f"user{i + 1}": True} for i in range(20)]
    assert [shaped(likes) is likes for likes in maps] == [True] * 20
    assert values._shapes == {} and len(values._seen_once) <= 8


def test_changing_one_shaped_object_changes_no_other_of_its_shape():
    shaped({"k1": 0, "k2": 0})
    first = shaped({"k1": 1, "k2": 2})
    second = shaped({"k1": 3, "k2": 4})
    first["added"] = 5
    first["k1"] = 6
    del second["k2"]
    third = shaped({"k1": 7, "k2": 8})
    assert first == {"k1": 6, "k2": 2, "added": 5}
    assert second == {"k1": 3}
    assert third == {"k1": 7, "k2": 8} and list(third) == ["k1", "k2"]


def test_what_has_no_shape_is_returned_as_it_is():
    many = {f"field{i}": i for i in range(31)}  # more keys than a class shares
    old_file = {"__class__": 1, "fine": 2}  # an old file's keys, which check_key refuses today
    for value in ([1, 2], "text", 3, None, {}, many, old_file):
        assert shaped(value) is value and shaped(value) is value  # seen twice: its shape is tried
    for _ in range(3):
        assert shaped({"fine": 2, "__dict__": 3}) == {"fine": 2, "__dict__": 3}


def test_shapes_stop_at_their_bound_and_objects_past_it_stay_as_they_are(monkeypatch):
    monkeypatch.setattr(values, "MAX_SHAPES", 3)
    made = [shaped({f"only{i}": i}) for i in range(3) for _ in range(2)][1::2]  # each the second of its shape
    past = {"only3": 3}
    assert shaped(dict(past)) == past and shaped(past) is past
    assert len(values._shapes) == 3
    assert [sys.getsizeof(value) < sys.getsizeof(dict(value)) for value in made] == [True] * 3
    assert shaped({"only1": 9}) == {"only1": 9}  # a known shape still serves


def test_prepare_stores_objects_by_shape_and_sizes_lists_exactly():
    prepare({"tags": [], "inner": {"x": 0, "y": [{"z": 0}]}}, None, "/value", 0)  # a shape is made the second time
    value = prepare({"tags": ["a", "b", "c"], "inner": {"x": 1, "y": [{"z": 2}]}}, None, "/value", 0)
    assert value == {"tags": ["a", "b", "c"], "inner": {"x": 1, "y": [{"z": 2}]}}
    assert sys.getsizeof(value["tags"]) == sys.getsizeof([None] * 3)  # room for three items, no more
    assert sys.getsizeof(value["inner"]) < sys.getsizeof(dict(value["inner"]))
    assert sys.getsizeof(value["inner"]["y"][0]) < sys.getsizeof(dict(value["inner"]["y"][0]))


def test_a_settled_document_and_its_containers_are_out_of_the_collectors_walks_until_given_a_container():
    settled({"name": "", "tags": [], "inner": {}})
    document = settled({"name": "a", "tags": ["x", {"deep": [1, 2]}], "inner": {"list": [3]}})
    assert document == {"name": "a", "tags": ["x", {"deep": [1, 2]}], "inner": {"list": [3]}}
    containers = [document, document["tags"], document["tags"][1], document["tags"][1]["deep"],
                  document["inner"], document["inner"]["list"]]
    assert [gc.is_tracked(container) for container in containers] == [False] * 6
    assert sys.getsizeof(document) < sys.getsizeof(dict(document))
    document["inner"]["more"] = [4]  # a container given to a dict: the collector follows the dict again
    assert gc.is_tracked(document["inner"])
    assert settled([1, 2]) == [1, 2] and settled("text") == "text"


def _fresh(text: str) -> str:
    """An equal string that is another object (as decoding a message makes)."""
    return json.loads(json.dumps(text))


def test_settled_documents_hold_one_object_for_each_small_integer_and_short_string_at_any_depth():
    documents = [settled({"level": int(str(700 + i % 2)), "tag": _fresh("gold"), "tags": [_fresh("t1"), int("5000")],
                          "inner": {"state": _fresh("active"), "count": int("-1000")}}) for i in range(6)]
    assert documents[0] == {"level": 700, "tag": "gold", "tags": ["t1", 5000], "inner": {"state": "active", "count": -1000}}
    assert all(document["level"] is documents[i % 2]["level"] for i, document in enumerate(documents))
    for pick in (lambda d: d["tag"], lambda d: d["tags"][0], lambda d: d["tags"][1],
                 lambda d: d["inner"]["state"], lambda d: d["inner"]["count"]):
        assert len({id(pick(document)) for document in documents}) == 1


def test_large_integers_long_strings_floats_and_booleans_are_kept_as_they_are():
    first, second = (settled({"big": int("70000"), "low": int("-1025"), "long": _fresh("x" * 17), "score": float("0.5"),
                              "flag": True}) for _ in range(2))
    assert first == second == {"big": 70000, "low": -1025, "long": "x" * 17, "score": 0.5, "flag": True}
    assert [first[key] is second[key] for key in ("big", "low", "long", "score")] == [False] * 4
    assert first["flag"] is True and type(settled({"one": 1})["one"]) is int


def test_the_table_of_short_strings_is_emptied_when_full(monkeypatch):
    monkeypatch.setattr(values, "MAX_STRINGS", 3)
    names = [settled({"name": _fresh(f"n{i}")})["name"] for i in range(3)]
    assert settled({"name": _fresh("n1")})["name"] is names[1]
    settled({"name": "n3"})  # a fourth: the table starts again
    assert len(values._strings) == 1
    again = settled({"name": _fresh("n1")})["name"]
    assert again == "n1" and again is not names[1]
