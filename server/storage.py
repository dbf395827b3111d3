"""Persistence: a JSON snapshot plus append-only journals, recovery, and the storage lock.

Files beside the snapshot `db.json`: journals `db.json.<first_seq>.journal` and the lock
`db.json.lock`. A journal record is `u32 length | u32 crc32(seq ‖ payload) | u64 seq | payload`,
big-endian, the payload being the compact JSON of one committed write (a list of operations).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import re
import socket
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from .errors import UnavailableError

__all__ = [
    "FileStorage", "LocalFiles", "MemoryStorage", "Storage", "StorageReader", "decode_snapshot", "encode_snapshot",
    "lock_holder", "take_lock",
]

log = logging.getLogger("montybase.storage")

Collections = dict[tuple[str, ...], dict[str, Any]]
_HEADER = struct.Struct(">IIQ")
MAX_RECORD_BYTES = 256 * 1024 * 1024
SNAPSHOT_FORMAT = 1
_FORMAT_KEY = "__montybase__"  # a key no document or collection may use


_encode_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def encode_record(seq: int, payload: bytes) -> bytes:
    """One journal record."""
    seq_bytes = seq.to_bytes(8, "big")
    return _HEADER.pack(len(payload), zlib.crc32(payload, zlib.crc32(seq_bytes)), seq) + payload


def encode_snapshot(seq: int, collections: Collections) -> bytes:
    """The snapshot file: plain JSON, collections keyed by their '/'-joined path."""
    body = {"/".join(path): docs for path, docs in collections.items()}
    return json.dumps(
        {_FORMAT_KEY: SNAPSHOT_FORMAT, "seq": seq, "collections": body},
        ensure_ascii=False, allow_nan=False, separators=(",", ":"),
    ).encode("utf-8")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def decode_snapshot(data: bytes) -> tuple[int, Collections]:
    """Parse a snapshot, or an original Montybase `db.json` (a bare tree of collections)."""
    try:
        tree = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"it is not valid JSON ({exc})") from None
    if not isinstance(tree, dict):
        raise ValueError("its top level is not a JSON object")
    if _FORMAT_KEY in tree:
        if tree[_FORMAT_KEY] != SNAPSHOT_FORMAT or type(tree.get("seq")) is not int or not isinstance(tree.get("collections"), dict):
            raise ValueError(f"its header is not a Montybase snapshot of format {SNAPSHOT_FORMAT}")
        seq, body = tree["seq"], tree["collections"]
        collections = {tuple(key.split("/")): docs for key, docs in body.items()}
    else:  # an original Montybase tree: {collection: {id: document}}
        seq, collections = 0, {(key,): docs for key, docs in tree.items()}
    for path, docs in collections.items():
        if not isinstance(docs, dict) or not all(isinstance(doc, dict) for doc in docs.values()):
            raise ValueError(f"collection {'/'.join(path)!r} is not an object of documents (objects)")
    return seq, {path: docs for path, docs in collections.items() if docs}


def _is_tail(data: bytes, offset: int, next_seq: int) -> bool:
    """Whether a bad record at `offset` can be the torn end of an interrupted append: no intact
    record of this or a later seq follows it (garbage, zeros or a cut-short write may). An intact
    record after the damage means the damage is in the middle: never cut that off."""
    # Every later record's header holds the same high half of the seq (for the next 2^32
    # records): try each place it appears as the start of a record.
    needle = next_seq.to_bytes(8, "big")[:4]
    position = data.find(needle, offset + 9)
    while position != -1:
        problem, seq, _, _ = FileStorage._parse(data, position - 8)
        if problem is None and seq >= next_seq:
            return False
        if not data[position - 8:position + 8].strip(b"\0"):  # inside a run of zeros: jump over it
            run_end = len(data) - len(data[position:].lstrip(b"\0"))
            position = data.find(needle, max(position + 1, run_end - 12))
        else:
            position = data.find(needle, position + 1)
    return True


def take_lock(path: Path) -> tuple[int | None, str]:
    """Lock `path` for this process and write in it who holds it: (the open file, to keep while
    holding the lock, "") or, when another process holds it, (None, who that is)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        return None, holder
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
    return fd, ""


