"""User accounts (DESIGN.md §8, research/security.md §2.2): sign-up, sign-in, sign-out, sessions
resumed after a reconnect, owner-only data, and a password store no client call can read; over
real sockets through the public Python client, and embedded.

scrypt costs tens of milliseconds per sign-up or sign-in: the module's accounts are made once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import NO_SERVER, Served, Stranger, server_bucket
from python_client import Montybase, doc
from python_client.errors import (
    AlreadyExistsError,
    ConnectionLostError,
    InvalidArgumentError,
    MontybaseError,
    RateLimitedError,
    UnauthenticatedError,
)
from server.config import DEFAULTS, Limits, create_config, open_database
from server.rules import parse_rate
from server.session import CLOSE_SIGNED_OUT
from server.transport import MontybaseServer

PASSWORD = "correct horse battery"
WAIT = 10.0
RULES = {
    "notes": {"read": "owner", "create": "user", "update": "owner", "delete": "owner", "owner": "ownerId",
              "serverFields": {"ownerId": "uid"}},
    "profiles": {"read": "owner", "write": "owner"},  # the owner is the document id ("$id")
    "marker": {"read": "public", "write": "public"},
}
RESERVED = ("__accounts__", "__sessions__")


def serve(loop_thread, folder: Path, bucket: str | None = None, limits: Limits | None = None) -> Served:
    database = open_database({**DEFAULTS, "rules": RULES}, bucket or server_bucket())
    return Served(loop_thread, folder, database=database, limits=limits or Limits())


class Snapshots:
    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()

    def __call__(self, snapshot: Any) -> None:
        self.queue.put(snapshot)

    def next(self) -> Any:
        try:
            return self.queue.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no snapshot within {WAIT}s") from None

    def pending(self) -> list[Any]:
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out


class Accounts:
    """The module's server, its admin handle, and two signed-in users, alice and bob."""

    def __init__(self, served: Served):
        self.served = served
        self.admin = served.client(admin=True)
        self.alice, self.bob = served.client(), served.client()
        self.alice_email, self.bob_email = "alice@accounts.example", "bob@accounts.example"
        self.alice_uid = self.alice.sign_up(self.alice_email, PASSWORD)["uid"]
        self.bob_uid = self.bob.sign_up(self.bob_email, PASSWORD + "!")["uid"]
        self.handles = [self.admin, self.alice, self.bob]

    def client(self) -> Montybase:
        handle = self.served.client()
        self.handles.append(handle)
        return handle


@pytest.fixture(scope="module")
def accounts(loop_thread, tmp_path_factory):
    served = serve(loop_thread, tmp_path_factory.mktemp("accounts"))
    state = Accounts(served)
    yield state
    for handle in state.handles:
        handle.close()
    served.stop()


def _error(fn) -> MontybaseError:
    with pytest.raises(MontybaseError) as caught:
        fn()
    return caught.value


# Sign-up and sign-in


def test_sign_up_creates_an_account_and_signs_in(accounts):
    carol = accounts.client()
    assert carol.current_user is None
    user = carol.sign_up("  Carol@Accounts.Example ", PASSWORD)
    assert set(user) == {"uid", "email"} and user["email"] == "carol@accounts.example"
    assert carol.current_user == user and len(user["uid"]) == 20
    assert user["uid"] not in (accounts.alice_uid, accounts.bob_uid)
    doc(carol, "notes").add({"text": "carol's"})  # create: user


def test_sign_in_from_another_handle_is_the_same_user(accounts):
    handle = accounts.client()
    assert reason_of(lambda: doc(handle, "notes").add({"text": "x"})) == "PERMISSION_DENIED"
    user = handle.sign_in(accounts.alice_email.upper(), PASSWORD)
    assert user == {"uid": accounts.alice_uid, "email": accounts.alice_email} == handle.current_user
    note = doc(handle, "notes").add({"text": "from the second handle"})
    assert doc(accounts.alice, "notes", note).get() == {"text": "from the second handle", "ownerId": accounts.alice_uid}


