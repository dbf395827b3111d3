"""The server over real sockets: handshake, encrypted records, bad input, limits, access."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import select
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import Served, Stranger, connect_from, hand_handshake, server_bucket, server_config
from procs import Proc, server_command
from python_client import ConnectionLostError, Montybase, PermissionDeniedError, UnauthenticatedError, doc
from server.channel import ClientHandshake, Records, derive_psk, key_schedule
from server.config import fresh_keys, open_database, public_key
from server.schemas import load_schema
from server import transport
from server.transport import Foreground, Limits, MontybaseServer

_registry = Registry().with_resource("montybase:common", Resource.from_contents(load_schema("common")))


def result_schema(method):
    return Draft202012Validator(load_schema(method)["properties"]["result"], registry=_registry)


class Raw:
    """A hand-driven protocol client: handshake, then sealed frames of our choosing."""

    def __init__(self, served: Served, kid="client", key=None, pinned=True, handshake=True):
        self.ws = connect(served.url, compression=None, proxy=None, legacy=True, open_timeout=5)
        self.served = served
        if handshake:
            key = key or (served.config["apiKey"] if kid == "client" else served.config["adminKey"])
            nonce = secrets.token_bytes(32)
            server_public = public_key(served.config["serverKey"]) if pinned else None
            self.session, hello = hand_handshake(self.ws, kid, key, server_public, nonce)
            if not pinned:  # psk keys can be recomputed here: a session sealing as the server would
                ns = base64.urlsafe_b64decode(hello["ns"] + "=")
                keys = key_schedule("psk", kid, nonce, ns, derive_psk(key))
                self.mirror = Records(role=kid, th=keys.th, send_key=keys.s2c, recv_key=keys.c2s, send_dir=2)

    def text(self, message):
        self.ws.send(json.dumps(message))
        return json.loads(self.ws.recv(timeout=5))

    def send(self, message):
        self.ws.send(self.session.seal(message if isinstance(message, bytes) else json.dumps(message).encode()))

    def recv(self):
        return json.loads(self.session.open(self.ws.recv(timeout=5)))

    def call(self, method, params, request_id=1):
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return self.recv()

    def close_code(self):
        with pytest.raises(ConnectionClosed):
            self.ws.recv(timeout=5)
        return self.ws.close_code

    def close(self):
        self.ws.close()


def everything(served):
    return served.database.get({"path": []}, None)[0]["value"]


# Handshake and records


@pytest.mark.parametrize("pinned", [True, False], ids=["nk", "psk"])
def test_both_channel_modes_serve_requests(served, pinned):
    raw = Raw(served, pinned=pinned)
    answer = raw.call("add", {"path": ["c"], "value": {"n": 1}})
    result_schema("add").validate(answer["result"])
    assert raw.call("get", {"path": ["c", answer["result"]["id"]]})["result"] == {"value": {"n": 1}}
    raw.close()


def test_every_answer_matches_its_result_schema(served):
    raw = Raw(served, kid="admin")
    calls = [
        ("set", {"path": ["c", "a"], "value": {"n": 1, "t": ["x"]}}),
        ("update", {"path": ["c", "a"], "fields": [["n", {"$increment": 2}]]}),
        ("get", {"path": ["c"]}),
        ("query", {"query": {"path": ["c"], "orderBy": [["n", "desc"]], "limit": 5}}),
        ("aggregate", {"query": {"path": ["c"]}, "op": "avg", "field": "n"}),
        ("commit", {"writes": [{"op": "add", "path": ["c"], "value": {}}, {"op": "delete", "path": ["c", "a"]}]}),
        ("delete", {"path": ["c"]}),
    ]
    for method, params in calls:
        answer = raw.call(method, params)
        assert "result" in answer, answer
        result_schema(method).validate(answer["result"])
    raw.close()


def test_a_wrong_key_is_refused_at_hello_by_its_key_hint_with_close_1008(served):
    raw = Raw(served, handshake=False)
    hello = ClientHandshake("client", "mb-wrong-key-0123456789").hello()
    refused = raw.text({"jsonrpc": "2.0", "id": 0, "method": "hello", "params": hello})
    assert refused["error"]["data"] == {"reason": "UNAUTHENTICATED"} and refused["error"]["code"] == -32000
    assert raw.close_code() == 1008


def test_a_wrong_key_without_a_key_hint_is_refused_with_one_error_and_close_1008(served):
    raw = Raw(served, handshake=False)
    client = ClientHandshake("client", "mb-wrong-key-0123456789")  # psk mode: the server answers, the proof fails
    params = {k: v for k, v in client.hello().items() if k != "kh"}  # as a client without hints: the current key
    hello = raw.text({"jsonrpc": "2.0", "id": 0, "method": "hello", "params": params})
    with pytest.raises(Exception):
        client.finish(hello["result"])  # the server's proof does not verify under the wrong key
    refused = raw.text({"jsonrpc": "2.0", "id": 0, "method": "auth", "params": {"cmac": "A" * 43}})
    assert refused["error"]["data"] == {"reason": "UNAUTHENTICATED"} and refused["error"]["code"] == -32000
    assert raw.close_code() == 1008


def test_an_unknown_key_id_is_refused(served):
    raw = Raw(served, handshake=False)
    answer = raw.text({"jsonrpc": "2.0", "id": 0, "method": "hello",
                       "params": {"v": 1, "mode": "psk", "kid": "root", "nc": "A" * 43}})
    assert answer["error"]["data"]["reason"] == "UNAUTHENTICATED"
    assert raw.close_code() == 1008


def test_a_data_request_before_the_handshake_is_refused(served):
    raw = Raw(served, handshake=False)
    answer = raw.text({"jsonrpc": "2.0", "id": 5, "method": "get", "params": {"path": ["c"]}})
    assert answer["error"]["data"]["reason"] == "UNAUTHENTICATED" and answer["id"] == 5
    assert raw.close_code() == 1008


def test_a_handshake_that_never_finishes_is_closed_4001(loop_thread, tmp_path):
    served = Served(loop_thread, tmp_path, limits=Limits(handshakeTimeout=0.3))
    try:
        raw = Raw(served, handshake=False)
        started = time.monotonic()
        assert raw.close_code() == 4001
        assert time.monotonic() - started < 3
    finally:
        served.stop()


def frame_tests():
    def replayed(raw, frame, _):
        raw.ws.send(frame)
        raw.ws.send(frame)

    def altered(raw, frame, _):
        raw.ws.send(frame[:-1] + bytes([frame[-1] ^ 1]))

    def reordered(raw, frame, second):
        raw.ws.send(second)
        raw.ws.send(frame)

    def wrong_direction(raw, frame, _):
        # The same request sealed under the server-to-client key and direction (a reflection).
        raw.ws.send(raw.mirror.seal(b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"path":["c"]}}'))

    def text_frame(raw, frame, _):
        raw.ws.send('{"jsonrpc":"2.0","id":1,"method":"get","params":{"path":["c"]}}')

    return [replayed, altered, reordered, wrong_direction, text_frame]


@pytest.mark.parametrize("attack", frame_tests(), ids=lambda f: f.__name__)
def test_bad_records_close_the_connection_and_others_keep_working(served, attack):
    bystander = served.client()
    doc(bystander, "c", "keep").set({"n": 1})
    before = everything(served)
    raw = Raw(served, pinned=False)
    first = raw.session.seal(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "set",
                                         "params": {"path": ["c", "evil"], "value": {"x": 1}}}).encode())
    second = raw.session.seal(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "set",
                                          "params": {"path": ["c", "evil2"], "value": {"x": 2}}}).encode())
    attack(raw, first, second)
    codes = set()
    try:
        while True:  # a replay answers the first copy, then refuses the second
            raw.session.open(raw.ws.recv(timeout=5))
    except ConnectionClosed:
        codes.add(raw.ws.close_code)
    assert codes == {4002}
    after = everything(served)
    assert "evil2" not in after["c"]
    if attack.__name__ != "replayed":
        assert after == before
    assert doc(bystander, "c", "keep").get() == {"n": 1}
    bystander.close()


def test_wrong_keys_do_not_disturb_other_clients(served):
    bystander = served.client()
    for _ in range(5):
        raw = Raw(served, handshake=False)
        raw.text({"jsonrpc": "2.0", "id": 0, "method": "hello",
                  "params": {"v": 1, "mode": "psk", "kid": "client", "nc": "A" * 43}})
        raw.text({"jsonrpc": "2.0", "id": 0, "method": "auth", "params": {"cmac": "A" * 43}})
        assert raw.close_code() == 1008
    assert doc(bystander, "c").add({"ok": True})
    bystander.close()


# Bad input after the handshake


def test_bad_frames_get_the_documented_errors_and_change_nothing(served):
    doc_path = {"path": ["c", "d"], "value": {"n": 1}}
    served.database.write("set", doc_path, None)
    before = everything(served)
    raw = Raw(served)
    raw.send(b"this is not json")
    assert raw.recv()["error"]["data"]["reason"] == "PARSE_ERROR"
    raw.send({"jsonrpc": "2.0", "id": 9, "params": {}})
    answer = raw.recv()
    assert answer["error"]["data"]["reason"] == "INVALID_REQUEST" and answer["id"] == 9
    answer = raw.call("drop_database", {}, request_id="x")
    assert answer["error"]["code"] == -32601 and answer["id"] == "x"
    answer = raw.call("set", {"path": ["c", "$d"], "value": {"n": 2}})
    assert answer["error"]["data"] == {"reason": "INVALID_ARGUMENT", "path": "/path/1"}
    answer = raw.call("set", {"path": ["c", "d"], "value": {"n": 2**60}})
    assert answer["error"]["data"] == {"reason": "INVALID_ARGUMENT", "path": "/value/n"}
    answer = raw.call("set", {"path": ["c", "d"], "value": {"__proto__": {"polluted": 1}}})
    assert answer["error"]["data"]["reason"] == "INVALID_ARGUMENT"
    answer = raw.call("hello", {"v": 1, "mode": "psk", "kid": "client", "nc": "A" * 43})
    assert answer["error"]["data"]["reason"] == "INVALID_REQUEST"
    assert everything(served) == before
    assert raw.call("get", {"path": ["c", "d"]})["result"] == {"value": {"n": 1}}  # still served
    raw.close()


def escaped(message):
    """A request as raw JSON text in which a lone surrogate stays an escape (\\ud800), as a
    browser's JSON.stringify writes it."""
    return json.dumps(message, ensure_ascii=True).encode()


