"""Persistence: a JSON snapshot plus append-only journals, recovery, and the storage lock.

Files beside the snapshot `db.json`: journals `db.json.<first_seq>.journal` and the lock
`db.json.lock`. A journal record is `u32 length | u32 crc32(seq ‖ payload) | u64 seq | payload`,
big-endian, the payload being the compact JSON of one committed write (a list of operations).
The snapshot is `{"__montybase__":1,"seq":…,"idTime":…,"collections":{…},"crc32":…}`, the
checksum covering the bytes before `,"crc32":`, laid out in lines (see snapshot_chunks). A
running storage holds an OS lock (flock) on the lock file and on the journal it appends to.
`MemoryStorage` is the same over files in memory.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import itertools
import json
import logging
import os
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .errors import UnavailableError
from .values import shaped

__all__ = [
    "FileStorage", "LocalFiles", "MemoryFiles", "MemoryStorage", "Recovered", "Storage", "StorageReader",
    "decode_snapshot", "is_sealed_snapshot", "lock_holder", "snapshot_chunks", "take_lock",
]

log = logging.getLogger("montybase.storage")

Collections = dict[tuple[str, ...], dict[str, Any]]
_HEADER = struct.Struct(">IIQ")
MAX_RECORD_BYTES = 256 * 1024 * 1024
SNAPSHOT_FORMAT = 1
_FORMAT_KEY = "__montybase__"  # a key no document or collection may use
_CRC_KEY = b',"crc32":'
_SNAPSHOT_START = b'{"%s":' % _FORMAT_KEY.encode()
_COLLECTIONS_LINE = b',"collections":{'  # the end of a snapshot's first line
SNAPSHOT_CHUNK = 1000  # documents encoded in one call (about a millisecond)
# A snapshot goes to its file as it is encoded, in writes of about this many bytes, each of which
# lets the other threads run (encoded whole into one buffer first, it held the whole file in
# memory, and readers waited 50 to 135 ms at times while that buffer grew).
WRITE_SIZE = 1 << 20


_encode_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
# The journal's and the snapshot's JSON: orjson writes the same compact UTF-8 JSON as _encode_json
# (numbers may be spelled differently: 1e16, not 1e+16) and reads a snapshot several times faster
# than json (1,000,000 documents: 1.8 s instead of 3.5 s, without the garbage collector; see
# decode_snapshot). Values reaching it are checked JSON (values.prepare): finite numbers within
# ±(2^53-1), str keys.
_dumps, _loads = orjson.dumps, orjson.loads


def encode_record(seq: int, payload: bytes) -> bytes:
    """One journal record."""
    seq_bytes = seq.to_bytes(8, "big")
    return _HEADER.pack(len(payload), zlib.crc32(payload, zlib.crc32(seq_bytes)), seq) + payload


class Recovered(NamedTuple):
    """What start-up found: the snapshot's record number, collections and id time (the latest
    generated id's millisecond), then the journal records after it as (seq, operations)."""

    seq: int
    collections: Collections
    id_time: int
    records: list[tuple[int, list]]


def snapshot_chunks(seq: int, collections: Mapping[tuple[str, ...], Any], id_time: int,
                    counted: Callable[[int], None] = lambda _: None) -> Iterator[bytes]:
    """The snapshot file's bytes, a piece at a time: plain JSON, collections keyed by their
    '/'-joined path, and as its last member the CRC-32 of every byte before it (`,"crc32":`
    excluded). `counted(documents)` follows each piece (a progress bar).

    Encoded SNAPSHOT_CHUNK documents at a time: one call encoding a million documents would
    hold the GIL for seconds, and every other thread (readers, writers) with it; between
    chunks they get their turn. Each chunk is a line, as are the header, each collection's
    opening and its closing brace, and the checksum (compact JSON has no line break of its own):
    decode_snapshot reads such a file a line at a time."""
    crc = 0

    def piece(data: bytes) -> bytes:
        nonlocal crc
        crc = zlib.crc32(data, crc)
        return data

    head = _encode_json({_FORMAT_KEY: SNAPSHOT_FORMAT, "seq": seq, "idTime": id_time})
    yield piece(head[:-1].encode("utf-8") + _COLLECTIONS_LINE + b"\n")
    for n, (path, docs) in enumerate(collections.items()):
        yield piece(f'{"," if n else ""}{_encode_json("/".join(path))}:{{\n'.encode("utf-8"))
        if hasattr(docs, "chunks"):
            chunks = docs.chunks(SNAPSHOT_CHUNK)
        else:
            items = iter(docs.items())
            chunks = iter(lambda: dict(itertools.islice(items, SNAPSHOT_CHUNK)), {})
        separator = b""
        for chunk in chunks:
            yield piece(b"%s%s\n" % (separator, _encode_chunk(chunk)[1:-1]))
            counted(len(chunk))
            separator = b","
        yield piece(b"}\n")
    yield piece(b"}")
    yield b"%s%d}\n" % (_CRC_KEY, crc)


