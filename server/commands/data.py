"""The data commands: `montybase backup`, `restore`, `export`, `import`, `check` and `compact`.

A backup is a snapshot file (format version, record number, id time, collections, CRC-32), the
state up to the last complete journal record. It is read with StorageReader, without the lock,
so it works the same whether a server runs or not and costs the server nothing: a journal record
is complete or not, and the reader re-reads when a snapshot replaced the files under it (see
StorageReader), so what it reads is exactly the state after one record. Restoring it writes it
as the storage's snapshot.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..config import Limits, is_postgres_url, open_database, storage_path
from ..database import Database
from ..errors import InvalidArgumentError, MontybaseError, UnavailableError
from ..monitor import last_backup_path
from ..paths import check_path, id_clock
from ..session import Service
from ..storage import (
    FileStorage, LocalFiles, StorageReader, decode_snapshot, is_sealed_snapshot, lock_holder, snapshot_chunks,
    take_lock,
)
from ..values import prepare
from . import configured
from .keys import shipped_endpoint
from .progress import progress
from .reload import running_server

__all__ = [
    "backup", "backup_arguments", "check", "check_arguments", "compact", "compact_arguments", "export",
    "export_arguments", "import_", "import_arguments", "restore", "restore_arguments",
]

BACKGROUND_NICE = 10  # how much a command reading beside a running server lowers its CPU priority
_line = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
PRIVATE = "__"  # collections of the accounts' own store start so: in backups, never exported


def _storage(args: argparse.Namespace) -> tuple[dict[str, Any], Path, Path]:
    """(config, config path, storage file) of --config; refused for a storage in memory."""
    config, config_path = configured(args)
    bucket = storage_path(config, config_path)
    if bucket == ":memory:":
        raise InvalidArgumentError(f"{config_path}: storageBucket is :memory:, there are no files to work on")
    if is_postgres_url(bucket):
        raise InvalidArgumentError(f"{config_path}: storageBucket is PostgreSQL, there are no files to work on: back it "
                                   "up with PostgreSQL's tools, or copy it to a file with montybase migrate --from URL --to FILE")
    return config, config_path, Path(bucket)


def _read(bucket: Path) -> Database:
    """The stored state, read without the lock (a running server keeps serving)."""
    if lock_holder(bucket.with_name(bucket.name + ".lock")) is not None:
        # Beside a running server this is background work: the server's requests go first.
        os.nice(BACKGROUND_NICE)
    try:
        return Database(StorageReader(bucket))
    except ValueError as exc:
        raise UnavailableError(f"cannot read the data in {bucket}: {exc}") from None


def _aside(bucket: Path, why: str) -> Path:
    """A new folder beside the storage for the files a command replaces or cuts."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = bucket.with_name(f"{bucket.name}.{why}-{stamp}")
    for number in range(2, 1000):
        if not folder.exists():
            break
        folder = bucket.with_name(f"{bucket.name}.{why}-{stamp}-{number}")
    folder.mkdir()
    return folder


def _files(bucket: Path) -> list[Path]:
    """The storage's snapshot (if any) and journals, in order."""
    journals = FileStorage(bucket)._journals() if bucket.parent.is_dir() else []
    return ([bucket] if bucket.exists() else []) + [path for _, path in journals]


def _held(bucket: Path) -> int:
    """Take the storage's lock for this command (so no server starts meanwhile), or refuse."""
    fd, holder = take_lock(bucket.with_name(bucket.name + ".lock"))
    if fd is None:
        raise UnavailableError(f"a server uses {bucket} ({holder}): stop it first")
    return fd


def _write_atomically(target: Path, chunks: Iterator[bytes]) -> int:
    """Write `target` as a storage writes its snapshot (a temporary file, fsync, rename, fsync of
    the folder); the bytes written."""
    files = LocalFiles()
    temporary = target.with_name(target.name + ".tmp")
    size = files.write_file(temporary, chunks)
    files.replace(temporary, target)
    files.fsync_dir(target.parent)
    return size


# backup


def backup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the backup file to write (replaced if it exists)")


