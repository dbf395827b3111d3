"""The websockets server: connections, the handshake deadline, caps, encrypted frames, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import threading
from collections import Counter
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .channel import CLOSE_BAD_RECORD, ChannelError
from .config import Limits
from .database import Database
from .logs import clip
from .monitor import Monitor
from .session import Service, Session
from .web import route

__all__ = ["Limits", "MontybaseServer"]  # Limits re-exported for callers that build servers

log = logging.getLogger("montybase.server")

_FRAME_OVERHEAD = 16 * 1024  # GCM tag and JSON-RPC envelope around a maximal message
CLOSE_HANDSHAKE_TIMEOUT = 4001  # no handshake within limits.handshakeTimeout
CLOSE_LISTENER_OVERFLOW = 4008  # a listener fell too far behind; the client reconnects and resubscribes
# A connection gets at most one notification frame this often (seconds): what comes sooner waits
# and goes out in the next frame, so a stream of writes costs its listeners fewer, fuller frames
# while a lone write is sent at once.
NOTIFICATION_GAP = 0.01


class MontybaseServer:
    """Serves one Database over WebSocket: connections, caps, timers and encrypted frames; what
    the frames mean is each connection's Session (server/session.py).

    Keys: `keys` maps a key id ("client", "admin") to its key string; the id is the role.
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
        ping_interval: float = 20.0,
    ):
        self.database = database
        self.limits = limits or Limits()
        self.service = Service(database, limits=self.limits, keys=keys, server_key=server_key)
        self.origins = origins  # checked at each upgrade (not by websockets), so a reload can change them
        self.tls = tls
        self.client_config = client_config or {}
        self.static = static
        self.ping_interval = ping_interval  # keepalive: a connection that leaves a ping unanswered this long is closed
        self.server: Server | None = None
        self._numbers = itertools.count(1)
        self._open = 0
        self._unauthenticated = 0
        self._per_address: Counter[str] = Counter()
        self.monitor = Monitor(self)

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
            address = _address(connection)
            self.service.throttle.log(logging.INFO, "bad bytes", address,
                                      "refused %s: bytes after its HTTP request that are not WebSocket frames", address)
            connection.transport.abort()
            await asyncio.shield(connection.connection_lost_waiter)
            return connection.respond(HTTPStatus.BAD_REQUEST, "")  # never sent: the connection is closed
        response = self._admit(connection, request)
        if response is None and self.origins is not None:  # an upgrade within the caps, from a page of an allowed site?
            origin = request.headers.get_all("Origin")
            if not (len(origin) <= 1 and (origin[0] if origin else None) in self.origins):
                address = _address(connection)
                self.service.throttle.log(logging.WARNING, "refused origin", address,
                                          "refused %s: Origin %s is not allowed", address, clip(", ".join(origin) or "(none)"))
                return connection.respond(HTTPStatus.FORBIDDEN,
                                          "Failed to open a WebSocket connection: invalid Origin header.\n")
        return response

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        address = _address(connection)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return self._page(connection, request)
        if self._open >= self.limits.maxConnections or self._unauthenticated >= self.limits.maxUnauthenticated:
            self.service.throttle.log(logging.WARNING, "connection limit", address,
                                      "refused %s: server at its connection limit", address)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections\n")
        if self._per_address[address] >= self.limits.maxConnectionsPerAddress:
            self.service.throttle.log(logging.WARNING, "address limit", address,
                                      "refused %s: too many connections from this address", address)
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "Too many connections from your address\n")
        return None

    def _page(self, connection: ServerConnection, request: Request) -> Response:
        extra: dict[str, str] = {}
        target = request.path.partition("?")[0]
        try:
            if target == "/healthz":
                status, content_type, body = self.monitor.health()
            elif target == "/metrics":
                status, content_type, body, extra = self.monitor.scrape(
                    _address(connection), request.headers.get("Authorization"))
            else:
                status, content_type, body = route(
                    request.path, request.headers.get("Host"), self.client_config, self.static, self.tls is not None
                )
        except OSError:
            status, content_type, body = 404, "text/plain; charset=utf-8", b"Not found\n"
        headers = Headers([
            ("Content-Type", content_type), ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"), *extra.items(),
        ])
        return Response(status, HTTPStatus(status).phrase, headers, body)

    # One connection

    async def _connection(self, ws: ServerConnection) -> None:
        number, address = next(self._numbers), _address(ws)
        self._open += 1
        self._unauthenticated += 1
        self._per_address[address] += 1
        connection = _Connection(ws, self.limits.maxOutgoing, number, self.monitor)
        session = connection.session = self.service.session(connection.deliver, number=number, address=address)
        log.info("connection %d opened from %s", number, address)
        try:
            if await self._handshake(ws, session):
                self._unauthenticated -= 1
                log.info("connection %d authenticated as %s", number, session.principal.role)
                await self._serve(ws, connection, session)
        finally:
            session.close()
            self._open -= 1
            self._unauthenticated -= session.records is None
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]
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
        except ConnectionClosed:
            pass  # the client left during the handshake: nothing to answer
        return False

    async def _serve(self, ws: ServerConnection, connection: _Connection, session: Session) -> None:
        """Open each record, let the session answer it (off the loop when its work blocks, and
        after the write it made is durable), and queue the answer."""
        loop = asyncio.get_running_loop()
        records = session.records
        sender = asyncio.create_task(connection.send_all())
        try:
            async for frame in ws:
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