def test_a_lone_surrogate_in_a_request_id_is_answered_with_id_null_and_the_connection_lives_on(served):
    raw = Raw(served)
    raw.send(escaped({"jsonrpc": "2.0", "id": "x\ud800", "method": "get", "params": {"path": ["c", "d"]}}))
    answer = raw.recv()
    assert answer["id"] is None and answer["error"]["data"]["reason"] == "INVALID_ARGUMENT"
    assert "id" in answer["error"]["message"]
    assert raw.call("get", {"path": ["c", "d"]}, request_id=2) == {"jsonrpc": "2.0", "id": 2, "result": {"value": None}}
    raw.close()


def test_an_answer_queued_behind_notifications_with_a_lone_surrogate_id_keeps_the_connection_answering(served):
    """The batch's write notifies the connection's own listener, so its answer waits in the queue
    behind that notification and goes out from the connection's sender task."""
    raw = Raw(served)
    raw.send({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"sub": 1, "path": ["c", "d"]}})
    raw.recv(), raw.recv()  # the listener's first snapshot, then the answer
    raw.send(escaped([
        {"jsonrpc": "2.0", "id": 1, "method": "set", "params": {"path": ["c", "d"], "value": {"n": 1}}},
        {"jsonrpc": "2.0", "id": "\udc00", "method": "get", "params": {"path": ["c", "d"]}},
    ]))
    assert raw.recv()["method"] == "snapshot"
    answers = raw.recv()
    assert [answer["id"] for answer in answers] == [1, None]
    assert answers[1]["error"]["data"]["reason"] == "INVALID_ARGUMENT"
    assert raw.call("get", {"path": ["c", "d"]}, request_id=3)["result"] == {"value": {"n": 1}}
    raw.close()


