"""The server as a user runs it: real subprocesses (`python -m server`, `montybase`,
`Montybase(dev=…).run()`), signals, bad configs, the storage lock, TLS, kill -9 under load,
and the original README's examples over the network.

Every test works in a fresh tmp_path, talks only to 127.0.0.1, bounds every loop and wait,
and ends only the processes it started, through their Popen handles (tests/procs.py).
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import json
import os
import pty
import random
import re
import select
import shutil
import signal
import ssl
import stat
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/procs.py

from procs import Proc, free_port, server_command  # noqa: E402
from test_seed_readme import login, signup  # noqa: E402
from python_client import Montybase, doc, increment  # noqa: E402
from python_client.errors import (  # noqa: E402
    AlreadyExistsError,
    ConnectionLostError,
    MontybaseError,
    PermissionDeniedError,
    UnavailableError,
)

ENDPOINT = re.compile(r"^(wss?)://([^:/]+):(\d+)$")


# Helpers


def montybase_script() -> str:
    """The installed `montybase` console script, preferring the one beside this interpreter."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("montybase", path=search)
    assert found, "the montybase console script is not installed"
    return found


def start(folder: Path, *args: str, script: bool = False) -> Proc:
    command = [montybase_script(), *args] if script else server_command(*args)
    return Proc(command, cwd=folder)


def snapshot_collections(folder: Path, bucket: str = "db.json") -> dict[str, dict[str, Any]]:
    """The collections in the snapshot file, read as plain JSON (whichever of the two layouts)."""
    tree = json.loads((folder / bucket).read_text(encoding="utf-8"))
    assert isinstance(tree, dict)
    if "__montybase__" in tree:
        return tree["collections"]
    return tree


def client(url: str, folder: Path, admin: bool = False, **options: Any) -> Montybase:
    config = folder / ("montybase.json" if admin else "client-config.json")
    return Montybase(api=url, config=str(config), **options)


