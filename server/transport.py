"""The websockets server: connections, the handshake deadline, caps, encrypted frames, shutdown."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import logging
import select
import selectors
import ssl
import threading
import time
from collections import Counter
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .channel import CLOSE_BAD_RECORD, SERVER_KEY_MISMATCH, ChannelError
from .config import Limits, trusted_networks
from .database import Database
from .logs import Throttle, clip
from .monitor import Monitor
from .session import Service, Session
from .web import console, route

__all__ = ["Foreground", "Limits", "MontybaseServer"]  # Limits re-exported for callers that build servers

log = logging.getLogger("montybase.server")

_FRAME_OVERHEAD = 16 * 1024  # GCM tag and JSON-RPC envelope around a maximal message
CLOSE_HANDSHAKE_TIMEOUT = 4001  # no handshake within limits.handshakeTimeout
CLOSE_TRY_AGAIN_LATER = 1013  # a handshake's slot went to a connection from an address holding fewer
CLOSE_LISTENER_OVERFLOW = 4008  # a listener fell too far behind; the client reconnects and resubscribes
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# A connection gets at most one notification frame this often (seconds): what comes sooner waits
# and goes out in the next frame, so a stream of writes costs its listeners fewer, fuller frames
# while a lone write is sent at once.
NOTIFICATION_GAP = 0.01


# The longest one pause of long work waits for the event loop to put its work down (seconds);
# and how long it lets the loop, on waking, take the GIL.
PAUSE_AT_MOST = 0.002
HAND_OVER = 0.00005


class Foreground(selectors.DefaultSelector):  # type: ignore[misc,valid-type]  # a class: EpollSelector on Linux
    """The event loop's selector, which also tells long work on other threads (index builds
    in the executor, between their steps, where they hold no lock: query.pause) to wait while
    the loop has work in hand: from the moment I/O is ready for it until it waits again.

    Threads take turns with the GIL: each time the loop came back from a system call (the wait
    for I/O, each recv, each send: four per get) it waited for a busy query thread to hand the
    GIL over, up to the switch interval. A thread that waits here asks for no GIL meanwhile,
    so the loop answers in one turn. Long work still goes on under a constant stream of
    requests: a thread waits at most PAUSE_AT_MOST at a time, and after a wait works at least
    as long before it waits again (at worst, half as fast).
    """

    def __init__(self) -> None:
        super().__init__()
        self._busy = threading.Lock()  # held by the loop while it has work in hand
        self._held = False
        self._loop: int | None = None  # the loop's thread
        self._owed = threading.local()  # per thread: until when it works before waiting again

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self._held and (timeout is None or timeout > 0):  # nothing ready: the loop waits
            self._held = False
            self._busy.release()
        self._loop = threading.get_ident()
        events = super().select(timeout)
        if not self._held:  # (a pausing thread may hold the lock for an instant: then not this time)
            self._held = self._busy.acquire(False)
        return events

    def close(self) -> None:
        if self._held:  # the loop has stopped: nothing is in hand
            self._held = False
            self._busy.release()
        super().close()

    def pause(self) -> None:
        """Wait while the loop has work in hand (from any thread but the loop's)."""
        busy, owed = self._busy, self._owed
        start = time.perf_counter()
        if threading.get_ident() == self._loop or start < getattr(owed, "until", 0.0):
            return
        if not busy.locked():
            try:
                if not select.select((self,), (), (), 0)[0]:
                    return
            except ValueError:  # the loop has closed its selector: there is no loop to let go first
                return
            # I/O is ready: the loop is waking, and will want the GIL; sleeping hands it over.
            time.sleep(HAND_OVER)
        if busy.acquire(timeout=PAUSE_AT_MOST):
            busy.release()
        end = time.perf_counter()
        owed.until = end + (end - start)


class MontybaseServer:
    """Serves one Database over WebSocket: connections, caps, timers and encrypted frames; what
    the frames mean is each connection's Session (server/session.py).

    Keys: `keys` maps a key id ("client", "admin") to its key string; the id is the role.
    `trusted_proxies`: addresses or networks of reverse proxies; for connections from them the
    client's address (for per-address limits) is taken from X-Forwarded-For or Forwarded.
    """

    def __init__(
        self,
        database: Database,
        *,
        keys: dict[str, str],
        server_key: str | None = None,
        limits: Limits | None = None,
        origins: list[str | None] | None = None,
        tls: ssl.SSLContext | None = None,
        client_config: dict[str, Any] | None = None,
        static: Path | None = None,
        console: bool = True,
        ping_interval: float = 20.0,
        trusted_proxies: list[str] | None = None,
    ):
        self.database = database
        self.limits = limits or Limits()
        self.service = Service(database, limits=self.limits, keys=keys, server_key=server_key)
        self.origins = origins  # checked at each upgrade (not by websockets), so a reload can change them
        self.tls = tls
        self.client_config = client_config or {}
        self.static = static
        self.console = console  # /admin/ (montybase.json "admin": false turns it off)
        self.ping_interval = ping_interval  # keepalive: a connection that leaves a ping unanswered this long is closed
        self.trusted_proxies = trusted_networks(trusted_proxies)
        self.server: Server | None = None
        self._numbers = itertools.count(1)
        self._open = 0
        self._unauthenticated = 0
        self._per_address: Counter[str] = Counter()
        self.monitor = Monitor(database, self.service, lambda: (self._open, self._unauthenticated))
        # address → its connections still in the handshake (their numbers), oldest first
        self._handshaking: dict[str, dict[ServerConnection, int]] = {}
        self._closing: set[asyncio.Task[None]] = set()  # closes under way (a task needs a reference)
        self._backlog = _Backlog(self.limits.maxOutgoingBytesTotal)

    # Lifecycle

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound address (port 0 picks a free port)."""
        self.server = await serve(
            self._connection,
            host,
            port,
            process_request=self._request,
            server_header=None,
            compression=None,
            # Frames up to twice the message limit are read, so a message over it is answered
            # LIMIT_EXCEEDED by id; only larger ones close the connection (1009).
            max_size=2 * self.limits.maxMessageBytes + _FRAME_OVERHEAD,
            max_queue=self.limits.maxQueue,
            close_timeout=5,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_interval,
            ssl=self.tls,
        )
        _quiet_accept_errors(asyncio.get_running_loop(), self.service.throttle)
        bound = next(iter(self.server.sockets)).getsockname()
        return bound[0], bound[1]

    async def stop(self) -> None:
        """Stop accepting, close connections after their in-flight request, then close the database."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        await asyncio.get_running_loop().run_in_executor(None, self.database.close)

    # Admission, before the WebSocket upgrade

    async def _request(self, connection: ServerConnection, request: Request) -> Response | None:
        """An HTTP request: a page, or an upgrade to admit. Bytes after the request that are no
        WebSocket frame have already failed the connection (websockets sent its end): close it
        without an answer, which websockets would otherwise try to send, logging a traceback."""
        if connection.protocol.eof_sent:
            address = self._client_address(connection, request)
            self.service.throttle.log(logging.INFO, "bad bytes", address,
                                      "refused %s: bytes after its HTTP request that are not WebSocket frames", address)
            connection.transport.abort()
            await asyncio.shield(connection.connection_lost_waiter)
            return connection.respond(HTTPStatus.BAD_REQUEST, "")  # never sent: the connection is closed
        response = self._admit(connection, request)
        if response is None and self.origins is not None:  # an upgrade within the caps, from a page of an allowed site?
            origin = request.headers.get_all("Origin")
            if not (len(origin) <= 1 and (origin[0] if origin else None) in self.origins):
                address = self._client_address(connection, request)
                self.service.throttle.log(logging.WARNING, "refused origin", address,
                                          "refused %s: Origin %s is not allowed", address, clip(", ".join(origin) or "(none)"))
                return connection.respond(HTTPStatus.FORBIDDEN,
                                          "Failed to open a WebSocket connection: invalid Origin header.\n")
        return response

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return self._page(connection, request)
        address = self._client_address(connection, request)
        if (self._per_address[address] >= self.limits.maxConnectionsPerAddress
                or len(self._handshaking.get(address, ())) >= self.limits.maxUnauthenticatedPerAddress):
            self.service.throttle.log(logging.WARNING, "address limit", address,
                                      "refused %s: too many connections from this address", address)
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "Too many connections from your address\n")
        if self._open >= self.limits.maxConnections or (
                self._unauthenticated >= self.limits.maxUnauthenticated and not self._make_room(address)):
            self.service.throttle.log(logging.WARNING, "connection limit", address,
                                      "refused %s: server at its connection limit", address)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections\n")
        return None

    def _make_room(self, address: str) -> bool:
        """The handshake slots are all taken: end the oldest handshake of the address holding the
        most, if it holds more than `address`, so that idle handshakes from however many addresses
        cannot keep a newcomer out (a real client's handshake takes milliseconds, an idle one its
        whole deadline). Whether a slot was freed."""
        top = max(self._handshaking, key=lambda held: len(self._handshaking[held]), default=None)
        if top is None or len(self._handshaking[top]) <= len(self._handshaking.get(address, ())):
            return False
        ws, number = next(iter(self._handshaking[top].items()))
        self._leave_handshake(top, ws)
        self.service.throttle.log(logging.WARNING, "handshake slot taken", top,
                                  "connection %d from %s closed: its handshake slot went to %s (all %d taken)",
                                  number, top, address, self.limits.maxUnauthenticated)
        closing = asyncio.get_running_loop().create_task(ws.close(CLOSE_TRY_AGAIN_LATER, "server busy"))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        return True

    def _leave_handshake(self, address: str, ws: ServerConnection) -> None:
        """`ws` no longer holds a handshake slot (authenticated, gone, or its slot taken); once only."""
        held = self._handshaking.get(address)
        if held is None or held.pop(ws, None) is None:
            return
        if not held:
            del self._handshaking[address]
        self._unauthenticated -= 1

    def _client_address(self, connection: ServerConnection, request: Request) -> str:
        return _client_address(connection.remote_address, request.headers, self.trusted_proxies)

    def _page(self, connection: ServerConnection, request: Request) -> Response:
        extra: dict[str, str] = {}
        target = request.path.partition("?")[0]
        try:
            if target == "/healthz":
                status, content_type, body = self.monitor.health()
            elif target == "/metrics":
                status, content_type, body, extra = self.monitor.scrape(
                    self._client_address(connection, request), request.headers.get("Authorization"))
            elif self.console and (target == "/admin" or target.startswith("/admin/")):
                (status, content_type, body), extra = console(request.path)
            else:
                status, content_type, body = route(
                    request.path, request.headers.get("Host"), self.client_config, self.static, self.tls is not None
                )
        except OSError:
            status, content_type, body = 404, "text/plain; charset=utf-8", b"Not found\n"
        # websockets closes a connection after one plain HTTP answer: say so, or a keep-alive client
        # (Node's fetch) sends its next request on it and loses the race with the close.
        headers = Headers([
            ("Content-Type", content_type), ("Content-Length", str(len(body))), ("Connection", "close"),
            ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"), *extra.items(),
        ])
        return Response(status, HTTPStatus(status).phrase, headers, body)

    # One connection

    async def _connection(self, ws: ServerConnection) -> None:
        number, address = next(self._numbers), self._client_address(ws, ws.request)
        self._open += 1
        self._unauthenticated += 1
        self._per_address[address] += 1
        self._handshaking.setdefault(address, {})[ws] = number
        connection = _Connection(ws, self.limits, number, self._backlog, self.monitor)
        session = connection.session = self.service.session(
            connection.deliver, number=number, address=address, end=connection.end)
        log.info("connection %d opened from %s", number, address)
        try:
            if await self._handshake(ws, session):
                self._leave_handshake(address, ws)
                log.info("connection %d authenticated as %s", number, session.principal.role)
                await self._serve(ws, connection, session)
        finally:
            session.close()
            connection.discard()
            self._open -= 1
            self._leave_handshake(address, ws)
            _decrement(self._per_address, address)
            log.info("connection %d closed (code %s)", number, ws.close_code)

    async def _handshake(self, ws: ServerConnection, session: Session) -> bool:
        """Hand the session handshake frames until it has its record keys, within the deadline."""
        try:
            async with asyncio.timeout(self.limits.handshakeTimeout):
                while session.records is None:
                    reply = session.handshake(await ws.recv())
                    await ws.send(reply.text)
                    if reply.close is not None:
                        await ws.close(*reply.close)
                        return False
            return True
        except TimeoutError:
            self.service.throttle.log(logging.WARNING, "handshake timeout", session.address,
                                      "connection %d from %s refused: no handshake within %ss", session.number,
                                      session.address, self.limits.handshakeTimeout)
            await ws.close(CLOSE_HANDSHAKE_TIMEOUT, "handshake timeout")
        except ConnectionClosed as exc:  # the client left during the handshake: nothing to answer
            if exc.rcvd is not None and exc.rcvd.reason == SERVER_KEY_MISMATCH:
                self.service.throttle.log(logging.WARNING, "serverKey mismatch", session.address,
                                          "connection %d from %s refused by the client: this server's key does not "
                                          "match the serverKey in its client-config.json", session.number,
                                          session.address)
        return False

    async def _serve(self, ws: ServerConnection, connection: _Connection, session: Session) -> None:
        """Open each record, let the session answer it (off the loop when its work blocks, and
        after the write it made is durable), and queue the answer."""
        loop = asyncio.get_running_loop()
        records = session.records
        sender = asyncio.create_task(connection.send_all())
        try:
            async for frame in ws:
                if connection.closing:  # closed for falling behind, or signed out elsewhere
                    break
                if not isinstance(frame, bytes):
                    raise ChannelError("a text frame after the handshake", CLOSE_BAD_RECORD)
                work = session.receive(records.open(frame))
                reply = await loop.run_in_executor(None, work.run) if work.blocking else work.run()
                if reply.sync is not None:
                    await loop.run_in_executor(None, reply.sync)
                if reply.text is not None:
                    await connection.answer(reply.text)
        except ConnectionClosed:
            pass  # the client went away; websockets reports the close code
        except ChannelError as exc:
            log.warning("connection %d closed: %s", session.number, exc)
            await ws.close(exc.close_code, "record refused" if exc.close_code == CLOSE_BAD_RECORD else "rekey")
        finally:
            sender.cancel()


