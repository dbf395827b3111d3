"""The operator's commands as the README shows them, run as subprocesses from a fresh folder:
`montybase --help`, `reload` (and SIGHUP), `keys rotate`, `rules check`, `rules test`, the log flags.

Servers are real processes on 127.0.0.1 (port 0); every wait has a deadline; each test ends only
the processes it started (tests/procs.py).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/procs.py, tests/test_cli.py

from conftest import NO_SERVER, ON_POSTGRES, server_config  # noqa: E402
from procs import Proc  # noqa: E402
from test_cli import client, montybase_script, start  # noqa: E402
from python_client import Montybase, doc  # noqa: E402
from python_client.errors import PermissionDeniedError, UnauthenticatedError  # noqa: E402

OPEN = {"read": "public", "write": "public"}


def montybase(folder: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`montybase ARGS` in `folder`, as a user types it."""
    return subprocess.run([montybase_script(), *args], cwd=folder, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def log_line(proc: Proc, text: str, timeout: float = 20) -> str:
    """The first stderr line of `proc` that holds `text`; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in proc.stderr_lines if text in line]
        if found:
            return found[0]
        if proc.popen.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no log line with {text!r}\n{proc.describe()}")


def reload(folder: Path, proc: Proc) -> None:
    """Have the server `proc` read montybase.json again as its operator would: `montybase reload`;
    for a node on PostgreSQL, which holds no lock the command could find it by, the command says
    so and SIGHUP does it (README, "Reload")."""
    done = montybase(folder, "reload")
    if ON_POSTGRES:
        assert done.returncode == 1 and "send SIGHUP to each node's process" in done.stderr, done.stderr
        proc.send(signal.SIGHUP)
    else:
        assert done.returncode == 0, done.stderr
        assert f"process {proc.pid}" in done.stdout


def edit_config(folder: Path, **fields: Any) -> None:
    path = folder / "montybase.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config, indent=2))


# The command line


@NO_SERVER
def test_help_lists_every_command_and_each_shows_an_example(tmp_path):
    top = montybase(tmp_path, "--help")
    assert top.returncode == 0
    for name in ("serve", "reload", "keys", "rules", "admins"):
        assert f"    {name}" in top.stdout, top.stdout
    for command in (["serve"], ["reload"], ["keys", "rotate"], ["rules", "check"], ["rules", "test"],
                    ["admins", "add"], ["admins", "list"], ["admins", "remove"]):
        shown = montybase(tmp_path, *command, "--help")
        assert shown.returncode == 0, shown.stderr
        assert f"example:\n  montybase {command[0]}" in shown.stdout, shown.stdout
    assert montybase(tmp_path, "--version").stdout.startswith("montybase ")
    assert list(tmp_path.iterdir()) == [], "asking for help makes no files"


@NO_SERVER
def test_a_command_without_a_config_says_so_in_one_line_and_makes_none(tmp_path):
    for command in (["reload"], ["keys", "rotate", "--client"], ["rules", "check"]):
        done = montybase(tmp_path, *command)
        assert done.returncode == 1 and done.stderr.startswith("montybase: no config at "), done.stderr
        assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_serve_subcommand_serves_as_montybase_alone_does(tmp_path):
    server_config(tmp_path / "montybase.json")
    with start(tmp_path, "serve", "--port", "0", script=True) as proc:
        url = proc.endpoint()
        with client(url, tmp_path) as db:
            doc(db, "scores").add({"score": 1})
        assert "loaded 0 documents in " in log_line(proc, "loaded ")
        assert proc.stop() == 0, proc.describe()


@pytest.mark.not_on_postgres("a first run from an empty folder: the server makes montybase.json, with a file storage")
def test_the_operating_commands_of_the_readme_work_as_shown_from_an_empty_folder(tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Operating", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [shlex.split(line, comments=True) for line in block.splitlines()]
    assert lines[0] == ["montybase"] and all(line[0] == "montybase" for line in lines)
    with start(tmp_path, "--port", "0", script=True) as proc:  # the first line, on a free port
        proc.endpoint()
        for line in lines[1:]:
            done = montybase(tmp_path, *line[1:])
            assert done.returncode == 0, f"{line}: {done.stdout}{done.stderr}"
        assert "ALLOW update profiles/alice as user:alice" in done.stdout
        log_line(proc, "reloaded montybase.json")
        assert proc.stop() == 0, proc.describe()


# Reload


def test_reload_applies_new_rules_at_once_without_dropping_a_listening_client(tmp_path):
    server_config(tmp_path / "montybase.json", rules={"scores": OPEN})
    with start(tmp_path, "--port", "0", script=True) as proc:
        url = proc.endpoint()
        with client(url, tmp_path) as db, client(url, tmp_path, admin=True) as admin:
            seen: list[list[str]] = []
            changed = threading.Event()

            def listener(snapshot: Any) -> None:
                seen.append(sorted(item["id"] for item in snapshot.docs))
                changed.set()

            doc(db, "scores").add({"score": 1}, key="before")
            stop = doc(db, "scores").on_snapshot(listener)
            assert changed.wait(10) and seen[-1] == ["before"]

            edit_config(tmp_path, rules={"scores": {"read": "public", "write": "none"}})
            reload(tmp_path, proc)
            assert log_line(proc, "reloaded montybase.json").endswith("reloaded montybase.json: rules")

            with pytest.raises(PermissionDeniedError):  # the next write after the reload
                doc(db, "scores").add({"score": 2}, key="after")
            changed.clear()
            doc(admin, "scores").add({"score": 3}, key="admin")
            deadline = time.monotonic() + 10
            while "admin" not in seen[-1] and time.monotonic() < deadline:
                changed.wait(0.2)
            assert seen[-1] == ["admin", "before"], "the listener still listens"
            stop()
        assert len([line for line in proc.stderr_lines if "authenticated as client" in line]) == 1, \
            "the client never had to connect again"
        assert proc.popen.poll() is None, "SIGHUP no longer stops the server"
        assert proc.stop() == 0, proc.describe()


def test_a_bad_config_is_refused_by_reload_and_by_sighup_and_the_running_one_stays(tmp_path):
    server_config(tmp_path / "montybase.json", rules={"scores": OPEN})
    with start(tmp_path, "--port", "0", script=True) as proc:
        url = proc.endpoint()
        good = (tmp_path / "montybase.json").read_text()
        edit_config(tmp_path, rules={"scores": {"read": "public", "write": "everyone"}})
        done = montybase(tmp_path, "reload")
        assert done.returncode == 1 and "rules" in done.stderr and "everyone" in done.stderr, done.stderr
        assert "reload" not in proc.stderr, "a file the server would refuse is not sent to it"

        (tmp_path / "montybase.json").write_text("{not json")
        proc.send(signal.SIGHUP)
        line = log_line(proc, "refused, the running settings stay")
        assert "not valid JSON" in line and "Traceback" not in proc.stderr
        with client(url, tmp_path) as db:  # the old rules: client keys may write scores
            doc(db, "scores").add({"score": 1})
        (tmp_path / "montybase.json").write_text(good)
        assert proc.stop() == 0, proc.describe()


@pytest.mark.not_on_postgres("a server without storage, found by its config's lock (a node, found by none: reload())")
def test_reload_finds_a_server_without_storage_by_the_configs_lock(tmp_path):
    server_config(tmp_path / "montybase.json", storageBucket=":memory:", rules={"scores": OPEN})
    with start(tmp_path, "--port", "0", script=True) as proc:
        proc.endpoint()
        edit_config(tmp_path, logSlowMs=5)
        assert montybase(tmp_path, "reload").returncode == 0
        assert log_line(proc, "reloaded montybase.json").endswith(": logSlowMs")
        assert proc.stop() == 0, proc.describe()
    done = montybase(tmp_path, "reload")
    assert done.returncode == 1 and "no running server uses" in done.stderr, done.stderr


def test_a_change_that_takes_a_restart_is_said_so_and_the_rest_applies(tmp_path):
    server_config(tmp_path / "montybase.json")
    with start(tmp_path, "--port", "0", script=True) as proc:
        proc.endpoint()
        edit_config(tmp_path, hot=True, limits={"maxBatch": 10})
        reload(tmp_path, proc)
        assert log_line(proc, "reloaded").endswith(": limits")
        assert "hot changed in montybase.json: that takes a restart" in log_line(proc, "takes a restart")
        assert proc.stop() == 0, proc.describe()


# Keys


def test_keys_rotate_with_grace_keeps_the_old_client_key_until_it_ends(tmp_path):
    server_config(tmp_path / "montybase.json", rules={"scores": OPEN})
    with start(tmp_path, "--port", "0", script=True) as proc:
        url = proc.endpoint()
        shipped = tmp_path / "shipped-client-config.json"  # a page deployed before the rotation
        shipped.write_text((tmp_path / "client-config.json").read_text())
        before = json.loads((tmp_path / "montybase.json").read_text())

        done = montybase(tmp_path, "keys", "rotate", "--client", "--grace", "4s")
        assert done.returncode == 0, done.stderr
        assert "the old one is accepted until" in done.stdout and "montybase reload" in done.stdout
        after = json.loads((tmp_path / "montybase.json").read_text())
        assert stat.S_IMODE((tmp_path / "montybase.json").stat().st_mode) == 0o600
        assert after["apiKey"] != before["apiKey"] and after["adminKey"] == before["adminKey"]
        assert [old["key"] for old in after["previousApiKeys"]] == [before["apiKey"]]
        assert json.loads((tmp_path / "client-config.json").read_text())["apiKey"] == after["apiKey"]
        reload(tmp_path, proc)
        log_line(proc, "reloaded montybase.json")

        with client(url, tmp_path) as new, Montybase(api=url, config=str(shipped)) as old:
            doc(new, "scores").add({"by": "new"})
            doc(old, "scores").add({"by": "old"})
        time.sleep(max(0.0, after["previousApiKeys"][0]["until"] - time.time()) + 0.5)
        with Montybase(api=url, config=str(shipped)) as old:
            with pytest.raises(UnauthenticatedError):
                doc(old, "scores").add({"by": "old, too late"})
        assert "the key hint matches no client key" in log_line(proc, "key hint")
        with client(url, tmp_path) as new:
            doc(new, "scores").add({"by": "new, still"})
        assert proc.stop() == 0, proc.describe()


def test_keys_rotate_admin_and_server_and_drops_expired_grace(tmp_path):
    config = server_config(tmp_path / "montybase.json",
                           previousApiKeys=[{"key": "mb-long-gone-0123456789", "until": 1}])
    done = montybase(tmp_path, "keys", "rotate", "--admin", "--server")
    assert done.returncode == 0, done.stderr
    after = json.loads((tmp_path / "montybase.json").read_text())
    assert after["apiKey"] == config["apiKey"]
    assert after["adminKey"] != config["adminKey"] and after["serverKey"] != config["serverKey"]
    assert "previousApiKeys" not in after
    shipped = json.loads((tmp_path / "client-config.json").read_text())
    from server.config import public_key
    assert shipped["serverKey"] == public_key(after["serverKey"])
    for wrong in (["--grace", "1h"], ["--admin", "--grace", "1h"], ["--client", "--grace", "soon"]):
        refused = montybase(tmp_path, "keys", "rotate", *wrong)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    assert json.loads((tmp_path / "montybase.json").read_text()) == after, "a refused rotation changes nothing"


# Rules


def test_rules_check_reports_collections_no_rule_matches_even_while_the_server_runs(tmp_path):
    server_config(tmp_path / "montybase.json", rules={"scores": OPEN, "rooms/*/messages": OPEN})
    with start(tmp_path, "--port", "0", script=True) as proc:
        url = proc.endpoint()
        with client(url, tmp_path, admin=True) as admin:
            doc(admin, "scores").add({"score": 1})
            doc(admin, "rooms", "r1", "messages").add({"text": "hi"})
            doc(admin, "logs").add({"line": 1})
            doc(admin, "logs").add({"line": 2})
        done = montybase(tmp_path, "rules", "check")  # reads the journal; takes no lock
        assert done.returncode == 0, done.stderr
        assert "2 rules, every one valid" in done.stdout
        assert "no rule matches collection logs (2 documents)" in done.stdout
        assert "rooms" not in done.stdout and "scores" not in done.stdout
        assert proc.stop() == 0, proc.describe()


def test_rules_check_names_every_bad_rule_and_exits_1(tmp_path):
    server_config(tmp_path / "montybase.json", rules={"scores": {"read": "public", "schema": {"type": "nonsense"}},
                                  "posts": {"read": "public", "rate": {"create": "0/min"}},
                                  "fine": OPEN})
    done = montybase(tmp_path, "rules", "check")
    assert done.returncode == 1
    assert "/rules/scores/schema" in done.stdout and "/rules/posts/rate" in done.stdout
    assert "2 of 3 rules are bad" in done.stdout


RULES = {
    "scores": {"read": "public", "create": "public",
               "schema": {"type": "object", "required": ["score"], "properties": {"score": {"type": "integer"}}}},
    "notes": {"read": "owner", "write": "owner", "owner": "ownerId"},
    "profiles": {"read": "public", "write": "owner"},
}


@pytest.mark.parametrize(("args", "code", "said"), [
    (["create", "scores/a", "--value", '{"score": 5}'], 0, 'ALLOW create scores/a as anonymous (rule "scores": create is public)'),
    (["create", "scores/a", "--value", '{"score": "high"}'], 1, "VALIDATION_FAILED"),
    (["update", "scores/a"], 1, 'DENY update scores/a as anonymous (rule "scores": update is none'),
    (["list", "scores"], 0, "ALLOW list scores"),
    (["get", "logs/1"], 1, "no rule matches logs: denied by default"),
    (["--as", "user:ann", "update", "profiles/ann"], 0, 'ALLOW update profiles/ann as user:ann (rule "profiles"'),
    (["--as", "user:bob", "update", "profiles/ann"], 1, "DENY update profiles/ann as user:bob"),
    (["--as", "anonymous", "get", "profiles/ann"], 0, "ALLOW get profiles/ann"),
    (["--as", "admin", "delete", "logs/1"], 0, "ALLOW delete logs/1 as admin (the admin key passes every rule)"),
    (["--as", "user:ann", "list", "notes"], 0, "only the documents this user owns"),
], ids=["schema-ok", "schema-fails", "no-grant", "list", "no-rule", "owner-by-id", "not-the-owner", "public-read",
        "admin", "owner-list"])
def test_rules_test_answers_allow_or_deny_with_the_rule_that_decided(tmp_path, args, code, said):
    server_config(tmp_path / "montybase.json", rules=RULES, storageBucket=":memory:")
    done = montybase(tmp_path, "rules", "test", *args)
    assert done.returncode == code, done.stdout + done.stderr
    assert said in done.stdout, done.stdout


def test_rules_test_reads_the_stored_owner_of_a_document_when_the_rule_needs_it(tmp_path):
    server_config(tmp_path / "montybase.json", rules=RULES)
    with start(tmp_path, "--port", "0", script=True) as proc:
        url = proc.endpoint()
        with client(url, tmp_path, admin=True) as admin:
            doc(admin, "notes").set({"ownerId": "ann", "text": "mine"}, key="n1")
        assert proc.stop() == 0, proc.describe()
    assert montybase(tmp_path, "rules", "test", "--as", "user:ann", "get", "notes/n1").returncode == 0
    denied = montybase(tmp_path, "rules", "test", "--as", "user:bob", "get", "notes/n1")
    assert denied.returncode == 1 and denied.stdout.startswith("DENY get notes/n1 as user:bob"), denied.stdout
    bad = montybase(tmp_path, "rules", "test", "get", "notes")
    assert bad.returncode == 1 and "takes a document path" in bad.stderr


# Logs


def test_json_log_lines_and_the_log_level(tmp_path):
    server_config(tmp_path / "montybase.json")
    with start(tmp_path, "--port", "0", "--log-format", "json", script=True) as proc:
        proc.endpoint()
        started = json.loads(log_line(proc, "serving"))
        assert started["level"] == "info" and started["logger"] == "montybase" and "time" in started
        assert proc.stop() == 0, proc.describe()
        assert all(json.loads(line) for line in proc.stderr_lines if line.strip())
    with start(tmp_path, "--port", "0", "--log-level", "warning", script=True) as proc:
        proc.endpoint()
        log_line(proc, "opens every collection")  # a warning
        assert proc.stop() == 0, proc.describe()
        assert " INFO " not in proc.stderr, proc.stderr


def test_an_http_request_followed_by_other_bytes_logs_one_line_and_no_traceback(tmp_path):
    server_config(tmp_path / "montybase.json")
    with start(tmp_path, "--port", "0", script=True) as proc:
        host, port = proc.endpoint().removeprefix("ws://").split(":")
        for _ in range(15):
            with socket.create_connection((host, int(port)), timeout=5) as raw:
                raw.sendall(b"GET /montybase.js HTTP/1.1\r\nHost: x\r\n\r\nNOT A WEBSOCKET FRAME\r\n\r\n")
                raw.settimeout(5)
                while raw.recv(4096):
                    pass
        log_line(proc, "suppressed")
        assert proc.stop() == 0, proc.describe()
        assert "Traceback" not in proc.stderr and "AssertionError" not in proc.stderr, proc.stderr
        lines = [line for line in proc.stderr_lines if "bytes after its HTTP request" in line]
        assert len(lines) == 10, "at most 10 lines a minute from one address, then one line saying so"


def test_the_start_up_line_says_how_many_documents_were_loaded(tmp_path):
    server_config(tmp_path / "montybase.json")
    with start(tmp_path, "--port", "0", script=True) as proc:
        url = proc.endpoint()
        with client(url, tmp_path, admin=True) as admin:
            for n in range(3):
                doc(admin, "scores").add({"n": n})
        assert proc.stop() == 0, proc.describe()
        if not ON_POSTGRES:  # a node takes no snapshot: PostgreSQL holds the documents
            assert log_line(proc, "snapshot at record")
    with start(tmp_path, "--port", "0", script=True) as proc:
        proc.endpoint()
        assert " loaded 3 documents in " in log_line(proc, "loaded")
        assert proc.stop() == 0, proc.describe()


def test_sighup_to_a_server_started_by_python_m_server_reloads_too(tmp_path):
    from procs import server_command

    server_config(tmp_path / "montybase.json")
    with Proc(server_command("--port", "0"), cwd=tmp_path) as proc:
        proc.endpoint()
        os.kill(proc.pid, signal.SIGHUP)
        assert log_line(proc, "reloaded").endswith("nothing changed")
        assert proc.stop() == 0, proc.describe()


# The console


def _console_status(url: str) -> int:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url.replace("ws://", "http://") + "/admin/", timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_admin_false_turns_the_console_off_and_a_reload_turns_it_on(tmp_path):
    server_config(tmp_path / "montybase.json", admin=False)
    with start(tmp_path, "--port", "0") as proc:
        url = proc.endpoint()
        assert _console_status(url) == 404
        edit_config(tmp_path, admin=True)
        reload(tmp_path, proc)
        log_line(proc, "reloaded montybase.json")
        assert _console_status(url) == 200
        assert proc.stop() == 0, proc.describe()