def call_with_deadline(fn, timeout: float = 20.0) -> Any:
    """Run fn() in a thread; its result or exception, or an AssertionError if it hangs."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed back to the test
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"the call hung for more than {timeout}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def write_config(folder: Path, **fields: Any) -> dict[str, Any]:
    """A fresh config (keys as the server makes them) with `fields` over it."""
    from server.config import create_config

    path = folder / "montybase.json"
    config = create_config(path)
    config.update(fields)
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return config


def one_error_line(proc: Proc) -> str:
    lines = [line for line in proc.stderr_lines if line.strip()]
    assert len(lines) == 1, f"expected one stderr line\n{proc.describe()}"
    assert lines[0].startswith("montybase: "), proc.describe()
    assert "Traceback" not in proc.stderr
    return lines[0]


# 1. Run from an empty folder, as the README says; stop; restart.


@pytest.mark.parametrize("script", [False, True], ids=["python-m-server", "console-script"])
def test_first_run_from_an_empty_folder_then_sigterm_and_restart(tmp_path, script):
    assert list(tmp_path.iterdir()) == []
    proc = start(tmp_path, "--port", "0", script=script)
    try:
        url = proc.endpoint()
        scheme, host, port = ENDPOINT.match(url).groups()
        assert (scheme, host) == ("ws", "127.0.0.1") and int(port) > 0
        assert Path(proc.wait_for_line("config: ")).resolve() == (tmp_path / "montybase.json").resolve()
        assert proc.wait_for_line("client config: ") == f"{tmp_path / 'client-config.json'} (endpoint {url})"
        assert stat.S_IMODE((tmp_path / "montybase.json").stat().st_mode) == 0o600, "the admin key is for its owner"

        server_config = json.loads((tmp_path / "montybase.json").read_text())
        client_config = json.loads((tmp_path / "client-config.json").read_text())
        assert server_config["apiKey"].startswith("mb-") and server_config["adminKey"].startswith("mba-")
        assert {"projectName", "apiKey", "endpoint"} <= client_config.keys()
        assert client_config["apiKey"] == server_config["apiKey"]
        assert "adminKey" not in client_config
        assert server_config["serverKey"] not in json.dumps(client_config)  # the private key stays home

        with client(url, tmp_path) as db:
            uid = doc(db, "scores").add({"name": "Amor", "score": 100})
            assert doc(db, "scores", uid).get() == {"name": "Amor", "score": 100}
            assert doc(db, "scores").set({"name": "Toriel", "score": 120}, key="toriel") == "toriel"
            assert doc(db, "scores").get() == {uid: {"name": "Amor", "score": 100},
                                               "toriel": {"name": "Toriel", "score": 120}}
        assert proc.stop(signal.SIGTERM) == 0, proc.describe()
        assert "Traceback" not in proc.stderr
    finally:
        proc.cleanup()

    stored = snapshot_collections(tmp_path)
    assert stored["scores"] == {uid: {"name": "Amor", "score": 100}, "toriel": {"name": "Toriel", "score": 120}}

    again = start(tmp_path, "--port", "0", script=script)
    try:
        url = again.endpoint()
        assert not again.stdout.startswith("created"), "a restart must not make new keys"
        assert json.loads((tmp_path / "montybase.json").read_text()) == server_config
        with client(url, tmp_path) as db:
            assert doc(db, "scores", uid).get() == {"name": "Amor", "score": 100}
            assert doc(db, "scores", "toriel").get() == {"name": "Toriel", "score": 120}
        assert again.stop(signal.SIGTERM) == 0, again.describe()
    finally:
        again.cleanup()


# 1b. A store slower to open than a second shows its progress (here: a threshold of 0 s).


def store_to_load(folder: Path) -> None:
    """A store of 2,003 documents: 2,000 in the snapshot, 3 in the journal (a server killed)."""
    from server.database import Database
    from server.storage import FileStorage

    write_config(folder)
    database = Database(FileStorage(folder / "db.json"))
    for start_at in range(0, 2000, 500):
        database.commit([{"op": "set", "path": ["c", f"d{i}"], "value": {"n": i}} for i in range(start_at, start_at + 500)])
    database.close()
    proc = start(folder, "--port", "0")
    try:
        with client(proc.endpoint(), folder, admin=True) as db:
            for i in range(3):
                doc(db, "c").set({"n": -i}, key=f"new{i}")
        proc.kill9()
    finally:
        proc.cleanup()


@pytest.mark.parametrize("after", ["0", None], ids=["slower-than-threshold", "quicker"])
def test_loading_a_store_shows_a_progress_line_then_a_last_one_when_slower_than_the_threshold(tmp_path, after):
    store_to_load(tmp_path)
    env = {} if after is None else {"MONTYBASE_LOAD_PROGRESS_AFTER": after}
    with Proc(server_command("--port", "0"), cwd=tmp_path, env=env) as proc:
        proc.endpoint()
        assert proc.stop() == 0, proc.describe()
    lines = [line for line in proc.stderr_lines if line.startswith("loading")]
    assert "loaded 2003 documents in" in proc.stderr, proc.describe()
    if after is None:  # the default threshold, 1 s: a store this small shows nothing
        assert lines == [], proc.describe()
        return
    assert len(lines) == 2, proc.describe()
    assert re.fullmatch(r"loading db\.json: 2000/2003 documents, .+ so far", lines[0]), lines
    assert re.fullmatch(r"loading db\.json: 2003/2003 documents, .+ so far", lines[1]), lines


def test_loading_progress_on_a_terminal_is_a_bar(tmp_path):
    store_to_load(tmp_path)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    process = subprocess.Popen(server_command("--port", "0"), cwd=tmp_path, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=follower,
                               env={**os.environ, "MONTYBASE_LOAD_PROGRESS_AFTER": "0", "COLUMNS": "100"})
    os.close(follower)
    shown = b""
    try:
        deadline = time.monotonic() + 30
        while b"loaded 2003 documents" not in shown and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.5)[0]:
                try:
                    shown += os.read(leader, 4096)
                except OSError:  # the terminal's other end closed: the server ended
                    break
            elif process.poll() is not None:
                break
    finally:
        process.terminate()  # the process started above, by its handle
        process.wait(20)
        os.close(leader)
    text = shown.decode("utf-8", "replace")
    assert "loading db.json" in text and "2003/2003" in text and "\r" in text and "█" in text, text


# 2. SIGINT, and a stop under write load.


def test_sigint_exits_0_with_a_snapshot(tmp_path):
    proc = start(tmp_path, "--port", "0")
    try:
        url = proc.endpoint()
        with client(url, tmp_path) as db:
            ids = [doc(db, "posts").add({"n": n}) for n in range(20)]
            doc(db, "posts").update({"n": increment(100)}, key=ids[0])
        assert proc.stop(signal.SIGINT) == 0, proc.describe()
        assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    finally:
        proc.cleanup()
    posts = snapshot_collections(tmp_path)["posts"]
    assert posts == {uid: {"n": 100 if n == 0 else n} for n, uid in enumerate(ids)}


def test_sigterm_under_write_load_keeps_every_acknowledged_write_in_the_snapshot(tmp_path):
    """Stop accepting, finish in-flight writes, snapshot: db.json alone holds every acknowledged write."""
    proc = start(tmp_path, "--port", "0")
    acked: list[set[str]] = [set() for _ in range(3)]
    done = threading.Event()

    def writer(number: int, url: str) -> None:
        try:
            with client(url, tmp_path) as db:
                for i in range(100_000):
                    if done.is_set():
                        return
                    key = f"w{number}-{i}"
                    doc(db, "load").set({"i": i}, key=key)
                    acked[number].add(key)
        except MontybaseError:
            return

    try:
        url = proc.endpoint()
        threads = [threading.Thread(target=writer, args=(n, url), daemon=True) for n in range(3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while sum(map(len, acked)) < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sum(map(len, acked)) >= 50, proc.describe()
        proc.send(signal.SIGTERM)
        code = proc.wait()
        done.set()
        for thread in threads:
            thread.join(15)
            assert not thread.is_alive(), "a client call hung after the server stopped"
        assert code == 0, proc.describe()
    finally:
        done.set()
        proc.cleanup()
    stored = snapshot_collections(tmp_path).get("load", {})
    everything = set().union(*acked)
    assert everything <= stored.keys(), f"lost on a clean stop: {sorted(everything - stored.keys())[:10]}"


# 3. Bad configs.


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"storageMinCount": 0}, "storageMinCount"),
        ({"port": "eighty"}, "port"),
        ({"hot": "yes"}, "hot"),
        ({"tls": {"certfile": "cert.pem"}}, "tls"),
        ({"storageMinCount": 1, "nonsense": True}, "nonsense"),
        ({"serverKey": "bm90IGEga2V5"}, "serverKey"),
    ],
    ids=["storageMinCount-0", "port-string", "hot-string", "tls-without-keyfile", "unknown-field", "serverKey-garbage"],
)
def test_a_bad_config_field_is_one_line_naming_it_and_exit_1(tmp_path, config, field):
    path = tmp_path / "montybase.json"
    text = json.dumps(config)
    path.write_text(text, encoding="utf-8")
    proc = start(tmp_path, "--config", "montybase.json", "--port", "0")
    try:
        assert proc.wait() == 1, proc.describe()
        line = one_error_line(proc)
        assert "montybase.json" in line and field in line, line
        assert "endpoint:" not in proc.stdout
    finally:
        proc.cleanup()
    assert path.read_text(encoding="utf-8") == text, "a bad config must never be replaced"
    assert not (tmp_path / "db.json").exists()


@pytest.mark.parametrize("text", ["{not json", "", '{"port": 8765,}', "[]"], ids=["garbage", "empty", "trailing-comma", "array"])
def test_an_invalid_json_config_is_exit_1_with_one_line(tmp_path, text):
    path = tmp_path / "montybase.json"
    path.write_text(text, encoding="utf-8")
    proc = start(tmp_path, "--port", "0")
    try:
        assert proc.wait() == 1, proc.describe()
        line = one_error_line(proc)
        assert "montybase.json" in line, line
    finally:
        proc.cleanup()
    assert path.read_text(encoding="utf-8") == text, "a bad config must never be replaced"


@pytest.mark.parametrize("missing", ["certfile", "keyfile"])
def test_a_missing_tls_file_is_exit_1_with_one_line_naming_the_file_and_field(tmp_path, missing):
    self_signed_certificate(tmp_path)
    files = {"certfile": "cert.pem", "keyfile": "key.pem", missing: f"missing-{missing}.pem"}
    write_config(tmp_path, tls=files)
    proc = start(tmp_path, "--port", "0")
    try:
        assert proc.wait() == 1, proc.describe()
        line = one_error_line(proc)
        assert f"tls.{missing}" in line and str(tmp_path / f"missing-{missing}.pem") in line, line
        assert "endpoint:" not in proc.stdout
    finally:
        proc.cleanup()


def test_a_tls_key_that_does_not_match_the_certificate_is_one_line_naming_both(tmp_path):
    self_signed_certificate(tmp_path)
    (tmp_path / "other").mkdir()
    self_signed_certificate(tmp_path / "other")
    write_config(tmp_path, tls={"certfile": "cert.pem", "keyfile": "other/key.pem"})
    proc = start(tmp_path, "--port", "0")
    try:
        assert proc.wait() == 1, proc.describe()
        line = one_error_line(proc)
        assert "cert.pem" in line and "other/key.pem" in line, line
    finally:
        proc.cleanup()


@pytest.mark.parametrize("limits", [{"maxMessageBytes": "x"}, {"bogus": 1}], ids=["wrong-type", "unknown"])
def test_a_bad_limits_field_is_one_line_naming_it_and_exit_1(tmp_path, limits):
    write_config(tmp_path, limits=limits)
    proc = start(tmp_path, "--port", "0")
    try:
        assert proc.wait() == 1, proc.describe()
        line = one_error_line(proc)
        assert "limits" in line and next(iter(limits)) in line, line
        assert "endpoint:" not in proc.stdout
    finally:
        proc.cleanup()


def test_a_port_out_of_range_on_the_command_line_is_a_clean_error(tmp_path):
    proc = start(tmp_path, "--port", "70000")
    try:
        assert proc.wait() != 0, proc.describe()
        assert "Traceback" not in proc.stderr, proc.describe()
        assert "70000" in proc.stderr or "port" in proc.stderr
    finally:
        proc.cleanup()


def test_a_restart_on_another_port_or_without_client_config_writes_it_again(tmp_path):
    write_config(tmp_path)  # as a first run leaves it, so client-config.json is the server's to keep
    first = start(tmp_path, "--port", str(free_port()))
    try:
        url = first.endpoint()
        assert json.loads((tmp_path / "client-config.json").read_text())["endpoint"] == url
    finally:
        assert first.stop() == 0, first.describe()
        first.cleanup()
    shipped = json.loads((tmp_path / "client-config.json").read_text())
    (tmp_path / "client-config.json").write_text(json.dumps({**shipped, "appVersion": 3}))

    moved = start(tmp_path, "--port", str(free_port()))
    try:
        url = moved.endpoint()
        assert url != shipped["endpoint"]
        assert moved.wait_for_line("client config: ").endswith(f"(endpoint {url}, updated)")
        assert json.loads((tmp_path / "client-config.json").read_text()) == {**shipped, "endpoint": url, "appVersion": 3}
        with Montybase(config=str(tmp_path / "client-config.json")) as db:  # no api=: the endpoint in the file
            doc(db, "scores").add({"score": 1})
    finally:
        moved.cleanup()

    (tmp_path / "client-config.json").unlink()
    again = start(tmp_path, "--port", "0")
    try:
        url = again.endpoint()
        assert json.loads((tmp_path / "client-config.json").read_text()) == {**shipped, "endpoint": url}
    finally:
        again.cleanup()


def test_a_public_endpoint_in_the_config_is_what_client_config_names(tmp_path):
    write_config(tmp_path, publicEndpoint="wss://example.org")
    proc = start(tmp_path, "--port", "0")
    try:
        url = proc.endpoint()
        assert json.loads((tmp_path / "client-config.json").read_text())["endpoint"] == "wss://example.org"
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                url.replace("ws://", "http://") + "/client-config.json", timeout=5) as answer:
            assert json.loads(answer.read())["endpoint"] == "wss://example.org"
    finally:
        proc.cleanup()


def test_a_public_endpoint_list_is_what_client_config_names_and_a_bad_entry_is_named(tmp_path):
    nodes = ["wss://a.example.org", "wss://b.example.org"]
    write_config(tmp_path, publicEndpoint=nodes)
    proc = start(tmp_path, "--port", "0")
    try:
        url = proc.endpoint()
        assert f"(endpoint {nodes[0]}, {nodes[1]}, updated)" in proc.wait_for_line("client config: ")
        assert json.loads((tmp_path / "client-config.json").read_text())["endpoint"] == nodes
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                url.replace("ws://", "http://") + "/client-config.json", timeout=5) as answer:
            assert json.loads(answer.read())["endpoint"] == nodes
    finally:
        proc.cleanup()
    config = json.loads((tmp_path / "montybase.json").read_text())
    (tmp_path / "montybase.json").write_text(json.dumps({**config, "publicEndpoint": [nodes[0], "b.example.org"]}))
    refused = start(tmp_path, "--port", "0")
    try:
        assert refused.wait() != 0
        assert "publicEndpoint/1" in one_error_line(refused), refused.describe()
    finally:
        refused.cleanup()


# 3b. The static folder never publishes a secret.


@pytest.mark.parametrize(
    ("fields", "what"),
    [({"static": "."}, "the config"), ({"static": "data", "storageBucket": "data/db.json"}, "the storage"),
     ({"static": "site", "tls": {"certfile": "cert.pem", "keyfile": "site/key.pem"}}, "the TLS key")],
    ids=["config", "storage", "tls-key"],
)
def test_a_static_folder_holding_a_secret_refuses_to_start_in_one_line(tmp_path, fields, what):
    for folder in ("data", "site"):
        (tmp_path / folder).mkdir()
    self_signed_certificate(tmp_path)
    shutil.copy(tmp_path / "key.pem", tmp_path / "site" / "key.pem")
    write_config(tmp_path, **fields)
    proc = start(tmp_path, "--port", "0")
    try:
        assert proc.wait() == 1, proc.describe()
        line = one_error_line(proc)
        assert "static" in line and what in line, line
        assert "endpoint:" not in proc.stdout
    finally:
        proc.cleanup()


def test_the_static_folder_given_on_the_command_line_is_checked_too(tmp_path):
    write_config(tmp_path)
    proc = start(tmp_path, "--port", "0", "--static", ".")
    try:
        assert proc.wait() == 1, proc.describe()
        assert "the config" in one_error_line(proc)
    finally:
        proc.cleanup()


def test_a_missing_static_folder_is_a_warning_at_start(tmp_path):
    write_config(tmp_path, static="sitee")
    proc = start(tmp_path, "--port", "0")
    try:
        proc.endpoint()
        assert re.search(r"WARNING .*static folder .*sitee does not exist", proc.stderr), proc.describe()
    finally:
        proc.cleanup()


def test_a_first_run_on_a_given_port_writes_that_endpoint_into_client_config(tmp_path):
    port = free_port()
    proc = start(tmp_path, "--host", "127.0.0.1", "--port", str(port))
    try:
        url = proc.endpoint()
        assert url == f"ws://127.0.0.1:{port}"
        assert json.loads((tmp_path / "client-config.json").read_text())["endpoint"] == url
    finally:
        proc.cleanup()


# 4. The storage lock.


@pytest.mark.parametrize("lock_file", ["kept", "removed"])
def test_a_second_server_on_the_same_storage_exits_1_naming_the_first(tmp_path, lock_file):
    first = start(tmp_path, "--port", "0")
    second = None
    try:
        url = first.endpoint()
        with client(url, tmp_path) as db:
            doc(db, "scores").set({"score": 1}, key="a")
        if lock_file == "removed":  # the lock is the first server's open journal, not this file
            (tmp_path / "db.json.lock").unlink()
        second = start(tmp_path, "--port", "0")
        assert second.wait() == 1, second.describe()
        line = one_error_line(second)
        assert re.search(rf"\b{first.pid}\b", line), f"the holder's pid {first.pid} is not named: {line}"
        assert "endpoint:" not in second.stdout
        # The first server is untouched by the attempt.
        with client(url, tmp_path) as db:
            assert doc(db, "scores", "a").get() == {"score": 1}
            doc(db, "scores").set({"score": 2}, key="b")
        assert first.stop() == 0, first.describe()
    finally:
        if second is not None:
            second.cleanup()
        first.cleanup()
    assert snapshot_collections(tmp_path)["scores"] == {"a": {"score": 1}, "b": {"score": 2}}


# 5. Montybase(dev=…) / Montybase(endpoint=True) .run() in a subprocess.


def run_script(folder: Path, construct: str) -> Proc:
    source = textwrap.dedent(f"""
        from montybase import *
        mb = Montybase({construct})
        mb.run()
    """)
    return Proc([sys.executable, "-c", source], cwd=folder)


def serve_and_use(folder: Path, construct: str, printed: str, connect: str) -> Proc:
    proc = run_script(folder, construct)
    try:
        assert proc.endpoint() == printed, proc.describe()
        said = proc.wait_for_line("client config: ")
        assert said in (f"{folder / 'client-config.json'} (endpoint {connect}{note})" for note in ("", ", updated")), said
        assert json.loads((folder / "client-config.json").read_text())["endpoint"] == connect
        with Montybase(config=str(folder / "client-config.json")) as db:  # the client config alone
            uid = doc(db, "scores").add({"name": "Amor", "score": 100})
            assert doc(db, "scores", uid).get() == {"name": "Amor", "score": 100}
        assert proc.stop(signal.SIGTERM) == 0, proc.describe()
        assert "Traceback" not in proc.stderr
    finally:
        proc.cleanup()
    assert snapshot_collections(folder)["scores"] == {uid: {"name": "Amor", "score": 100}}
    return proc


def test_dev_host_port_run_serves_and_says_so_as_the_cli_does(tmp_path):
    port = free_port()
    proc = serve_and_use(tmp_path, f'dev="127.0.0.1:{port}"', f"ws://127.0.0.1:{port}", f"ws://127.0.0.1:{port}")
    assert proc.stdout.startswith(f"created {tmp_path / 'montybase.json'}"), proc.describe()
    assert re.search(r"INFO montybase.server: connection \d+ authenticated as client", proc.stderr), proc.describe()


def test_dev_true_serves_on_the_port_of_the_config(tmp_path):
    port = free_port()
    write_config(tmp_path, port=port)  # 8765 by default; a free one here, so the test never needs 8765
    serve_and_use(tmp_path, "dev=True", f"ws://127.0.0.1:{port}", f"ws://127.0.0.1:{port}")


def test_endpoint_true_serves_every_address_and_gives_apps_one_they_can_connect_to(tmp_path):
    port = free_port()
    write_config(tmp_path, port=port)
    proc = serve_and_use(tmp_path, "endpoint=True", f"ws://0.0.0.0:{port}", f"ws://127.0.0.1:{port}")
    assert "set publicEndpoint" in proc.stdout, proc.describe()


def test_run_on_a_handle_of_a_server_is_a_clear_invalid_argument(tmp_path):
    from python_client.errors import InvalidArgumentError

    write_config(tmp_path)
    handle = Montybase(api="ws://127.0.0.1:9", config=str(tmp_path / "montybase.json"))  # never connected
    try:
        with pytest.raises(InvalidArgumentError, match="run\\(\\) serves an embedded database.*ws://127.0.0.1:9"):
            handle.run()
    finally:
        handle.close()


# 6. TLS.


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return certfile, keyfile


def test_tls_serves_wss_to_a_client_that_trusts_the_certificate(tmp_path):
    certfile, _ = self_signed_certificate(tmp_path)
    write_config(tmp_path, tls={"certfile": "cert.pem", "keyfile": "key.pem"})  # relative to the config
    proc = start(tmp_path, "--port", "0")
    try:
        url = proc.endpoint()
        scheme, host, port = ENDPOINT.match(url).groups()
        assert (scheme, host) == ("wss", "127.0.0.1"), url
        trust = ssl.create_default_context(cafile=str(certfile))
        with client(url, tmp_path, ssl_context=trust) as db:
            uid = doc(db, "scores").add({"name": "Amor", "score": 100})
            assert doc(db, "scores", uid).get() == {"name": "Amor", "score": 100}
        # https:// means wss://
        with client(f"https://127.0.0.1:{port}/", tmp_path, ssl_context=trust) as db:
            assert doc(db, "scores", uid).get() == {"name": "Amor", "score": 100}

        # Without the trust: an error, promptly, not a hang.
        untrusting = client(url, tmp_path)
        try:
            with pytest.raises(MontybaseError) as refused:
                call_with_deadline(lambda: doc(untrusting, "scores", uid).get())
            assert isinstance(refused.value, (ConnectionLostError, UnavailableError)), repr(refused.value)
        finally:
            untrusting.close()
        # Plain ws:// to the TLS port: an error too.
        plain = client(f"ws://127.0.0.1:{port}", tmp_path)
        try:
            with pytest.raises(MontybaseError):
                call_with_deadline(lambda: doc(plain, "scores", uid).get())
        finally:
            plain.close()

        assert proc.stop() == 0, proc.describe()
    finally:
        proc.cleanup()


# 7. kill -9 under write load with hot: true.


CYCLES = 5
WRITERS = 4


class Ledger:
    """What the writer threads issued and what the server acknowledged."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.issued: set[str] = set()
        self.acked: set[str] = set()
        self.increments_issued: dict[str, int] = {}
        self.increments_acked: dict[str, int] = {}
        self.unexpected: list[BaseException] = []