def _encode_chunk(chunk: dict[str, Any]) -> bytes:
    try:
        return _dumps(chunk)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, from an original tree: json writes it
        return _encode_json(chunk).encode("utf-8")


def _joined(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The pieces joined into runs of at least `size` bytes (the last one shorter)."""
    run: list[bytes] = []
    length = 0
    for piece in pieces:
        run.append(piece)
        length += len(piece)
        if length >= size:
            yield b"".join(run)
            run, length = [], 0
    if run:
        yield b"".join(run)


def is_sealed_snapshot(data: bytes) -> bool:
    """Whether `data` has the frame of a snapshot with its checksum (what a backup must have;
    decode_snapshot also takes a bare tree, and a snapshot without "crc32")."""
    return data.startswith(_SNAPSHOT_START) and data.endswith(b"}\n") and _CRC_KEY in data


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def decode_snapshot(data: bytes) -> tuple[int, Collections, int]:
    """Parse a snapshot, or an original Montybase `db.json` (a bare tree of collections). A
    snapshot without "crc32" (older, or fixed by hand) loads unchecked. Returns (seq,
    collections, id time).

    A Montybase snapshot is read by orjson (its integers are within ±(2^53-1): orjson reads an
    integer beyond 64 bits as a float, json as an int). An original tree, written by another
    program, and anything orjson refuses (a lone surrogate that json takes, or no JSON at all:
    json's message says where) are read by json, as they always were."""
    tree: Any = None
    if data.startswith(_SNAPSHOT_START):
        try:
            tree = _by_lines(data) or _loads(data)
        except orjson.JSONDecodeError:
            pass  # json says what is wrong, or takes it
    if tree is None:
        try:
            tree = json.loads(data, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"it is not valid JSON ({exc})") from None
    if not isinstance(tree, dict):
        raise ValueError("its top level is not a JSON object")
    if _FORMAT_KEY in tree:
        if (
            tree[_FORMAT_KEY] != SNAPSHOT_FORMAT or type(tree.get("seq")) is not int
            or type(tree.get("idTime", 0)) is not int or not isinstance(tree.get("collections"), dict)
        ):
            raise ValueError(f"its header is not a Montybase snapshot of format {SNAPSHOT_FORMAT}")
        # (Over a view: a slice would copy the whole file first, 50 ms of 94 MB.)
        if "crc32" in tree and zlib.crc32(memoryview(data)[:data.rfind(_CRC_KEY)]) != tree["crc32"]:
            raise ValueError("its checksum does not match its content (if it was fixed by hand, remove its \"crc32\")")
        seq, id_time, body = tree["seq"], tree.get("idTime", 0), tree["collections"]
        collections = {tuple(key.split("/")): docs for key, docs in body.items()}
    else:  # an original Montybase tree: {collection: {id: document}}
        seq, id_time, collections = 0, 0, {(key,): docs for key, docs in tree.items()}
    for path, docs in collections.items():
        # The kinds of the values, gathered in C (a Python loop over a million documents: 0.1 s).
        if not isinstance(docs, dict) or not set(map(type, docs.values())) <= {dict}:
            raise ValueError(f"collection {'/'.join(path)!r} is not an object of documents (objects)")
    return seq, {path: docs for path, docs in collections.items() if docs}, id_time


def _by_lines(data: bytes) -> dict[str, Any] | None:
    """A snapshot laid out as snapshot_chunks writes it, decoded a line at a time, its documents
    stored `shaped`: None if it is laid out otherwise (written before lines, or edited by hand).

    Against one call for the whole file: the documents of a chunk are made while the memory of
    the chunk before is still in the cache, and the dicts of each decoded chunk are freed before
    the next one is decoded, so the shaped copies reuse their memory. A million documents: 0.6 s
    to decode instead of 1.0, 1.0 with the shaping; then 581 MB of RSS instead of 656, and at
    most 670 MB while loading instead of 1,018."""
    end = data.find(b"\n")
    if end < 0 or not data.startswith(_COLLECTIONS_LINE, end - len(_COLLECTIONS_LINE)):
        return None
    tree = _loads(data[:end - len(_COLLECTIONS_LINE)] + b"}")
    collections = tree["collections"] = {}
    docs = None  # the collection being read
    start = end + 1
    while (end := data.find(b"\n", start)) >= 0:
        line, start = data[start:end], end + 1
        if docs is not None:
            if line == b"}":
                docs = None
                continue
            chunk = _loads(b"{%s}" % (line[1:] if line.startswith(b",") else line))
            for doc_id, document in chunk.items():  # replacing the values of existing keys is safe
                chunk[doc_id] = shaped(document)
            docs.update(chunk)
        elif line.startswith(b"}" + _CRC_KEY) and start == len(data):
            tree["crc32"] = _loads(line[len(_CRC_KEY) + 1:-1])
            return tree
        elif line.endswith(b":{"):
            collections[_loads(line[1:-2] if line.startswith(b",") else line[:-2])] = docs = {}
        else:
            return None
    return None


def _is_torn(data: bytes, offset: int, size: int) -> bool:
    """Whether the bad record at `offset` (`size` bytes if complete, else 0) looks like an append
    that never finished: cut short, or ending in a zero byte (blocks the disk allocated but never
    wrote read as zeros, and a payload always ends in "]"). A complete record that fails its
    checksum was written whole and changed since: damage, not a torn write."""
    return size == 0 or data[offset + size - 1] == 0


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

    def write_file(self, path: Path, pieces: Iterable[bytes]) -> int:
        """Create or truncate `path`, write the pieces (joined into writes of about WRITE_SIZE
        bytes), fsync it; the bytes written."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            size = 0
            for data in _joined(pieces, WRITE_SIZE):
                self.write(fd, data)
                size += len(data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return size

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

    def make_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def lock(self, fd: int) -> bool:
        """Hold an exclusive lock on the open file `fd` until it is closed (or the process ends);
        False if another holds one. Another start's probe (`holder`) takes a shared lock for an
        instant: a few tries get past it."""
        for _ in range(10):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                time.sleep(0.01)
        return False

    def holder(self, path: Path) -> str | None:
        """Who holds an exclusive lock on `path` ("process 123" where the OS tells), or None."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            for _ in range(3):  # a holder that lets go between the probe and the look-up: probe again
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    return None
                except BlockingIOError:
                    owner = _flock_owner(fd)
                    if owner is not None:
                        return owner
            return "another process"
        finally:
            os.close(fd)


def _flock_owner(fd: int) -> str | None:
    """The process holding an exclusive flock on `fd`'s file, from Linux's /proc/locks, whose
    lines read "1: FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF"."""
    stat = os.fstat(fd)
    inode = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as table:
            for line in table:
                fields = line.split()
                if fields[1:2] == ["FLOCK"] and fields[3:4] == ["WRITE"] and fields[5:6] == [inode]:
                    return f"process {fields[4]}"
    except OSError:
        pass  # no /proc (not Linux): the holder stays unnamed
    return None


class MemoryFiles(LocalFiles):
    """The same operations on files held in this object: the disk of a MemoryStorage.

    A name maps to its bytes (an "inode"); an open descriptor keeps its inode, so, as on a real
    disk, appending to a journal that was unlinked or replaced changes no name. Nothing is
    volatile: a dropped process keeps everything it wrote, as a killed one does on a disk.
    """

    def __init__(self) -> None:
        self.files: dict[Path, bytearray] = {}
        self._open: dict[int, bytearray] = {}
        self._next_fd = 0

    def _inode(self, path: Path) -> bytearray:
        try:
            return self.files[path]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path)) from None

    def open_append(self, path: Path) -> int:
        self._next_fd += 1
        self._open[self._next_fd] = self.files.setdefault(path, bytearray())
        return self._next_fd

    def write(self, fd: int, data: bytes) -> None:
        self._open[fd] += data

    def fsync(self, fd: int) -> None:
        pass  # memory is as durable as it gets: the twin has no cache to flush

    def close(self, fd: int) -> None:
        del self._open[fd]

    def read(self, path: Path) -> bytes:
        return bytes(self._inode(path))

    def write_file(self, path: Path, pieces: Iterable[bytes]) -> int:
        inode = self.files.setdefault(path, bytearray())
        inode[:] = b"".join(pieces)
        return len(inode)

    def truncate(self, path: Path, size: int) -> None:
        del self._inode(path)[size:]

    def replace(self, source: Path, target: Path) -> None:
        self.files[target] = self._inode(source)
        del self.files[source]

    def fsync_dir(self, path: Path) -> None:
        pass  # names in memory are final at once

    def unlink(self, path: Path) -> None:
        self._inode(path)
        del self.files[path]

    def listdir(self, path: Path) -> list[str]:
        return [name.name for name in self.files if name.parent == path]

    def exists(self, path: Path) -> bool:
        return path in self.files

    def make_dir(self, path: Path) -> None:
        pass  # paths in memory need no folders

    def lock(self, fd: int) -> bool:
        return True

    def holder(self, path: Path) -> str | None:
        return None


