"""The data commands (server/commands/data.py) as an operator runs them, each a subprocess from
its folder: backup while writers run, restore, export and import, check with planted damage,
compact offline and online, and their progress on a terminal and in a pipe."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import random
import select
import shlex
import shutil
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/procs.py, tests/test_cli.py

from test_cli import client, montybase_script, start, write_config  # noqa: E402
from test_commands import montybase  # noqa: E402
from python_client import doc  # noqa: E402
from server.database import Database  # noqa: E402
from server.storage import Recovered, Storage, StorageReader, decode_snapshot  # noqa: E402


def store(folder: Path, count: int, **config: Any) -> Path:
    """A config in `folder` and `count` documents imported into its storage (some with subcollections)."""
    folder.mkdir(exist_ok=True)
    write_config(folder, **config)
    lines = [{"path": f"users/u{i}", "value": {"n": i, "name": f"user {i}", "tags": ["a", i % 7]}} for i in range(count)]
    lines += [{"path": f"users/u{i}/posts/p", "value": {"title": "é ✓"}} for i in range(0, count, 10)]
    source = folder / "seed.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    done = montybase(folder, "import", "seed.jsonl")
    assert done.returncode == 0, done.stderr
    return folder


def exported(folder: Path, *args: str) -> list[dict[str, Any]]:
    done = montybase(folder, "export", *args)
    assert done.returncode == 0, done.stderr
    return sorted((json.loads(line) for line in done.stdout.splitlines()), key=lambda line: line["path"])


class _UpTo(Storage):
    """The recovered state of a storage's files, cut after record `seq`."""

    def __init__(self, recovered: Recovered, seq: int):
        self.recovered, self.seq = recovered, seq

    def load(self) -> Recovered:
        return self.recovered._replace(records=[record for record in self.recovered.records if record[0] <= self.seq])


# backup and restore


