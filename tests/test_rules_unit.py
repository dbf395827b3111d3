"""server/rules.py on its own: parsing, matching, grants, data rules, limits and rate buckets
(a fake clock), and a remote "$ref" that must never reach the network."""

from __future__ import annotations

import socket
import threading
import urllib.request
from typing import Any

import pytest

from server.errors import (
    InvalidArgumentError,
    LimitExceededError,
    MontybaseError,
    PermissionDeniedError,
    RateLimitedError,
    ValidationError,
)
from server.query import parse_query
from server.rules import GRANTS, OPERATIONS, Principal, RateLimiter, Rule, Rules

ANON = Principal("client", None, 1, "10.0.0.1")
ALICE = Principal("client", "alice", 2, "10.0.0.2")
BOB = Principal("client", "bob", 3, "10.0.0.3")
ADMIN = Principal("admin", None, 4, "10.0.0.4")


# Parsing


def test_every_operation_defaults_to_none():
    assert Rule.parse("c", {}).grants == dict.fromkeys(OPERATIONS, "none")
    assert OPERATIONS == ("get", "list", "create", "update", "delete")
    assert GRANTS == ("none", "public", "user", "owner", "admin")


def test_read_and_write_are_shorthands_that_explicit_operations_override():
    rule = Rule.parse("c", {"read": "public", "write": "owner"})
    assert rule.grants == {"get": "public", "list": "public", "create": "owner", "update": "owner", "delete": "owner"}
    # Whatever the key order, the explicit operation wins over the shorthand.
    for spec in ({"list": "user", "read": "public", "delete": "none", "write": "owner"},
                 {"read": "public", "list": "user", "write": "owner", "delete": "none"}):
        assert Rule.parse("c", spec).grants == {
            "get": "public", "list": "user", "create": "owner", "update": "owner", "delete": "none"}


@pytest.mark.parametrize("spec", [{"get": "everyone"}, {"read": "owners"}, {"write": None}, {"delete": 1}])
def test_an_unknown_grant_is_refused(spec):
    with pytest.raises(InvalidArgumentError, match=r"/rules/c/"):
        Rule.parse("c", spec)


def test_the_owner_is_the_document_id_by_default_or_a_field():
    assert Rule.parse("c", {}).owner is None
    assert Rule.parse("c", {"owner": "$id"}).owner is None
    assert Rule.parse("c", {"owner": "meta.owner"}).owner == ("meta", "owner")
    with pytest.raises(InvalidArgumentError):
        Rule.parse("c", {"owner": "a..b"})


def test_rates_parse_and_shorthands_expand():
    rule = Rule.parse("c", {"rate": {"write": "10/min", "get": "2/s"}})
    assert rule.rates == {"create": (10, 60.0), "update": (10, 60.0), "delete": (10, 60.0), "get": (2, 1.0)}
    for bad in ("10", "0/s", "ten/s", "5/fortnight", "-1/s", "/s"):
        with pytest.raises(InvalidArgumentError, match="rate"):
            Rule.parse("c", {"rate": {"create": bad}})


