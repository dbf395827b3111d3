"""/healthz, /metrics and the lines requests cause, on a real server over real sockets."""

from __future__ import annotations

import errno
import json
import logging
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from conftest import ON_POSTGRES, Served, hand_handshake, server_bucket
from python_client import MontybaseError, PermissionDeniedError, RateLimitedError, UnavailableError, doc
from server.channel import ClientHandshake
from server.config import open_database, public_key
from server.database import Database
from server.rules import Rules
from server.storage import FileStorage, LocalFiles
from server.transport import Limits

TOKEN = "scrape-token-0123456789abcdef"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(served: Served, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(served.url.replace("ws://", "http://") + path)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _opener.open(request, timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), refused.read()


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, parsed by prometheus_client: (name, labels) → value."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode()) for sample in family.samples}


@pytest.fixture
def open_rules_served(loop_thread, tmp_path):
    database = open_database({"hot": False, "storageMinCount": 1, "storageUpdate": 300,
                              "rules": {"scores": {"read": "public", "write": "public", "rate": {"create": "3/min"}},
                                        "private": {"read": "none"}}}, server_bucket())
    served = Served(loop_thread, tmp_path, database)
    yield served
    served.stop()


# /healthz


def test_healthz_is_200_with_counts_and_no_data_or_keys(open_rules_served):
    served = open_rules_served
    with served.client() as db:
        doc(db, "scores").add({"name": "secret-name-in-a-document"})
        status, headers, body = fetch(served, "/healthz")
    assert status == 200 and headers["Content-Type"] == "application/json"
    health = json.loads(body)
    assert health["status"] == "ok" and health["documents"] == 1
    assert health["storage"] == ("ok" if ON_POSTGRES else "memory")  # a node's storage is PostgreSQL's, durable
    assert health["connections"] == {"authenticated": 1, "pending": 0}
    assert health["uptimeSeconds"] >= 0 and health["lastSnapshotAgeSeconds"] is None
    text = body.decode()
    assert "secret-name" not in text and served.config["apiKey"] not in text and "scores" not in text


class FullDisk(LocalFiles):
    """The real file operations, until the disk fills: then every write fails as a full disk's does."""

    full = False

    def write(self, fd: int, data: bytes) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write(fd, data)


@pytest.mark.not_on_postgres("a full disk under the file storage (a node whose PostgreSQL is away: test_postgres.py)")
def test_healthz_is_503_once_the_storage_failed(loop_thread, tmp_path):
    files = FullDisk()
    database = Database(FileStorage(tmp_path / "data" / "db.json", files=files), rules=Rules({"**": {"write": "public"}}))
    served = Served(loop_thread, tmp_path, database)
    try:
        with served.client() as db:
            doc(db, "scores").add({"n": 1})
            assert fetch(served, "/healthz")[0] == 200
            files.full = True
            with pytest.raises(UnavailableError):
                doc(db, "scores").add({"n": 2})
        status, _, body = fetch(served, "/healthz")
        assert status == 503 and json.loads(body)["status"] == "unavailable" and json.loads(body)["storage"] == "failed"
        assert "No space" not in body.decode(), "the reason is for the log, not for anyone who asks"
    finally:
        try:
            served.stop()
        except UnavailableError:
            pass  # its last snapshot is refused too: the storage stays failed until a restart


# /metrics


def test_metrics_are_off_unless_configured(open_rules_served):
    assert fetch(open_rules_served, "/metrics")[0] == 404
    assert fetch(open_rules_served, "/metrics", TOKEN)[0] == 404


def test_metrics_need_the_bearer_token(open_rules_served):
    served = open_rules_served
    served.server.monitor.configure({"token": TOKEN}, None)
    status, headers, _ = fetch(served, "/metrics")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert fetch(served, "/metrics", "not-" + TOKEN)[0] == 401
    status, headers, body = fetch(served, "/metrics", TOKEN)
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=")
    assert samples(body)[("montybase_documents", ())] == 0


def test_metrics_from_an_allowed_address_need_no_token(open_rules_served):
    served = open_rules_served
    served.server.monitor.configure({"allow": ["127.0.0.0/8"]}, None)
    assert fetch(served, "/metrics")[0] == 200
    served.server.monitor.configure({"allow": ["10.0.0.0/8"]}, None)
    assert fetch(served, "/metrics")[0] == 403
    served.server.monitor.configure({"allow": ["10.0.0.0/8"], "token": TOKEN}, None)
    assert fetch(served, "/metrics", TOKEN)[0] == 200


def test_metrics_counters_move_after_requests(open_rules_served):
    served = open_rules_served
    served.server.monitor.configure({"token": TOKEN}, None)
    before = samples(fetch(served, "/metrics", TOKEN)[2])
    notified = []
    with served.client() as db:
        stop = doc(db, "scores").on_snapshot(notified.append)
        for n in range(3):
            doc(db, "scores").add({"n": n})
        with pytest.raises(PermissionDeniedError):
            doc(db, "private", "x").get()
        during = samples(fetch(served, "/metrics", TOKEN)[2])
        stop()
    assert during[("montybase_requests_total", (("code", "OK"), ("method", "add")))] == 3
    assert during[("montybase_requests_total", (("code", "PERMISSION_DENIED"), ("method", "get")))] == 1
    assert during[("montybase_request_duration_seconds_count", (("method", "add"),))] == 3
    assert during[("montybase_request_duration_seconds_bucket", (("le", "+Inf"), ("method", "add")))] == 3
    assert during[("montybase_connections", (("state", "authenticated"),))] == 1
    assert during[("montybase_listeners", ())] == 1
    assert during[("montybase_documents", ())] == 3
    assert during[("montybase_journal_appends_total", ())] == 0, "no journal in memory, nor on PostgreSQL"
    assert during[("montybase_notification_frames_total", ())] >= 1
    assert during[("montybase_sent_bytes_total", ())] > before[("montybase_sent_bytes_total", ())]
    assert during[("process_resident_memory_bytes", ())] > 0


def test_a_method_outside_the_table_is_counted_as_other(open_rules_served):
    served = open_rules_served
    served.server.monitor.configure({"token": TOKEN}, None)
    with served.client(admin=True) as db:
        for n in range(3):
            with pytest.raises(MontybaseError, match="unknown method"):
                db._backend.call(f"made-up-method-{n}", {})
    methods = {dict(labels).get("method") for (name, labels) in samples(fetch(served, "/metrics", TOKEN)[2])
               if name == "montybase_requests_total"}
    assert methods == {"other"}


def test_a_method_that_is_no_string_is_answered_and_counted_as_other(open_rules_served):
    served = open_rules_served
    served.server.monitor.configure({"token": TOKEN}, None)
    with connect(served.url, compression=None, proxy=None, open_timeout=5) as ws:
        records, _ = hand_handshake(ws, "client", served.config["apiKey"], public_key(served.config["serverKey"]))
        for request_id, method in enumerate((["get"], {"get": 1}, None)):
            ws.send(records.seal(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method}).encode()))
            answer = json.loads(records.open(ws.recv(timeout=5)))
            assert answer["id"] == request_id and answer["error"]["data"]["reason"] == "INVALID_REQUEST"
    methods = {dict(labels).get("method") for (name, labels) in samples(fetch(served, "/metrics", TOKEN)[2])
               if name == "montybase_requests_total"}
    assert methods == {"other"}