def test_backup_while_writers_run_equals_the_state_at_its_record(tmp_path):
    # No snapshot while the test runs: every record since the start stays in the journals to compare with.
    write_config(tmp_path, storageMinCount=10**9, storageUpdate=3600)
    stop = threading.Event()
    written = [0, 0]
    with start(tmp_path, "--port", "0", script=True) as proc:
        url = proc.endpoint()

        def writer(number: int) -> None:
            with client(url, tmp_path, admin=True) as db:
                while not stop.is_set() and written[number] < 20000:
                    doc(db, "counters").set({"value": written[number], "pad": "x" * 100}, key=f"w{number}-{written[number] % 50}")
                    written[number] += 1

        threads = [threading.Thread(target=writer, args=(number,)) for number in range(2)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 20
            while sum(written) < 200 and time.monotonic() < deadline:
                time.sleep(0.02)
            before = sum(written)
            done = montybase(tmp_path, "backup", "monday.mbak")
            after = sum(written)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert done.returncode == 0, done.stderr
        assert after > before, "the writers kept writing while the backup ran"
        seq, collections, _ = decode_snapshot((tmp_path / "monday.mbak").read_bytes())
        assert before <= seq, "the backup holds every write acknowledged before it began"
        recovered = StorageReader(tmp_path / "db.json").load()
        assert recovered.records[-1][0] > seq, "writes went on after the backup's record"
        expected = Database(_UpTo(recovered, seq))
        assert collections == {path: docs for path, docs in expected.tree.collections.items() if docs}
        assert proc.stop() == 0


def test_restore_gives_exactly_the_backed_up_state_and_keeps_the_replaced_files(tmp_path):
    store(tmp_path, 300)
    assert montybase(tmp_path, "backup", "b.mbak").returncode == 0
    backed_up = exported(tmp_path)
    montybase(tmp_path, "import", "-", "--into", "extra/x")  # nothing on stdin: no change
    (tmp_path / "more.jsonl").write_text(json.dumps({"path": "users/new", "value": {"n": -1}}) + "\n")
    assert montybase(tmp_path, "import", "more.jsonl").returncode == 0
    refused = montybase(tmp_path, "restore", "b.mbak")
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert len(exported(tmp_path)) == len(backed_up) + 1, "a refused restore changes nothing"
    done = montybase(tmp_path, "restore", "b.mbak", "--force")
    assert done.returncode == 0, done.stderr
    assert exported(tmp_path) == backed_up
    aside = [path for path in tmp_path.iterdir() if path.name.startswith("db.json.before-restore-")]
    assert len(aside) == 1 and (aside[0] / "db.json").exists()


def test_restore_refuses_a_damaged_backup_and_a_running_server(tmp_path):
    store(tmp_path, 50)
    assert montybase(tmp_path, "backup", "b.mbak").returncode == 0
    data = bytearray((tmp_path / "b.mbak").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "bad.mbak").write_bytes(bytes(data))
    before = (tmp_path / "db.json").read_bytes()
    damaged = montybase(tmp_path, "restore", "bad.mbak", "--force")
    assert damaged.returncode == 1 and "damaged" in damaged.stderr and "checksum" in damaged.stderr
    assert (tmp_path / "db.json").read_bytes() == before
    with start(tmp_path, "--port", "0", script=True) as proc:
        proc.endpoint()
        running = montybase(tmp_path, "restore", "b.mbak", "--force")
        assert running.returncode == 1 and "stop it first" in running.stderr, running.stderr
        assert proc.stop() == 0
    assert not [path for path in tmp_path.iterdir() if "before-restore" in path.name]


# export and import


def test_export_then_import_into_an_empty_store_gives_an_equal_tree(tmp_path):
    source = store(tmp_path / "a", 1000)
    done = montybase(source, "export", "--out", "all.jsonl")
    assert done.returncode == 0 and "exported 1100 documents" in done.stdout
    target = tmp_path / "b"
    target.mkdir()
    write_config(target)
    shutil.copy(source / "all.jsonl", target)
    assert montybase(target, "import", "all.jsonl").returncode == 0
    assert exported(target) == exported(source)
    again = montybase(target, "import", "all.jsonl")  # a rerun (after an interruption) makes no duplicates
    assert again.returncode == 0 and exported(target) == exported(source)


def test_export_of_paths_gives_only_what_is_below_them(tmp_path):
    store(tmp_path, 30)
    lines = exported(tmp_path, "users/u10")
    assert [line["path"] for line in lines] == ["users/u10", "users/u10/posts/p"]


def test_import_reports_bad_lines_by_number_and_goes_on_unless_asked_to_stop(tmp_path):
    write_config(tmp_path, limits={"maxDocBytes": 200})
    lines = [json.dumps({"path": "a/1", "value": {"n": 1}}), "{not json", json.dumps({"path": "a/2", "value": {"$x": 1}}),
             json.dumps({"path": "a/3", "value": {"big": "x" * 500}}), json.dumps({"path": "a", "value": {}}),
             json.dumps({"path": "a/4", "value": {"n": 4}})]
    (tmp_path / "in.jsonl").write_bytes(("\n".join(lines) + "\n").encode() + b'{"path": "a/5", "\xff": 1}\n')
    done = montybase(tmp_path, "import", "in.jsonl")
    assert done.returncode == 1
    for number in (2, 3, 4, 5, 7):
        assert f"line {number}: " in done.stderr, done.stderr
    assert "line 3: /value/$x" in done.stderr
    assert [line["path"] for line in exported(tmp_path)] == ["a/1", "a/4"]
    other = tmp_path / "other"
    other.mkdir()
    write_config(other)
    stopped = montybase(other, "import", str(tmp_path / "in.jsonl"), "--stop-on-error")
    assert stopped.returncode == 1 and "line 2: " in stopped.stderr and "line 3: " not in stopped.stderr
    assert [line["path"] for line in exported(other)] == ["a/1"]


def test_an_original_bare_tree_db_json_exports_and_imports(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    tree = {"users": {"alice": {"name": "Alice"}, "bob": {"name": "Bob"}}, "notes": {"n1": {"text": "hi"}}}
    (old / "db.json").write_text(json.dumps(tree))
    write_config(old)
    assert [line["path"] for line in exported(old)] == ["notes/n1", "users/alice", "users/bob"]
    new = tmp_path / "new"
    new.mkdir()
    write_config(new)
    assert montybase(new, "import", str(old / "db.json"), "--into", "archive/2024").returncode == 0
    assert exported(new, "archive/2024/users/alice") == [{"path": "archive/2024/users/alice", "value": {"name": "Alice"}}]


def test_import_while_a_server_runs_writes_through_it_over_the_admin_key(tmp_path):
    store(tmp_path, 5)
    (tmp_path / "more.jsonl").write_text(json.dumps({"path": "users/new", "value": {"n": 1}}) + "\n"
                                         + json.dumps({"path": "users/bad", "value": {"$x": 1}}) + "\n")
    with start(tmp_path, "--port", "0", script=True) as proc:
        url = proc.endpoint()
        with client(url, tmp_path, admin=True) as db:
            seen: list[Any] = []
            stop = doc(db, "users", "new").on_snapshot(seen.append)
            done = montybase(tmp_path, "import", "more.jsonl")
            assert done.returncode == 1 and "line 2: /value/$x" in done.stderr, done.stderr
            assert f"imported 1 documents into the server at {url}" in done.stdout, done.stdout
            assert doc(db, "users", "new").get() == {"n": 1}
            deadline = time.monotonic() + 10
            while not any(getattr(snap, "exists", False) for snap in seen) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert any(getattr(snap, "exists", False) for snap in seen), "a listener saw the imported document"
            stop()
        assert proc.stop() == 0


# check and compact


def _journaled(folder: Path) -> Path:
    """A store whose data is in a snapshot and in journals with several records."""
    store(folder, 200, storageMinCount=10**9, storageUpdate=3600)
    with start(folder, "--port", "0", script=True) as proc:
        url = proc.endpoint()
        with client(url, folder, admin=True) as db:
            for i in range(40):
                doc(db, "users").set({"n": i, "again": True}, key=f"u{i}")
            doc(db, "users", "u3").delete()
        proc.send(9)  # killed: no last snapshot, the journal stays
        proc.wait()
    return folder


def test_check_finds_damage_planted_anywhere_and_never_calls_a_sound_store_damaged(tmp_path):
    sound = _journaled(tmp_path / "sound")
    done = montybase(sound, "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("sound: 219 documents in 21 collections") and "41 journal records" in done.stdout, done.stdout
    files = [path.name for path in sound.iterdir() if path.name == "db.json" or path.name.endswith(".journal")]
    assert len(files) == 2
    chance = random.Random(20261206)
    for trial in range(16):
        copy = tmp_path / f"t{trial}"
        shutil.copytree(sound, copy)
        name = chance.choice(files)
        data = bytearray((copy / name).read_bytes())
        offset = chance.randrange(len(data))
        data[offset] ^= chance.randrange(1, 256)
        (copy / name).write_bytes(bytes(data))
        found = montybase(copy, "check")
        assert found.returncode == 1, f"damage at byte {offset} of {name} not found: {found.stdout}"
        assert found.stdout.startswith(f"damaged: {copy / name} at byte "), found.stdout
        shutil.rmtree(copy)
    assert montybase(sound, "check").returncode == 0


def test_check_repair_cuts_at_the_first_bad_record_after_copying_the_originals(tmp_path):
    folder = _journaled(tmp_path)
    journal = next(path for path in tmp_path.iterdir() if path.name.endswith(".journal"))
    original = journal.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    journal.write_bytes(bytes(damaged))
    assert montybase(folder, "check").returncode == 1
    done = montybase(folder, "check", "--repair")
    assert done.returncode == 0 and "repaired: " in done.stdout, done.stdout
    aside = next(path for path in tmp_path.iterdir() if "before-repair" in path.name)
    assert (aside / journal.name).read_bytes() == bytes(damaged)
    assert 0 < journal.stat().st_size < len(original) // 2 + 1
    assert montybase(folder, "check").returncode == 0


def test_compact_offline_writes_a_snapshot_and_drops_the_journals(tmp_path):
    folder = _journaled(tmp_path)
    before = exported(folder)
    done = montybase(folder, "compact")
    assert done.returncode == 0, done.stderr
    assert "0 bytes of journal left" in done.stdout, done.stdout
    assert exported(folder) == before


def test_compact_online_asks_the_running_server_for_a_snapshot(tmp_path):
    store(tmp_path, 20, storageMinCount=10**9, storageUpdate=3600)
    with start(tmp_path, "--port", "0", script=True) as proc:
        url = proc.endpoint()
        with client(url, tmp_path, admin=True) as db:
            for i in range(10):
                doc(db, "more").set({"n": i}, key=f"m{i}")
        journals = lambda: sum(p.stat().st_size for p in tmp_path.iterdir() if p.name.endswith(".journal"))  # noqa: E731
        assert journals() > 0
        done = montybase(tmp_path, "compact")
        assert done.returncode == 0 and "wrote a snapshot" in done.stdout, done.stdout + done.stderr
        deadline = time.monotonic() + 10
        while journals() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert journals() == 0
        assert len(decode_snapshot((tmp_path / "db.json").read_bytes())[1][("more",)]) == 10
        assert proc.stop() == 0


# progress


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_in_a_pipe(tmp_path):
    store(tmp_path, 3000)
    piped = montybase(tmp_path, "export", "--out", "x.jsonl")
    assert "\r" not in piped.stderr
    last = piped.stderr.splitlines()[-1]
    assert last.startswith("export: 3300/3300 documents, ") and "documents/s" in last and " left" in last, piped.stderr
    often = subprocess.run([montybase_script(), "import", "seed.jsonl", "--batch", "50"], cwd=tmp_path, text=True,
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
                           env={**os.environ, "MONTYBASE_PROGRESS_SECONDS": "0.001"})
    lines = often.stderr.splitlines()
    assert often.returncode == 0 and len(lines) > 3 and "\r" not in often.stderr, often.stderr
    assert all(line.startswith("import: ") and "/3300 documents, " in line for line in lines), often.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    try:
        process = subprocess.Popen([montybase_script(), "export", "--out", "y.jsonl"], cwd=tmp_path,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower,
                                   env={**os.environ, "COLUMNS": "100"})
        os.close(follower)
        follower = -1
        shown = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the terminal's other end closed: the command is done
                    break
                if not chunk:
                    break
                shown += chunk
            elif process.poll() is not None:
                break
        assert process.wait(30) == 0
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    text = shown.decode("utf-8", "replace")
    assert "\r" in text and "3300/3300" in text and "documents/s" in text and "█" in text, text


def test_the_data_commands_of_the_readme_work_as_shown_from_an_empty_folder(tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("### Backups and data", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [shlex.split(line, comments=True) for line in block.splitlines()]
    online = [line for line in lines if line[1] != "restore"]
    with start(tmp_path, "--port", "0", script=True) as proc:
        url = proc.endpoint()
        with client(url, tmp_path, admin=True) as db:
            doc(db, "users").set({"name": "Alice"}, key="alice")
        for line in online:
            done = montybase(tmp_path, *line[1:])
            assert done.returncode == 0, f"{line}: {done.stdout}{done.stderr}"
        assert proc.stop() == 0
    for line in lines[len(online):]:
        done = montybase(tmp_path, *line[1:])
        assert done.returncode == 0, f"{line}: {done.stdout}{done.stderr}"
    assert exported(tmp_path) == [{"path": "users/alice", "value": {"name": "Alice"}}]
    assert json.loads((tmp_path / "alice.jsonl").read_text()) == {"path": "users/alice", "value": {"name": "Alice"}}
