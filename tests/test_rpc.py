"""JSON-RPC parsing, validation against the method schemas, and error shapes (server/rpc.py)."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from server.errors import InvalidArgumentError, InvalidRequestError, LimitExceededError, NotFoundError, ParseError
from server.rpc import Rpc
from server.schemas import load_schema
from server.session import HANDSHAKE, METHODS

rpc = Rpc((*HANDSHAKE, *METHODS), max_batch=3)


def request(method, params, request_id=1):
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


@pytest.mark.parametrize("frame", ["{", "nope", b"\xff\xfe", '{"a": NaN}', "[1, Infinity]"])
def test_a_frame_that_is_not_json_is_a_parse_error(frame):
    with pytest.raises(ParseError):
        rpc.parse(frame)


def test_deep_nesting_is_limit_exceeded():
    with pytest.raises(LimitExceededError):
        rpc.parse("[" * 100_000 + "]" * 100_000)


def test_empty_and_oversized_batches_are_invalid_requests():
    with pytest.raises(InvalidRequestError):
        rpc.parse("[]")
    with pytest.raises(InvalidRequestError) as caught:
        rpc.parse(json.dumps([request("get", {"path": []})] * 4))
    assert caught.value.data == {"limit": 3, "actual": 4}
    messages, batch = rpc.parse(json.dumps([request("get", {"path": []})] * 3))
    assert batch and len(messages) == 3


@pytest.mark.parametrize(
    "message",
    [5, "x", [], {"method": "get"}, {"jsonrpc": "1.0", "id": 1, "method": "get"}, {"jsonrpc": "2.0", "id": 1},
     {"jsonrpc": "2.0", "id": 1.5, "method": "get"}, {"jsonrpc": "2.0", "id": [1], "method": "get"}],
    ids=repr,
)
def test_a_malformed_request_is_invalid_request(message):
    with pytest.raises(InvalidRequestError):
        rpc.call(message)


def test_a_request_without_id_is_a_notification():
    call = rpc.call({"jsonrpc": "2.0", "method": "get", "params": {"path": ["c"]}})
    assert call.notification and call.id is None


@pytest.mark.parametrize(
    "method,params,where",
    [
        ("get", {"path": ["ok", 5]}, "/path/1"),
        ("get", {"path": ["$x"]}, "/path/0"),
        ("get", {}, ""),
        ("add", {"path": ["c"], "value": [1]}, "/value"),
        ("add", {"path": [], "value": {}}, "/path"),
        ("query", {"query": {"path": ["c"], "limit": -1}}, "/query/limit"),
        ("query", {"query": {"path": ["c"], "where": [["a", "=="]]}}, "/query/where/0"),
        ("query", {"query": {"path": ["c"], "orderBy": [["a", "up"]], "extra": 1}}, "/query"),
        ("aggregate", {"query": {"path": ["c"]}, "op": "median"}, "/op"),
        ("update", {"path": ["c", "d"], "fields": {"a": 1}}, "/fields"),
        ("commit", {"writes": []}, "/writes"),
        ("hello", {"v": 2, "mode": "psk", "kid": "client", "nc": "AA"}, "/v"),
    ],
)
def test_params_failing_the_schema_name_the_json_path(method, params, where):
    with pytest.raises(InvalidArgumentError) as caught:
        rpc.call(request(method, params))
    assert caught.value.data["path"] == where and str(caught.value).startswith(where)


def test_unknown_methods_pass_the_edge_and_are_refused_by_the_method_table():
    assert rpc.call(request("explode", {})).method == "explode"


def test_result_and_error_shapes():
    assert Rpc.result(7, {"id": "x"}) == {"jsonrpc": "2.0", "id": 7, "result": {"id": "x"}}
    answer = Rpc.error(7, NotFoundError("gone", {"path": ["c", "d"]}))
    assert answer["error"] == {"code": -32002, "message": "gone", "data": {"reason": "NOT_FOUND", "path": ["c", "d"]}}


def test_an_unexpected_exception_becomes_internal_with_an_id_and_no_traceback(caplog):
    answer = Rpc.error(3, KeyError("secret detail"))
    error = answer["error"]
    assert error["code"] == -32603 and error["data"]["reason"] == "INTERNAL"
    assert "secret" not in json.dumps(answer) and "Traceback" not in json.dumps(answer)
    assert error["data"]["errorId"] in caplog.text and "secret detail" in caplog.text


def test_request_id_for_answers_to_bad_requests():
    assert Rpc.request_id({"id": 4}) == 4 and Rpc.request_id({"id": 1.5}) is None and Rpc.request_id([]) is None
    assert Rpc.request_id({"id": "a\udc00"}) is None  # an answer could not carry it


def test_a_lone_surrogate_refuses_its_request_naming_where_and_leaves_the_others():
    frame = json.dumps([  # ASCII JSON: every surrogate an escape
        request("get", {"path": ["c", "\ud800"]}, request_id="a"),
        request("get", {"path": ["c", "d"]}, request_id="\udbff"),
        request("set", {"path": ["c", "d"], "value": {"x": [{"~k\udc00": 1}]}}, request_id=3),
    ]).encode()
    refusals = []
    for message in rpc.parse(frame)[0]:
        with pytest.raises(InvalidArgumentError) as caught:
            rpc.call(message)
        refusals.append((Rpc.request_id(message), caught.value.data.get("path"), str(caught.value)))
    assert [(request_id, where) for request_id, where, _ in refusals] == [("a", "/path/1"), (None, None), (3, "/value/x/0")]
    assert "request id" in refusals[1][2] and "a key of /value/x/0" in refusals[2][2]
    paired = json.dumps(request("get", {"path": ["c", "\U0001f600"]}, request_id="\U0001f600")).encode()
    assert rpc.call(rpc.parse(paired)[0][0]).params["path"] == ["c", "\U0001f600"]


# The compiled validators must agree with the reference 2020-12 validator on what they accept.

CORPUS = {
    "get": [{"path": []}, {"path": ["c", "d"]}, {"path": ["c", ""]}, {"path": "c"}, {"path": ["c"], "x": 1}],
    "query": [{"query": {"path": ["c"], "where": [["a", ">", 1]], "orderBy": [["a", "desc"]], "limit": 3}},
              {"query": {"path": ["c"], "startAt": []}}, {"query": {"path": []}}, {"query": {"path": ["c"], "offset": 1.5}}],
    "aggregate": [{"query": {"path": ["c"]}, "op": "sum", "field": "a.b"}, {"query": {"path": ["c"]}, "op": "sum", "field": []}],
    "add": [{"path": ["c"], "value": {"a": 1}}, {"path": ["c"], "value": None}, {"path": ["c"]}],
    "set": [{"path": ["c", "d"], "value": {}}, {"path": ["c", "d"], "value": {}, "key": "x"}],
    "update": [{"path": ["c", "d"], "fields": [["a", 1], [["a", "b"], {"$increment": 1}]]}, {"path": ["c", "d"], "fields": [["a"]]}],
    "delete": [{"path": ["c"]}, {"path": ["c", ".."]}],
    "commit": [{"writes": [{"op": "set", "path": ["c", "d"], "value": {}}, {"op": "delete", "path": ["c"]}],
                "reads": [{"path": ["c", "d"], "value": None}]},
               {"writes": [{"op": "update", "path": ["c", "d"], "value": {}}]}, {"writes": [{"op": "drop", "path": ["c"]}]}],
    "hello": [{"v": 1, "mode": "nk", "kid": "admin", "nc": "abc_-", "e": "xyz"}, {"v": 1, "mode": "nk", "kid": "root", "nc": "a"}],
    "auth": [{"cmac": "abc"}, {"cmac": "a+b"}],
}


@pytest.mark.parametrize("method", sorted(CORPUS))
def test_compiled_validators_agree_with_the_reference_validator(method):
    registry = Registry().with_resource("montybase:common", Resource.from_contents(load_schema("common")))
    reference = Draft202012Validator(load_schema(method)["properties"]["params"], registry=registry)
    for params in CORPUS[method]:
        try:
            rpc.call(request(method, params))
            compiled = True
        except InvalidArgumentError:
            compiled = False
        assert compiled == reference.is_valid(params), (method, params)


def test_every_method_has_a_schema_file_that_is_valid_2020_12():
    for method in (*HANDSHAKE, *METHODS):
        schema = load_schema(method)
        Draft202012Validator.check_schema(schema)
        assert set(schema["properties"]) == {"params", "result"}


def test_a_path_check_path_passed_is_not_checked_again_and_any_other_is():
    from server.paths import CheckedPath

    trusted = CheckedPath(("c", "$not-a-key"))  # only check_path makes these; this one is forged to see the skip
    rpc.check("get", {"path": trusted})
    with pytest.raises(InvalidArgumentError) as caught:
        rpc.check("get", {"path": ["c", "$not-a-key"]})
    assert caught.value.data["path"] == "/path/1"
