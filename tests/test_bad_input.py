"""Bad input gets the specific error, names what was wrong, and changes nothing."""

from __future__ import annotations

import math

import pytest

from python_client import InvalidArgumentError, LimitExceededError, MontybaseError, NotFoundError, doc

BAD_KEYS = ["__proto__", "__x__", "$x", "a/b", "", ".", "..", "a\x00b", "tab\there", "\ud800"]
BAD_VALUES = [
    ("nan", {"a": math.nan}),
    ("infinity", {"a": math.inf}),
    ("unsafe integer", {"a": 2**53}),
    ("unsafe negative integer", {"a": -(2**53)}),
    ("bytes", {"a": b"x"}),
    ("set", {"a": {1, 2}}),
    ("object", {"a": object()}),
    ("non-string key", {1: "a"}),
    ("proto key nested", {"a": {"__proto__": {"polluted": True}}}),
    ("dollar key in list", {"a": [{"$where": 1}]}),
    ("lone surrogate", {"a": "\udc00"}),
    ("transform inside array", {"a": [{"$increment": 1}]}),
    ("unknown transform", {"a": {"$explode": 1}}),
    ("increment of a string", {"a": {"$increment": "1"}}),
]


@pytest.fixture
def seeded(db):
    doc(db, "users", "amor").set({"name": "Amor", "score": 100})
    doc(db, "users", "amor", "posts").add({"t": 1}, key="p1")
    return db


def everything(db):
    return doc(db).get(), doc(db, "users", "amor", "posts").get()


def refused(db, call, error=InvalidArgumentError):
    before = everything(db)
    with pytest.raises(error) as caught:
        call()
    assert everything(db) == before
    return caught.value


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_unsafe_segment_is_refused_before_anything_happens(seeded, key):
    if "/" not in key:  # in doc(), "a/b" is shorthand for two segments
        refused(seeded, lambda: doc(seeded, "users", key).set({"a": 1}))
    refused(seeded, lambda: doc(seeded, "users").add({"a": 1}, key=key))


@pytest.mark.parametrize("make", [
    lambda db: doc(db, *(["c", "d"] * 32), "c"),
    lambda db: doc(db, "/".join(["c", "d"] * 32), "c"),
    lambda db: doc(db, *(["c", "d"] * 31)).append("c", "d", "c"),
], ids=["arguments", "slashes", "append"])
def test_a_path_of_more_than_64_segments_is_refused(seeded, make):
    error = refused(seeded, lambda: make(seeded).add({"a": 1}))
    assert "64 segments" in str(error)


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_unsafe_object_key_is_refused(seeded, key):
    error = refused(seeded, lambda: doc(seeded, "users", "amor").set({key: 1}))
    assert "key" in str(error)
    refused(seeded, lambda: doc(seeded, "users", "amor").update({"ok": {key: 1}}))


@pytest.mark.parametrize("name,value", BAD_VALUES, ids=[name for name, _ in BAD_VALUES])
def test_bad_value_is_refused_naming_the_field(seeded, name, value):
    error = refused(seeded, lambda: doc(seeded, "users", "amor").set(value))
    assert error.reason == "INVALID_ARGUMENT" and str(error)
    refused(seeded, lambda: doc(seeded, "users").add(value))


def test_error_names_the_nested_field(seeded):
    error = refused(seeded, lambda: doc(seeded, "users", "amor").set({"stats": {"best": math.nan}}))
    assert error.data["path"] == "/value/stats/best" and "/value/stats/best" in str(error)


@pytest.mark.parametrize("value", [None, 5, "text", [1, 2], ("a",)], ids=repr)
def test_a_document_must_be_an_object(seeded, value):
    refused(seeded, lambda: doc(seeded, "users", "amor").set(value))
    refused(seeded, lambda: doc(seeded, "users").add(value))


@pytest.mark.parametrize("segment", [5, None, 1.5, b"users", ["users"]], ids=repr)
def test_a_segment_must_be_a_string(seeded, segment):
    refused(seeded, lambda: doc(seeded, "users", segment).get())


def test_a_whole_document_cannot_be_a_transform(seeded):
    refused(seeded, lambda: doc(seeded, "users", "amor").set({"$increment": 1}))


def test_update_takes_a_dict(seeded):
    refused(seeded, lambda: doc(seeded, "users", "amor").update(["score", 1]))


