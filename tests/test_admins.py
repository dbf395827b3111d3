"""Admin accounts (DESIGN.md §10): `montybase admins add|list|remove` on the stored data, run as a
user types them; an admin account signs in like a user and its connection gets the admin role,
while user accounts and anonymous clients are refused everything the console uses."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import ON_POSTGRES, Served, Stranger, server_config  # noqa: E402
from procs import server_command  # noqa: E402
from test_cli import start  # noqa: E402
from python_client import Montybase, doc  # noqa: E402
from python_client.errors import (  # noqa: E402
    InvalidArgumentError, MontybaseError, PermissionDeniedError, RateLimitedError, UnauthenticatedError,
)
from server.session import CLOSE_SIGNED_OUT  # noqa: E402
from server.config import DEFAULTS, Limits, is_postgres_url, load_config, open_database, storage_path  # noqa: E402

PASSWORD = "console password 1"
ADMIN = "ops@admins.example"
OTHER = "someone@admins.example"  # a user account
RULES = {"notes": {"read": "public", "write": "public"}}  # "secret" has no rule: admins only


def admins(folder: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(server_command("admins", *args), cwd=folder, input=stdin, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    server_config(tmp_path / "montybase.json")
    return tmp_path


def serve(loop_thread, folder: Path) -> Served:
    """A server on the data the commands wrote."""
    config, _ = load_config(folder / "montybase.json")
    database = open_database({**DEFAULTS, "rules": RULES}, storage_path(config, folder / "montybase.json"))
    return Served(loop_thread, folder / "served", database=database, limits=Limits())


def stored_text(folder: Path) -> str:
    """All the data as stored: db.json and its journals, or a PostgreSQL database's documents and changes."""
    bucket = load_config(folder / "montybase.json")[0]["storageBucket"]
    if is_postgres_url(bucket):
        import psycopg

        with psycopg.connect(bucket) as connection:
            return "".join(row[0] for row in connection.execute(
                "SELECT value FROM montybase_documents UNION ALL SELECT operations FROM montybase_changes"))
    return (folder / bucket).read_text() + "".join(
        path.read_text(errors="replace") for path in folder.glob(f"{bucket}.*.journal"))