@pytest.mark.parametrize("method, params, where", [
    ("signUp", {"email": "lone@surrogate.example", "password": "\ud800 correct horse"}, "/password"),
    ("signIn", {"email": "lone@surrogate.example", "password": "correct horse \udfff"}, "/password"),
    ("resume", {"token": "\ud800"}, "/token"),
    ("signOut", {"token": "token\udc00"}, "/token"),
    ("set", {"path": ["c", "d"], "value": {"a": ["ok", "\ud800"]}}, "/value/a/1"),
    ("set", {"path": ["c", "d"], "value": {"a/b": {"k\ud800": 1}}}, "/value/a~1b"),
    ("query", {"query": {"path": ["c"], "where": [["a", "==", "\ud800"]]}}, "/query/where/0/2"),
], ids=["signUp", "signIn", "resume", "signOut", "value", "key", "where"])
def test_a_lone_surrogate_in_params_is_invalid_argument_naming_where(served, method, params, where):
    raw = Raw(served)
    raw.send(escaped({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}))
    answer = raw.recv()
    assert answer["id"] == 7 and answer["error"]["data"] == {"reason": "INVALID_ARGUMENT", "path": where}
    assert everything(served) == {}
    assert raw.call("get", {"path": ["c", "d"]}, request_id=8)["result"] == {"value": None}
    raw.close()


def test_reaching_the_record_limit_while_the_sender_is_busy_closes_4000(served, monkeypatch):
    """The server's sender task seals an answer past the record limit: it closes the connection
    (rekey), so the client reconnects instead of waiting for an answer that never comes."""
    from server import channel

    monkeypatch.setattr(channel, "MAX_RECORDS", 3)  # the records this connection may seal each way
    raw = Raw(served)
    raw.send({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"sub": 1, "path": ["c", "d"]}})
    raw.recv(), raw.recv()  # records 1 and 2: the first snapshot, then the answer
    raw.send([{"jsonrpc": "2.0", "id": 2, "method": "set", "params": {"path": ["c", "d"], "value": {"n": 1}}}])
    assert raw.recv()["method"] == "snapshot"  # record 3; the answer behind it is one too many
    assert raw.close_code() == 4000


def test_batches_answer_in_order_and_notifications_get_no_answer(served):
    raw = Raw(served, kid="admin")
    raw.send([
        {"jsonrpc": "2.0", "id": 1, "method": "set", "params": {"path": ["c", "a"], "value": {"n": 1}}},
        {"jsonrpc": "2.0", "method": "set", "params": {"path": ["c", "ignored"], "value": {"n": 2}}},
        {"jsonrpc": "2.0", "id": 2, "method": "get", "params": {"path": ["c"]}},
        {"jsonrpc": "2.0", "id": 3, "method": "nope", "params": {}},
    ])
    answers = raw.recv()
    assert [a["id"] for a in answers] == [1, 2, 3]
    assert answers[1]["result"] == {"value": {"a": {"n": 1}}}
    assert answers[2]["error"]["code"] == -32601
    raw.send({"jsonrpc": "2.0", "method": "set", "params": {"path": ["c", "b"], "value": {}}})
    raw.send({"jsonrpc": "2.0", "id": 4, "method": "get", "params": {"path": ["c", "b"]}})
    assert raw.recv() == {"jsonrpc": "2.0", "id": 4, "result": {"value": None}}
    raw.close()


def test_requests_of_one_connection_are_handled_in_order(served):
    raw = Raw(served)
    for i in range(50):
        raw.send({"jsonrpc": "2.0", "id": i, "method": "set", "params": {"path": ["c", "x"], "value": {"i": i}}})
    assert [raw.recv()["id"] for _ in range(50)] == list(range(50))
    assert raw.call("get", {"path": ["c", "x"]})["result"] == {"value": {"i": 49}}
    raw.close()


def test_an_oversized_message_closes_with_1009_and_writes_nothing(loop_thread, tmp_path):
    served = Served(loop_thread, tmp_path, limits=Limits(maxMessageBytes=4096))
    try:
        raw = Raw(served)
        raw.send({"jsonrpc": "2.0", "id": 1, "method": "set",
                  "params": {"path": ["c", "big"], "value": {"blob": "x" * 100_000}}})
        assert raw.close_code() == 1009
        assert everything(served) == {}
        other = served.client()
        assert doc(other, "c").add({"small": True})
        other.close()
    finally:
        served.stop()


