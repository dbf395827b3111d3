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

from .channel import CLOSE_AUTH_FAILED, CLOSE_BAD_RECORD, CLOSE_HANDSHAKE_TIMEOUT, ChannelError, ServerHandshake, Session
from .config import Limits
from .database import Database
from .errors import (
    InvalidArgumentError,
    InvalidRequestError,
    LimitExceededError,
    MontybaseError,
    UnauthenticatedError,
)
from .rpc import ACCOUNT_METHODS, HANDSHAKE_METHODS, LISTENER_METHODS, Call, Rpc, dumps, loads
from .rules import Principal
from .web import route

__all__ = ["Limits", "MontybaseServer"]  # Limits re-exported for callers that build servers

log = logging.getLogger("montybase.server")

_FRAME_OVERHEAD = 16 * 1024  # GCM tag and JSON-RPC envelope around a maximal message
CLOSE_LISTENER_OVERFLOW = 4008  # a listener fell too far behind; the client reconnects and resubscribes
# A connection gets at most one notification frame this often (seconds): what comes sooner waits
# and goes out in the next frame, so a stream of writes costs its listeners fewer, fuller frames
# while a lone write is sent at once.
NOTIFICATION_GAP = 0.01


class MontybaseServer:
    """Serves one Database over WebSocket JSON-RPC with encrypted frames.

    Keys: `keys` maps a key id ("client", "admin") to its key string; the id is the role.
    A client key may read and write documents, but not delete whole collections or read the root.
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
        self.keys = {kid: key for kid, key in keys.items() if key}
        self.server_key = server_key
        self.limits = limits or Limits()
        self.origins = origins
        self.tls = tls
        self.client_config = client_config or {}
        self.static = static
        self.ping_interval = ping_interval  # keepalive: a connection that leaves a ping unanswered this long is closed
        self.rpc = Rpc(max_batch=self.limits.maxBatch)
        self.server: Server | None = None
        self._numbers = itertools.count(1)
        self._open = 0
        self._unauthenticated = 0
        self._per_address: Counter[str] = Counter()

    # Lifecycle

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound address (port 0 picks a free port)."""
        self.server = await serve(
            self._connection,
            host,
            port,
            origins=self.origins,
            process_request=self._admit,
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

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        address = _address(connection)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return self._page(request)
        if self._open >= self.limits.maxConnections or self._unauthenticated >= self.limits.maxUnauthenticated:
            log.warning("refused %s: server at its connection limit", address)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections\n")
        if self._per_address[address] >= self.limits.maxConnectionsPerAddress:
            log.warning("refused %s: too many connections from this address", address)
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "Too many connections from your address\n")
        return None

    def _page(self, request: Request) -> Response:
        try:
            status, content_type, body = route(
                request.path, request.headers.get("Host"), self.client_config, self.static, self.tls is not None
            )
        except OSError:
            status, content_type, body = 404, "text/plain; charset=utf-8", b"Not found\n"
        headers = Headers([
            ("Content-Type", content_type), ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"),
        ])
        return Response(status, HTTPStatus(status).phrase, headers, body)

    # One connection

    async def _connection(self, ws: ServerConnection) -> None:
        number, address = next(self._numbers), _address(ws)
        self._open += 1
        self._unauthenticated += 1
        self._per_address[address] += 1
        authenticated = False
        log.info("connection %d opened from %s", number, address)
        try:
            session = await self._handshake(ws, number)
            if session is None:
                return
            self._unauthenticated -= 1
            authenticated = True
            log.info("connection %d authenticated as %s", number, session.role)
            await self._serve(ws, session, Principal(session.role, None, number, address))
        finally:
            self._open -= 1
            self._unauthenticated -= not authenticated
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]
            log.info("connection %d closed (code %s)", number, ws.close_code)

    async def _handshake(self, ws: ServerConnection, number: int) -> Session | None:
        handshake = ServerHandshake(self.keys, self.server_key)
        answered: list[Any] = [None]  # the id of the request being answered
        try:
            async with asyncio.timeout(self.limits.handshakeTimeout):
                call = self._handshake_call(await ws.recv(), "hello", answered)
                await ws.send(dumps(Rpc.result(call.id, handshake.hello(call.params))))
                call = self._handshake_call(await ws.recv(), "auth", answered)
                result, session = handshake.auth(call.params)
                await ws.send(dumps(Rpc.result(call.id, result)))
                return session
        except TimeoutError:
            log.warning("connection %d refused: no handshake within %ss", number, self.limits.handshakeTimeout)
            await ws.close(CLOSE_HANDSHAKE_TIMEOUT, "handshake timeout")
        except ConnectionClosed:
            pass  # the client left during the handshake: nothing to answer
        except MontybaseError as exc:
            log.warning("connection %d refused: %s", number, exc)
            # One answer with no detail about which check failed, then close.
            refusal = UnauthenticatedError("authentication failed")
            try:
                await ws.send(dumps(Rpc.error(answered[0], refusal)))
                await ws.close(CLOSE_AUTH_FAILED, "authentication failed")
            except ConnectionClosed:
                pass  # already gone: the refusal needs no delivery
        return None

    def _handshake_call(self, frame: str | bytes, method: str, answered: list[Any]) -> Call:
        if not isinstance(frame, str):
            raise UnauthenticatedError("handshake frames are text")
        messages, batch = self.rpc.parse(frame)
        answered[0] = Rpc.request_id(messages[0])
        call = self.rpc.call(messages[0])
        if batch or call.method != method or call.notification:
            raise UnauthenticatedError(f"expected the {method!r} handshake request, got {call.method!r}")
        return call

    async def _serve(self, ws: ServerConnection, session: Session, principal: Principal) -> None:
        number = principal.connection
        connection = _Connection(ws, session, principal, self.limits.maxOutgoing)
        sender = asyncio.create_task(connection.send_all())
        try:
            async for frame in ws:
                if not isinstance(frame, bytes):
                    raise ChannelError("a text frame after the handshake", CLOSE_BAD_RECORD)
                text = session.open(frame)
                if len(text) > self.limits.maxMessageBytes:
                    answer = dumps(Rpc.error(_readable_id(text), LimitExceededError(
                        f"the message is {len(text)} bytes; at most {self.limits.maxMessageBytes} are allowed",
                        {"limit": self.limits.maxMessageBytes, "actual": len(text)})))
                else:
                    answer = await self._answer_frame(text, connection)
                if answer is not None:
                    await connection.answer(answer)
        except ConnectionClosed:
            pass  # the client went away; websockets reports the close code
        except ChannelError as exc:
            log.warning("connection %d closed: %s", number, exc)
            await ws.close(exc.close_code, "record refused" if exc.close_code == CLOSE_BAD_RECORD else "rekey")
        finally:
            for subscription, _ in connection.subscriptions.values():
                if subscription is not None:
                    self.database.unwatch(subscription)
            sender.cancel()

    async def _answer_frame(self, text: bytes, connection: _Connection) -> str | None:
        try:
            messages, batch = self.rpc.parse(text)
        except MontybaseError as exc:
            return dumps(Rpc.error(None, exc))
        answers = [answer for message in messages if (answer := await self._answer(message, connection)) is not None]
        if not answers:
            return None
        return dumps(answers if batch else answers[0])

    async def _answer(self, message: Any, connection: _Connection) -> dict[str, Any] | None:
        try:
            call = self.rpc.call(message)
        except MontybaseError as exc:
            return Rpc.error(Rpc.request_id(message), exc)
        if call.notification:  # JSON-RPC: never answered; a write could not be acknowledged
            log.info("ignored a %r notification", call.method)
            return None
        try:
            if call.method in HANDSHAKE_METHODS:
                raise InvalidRequestError("the handshake is already done")
            principal = connection.principal
            if call.method in LISTENER_METHODS:
                return Rpc.result(call.id, self._listen(call, connection))
            loop = asyncio.get_running_loop()
            if call.method in ACCOUNT_METHODS:  # password hashing: off the event loop
                result, seq = await loop.run_in_executor(None, self.database.execute, call.method, call.params, principal)
                uid = None if call.method == "signOut" else result["uid"]
                if uid != principal.uid:
                    principal.uid = uid
                    self._rewatch(connection)
            else:
                result, seq = self.database.execute(call.method, call.params, principal)
            if seq:
                await loop.run_in_executor(None, self.database.wait_durable, seq)
            return Rpc.result(call.id, result)
        except Exception as exc:  # Rpc.error turns anything unexpected into INTERNAL with a log id
            return Rpc.error(call.id, exc)

    def _listen(self, call: Call, connection: _Connection) -> dict[str, Any]:
        chosen = call.params["sub"]
        if call.method == "unsubscribe":
            found = connection.subscriptions.pop(chosen, None)
            return {"found": found is not None and (found[0] is None or self.database.unwatch(found[0]))}
        if chosen in connection.subscriptions:
            raise InvalidArgumentError(f"listener {chosen} is already in use on this connection", {"path": "params.sub"})
        target = {key: call.params[key] for key in ("path", "query") if key in call.params}
        subscription = self.database.watch(target, connection.deliver, chosen, connection.principal)
        connection.subscriptions[chosen] = (subscription, target)
        return {"sub": chosen}

    def _rewatch(self, connection: _Connection) -> None:
        """After a sign-in or sign-out, every listener shows what the new principal may read:
        a fresh full snapshot, or nothing at all if it may read nothing there."""
        for chosen, (subscription, target) in list(connection.subscriptions.items()):
            if subscription is not None:
                self.database.unwatch(subscription)
            try:
                subscription = self.database.watch(target, connection.deliver, chosen, connection.principal)
            except MontybaseError:
                subscription = None
                path = target.get("path")
                if path is not None and len(path) % 2 == 0:
                    connection.deliver((chosen,), {"id": path[-1], "value": None, "exists": False})
                else:
                    connection.deliver((chosen,), {"docs": [], "changes": []})
            connection.subscriptions[chosen] = (subscription, target)


