"""`montybase migrate`: move a store from a file into PostgreSQL (several nodes) and back.

Into PostgreSQL, the file's server must be stopped (the command holds the storage's lock) and
the PostgreSQL database must hold no Montybase data yet. Out of PostgreSQL, the nodes may keep
serving: the file is the state at one moment (later writes are not in it), and the target must
not exist yet.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..config import is_postgres_url
from ..database import Database
from ..errors import InvalidArgumentError, UnavailableError
from ..paths import id_clock
from ..storage import StorageReader, snapshot_chunks
from .data import _files, _held, _write_atomically
from .progress import progress

__all__ = ["arguments", "run"]


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="FROM",
                        help="a storage file (db.json) or a PostgreSQL URL (postgresql://user:password@host:5432/db)")
    parser.add_argument("--to", dest="target", required=True, metavar="TO",
                        help="a PostgreSQL URL, or a storage file that does not exist yet")


def run(args: argparse.Namespace) -> int:
    from ..postgres import redacted  # (psycopg loads only for this command)

    into, out_of = is_postgres_url(args.target), is_postgres_url(args.source)
    if into == out_of:
        raise InvalidArgumentError("migrate moves a store from a file into PostgreSQL, or from PostgreSQL into a file: "
                                   "give one PostgreSQL URL and one file")
    started = time.monotonic()
    if into:
        count, seq = _into(Path(args.source).absolute(), args.target)
        where = redacted(args.target)
        hint = f'; set "storageBucket": "{where}" in montybase.json (with the password) and start the nodes'
    else:
        target = Path(args.target).absolute()
        count, seq = _out_of(args.source, target)
        where, hint = str(target), '; set "storageBucket" in montybase.json to the file to serve it'
    print(f"migrated {count} documents (record {seq}) into {where} in {time.monotonic() - started:.2f} s{hint}", flush=True)
    return 0


def _into(bucket: Path, url: str) -> tuple[int, int]:
    from ..postgres import import_state

    if not _files(bucket):
        raise UnavailableError(f"no storage at {bucket}: nothing to migrate")
    lock = _held(bucket)  # no server writes the file meanwhile
    try:
        try:
            database = Database(StorageReader(bucket))
        except ValueError as exc:
            raise UnavailableError(f"cannot read the data in {bucket}: {exc}") from None
        collections = {path: docs for path, docs in database.tree.collections.items() if docs}
        bar = progress("migrate", sum(len(docs) for docs in collections.values()))
        try:
            # The reader moved this process's id clock past every id it loaded: the id time to keep.
            count = import_state(url, collections, id_clock(), bar.update)
        finally:
            bar.close()
        return count, database.seq
    finally:
        os.close(lock)


def _out_of(url: str, target: Path) -> tuple[int, int]:
    from ..postgres import export_state

    if _files(target):
        raise UnavailableError(f"{target} holds data already: migrate into a new file")
    state = export_state(url)
    total = sum(len(docs) for docs in state.collections.values())
    target.parent.mkdir(parents=True, exist_ok=True)
    bar = progress("migrate", total)
    try:
        _write_atomically(target, snapshot_chunks(state.seq, state.collections, state.id_time, bar.update))
    finally:
        bar.close()
    return total, state.seq