@pytest.mark.not_on_postgres("the file storage's journal and snapshots")
def test_journal_appends_and_snapshot_age_on_file_storage(loop_thread, tmp_path):
    served = Served(loop_thread, tmp_path, open_database({"hot": False, "storageMinCount": 1, "storageUpdate": 0,
                                                          "rules": None}, str(tmp_path / "data" / "db.json")))
    try:
        served.server.monitor.configure({"token": TOKEN}, None)
        with served.client(admin=True) as db:
            doc(db, "scores").add({"n": 1})
            doc(db, "scores").add({"n": 2})
        served.database.snapshot()
        scraped = samples(fetch(served, "/metrics", TOKEN)[2])
        assert scraped[("montybase_journal_appends_total", ())] == 2
        assert 0 <= scraped[("montybase_snapshot_age_seconds", ())] < 60
        assert scraped[("montybase_snapshot_duration_seconds", ())] >= 0
        assert json.loads(fetch(served, "/healthz")[2])["lastSnapshotAgeSeconds"] < 60
    finally:
        served.stop()


# The lines requests cause


def lines(caplog: Any, text: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if text in record.getMessage()]


def test_denied_rate_limited_and_slow_requests_are_logged_and_bounded(open_rules_served, caplog):
    served = open_rules_served
    served.server.monitor.configure(None, 0.0)  # every request is "slow"
    caplog.set_level(logging.INFO, logger="montybase")
    with served.client() as db:
        for _ in range(15):
            with pytest.raises(PermissionDeniedError):
                doc(db, "private", "x" * 120).get()
        for n in range(4):
            try:
                doc(db, "scores").add({"n": n})
            except RateLimitedError:
                pass
    denied = lines(caplog, "may not get private/")
    assert len(denied) == 10 and len(lines(caplog, "permission denied from 127.0.0.1: more than 10")) == 1
    assert all(len(line) < 260 for line in denied), "client text is cut short"
    assert len(lines(caplog, "rate limited: at most 3 create")) == 1
    slow = lines(caplog, "slow request: ")
    assert slow[0].startswith("slow request: get private/xxxx") and len(slow) <= 11