def test_a_flood_of_unauthenticated_connections_is_capped(loop_thread, tmp_path):
    served = Served(loop_thread, tmp_path, limits=Limits(maxUnauthenticated=5, handshakeTimeout=5))
    idle = []
    try:
        for _ in range(5):
            idle.append(Raw(served, handshake=False))
        with pytest.raises(InvalidStatus) as caught:
            Raw(served, handshake=False)
        assert caught.value.response.status_code == 503
        for raw in idle:
            raw.close()
        deadline = time.monotonic() + 5
        while served.server._unauthenticated and time.monotonic() < deadline:
            time.sleep(0.02)
        client = served.client()
        assert doc(client, "c").add({"after": "flood"})
        client.close()
    finally:
        for raw in idle:
            raw.close()
        served.stop()


def test_connections_per_address_are_capped(loop_thread, tmp_path):
    served = Served(loop_thread, tmp_path, limits=Limits(maxConnectionsPerAddress=3))
    clients = [Raw(served) for _ in range(3)]
    try:
        with pytest.raises(InvalidStatus) as caught:
            Raw(served)
        assert caught.value.response.status_code == 429
    finally:
        for raw in clients:
            raw.close()
        served.stop()


def test_the_server_sends_no_server_header_and_no_compression(served):
    ws = connect(served.url, proxy=None, legacy=True)
    assert "Server" not in ws.response.headers
    assert "Sec-WebSocket-Extensions" not in ws.response.headers
    ws.close()


def test_origins_allowlist_refuses_other_sites(loop_thread, tmp_path):
    served = Served(loop_thread, tmp_path, origins=["https://game.example", None])
    try:
        with pytest.raises(InvalidStatus) as caught:
            connect(served.url, proxy=None, legacy=True, origin="https://evil.example")
        assert caught.value.response.status_code == 403
        connect(served.url, proxy=None, legacy=True, origin="https://game.example").close()
        connect(served.url, proxy=None, legacy=True).close()  # Python and Node clients send no Origin
    finally:
        served.stop()


# Access with the client key


def test_client_key_reads_and_writes_documents_but_not_the_root_or_whole_collections(served):
    client = served.client()
    ref = doc(client, "scores")
    uid = ref.add({"score": 1})
    assert ref.append(uid).get() == {"score": 1} and ref.count() == 1
    with pytest.raises(PermissionDeniedError):
        ref.delete()
    with pytest.raises(PermissionDeniedError):
        doc(client).get()
    batch = client.batch()
    batch.set(ref.append("x"), {"score": 2})
    batch.delete(ref)
    with pytest.raises(PermissionDeniedError):
        batch.commit()
    assert ref.count() == 1
    assert ref.delete(key=uid) == {"score": 1}
    client.close()


def test_admin_key_has_full_access(served):
    admin = served.client(admin=True)
    doc(admin, "c").add({"n": 1})
    assert doc(admin, "c").delete() and doc(admin).get() == {}
    admin.close()


# The remote client's connection handling


def test_in_flight_calls_fail_with_connection_lost_and_the_next_call_reconnects(loop_thread, tmp_path):
    served = Served(loop_thread, tmp_path)
    client = served.client()
    doc(client, "c", "a").set({"n": 1})
    port = int(served.url.rsplit(":", 1)[1])
    served.loop_thread.run(served.server.stop())
    with pytest.raises(ConnectionLostError):
        doc(client, "c", "a").get()
    # A new server on the same port: the client connects again by itself.
    service = served.server.service  # a new server with the same keys
    served.database = open_database(served.config, server_bucket())
    served.server = MontybaseServer(served.database, keys=service.keys, server_key=service.server_key)
    served.loop_thread.run(served.server.start("127.0.0.1", port))
    try:
        doc(client, "c", "a").set({"n": 2})
        assert doc(client, "c", "a").get() == {"n": 2}
    finally:
        client.close()
        served.stop()


def test_many_threads_share_one_remote_client(served):
    client = served.client()
    ref = doc(client, "c")
    errors = []

    def writer(start):
        try:
            for i in range(start, start + 50):
                ref.set({"i": i}, key=f"k{i:04d}")
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n * 50,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and ref.count() == 200
    client.close()


def test_threads_and_a_listener_share_one_remote_client(served):
    """Callers read their own answers while a listening thread reads for the listener: every
    caller gets its own answer and the listener sees the last write."""
    client = served.client()
    seen: list[dict] = []
    unsubscribe = doc(client, "c").order_by("i", "desc").limit(1).on_snapshot(seen.append)
    errors = []

    def worker(n):
        try:
            for i in range(n * 40, n * 40 + 40):
                ref = doc(client, "c", f"k{i:04d}")
                ref.set({"i": i})
                assert ref.get() == {"i": i}
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    for _ in range(200):  # bounded: about 10 s
        if seen and seen[-1].docs and seen[-1].docs[0]["value"] == {"i": 159}:
            break
        time.sleep(0.05)
    assert seen[-1].docs[0]["value"] == {"i": 159}
    unsubscribe()
    client.close()