def load_writer(url: str, folder: Path, cycle: int, number: int, ledger: Ledger, stop: threading.Event) -> None:
    counter = f"c{cycle}-t{number}"
    try:
        db = client(url, folder)
    except BaseException as exc:
        with ledger.lock:
            ledger.unexpected.append(exc)
        return
    try:
        for i in range(1_000_000):
            if stop.is_set():
                return
            key = f"c{cycle}-t{number}-{i}"
            with ledger.lock:
                ledger.issued.add(key)
            doc(db, "load").set({"cycle": cycle, "writer": number, "i": i}, key=key)
            with ledger.lock:
                ledger.acked.add(key)
                ledger.increments_issued[counter] += 1
            doc(db, "counters").update({"n": increment(1)}, key=counter)
            with ledger.lock:
                ledger.increments_acked[counter] += 1
    except (ConnectionLostError, UnavailableError):
        return  # the server was killed under this call: expected
    except BaseException as exc:
        with ledger.lock:
            ledger.unexpected.append(exc)
    finally:
        db.close()


def check_recovered(url: str, folder: Path, ledger: Ledger) -> int:
    with client(url, folder, admin=True) as db:
        stored = doc(db, "load").get()
        counters = doc(db, "counters").get()
    lost = ledger.acked - stored.keys()
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {sorted(lost)[:5]}"
    invented = stored.keys() - ledger.issued
    assert not invented, f"documents nobody wrote: {sorted(invented)[:5]}"
    for key, value in stored.items():
        cycle, number, i = re.fullmatch(r"c(\d+)-t(\d+)-(\d+)", key).groups()
        assert value == {"cycle": int(cycle), "writer": int(number), "i": int(i)}, (key, value)
    for counter, acked in ledger.increments_acked.items():
        n = counters[counter]["n"]
        assert acked <= n <= ledger.increments_issued[counter], (counter, acked, n, ledger.increments_issued[counter])
    return len(stored)