class Storage:
    """What the database needs from persistence. This base keeps nothing: `":memory:"` uses it,
    as the tree in memory is all there is and nothing could open that database again."""

    durable = False
    shared = False  # several nodes write it (server/postgres.py): writes take Database._commit_shared
    failure: str | None = None  # why writes are refused since a write or fsync failed, or None
    unreachable = False  # shared storage: its server does not answer now (writes are refused meanwhile)
    snapshot_time: float | None = None  # when the snapshot on disk was written (epoch seconds), if any

    def load(self) -> Recovered:
        """Recover the state the storage holds (and hold it: the lock)."""
        return Recovered(0, {}, 0, [])

    def append(self, seq: int, operations: list) -> None:
        """Journal one committed write (called under the database lock, before it applies)."""

    def sync(self, seq: int) -> None:
        """Return once the record `seq` is on stable storage."""

    def flush(self) -> None:
        """Make everything written so far durable (the once-a-second fsync)."""

    def rotate(self, seq: int) -> None:
        """Start a new journal after record `seq` (under the database lock, before a snapshot)."""

    def save_snapshot(self, seq: int, collections: Collections, id_time: int) -> bool:
        """Write the state at `seq` (and the id time) atomically, then drop the journals it covers;
        False if it failed."""
        return True

    def resume(self, seq: int, collections: Collections, id_time: int) -> bool:
        """After a failure: try to write the state in memory (every write through `seq`) as the
        snapshot and start a fresh journal after it. True once writes are accepted again; False,
        quietly, while the disk still fails."""
        return True

    @property
    def journal_full(self) -> bool:
        """The journals have grown past max(64 MiB, 2× the snapshot): time for a snapshot."""
        return False

    def close(self) -> None:
        """Flush and release the storage."""


