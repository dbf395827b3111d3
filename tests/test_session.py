"""The session (server/session.py) driven by hand: values in, frames out, no socket, no event loop."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from server.channel import CLOSE_AUTH_FAILED, ClientHandshake, Records
from server.config import Limits
from server.database import Database
from server.errors import LimitExceededError, MethodNotFoundError
from server.rpc import dumps
from server.rules import Rules
from server.session import ENCODE_STEP, Service, Session
from server.storage import FileStorage

CLIENT_KEY, ADMIN_KEY = "mb-test-client-key-0123456789", "mba-test-admin-key-0123456789"
RULES = {"notes": {"read": "owner", "write": "owner", "owner": "ownerId", "serverFields": {"ownerId": "uid"}},
         "open": {"read": "public", "write": "public"}}


class Sink:
    """A session's sink that keeps what it is given."""

    def __init__(self) -> None:
        self.delivered: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, tags: tuple[Any, ...], message: dict[str, Any]) -> None:
        self.delivered.append((tags, message))


@pytest.fixture
def service():
    database = Database(rules=Rules(RULES))
    yield Service(database, limits=Limits(maxMessageBytes=4096), keys={"client": CLIENT_KEY, "admin": ADMIN_KEY})
    database.close()


def request(method: str, params: dict[str, Any], request_id: Any = 1) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})


def connect(service: Service, kid: str = "client", key: str = CLIENT_KEY) -> tuple[Session, Records, Sink]:
    """A session that went through the MBSC1 handshake, and the client's record keys."""
    sink = Sink()
    session = service.session(sink, number=7, address="192.0.2.1")
    client = ClientHandshake(kid, key, None)
    hello = json.loads(session.handshake(request("hello", client.hello(), 0)).text)["result"]
    auth, records = client.finish(hello)
    reply = session.handshake(request("auth", auth, 1))
    client.confirm(json.loads(reply.text)["result"])
    return session, records, sink


def ask(session: Session, method: str, params: dict[str, Any], request_id: Any = 1) -> dict[str, Any]:
    work = session.receive(request(method, params, request_id).encode())
    reply = work.run()
    if reply.sync is not None:
        reply.sync()
    return json.loads(reply.text)


def test_the_handshake_gives_the_session_its_principal_and_record_keys(service):
    session, _, _ = connect(service)
    assert session.records is not None
    assert (session.principal.role, session.principal.uid, session.principal.address) == ("client", None, "192.0.2.1")
    admin, _, _ = connect(service, "admin", ADMIN_KEY)
    assert admin.principal.admin


def test_a_wrong_key_is_refused_at_hello_with_one_answer_and_a_close(service):
    session = service.session(Sink())
    hello = ClientHandshake("client", "mb-not-the-key-0123456789ab", None).hello()
    reply = session.handshake(request("hello", hello, 0))
    assert reply.close == (CLOSE_AUTH_FAILED, "authentication failed")
    assert json.loads(reply.text)["error"]["message"] == "authentication failed"
    assert session.records is None and session.principal is None


def test_an_old_client_key_is_accepted_until_its_grace_ends(service):
    old = "mb-the-old-client-key-0123456789"
    service.previous = (("client", old, time.time() + 60),)
    session, _, _ = connect(service, "client", old)
    assert session.principal.role == "client"
    service.previous = (("client", old, time.time() - 1),)
    reply = service.session(Sink()).handshake(request("hello", ClientHandshake("client", old).hello(), 0))
    assert reply.close == (CLOSE_AUTH_FAILED, "authentication failed")
    assert connect(service)[0].principal.role == "client", "the current key works throughout"


def test_a_wrong_key_without_a_key_hint_is_refused_at_auth(service):
    session = service.session(Sink())
    client = ClientHandshake("client", "mb-not-the-key-0123456789ab", None)
    params = {k: v for k, v in client.hello().items() if k != "kh"}  # as a client without hints: the current key
    hello = json.loads(session.handshake(request("hello", params, 0)).text)["result"]
    with pytest.raises(Exception):  # the client sees the server's proof fail: it holds another key
        client.finish(hello)
    forged = {"kid": "client", "cmac": "A" * 43}
    reply = session.handshake(request("auth", forged, 1))
    assert reply.close == (CLOSE_AUTH_FAILED, "authentication failed")
    assert json.loads(reply.text)["error"]["message"] == "authentication failed"
    assert session.records is None and session.principal is None