def backup(args: argparse.Namespace) -> int:
    _, _, bucket = _storage(args)
    database = _read(bucket)
    total = sum(len(docs) for docs in database.tree.collections.values())
    target = Path(args.file).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    bar = progress("backup", total)
    try:
        collections = {path: docs for path, docs in database.tree.collections.items() if docs}
        size = _write_atomically(target, snapshot_chunks(database.seq, collections, id_clock(), bar.update))
    finally:
        bar.close()
    seconds = time.monotonic() - started
    _note_backup(bucket, target, database.seq, total)
    print(f"backup of record {database.seq}: {total} documents, {size} bytes in {target} ({seconds:.2f} s)", flush=True)
    return 0


def _note_backup(bucket: str, target: Path, seq: int, total: int) -> None:
    """Note the backup beside the storage, where a running server's console reads its time. A
    note that cannot be written costs the console that line, never the backup."""
    note = {"time": int(time.time() * 1000), "file": str(target), "record": seq, "documents": total}
    try:
        Path(last_backup_path(str(bucket))).write_text(json.dumps(note) + "\n", encoding="utf-8")
    except OSError as exc:
        print(f"(could not note the backup's time beside the storage: {exc})", flush=True)


# restore


def restore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a backup file (made by montybase backup)")
    parser.add_argument("--force", action="store_true",
                        help="replace the data there is (its files are kept aside in a folder beside it)")


def _verified(path: Path) -> tuple[bytes, int, int]:
    """A backup's bytes, record number and document count, once its format and checksum hold."""
    data = path.read_bytes()
    if not is_sealed_snapshot(data):
        raise InvalidArgumentError(f"{path} is not a Montybase backup (no format version and checksum)", {"file": str(path)})
    try:
        seq, collections, _ = decode_snapshot(data)
    except ValueError as exc:
        raise InvalidArgumentError(f"{path} is damaged: {exc}; nothing was changed", {"file": str(path)}) from None
    return data, seq, sum(len(docs) for docs in collections.values())


def restore(args: argparse.Namespace) -> int:
    _, _, bucket = _storage(args)
    source = Path(args.file).absolute()
    data, seq, count = _verified(source)
    bucket.parent.mkdir(parents=True, exist_ok=True)
    lock = _held(bucket)
    try:
        present = _files(bucket)
        if present and not args.force:
            raise UnavailableError(f"{bucket} holds data already: add --force to replace it (its files are kept aside)")
        aside = None
        if present:
            aside = _aside(bucket, "before-restore")
            for path in present:
                os.replace(path, aside / path.name)
        bar = progress("restore", len(data), "B", scale=True)
        step = 1 << 20

        def chunks() -> Iterator[bytes]:
            for offset in range(0, len(data), step):
                yield data[offset:offset + step]
                bar.update(min(step, len(data) - offset))

        try:
            _write_atomically(bucket, chunks())
        finally:
            bar.close()
    finally:
        os.close(lock)
    print(f"restored record {seq}: {count} documents into {bucket}" +
          (f"; the files replaced are in {aside}" if aside else ""), flush=True)
    return 0


# export and import


def export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="collections or documents to export, with everything below them (default: all)")
    parser.add_argument("--out", metavar="FILE", help="the JSON Lines file to write (default: standard output)")
    parser.add_argument("--from", dest="source", metavar="FILE",
                        help="read this snapshot, backup or original Montybase db.json instead of the configured storage")


def _split(text: str, where: str) -> tuple[str, ...]:
    return tuple(check_path([part for part in text.strip("/").split("/")], where))


def export(args: argparse.Namespace) -> int:
    if args.source:
        database = _read(Path(args.source).absolute())
    else:
        database = _read(_storage(args)[2])
    prefixes = [_split(text, f"/paths/{index}") for index, text in enumerate(args.paths)]
    selected = [(path, docs) for path, docs in sorted(database.tree.collections.items())
                if docs and not path[0].startswith(PRIVATE)
                and (not prefixes or any(path[:len(p)] == p or p[:len(path)] == path for p in prefixes))]
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    total = sum(len(docs) for _, docs in selected)
    bar = progress("export", total)
    written = 0
    try:
        for path, docs in selected:
            lines = []
            for doc_id, doc in docs.items():
                full = path + (doc_id,)
                if prefixes and not any(full[:len(p)] == p for p in prefixes):
                    continue
                lines.append(_line({"path": "/".join(full), "value": doc}) + "\n")
            out.write("".join(lines))
            written += len(lines)
            bar.update(len(docs))
    finally:
        bar.close()
        if args.out:
            out.close()
        else:
            out.flush()
    if args.out:
        print(f"exported {written} documents to {Path(args.out).absolute()}", flush=True)
    return 0


