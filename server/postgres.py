"""PostgreSQL storage: several Montybase nodes, one database. PostgreSQL is the durable truth and
the one change stream, in commit order; each node keeps the whole tree in memory.

Tables (made by the first node that starts):
- `montybase_changes(seq, operations, at)`: every committed write, numbered without gaps (a
  write takes the stream's lock, `pg_advisory_xact_lock`, so seq order is commit order);
  `operations` is the JSON the file journal would hold.
- `montybase_documents(collection, id, value)`: the current state, what a node loads at start.
- `montybase_state`: one row: the last seq, the latest generated id's millisecond, and
  `pruned`, the last seq whose change was dropped (a node behind it reloads the documents).

A group of a node's writes (Database._commit_shared, group commit): the node computes each
write against its state and the group's writes before it (transforms, transactions, `add` with
a taken key stay atomic across nodes), and `append_latest` commits them in one round trip: it
takes the stream's lock, inserts each as a change with the next seq, updates the documents and
the state, NOTIFYs the other nodes once per change (the payload is the seq and, when they fit in
NOTIFY's 8,000 bytes, the operations) and commits them all at once, unless another node
committed since the node's seq. Then `begin(seq)` takes the stream's lock and returns the
changes after `seq`, which the node applies first, computes the writes again and
`append_group` commits them. Only then are the writes applied in memory and acknowledged. Each node's
follower thread LISTENs (notifications arrive in commit order: the next change's operations,
when it carries them, are applied as they are), and also polls every `poll_seconds` (a lost
notification is only late), reading the changes after the node's seq, in order; after a lost
connection it resumes from there (meanwhile `unreachable` is true: /healthz says so).
"""

from __future__ import annotations

import json
import logging
import re
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

try:
    import psycopg
    from psycopg import IsolationLevel
except ImportError:  # an optional extra: say how to get it when a URL asks for it
    psycopg = None

from .errors import UnavailableError
from .storage import Collections, Recovered, Storage
from .values import shaped

__all__ = ["PostgresReader", "PostgresStorage", "export_state", "import_state", "redacted"]

log = logging.getLogger("montybase.postgres")

STREAM_LOCK = 0x6D6F6E7479  # "monty": the advisory lock of the change stream (one per PostgreSQL database)
SCHEMA_LOCK = 0x6D6F6E7474  # held while the first node makes the tables
CHANNEL = "montybase"
# A notification carries the change's seq, and its operations when they fit (NOTIFY takes at most
# 8,000 bytes): a follower applies those at once, without reading them back (fewer steps for a
# thread that waits for the interpreter between them while its node serves requests).
NOTIFIED_BYTES = 7900
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode

SCHEMA = """
CREATE TABLE IF NOT EXISTS montybase_state (
    id int PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL,
    id_time bigint NOT NULL,
    pruned bigint NOT NULL
);
INSERT INTO montybase_state VALUES (1, 0, 0, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS montybase_changes (
    seq bigint PRIMARY KEY,
    operations text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS montybase_documents (
    collection text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (collection, id)
);
"""

# A document's subcollections are the collections whose path starts with "<its path>/": in "C"
# order, those from "<path>/" up to "<path>0" ("0" follows "/"), which the primary key finds.
_DELETE_DOCUMENT = ("DELETE FROM montybase_documents WHERE (collection = %(parent)s AND id = %(id)s) "
                    "OR (collection > %(below)s AND collection < %(after)s)")
_DELETE_COLLECTION = ("DELETE FROM montybase_documents WHERE collection = %(path)s "
                      "OR (collection > %(below)s AND collection < %(after)s)")
# The state and the changes after a seq, in one statement: (last seq, pruned, seq, operations)
# rows, or one row with the change NULL when there is none ($1: the seq, $2: at most so many).
_CHANGES_AFTER = ("SELECT s.seq, s.pruned, c.seq, c.operations FROM montybase_state s LEFT JOIN LATERAL "
                  "(SELECT seq, operations FROM montybase_changes WHERE seq > $1 ORDER BY seq LIMIT $2) c ON true "
                  "WHERE s.id = 1 ORDER BY c.seq")