def lock_holder(path: Path) -> int | None:
    """The pid of the process of this machine that holds the lock at `path` (`montybase reload`
    signals it); None when no process holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it (closing the file lets go again)
        except BlockingIOError:
            found = re.match(r"process (\d+) on (\S+) ", os.pread(fd, 200, 0).decode("utf-8", "replace"))
            return int(found.group(1)) if found and found.group(2) == socket.gethostname() else None
    finally:
        os.close(fd)


class LocalFiles:
    """The file operations storage uses, one method each, so tests can simulate a power loss."""

    def open_append(self, path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, fd: int, data: bytes) -> None:
        written = os.write(fd, data)
        if written < len(data):  # a short write: the rest, piece by piece
            view = memoryview(data)[written:]
            while view:
                view = view[os.write(fd, view):]

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def write_file(self, path: Path, data: bytes) -> None:
        """Create or truncate `path`, write `data`, fsync it."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def truncate(self, path: Path, size: int) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def replace(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def listdir(self, path: Path) -> list[str]:
        return os.listdir(path)

    def exists(self, path: Path) -> bool:
        return path.exists()


class Storage:
    """What the database needs from persistence. This base keeps nothing: `":memory:"`."""

    durable = False
    snapshot_time: float | None = None  # when the snapshot on disk was written (epoch seconds), if any

    @property
    def failure(self) -> str | None:
        """Why the storage refuses writes, once a write or fsync failed; None while it works."""
        return None

    def load(self) -> tuple[int, Collections, list[tuple[int, list]]]:
        """Recover: (snapshot seq, snapshot collections, journal records after it as (seq, operations))."""
        return 0, {}, []

    def append(self, seq: int, operations: list) -> None:
        """Journal one committed write (called under the database lock, before it applies)."""

    def sync(self, seq: int) -> None:
        """Return once the record `seq` is on stable storage."""

    def flush(self) -> None:
        """Make everything written so far durable (the once-a-second fsync)."""

    def rotate(self, seq: int) -> None:
        """Start a new journal after record `seq` (under the database lock, before a snapshot)."""

    def save_snapshot(self, seq: int, collections: Collections) -> bool:
        """Write the state at `seq` atomically, then drop the journals it covers; False if it failed."""
        return True

    @property
    def journal_full(self) -> bool:
        """The journals have grown past max(64 MiB, 2× the snapshot): time for a snapshot."""
        return False

    def close(self) -> None:
        """Flush and release the storage."""


MemoryStorage = Storage