def reason_of(fn) -> str:
    try:
        fn()
    except MontybaseError as exc:
        return exc.reason
    return "allowed"


def test_a_wrong_password_and_an_unknown_email_are_the_same_error(accounts):
    handle = accounts.client()
    wrong = _error(lambda: handle.sign_in(accounts.alice_email, "not the password"))
    unknown = _error(lambda: handle.sign_in("nobody@accounts.example", PASSWORD))
    assert type(wrong) is type(unknown) is UnauthenticatedError
    assert (wrong.reason, wrong.code, wrong.message, wrong.data) == (unknown.reason, unknown.code, unknown.message, unknown.data)
    assert handle.current_user is None
    assert reason_of(lambda: doc(handle, "notes").add({"text": "x"})) == "PERMISSION_DENIED"


def test_a_second_sign_up_with_the_same_email_is_already_exists(accounts):
    handle = accounts.client()
    for email in (accounts.alice_email, accounts.alice_email.upper()):
        error = _error(lambda: handle.sign_up(email, "another password"))
        assert isinstance(error, AlreadyExistsError)
        assert handle.current_user is None
    assert handle.sign_in(accounts.alice_email, PASSWORD)["uid"] == accounts.alice_uid  # the password is unchanged


def test_an_email_is_one_account_however_it_is_spelled(accounts):
    """Full-width look-alikes, composed and decomposed accents and case reach the same account."""
    handle = accounts.client()
    dana = handle.sign_up("Ｄａｎａ.Jos\u00e9@Accounts.Example", PASSWORD)  # full-width letters, a composed é
    assert dana["email"] == "dana.jos\u00e9@accounts.example"
    for spelling in ("dana.jose\u0301@accounts.example", "DANA.JOSÉ@ACCOUNTS.EXAMPLE", "ｄａｎａ.josé＠accounts.example"):
        assert isinstance(_error(lambda: accounts.client().sign_up(spelling, PASSWORD)), AlreadyExistsError), spelling
        assert accounts.client().sign_in(spelling, PASSWORD)["uid"] == dana["uid"], spelling


@pytest.mark.parametrize("email, password", [
    ("not an email", PASSWORD), ("", PASSWORD), ("a@b.example", "short"), ("a@b.example", ""),
    ("a/b@c.example", PASSWORD), ("$x@c.example", PASSWORD),
])
def test_bad_credentials_are_invalid_arguments(accounts, email, password):
    assert isinstance(_error(lambda: accounts.admin.sign_up(email, password)), InvalidArgumentError)


# Owner-only data


def test_owner_only_data_is_the_owners_alone(accounts):
    alice, bob, anonymous = accounts.alice, accounts.bob, accounts.client()
    note_id = doc(alice, "notes").add({"text": "alice's", "ownerId": accounts.bob_uid})  # the server sets ownerId
    note = doc(alice, "notes", note_id)
    assert note.get() == {"text": "alice's", "ownerId": accounts.alice_uid}
    note.set({"text": "edited", "ownerId": accounts.alice_uid})  # a set by the owner
    bobs_id = doc(bob, "notes").add({"text": "bob's"})
    for handle in (bob, anonymous):
        theirs = doc(handle, "notes", note_id)
        assert reason_of(theirs.get) == "PERMISSION_DENIED"
        assert reason_of(lambda: theirs.set({"text": "mine", "ownerId": accounts.alice_uid})) == "PERMISSION_DENIED"
        assert reason_of(lambda: theirs.update({"text": "mine"})) == "PERMISSION_DENIED"
        assert reason_of(theirs.delete) == "PERMISSION_DENIED"
        assert reason_of(lambda: theirs.on_snapshot(lambda s: None)) == "PERMISSION_DENIED"
    assert note_id not in doc(bob, "notes").get() and bobs_id in doc(bob, "notes").get()
    assert bobs_id not in doc(alice, "notes").get() and note_id in doc(alice, "notes").get()
    assert doc(accounts.admin, "notes", note_id).get() == {"text": "edited", "ownerId": accounts.alice_uid}
    # Profiles are keyed by uid ("$id" owner).
    mine = doc(alice, "profiles", accounts.alice_uid)
    mine.set({"name": "Alice"})
    mine.update({"name": "Alice A."})
    assert mine.get() == {"name": "Alice A."}
    assert reason_of(doc(bob, "profiles", accounts.alice_uid).get) == "PERMISSION_DENIED"
    assert reason_of(lambda: doc(bob, "profiles", accounts.alice_uid).update({"name": "B"})) == "PERMISSION_DENIED"
    assert doc(alice, "notes", note_id).delete() == {"text": "edited", "ownerId": accounts.alice_uid}