def test_closing_a_handle_fails_a_call_waiting_on_it(served):
    client = served.client()
    doc(client, "c", "a").set({"n": 1})
    outcome: list[BaseException | dict] = []

    def call():
        try:
            outcome.append(doc(client, "c", "a").get())
        except BaseException as exc:  # collected and asserted below
            outcome.append(exc)

    async def hold_the_server():  # the server answers nothing for a while
        time.sleep(1.0)

    held = asyncio.run_coroutine_threadsafe(hold_the_server(), served.loop_thread.loop)
    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.2)
    client.close()
    caller.join(20)
    held.result(5)
    assert not caller.is_alive() and len(outcome) == 1
    assert isinstance(outcome[0], ConnectionLostError), outcome


def test_an_idle_handle_answers_the_servers_keepalive_pings(loop_thread, tmp_path, monkeypatch):
    """A program that makes no call for longer than the server's ping interval and timeout keeps
    its connection: the handle answers pings while it idles."""
    from python_client import remote, wire

    monkeypatch.setattr(remote, "_KEEPALIVE", 0.05)
    monkeypatch.setattr(wire, "_IDLE", 0.0)  # read what waits as soon as it waits (1 s against the usual 20 s pings)
    served = Served(loop_thread, tmp_path, ping_interval=0.5)  # a ping every 0.5 s, answered within 0.5 s
    client = served.client()
    try:
        doc(client, "c", "a").set({"n": 1})
        first = client._backend._ws
        time.sleep(2.5)  # 5 ping intervals without a call
        assert first.open and first.close_code is None
        assert doc(client, "c", "a").get() == {"n": 1}
        assert client._backend._ws is first
    finally:
        client.close()
        served.stop()


def test_a_connection_the_server_closed_while_idle_is_replaced_by_the_next_call(served, monkeypatch):
    """The server ends idle connections (its keepalive, a restart of the listener): the next
    call sees the close before sending and connects again, so it does not fail."""
    from python_client import wire

    monkeypatch.setattr(wire, "_IDLE", 0.0)
    client = served.client()
    try:
        doc(client, "c", "a").set({"n": 1})
        first = client._backend._ws

        async def close_all() -> None:
            for connection in list(served.server.server.connections):
                await connection.close(1001, "going away")

        # The server waits for each client's answer to its close; the client answers when it looks.
        closing = asyncio.run_coroutine_threadsafe(close_all(), served.loop_thread.loop)
        deadline = time.monotonic() + 10
        while first.close_code is None and time.monotonic() < deadline:
            time.sleep(0.02)
            first.open  # noqa: B018 (looking reads what arrived)
        assert first.close_code == 1001
        assert doc(client, "c", "a").get() == {"n": 1}  # no ConnectionLostError: a new connection
        assert client._backend._ws is not first
        closing.result(10)
    finally:
        client.close()


# Every resource capped, per stranger (the client key is public: anyone can connect)


class _Upgrades:
    """Upgrades to a server that never start the handshake: whether each was admitted."""

    def __init__(self, url):
        self.url, self.held = url, []

    def admitted(self, headers=None, source="127.0.0.1"):
        try:
            self.held.append(connect_from(self.url, source, additional_headers=headers or {}))
            return True
        except InvalidStatus as exc:
            assert exc.response.status_code in (429, 503)  # too many from the address, or in all
            return False

    def close(self):
        for ws in self.held:
            ws.close()


def test_with_every_handshake_slot_taken_a_newcomer_takes_the_oldest_of_the_address_holding_most(loop_thread, tmp_path):
    served = Served(loop_thread, tmp_path, limits=Limits(handshakeTimeout=60, maxUnauthenticated=4))
    upgrades = _Upgrades(served.url)
    try:
        assert [upgrades.admitted(source="127.0.0.2") for _ in range(3)] == [True] * 3
        assert upgrades.admitted(source="127.0.0.3")  # the last free slot
        assert upgrades.admitted(source="127.0.0.4")  # takes 127.0.0.2's oldest
        with pytest.raises(ConnectionClosed) as closed:
            upgrades.held[0].recv(timeout=5)
        assert closed.value.rcvd.code == 1013
        assert upgrades.admitted(source="127.0.0.4")  # takes 127.0.0.2's next: 1, 1, 2 now
        assert not upgrades.admitted(source="127.0.0.4")  # it holds the most itself: 503
        with served.client() as client:  # its handshake took the slot of one of 127.0.0.2's or .4's
            assert doc(client, "c").add({"while": "every slot was taken"})
    finally:
        upgrades.close()
        served.stop()


def _upgrade_status(sock):
    """The status of the server's answer to an upgrade request ("" if it closed without one)."""
    answer = b""
    while b"\r\n" not in answer and len(answer) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer.split(b" ", 2)[1].decode() if answer.count(b" ") >= 2 else ""