def test_a_failed_handshake_is_one_line_without_key_material(open_rules_served, caplog):
    served = open_rules_served
    caplog.set_level(logging.INFO, logger="montybase")
    wrong = "mb-a-wrong-key-that-must-not-be-logged"
    with connect(served.url, compression=None, proxy=None, open_timeout=5) as ws:
        hello = ClientHandshake("client", wrong).hello()
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "hello", "params": hello}))
        assert json.loads(ws.recv(timeout=5))["error"]["data"]["reason"] == "UNAUTHENTICATED"
    with connect(served.url, compression=None, proxy=None, open_timeout=5) as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "hello",
                            "params": {**hello, "kid": "k" * 5000}}))
        ws.recv(timeout=5)
    refused = lines(caplog, " refused: ")
    assert len(refused) == 2 and "hello: the key hint matches no client key" in refused[0]
    everything = "\n".join(record.getMessage() for record in caplog.records)
    assert wrong not in everything and hello["kh"] not in everything and served.config["apiKey"] not in everything
    assert "k" * 70 not in everything, "the client's kid is cut short"


def test_a_refused_origin_is_logged_once_per_attempt_up_to_the_bound(loop_thread, tmp_path, caplog):
    served = Served(loop_thread, tmp_path, origins=["https://game.example"])
    caplog.set_level(logging.INFO, logger="montybase")
    try:
        for _ in range(12):
            with pytest.raises(InvalidStatus) as refused:
                connect(served.url, origin="https://evil.example", proxy=None, open_timeout=5)
            assert refused.value.response.status_code == 403
        with connect(served.url, origin="https://game.example", proxy=None, open_timeout=5):
            pass
        served.server.origins = ["https://evil.example"]  # what a reload does: the next upgrade sees it
        with connect(served.url, origin="https://evil.example", proxy=None, open_timeout=5):
            pass
    finally:
        served.stop()
    assert len(lines(caplog, "Origin https://evil.example is not allowed")) == 10
    assert len(lines(caplog, "refused origin from 127.0.0.1: more than 10 lines a minute")) == 1


def test_a_notification_is_logged_with_its_method_cut_short(open_rules_served, caplog):
    served = open_rules_served
    caplog.set_level(logging.INFO, logger="montybase")
    from conftest import hand_handshake

    with connect(served.url, compression=None, proxy=None, open_timeout=5) as ws:
        session, _ = hand_handshake(ws, "client", served.config["apiKey"])
        ws.send(session.seal(json.dumps({"jsonrpc": "2.0", "method": "m" * 10_000, "params": {}}).encode()))
        ws.send(session.seal(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "get",
                                         "params": {"path": ["scores"]}}).encode()))
        assert json.loads(session.open(ws.recv(timeout=5)))["id"] == 1
    (line,) = lines(caplog, "ignored a notification")
    assert len(line) < 120 and "m" * 64 in line and "m" * 65 not in line


def test_a_connection_cap_reached_is_logged_up_to_the_bound(loop_thread, tmp_path, caplog):
    served = Served(loop_thread, tmp_path, limits=Limits(maxConnectionsPerAddress=1))
    caplog.set_level(logging.INFO, logger="montybase")
    try:
        with connect(served.url, proxy=None, open_timeout=5):
            for _ in range(12):
                with pytest.raises(InvalidStatus):
                    with connect(served.url, proxy=None, open_timeout=5):
                        pass
    finally:
        served.stop()
    assert len(lines(caplog, "refused 127.0.0.1: too many connections from this address")) == 10
    assert len(lines(caplog, "address limit from 127.0.0.1: more than 10 lines a minute")) == 1