def test_the_owner_updates_its_note(accounts):
    note_id = doc(accounts.alice, "notes").add({"text": "draft"})
    doc(accounts.alice, "notes", note_id).update({"text": "final"})
    assert doc(accounts.admin, "notes", note_id).get() == {"text": "final", "ownerId": accounts.alice_uid}


# The password store


def test_no_client_path_can_name_the_account_store(accounts):
    anonymous = accounts.client()
    for handle in (accounts.admin, accounts.alice, anonymous):
        backend = handle._backend  # the wire, below the Python client's own path checks
        for name in RESERVED:
            for path in ([name], [name, accounts.alice_email], ["notes", "x", name], [name, "x", "y"]):
                calls = {
                    "get": lambda: backend.call("get", {"path": path}),
                    "query": lambda: backend.call("query", {"query": {"path": path}}),
                    "count": lambda: backend.call("aggregate", {"op": "count", "query": {"path": path}}),
                    "listen": lambda: backend.subscribe({"path": path}, lambda s: None),
                    "listen query": lambda: backend.subscribe({"query": {"path": path}}, lambda s: None),
                    "set": lambda: backend.call("set", {"path": path, "value": {"hash": "x"}}),
                    "add": lambda: backend.call("add", {"path": path, "value": {"hash": "x"}}),
                    "update": lambda: backend.call("update", {"path": path, "fields": [["hash", "x"]]}),
                    "delete": lambda: backend.call("delete", {"path": path}),
                    "commit": lambda: backend.call("commit", {"writes": [{"op": "delete", "path": path}]}),
                    "read in a transaction": lambda: backend.call("commit", {
                        "writes": [{"op": "set", "path": ["notes", "t"], "value": {}}],
                        "reads": [{"path": path, "value": None}]}),
                }
                for what, call in calls.items():
                    assert reason_of(call) == "INVALID_ARGUMENT", (handle.config.get("adminKey") is not None, path, what)
        with pytest.raises(InvalidArgumentError):  # the Python client refuses such names itself
            doc(handle, RESERVED[0])
    for name in RESERVED:
        assert (name,) in accounts.served.database.tree.collections  # they exist, and nothing above touched them
    assert accounts.alice.sign_in(accounts.alice_email, PASSWORD)["uid"] == accounts.alice_uid


def test_the_admin_keys_root_read_holds_no_account_data(accounts):
    everything = doc(accounts.admin).get()
    assert not set(everything) & set(RESERVED)
    text = json.dumps(everything)
    for secret in ("scrypt", PASSWORD, accounts.alice_email, accounts.bob_email):
        assert secret not in text
    snapshots = Snapshots()
    stop = doc(accounts.admin, "notes").on_snapshot(snapshots)
    assert "scrypt" not in json.dumps(snapshots.next().docs)
    stop()