# A group of writes of sets only, in one statement: their changes (`operations`: a JSON array of
# each write's operations, numbered from `first`), the documents they leave (`keys`: [[collection,
# id], ...], each once, and `values` beside), the state, and a notification per change, in order.
# JSON texts rather than arrays of text: psycopg's dumping of three arrays per write took about a
# third of a node's CPU. (Values are only ever cast to text: a string holding \u0000 cannot be unescaped.)
# Its guard: when the stream is past `first - 1`, the seqs are NULL and the statement fails
# (not_null_violation on seq): the writes were computed against a state another node has moved on
# from. (A stream behind it, a PostgreSQL that lost commits in a crash, takes the node's state.)
_WRITE = f"""
WITH change AS (INSERT INTO montybase_changes (seq, operations)
                SELECT CASE WHEN s.seq < %(first)s THEN %(first)s + n - 1 END, o::text
                FROM montybase_state s, json_array_elements(%(operations)s::json) WITH ORDINALITY t(o, n) WHERE s.id = 1
                RETURNING seq, operations),
documents AS (
    INSERT INTO montybase_documents (collection, id, value)
    SELECT k->>0, k->>1, v::text FROM ROWS FROM (json_array_elements(%(keys)s::json), json_array_elements(%(values)s::json)) t(k, v)
    ON CONFLICT (collection, id) DO UPDATE SET value = EXCLUDED.value
),
state AS (UPDATE montybase_state SET seq = %(seq)s, id_time = GREATEST(id_time, %(id_time)s) WHERE id = 1)
SELECT pg_notify('{CHANNEL}', seq::text || CASE WHEN octet_length(operations) <= {NOTIFIED_BYTES}
                                              THEN ' ' || operations ELSE '' END)
FROM change ORDER BY seq
"""
# Both statements of a write, prepared once per writer connection: planning them took longer
# than running them (0.16 -> 0.07 ms and 0.30 -> 0.18 ms a write, measured here).
_WRITE_PARAMETERS = ("first", "operations", "keys", "values", "seq", "id_time")
_PREPARE_CHANGES_AFTER = f"PREPARE montybase_changes_after (bigint, int) AS {_CHANGES_AFTER}"
_PREPARE = (f"{_PREPARE_CHANGES_AFTER}; "
            f"PREPARE montybase_write (bigint, json, json, json, bigint, bigint) AS "
            f"{_WRITE % {name: f'${i}' for i, name in enumerate(_WRITE_PARAMETERS, 1)}}")
_UPSERT = ("INSERT INTO montybase_documents (collection, id, value) VALUES (%s, %s, %s) "
           "ON CONFLICT (collection, id) DO UPDATE SET value = EXCLUDED.value")