def test_kill_9_under_hot_write_load_loses_no_acknowledged_write(tmp_path):
    seed = int(os.environ.get("MONTYBASE_TEST_SEED", time.time_ns() % 2**32))
    print(f"kill -9 test seed: {seed} (MONTYBASE_TEST_SEED={seed} repeats it)")
    rng = random.Random(seed)
    write_config(tmp_path, hot=True)
    ledger = Ledger()
    started = time.monotonic()
    for cycle in range(CYCLES):
        proc = start(tmp_path, "--port", "0")
        stop = threading.Event()
        threads: list[threading.Thread] = []
        try:
            url = proc.endpoint()
            check_recovered(url, folder=tmp_path, ledger=ledger)
            with client(url, tmp_path) as db:
                for number in range(WRITERS):
                    counter = f"c{cycle}-t{number}"
                    doc(db, "counters").set({"n": 0}, key=counter)
                    ledger.increments_issued[counter] = ledger.increments_acked[counter] = 0
            threads = [
                threading.Thread(target=load_writer, args=(url, tmp_path, cycle, n, ledger, stop), daemon=True)
                for n in range(WRITERS)
            ]
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.3, 1.0))
            proc.kill9()
            assert proc.popen.returncode == -signal.SIGKILL
        finally:
            stop.set()
            proc.cleanup()
            for thread in threads:
                thread.join(15)
        assert not any(thread.is_alive() for thread in threads), "a client call hung after kill -9"
        assert not ledger.unexpected, f"unexpected client errors: {ledger.unexpected[:3]!r}"
    final = start(tmp_path, "--port", "0")
    try:
        count = check_recovered(final.endpoint(), tmp_path, ledger)
        assert final.stop() == 0, final.describe()
    finally:
        final.cleanup()
    assert len(ledger.acked) > 0 and count >= len(ledger.acked)
    print(f"{CYCLES} kill -9 cycles: {len(ledger.acked)} acknowledged, {count} stored, "
          f"{time.monotonic() - started:.1f}s")