class StorageReader(Storage):
    """A storage's files as they are, read without its lock and without changing a byte: what a
    running server holds, up to its last journaled write (for `montybase rules`, `backup`,
    `export`). Reading stops at the first incomplete or damaged record; nothing is ever written.

    A running server replaces the snapshot (a rename) and only then drops the journals it covers:
    when the snapshot is the same file before and after the journals were read, no journal this
    read needed was dropped, so the records read are every write up to the last complete one (a
    consistent state). Otherwise it reads again (a few times)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).absolute()

    def _identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def load(self) -> Recovered:
        for _ in range(20):
            before = self._identity()
            try:
                recovered = self._read()
            except FileNotFoundError:  # a snapshot replaced or a journal dropped while read
                continue
            if self._identity() == before:
                return recovered
        raise UnavailableError(f"storage {self.path} kept changing while it was read; try again")

    def _read(self) -> Recovered:
        seq, collections, id_time = decode_snapshot(self.path.read_bytes()) if self.path.exists() else (0, {}, 0)
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
                    return Recovered(seq, collections, id_time, records)
                if record_seq == last + 1:
                    records.append((record_seq, _loads(payload)))
                    last = record_seq
                offset += size
        return Recovered(seq, collections, id_time, records)


class FileStorage(Storage):
    """Snapshot + journals on disk; see the module docstring for the format."""

    durable = True

    def __init__(self, path: str | os.PathLike[str], *, files: LocalFiles | None = None):
        self.path = Path(path).absolute()
        self.dir = self.path.parent
        self.files = files or LocalFiles()
        self._journal_re = re.compile(re.escape(self.path.name) + r"\.(\d+)\.journal")
        self._lock_fd: int | None = None
        self._start_session()

    def _start_session(self) -> None:
        self._fd: int | None = None
        self._journal: Path | None = None
        self._offset = 0  # bytes of the current journal known good
        self._written = 0  # last seq handed to the OS
        self._synced = 0  # last seq known durable
        self._unsynced_name = False  # the current journal's name not yet made durable (_open_journal)
        self._journal_bytes = 0
        self._snapshot_bytes = 0
        self.failure = None
        self._sync_lock = threading.Lock()

    # Start-up

    def _lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd, holder = take_lock(lock_path)
        if fd is None:
            raise self._in_use(holder, f"lock {lock_path}", lock_path)
        self._lock_fd = fd

    def _journals(self) -> list[tuple[int, Path]]:
        found = []
        for name in self.files.listdir(self.dir):
            match = self._journal_re.fullmatch(name)
            if match:
                found.append((int(match.group(1)), self.dir / name))
        return sorted(found)

    def _in_use(self, holder: str, how: str, file: Path) -> UnavailableError:
        return UnavailableError(
            f"storage {self.path} is in use by {holder} ({how}); stop that process or give this one "
            "another storageBucket", {"file": str(file)},
        )

    def _other_writer(self, listed: list[tuple[int, Path]] | None = None) -> UnavailableError | None:
        """The error to refuse with if another process writes this storage though this one holds
        the lock file (it was removed or replaced): that process holds its newest journal, and it
        creates the next before it lets go of one. `listed`: the journals found at the start."""
        changed = listed is not None and self._journals() != listed
        for _ in range(3):  # a switch of journals may slip between a look at the folder and a probe
            for _, journal in reversed(self._journals()):
                holder = self.files.holder(journal)
                if holder is not None:
                    return self._in_use(holder, f"it writes {journal}; the lock file was removed or replaced", journal)
            if not changed:
                return None
        return self._in_use("another process", "its journals changed while this one started", self.dir)

    def _damaged(self, what: str, how: str) -> UnavailableError:
        # Damage seen while another process changes the files is no damage: say who it is.
        return self._other_writer() or UnavailableError(
            f"Montybase will not start: {what}. Nothing was changed. {how}", {"file": str(self.path)}
        )

    def load(self) -> Recovered:
        self.files.make_dir(self.dir)
        self._lock()
        try:
            return self._recover()
        except BaseException:
            self.close()
            raise

    def _recover(self) -> Recovered:
        journals = self._journals()
        other = self._other_writer()
        if other is not None:
            raise other
        seq, collections, id_time = 0, {}, 0
        if self.files.exists(self.path):
            data = self.files.read(self.path)
            self._snapshot_bytes = len(data)
            try:
                self.snapshot_time = os.stat(self.path).st_mtime
            except OSError:  # the file layer read it; its age is only for /healthz
                self.snapshot_time = None
            try:
                seq, collections, id_time = decode_snapshot(data)
            except ValueError as exc:
                raise self._damaged(
                    f"the snapshot {self.path} is damaged: {exc}",
                    "Restore it from a backup, or fix it by hand; to start from the journals alone, "
                    "move it away (only if the oldest journal starts at record 1).",
                ) from None
        records: list[tuple[int, list]] = []
        last = seq
        torn: tuple[Path, int] | None = None
        for number, (first_seq, journal) in enumerate(journals):
            if first_seq > last + 1:  # even an empty journal says where the records before it end
                if last == 0 and not self.files.exists(self.path):
                    raise self._damaged(
                        f"the snapshot {self.path} is missing, but journal {journal} continues it "
                        f"from record {first_seq - 1}",
                        "Restore the snapshot from a backup; or, to start empty, move the journals away.",
                    )
                raise self._damaged(
                    f"journal {journal} holds the records from {first_seq} on, but the records before "
                    f"it end at {last}",
                    "A journal or the snapshot is missing: restore the storage folder from a backup.",
                )
            try:
                data = self.files.read(journal)
            except FileNotFoundError:  # listed a moment ago: another process dropped it
                raise self._other_writer(journals) or self._damaged(
                    f"journal {journal} was removed while it was read", "Start again once nothing else changes the folder."
                ) from None
            offset = 0
            while offset < len(data):
                problem, record_seq, payload, size = self._parse(data, offset)
                if problem is not None:
                    newest = number == len(journals) - 1
                    if newest and _is_torn(data, offset, size) and _is_tail(data, offset, last + 1):
                        torn = journal, offset
                        log.warning(
                            "journal %s: %s at byte %d; cutting off the torn end (%d bytes) of an "
                            "interrupted write", journal, problem, offset, len(data) - offset,
                        )
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
                    records.append((record_seq, _loads(payload)))
                    last = record_seq
                offset += size
            self._journal_bytes += offset
        other = self._other_writer(journals)
        if other is not None:
            raise other
        if torn is not None:
            self.files.truncate(*torn)
        self._written = self._synced = last
        self._open_journal(last + 1)
        return Recovered(seq, collections, id_time, records)

    @staticmethod
    def _parse(data: bytes, offset: int) -> tuple[str | None, int, bytes, int]:
        """(problem or None, seq, payload, record size) of the record at `offset`; the size is 0
        when there is no complete record there (cut short, or an impossible length)."""
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
            return "the record checksum does not match", seq, b"", end - offset
        return None, seq, payload, end - offset

    def _open_journal(self, first_seq: int, *, sync_dir: bool = True) -> None:
        """Open (and lock) the journal that starts at `first_seq` as the current one. Without
        `sync_dir`, its name is made durable by the first `sync` after (a snapshot's rotation,
        under the database lock, leaves that fsync of the folder to writers no longer waiting
        for it: 5 to 60 ms here)."""
        journal = self.dir / f"{self.path.name}.{first_seq}.journal"
        fd = self.files.open_append(journal)
        try:
            if not self.files.lock(fd):
                raise self._other_writer() or self._in_use("another process", f"it writes {journal}", journal)
            offset = len(self.files.read(journal))
            if sync_dir:
                self.files.fsync_dir(self.dir)
        except BaseException:
            self.files.close(fd)
            raise
        self._fd, self._journal, self._offset = fd, journal, offset
        self._unsynced_name = not sync_dir

    # Writing

    def _fail(self, exc: Exception, what: str) -> UnavailableError:
        # After a failed write or fsync nothing more goes to that journal: a retried fsync can
        # report success for data the kernel already dropped ("fsyncgate"). `resume` starts afresh.
        self.failure = f"{what} failed: {exc}"
        log.error("storage %s: %s; refusing writes (reads go on) until it can write again", self.path, self.failure)
        return UnavailableError(f"storage failed, writes are refused: {self.failure}", {"file": str(self.path)})

    def _check(self) -> None:
        if self.failure:
            raise UnavailableError(f"storage failed, writes are refused: {self.failure}", {"file": str(self.path)})
        if self._fd is None:
            raise UnavailableError("storage is closed")

    def append(self, seq: int, operations: list) -> None:
        self._check()
        payload = _dumps(operations)
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
                if self._unsynced_name:
                    self.files.fsync_dir(self.dir)
                    self._unsynced_name = False
                self.files.fsync(self._fd)
            except OSError as exc:
                raise self._fail(exc, "journal fsync") from exc
            self._synced = target

    def flush(self) -> None:
        if self._written > self._synced and not self.failure and self._fd is not None:
            self.sync(self._written)

    def rotate(self, seq: int) -> None:
        self._check()
        self.sync(seq)
        with self._sync_lock:
            if self._journal == self.dir / f"{self.path.name}.{seq + 1}.journal":
                return  # nothing written since it was opened: it already starts after `seq`
            # The new journal is locked before the old one is let go: a process starting now
            # always finds one of them held (_other_writer).
            previous = self._fd
            try:
                self._open_journal(seq + 1, sync_dir=False)
            except (OSError, UnavailableError) as exc:
                raise self._fail(exc, "opening a new journal") from exc
            self.files.close(previous)

    def save_snapshot(self, seq: int, collections: Collections, id_time: int) -> bool:
        try:
            self._write_snapshot(seq, collections, id_time)
        except OSError as exc:
            # The journals still hold everything: a failed snapshot loses nothing.
            log.error("storage %s: snapshot at record %d failed: %s", self.path, seq, exc)
            return False
        return True

    def _write_snapshot(self, seq: int, collections: Collections, id_time: int) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        size = self.files.write_file(temporary, snapshot_chunks(seq, collections, id_time))
        self.files.replace(temporary, self.path)
        self.files.fsync_dir(self.dir)
        for first_seq, journal in self._journals():
            if first_seq <= seq and journal != self._journal:
                self.files.unlink(journal)
        self._journal_bytes = self._offset
        self._snapshot_bytes = size
        self.snapshot_time = time.time()

    def resume(self, seq: int, collections: Collections, id_time: int) -> bool:
        with self._sync_lock:
            if self.failure is None:
                return True
            if self._fd is not None:  # the failed journal takes nothing more; the snapshot covers it
                try:
                    self.files.close(self._fd)
                except OSError:
                    pass  # its data is superseded by the snapshot below; nothing to save from it
                self._fd, self._journal, self._offset = None, None, 0
            try:
                self._write_snapshot(seq, collections, id_time)
                # Whatever a failed write left in the next journal is no record: start it empty.
                self.files.write_file(self.dir / f"{self.path.name}.{seq + 1}.journal", ())
                self._open_journal(seq + 1)
            except (OSError, UnavailableError):
                return False
            failure, self.failure = self.failure, None
            self._written = self._synced = seq
        log.warning(
            "storage %s works again (it failed: %s): the state at record %d is in a new snapshot; "
            "writes are accepted", self.path, failure, seq,
        )
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
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


class MemoryStorage(FileStorage):
    """FileStorage's twin on a MemoryFiles disk: the same format, journals, snapshots and
    recovery, kept in this object instead of a folder.

    It outlives its Database: a new Database opened on it after `close()`, or after the last
    one was dropped without closing (a crash), recovers the same data. Each `load` starts
    afresh as a new process would, so one Database at a time: there is no lock to refuse a
    second.
    """

    def __init__(self, name: str = "db.json", *, files: MemoryFiles | None = None):
        super().__init__(name, files=files or MemoryFiles())
        self.path = Path(":memory:") / name  # what messages name: no folder is involved
        self.dir = self.path.parent

    def load(self) -> Recovered:
        self._start_session()  # whatever a dropped Database left open died with it
        return super().load()

    def _lock(self) -> None:
        pass  # one object, one owner: no other process can reach it

    def _unlock(self) -> None:
        pass  # nothing was locked