def test_a_broken_schema_is_refused_when_rules_are_built():
    with pytest.raises(InvalidArgumentError, match=r"/rules/c/schema: not a valid JSON Schema"):
        Rules({"c": {"schema": {"type": "nonsense"}}})
    with pytest.raises(InvalidArgumentError, match=r"/rules/c/schema"):
        Rules({"c": {"schema": {"properties": {"a": {"minLength": -1}}}}})
    Rules({"c": {"schema": {"$defs": {"n": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/n"}}}}})


# Matching


def test_the_most_specific_pattern_wins():
    rules = Rules({
        "**": {"read": "public"},
        "rooms/*/messages": {"read": "user"},
        "rooms/lobby/messages": {"get": "admin"},
        "rooms": {"list": "owner"},
    })
    assert rules.match(("rooms", "r1", "messages")).pattern == "rooms/*/messages"
    assert rules.match(("rooms", "lobby", "messages")).pattern == "rooms/lobby/messages"
    assert rules.match(("rooms",)).pattern == "rooms"
    assert rules.match(("other",)).pattern == "**"
    assert rules.match(("rooms", "r1", "other")).pattern == "**"
    assert rules.match(("a", "b", "c", "d", "e")).pattern == "**"
    # No inheritance: the lobby's rule has no list grant, and gets none from the patterns it hides.
    assert rules.match(("rooms", "lobby", "messages")).grants["list"] == "none"


def test_without_a_match_nothing_is_allowed():
    rules = Rules({"rooms/*/messages": {"read": "public"}})
    assert rules.match(("rooms",)) is None and rules.match(("rooms", "r", "other")) is None
    with pytest.raises(PermissionDeniedError):
        rules.check_read(ANON, ("rooms", "r1"), {"a": 1})
    with pytest.raises(PermissionDeniedError):
        rules.narrow(ALICE, parse_query({"path": ["rooms"]}))
    with pytest.raises(PermissionDeniedError):
        rules.check_write(ALICE, "create", ("rooms", "r1"), None, {"a": 1}, 0, 0)


def test_configured_and_open():
    assert not Rules(None).configured and Rules({}).configured
    assert Rules({"**": {"read": "public"}}).open
    assert Rules({"**": {"create": "public"}}).open
    assert not Rules({"**": {"read": "user", "write": "owner"}}).open
    assert not Rules({"scores": {"read": "public", "write": "public"}}).open


# Grants


@pytest.mark.parametrize("grant, allowed", [
    ("none", set()), ("public", {"anon", "alice", "bob"}), ("user", {"alice", "bob"}),
    ("owner", {"alice"}), ("admin", set()),
])
def test_grants_for_a_document_owned_by_alice(grant, allowed):
    principals = {"anon": ANON, "alice": ALICE, "bob": BOB}
    for owner_spec, doc_id, document in (("ownerId", "d1", {"ownerId": "alice"}), ("$id", "alice", {"x": 1})):
        rules = Rules({"c": {"read": grant, "write": grant, "owner": owner_spec}})
        for name, principal in principals.items():
            rule = rules.match(("c",))
            for op in OPERATIONS:
                if op == "list":
                    continue
                assert rule.allows(principal, op, doc_id, document) is (name in allowed), (grant, owner_spec, name, op)
            try:
                rules.check_read(principal, ("c", doc_id), document)
                read = True
            except PermissionDeniedError:
                read = False
            assert read is (name in allowed)
        rules.check_read(ADMIN, ("c", doc_id), document)  # the admin key passes every rule


def test_a_denied_read_is_the_same_whether_or_not_the_document_exists():
    rules = Rules({"c": {"read": "owner", "owner": "ownerId"}})
    answers = []
    for document in ({"ownerId": "alice"}, None):
        with pytest.raises(PermissionDeniedError) as caught:
            rules.check_read(BOB, ("c", "d"), document)
        answers.append((caught.value.message, caught.value.data))
    assert answers[0] == answers[1]


def test_narrow_filters_a_list_by_owner():
    rules = Rules({"f": {"list": "owner", "owner": "ownerId"}, "i": {"list": "owner"}, "p": {"list": "public"},
                   "u": {"list": "user"}})
    assert rules.narrow(ALICE, parse_query({"path": ["f"]})).owner == (("ownerId",), "alice")
    assert rules.narrow(ALICE, parse_query({"path": ["i"]})).owner == (None, "alice")
    query = parse_query({"path": ["p"], "limit": 3})
    assert rules.narrow(ANON, query) == query
    assert rules.narrow(ALICE, parse_query({"path": ["u"]})).owner is None
    for path in (["f"], ["i"], ["u"]):
        with pytest.raises(PermissionDeniedError):
            rules.narrow(ANON, parse_query({"path": path}))
    assert rules.narrow(ADMIN, parse_query({"path": ["f"]})).owner is None


# Writes and data rules


def test_whole_collection_deletes_are_admin_only():
    rules = Rules({"c": {"read": "public", "write": "public"}})
    for principal in (ANON, ALICE):
        with pytest.raises(PermissionDeniedError):
            rules.check_write(principal, "delete", ("c",), {"a": {}}, None, 0, 1)
    assert rules.check_write(ADMIN, "delete", ("c",), {"a": {}}, None, 0, 1) is None


def test_create_with_an_owner_field_must_name_the_caller_unless_the_server_fills_it():
    rules = Rules({"c": {"write": "owner", "owner": "ownerId"},
                   "s": {"write": "owner", "owner": "ownerId", "serverFields": {"ownerId": "uid", "at": "now"}}})
    assert rules.check_write(ALICE, "create", ("c", "d"), None, {"ownerId": "alice"}, 5, 0) == {"ownerId": "alice"}
    with pytest.raises(PermissionDeniedError):
        rules.check_write(ALICE, "create", ("c", "d"), None, {"ownerId": "bob"}, 5, 0)
    assert rules.check_write(ALICE, "create", ("s", "d"), None, {"ownerId": "bob", "x": 1}, 5, 0) == {
        "ownerId": "alice", "at": 5, "x": 1}
    with pytest.raises(PermissionDeniedError):  # anonymous: no uid to own it
        rules.check_write(ANON, "create", ("s", "d"), None, {"x": 1}, 5, 0)


def test_an_update_may_not_give_the_document_away():
    rules = Rules({"c": {"write": "owner", "owner": "ownerId"}})
    old = {"ownerId": "alice", "n": 1}
    assert rules.check_write(ALICE, "update", ("c", "d"), old, {"ownerId": "alice", "n": 2}, 0, 0)["n"] == 2
    with pytest.raises(PermissionDeniedError, match="another owner"):
        rules.check_write(ALICE, "update", ("c", "d"), old, {"ownerId": "bob", "n": 1}, 0, 0)
    with pytest.raises(PermissionDeniedError):
        rules.check_write(BOB, "update", ("c", "d"), old, {"ownerId": "bob"}, 0, 0)


def test_immutable_and_server_fields_never_change():
    rules = Rules({"c": {"write": "public", "immutable": ["kind", "meta.created"], "serverFields": {"by": "uid"}}})
    old = {"kind": "a", "meta": {"created": 1}, "by": "alice", "n": 1}
    assert rules.check_write(BOB, "update", ("c", "d"), old, {**old, "n": 2}, 0, 0)["n"] == 2
    with pytest.raises(ValidationError) as caught:
        rules.check_write(BOB, "update", ("c", "d"), old, {"kind": "b", "meta": {}, "by": "bob"}, 0, 0)
    assert caught.value.data["errors"] == [
        {"path": "/kind", "keyword": "immutable", "message": "kind may not change"},
        {"path": "/meta/created", "keyword": "immutable", "message": "meta.created may not change"},
        {"path": "/by", "keyword": "immutable", "message": "by may not change"},
    ]


def test_a_replacing_set_keeps_the_fixed_fields_it_leaves_out():
    rules = Rules({"c": {"write": "owner", "owner": "by", "immutable": ["kind", "meta.created"],
                         "serverFields": {"by": "uid"}}})
    old = {"kind": "a", "meta": {"created": 1, "tag": "x"}, "by": "alice", "n": 1}
    kept = rules.check_write(ALICE, "update", ("c", "d"), old, {"meta": {}, "n": 2}, 0, 0, replacing=True)
    assert kept == {"kind": "a", "meta": {"created": 1}, "by": "alice", "n": 2}
    with pytest.raises(ValidationError) as caught:  # given, they must be equal; a merge never fills them in
        rules.check_write(ALICE, "update", ("c", "d"), old, {"kind": "b", "meta": 5, "n": 2}, 0, 0, replacing=True)
    assert [e["path"] for e in caught.value.data["errors"]] == ["/kind", "/meta/created"]
    with pytest.raises(ValidationError):  # an update's document is the merged one: what it lacks is removed
        rules.check_write(ALICE, "update", ("c", "d"), old, {"by": "alice", "n": 2}, 0, 0)
    with pytest.raises(PermissionDeniedError):  # the kept owner field is still the owner's
        rules.check_write(BOB, "update", ("c", "d"), old, {"n": 2}, 0, 0, replacing=True)


def test_the_schema_reports_every_error_with_path_keyword_and_message():
    rules = Rules({"c": {"write": "public", "schema": {
        "type": "object", "additionalProperties": False, "required": ["n"],
        "properties": {"n": {"type": "integer", "maximum": 10}, "tags": {"type": "array", "items": {"type": "string"}}}}}})
    assert rules.check_write(ANON, "create", ("c", "d"), None, {"n": 10}, 0, 0) == {"n": 10}
    with pytest.raises(ValidationError) as caught:
        rules.check_write(ANON, "create", ("c", "d"), None, {"n": 11, "tags": ["a", 1], "x": 0}, 0, 0)
    errors = caught.value.data["errors"]
    assert {(e["path"], e["keyword"]) for e in errors} == {("/n", "maximum"), ("/tags/1", "type"),
                                                           ("/", "additionalProperties")}
    assert all(e["message"] for e in errors)


def test_a_denied_caller_never_sees_validation_details():
    rules = Rules({"c": {"read": "public", "write": "owner", "owner": "ownerId", "schema": {"required": ["n"]}}})
    with pytest.raises(PermissionDeniedError):
        rules.check_write(BOB, "update", ("c", "d"), {"ownerId": "alice", "n": 1}, {"ownerId": "alice"}, 0, 0)


def test_document_bytes_use_the_smaller_of_the_global_and_the_collection_limit():
    rules = Rules({"big": {"write": "public", "maxDocBytes": 10_000}, "small": {"write": "public", "maxDocBytes": 20}},
                  max_doc_bytes=100)
    value = {"s": "é" * 20}  # 20 characters, 40 bytes of UTF-8, 48 bytes of compact JSON
    with pytest.raises(LimitExceededError) as caught:
        rules.check_write(ANON, "create", ("small", "d"), None, value, 0, 0)
    assert caught.value.data == {"limit": 20, "actual": 48}
    rules.check_write(ANON, "create", ("big", "d"), None, value, 0, 0)
    with pytest.raises(LimitExceededError) as caught:
        rules.check_write(ANON, "create", ("big", "d"), None, {"s": "x" * 100}, 0, 0)
    assert caught.value.data == {"limit": 100, "actual": 108}
    with pytest.raises(LimitExceededError):  # limits apply to the admin key too
        rules.check_write(ADMIN, "create", ("big", "d"), None, {"s": "x" * 100}, 0, 0)


def test_documents_per_collection_bound_creates_only():
    rules = Rules({"c": {"write": "public", "maxDocs": 2}})
    rules.check_write(ANON, "create", ("c", "d"), None, {"n": 1}, 0, 1)
    with pytest.raises(LimitExceededError) as caught:
        rules.check_write(ANON, "create", ("c", "d"), None, {"n": 1}, 0, 2)
    assert caught.value.data == {"limit": 2, "actual": 3}
    rules.check_write(ANON, "update", ("c", "d"), {"n": 1}, {"n": 2}, 0, 0)


def test_results_per_read():
    rules = Rules({}, max_results=3)
    rules.check_results(ANON, 3)
    with pytest.raises(LimitExceededError) as caught:
        rules.check_results(ANON, 4)
    assert caught.value.data == {"limit": 3, "actual": 4}
    assert "add a limit of at most 3" in str(caught.value)
    with pytest.raises(LimitExceededError) as caught:
        rules.check_results(ANON, 4, asked=2000)
    assert "asked for up to 2000" in str(caught.value) and "add a limit" not in str(caught.value)
    rules.check_results(ADMIN, 4)


# A remote $ref never reaches the network


def test_a_remote_ref_fails_without_touching_the_network(monkeypatch):
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    spec = {"c": {"write": "public", "schema": {"$ref": "https://example.org/x.json"}}}
    try:
        rules = Rules(spec)
    except InvalidArgumentError:
        pass  # refused at load time: fine
    else:
        with pytest.raises(Exception) as caught:  # noqa: PT011 - any refusal, as long as it is no fetch
            rules.check_write(ANON, "create", ("c", "d"), None, {"a": 1}, 0, 0)
        assert not isinstance(caught.value, AssertionError), caught.value
    assert attempts == []


def test_a_remote_ref_is_refused_cleanly():
    spec = {"c": {"write": "public", "schema": {"$ref": "https://example.org/x.json"}}}
    try:
        rules = Rules(spec)
    except InvalidArgumentError as exc:
        assert "$ref" in exc.message or "example.org" in exc.message
        return
    with pytest.raises(MontybaseError):
        rules.check_write(ANON, "create", ("c", "d"), None, {"a": 1}, 0, 0)


# Rate buckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


RATED = Rules({"c": {"rate": {"create": "3/s", "read": "2/min"}}, "free": {}})


def _take(limiter: RateLimiter, principal: Principal, op: str = "create", pattern: tuple[str, ...] = ("c",)) -> int | None:
    try:
        limiter.take(principal, RATED.match(pattern), op)
    except RateLimitedError as exc:
        return exc.data["retryAfterMs"]
    return None


def test_a_bucket_empties_then_refills():
    clock = Clock()
    limiter = RateLimiter(clock)
    assert [_take(limiter, ALICE) for _ in range(3)] == [None] * 3
    wait_ms = _take(limiter, ALICE)
    assert wait_ms is not None and 330 <= wait_ms <= 335
    clock.now += wait_ms / 1000
    assert _take(limiter, ALICE) is None
    assert _take(limiter, ALICE) is not None
    clock.now += 10  # a full bucket holds at most its count
    assert [_take(limiter, ALICE) for _ in range(4)][-1] is not None


def test_tokens_recorded_are_given_back_and_only_this_threads():
    clock = Clock()
    limiter = RateLimiter(clock)
    assert _take(limiter, ALICE) is None
    with limiter.recorded() as spent:
        assert [_take(limiter, ALICE) is None for _ in range(3)] == [True, True, False]  # the third finds none
        other = threading.Thread(target=_take, args=(limiter, BOB))
        other.start()
        other.join()
    assert len(spent) == 4  # two tokens, each of the connection's bucket and the address's
    limiter.refund(spent)
    assert [_take(limiter, ALICE) is None for _ in range(3)] == [True, True, False]
    assert _take(limiter, ALICE, "create") is not None
    assert [_take(limiter, BOB) is None for _ in range(3)] == [True, True, False]  # Bob's first stayed spent


def test_buckets_are_per_connection_and_per_address():
    clock = Clock()
    limiter = RateLimiter(clock)
    for _ in range(3):
        assert _take(limiter, Principal("client", None, 1, "10.0.0.9")) is None
    # The same address, another connection: the address's bucket is empty.
    assert _take(limiter, Principal("client", None, 2, "10.0.0.9")) is not None
    # The same connection seen from another address (a test of the connection's own bucket).
    assert _take(limiter, Principal("client", None, 1, "10.0.0.8")) is not None
    # Another connection from another address has its own buckets.
    assert _take(limiter, Principal("client", None, 3, "10.0.0.7")) is None


def test_operations_and_collections_have_their_own_buckets_and_the_admin_key_none():
    clock = Clock()
    limiter = RateLimiter(clock)
    for _ in range(3):
        _take(limiter, ALICE)
    assert _take(limiter, ALICE) is not None
    assert _take(limiter, ALICE, "update") is None  # no rate for update
    assert _take(limiter, ALICE, "get") is None and _take(limiter, ALICE, "list") is None
    assert _take(limiter, ALICE, "get") is None and _take(limiter, ALICE, "get") is not None  # read: 2/min
    assert _take(limiter, ALICE, "list") is None  # get and list: one bucket each
    wait_ms = _take(limiter, ALICE, "list")
    assert wait_ms is not None and 29_000 <= wait_ms <= 30_100
    for _ in range(10):
        assert _take(limiter, ALICE, "create", ("free",)) is None
        assert _take(limiter, ADMIN) is None
    limiter.take(ALICE, None, "create")  # no rule: nothing to count


SCORE_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["name", "score"],
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 8, "pattern": "^[a-z]+$"},
                   "score": {"type": "integer", "minimum": 0, "maximum": 100},
                   "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "uniqueItems": True},
                   "mail": {"type": "string", "format": "email"}},
}
SCORE_CORPUS = [
    {"name": "ann", "score": 1}, {"name": "ann", "score": 1.0}, {"name": "ann", "score": 1.5}, {"name": "ann", "score": True},
    {"name": "", "score": 1}, {"name": "Ann", "score": 1}, {"name": "ann", "score": 101}, {"name": "ann"},
    {"name": "ann", "score": 1, "x": 1}, {"name": "ann", "score": 1, "tags": ["a", "a"]},
    {"name": "ann", "score": 1, "tags": ["c"]}, {"name": "ann", "score": 1, "mail": "not an email"},
    {"name": "annannann", "score": 1}, {"name": "ann", "score": -1},
]


@pytest.mark.parametrize("document", SCORE_CORPUS, ids=repr)
def test_the_compiled_schema_check_agrees_with_the_reference_validator(document):
    rules = Rules({"scores": {"create": "public", "schema": SCORE_SCHEMA}})
    rule = rules.match(("scores",))
    assert rule.fast_check is not None
    reference = rule.schema.is_valid(document)
    try:
        rules.check_write(ANON, "create", ("scores", "s"), None, document, 0, 0)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == reference


def test_a_schema_with_keywords_of_2020_12_only_is_checked_by_the_reference_validator():
    schema = {"type": "object", "properties": {"pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]}}}
    rules = Rules({"c": {"create": "public", "schema": schema}})
    assert rules.match(("c",)).fast_check is None
    rules.check_write(ANON, "create", ("c", "d"), None, {"pair": ["a", 1]}, 0, 0)
    with pytest.raises(ValidationError):
        rules.check_write(ANON, "create", ("c", "d"), None, {"pair": [1, "a"]}, 0, 0)