def test_admins_add_list_and_remove_keep_admin_accounts_in_the_stored_data(folder):
    added = admins(folder, "add", " Ops@Admins.Example", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert "ops@admins.example: new admin account" in added.stdout
    assert admins(folder, "list").stdout.split() == [ADMIN]
    stored = stored_text(folder)
    assert ADMIN in stored and PASSWORD not in stored
    removed = admins(folder, "remove", ADMIN)
    assert removed.returncode == 0 and "no longer an admin" in removed.stdout
    listed = admins(folder, "list")
    assert listed.stdout == "" and "no admin accounts" in listed.stderr
    again = admins(folder, "remove", ADMIN)
    assert again.returncode == 1 and "is not an admin account" in again.stderr


def test_admins_add_with_a_short_password_is_refused_and_changes_nothing(folder):
    refused = admins(folder, "add", ADMIN, "--password-stdin", stdin="short\n")
    assert refused.returncode == 1 and "/password" in refused.stderr
    assert admins(folder, "list").stdout == ""


def test_admins_add_without_a_terminal_asks_for_password_stdin(folder):
    refused = admins(folder, "add", ADMIN)
    assert refused.returncode == 1 and "--password-stdin" in refused.stderr


def test_admins_add_while_a_server_runs_is_refused_on_files_and_reaches_the_running_nodes_on_postgresql(
        loop_thread, folder):
    served = serve(loop_thread, folder)
    page = served.client()
    try:
        added = admins(folder, "add", ADMIN, "--password-stdin", stdin=PASSWORD + "\n")
        if not ON_POSTGRES:  # the server holds the lock of its storage files
            assert added.returncode == 1 and "montybase:" in added.stderr
            return
        # The command is one more node of the database for a moment: the running node follows its write.
        assert added.returncode == 0, added.stderr
        deadline = time.monotonic() + 5
        while served.database.document(("__accounts__", ADMIN)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert page.sign_in(ADMIN, PASSWORD)["email"] == ADMIN
        assert page._backend.call("accountsList", {})["accounts"][0]["admin"] is True  # the admin role
    finally:
        page.close()
        served.stop()
        served.database.close()


def _console_calls(handle: Montybase) -> dict[str, Any]:
    """Every call the console makes, each run on its own: its result, or the error's reason."""
    backend = handle._backend
    calls = {
        "collections": lambda: backend.call("collections", {}),
        "get": lambda: backend.call("get", {"path": ["secret", "one"]}),
        "list": lambda: backend.call("get", {"path": ["secret"]}),
        "query": lambda: backend.call("query", {"query": {"path": ["secret"], "limit": 5}}),
        "count": lambda: backend.call("aggregate", {"op": "count", "query": {"path": ["secret"]}}),
        "add": lambda: backend.call("add", {"path": ["secret"], "value": {"n": 2}}),
        "set": lambda: backend.call("set", {"path": ["secret", "one"], "value": {"n": 3}}),
        "update": lambda: backend.call("update", {"path": ["secret", "one"], "fields": [["n", 4]]}),
        "delete": lambda: backend.call("delete", {"path": ["secret", "gone"]}),
        "listen": lambda: doc(handle, "secret").on_snapshot(lambda snapshot: None),
        "rulesTest": lambda: backend.call("rulesTest", {"as": "anonymous", "op": "create", "path": ["notes", "n1"]}),
        "rulesGet": lambda: backend.call("rulesGet", {}),
        "rulesApply": lambda: backend.call("rulesApply", {"rules": {"**": {"read": "public", "write": "public"}}}),
        "serverStatus": lambda: backend.call("serverStatus", {}),
        "accountsList": lambda: backend.call("accountsList", {}),
        "accountsSignOut": lambda: backend.call("accountsSignOut", {"email": OTHER}),
        "accountsDisable": lambda: backend.call("accountsDisable", {"email": OTHER}),
        "accountsEnable": lambda: backend.call("accountsEnable", {"email": OTHER}),
        "accountsDelete": lambda: backend.call("accountsDelete", {"email": OTHER}),
    }
    answers = {}
    for name, call in calls.items():
        try:
            answers[name] = call()
        except MontybaseError as exc:
            answers[name] = exc.reason
    return answers


@pytest.fixture
def with_admin(loop_thread, folder: Path) -> Iterator[Served]:
    """A server on data holding an admin account (ADMIN) and two documents, stopped afterwards."""
    assert admins(folder, "add", ADMIN, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    served = serve(loop_thread, folder)
    owner = served.client(admin=True)
    doc(owner, "secret", "one").set({"n": 1})
    doc(owner, "notes", "a").set({"text": "open"})
    owner.close()
    yield served
    served.stop()
    served.database.close()


def test_an_admin_account_signs_in_with_the_admin_role(with_admin):
    served = with_admin
    page = served.client()
    try:
        user = page.sign_in(ADMIN, PASSWORD)
        assert user["email"] == ADMIN
        answers = _console_calls(page)
        assert "PERMISSION_DENIED" not in answers.values(), answers
        assert answers["collections"] == {"collections": [{"id": "notes", "count": 1}, {"id": "secret", "count": 1}]}
        assert answers["get"] == {"value": {"n": 1}}
        assert answers["rulesTest"] == {"allow": True, "said": 'ALLOW create notes/n1 as anonymous (rule "notes": create is public; '
                                                               'give a value to check the data rules too)'}
        assert doc(served.client(admin=True), "secret", "one").get() == {"n": 4}
        assert answers["accountsList"]["accounts"][0]["email"] == ADMIN
        assert answers["accountsDelete"] == "NOT_FOUND"  # there is no such account here
        assert answers["rulesGet"] == answers["rulesApply"] == "UNAVAILABLE"  # no config file: not `montybase serve`
        assert answers["serverStatus"]["documents"] == 3
    finally:
        page.close()


def test_after_sign_out_an_admin_account_connection_is_a_client_again(with_admin):
    served = with_admin
    page = served.client()
    try:
        page.sign_in(ADMIN, PASSWORD)
        page.sign_out()
        with pytest.raises(PermissionDeniedError):
            page._backend.call("collections", {})
        with pytest.raises(PermissionDeniedError):
            doc(page, "secret", "one").get()
    finally:
        page.close()


def test_a_user_account_and_an_anonymous_client_are_denied_everything_the_console_uses(with_admin):
    served = with_admin
    anonymous, user = served.client(), served.client()
    try:
        user.sign_up(OTHER, PASSWORD)
        for handle in (anonymous, user):
            answers = _console_calls(handle)
            assert set(answers.values()) == {"PERMISSION_DENIED"}, answers
        admin_view = served.client(admin=True)
        assert doc(admin_view, "secret", "one").get() == {"n": 1}  # nothing was written
        admin_view.close()
        again = served.client()
        assert again.sign_in(OTHER, PASSWORD)["email"] == OTHER  # neither disabled nor deleted
        again.close()
    finally:
        anonymous.close()
        user.close()


def test_signing_up_cannot_make_an_admin_account(with_admin):
    served = with_admin
    page = served.client()
    try:
        result = page._backend.call("signUp", {"email": "new@admins.example", "password": PASSWORD})
        assert "admin" not in result
        with pytest.raises(PermissionDeniedError):
            page._backend.call("collections", {})
    finally:
        page.close()


def test_failed_admin_sign_ins_are_rate_limited_and_logged(with_admin, caplog):
    served = with_admin
    page = served.client()
    caplog.set_level(logging.WARNING, logger="montybase.clients")
    try:
        refused = []
        for guess in range(Limits().signInFailures + 1):
            try:
                page.sign_in(ADMIN, f"wrong guess {guess}")
            except (UnauthenticatedError, RateLimitedError) as exc:
                refused.append(exc.reason)
        assert refused[-1] == "RATE_LIMITED" and set(refused[:-1]) == {"UNAUTHENTICATED"}
        assert any("sign-in refused" in record.getMessage() for record in caplog.records)
    finally:
        page.close()


def test_an_admin_accounts_sign_in_lifts_no_limit_on_guessing_other_passwords(with_admin):
    served = with_admin
    page = served.client()
    try:
        page.sign_in(ADMIN, PASSWORD)
        reasons = []
        for guess in range(Limits().signInFailures + 1):
            try:
                page._backend.call("signIn", {"email": "victim@admins.example", "password": f"wrong guess {guess}"})
            except (UnauthenticatedError, RateLimitedError) as exc:
                reasons.append(exc.reason)
        assert reasons[-1] == "RATE_LIMITED"
    finally:
        page.close()


def test_the_rules_dry_run_answers_as_montybase_rules_test_does(with_admin):
    served = with_admin
    page = served.client()
    try:
        page.sign_in(ADMIN, PASSWORD)
        test = partial(page._backend.call, "rulesTest")
        assert test({"as": "user:alice", "op": "get", "path": ["secret", "one"]}) == {
            "allow": False, "said": "DENY get secret/one as user:alice (no rule matches secret: denied by default)"}
        assert test({"as": "admin", "op": "delete", "path": ["secret", "one"]})["allow"] is True
        with pytest.raises(InvalidArgumentError) as caught:
            test({"as": "someone", "op": "get", "path": ["notes", "a"]})
        assert caught.value.data["path"] == "/as"
        with pytest.raises(InvalidArgumentError) as caught:
            test({"as": "anonymous", "op": "list", "path": ["notes", "a"]})
        assert caught.value.data["path"] == "/path"
    finally:
        page.close()


# The console's Accounts view


def _admin_page(served: Served) -> Montybase:
    page = served.client()
    page.sign_in(ADMIN, PASSWORD)
    return page


def _sign_up(served: Served, email: str = OTHER) -> None:
    handle = served.client()
    handle.sign_up(email, PASSWORD)
    handle.sign_out()
    handle.close()


def _signed_in(served: Served, email: str = OTHER, source: str = "127.0.0.2") -> tuple[Stranger, str]:
    """A connection signed in as `email`, and its session token."""
    stranger = Stranger(served, source)
    answer = stranger.call("signIn", {"email": email, "password": PASSWORD})
    assert "result" in answer, answer
    return stranger, answer["result"]["token"]


def _resumes(served: Served, token: str) -> str:
    stranger = Stranger(served, "127.0.0.9")
    try:
        answer = stranger.call("resume", {"token": token})
        return "OK" if "result" in answer else answer["error"]["data"]["reason"]
    finally:
        stranger.close()


def test_accounts_list_shows_sign_up_and_last_sign_in_times_and_finds_by_email(with_admin):
    served = with_admin
    page = _admin_page(served)
    users = [served.client() for _ in range(3)]
    try:
        before = int(time.time() * 1000)
        for n, user in enumerate(users):
            user.sign_up(f"user{n}@Example.org", PASSWORD)
        time.sleep(0.01)
        users[1].sign_out()
        users[1].sign_in("user1@example.org", PASSWORD)
        found = page._backend.call("accountsList", {"search": "EXAMPLE.ORG"})
        assert [account["email"] for account in found["accounts"]] == [f"user{n}@example.org" for n in range(3)]
        assert found["next"] is None
        first, second = found["accounts"][0], found["accounts"][1]
        assert before <= first["created"] <= first["lastSignIn"] <= int(time.time() * 1000)
        assert second["lastSignIn"] > second["created"], "a sign-in is noted on the account"
        assert (first["disabled"], first["admin"], first["sessions"]) == (False, False, 1)
        paged = page._backend.call("accountsList", {"limit": 2})
        assert [a["email"] for a in paged["accounts"]] == [ADMIN, "user0@example.org"] and paged["next"] == "user0@example.org"
        rest = page._backend.call("accountsList", {"limit": 2, "after": paged["next"]})
        assert [a["email"] for a in rest["accounts"]] == ["user1@example.org", "user2@example.org"] and rest["next"] is None
        assert paged["accounts"][0]["admin"] is True
    finally:
        for handle in (page, *users):
            handle.close()


def test_signing_an_account_out_everywhere_closes_its_connections_and_ends_its_sessions(with_admin):
    served = with_admin
    page = _admin_page(served)
    _sign_up(served)
    first, token = _signed_in(served)
    second, other_token = _signed_in(served, source="127.0.0.3")
    try:
        assert page._backend.call("accountsSignOut", {"email": OTHER}) == {"sessions": 2}
        assert [first.close_code(timeout=5), second.close_code(timeout=5)] == [CLOSE_SIGNED_OUT] * 2
        assert _resumes(served, token) == _resumes(served, other_token) == "UNAUTHENTICATED"
        assert page._backend.call("accountsList", {"search": OTHER})["accounts"][0]["sessions"] == 0
        with pytest.raises(MontybaseError) as caught:
            page._backend.call("accountsSignOut", {"email": "nobody@admins.example"})
        assert caught.value.reason == "NOT_FOUND" and caught.value.data["path"] == "/email"
        assert doc(page, "secret", "one").get() == {"n": 1}, "the admin's own session goes on"
    finally:
        for handle in (page, first, second):
            handle.close()


def test_a_disabled_account_cannot_sign_in_or_resume_and_its_connections_close_until_enabled(with_admin):
    served = with_admin
    page = _admin_page(served)
    _sign_up(served)
    signed, token = _signed_in(served)
    user = served.client()
    try:
        assert page._backend.call("accountsDisable", {"email": " SOMEONE@admins.example"}) == {"sessions": 1}
        assert signed.close_code(timeout=5) == CLOSE_SIGNED_OUT
        assert _resumes(served, token) == "UNAUTHENTICATED"
        with pytest.raises(UnauthenticatedError, match="disabled"):
            user.sign_in(OTHER, PASSWORD)
        with pytest.raises(UnauthenticatedError, match="wrong email or password"):  # no hint without the password
            user.sign_in(OTHER, "not the password")
        assert page._backend.call("accountsList", {"search": OTHER})["accounts"][0]["disabled"] is True
        with pytest.raises(InvalidArgumentError) as caught:  # an admin account: `admins remove` first
            page._backend.call("accountsDisable", {"email": ADMIN})
        assert caught.value.data["path"] == "/email"
        assert page._backend.call("accountsEnable", {"email": OTHER}) == {}
        assert user.sign_in(OTHER, PASSWORD)["email"] == OTHER
    finally:
        for handle in (page, signed, user):
            handle.close()


def test_a_deleted_account_is_gone_with_its_sessions_and_its_email_may_sign_up_again(with_admin):
    served = with_admin
    page = _admin_page(served)
    _sign_up(served)
    signed, token = _signed_in(served)
    user = served.client()
    try:
        assert page._backend.call("accountsDelete", {"email": OTHER}) == {"sessions": 1}
        assert signed.close_code(timeout=5) == CLOSE_SIGNED_OUT
        assert _resumes(served, token) == "UNAUTHENTICATED"
        assert page._backend.call("accountsList", {"search": OTHER})["accounts"] == []
        with pytest.raises(UnauthenticatedError):
            user.sign_in(OTHER, PASSWORD)
        assert user.sign_up(OTHER, PASSWORD)["email"] == OTHER
        with pytest.raises(InvalidArgumentError):
            page._backend.call("accountsDelete", {"email": ADMIN})
        assert page._backend.call("accountsList", {"search": ADMIN})["accounts"][0]["admin"] is True
    finally:
        for handle in (page, signed, user):
            handle.close()


# The console's Rules and Server views, on a server run as `montybase serve` runs it


def test_rules_applied_by_an_admin_are_written_reloaded_at_once_and_the_file_before_is_kept(tmp_path):
    server_config(tmp_path / "montybase.json", rules=RULES)
    assert admins(tmp_path, "add", ADMIN, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    with start(tmp_path, "--port", "0") as proc:
        url = proc.endpoint()
        with Montybase(api=url, config=str(tmp_path / "client-config.json")) as page, \
                Montybase(api=url, config=str(tmp_path / "client-config.json")) as anyone:
            page.sign_in(ADMIN, PASSWORD)
            assert page._backend.call("rulesGet", {}) == {"rules": RULES, "file": "montybase.json"}
            doc(anyone, "notes", "a").set({"text": "allowed before"})
            before = (tmp_path / "montybase.json").read_text()

            closed = {"notes": {"read": "public", "write": "none"}}
            assert page._backend.call("rulesApply", {"rules": closed}) == {
                "file": "montybase.json", "previous": "montybase.json.previous"}
            with pytest.raises(PermissionDeniedError):  # the very next write
                doc(anyone, "notes", "b").set({"text": "refused"})
            assert json.loads((tmp_path / "montybase.json").read_text())["rules"] == closed
            assert json.loads((tmp_path / "montybase.json.previous").read_text()) == json.loads(before)
            assert (tmp_path / "montybase.json.previous").stat().st_mode & 0o077 == 0, "it holds the keys"
            assert page._backend.call("rulesGet", {})["rules"] == closed

            # A bad rule: refused at its field; the file and the running rules stay.
            for bad, where in (({"notes": {"read": "everyone"}}, "/rules/notes/read"),
                               ({"notes": {"read": "public", "schema": {"type": "nope"}}}, "/rules/notes/schema")):
                with pytest.raises(InvalidArgumentError) as caught:
                    page._backend.call("rulesApply", {"rules": bad})
                assert caught.value.data["path"] == where, caught.value
            assert json.loads((tmp_path / "montybase.json").read_text())["rules"] == closed
            assert doc(anyone, "notes", "a").get() == {"text": "allowed before"}
            with pytest.raises(PermissionDeniedError):
                doc(anyone, "notes", "b").set({"text": "still refused"})
        assert proc.stop() == 0, proc.describe()


def test_server_status_gives_admins_the_numbers_and_the_recent_warnings(tmp_path):
    server_config(tmp_path / "montybase.json", rules=RULES)
    assert admins(tmp_path, "add", ADMIN, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    with start(tmp_path, "--port", "0") as proc:
        url = proc.endpoint()
        with Montybase(api=url, config=str(tmp_path / "client-config.json")) as page, \
                Montybase(api=url, config=str(tmp_path / "client-config.json")) as anyone:
            with pytest.raises(UnauthenticatedError):
                anyone.sign_in(ADMIN, "a wrong password")  # a WARNING line
            page.sign_in(ADMIN, PASSWORD)
            first = page._backend.call("serverStatus", {})
            for n in range(5):
                doc(anyone, "notes").add({"n": n})
            stop = doc(anyone, "notes").on_snapshot(lambda snapshot: None)
            then = page._backend.call("serverStatus", {})
            stop()
            assert then["writes"] - first["writes"] >= 5 and then["documents"] - first["documents"] == 5
            assert then["requests"] > first["requests"] and then["listeners"] >= 1 and then["connections"] == 2
            assert then["rssBytes"] > 1_000_000 and then["uptimeSeconds"] > 0
            assert then["lastBackup"] is None
            assert any("sign-in refused" in line["message"] and line["level"] == "WARNING" for line in then["warnings"])
            backup = montybase_backup(tmp_path)
            if ON_POSTGRES:  # a node's data is backed up with PostgreSQL's tools, never by the command
                assert backup.returncode == 1 and "PostgreSQL's tools" in backup.stderr, backup.stderr
                assert page._backend.call("serverStatus", {})["lastBackup"] is None
            else:
                assert backup.returncode == 0, backup.stderr
                assert page._backend.call("serverStatus", {})["lastBackup"] >= then["time"] - 1000
            with pytest.raises(PermissionDeniedError):
                anyone._backend.call("serverStatus", {})
        assert proc.stop() == 0, proc.describe()


def montybase_backup(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(server_command("backup", str(folder / "copy.mbak")), cwd=folder, capture_output=True,
                          text=True, timeout=60)
