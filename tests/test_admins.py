"""Admin accounts (DESIGN.md §10): `montybase admins add|list|remove` on the stored data, run as a
user types them; an admin account signs in like a user and its connection gets the admin role,
while user accounts and anonymous clients are refused everything the console uses."""

from __future__ import annotations

import logging
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import Served  # noqa: E402
from procs import server_command  # noqa: E402
from python_client import Montybase, doc  # noqa: E402
from python_client.errors import (  # noqa: E402
    InvalidArgumentError, PermissionDeniedError, RateLimitedError, UnauthenticatedError,
)
from server.config import DEFAULTS, Limits, create_config, open_database  # noqa: E402

PASSWORD = "console password 1"
ADMIN = "ops@admins.example"
RULES = {"notes": {"read": "public", "write": "public"}}  # "secret" has no rule: admins only


def admins(folder: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(server_command("admins", *args), cwd=folder, input=stdin, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    create_config(tmp_path / "montybase.json")
    return tmp_path


def serve(loop_thread, folder: Path) -> Served:
    """A server on the data the commands wrote."""
    database = open_database({**DEFAULTS, "rules": RULES}, str(folder / "db.json"))
    return Served(loop_thread, folder / "served", database=database, limits=Limits())


def test_admins_add_list_and_remove_keep_admin_accounts_in_the_stored_data(folder):
    added = admins(folder, "add", " Ops@Admins.Example", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert "ops@admins.example: new admin account" in added.stdout
    assert admins(folder, "list").stdout.split() == [ADMIN]
    assert PASSWORD not in (folder / "db.json").read_text() + "".join(
        path.read_text(errors="replace") for path in folder.glob("db.json.*.journal"))
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


def test_admins_add_while_a_server_holds_the_storage_is_refused(loop_thread, folder):
    served = serve(loop_thread, folder)
    try:
        refused = admins(folder, "add", ADMIN, "--password-stdin", stdin=PASSWORD + "\n")
        assert refused.returncode == 1 and "montybase:" in refused.stderr
    finally:
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
    }
    answers = {}
    for name, call in calls.items():
        try:
            answers[name] = call()
        except PermissionDeniedError as exc:
            answers[name] = exc.reason
    return answers


def _served_with_admin(loop_thread, folder: Path) -> Served:
    assert admins(folder, "add", ADMIN, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    served = serve(loop_thread, folder)
    owner = served.client(admin=True)
    doc(owner, "secret", "one").set({"n": 1})
    doc(owner, "notes", "a").set({"text": "open"})
    owner.close()
    return served


def test_an_admin_account_signs_in_with_the_admin_role(loop_thread, folder):
    served = _served_with_admin(loop_thread, folder)
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
    finally:
        page.close()
        served.stop()
        served.database.close()


def test_after_sign_out_an_admin_account_connection_is_a_client_again(loop_thread, folder):
    served = _served_with_admin(loop_thread, folder)
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
        served.stop()
        served.database.close()


def test_a_user_account_and_an_anonymous_client_are_denied_everything_the_console_uses(loop_thread, folder):
    served = _served_with_admin(loop_thread, folder)
    anonymous, user = served.client(), served.client()
    try:
        user.sign_up("someone@admins.example", PASSWORD)
        for handle in (anonymous, user):
            answers = _console_calls(handle)
            assert set(answers.values()) == {"PERMISSION_DENIED"}, answers
        admin_view = served.client(admin=True)
        assert doc(admin_view, "secret", "one").get() == {"n": 1}  # nothing was written
        admin_view.close()
    finally:
        anonymous.close()
        user.close()
        served.stop()
        served.database.close()


def test_signing_up_cannot_make_an_admin_account(loop_thread, folder):
    served = _served_with_admin(loop_thread, folder)
    page = served.client()
    try:
        result = page._backend.call("signUp", {"email": "new@admins.example", "password": PASSWORD})
        assert "admin" not in result
        with pytest.raises(PermissionDeniedError):
            page._backend.call("collections", {})
    finally:
        page.close()
        served.stop()
        served.database.close()


def test_failed_admin_sign_ins_are_rate_limited_and_logged(loop_thread, folder, caplog):
    served = _served_with_admin(loop_thread, folder)
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
        served.stop()
        served.database.close()


def test_an_admin_accounts_sign_in_lifts_no_limit_on_guessing_other_passwords(loop_thread, folder):
    served = _served_with_admin(loop_thread, folder)
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
        served.stop()
        served.database.close()


def test_the_rules_dry_run_answers_as_montybase_rules_test_does(loop_thread, folder):
    served = _served_with_admin(loop_thread, folder)
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
        served.stop()
        served.database.close()