def test_a_client_connects_while_2000_idle_upgrades_from_10_addresses_are_held(loop_thread, tmp_path):
    """The issue's scale: 10 addresses make 2,000 upgrades that never start the handshake, hold
    what is admitted and open new ones as theirs are refused or time out; a client from another
    address, connecting between their rounds, gets in every time. At most 10 × 16 attackers'
    sockets are held at once (and as many on the server's side here), far below any open-files
    limit (ulimit -n: 1024 on most systems)."""
    served = Served(loop_thread, tmp_path, limits=Limits(handshakeTimeout=1.5))  # timed-out upgrades are reopened
    port = int(served.url.rsplit(":", 1)[1])
    sources = [f"127.0.0.{n}" for n in range(2, 12)]
    held = {source: [] for source in sources}
    statuses, most_held, timed_out, written = Counter(), 0, 0, []
    try:
        for round_number in range(10):  # 10 rounds of 20 upgrades from each address: 2,000
            for source in sources:
                for sock in [sock for sock in held[source] if select.select([sock], [], [], 0)[0]]:
                    held[source].remove(sock)  # the server ended it (deadline, or slot taken): open another
                    sock.close()
                    timed_out += 1
                for _ in range(20):
                    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
                    sock.sendall(_raw_upgrade(port))
                    status = _upgrade_status(sock)
                    statuses[status] += 1
                    if status == "101":
                        held[source].append(sock)
                    else:
                        sock.close()
                most_held = max(most_held, len(held[source]))
            with served.client() as client:  # from 127.0.0.1, while they hold theirs
                written.append(doc(client, "c").add({"round": round_number}))
        assert len(written) == 10
        assert sum(statuses.values()) == 2000 and set(statuses) <= {"101", "429", "503"}, statuses
        assert most_held == Limits().maxUnauthenticatedPerAddress and timed_out > 0
    finally:
        for sock in (sock for socks in held.values() for sock in socks):
            sock.close()
        served.stop()


def _raw_upgrade(port):
    request = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {base64.b64encode(secrets.token_bytes(16)).decode()}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n")
    return request.encode()


def test_upgrades_that_arrive_together_are_each_counted(loop_thread, tmp_path):
    served = Served(loop_thread, tmp_path, limits=Limits(handshakeTimeout=60))
    port = int(served.url.rsplit(":", 1)[1])
    sockets = []
    try:
        for _ in range(40):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0)))
        for sock in sockets:  # all requests written before any answer is read
            sock.sendall(_raw_upgrade(port))
        statuses = Counter()
        for sock in sockets:
            statuses[_upgrade_status(sock)] += 1
        assert statuses == {"101": Limits().maxUnauthenticatedPerAddress, "429": 40 - Limits().maxUnauthenticatedPerAddress}
    finally:
        for sock in sockets:
            sock.close()
        served.stop()


def test_a_connection_holds_at_most_max_listeners_with_a_client_key(served):
    stranger = Stranger(served)
    limit = Limits().maxListeners
    try:
        for first in range(1, limit + 1, 50):  # in batches of 50, each batch answered by one frame
            batch = [{"jsonrpc": "2.0", "id": sub, "method": "subscribe", "params": {"sub": sub, "path": ["c", "d"]}}
                     for sub in range(first, first + 50)]
            stranger.ws.send(stranger.records.seal(json.dumps(batch).encode()))
            answers = None
            while answers is None:
                message = stranger.receive()
                if isinstance(message, list) and "id" in message[0]:
                    answers = message
            assert all(answer.get("result") for answer in answers), answers
        refused = stranger.call("subscribe", {"sub": limit + 1, "path": ["c", "d"]})
        assert refused["error"]["data"] == {"reason": "LIMIT_EXCEEDED", "path": "/sub", "limit": limit, "actual": limit + 1}
        assert stranger.call("unsubscribe", {"sub": 1})["result"] == {"found": True}
        assert stranger.call("subscribe", {"sub": limit + 1, "path": ["c", "d"]})["result"] == {"sub": limit + 1}
    finally:
        stranger.close()


def test_the_admin_key_has_no_listener_limit(loop_thread, tmp_path):
    served = Served(loop_thread, tmp_path, limits=Limits(maxListeners=2))
    admin = Stranger(served, kid="admin")
    try:
        for sub in range(1, 6):
            assert admin.call("subscribe", {"sub": sub, "path": ["c", "d"]})["result"] == {"sub": sub}
    finally:
        admin.close()
        served.stop()


def _big_documents(writer, count=50, size=40_000):
    for first in range(0, count, 5):  # 200 KB a request, under maxMessageBytes
        batch = writer.batch()
        for n in range(first, first + 5):
            batch.set(doc(writer, "c", f"d{n:02d}"), {"n": 0, "pad": "x" * size})
        batch.commit()


def _touch_every_document(writer, step, count=50):
    """One commit that changes a small field of every document: one notification of every
    document (about 2 MB) to each listener of the collection."""
    batch = writer.batch()
    for n in range(count):
        batch.update(doc(writer, "c", f"d{n:02d}"), {"n": step})
    batch.commit()


def _a_stalled_subscriber_is_closed_and_a_reading_one_sees_every_change(served: Served, steps: int) -> None:
    writer = served.client(admin=True)
    listener = served.client()
    # Reads nothing once subscribed; a small receive buffer, so the server's queue (not the
    # kernel's buffers) is what fills up.
    stalled = Stranger(served, max_queue=1, max_size=None, receive_buffer=64 * 1024)
    seen = []
    try:
        _big_documents(writer)
        assert stalled.call("subscribe", {"sub": 1, "query": {"path": ["c"]}})["result"] == {"sub": 1}
        stop = doc(listener, "c").on_snapshot(lambda snapshot: seen.append(snapshot))
        for step in range(1, steps + 1):  # 2 MB of notifications a step
            _touch_every_document(writer, step)
        assert stalled.close_code(timeout=10) == 4008
        deadline = time.monotonic() + 10
        while not (seen and seen[-1].docs[0]["value"]["n"] == steps) and time.monotonic() < deadline:
            time.sleep(0.05)
        # A client that reads gets every change (reconnecting if it too fell behind a moment).
        assert seen[-1].docs[0]["value"]["n"] == steps
        stop()
    finally:
        stalled.close()
        listener.close()
        writer.close()
        served.stop()