class StorageReader(Storage):
    """A storage's files as they are, read without its lock and without changing a byte: what a
    running server holds, up to its last journaled write (for `montybase rules`). Reading stops
    at the first damaged record; nothing is ever written."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).absolute()

    def load(self) -> tuple[int, Collections, list[tuple[int, list]]]:
        seq, collections = decode_snapshot(self.path.read_bytes()) if self.path.exists() else (0, {})
        pattern = re.compile(re.escape(self.path.name) + r"\.(\d+)\.journal")
        journals = sorted((int(found.group(1)), self.path.parent / name) for name in os.listdir(self.path.parent)
                          if (found := pattern.fullmatch(name)))
        records: list[tuple[int, list]] = []
        last = seq
        for _, journal in journals:
            data, offset = journal.read_bytes(), 0
            while offset < len(data):
                problem, record_seq, payload, size = FileStorage._parse(data, offset)
                if problem is not None or record_seq > last + 1:
                    return seq, collections, records
                if record_seq == last + 1:
                    records.append((record_seq, json.loads(payload)))
                    last = record_seq
                offset += size
        return seq, collections, records


class FileStorage(Storage):
    """Snapshot + journals on disk; see the module docstring for the format."""

    durable = True

    def __init__(self, path: str | os.PathLike[str], *, files: LocalFiles | None = None):
        self.path = Path(path).absolute()
        self.dir = self.path.parent
        self.files = files or LocalFiles()
        self._journal_re = re.compile(re.escape(self.path.name) + r"\.(\d+)\.journal")
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._journal: Path | None = None
        self._offset = 0  # bytes of the current journal known good
        self._written = 0  # last seq handed to the OS
        self._synced = 0  # last seq known durable
        self._journal_bytes = 0
        self._snapshot_bytes = 0
        self._failure: str | None = None
        self._sync_lock = threading.Lock()

    @property
    def failure(self) -> str | None:
        return self._failure

    # Start-up

    def _lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd, holder = take_lock(lock_path)
        if fd is None:
            raise UnavailableError(
                f"storage {self.path} is in use by {holder} (lock {lock_path}); "
                "stop that process or give this one another storageBucket",
                {"file": str(lock_path)},
            )
        self._lock_fd = fd

    def _journals(self) -> list[tuple[int, Path]]:
        found = []
        for name in self.files.listdir(self.dir):
            match = self._journal_re.fullmatch(name)
            if match:
                found.append((int(match.group(1)), self.dir / name))
        return sorted(found)

    def _damaged(self, what: str, how: str) -> UnavailableError:
        return UnavailableError(
            f"Montybase will not start: {what}. Nothing was changed. {how}", {"file": str(self.path)}
        )

    def load(self) -> tuple[int, Collections, list[tuple[int, list]]]:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            return self._recover()
        except BaseException:
            self.close()
            raise

    def _recover(self) -> tuple[int, Collections, list[tuple[int, list]]]:
        seq, collections = 0, {}
        if self.files.exists(self.path):
            data = self.files.read(self.path)
            self._snapshot_bytes = len(data)
            try:
                self.snapshot_time = os.stat(self.path).st_mtime
            except OSError:  # the file layer read it; its age is only for /healthz
                self.snapshot_time = None
            try:
                seq, collections = decode_snapshot(data)
            except ValueError as exc:
                raise self._damaged(
                    f"the snapshot {self.path} is damaged: {exc}",
                    "Restore it from a backup, or fix it by hand; to start from the journals alone, "
                    "move it away (only if the oldest journal starts at record 1).",
                ) from None
        records: list[tuple[int, list]] = []
        last = seq
        journals = self._journals()
        for number, (_, journal) in enumerate(journals):
            data = self.files.read(journal)
            offset = 0
            while offset < len(data):
                problem, record_seq, payload, size = self._parse(data, offset)
                if problem is not None:
                    if number == len(journals) - 1 and _is_tail(data, offset, last + 1):
                        log.warning(
                            "journal %s: %s at byte %d; cutting off the torn end (%d bytes) of an "
                            "interrupted write", journal, problem, offset, len(data) - offset,
                        )
                        self.files.truncate(journal, offset)
                        break
                    raise self._damaged(
                        f"journal {journal} is damaged at byte {offset}: {problem}",
                        "Restore the storage folder from a backup; or, accepting the loss of every write "
                        f"from there on, truncate that file at byte {offset} and move later journals away.",
                    )
                if record_seq > last + 1:
                    raise self._damaged(
                        f"journal {journal} holds record {record_seq} at byte {offset}, but the records "
                        f"before it end at {last}",
                        "A journal or the snapshot is missing: restore the storage folder from a backup.",
                    )
                if record_seq == last + 1:
                    records.append((record_seq, json.loads(payload)))
                    last = record_seq
                offset += size
            self._journal_bytes += offset
        self._written = self._synced = last
        self._open_journal(last + 1)
        return seq, collections, records

    @staticmethod
    def _parse(data: bytes, offset: int) -> tuple[str | None, int, bytes, int]:
        """(problem or None, seq, payload, record size) of the record at `offset`."""
        if len(data) - offset < _HEADER.size:
            return "the record header is cut short", 0, b"", 0
        length, crc, seq = _HEADER.unpack_from(data, offset)
        if length > MAX_RECORD_BYTES:
            return f"a record claims {length} bytes", seq, b"", 0
        end = offset + _HEADER.size + length
        if end > len(data):
            return "the record is cut short", seq, b"", 0
        payload = data[offset + _HEADER.size:end]
        if zlib.crc32(payload, zlib.crc32(seq.to_bytes(8, "big"))) != crc:
            return "the record checksum does not match", seq, b"", 0
        return None, seq, payload, end - offset

    def _open_journal(self, first_seq: int) -> None:
        journal = self.dir / f"{self.path.name}.{first_seq}.journal"
        self._fd = self.files.open_append(journal)
        self._journal = journal
        self._offset = len(self.files.read(journal))
        self.files.fsync_dir(self.dir)

    # Writing

    def _fail(self, exc: OSError, what: str) -> UnavailableError:
        # After a failed write or fsync nothing more is acknowledged: a retried fsync can
        # report success for data the kernel already dropped ("fsyncgate").
        self._failure = f"{what} failed: {exc}"
        log.error("storage %s: %s; refusing further writes", self.path, self._failure)
        return UnavailableError(f"storage failed, writes are refused: {self._failure}", {"file": str(self.path)})

    def _check(self) -> None:
        if self._failure:
            raise UnavailableError(f"storage failed, writes are refused: {self._failure}", {"file": str(self.path)})
        if self._fd is None:
            raise UnavailableError("storage is closed")

    def append(self, seq: int, operations: list) -> None:
        self._check()
        payload = _encode_json(operations).encode()
        record = encode_record(seq, payload)
        try:
            self.files.write(self._fd, record)
        except OSError as exc:
            try:  # cut a partial record off, so the journal stays readable
                self.files.truncate(self._journal, self._offset)
            except OSError:
                pass  # recovery cuts a torn tail anyway; the write's own error is what to report
            raise self._fail(exc, "journal write") from exc
        self._offset += len(record)
        self._journal_bytes += len(record)
        self._written = seq

    def sync(self, seq: int) -> None:
        # Group commit: whoever holds the lock fsyncs everything written so far, so the
        # writers that queued behind it find their record already durable.
        with self._sync_lock:
            if self._synced >= seq:
                return
            self._check()
            target = self._written
            try:
                self.files.fsync(self._fd)
            except OSError as exc:
                raise self._fail(exc, "journal fsync") from exc
            self._synced = target

    def flush(self) -> None:
        if self._written > self._synced and not self._failure and self._fd is not None:
            self.sync(self._written)

    def rotate(self, seq: int) -> None:
        self._check()
        self.sync(seq)
        with self._sync_lock:
            self.files.close(self._fd)
            self._fd = None
            try:
                self._open_journal(seq + 1)
            except OSError as exc:
                raise self._fail(exc, "opening a new journal") from exc

    def save_snapshot(self, seq: int, collections: Collections) -> bool:
        data = encode_snapshot(seq, collections)
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.files.write_file(temporary, data)
            self.files.replace(temporary, self.path)
            self.files.fsync_dir(self.dir)
            for first_seq, journal in self._journals():
                if first_seq <= seq and journal != self._journal:
                    self.files.unlink(journal)
        except OSError as exc:
            # The journals still hold everything: a failed snapshot loses nothing.
            log.error("storage %s: snapshot at record %d failed: %s", self.path, seq, exc)
            return False
        self._journal_bytes = self._offset
        self._snapshot_bytes = len(data)
        self.snapshot_time = time.time()
        return True

    @property
    def journal_full(self) -> bool:
        return self._journal_bytes > max(64 << 20, 2 * self._snapshot_bytes)

    def close(self) -> None:
        try:
            if self._fd is not None:
                try:
                    self.flush()
                finally:
                    self.files.close(self._fd)
                    self._fd = None
        finally:
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None