# 8. The original README's examples (tests/test_seed_readme.py) against a server, through the client key.


def test_original_readme_examples_over_the_network_with_the_client_key(tmp_path):
    proc = start(tmp_path, "--port", "0")
    try:
        url = proc.endpoint()
        with client(url, tmp_path) as db:
            assert signup(db, "amor.budiyanto@gmail.com", "hunter2") == "amor.budiyanto@gmail.com"
            with pytest.raises(ValueError, match="already exists"):
                signup(db, "amor.budiyanto@gmail.com", "other")
            with pytest.raises(AlreadyExistsError):  # the race signup's check cannot see
                doc(db, "users").add({"password": "other"}, key="amor.budiyanto@gmail.com")
            assert login(db, "amor.budiyanto@gmail.com", "hunter2") == {"password": "hunter2"}
            with pytest.raises(ValueError, match="incorect"):
                login(db, "amor.budiyanto@gmail.com", "wrong")
            with pytest.raises(ValueError, match="doesn't exist"):
                login(db, "nobody@example.com", "x")

            ref = doc(db, "people")
            uid = ref.set({"name": "Amor"})
            new_ref = ref.append(uid)
            assert new_ref.get() == {"name": "Amor"}
            assert ref.set({"name": "Amor"}, key="amor.budiyanto@gmail.com") == "amor.budiyanto@gmail.com"
            assert ref.append("amor.budiyanto@gmail.com").exist() is True
            uid = ref.set({"name": "Amor", "score": 100})
            new_ref = ref.append(uid)
            new_ref.update({"score": 120})
            assert new_ref.get() == {"name": "Amor", "score": 120}

            scores = doc(db, "scores")
            first = scores.set({"name": "Amor", "score": 100})
            scores.add({"name": "Toriel", "score": 120})
            scores.add({"name": "Isaac", "score": 130})
            assert [d["value"]["name"] for d in scores.stream()] == ["Amor", "Toriel", "Isaac"]
            assert [d["value"]["name"] for d in scores.where("score", ">", 100).stream()] == ["Toriel", "Isaac"]
            assert scores.delete(first) == {"name": "Amor", "score": 100}

            # What the client key may not do.
            with pytest.raises(PermissionDeniedError):
                doc(db).get()
            with pytest.raises(PermissionDeniedError):
                doc(db, "scores").delete()
            assert scores.count() == 2

        with client(url, tmp_path, admin=True) as admin:
            assert doc(admin, "users").get() == {"amor.budiyanto@gmail.com": {"password": "hunter2"}}
        assert proc.stop() == 0, proc.describe()
    finally:
        proc.cleanup()
    assert snapshot_collections(tmp_path)["users"] == {"amor.budiyanto@gmail.com": {"password": "hunter2"}}