def import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE",
                        help="JSON Lines ({\"path\": …, \"value\": …} a line, as export writes), or an original "
                             "Montybase db.json; - reads standard input")
    parser.add_argument("--into", metavar="PATH", help="a document path to put every document below")
    parser.add_argument("--stop-on-error", action="store_true", help="stop at the first bad line (default: report it, go on)")
    parser.add_argument("--batch", type=int, default=500, help="writes per commit (default 500, at most limits.maxWrites)")


def _lines(source: str) -> tuple[Iterator[tuple[int, Any]], int | None]:
    """(line number, parsed line or the error) of a JSON Lines file, or of an original
    Montybase tree; and how many there are, when known."""
    if source == "-":
        return ((number, _parse_line(text)) for number, text in enumerate(sys.stdin, 1)), None
    path = Path(source)
    with open(path, "rb") as probe:
        head = probe.read(64).lstrip()
    if head.startswith(b"{") and b'"path"' not in head[:16]:
        try:  # a whole tree: an original db.json, a snapshot or a backup
            _, collections, _ = decode_snapshot(path.read_bytes())
        except ValueError:
            pass
        else:
            items = [{"path": list(p) + [doc_id], "value": doc} for p, docs in collections.items()
                     if not p[0].startswith(PRIVATE) for doc_id, doc in docs.items()]
            return iter(enumerate(items, 1)), len(items)
    with open(path, "rb") as counting:
        total = sum(chunk.count(b"\n") for chunk in iter(lambda: counting.read(1 << 20), b""))

    def read() -> Iterator[tuple[int, Any]]:
        with open(path, "rb") as lines:  # bytes: a line that is no UTF-8 is one bad line, not the end
            for number, text in enumerate(lines, 1):
                yield number, _parse_line(text)

    return read(), total


def _parse_line(text: str | bytes) -> Any:
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        return InvalidArgumentError(f"not JSON ({exc})"[:200], {"path": ""})


def _write(line: Any, into: tuple[str, ...]) -> dict[str, Any]:
    """The write a line asks for: set the document at its path (so a rerun makes no duplicate)."""
    if isinstance(line, MontybaseError):
        raise line
    if not isinstance(line, dict) or set(line) != {"path", "value"}:
        raise InvalidArgumentError('a line is {"path": "collection/id", "value": {…}}', {"path": ""})
    path = line["path"]
    if isinstance(path, str):
        path = [part for part in path.split("/")]
    if not isinstance(path, list) or len(path) % 2:
        raise InvalidArgumentError("/path: a document path has an even number of segments", {"path": "/path"})
    return {"op": "set", "path": list(into) + path, "value": line["value"]}


def _writer(config: dict[str, Any], config_path: Path, bucket: Path,
            limits: Limits) -> tuple[Callable[[str, dict[str, Any]], Any], Callable[[], None], str]:
    """(call, close, what it writes to): the running server's database over the admin key of
    montybase.json when one runs, else the files, through an admin session (the same checks)."""
    if running_server(config_path, str(bucket)) is not None:
        from python_client import Montybase  # the client package, needed only here

        endpoint = shipped_endpoint(config, config_path)
        remote = Montybase(api=endpoint, config=str(config_path))
        return remote._backend.call, remote.close, f"the server at {endpoint}"
    database = open_database(config, str(bucket))  # takes the lock
    session = Service(database, limits=limits).admin(lambda *_: None)
    return session.call, database.close, str(bucket)