class _Backlog:
    """The bytes waiting to be sent on every connection, capped in total: past the cap, the
    connection furthest behind is closed (4008) and what it had queued is dropped."""

    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0
        self.connections: set[_Connection] = set()

    def shed(self) -> None:
        while self.total > self.limit:
            behind = max((c for c in self.connections if not c.outgoing.empty()), key=lambda c: c.queued, default=None)
            if behind is None:  # only frames already being sent: they cannot be taken back
                return
            behind.overflow(f"the server's outgoing queues hold more than {self.limit} bytes and it is furthest behind")


class _Connection:
    """One connection's queue of outgoing frames, sealed with its session's record keys.

    Notifications go out as one frame, a JSON-RPC batch: those of one moment (one commit, one
    subscription), and those of every moment until NOTIFICATION_GAP has passed since the last
    frame. Answers are not held back: one goes out at once, after the notifications before
    it. Notifications never wait: a connection with `maxOutgoing` notification frames or
    `maxOutgoingBytes` bytes still unsent is closed with 4008 (one frame, however large, is
    always taken into an empty queue), so a slow subscriber never delays a writer or anyone
    else; so is the one furthest behind when all connections together hold more than
    `maxOutgoingBytesTotal`. Answers wait while the queue is that long, which stops reading
    from a client that does not read.
    """

    def __init__(self, ws: ServerConnection, limits: Limits, number: int, backlog: _Backlog, monitor: Monitor):
        self.ws, self.number, self.backlog, self.monitor = ws, number, backlog, monitor
        self.max_frames, self.max_bytes = limits.maxOutgoing, limits.maxOutgoingBytes
        self.session: Session  # set right after, with this connection's `deliver` as its sink
        self.outgoing: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()  # (frame, is a notification)
        self.notifications = 0  # notification frames in the queue
        self.queued = 0  # bytes of the frames in the queue and of the one being sent
        self.closing = False  # closed, or being closed by the server: nothing more is queued
        self.room = asyncio.Event()  # set while the queue is shorter than max_frames and max_bytes
        self.room.set()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._pending: list[tuple[tuple[int, ...], dict[str, Any]]] = []  # (listeners, message) not yet queued
        self._flushing: asyncio.Handle | None = None  # the call of _flush that will queue them
        self._flushed_at = -NOTIFICATION_GAP  # loop time of the last notification frame
        self._sending = asyncio.Lock()  # held while a frame is sealed and sent: records go out in counter order
        self._closer: asyncio.Task[None] | None = None  # the server's close of this connection, kept referenced
        backlog.connections.add(self)

    def deliver(self, chosen: tuple[int, ...], message: dict[str, Any]) -> None:
        """The sink of this connection's listeners (`chosen`: the client's ids for them)."""
        if threading.get_ident() == self._thread:
            self._collect(chosen, message)
        else:  # a write made outside the server's loop (an embedded user of the same database)
            self._loop.call_soon_threadsafe(self._collect, chosen, message)

    def _collect(self, chosen: tuple[int, ...], message: dict[str, Any]) -> None:
        if self.closing:
            return
        if self._flushing is None:
            wait = self._flushed_at + NOTIFICATION_GAP - self._loop.time()
            self._flushing = self._loop.call_later(wait, self._flush) if wait > 0 else self._loop.call_soon(self._flush)
        self._pending.append((chosen, message))

    def _flush(self) -> None:
        """Queue the notifications collected so far as one frame."""
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None
        pending, self._pending = self._pending, []
        if not pending or self.closing:  # already sent ahead of an answer, or nobody to send to
            return
        if self.notifications >= self.max_frames:
            self.overflow(f"its listeners fell {self.max_frames} messages behind")
            return
        frame = self.session.notification(pending).encode()
        if self.queued and self.queued + len(frame) > self.max_bytes:
            self.overflow(f"its listeners fell more than {self.max_bytes} bytes behind")
            return
        self.notifications += 1
        self.monitor.notification_frames += 1
        self._flushed_at = self._loop.time()
        self._put(frame, True)

    def _put(self, frame: bytes, notification: bool) -> None:
        self.outgoing.put_nowait((frame, notification))
        self._hold(len(frame))

    def _hold(self, size: int) -> None:
        self.queued += size
        self.backlog.total += size
        self._update_room()
        if self.backlog.total > self.backlog.limit:
            self.backlog.shed()

    def _release(self, size: int) -> None:
        self.queued -= size
        self.backlog.total -= size
        self._update_room()

    def _update_room(self) -> None:
        if self.closing or (self.outgoing.qsize() < self.max_frames and self.queued < self.max_bytes):
            self.room.set()
        else:
            self.room.clear()

    async def answer(self, frame: str) -> None:
        """Queue an answer after the notifications its request caused (a subscription's first
        snapshot arrives before the answer to it)."""
        if self._pending:
            self._flush()
        if self.closing:
            return
        data = frame.encode()
        if not self._sending.locked() and self.outgoing.empty():  # nothing before it: send it now
            self._hold(len(data))
            try:
                await self._send(data)
            finally:
                self._release(len(data))
            return
        await self.room.wait()
        if not self.closing:
            self._put(data, False)

    async def send_all(self) -> None:
        """Send what is queued, in order."""
        while True:
            frame, notification = await self.outgoing.get()
            self.notifications -= notification
            try:
                await self._send(frame)
            finally:
                self._release(len(frame))

    async def _send(self, frame: bytes) -> None:
        """Seal and send one frame; once the connection is gone, drop it. A frame that cannot go
        out closes the connection, whose client then reconnects instead of waiting for it: at the
        record limit (4000, rekey), or 1011 after anything unexpected, which the log shows."""
        async with self._sending:
            try:
                record = self.session.records.seal(frame)
                self.monitor.sent_bytes += len(record)
                await self.ws.send(record)
            except ConnectionClosed:
                pass  # the client is gone: the frame needs no delivery
            except ChannelError as exc:
                log.warning("connection %d closed: %s", self.number, exc)
                self.end(exc.close_code, "rekey")
            except Exception as exc:  # the sender goes on: a task that died would leave the client waiting
                log.error("connection %d closed: a frame could not be sent", self.number, exc_info=exc)
                self.end(1011, "internal error")

    def overflow(self, why: str) -> None:
        """Close the connection for falling behind (4008), dropping what it has queued."""
        if not self.closing:
            log.warning("connection %d closed: %s", self.number, why)
            self.end(CLOSE_LISTENER_OVERFLOW, "listener queue overflow")

    def end(self, code: int, reason: str) -> None:
        """Close the connection from the server's side, from any thread; what is queued is dropped."""
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.end, code, reason)
        elif not self.closing:
            self.discard()
            self._closer = self._loop.create_task(self.ws.close(code, reason))

    def discard(self) -> None:
        """Queue nothing more, and free what is queued (a frame being sent still goes out)."""
        self.closing = True
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None
        self._pending.clear()
        while not self.outgoing.empty():
            frame, _ = self.outgoing.get_nowait()
            self._release(len(frame))
        self.notifications = 0
        self.backlog.connections.discard(self)
        self.room.set()


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if not counter[key]:
        del counter[key]