def test_update_of_a_missing_document_changes_nothing(seeded):
    refused(seeded, lambda: doc(seeded, "users", "ghost").update({"a": 1}), NotFoundError)


def test_too_deep_document_is_limit_exceeded(seeded):
    value: dict = {}
    inner = value
    for _ in range(40):
        inner["n"] = {}
        inner = inner["n"]
    error = refused(seeded, lambda: doc(seeded, "users", "amor").set(value), LimitExceededError)
    assert error.data["limit"] == 32 and error.data["actual"] == 33


def test_a_key_over_128_utf8_bytes_is_limit_exceeded(seeded):
    error = refused(seeded, lambda: doc(seeded, "users").add({"a": 1}, key="é" * 65), LimitExceededError)
    assert (error.data["limit"], error.data["actual"]) == (128, 130)
    error = refused(seeded, lambda: doc(seeded, "users", "amor").set({"x" * 129: 1}), LimitExceededError)
    assert (error.data["limit"], error.data["actual"]) == (128, 129)


def test_increment_past_the_safe_range_is_refused(seeded):
    doc(seeded, "users", "amor").update({"score": 2**53 - 2})
    refused(seeded, lambda: doc(seeded, "users", "amor").update({"score": {"$increment": 5}}))


@pytest.mark.parametrize(
    "build",
    [
        lambda ref: ref.where("score", "~", 1),
        lambda ref: ref.where("score", "in", 5),
        lambda ref: ref.where("__proto__", "==", 1),
        lambda ref: ref.where("", "==", 1),
        lambda ref: ref.where("score", "==", math.nan),
        lambda ref: ref.limit(-1),
        lambda ref: ref.limit("10"),
        lambda ref: ref.offset(-2),
        lambda ref: ref.start_at(1, 2, 3),
        lambda ref: ref.order_by("score").start_after(),
    ],
    ids=["operator", "in-not-list", "proto-field", "empty-field", "nan", "negative-limit",
         "string-limit", "negative-offset", "too-many-cursor-values", "empty-cursor"],
)
def test_bad_query_is_invalid_argument(seeded, build):
    query = build(doc(seeded, "users"))
    refused(seeded, query.stream)
    refused(seeded, query.count)


def test_a_batch_over_the_limit_is_refused_whole(seeded):
    batch = seeded.batch()
    for i in range(501):
        batch.set(doc(seeded, "bulk", f"d{i}"), {"i": i})
    error = refused(seeded, batch.commit, LimitExceededError)
    assert error.data == {"path": "/writes", "limit": 500, "actual": 501}


def test_errors_are_one_tree(seeded):
    with pytest.raises(MontybaseError):
        doc(seeded, "users", "$bad").get()
    with pytest.raises(ValueError):
        doc(seeded, "users", "$bad").get()


# One error-path format (schemas/errors.json: a JSON Pointer into the params), whichever way is used

POINTED = [
    ("a nested value", lambda db: doc(db, "users", "amor").set({"stats": {"best": math.nan}}), "/value/stats/best"),
    ("a list item", lambda db: doc(db, "users").add({"tags": ["ok", math.inf]}), "/value/tags/1"),
    ("an updated field", lambda db: doc(db, "users", "amor").update({"a": 1, "stats.best": math.nan}), "/fields/1/1"),
    ("a bad key", lambda db: doc(db, "users", "amor").set({"ok": {"$bad": 1}}), "/value/ok/$bad"),
    ("a key holding a slash", lambda db: doc(db, "users", "amor").set({"a/b": 1}), "/value/a~1b"),
    ("a segment", lambda db: doc(db, "users", "$bad").get(), "/path/1"),
    ("a where value", lambda db: doc(db, "users").where("score", "==", math.nan).stream(), "/query/where/0/2"),
    ("a batch write", lambda db: db.batch().set(doc(db, "c", "a"), {"n": 1}).set(doc(db, "c", "b"), {"n": math.nan}).commit(),
     "/writes/1/value/n"),
]


@pytest.mark.parametrize("call,where", [(call, where) for _, call, where in POINTED], ids=[name for name, _, _ in POINTED])
def test_an_error_names_its_place_with_one_json_pointer(seeded, call, where):
    error = refused(seeded, lambda: call(seeded))
    assert error.data["path"] == where and str(error).startswith(where)