class _Connection:
    """One authenticated connection: its listeners and its queue of outgoing frames.

    Notifications go out as one frame, a JSON-RPC batch: those of one moment (one commit, one
    subscription), and those of every moment until NOTIFICATION_GAP has passed since the last
    frame. Answers are not held back: one goes out at once, after the notifications before
    it. Notifications never wait: a connection with `max_outgoing` notification frames still unsent
    is closed with 4008, so a slow subscriber never delays a writer or anyone else. Answers
    wait while the queue is that long, which stops reading from a client that does not read.
    """

    def __init__(self, ws: ServerConnection, session: Session, principal: Principal, max_outgoing: int):
        self.ws, self.session, self.principal, self.number = ws, session, principal, principal.connection
        self.max_outgoing = max_outgoing
        self.outgoing: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()  # (frame, is a notification)
        self.notifications = 0  # notification frames in the queue
        self.room = asyncio.Event()  # set while the queue is shorter than max_outgoing
        self.room.set()
        # the client's listener id → (the database's, or None while nothing may be read; its target)
        self.subscriptions: dict[int, tuple[int | None, dict[str, Any]]] = {}
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._pending: list[tuple[tuple[int, ...], dict[str, Any]]] = []  # (listeners, message) not yet queued
        self._flushing: asyncio.Handle | None = None  # the call of _flush that will queue them
        self._flushed_at = -NOTIFICATION_GAP  # loop time of the last notification frame
        self._subs_text: dict[tuple[int, ...], str] = {}
        self._sending = asyncio.Lock()  # held while a frame is sealed and sent: records go out in counter order

    def deliver(self, chosen: tuple[int, ...], message: dict[str, Any]) -> None:
        """The database's sink for this connection's listeners (`chosen`: the client's ids)."""
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
        """The notifications collected as one frame: one per distinct message, in order, naming
        every listener of this connection it is for (listeners of one query share one message)."""
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
        listeners: dict[int, tuple[dict[str, Any], tuple[int, ...]]] = {}
        for chosen, message in pending:
            found = listeners.get(id(message))
            listeners[id(message)] = (message, chosen if found is None else found[1] + chosen)
        notifications = [
            f'{{"jsonrpc":"2.0","method":"snapshot","params":{{"subs":{self._subs(chosen)},"snapshot":{_encoded(message)}}}}}'
            for message, chosen in listeners.values()
        ]
        self.notifications += 1
        self._flushed_at = self._loop.time()
        self._put(notifications[0] if len(notifications) == 1 else "[" + ",".join(notifications) + "]", True)

    def _subs(self, chosen: tuple[int, ...]) -> str:
        """The JSON of a list of listener ids, kept for the lists this connection sends again."""
        text = self._subs_text.get(chosen)
        if text is None:
            if len(self._subs_text) >= 64:
                self._subs_text.clear()
            text = self._subs_text[chosen] = dumps(chosen)
        return text

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
                await self.ws.send(self.session.seal(frame.encode()))
            except ConnectionClosed:
                pass


_recent: dict[int, tuple[dict[str, Any], str]] = {}  # id(message) → (message, its JSON), newest last
_RECENT = 64


def _encoded(message: dict[str, Any]) -> str:
    """A message's JSON, encoded once however many connections it goes to (they flush one after
    another on the loop thread, within a few messages). Holding the message keeps its id unique."""
    found = _recent.get(id(message))
    if found is not None:
        return found[1]
    text = dumps(message)
    _recent[id(message)] = (message, text)
    if len(_recent) > _RECENT:
        del _recent[next(iter(_recent))]
    return text


def _readable_id(text: bytes) -> Any:
    """The id of a refused request, so its caller gets the answer (null if it cannot be read)."""
    try:
        return Rpc.request_id(loads(text))
    except (ValueError, RecursionError):
        return None


def _address(connection: ServerConnection) -> str:
    remote = connection.remote_address
    return str(remote[0]) if remote else "unknown"