def test_a_request_before_hello_is_refused(service):
    reply = service.session(Sink()).handshake(request("get", {"path": ["open"]}))
    assert reply.close is not None and json.loads(reply.text)["error"]["data"]["reason"] == "UNAUTHENTICATED"


def test_a_request_is_routed_to_the_database_and_answered_by_id(service):
    session, _, _ = connect(service)
    assert ask(session, "add", {"path": ["open", "a"], "value": {"n": 1}}, "x")["result"] == {"id": "a"}
    answer = ask(session, "get", {"path": ["open", "a"]}, 9)
    assert answer == {"jsonrpc": "2.0", "id": 9, "result": {"value": {"n": 1}}}


def test_a_batch_frame_is_answered_by_one_batch_frame(service):
    session, _, _ = connect(service)
    frame = json.dumps([json.loads(request("add", {"path": ["open", "b"], "value": {"n": 2}}, 1)),
                        json.loads(request("get", {"path": ["open", "b"]}, 2))])
    answers = json.loads(session.receive(frame.encode()).run().text)
    assert [a["id"] for a in answers] == [1, 2] and answers[1]["result"] == {"value": {"n": 2}}


def test_a_large_result_encoded_a_slice_at_a_time_is_the_text_of_one_encoding(service):
    database = service.database
    for start in range(0, 2 * ENCODE_STEP + 7, 250):
        database.commit([{"op": "set", "path": ["open", f"d{i:05}"], "value": {"n": i, "s": "é\"", "t": [i, None]}}
                         for i in range(start, min(start + 250, 2 * ENCODE_STEP + 7))])
    session, _, _ = connect(service, "admin", ADMIN_KEY)
    calls = [("query", {"query": {"path": ["open"], "where": [["n", ">=", 3]]}}), ("get", {"path": ["open"]})]
    expected = [{"jsonrpc": "2.0", "id": f"r{i}", "result": getattr(database, method)(params, None)[0]}
                for i, (method, params) in enumerate(calls)]
    assert len(expected[0]["result"]["docs"]) > ENCODE_STEP and len(expected[1]["result"]["value"]) > ENCODE_STEP
    for i, (method, params) in enumerate(calls):
        assert session.receive(request(method, params, f"r{i}").encode()).run().text == dumps(expected[i])
    frame = json.dumps([json.loads(request(method, params, f"r{i}")) for i, (method, params) in enumerate(calls)])
    assert session.receive(frame.encode()).run().text == dumps(expected)


def test_unknown_and_handshake_methods_after_the_handshake_are_refused(service):
    session, _, _ = connect(service)
    assert ask(session, "explode", {})["error"]["data"]["reason"] == "METHOD_NOT_FOUND"
    assert ask(session, "hello", {"v": "MBSC1", "kid": "client", "nc": "A" * 22})["error"]["data"]["reason"] in (
        "INVALID_REQUEST", "INVALID_ARGUMENT")


@pytest.mark.parametrize("method", [["get"], {"get": 1}, None, 5], ids=repr)
def test_a_method_that_is_not_a_string_is_invalid_request(service, method):
    session, _, _ = connect(service)
    frame = json.dumps({"jsonrpc": "2.0", "id": 3, "method": method, "params": {}}).encode()
    answer = json.loads(session.receive(frame).run().text)
    assert answer["id"] == 3 and answer["error"]["data"]["reason"] == "INVALID_REQUEST"


def test_an_oversized_message_is_limit_exceeded_by_its_own_id(service):
    session, _, _ = connect(service)
    answer = ask(session, "add", {"path": ["open", "c"], "value": {"text": "x" * 5000}}, 42)
    assert answer["id"] == 42 and answer["error"]["data"]["reason"] == "LIMIT_EXCEEDED"
    assert answer["error"]["data"]["limit"] == 4096


def test_password_work_is_marked_blocking_and_reads_are_not(service):
    session, _, _ = connect(service)
    assert session.receive(request("signIn", {"email": "a@b.example", "password": "12345678"}).encode()).blocking
    assert not session.receive(request("get", {"path": ["open", "a"]}).encode()).blocking


