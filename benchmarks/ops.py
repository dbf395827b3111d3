"""The data commands at scale: backup, export and import of N documents (default 100,000), each
`montybase` run as an operator runs it (a process, its start included), beside sqlite3's online
backup (Connection.backup) and a json.dump of the same documents; then a server's write
throughput with and without a backup running.

    python benchmarks/ops.py [--documents 100000] [--seconds 5] [--rounds 3]

Every loop is bounded by a count and a time. Nothing here asserts a timing; the last line says
whether the write throughput during a backup reached the target (0.7x of without).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(ROOT))

from python_client import Montybase, doc  # noqa: E402
from server.config import create_config  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MONTYBASE_PROGRESS_SECONDS": "3600"}


def montybase(folder: Path, *args: str) -> float:
    """Seconds `python -m server ARGS` took in `folder`; fails loudly if it failed."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "server", *args], cwd=folder, env=ENV, capture_output=True,
                          text=True, timeout=600)
    seconds = time.perf_counter() - started
    if done.returncode not in (0,):
        raise SystemExit(f"montybase {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return seconds


def documents(count: int) -> dict[str, dict]:
    return {f"u{i:07d}": {"n": i, "name": f"user {i}", "email": f"user{i}@example.com", "score": i % 1000 / 10,
                          "tags": ["a", "b", str(i % 7)], "address": {"city": "Lyon", "zip": f"{69000 + i % 10}"}}
            for i in range(count)}


def folder_with_config(path: Path) -> Path:
    path.mkdir()
    config = create_config(path / "montybase.json")
    config.update(storageMinCount=10**9, storageUpdate=3600)
    (path / "montybase.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def row(what: str, seconds: float, size: int) -> str:
    return f"| {what} | {seconds:.2f} | {size / 1e6:.1f} | {size / 1e6 / seconds:.1f} |"


def write_rate(url: str, config: str, seconds: float, threads: int) -> float:
    """Admin writes a second from `threads` clients over `seconds`."""
    counts = [0] * threads
    stop = threading.Event()

    def writer(number: int) -> None:
        with Montybase(api=url, config=config) as db:
            while not stop.is_set() and counts[number] < 10**7:
                doc(db, "load").set({"n": counts[number], "pad": "x" * 64}, key=f"t{number}-{counts[number] % 1000}")
                counts[number] += 1

    workers = [threading.Thread(target=writer, args=(number,)) for number in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)  # connected and warm
    begin = sum(counts)
    started = time.perf_counter()
    time.sleep(seconds)
    rate = (sum(counts) - begin) / (time.perf_counter() - started)
    stop.set()
    for worker in workers:
        worker.join(30)
    return rate


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--documents", type=int, default=100_000)
    options.add_argument("--seconds", type=float, default=5.0)
    options.add_argument("--threads", type=int, default=2)
    options.add_argument("--rounds", type=int, default=3, help="rounds of writes alone and during backups")
    args = options.parse_args()
    work = Path(tempfile.mkdtemp(prefix="montybase-ops-"))
    try:
        data = documents(args.documents)
        source = folder_with_config(work / "source")
        seed = work / "seed.jsonl"
        seed.write_text("".join(json.dumps({"path": f"users/{key}", "value": value}) + "\n"
                                for key, value in data.items()), encoding="utf-8")
        seeded = montybase(source, "import", str(seed))
        lines = [f"{args.documents:,} documents; each command a process of its own (start included)", "",
                 "| operation | s | MB | MB/s |", "|---|---|---|---|"]
        lines.append(row("montybase import (empty store)", seeded, seed.stat().st_size))
        lines.append(row("montybase backup", montybase(source, "backup", "b.mbak"), (source / "b.mbak").stat().st_size))
        lines.append(row("montybase export", montybase(source, "export", "--out", "all.jsonl"),
                         (source / "all.jsonl").stat().st_size))
        lines.append(row("montybase check", montybase(source, "check"), (source / "db.json").stat().st_size))
        target = folder_with_config(work / "target")
        imported = montybase(target, "import", str(source / "all.jsonl"))
        lines.append(row("montybase import of the export", imported, (source / "all.jsonl").stat().st_size))
        montybase(target, "export", "--out", "again.jsonl")
        equal = (target / "again.jsonl").read_bytes() == (source / "all.jsonl").read_bytes()
        lines.append(row("montybase restore", montybase(target, "restore", str(source / "b.mbak"), "--force"),
                         (source / "b.mbak").stat().st_size))

        database = sqlite3.connect(work / "sqlite.db")
        database.execute("PRAGMA journal_mode=WAL")
        database.execute("CREATE TABLE docs (id TEXT PRIMARY KEY, doc TEXT)")
        database.executemany("INSERT INTO docs VALUES (?, ?)", ((key, json.dumps(value)) for key, value in data.items()))
        database.commit()
        started = time.perf_counter()
        with sqlite3.connect(work / "sqlite-backup.db") as copy:
            database.backup(copy)
        seconds = time.perf_counter() - started
        database.close()
        lines.append(row("sqlite3 Connection.backup (in process)", seconds, (work / "sqlite-backup.db").stat().st_size))
        started = time.perf_counter()
        with open(work / "dump.json", "w", encoding="utf-8") as out:
            json.dump({"users": data}, out)
            out.flush()
            os.fsync(out.fileno())
        lines.append(row("json.dump + fsync (in process)", time.perf_counter() - started, (work / "dump.json").stat().st_size))
        lines.append("")
        lines.append(f"export -> import into an empty store -> export: {'equal' if equal else 'DIFFERENT'}")

        server = subprocess.Popen([sys.executable, "-m", "server", "--port", "0"], cwd=source, env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            url = ""
            deadline = time.monotonic() + 60
            while not url and time.monotonic() < deadline:
                line = server.stdout.readline()
                if line.startswith("endpoint: "):
                    url = line.split(" ", 1)[1].strip()
            if not url:
                raise SystemExit("the server did not start")
            config = str(source / "montybase.json")
            # Rounds alone and during backups alternate, so a change in the machine's load
            # (other programs) falls on both; each figure is the mean of its rounds.
            alone_rates: list[float] = []
            during_rates: list[float] = []
            backups: list[float] = []
            for _ in range(args.rounds):
                alone_rates.append(write_rate(url, config, args.seconds, args.threads))
                stop = threading.Event()

                def backing_up() -> None:
                    while not stop.is_set() and len(backups) < 1000:
                        backups.append(montybase(source, "backup", "during.mbak"))

                loop = threading.Thread(target=backing_up)
                loop.start()
                time.sleep(0.3)
                during_rates.append(write_rate(url, config, args.seconds, args.threads))
                stop.set()
                loop.join(120)
            alone, during = sum(alone_rates) / len(alone_rates), sum(during_rates) / len(during_rates)
        finally:
            server.terminate()
            server.wait(60)
        ratio = during / alone
        lines += ["", f"server writes/s ({args.threads} admin clients, {args.rounds} rounds of {args.seconds:g} s "
                      f"each way): {alone:,.0f} alone, "
                      f"{during:,.0f} while backups of the {args.documents:,} documents ran back to back "
                      f"({len(backups)} backups, {sum(backups) / max(1, len(backups)):.2f} s each)",
                  f"ratio {ratio:.2f} (target >= 0.70): {'PASS' if ratio >= 0.7 else 'MISS'}"]
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