def import_(args: argparse.Namespace) -> int:
    config, config_path, bucket = _storage(args)
    into = _split(args.into, "/into") if args.into else ()
    if len(into) % 2:
        raise InvalidArgumentError(f"--into {args.into}: name a document (an even number of segments)", {"path": "/into"})
    limits = Limits.from_config(config.get("limits"))
    size = max(1, min(args.batch, limits.maxWrites))
    lines, total = _lines(args.file)
    call, close, where = _writer(config, config_path, bucket, limits)
    bad = written = 0
    stopped = False
    bar = progress("import", total)

    def report(number: int, exc: MontybaseError) -> None:
        nonlocal bad
        bad += 1
        # The pointer of a write alone is into its line ({"path", "value"}), not into the commit.
        bar.write(f"line {number}: {exc.message.replace('/writes/0/', '/', 1)}", file=sys.stderr)

    def commit(batch: list[tuple[int, dict]]) -> bool:
        """Write `batch` (all or nothing); when a write in it is refused, each of its writes
        alone, to name the bad lines. False when a bad line stops the import."""
        nonlocal written
        if len(batch) > 1:
            try:
                call("commit", {"writes": [write for _, write in batch]})
                written += len(batch)
                return True
            except MontybaseError:
                pass
        for number, write in batch:
            try:
                call("commit", {"writes": [write]})
                written += 1
            except MontybaseError as exc:
                report(number, exc)
                if args.stop_on_error:
                    return False
        return True

    try:
        batch: list[tuple[int, dict]] = []
        for number, line in lines:
            bar.update(1)
            if line is None:
                continue
            try:
                batch.append((number, _write(line, into)))
            except MontybaseError as exc:
                report(number, exc)
                if args.stop_on_error:
                    stopped = True
                    break
                continue
            if len(batch) >= size:
                stopped, batch = not commit(batch), []
                if stopped:
                    break
        if batch:  # the lines before a bad one that stopped the import are written too
            stopped = not commit(batch) or stopped
    finally:
        bar.close()
        close()
    print(f"imported {written} documents into {where}" + (f"; {bad} bad lines" if bad else "") +
          ("; stopped at the first bad line" if stopped else ""), flush=True)
    return 1 if bad else 0


# check


def check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repair", action="store_true",
                        help="cut the journals at the first bad record (the original files are copied aside first)")


class Problem(Exception):
    def __init__(self, file: Path, offset: int, what: str):
        super().__init__(f"{file} at byte {offset}: {what}")
        self.file, self.offset, self.what = file, offset, what


def _check_document(path: tuple[str, ...], doc: Any, file: Path, offset: int) -> None:
    try:
        if path[0].startswith(PRIVATE):  # the accounts' store names itself with reserved keys
            path = ("x",) + path[1:]
        check_path(list(path))
        if type(doc) is not dict:
            raise InvalidArgumentError("a document is an object", {"path": ""})
        prepare(doc, None, "/value", 0, None)
    except MontybaseError as exc:
        raise Problem(file, offset, f"document {'/'.join(path)}: {exc.message}") from None


def _check_operation(operation: Any, file: Path, offset: int) -> None:
    if not (isinstance(operation, list) and len(operation) >= 2 and operation[0] in ("set", "delete")
            and isinstance(operation[1], list)):
        raise Problem(file, offset, f"not a journal operation: {str(operation)[:80]}")
    path = tuple(operation[1])
    if operation[0] == "set":
        if len(path) % 2 or not path:
            raise Problem(file, offset, f"a set of {'/'.join(map(str, path))}, which is no document path")
        _check_document(path, operation[2] if len(operation) > 2 else None, file, offset)