def test_a_hot_write_is_answered_after_its_sync(tmp_path):
    database = Database(FileStorage(tmp_path / "db.json"), hot=True)
    try:
        session = Service(database).admin(Sink())
        reply = session.receive(request("add", {"path": ["c", "k"], "value": {"n": 1}}).encode()).run()
        assert reply.sync is not None and json.loads(reply.text)["result"] == {"id": "k"}
        reply.sync()  # returns once the record is fsynced
        read = session.receive(request("get", {"path": ["c", "k"]}).encode()).run()
        assert read.sync is None
    finally:
        database.close()


def test_a_listener_delivers_to_the_sink_and_the_notification_names_its_listeners(service):
    session, _, sink = connect(service)
    assert ask(session, "subscribe", {"sub": 3, "query": {"path": ["open"]}})["result"] == {"sub": 3}
    assert ask(session, "subscribe", {"sub": 4, "query": {"path": ["open"]}})["result"] == {"sub": 4}
    sink.delivered.clear()
    ask(session, "add", {"path": ["open", "d"], "value": {"n": 4}})
    assert [tags for tags, _ in sink.delivered] == [(3, 4)]
    frame = json.loads(session.notification(sink.delivered))
    assert frame["method"] == "snapshot" and frame["params"]["subs"] == [3, 4]
    assert frame["params"]["snapshot"]["changes"][0]["id"] == "d"
    assert ask(session, "subscribe", {"sub": 3, "path": ["open", "d"]})["error"]["data"]["reason"] == "INVALID_ARGUMENT"


def test_signing_out_and_in_again_resends_what_each_listener_may_see(service):
    owner, _, _ = connect(service)
    owner.call("signUp", {"email": "owner@session.example", "password": "long enough password"})
    note = owner.call("add", {"path": ["notes"], "value": {"text": "mine"}})["id"]
    owner_listens = owner.deliver
    owner.subscribe({"path": ["notes", note]}, "w")
    assert owner_listens.delivered[-1][1]["exists"]
    owner.call("signOut", {})
    assert owner_listens.delivered[-1] == (("w",), {"id": note, "value": None, "exists": False})
    owner.call("signIn", {"email": "owner@session.example", "password": "long enough password"})
    assert owner_listens.delivered[-1][1]["exists"] and owner_listens.delivered[-1][1]["value"]["text"] == "mine"


def test_closing_a_session_stops_its_listeners(service):
    session, _, _ = connect(service)
    session.subscribe({"query": {"path": ["open"]}}, 1)
    session.subscribe({"path": ["open", "x"]}, 2)
    assert len(service.database.watcher) == 2
    session.close()
    assert len(service.database.watcher) == 0


def test_the_admin_session_has_the_limits_of_a_remote_admin():
    database = Database(rules=Rules(None, max_doc_bytes=100))
    try:
        admin = Service(database).admin(Sink())
        with pytest.raises(LimitExceededError) as caught:
            admin.call("add", {"path": ["c", "big"], "value": {"text": "x" * 200}})
        assert caught.value.data["limit"] == 100
        assert database.get({"path": ["c", "big"]}, None)[0] == {"value": None}
        with pytest.raises(MethodNotFoundError):
            admin.call("explode", {})
    finally:
        database.close()


def test_a_rules_reload_shows_each_listener_what_the_new_rules_let_it_read(service):
    session, _, sink = connect(service)
    assert ask(session, "add", {"path": ["open", "a"], "value": {"n": 1}})["result"] == {"id": "a"}
    assert ask(session, "subscribe", {"sub": 1, "query": {"path": ["open"]}})["result"] == {"sub": 1}
    assert [change["id"] for change in sink.delivered[-1][1]["changes"]] == ["a"]
    service.database.rules = Rules({**RULES, "open": {"read": "none", "write": "public"}})
    service.recheck()
    assert sink.delivered[-1] == ((1,), {"docs": [], "changes": []})
    ask(session, "add", {"path": ["open", "b"], "value": {"n": 2}})
    assert sink.delivered[-1] == ((1,), {"docs": [], "changes": []}), "nothing more reaches it"
    service.database.rules = Rules(RULES)
    service.recheck()
    assert [doc["id"] for doc in sink.delivered[-1][1]["docs"]] == ["a", "b"]
    session.close()
    assert session not in service.sessions