def test_a_subscriber_that_stops_reading_is_closed_past_max_outgoing_bytes(loop_thread, tmp_path):
    # 40 MB of notifications: more than the kernel's socket buffers hold, and than 1 MB a connection
    served = Served(loop_thread, tmp_path, limits=Limits(maxOutgoingBytes=1024 * 1024))
    _a_stalled_subscriber_is_closed_and_a_reading_one_sees_every_change(served, steps=20)


def test_past_max_outgoing_bytes_total_the_connection_furthest_behind_is_closed(loop_thread, tmp_path):
    # Each connection may hold 16 MB, all of them together 4 MB: the stalled one is closed.
    served = Served(loop_thread, tmp_path, limits=Limits(maxOutgoingBytesTotal=4 * 1024 * 1024))
    _a_stalled_subscriber_is_closed_and_a_reading_one_sees_every_change(served, steps=10)


def _memory_kb(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_a_subscriber_that_never_reads_costs_the_server_bounded_memory(tmp_path):
    config = server_config(tmp_path / "montybase.json", storageBucket=":memory:")
    with Proc(server_command("--config", str(tmp_path / "montybase.json"), "--port", "0"), cwd=tmp_path) as proc:
        server = SimpleNamespace(url=proc.endpoint(), config=config)
        writer = Montybase(api=server.url, config=tmp_path / "montybase.json")
        stalled = None
        try:
            _big_documents(writer)
            stalled = Stranger(server, max_queue=1, max_size=None, receive_buffer=64 * 1024)
            assert stalled.call("subscribe", {"sub": 1, "query": {"path": ["c"]}})["result"] == {"sub": 1}
            before = _memory_kb(proc.pid, "VmRSS")
            for step in range(1, 101):  # 200 MB of notifications to a client that reads none of them
                _touch_every_document(writer, step)
            grown_mb = (_memory_kb(proc.pid, "VmHWM") - before) / 1024
            assert grown_mb < 100, f"the server's memory grew by {grown_mb:.0f} MB"
        finally:
            if stalled is not None:
                stalled.close()
            writer.close()


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_limits(loop_thread, tmp_path):
    served = Served(loop_thread, tmp_path, limits=Limits(maxConnectionsPerAddress=2, handshakeTimeout=60),
                    trusted_proxies=["127.0.0.1", "10.0.0.0/8"])
    upgrades = _Upgrades(served.url)
    try:
        client = {"X-Forwarded-For": "203.0.113.5"}
        assert [upgrades.admitted(client) for _ in range(3)] == [True, True, False]
        assert upgrades.admitted({"X-Forwarded-For": "203.0.113.6"})  # another client of the same proxy
        # What a client wrote left of what the proxies added is never believed.
        assert not upgrades.admitted({"X-Forwarded-For": "198.51.100.1, 203.0.113.5"})
        # Trusted proxies on the way are skipped: the client is the right-most other address.
        assert not upgrades.admitted({"X-Forwarded-For": "203.0.113.5, 10.1.2.3"})
        assert not upgrades.admitted({"X-Forwarded-For": "203.0.113.5", "Forwarded": "for=203.0.113.77"})
        forwarded = {"Forwarded": 'for="[2001:db8::1]:4711";proto=https'}  # RFC 7239, when X-Forwarded-For is absent
        assert [upgrades.admitted(forwarded) for _ in range(3)] == [True, True, False]
        # A hop that is no address (the proxy added none): the proxy's own address counts.
        assert [upgrades.admitted({"X-Forwarded-For": "unknown"}) for _ in range(3)] == [True, True, False]
        # From an address that is no trusted proxy, the headers are ignored.
        spoofed = [upgrades.admitted({"X-Forwarded-For": f"203.0.113.{n}"}, "127.0.0.2") for n in (7, 8, 9)]
        assert spoofed == [True, True, False]
    finally:
        upgrades.close()
        served.stop()


def test_the_server_command_takes_trusted_proxies_from_the_config(tmp_path):
    server_config(tmp_path / "montybase.json", storageBucket=":memory:", trustedProxies=["127.0.0.1"],
                  limits={"maxConnectionsPerAddress": 1, "handshakeTimeout": 60})
    with Proc(server_command("--config", str(tmp_path / "montybase.json"), "--port", "0"), cwd=tmp_path) as proc:
        upgrades = _Upgrades(proc.endpoint())
        try:
            assert upgrades.admitted({"X-Forwarded-For": "203.0.113.5"})
            assert not upgrades.admitted({"X-Forwarded-For": "203.0.113.5"})
            assert upgrades.admitted({"X-Forwarded-For": "203.0.113.6"})
        finally:
            upgrades.close()


# File descriptors: every connection holds one


def test_the_server_raises_its_open_files_limit_to_the_hard_limit(tmp_path):
    server_config(tmp_path / "montybase.json")
    command = ["prlimit", "--nofile=64:256", *server_command("--port", "0")]  # as a low `ulimit -n` leaves it
    with Proc(command, cwd=tmp_path) as proc:
        proc.endpoint()
        limits = (Path("/proc") / str(proc.pid) / "limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == ["256", "256"], line


def test_out_of_file_descriptors_the_server_logs_a_line_not_tracebacks_and_recovers(tmp_path):
    server_config(tmp_path / "montybase.json", storageBucket=":memory:", limits={
        "maxConnectionsPerAddress": 1000, "maxUnauthenticatedPerAddress": 1000, "maxUnauthenticated": 1000,
        "handshakeTimeout": 30})
    command = ["prlimit", "--nofile=48:48", *server_command("--config", str(tmp_path / "montybase.json"), "--port", "0")]
    with Proc(command, cwd=tmp_path) as proc:
        host, port = proc.endpoint().removeprefix("ws://").rsplit(":", 1)
        held = []
        try:
            for _ in range(80):  # more than the server has descriptors: the last ones wait in the backlog
                held.append(socket.create_connection((host, int(port)), timeout=5))
            time.sleep(3.5)  # asyncio retries the accept every second
        finally:
            for sock in held:
                sock.close()
        time.sleep(1.5)
        client = Montybase(api=f"ws://{host}:{port}", config=tmp_path / "montybase.json")
        try:
            doc(client, "c", "after").set({"n": 1})  # accepting again
            assert doc(client, "c", "after").get() == {"n": 1}
        finally:
            client.close()
        proc.stop()
        log = proc.stderr
        assert "not accepting connections for a second" in log, proc.describe()
        assert log.count("not accepting connections") <= 11 and "Traceback" not in log, proc.describe()


def _client_config_with(served, **changes) -> Path:
    path = served.folder / "changed-client-config.json"
    path.write_text(json.dumps({**json.loads(served.client_config_path.read_text()), **changes}))
    return path


def _client_log_lines(caplog, needle: str, timeout: float = 10.0) -> list[str]:
    """The montybase.clients lines holding `needle`, waiting for the server's loop to write one."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [r.getMessage() for r in caplog.records if r.name == "montybase.clients"]
        if any(needle in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_a_wrong_api_key_is_refused_with_what_to_check_and_the_server_logs_it(served, caplog):
    caplog.set_level(logging.INFO, logger="montybase.clients")
    wrong = fresh_keys()["apiKey"]
    handle = Montybase(api=served.url, config=_client_config_with(served, apiKey=wrong))
    with pytest.raises(UnauthenticatedError) as raised:
        doc(handle, "scores", "ada").get()
    handle.close()
    assert str(raised.value) == "the server refused this key: check apiKey in client-config.json"
    lines = _client_log_lines(caplog, "key hint matches no client key")
    assert any("refused" in line and "key hint matches no client key" in line for line in lines), lines
    assert not any(wrong in line or served.config["apiKey"] in line for line in lines)


def test_a_wrong_pinned_server_key_says_so_and_the_server_logs_it(served, caplog):
    caplog.set_level(logging.INFO, logger="montybase.clients")
    other = public_key(fresh_keys()["serverKey"])
    handle = Montybase(api=served.url, config=_client_config_with(served, serverKey=other))
    with pytest.raises(UnauthenticatedError) as raised:
        doc(handle, "scores", "ada").get()
    handle.close()
    assert str(raised.value).startswith("the server's key does not match serverKey: check serverKey in client-config.json")
    lines = _client_log_lines(caplog, "does not match the serverKey")
    assert any("refused by the client" in line and "does not match the serverKey" in line for line in lines), lines
    assert not any(other in line or served.config["serverKey"] in line for line in lines)


def test_a_plain_http_answer_says_the_connection_closes(served):
    import http.client

    host, port = served.url.removeprefix("ws://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", "/montybase.js")
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Connection") == "close"
        response.read()
    finally:
        connection.close()


class LoopThread:
    """An event loop on the Foreground selector, run by a thread of its own."""

    def __init__(self):
        self.foreground = Foreground()
        self.loop = asyncio.SelectorEventLoop(self.foreground)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def busy(self, seconds: float) -> None:
        """Keep the loop in one callback for `seconds`, from now."""
        started = threading.Event()

        def callback():
            started.set()
            time.sleep(seconds)

        self.loop.call_soon_threadsafe(callback)
        assert started.wait(5)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def foreground_loop():
    loop = LoopThread()
    yield loop
    loop.close()


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def test_long_work_pauses_while_the_loop_runs_a_callback_until_the_loop_waits_again(foreground_loop, monkeypatch):
    monkeypatch.setattr(transport, "PAUSE_AT_MOST", 5.0)
    foreground_loop.busy(0.3)
    waited = timed(foreground_loop.foreground.pause)
    assert 0.1 < waited < 4  # the rest of the callback, not the bound


def test_long_work_pauses_at_most_pause_at_most_then_works_as_long_before_pausing_again(foreground_loop, monkeypatch):
    monkeypatch.setattr(transport, "PAUSE_AT_MOST", 0.1)
    foreground_loop.busy(3)
    assert 0.09 < timed(foreground_loop.foreground.pause) < 2
    assert timed(foreground_loop.foreground.pause) < 0.05  # the loop is still busy: this thread's turn


def test_long_work_does_not_pause_while_the_loop_waits_for_io(foreground_loop, monkeypatch):
    monkeypatch.setattr(transport, "PAUSE_AT_MOST", 5.0)
    time.sleep(0.05)  # the loop is in its wait
    assert timed(foreground_loop.foreground.pause) < 1


def test_work_on_the_loops_own_thread_never_pauses(foreground_loop, monkeypatch):
    monkeypatch.setattr(transport, "PAUSE_AT_MOST", 5.0)
    waited = asyncio.run_coroutine_threadsafe(_timed_pause(foreground_loop.foreground), foreground_loop.loop).result(10)
    assert waited < 1


async def _timed_pause(foreground: Foreground) -> float:
    return timed(foreground.pause)


def test_long_work_goes_on_after_the_loop_has_closed(monkeypatch):
    monkeypatch.setattr(transport, "PAUSE_AT_MOST", 5.0)
    loop = LoopThread()
    loop.close()
    assert timed(loop.foreground.pause) < 1