class _Connection:
    """One connection's queue of outgoing frames, sealed with its session's record keys.

    Notifications go out as one frame, a JSON-RPC batch: those of one moment (one commit, one
    subscription), and those of every moment until NOTIFICATION_GAP has passed since the last
    frame. Answers are not held back: one goes out at once, after the notifications before
    it. Notifications never wait: a connection with `max_outgoing` notification frames still unsent
    is closed with 4008, so a slow subscriber never delays a writer or anyone else. Answers
    wait while the queue is that long, which stops reading from a client that does not read.
    """

    def __init__(self, ws: ServerConnection, max_outgoing: int, number: int, monitor: Monitor):
        self.ws, self.max_outgoing, self.number, self.monitor = ws, max_outgoing, number, monitor
        self.session: Session  # set right after, with this connection's `deliver` as its sink
        self.outgoing: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()  # (frame, is a notification)
        self.notifications = 0  # notification frames in the queue
        self.room = asyncio.Event()  # set while the queue is shorter than max_outgoing
        self.room.set()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._pending: list[tuple[tuple[int, ...], dict[str, Any]]] = []  # (listeners, message) not yet queued
        self._flushing: asyncio.Handle | None = None  # the call of _flush that will queue them
        self._flushed_at = -NOTIFICATION_GAP  # loop time of the last notification frame
        self._sending = asyncio.Lock()  # held while a frame is sealed and sent: records go out in counter order

    def deliver(self, chosen: tuple[int, ...], message: dict[str, Any]) -> None:
        """The sink of this connection's listeners (`chosen`: the client's ids for them)."""
        if threading.get_ident() == self._thread:
            self._collect(chosen, message)
        else:  # a write made outside the server's loop (an embedded user of the same database)
            self._loop.call_soon_threadsafe(self._collect, chosen, message)

    def _collect(self, chosen: tuple[int, ...], message: dict[str, Any]) -> None:
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
        if not pending:  # already sent ahead of an answer
            return
        if self.notifications >= self.max_outgoing:
            if self.ws.state.name == "OPEN":
                log.warning("connection %d closed: its listeners fell %d messages behind", self.number, self.max_outgoing)
                self._loop.create_task(self.ws.close(CLOSE_LISTENER_OVERFLOW, "listener queue overflow"))
            return
        frame = self.session.notification(pending)
        self.notifications += 1
        self.monitor.notification_frames += 1
        self._flushed_at = self._loop.time()
        self._put(frame, True)

    def _put(self, frame: str, notification: bool) -> None:
        self.outgoing.put_nowait((frame, notification))
        if self.outgoing.qsize() >= self.max_outgoing:
            self.room.clear()

    async def answer(self, frame: str) -> None:
        """Queue an answer after the notifications its request caused (a subscription's first
        snapshot arrives before the answer to it)."""
        if self._pending:
            self._flush()
        if not self._sending.locked() and self.outgoing.empty():  # nothing before it: send it now
            await self._send(frame)
            return
        await self.room.wait()
        self._put(frame, False)

    async def send_all(self) -> None:
        """Send what is queued, in order."""
        while True:
            frame, notification = await self.outgoing.get()
            self.notifications -= notification
            if self.outgoing.qsize() < self.max_outgoing:
                self.room.set()
            await self._send(frame)

    async def _send(self, frame: str) -> None:
        """Seal and send one frame; once the connection is gone, drop it."""
        async with self._sending:
            try:
                record = self.session.records.seal(frame.encode())
                self.monitor.sent_bytes += len(record)
                await self.ws.send(record)
            except ConnectionClosed:
                pass


def _address(connection: ServerConnection) -> str:
    remote = connection.remote_address
    return str(remote[0]) if remote else "unknown"