def redacted(url: str) -> str:
    """The URL without its password (user:password@, or ?password=), for messages and logs."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        rest = f"{credentials.split(':', 1)[0]}:***@{host}"
    return f"{scheme}://" + re.sub(r"([?&]password=)[^&]*", r"\1***", rest)


def _require_driver() -> None:
    if psycopg is None:
        raise UnavailableError("storageBucket is a PostgreSQL URL, but its driver is not installed: "
                               "pip install 'montybase[postgres]'")


class PostgresStorage(Storage):
    """The storage of one node of a database kept in PostgreSQL at `url`.

    Timeouts bound what a write waits for while PostgreSQL is unreachable or stuck: a connection
    (`connect_seconds`), a statement, the stream's lock included (`statement_seconds`). Then the
    write answers UNAVAILABLE; reads and listeners go on from memory. `keep_changes`: how many
    changes stay in montybase_changes for nodes that were away (older ones are dropped).
    """

    shared = True

    def __init__(self, url: str, *, connect_seconds: float = 3.0, statement_seconds: float = 5.0,
                 poll_seconds: float = 1.0, keep_changes: int = 100_000):
        _require_driver()
        self.url, self.where = url, redacted(url)
        self.connect_seconds, self.statement_seconds = connect_seconds, statement_seconds
        self.poll_seconds, self.keep_changes = poll_seconds, keep_changes
        # How long a write waits for the node's other writes (they share one connection) before
        # it answers UNAVAILABLE: each of them is bounded by the timeouts above.
        self.write_wait = connect_seconds + 2 * statement_seconds
        self._writer: Any = None  # the connection of this node's writes (Database._write_lock serializes them)
        self._down_until = 0.0  # after a failed connection, writes fail at once until then
        self._committing = 0  # the last seq this node's writer committed (or is committing)
        # No other node wrote before this node's last write: its next is tried in one round trip
        # (append_latest). While others write too, most such tries would be refused: two steps.
        self.alone = True
        self._stopping = threading.Event()
        self._follower: threading.Thread | None = None

    # Connections

    def _connect(self, *, autocommit: bool = False, statement_seconds: float | None = None,
                 consistent: bool = True) -> Any:
        """A connection; `consistent`: its transactions read one moment (REPEATABLE READ). The
        writer's are READ COMMITTED: what it reads after taking the stream's lock must include
        what was committed while it waited (a REPEATABLE READ snapshot starts before the wait)."""
        timeout = int((self.statement_seconds if statement_seconds is None else statement_seconds) * 1000)
        connection = psycopg.connect(
            self.url, autocommit=autocommit, connect_timeout=max(1, round(self.connect_seconds)),
            application_name="montybase", options=f"-c statement_timeout={timeout}",
            # A PostgreSQL that vanished without closing its sockets is noticed within seconds.
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
            tcp_user_timeout=int((self.connect_seconds + self.statement_seconds) * 1000),
        )
        if consistent:
            connection.isolation_level = IsolationLevel.REPEATABLE_READ
        return connection

    def _unavailable(self, exc: Exception, what: str) -> UnavailableError:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return UnavailableError(f"PostgreSQL at {self.where}: {what} failed: {text}", {"storage": self.where})

    def _writer_connection(self) -> Any:
        if self._writer is not None and not self._writer.closed:
            return self._writer
        if time.monotonic() < self._down_until:
            raise UnavailableError(f"PostgreSQL at {self.where} is unreachable; writes are refused until it answers",
                                   {"storage": self.where})
        writer = None
        try:
            writer = self._connect(autocommit=True, consistent=False)
            # psycopg's own preparing of statements run often clears the session's prepared
            # statements (DEALLOCATE ALL) after a ROLLBACK: ours with them.
            writer.prepare_threshold = None
            _run(writer, _PREPARE)  # (the tables exist: load made them)
        except psycopg.Error as exc:
            if writer is not None:
                writer.close()
            self._down_until = time.monotonic() + min(1.0, self.connect_seconds)
            raise self._unavailable(exc, "connecting") from None
        self._writer = writer
        return writer

    def _drop_writer(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except psycopg.Error:
                pass  # it is broken already: nothing to tell
            self._writer = None

    # Start-up: the documents and their seq, read at one moment

    def load(self) -> Recovered:
        try:
            # Loading may take long: no statement timeout.
            with self._connect(statement_seconds=0, consistent=False) as connection:
                with connection.transaction():  # READ COMMITTED: writes of running nodes go on meanwhile
                    connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                    connection.execute(SCHEMA)
                connection.isolation_level = IsolationLevel.REPEATABLE_READ
                return _read_state(connection)
        except psycopg.Error as exc:
            raise self._unavailable(exc, "loading") from None

    # The write path (called by Database._commit_shared, one group of this node's writes at a time)

    def begin(self, seq: int) -> list[tuple[int, list]] | Recovered:
        """Open a write: take the stream's lock and return what other nodes committed after
        `seq` (or, when those changes were dropped, the whole state to reload)."""
        connection = self._writer_connection()
        try:
            # One round trip: the statements of one simple query run one after the other, each
            # reading what was committed when it starts (READ COMMITTED): the reads, once the lock is held.
            rows = _rows(_run(connection, f"BEGIN; SELECT pg_advisory_xact_lock({STREAM_LOCK}); {_execute_changes_after(seq)}"))
            missed = _changes(connection, seq, rows, lock=True)
            self.alone = not missed
            return missed
        except psycopg.Error as exc:
            self.abort()
            raise self._unavailable(exc, "starting a write") from None

    def append_latest(self, changes: list[tuple[int, list]]) -> bool:
        """Commit the writes `changes` (numbered from the node's seq) in one round trip: the
        stream's lock and the writes, one simple query, which PostgreSQL runs as one transaction
        (committed at its end, rolled back at its first error: the lock is let go at once). False,
        with nothing written, when the stream has moved past the node's seq (another node
        committed meanwhile) or when the writes need `append_group`'s steps (deletes, or a
        compaction due): then the caller takes `begin`'s path."""
        if not _sets_only(changes) or self._pruned(changes):
            return False
        connection = self._writer_connection()
        committing, self._committing = self._committing, changes[-1][0]
        try:
            _run(connection, b"SELECT pg_advisory_xact_lock(%d); %s" % (STREAM_LOCK, self._bind(connection, changes)))
            return True
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.errors.NotNullViolation) and exc.diag.column_name == "seq":
                self._committing, self.alone = committing, False
                return False
            self.abort()  # (nothing to roll back: a broken connection is dropped)
            raise self._unavailable(exc, "committing a write") from None

    def append(self, seq: int, operations: list) -> None:
        """Commit the write `seq` (its documents, the state, a notification); nothing of it on error."""
        self.append_group([(seq, operations)])

    def append_group(self, changes: list[tuple[int, list]]) -> None:
        """Commit the writes `changes` (seq and operations, in order, numbered from the seq the
        stream was at) in one transaction: each its change, its documents and its notification,
        then the state; nothing of them on error."""
        connection = self._writer
        pruned = self._pruned(changes)
        # Its own notifications wake the follower for nothing: the writer applies them. (If the
        # commit's answer is lost, the follower's next poll reads them.)
        self._committing = changes[-1][0]
        try:
            if not pruned and _sets_only(changes):  # the usual writes: one statement and the COMMIT, one round trip
                _run(connection, self._bind(connection, changes) + b"; COMMIT")
                return
            for seq, operations in changes:
                self._write_in_steps(connection, seq, operations, _id_time(operations), pruned)
            if pruned:  # compaction: changes every node has long applied
                connection.execute("DELETE FROM montybase_changes WHERE seq <= %s", (pruned,))
            connection.execute("COMMIT")
        except psycopg.Error as exc:
            # A commit whose answer was lost may have committed: then the follower brings it in,
            # as writes of another node. They were not acknowledged, so nothing acknowledged is lost.
            self.abort()
            raise self._unavailable(exc, "committing a write") from None

    def _pruned(self, changes: list[tuple[int, list]]) -> int:
        """The seq up to which changes are dropped with these (compaction, every 1,000th), or 0."""
        return max((seq - self.keep_changes for seq, _ in changes if seq % 1000 == 0 and seq > self.keep_changes),
                   default=0)

    @staticmethod
    def _bind(connection: Any, changes: list[tuple[int, list]]) -> bytes:
        """The statement writing `changes` (sets only), its values bound on this side, quoted
        by libpq (so that it goes in one simple query with the statements around it)."""
        quote = psycopg.pq.Escaping(connection.pgconn).escape_literal
        first, operations, keys, values, seq, id_time = _bound(changes)
        return b"EXECUTE montybase_write(%d, %s, %s, %s, %d, %d)" % (
            first, quote(operations), quote(keys), quote(values), seq, id_time)

    @staticmethod
    def _write_in_steps(connection: Any, seq: int, operations: list, id_time: int, pruned: int) -> None:
        """A write with deletes: statement after statement, in its order (a set before a delete
        of its collection goes with it)."""
        encoded = _encode(operations)
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO montybase_changes (seq, operations) VALUES (%s, %s)", (seq, encoded))
            for operation in operations:
                path = operation[1]
                joined = "/".join(path)
                if operation[0] == "set":
                    cursor.execute(_UPSERT, ("/".join(path[:-1]), path[-1], _encode(operation[2])))
                elif len(path) % 2:
                    cursor.execute(_DELETE_COLLECTION, {"path": joined, "below": joined + "/", "after": joined + "0"})
                else:
                    cursor.execute(_DELETE_DOCUMENT, {"parent": "/".join(path[:-1]), "id": path[-1],
                                                      "below": joined + "/", "after": joined + "0"})
            cursor.execute("UPDATE montybase_state SET seq = %s, id_time = GREATEST(id_time, %s), "
                           "pruned = GREATEST(pruned, %s) WHERE id = 1", (seq, id_time, pruned))
            notified = f"{seq} {encoded}" if len(encoded.encode()) <= NOTIFIED_BYTES else str(seq)
            cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, notified))

    def abort(self) -> None:
        """Roll back an open write (releasing the stream's lock); a broken connection is dropped."""
        if self._writer is None:
            return
        try:
            self._writer.execute("ROLLBACK")
        except psycopg.Error:
            self._drop_writer()

    def changes(self, seq: int) -> list[tuple[int, list]] | Recovered:
        """What was committed after `seq`, read now (a node making sure it is up to date)."""
        connection = self._writer_connection()
        try:
            connection.isolation_level = IsolationLevel.REPEATABLE_READ  # no lock taken: read one moment
            try:
                with connection.transaction():
                    return _changes_after(connection, seq)
            finally:
                connection.isolation_level = None
        except psycopg.Error as exc:
            self.abort()
            raise self._unavailable(exc, "reading the changes") from None

    # The follower

    def follow(self, seq: Callable[[], int], apply: Callable[[list[tuple[int, list]] | Recovered], None]) -> None:
        """Start the thread that applies what other nodes commit: `apply(changes)` with the
        changes after `seq()` (the node's seq), in order."""
        self._follower = threading.Thread(target=self._follow, args=(seq, apply), name="montybase-follower", daemon=True)
        self._follower.start()

    def _follow(self, seq: Callable[[], int], apply: Callable[[Any], None]) -> None:
        connection, wait, failing, polled = None, 0.1, False, 0.0
        while not self._stopping.is_set():
            try:
                if connection is None:
                    # Used through libpq alone: psycopg's own handling of notifications (a
                    # generator per wait, a backlog of those received during queries) took as
                    # much of the node's CPU as the write that sent them.
                    connection = self._connect(autocommit=True)
                    _run(connection, f"LISTEN {CHANNEL}; {_PREPARE_CHANGES_AFTER}")
                    if failing:
                        log.warning("PostgreSQL at %s answers again: following the changes from %d", self.where, seq())
                        failing = self.unreachable = False
                else:  # woken by a notification, or the poll's time is up (looking at _stopping meanwhile)
                    notified = _notifications(connection.pgconn, min(_WAKE_SECONDS, self.poll_seconds))
                    if not notified and time.monotonic() - polled < self.poll_seconds:
                        continue
                    if notified and self._notified(notified, seq, apply):
                        continue
                polled = time.monotonic()
                while not self._stopping.is_set():
                    # One statement reads one moment (autocommit): no transaction's round trips.
                    found = _changes_after(connection, seq())
                    if found:
                        apply(found)
                    if isinstance(found, Recovered) or len(found) < _PAGE:
                        break
                wait = 0.1
            except psycopg.Error as exc:
                if not failing:
                    log.error("PostgreSQL at %s: following the changes failed (%s); retrying, reads go on from memory",
                              self.where, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                    failing = self.unreachable = True
                if connection is not None:
                    try:
                        connection.close()
                    except psycopg.Error:
                        pass  # broken already
                    connection = None
                self._stopping.wait(wait)
                wait = min(2 * wait, 2.0)
            except Exception:  # a bug must not end the stream: the next round reads again from seq()
                log.exception("applying the changes from PostgreSQL failed")
                self._stopping.wait(1.0)
        if connection is not None:
            connection.close()

    def _notified(self, payloads: list[str], seq: Callable[[], int], apply: Callable[[Any], None]) -> bool:
        """Apply the changes these notifications carry (they arrive in commit order); False when
        the changes must be read instead (one did not carry its operations, or one is missing)."""
        for payload in payloads:
            number, _, operations = payload.partition(" ")
            if not number.isdigit():
                return False
            # A change this node has (or is committing: its writer applies it) needs nothing.
            if int(number) <= max(seq(), self._committing):
                continue
            if int(number) != seq() + 1 or not operations:
                return False
            apply([(int(number), json.loads(operations))])
        return True

    def close(self) -> None:
        self._stopping.set()
        if self._follower is not None:
            self._follower.join(self.poll_seconds + self.connect_seconds + self.statement_seconds + 1)
        self._drop_writer()


_PAGE = 1000  # changes read at once
_WAKE_SECONDS = 0.2  # how soon a follower waiting for a notification sees that its node stops


def _run(connection: Any, statements: str | bytes) -> Any:
    """Run a simple query (statements in one round trip) on libpq itself: the last statement's
    result, or its error raised. A node's write is one such query (three when another node wrote
    since); through psycopg's cursors, which read every statement's result in Python, they cost
    about a third of its CPU."""
    result = connection.pgconn.exec_(statements if isinstance(statements, bytes) else statements.encode())
    if result.status not in (psycopg.pq.ExecStatus.COMMAND_OK, psycopg.pq.ExecStatus.TUPLES_OK):
        raise psycopg.errors.error_from_result(result)
    return result


def _notifications(pgconn: Any, timeout: float) -> list[str]:
    """The payloads of the notifications received on `pgconn` (waiting up to `timeout` for one)."""
    payloads = _received(pgconn)
    if not payloads and select.select([pgconn.socket], [], [], timeout)[0]:
        pgconn.consume_input()  # (raises when the connection is lost)
        payloads = _received(pgconn)
    return payloads


def _received(pgconn: Any) -> list[str]:
    payloads = []
    while (notify := pgconn.notifies()) is not None:
        payloads.append(notify.extra.decode())
    return payloads


def _execute_changes_after(seq: int) -> str:
    return f"EXECUTE montybase_changes_after({int(seq)}, {_PAGE})"


def _rows(result: Any) -> list[tuple[int, int, int | None, str | None]]:
    """The rows of _CHANGES_AFTER in a libpq result: (last seq, pruned, seq, operations)."""
    rows = []
    for row in range(result.ntuples):
        last, pruned, number, operations = (result.get_value(row, column) for column in range(4))
        rows.append((int(last), int(pruned), number and int(number), operations and operations.decode()))
    return rows


def _id_time(operations: list) -> int:
    """The latest generated id's millisecond in a write (0 if none)."""
    return max((operation[3] for operation in operations if len(operation) > 3), default=0)


def _sets_only(changes: list[tuple[int, list]]) -> bool:
    return all(operation[0] == "set" for _, operations in changes for operation in operations)


def _bound(changes: list[tuple[int, list]]) -> tuple[int, bytes, bytes, bytes, int, int]:
    """The parameters of _WRITE (in _WRITE_PARAMETERS' order) for the writes `changes` of sets
    only (the last set of a document wins)."""
    documents = {("/".join(op[1][:-1]), op[1][-1]): op[2] for _, operations in changes for op in operations}
    return (changes[0][0], _json([operations for _, operations in changes]), _json(list(documents)),
            _json(list(documents.values())), changes[-1][0], max(_id_time(operations) for _, operations in changes))


def _json(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, from an original tree: json writes it
        return _encode(value).encode()


def _read_state(connection: Any) -> Recovered:
    """Documents, seq and id time at one moment (the connection's REPEATABLE READ transaction)."""
    with connection.transaction():
        seq, id_time = connection.execute("SELECT seq, id_time FROM montybase_state WHERE id = 1").fetchone()
        collections: Collections = {}
        with connection.cursor(name="montybase_load") as cursor:  # server-side: 100,000s of rows, a batch at a time
            cursor.itersize = 5000
            cursor.execute("SELECT collection, id, value FROM montybase_documents ORDER BY collection, id")
            path, docs = None, None
            for collection, doc_id, value in cursor:
                if collection != path:
                    path = collection
                    docs = collections.setdefault(tuple(collection.split("/")), {})
                docs[doc_id] = shaped(json.loads(value))  # stored as written ones are (Tree.put)
    return Recovered(seq, collections, id_time, [])


def _changes_after(connection: Any, seq: int) -> list[tuple[int, list]] | Recovered:
    """The changes after `seq` (at most _PAGE), in order, read by the connection's prepared
    statement (in its transaction, if one is open); the whole state instead when some of them
    were dropped."""
    return _changes(connection, seq, _rows(_run(connection, _execute_changes_after(seq))))


def _changes(connection: Any, seq: int, rows: list[tuple], *, lock: bool = False) -> list[tuple[int, list]] | Recovered:
    """The changes in `rows` (of _CHANGES_AFTER `seq`), or the state when some were dropped
    (also meanwhile, for a reader without the stream's lock); with the stream's `lock` (a write,
    which needs every change before it), also when there are more than _PAGE."""
    last, pruned = rows[0][:2]
    if last <= seq:
        return []
    if seq < pruned or rows[0][2] != seq + 1 or (lock and rows[-1][2] < last):
        return _read_state(connection)
    return [(number, json.loads(operations)) for _, _, number, operations in rows]


# Moving a store in and out (`montybase migrate`)

def import_state(url: str, collections: Collections, id_time: int, counted: Callable[[int], None]) -> int:
    """Write `collections` as the whole state of an empty Montybase database in PostgreSQL;
    `counted(n)` after each batch of documents. UnavailableError if it holds data already."""
    _require_driver()
    storage = PostgresStorage(url)
    storage.load()  # makes the tables
    try:
        with storage._connect(statement_seconds=0) as connection:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (STREAM_LOCK,))
                seq, = connection.execute("SELECT seq FROM montybase_state WHERE id = 1").fetchone()
                if seq or connection.execute("SELECT 1 FROM montybase_documents LIMIT 1").fetchone():
                    raise UnavailableError(f"PostgreSQL at {storage.where} already holds a Montybase database; "
                                           "migrate into an empty one")
                with connection.cursor() as cursor:
                    with cursor.copy("COPY montybase_documents (collection, id, value) FROM STDIN") as copy:
                        for path, docs in collections.items():
                            collection = "/".join(path)
                            for number, (doc_id, doc) in enumerate(docs.items(), 1):
                                copy.write_row((collection, doc_id, _encode(doc)))
                                if number % 1000 == 0:
                                    counted(1000)
                            counted(len(docs) % 1000)
                # One change that says "the data arrived": nodes started before see it as a reload.
                connection.execute("UPDATE montybase_state SET seq = 1, id_time = %s, pruned = 1 WHERE id = 1", (id_time,))
                connection.execute("SELECT pg_notify(%s, '1')", (CHANNEL,))
    except psycopg.Error as exc:
        raise storage._unavailable(exc, "importing") from None
    return sum(len(docs) for docs in collections.values())


def export_state(url: str) -> Recovered:
    """The whole state of the Montybase database in PostgreSQL at `url`, at one moment."""
    state = _stored_state(url, "exporting")
    if state is None:
        raise UnavailableError(f"PostgreSQL at {redacted(url)} holds no Montybase database")
    return state


class PostgresReader(Storage):
    """The database in PostgreSQL at `url` as it is, read once at one moment, never written (for
    `montybase rules`, as StorageReader reads a file storage): no node starts. A database no node
    has made its tables in yet holds no documents, as a file storage not written yet."""

    def __init__(self, url: str):
        self.url = url

    def load(self) -> Recovered:
        return _stored_state(self.url, "reading") or Recovered(0, {}, 0, [])


def _stored_state(url: str, what: str) -> Recovered | None:
    """The whole state of the Montybase database in PostgreSQL at `url`, at one moment (None
    without its tables); `what` names the step in an error."""
    _require_driver()
    storage = PostgresStorage(url)
    try:
        with storage._connect(statement_seconds=0) as connection:
            exists, = connection.execute("SELECT to_regclass('montybase_state') IS NOT NULL").fetchone()
            if not exists:
                return None
            connection.rollback()
            return _read_state(connection)
    except psycopg.Error as exc:
        raise storage._unavailable(exc, what) from None