_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop, lines: Throttle) -> None:
    """Out of file descriptors, asyncio stops accepting for a second and tries again, logging a
    traceback each time (thousands under a flood): one bounded line instead. Other errors go to
    the handler the loop had."""
    previous = loop.get_exception_handler()
    if getattr(previous, "montybase", False):
        return

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        retry = getattr(getattr(context.get("handle"), "_callback", None), "__name__", "") == "_start_serving"
        if isinstance(error, OSError) and error.errno in _OUT_OF_RESOURCES:
            lines.log(logging.ERROR, "accept", "server", "not accepting connections for a second: %s "
                      "(raise the open-files limit, ulimit -n, or lower limits.maxConnections)", error.strerror)
        elif retry and isinstance(error, (OSError, ValueError)):
            pass  # such a retry, come after the server closed its socket: nothing is left to accept on
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handle.montybase = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handle)


def _client_address(peer: Any, headers: Headers, trusted: tuple[_Network, ...]) -> str:
    """The client's address: the peer's; or, when the peer is a trusted proxy, the right-most
    address in X-Forwarded-For (else Forwarded) that is not itself a trusted proxy. Addresses to
    its left were written by the client, so they are never believed; a hop that is no address
    (a proxy that did not add one) stops the walk at the last proxy seen."""
    address = str(peer[0]) if peer else "unknown"
    ip = _ip(address)
    if ip is None or not any(ip in network for network in trusted):
        return address
    for hop in reversed(_forwarded_for(headers)):
        ip = _ip(hop)
        if ip is None:
            break
        address = str(ip)
        if not any(ip in network for network in trusted):
            break
    return address


def _forwarded_for(headers: Headers) -> list[str]:
    """The hops named in X-Forwarded-For, or in Forwarded's `for=` (RFC 7239), left to right."""
    forwarded_for = headers.get_all("X-Forwarded-For")
    if forwarded_for:
        return [hop for value in forwarded_for for hop in value.split(",")]
    hops = []
    for value in headers.get_all("Forwarded"):
        for element in value.split(","):
            pairs = (pair.partition("=") for pair in element.split(";"))
            hops.append(next((hop for name, _, hop in pairs if name.strip().lower() == "for"), ""))
    return hops


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in a hop ("192.0.2.1", "192.0.2.1:4711", "[2001:db8::1]:4711", quoted), or None."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip
