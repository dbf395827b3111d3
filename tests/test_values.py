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
    """Each test starts with no shape seen (other tests of this process make shapes too)."""
    monkeypatch.setattr(values, "_shapes", {})
    monkeypatch.setattr(values, "_seen_once", set())


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