def test_passwords_are_kept_only_as_scrypt_hashes_and_sessions_only_as_token_hashes(accounts):
    database = accounts.served.database
    account = database.tree.document(("__accounts__", accounts.alice_email))
    assert account["uid"] == accounts.alice_uid and account["email"] == accounts.alice_email
    stored = json.dumps(account)
    assert PASSWORD not in stored and "password" not in stored.lower()
    kind, n, r, p, salt, digest = account["hash"].split("$")
    assert kind == "scrypt" and int(n) >= 2**14 and int(r) >= 8 and int(p) >= 1

    def unb64(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    assert len(unb64(salt)) >= 16
    assert hashlib.scrypt(PASSWORD.encode(), salt=unb64(salt), n=int(n), r=int(r), p=int(p),
                          dklen=len(unb64(digest))) == unb64(digest)
    sessions = database.tree.collections[("__sessions__",)]
    token = accounts.alice._backend.token
    assert token and token not in sessions and token not in json.dumps(sessions)
    assert hashlib.sha256(token.encode()).hexdigest() in sessions
    assert all(len(key) == 64 and set(key) <= set("0123456789abcdef") for key in sessions)


# Limits on sign-ups and failed sign-ins (client keys)


def _reason(answer: dict[str, Any]) -> str:
    return answer["error"]["data"]["reason"] if "error" in answer else "OK"


def _sign_in(stranger: Stranger, email: str, password: str) -> dict[str, Any]:
    return stranger.call("signIn", {"email": email, "password": password})


def test_failed_sign_ins_of_an_account_from_one_address_wait_a_delay_that_doubles(loop_thread, tmp_path):
    served = serve(loop_thread, tmp_path)
    owner = served.client()
    attacker = Stranger(served, "127.0.0.2")
    try:
        owner.sign_up("victim@accounts.example", PASSWORD)
        allowed = Limits().signInFailures
        for guess in range(allowed):
            assert _reason(_sign_in(attacker, "victim@accounts.example", f"wrong guess {guess}")) == "UNAUTHENTICATED"
        refused = _sign_in(attacker, "victim@accounts.example", "one guess too many")
        assert _reason(refused) == "RATE_LIMITED"
        first_wait = refused["error"]["data"]["retryAfterMs"]
        assert 0 < first_wait <= 1001
        # While it waits, even the right password is refused from there.
        assert _reason(_sign_in(attacker, "victim@accounts.example", PASSWORD)) == "RATE_LIMITED"
        time.sleep(first_wait / 1000 + 0.05)
        assert _reason(_sign_in(attacker, "victim@accounts.example", "after the wait")) == "UNAUTHENTICATED"
        second_wait = _sign_in(attacker, "victim@accounts.example", "wrong again")["error"]["data"]["retryAfterMs"]
        assert 1000 < second_wait <= 2001  # doubled
        # Another account from the same address is not delayed, nor is the owner anywhere else.
        assert _reason(_sign_in(attacker, "someone.else@accounts.example", "a wrong guess")) == "UNAUTHENTICATED"
        assert owner.sign_in("victim@accounts.example", PASSWORD)["email"] == "victim@accounts.example"
    finally:
        attacker.close()
        owner.close()
        served.stop()


def test_guesses_from_another_address_never_lock_the_owner_out(loop_thread, tmp_path):
    served = serve(loop_thread, tmp_path)
    owner = served.client()
    attacker = Stranger(served, "127.0.0.2")
    try:
        owner.sign_up("victim@accounts.example", PASSWORD)
        reasons = []
        while "RATE_LIMITED" not in reasons and len(reasons) < 20:
            reasons.append(_reason(_sign_in(attacker, "victim@accounts.example", f"wrong guess {len(reasons)}")))
        assert reasons[-1] == "RATE_LIMITED"
        for _ in range(3):  # again and again: the owner signs in from its own address
            assert owner.sign_in("victim@accounts.example", PASSWORD)["email"] == "victim@accounts.example"
    finally:
        attacker.close()
        owner.close()
        served.stop()


def test_concurrent_guesses_are_counted_before_they_are_checked(loop_thread, tmp_path):
    served = serve(loop_thread, tmp_path)
    owner = served.client()
    guessers = []
    try:
        owner.sign_up("victim@accounts.example", PASSWORD)
        guessers = [Stranger(served, "127.0.0.2") for _ in range(30)]
        sent = [(g, g.send("signIn", {"email": "victim@accounts.example", "password": f"wrong guess {n}"}))
                for n, g in enumerate(guessers)]
        reasons = Counter(_reason(guesser.answer(request_id, timeout=60)) for guesser, request_id in sent)
        assert set(reasons) <= {"UNAUTHENTICATED", "RATE_LIMITED"}, reasons
        assert reasons["UNAUTHENTICATED"] == Limits().signInFailures, reasons  # checked: exactly the allowance
    finally:
        for guesser in guessers:
            guesser.close()
        owner.close()
        served.stop()


def test_failed_sign_ins_from_one_address_over_many_accounts_are_limited(loop_thread, tmp_path):
    served = serve(loop_thread, tmp_path, limits=Limits(signInFailuresPerAddress=3))
    sprayer, bystander = Stranger(served, "127.0.0.2"), Stranger(served, "127.0.0.3")
    try:
        for n in range(3):
            assert _reason(_sign_in(sprayer, f"user{n}@accounts.example", PASSWORD)) == "UNAUTHENTICATED"
        refused = _sign_in(sprayer, "user9@accounts.example", PASSWORD)
        assert _reason(refused) == "RATE_LIMITED" and refused["error"]["data"]["retryAfterMs"] > 0
        assert _reason(_sign_in(bystander, "user9@accounts.example", PASSWORD)) == "UNAUTHENTICATED"
    finally:
        sprayer.close()
        bystander.close()
        served.stop()


def _sign_up(stranger: Stranger, email: str) -> dict[str, Any]:
    return stranger.call("signUp", {"email": email, "password": PASSWORD})


def test_sign_ups_from_one_address_are_rate_limited(loop_thread, tmp_path):
    served = serve(loop_thread, tmp_path)
    creator, newcomer = Stranger(served, "127.0.0.2"), Stranger(served, "127.0.0.3")
    admin = served.client(admin=True)
    try:
        count, _ = parse_rate(Limits().signUpsPerAddress, "")
        for n in range(count):
            assert _reason(_sign_up(creator, f"bulk{n}@accounts.example")) == "OK"
        refused = _sign_up(creator, "one.more@accounts.example")
        assert _reason(refused) == "RATE_LIMITED" and refused["error"]["data"]["retryAfterMs"] > 0
        assert served.database.document(("__accounts__", "one.more@accounts.example")) is None
        assert _reason(_sign_up(newcomer, "newcomer@accounts.example")) == "OK"  # another address
        assert admin.sign_up("by.the.admin@accounts.example", PASSWORD)  # the admin key is not limited
    finally:
        creator.close()
        newcomer.close()
        admin.close()
        served.stop()


def test_sign_ups_from_all_addresses_together_are_rate_limited(loop_thread, tmp_path):
    served = serve(loop_thread, tmp_path, limits=Limits(signUps="3/min"))
    strangers = [Stranger(served, f"127.0.0.{n}") for n in range(2, 6)]
    try:
        for n, stranger in enumerate(strangers[:3]):
            assert _reason(_sign_up(stranger, f"user{n}@accounts.example")) == "OK"
        refused = _sign_up(strangers[3], "user3@accounts.example")
        assert _reason(refused) == "RATE_LIMITED" and 0 < refused["error"]["data"]["retryAfterMs"] <= 20_001
    finally:
        for stranger in strangers:
            stranger.close()
        served.stop()


# Sessions


def test_sign_out_ends_the_session(accounts):
    handle = accounts.client()
    handle.sign_in(accounts.alice_email, PASSWORD)
    token = handle._backend.token
    note_id = doc(handle, "notes").add({"text": "before signing out"})
    handle.sign_out()
    assert handle.current_user is None
    note = doc(handle, "notes", note_id)
    assert reason_of(note.get) == "PERMISSION_DENIED"
    assert reason_of(lambda: note.set({"text": "x", "ownerId": accounts.alice_uid})) == "PERMISSION_DENIED"
    assert reason_of(lambda: doc(handle, "notes").add({"text": "x"})) == "PERMISSION_DENIED"
    # The ended session cannot be resumed.
    assert isinstance(_error(lambda: handle._backend.call("resume", {"token": token})), UnauthenticatedError)
    assert reason_of(note.get) == "PERMISSION_DENIED"
    handle.sign_in(accounts.alice_email, PASSWORD)
    assert note.get() == {"text": "before signing out", "ownerId": accounts.alice_uid}


def test_sign_out_also_ends_what_listeners_show(accounts):
    handle = accounts.client()
    handle.sign_in(accounts.alice_email, PASSWORD)
    note_id = doc(handle, "notes").add({"text": "private"})
    notes, markers = Snapshots(), Snapshots()
    stops = [doc(handle, "notes", note_id).on_snapshot(notes), doc(handle, "marker", "m").on_snapshot(markers)]
    assert notes.next().exists and markers.next() is not None
    handle.sign_out()
    doc(accounts.admin, "notes", note_id).set({"text": "new private text", "ownerId": accounts.alice_uid})
    doc(accounts.admin, "marker", "m").set({"after": "sign-out"})
    # Signing out re-sends each listener's state as the connection may now see it, then the write.
    assert [markers.next().value for _ in range(2)][-1] == {"after": "sign-out"}
    seen = notes.pending()
    for stop in stops:
        stop()
    assert not [s for s in seen if s.exists], f"a signed-out connection still received: {seen}"


def test_signing_out_closes_every_other_connection_that_resumed_the_session(accounts):
    handle = accounts.client()
    handle.sign_in(accounts.alice_email, PASSWORD)
    token = handle._backend.token
    note_id = doc(handle, "notes").add({"text": "alice's"})
    resumed = [Stranger(accounts.served, "127.0.0.2"), Stranger(accounts.served, "127.0.0.3")]
    elsewhere = Stranger(accounts.served, "127.0.0.4")  # alice's own, other session
    follower = accounts.client()  # a client handle that holds the same session
    try:
        for stranger in resumed:
            assert stranger.call("resume", {"token": token})["result"]["uid"] == accounts.alice_uid
            assert stranger.call("subscribe", {"sub": 1, "path": ["notes", note_id]})["result"] == {"sub": 1}
        assert _reason(_sign_in(elsewhere, accounts.alice_email, PASSWORD)) == "OK"
        follower._backend.token, follower._backend.user = token, handle.current_user
        assert doc(follower, "notes", note_id).get() == {"text": "alice's", "ownerId": accounts.alice_uid}

        handle.sign_out()
        assert [stranger.close_code(timeout=5) for stranger in resumed] == [CLOSE_SIGNED_OUT] * 2
        # The follower reconnects, fails to resume, and says it is signed out.
        outcome = "CONNECTION_LOST"
        for _ in range(100):  # until its reader has seen the close (bounded: about 5 s)
            outcome = reason_of(doc(follower, "notes", note_id).get)
            if outcome != "CONNECTION_LOST":
                break
            time.sleep(0.05)
        assert outcome == "PERMISSION_DENIED" and follower.current_user is None
        # Alice's other session goes on.
        assert elsewhere.call("get", {"path": ["notes", note_id]})["result"]["value"]["text"] == "alice's"
    finally:
        for stranger in (*resumed, elsewhere):
            stranger.close()


async def _close_listener(served: Served) -> None:
    """Stop serving (closing every connection) but keep the database open."""
    served.server.server.close()
    await served.server.server.wait_closed()


@pytest.mark.parametrize("restart", ["same database", "reopened from disk"])
def test_a_session_is_resumed_after_a_reconnect(loop_thread, tmp_path, restart):
    bucket = server_bucket(str(tmp_path / "db.json") if restart == "reopened from disk" else ":memory:")
    served = serve(loop_thread, tmp_path, bucket)
    handle = served.client()
    try:
        user = handle.sign_up("resume@accounts.example", PASSWORD)
        note_id = doc(handle, "notes").add({"text": "v1"})
        port = int(served.url.rsplit(":", 1)[1])
        if restart == "same database":
            loop_thread.run(_close_listener(served))
        else:
            served.stop()  # closes the database: a snapshot on disk
        with pytest.raises(ConnectionLostError):
            doc(handle, "notes", note_id).get()
        if restart == "reopened from disk":
            service = served.server.service  # a new server over the store reopened, with the same keys
            served.database = open_database({**DEFAULTS, "rules": RULES}, bucket)
            served.server = MontybaseServer(served.database, keys=service.keys, server_key=service.server_key)
        loop_thread.run(served.server.start("127.0.0.1", port))
        # The same handle, no new sign-in: the owner-only write and read work.
        note = doc(handle, "notes", note_id)
        note.set({"text": "v2", "ownerId": user["uid"]})
        assert note.get() == {"text": "v2", "ownerId": user["uid"]}
        assert handle.current_user == user
        assert doc(handle, "notes").add({"text": "another"})
    finally:
        handle.close()
        served.stop()


def test_a_forged_or_unknown_resume_token_is_refused(accounts):
    handle = accounts.client()
    backend = handle._backend
    for token in ("forged", "x" * 43, base64.urlsafe_b64encode(b"\0" * 32).decode().rstrip("=")):
        assert isinstance(_error(lambda: backend.call("resume", {"token": token})), UnauthenticatedError)
    for token in ("", 42, None):
        assert isinstance(_error(lambda: backend.call("resume", {"token": token})), InvalidArgumentError)
    # A token for a session (its hash is a key in the store) does not work either.
    stored_key = next(iter(accounts.served.database.tree.collections[("__sessions__",)]))
    assert isinstance(_error(lambda: backend.call("resume", {"token": stored_key})), UnauthenticatedError)
    assert reason_of(lambda: doc(handle, "notes").add({"text": "x"})) == "PERMISSION_DENIED"
    # A handle holding an unknown token reconnects as nobody.
    handle.sign_in(accounts.bob_email, PASSWORD + "!")
    note_id = doc(handle, "notes").add({"text": "bob's"})
    assert _reconnect_with_a_forged_token(handle, doc(handle, "notes", note_id).get) == "PERMISSION_DENIED"


def _reconnect_with_a_forged_token(handle: Montybase, call) -> str:
    """Replace the handle's session token by an unknown one, drop its connection, and make `call`
    (which connects again, resuming with that token first); the reason it ends with."""
    backend = handle._backend
    backend.token = "forged-" + "y" * 40
    backend._ws.close()
    for _ in range(100):  # until the reader thread has seen the close (bounded: about 5 s)
        outcome = reason_of(call)
        if outcome != "CONNECTION_LOST":
            return outcome
        time.sleep(0.05)
    return outcome


def test_current_user_is_cleared_when_a_resumed_session_is_refused(accounts):
    handle = accounts.client()
    handle.sign_in(accounts.bob_email, PASSWORD + "!")
    assert _reconnect_with_a_forged_token(handle, lambda: doc(handle, "notes").add({"t": 1})) == "PERMISSION_DENIED"
    assert handle.current_user is None


@NO_SERVER
def test_expired_sessions_are_deleted_with_a_later_sign_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = Montybase(storageBucket=str(tmp_path / "db.json"))
    try:
        db.sign_up("sweep@accounts.example", PASSWORD)  # a sweep, with nothing to sweep yet
        database = db._database
        now = int(time.time())
        stale = {f"stale{i:03d}": {"uid": "u", "email": "e", "expires": now - 1 - i} for i in range(database.max_batch + 100)}
        live = {"live": {"uid": "u", "email": "e", "expires": now + 3600}}
        items = [*stale.items(), *live.items()]
        for start in range(0, len(items), 250):
            database.commit([{"op": "set", "path": ["__sessions__", key], "value": value}
                             for key, value in items[start:start + 250]], private=True)
        sessions = database.tree.collections[("__sessions__",)]
        db.sign_in("sweep@accounts.example", PASSWORD)  # within the hour: no sweep
        assert stale.keys() <= sessions.keys()
        monkeypatch.setattr("server.accounts.SWEEP_SECONDS", 0)
        db.sign_in("sweep@accounts.example", PASSWORD)  # one batch of deletes, with the new session and its sign-in time
        assert 0 < len(stale.keys() & sessions.keys()) <= 102
        db.sign_in("sweep@accounts.example", PASSWORD)  # the rest
        assert not stale.keys() & sessions.keys()
        assert "live" in sessions and len(sessions) == 1 + 4  # live, and the four sessions made here
        assert db.current_user is not None and db.current_user["email"] == "sweep@accounts.example"
    finally:
        db.close()
    reopened = Montybase(storageBucket=str(tmp_path / "db.json"))  # the deletes went through the journal
    try:
        assert len(reopened._database.tree.collections[("__sessions__",)]) == 5
    finally:
        reopened.close()


# Embedded


@NO_SERVER
def test_embedded_accounts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = Montybase(storageBucket=":memory:")
    try:
        assert db.current_user is None
        user = db.sign_up("embedded@accounts.example", PASSWORD)
        assert db.current_user == user and user["email"] == "embedded@accounts.example"
        assert isinstance(_error(lambda: db.sign_up("Embedded@Accounts.Example", PASSWORD)), AlreadyExistsError)
        wrong = _error(lambda: db.sign_in("embedded@accounts.example", "wrong password"))
        unknown = _error(lambda: db.sign_in("nobody@accounts.example", PASSWORD))
        assert type(wrong) is type(unknown) is UnauthenticatedError and wrong.message == unknown.message
        db.sign_out()
        assert db.current_user is None
        assert db.sign_in("embedded@accounts.example", PASSWORD) == user == db.current_user
        with pytest.raises(InvalidArgumentError):
            db._backend.call("get", {"path": ["__accounts__"]})
        assert doc(db).get() == {}
        account = db._database.tree.document(("__accounts__", "embedded@accounts.example"))
        assert account["hash"].startswith("scrypt$") and PASSWORD not in json.dumps(account)
    finally:
        db.close()


@NO_SERVER
def test_embedded_credentials_with_a_lone_surrogate_are_invalid_arguments(tmp_path, monkeypatch):
    """A str may hold what UTF-8 cannot encode; the password and the token are hashed as UTF-8."""
    monkeypatch.chdir(tmp_path)
    db = Montybase(storageBucket=":memory:")
    try:
        for method, params, where in [
            ("signUp", {"email": "lone@accounts.example", "password": PASSWORD + "\ud800"}, "/password"),
            ("signIn", {"email": "lone@accounts.example", "password": "\udc00" + PASSWORD}, "/password"),
            ("resume", {"token": "\ud800"}, "/token"),
            ("signOut", {"token": "\udfff"}, "/token"),
        ]:
            error = _error(lambda: db._backend.call(method, params))
            assert isinstance(error, InvalidArgumentError) and error.data["path"] == where, (method, error)
        assert db.current_user is None
    finally:
        db.close()


@NO_SERVER
def test_rules_do_not_apply_to_the_program_that_embeds_the_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = create_config(tmp_path / "montybase.json")
    config["rules"] = {
        "locked": {},
        "checked": {"read": "public", "write": "public", "maxDocs": 1, "schema": {"required": ["n"]},
                    "immutable": ["n"], "serverFields": {"by": "uid"}},
    }
    (tmp_path / "montybase.json").write_text(json.dumps(config))
    db = Montybase(config=tmp_path / "montybase.json")
    try:
        assert db._database.rules.configured and db._database.rules.match(("locked",)) is not None
        db.sign_up("owner@accounts.example", PASSWORD)  # signed in or not, the program is the owner
        doc(db, "locked").set({"n": 1}, key="a")
        assert doc(db, "locked", "a").get() == {"n": 1} and doc(db, "locked").count() == 1
        doc(db, "checked").set({"no": "n"}, key="a")
        doc(db, "checked").set({"n": 1}, key="b")
        doc(db, "checked", "b").update({"n": 2})
        assert doc(db, "checked").get() == {"a": {"no": "n"}, "b": {"n": 2}}
        snapshots = Snapshots()
        stop = doc(db, "locked").on_snapshot(snapshots)
        assert [d["id"] for d in snapshots.next().docs] == ["a"]
        stop()
        assert set(doc(db).get()) == {"locked", "checked"}
        assert doc(db, "locked").delete() == {"a": {"n": 1}}
    finally:
        db.close()