def _scan(bucket: Path, counts: dict[str, int], bar: Any) -> None:
    """Check every file of the storage, counting into `counts`; raise Problem at the first fault."""
    tree: dict[tuple[str, ...], set[str]] = {}
    last = 0
    if bucket.exists():
        data = bucket.read_bytes()
        counts["bytes"] += len(data)
        if data.startswith(b'{"__montybase__"') and not is_sealed_snapshot(data):
            raise Problem(bucket, max(0, len(data) - 1), "the snapshot does not end with its checksum")
        try:
            last, collections, _ = decode_snapshot(data)
        except ValueError as exc:
            raise Problem(bucket, 0, f"the snapshot is damaged: {exc}") from None
        for path, docs in collections.items():
            for doc_id, doc in docs.items():
                _check_document(path + (doc_id,), doc, bucket, 0)
            tree[path] = set(docs)
        bar.update(len(data))
    for first_seq, journal in FileStorage(bucket)._journals():
        if first_seq > last + 1:
            raise Problem(journal, 0, f"it starts at record {first_seq}, but the records before it end at {last}")
        data = journal.read_bytes()
        counts["bytes"] += len(data)
        offset = 0
        while offset < len(data):
            problem, seq, payload, size = FileStorage._parse(data, offset)
            if problem is not None:
                raise Problem(journal, offset, problem)
            if seq > last + 1:
                raise Problem(journal, offset, f"record {seq} follows record {last}")
            if seq == last + 1:
                try:
                    operations = json.loads(payload)
                except ValueError as exc:
                    raise Problem(journal, offset, f"record {seq} is not JSON ({exc})") from None
                if not isinstance(operations, list):
                    raise Problem(journal, offset, f"record {seq} is not a list of operations")
                for operation in operations:
                    _check_operation(operation, journal, offset)
                    path = tuple(operation[1])
                    if operation[0] == "set":
                        tree.setdefault(path[:-1], set()).add(path[-1])
                    else:  # a document, and everything below it; or a whole collection
                        for collection, ids in tree.items():
                            if collection == path[:-1]:
                                ids.discard(path[-1])
                            elif collection[:len(path)] == path:
                                ids.clear()
                counts["records"] += 1
                last = seq
            offset += size
            bar.update(size)
    counts["documents"] = sum(len(ids) for ids in tree.values())
    counts["collections"] = sum(1 for ids in tree.values() if ids)


def check(args: argparse.Namespace) -> int:
    _, _, bucket = _storage(args)
    files = _files(bucket)
    counts = {"documents": 0, "collections": 0, "records": 0, "bytes": 0}
    bar = progress("check", sum(path.stat().st_size for path in files), "B", scale=True)
    try:
        _scan(bucket, counts, bar)
        problem = None
    except Problem as found:
        problem = found
    finally:
        bar.close()
    summary = (f"{counts['documents']} documents in {counts['collections']} collections, "
               f"{counts['records']} journal records, {counts['bytes']} bytes in {len(files)} files")
    if problem is None:
        print(f"sound: {summary}", flush=True)
        return 0
    print(f"damaged: {problem}", flush=True)
    print(f"read before it: {summary}", flush=True)
    if not args.repair:
        print("montybase check --repair cuts the journals there (copying the originals aside first)", flush=True)
        return 1
    if problem.file == bucket:
        print("the snapshot itself is damaged: --repair cannot cut it; restore a backup (montybase restore)", flush=True)
        return 1
    lock = _held(bucket)
    try:
        aside = _aside(bucket, "before-repair")
        for path in files:
            shutil.copy2(path, aside / path.name)
        with open(problem.file, "r+b") as cut:
            cut.truncate(problem.offset)
            os.fsync(cut.fileno())
        journals = [path for _, path in FileStorage(bucket)._journals()]
        later = journals[journals.index(problem.file) + 1:]
        for path in later:
            path.unlink()
    finally:
        os.close(lock)
    print(f"repaired: {problem.file} cut at byte {problem.offset}" +
          (f", {len(later)} later journals removed" if later else "") + f"; the originals are in {aside}", flush=True)
    return 0


# compact


def compact_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a running server's snapshot")


def compact(args: argparse.Namespace) -> int:
    config, config_path, bucket = _storage(args)
    pid = running_server(config_path, str(bucket))
    if pid is not None:
        if not StorageReader(bucket).load().records:
            print(f"nothing to compact: the snapshot of {bucket} holds every write", flush=True)
            return 0
        before = bucket.stat().st_mtime_ns if bucket.exists() else 0
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            if bucket.exists() and bucket.stat().st_mtime_ns != before:
                print(f"the server (process {pid}) wrote a snapshot of {bucket} and dropped the journals it covers",
                      flush=True)
                return 0
            time.sleep(0.05)
        print(f"asked the server (process {pid}) for a snapshot; none came within {args.timeout:g} s "
              "(nothing written since the last one?); its log says", flush=True)
        return 1
    database = open_database(config, str(bucket))
    try:
        database.snapshot()
        seq = database.seq
    finally:
        database.close()
    records = sum(path.stat().st_size for path in _files(bucket) if path != bucket)
    size = bucket.stat().st_size if bucket.exists() else 0
    print(f"compacted {bucket}: a snapshot of record {seq} ({size} bytes), {records} bytes of journal left", flush=True)
    return 0
