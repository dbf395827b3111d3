"""The remote backend: the same calls, sent to a Montybase server over an encrypted WebSocket."""

from __future__ import annotations

import itertools
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from websockets.exceptions import ConnectionClosed

from ..server.channel import SERVER_KEY_MISMATCH, SERVER_KEY_MISMATCH_MESSAGE, ChannelError, ClientHandshake, Records
from ..server.errors import (ConnectionLostError, InvalidArgumentError, MontybaseError, UnauthenticatedError,
                             UnavailableError, error_class)
from ..server.paths import pointer
from ..server.query import parse_query
from ..server.values import prepare

from .listen import Dispatcher, Listener
from .wire import WebSocket

__all__ = ["RemoteBackend", "websocket_url"]

log = logging.getLogger("montybase.client")

_MAX_FRAME = 16 * 1024 * 1024
# How often an idle connection is looked at (seconds): what waits on it is read, so the server's
# keepalive pings (every 20 s, answered within 20 s) are answered and its close is seen.
_KEEPALIVE = 2.0
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
# Calls with no effect on the server: one whose connection is lost before its answer is asked
# again on the next connection (a write is not: the lost server may have applied it).
_READS = frozenset({"get", "query", "aggregate", "collections"})


def websocket_url(api: str) -> str:
    """`http(s)://` means `ws(s)://`; a trailing slash is dropped."""
    for web, socket_scheme in (("https://", "wss://"), ("http://", "ws://")):
        if api.startswith(web):
            api = socket_scheme + api[len(web):]
    return api.rstrip("/")


def _check_values(method: str, params: dict[str, Any]) -> None:
    """Refuse, as the server would and with its message, values JSON cannot carry faithfully
    (NaN, bytes, lone surrogates, non-string keys, unsafe integers) before anything is sent."""
    writes = params.get("writes") if method == "commit" else [params]
    for i, write in enumerate(writes if isinstance(writes, list) else ()):
        if not isinstance(write, dict):
            continue
        where = pointer("/writes", i) if method == "commit" else ""
        if "value" in write:
            prepare(write["value"], None, pointer(where, "value"), 0, "set")
        for j, pair in enumerate(write.get("fields") or ()):
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                prepare(pair[1], None, pointer(where, "fields", j, 1), 0, "update")
    if "query" in params:
        parse_query(params["query"])


class _Pending:
    """One call's answer. `done` is held until something changes for the caller: its answer
    came, or reading the connection became its turn (a held lock is a lighter wake-up than an
    Event)."""

    __slots__ = ("done", "answer")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.answer: dict[str, Any] | BaseException | None = None

    def wake(self) -> None:
        try:
            self.done.release()
        except RuntimeError:  # already awake
            pass  # a second wake finds it awake: nothing to do


class RemoteBackend:
    """Sends each call as an encrypted JSON-RPC request and waits for its answer.

    Callers read their own answers: whichever caller finds the connection unread reads it,
    hands every answer it meets to its caller, and passes the reading on when its own answer
    is in, so a lone caller never waits on another thread and several threads may call at
    once. While listeners exist, a listening thread reads when no caller does. If the
    connection drops, writes in flight fail with ConnectionLostError (reads are asked again, once,
    on a new connection) and the next call connects again.

    `url` may be a list of endpoints (servers of one database): connecting tries them in turn,
    starting after the one whose connection was lost, so a dead server's clients go on with the
    next one (round robin).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        kid: str,
        key: str,
        server_key: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 60.0,
    ):
        self.urls = [websocket_url(one) for one in ([url] if isinstance(url, str) else url)]
        self._at = 0  # the index in `urls` of the endpoint connected to, or to try first
        self.kid, self.key, self.server_key = kid, key, server_key
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._listener_ids = itertools.count(1)
        self._listeners: dict[int, Listener] = {}
        self.dispatcher = Dispatcher()
        self._lock = threading.RLock()  # guards connecting and sending (record order = send order)
        self._reading = threading.Lock()  # held by the one thread reading the connection
        self._ws: WebSocket | None = None
        self._session: Records | None = None
        self._listening: WebSocket | None = None  # the connection a listening thread reads
        self._pending: dict[int, _Pending] = {}
        self._closed = threading.Event()  # set by close(); keepalive threads waiting on it end at once
        self.token: str | None = None  # a signed-in session, resumed on every new connection
        self.user: dict[str, str] | None = None  # {"uid", "email"} of that session
        self._resume_id: int | None = None

    @property
    def url(self) -> str:
        """The endpoint connected to (or to be tried first)."""
        return self.urls[self._at]

    # Connection

    def _connect(self) -> None:
        """Connect to the first endpoint, from the current one on, that accepts us."""
        if self._closed.is_set():
            raise UnavailableError("this Montybase handle is closed")
        for tried in range(len(self.urls)):
            try:
                return self._connect_to(self.url)
            except (ConnectionLostError, UnavailableError) as exc:  # away or refusing: the next one
                self._at = (self._at + 1) % len(self.urls)
                if tried == len(self.urls) - 1 or self._closed.is_set():
                    raise
                log.info("%s; trying %s", exc, self.url)

    def _connect_to(self, url: str) -> None:
        try:
            ws = WebSocket(url, ssl_context=self.ssl_context, timeout=self.timeout, max_size=_MAX_FRAME)
        except (OSError, TimeoutError) as exc:
            raise ConnectionLostError(f"cannot connect to {url}: {exc}") from exc
        except Exception as exc:  # the server refused the upgrade (limits, origin)
            raise UnavailableError(f"cannot connect to {url}: {exc}") from exc
        try:
            handshake = ClientHandshake(self.kid, self.key, self.server_key)
            hello = self._handshake_step(ws, "hello", handshake.hello())
            auth_params, session = handshake.finish(hello)
            handshake.confirm(self._handshake_step(ws, "auth", auth_params))
        except ConnectionClosed as exc:
            ws.close()
            raise ConnectionLostError(f"the server closed the connection during the handshake: {exc}") from exc
        except ChannelError as exc:
            # Tell the server why we leave, so its log says so too.
            ws.close(reason=SERVER_KEY_MISMATCH if exc.detail == SERVER_KEY_MISMATCH_MESSAGE else "")
            raise UnauthenticatedError(exc.detail) from None
        except BaseException:
            ws.close()
            raise
        self._ws, self._session = ws, session
        # Requests are handled in order: the session is resumed before anything else is asked.
        if self.token is not None:
            self._resume_id = next(self._ids)
            self._send(self._resume_id, "resume", {"token": self.token})
        for chosen, listener in list(self._listeners.items()):  # a fresh full snapshot for each
            self._send(next(self._ids), "subscribe", {"sub": chosen, **listener.params})
        self._listen()
        threading.Thread(target=self._keep_alive, args=(ws,), name="montybase-keepalive", daemon=True).start()

    def _keep_alive(self, ws: WebSocket) -> None:
        """While `ws` is this handle's connection, read what waits on it whenever it idles and
        nobody else reads (WebSocket.open does): the server's pings get their pongs however long
        the program makes no call, and a close is answered and seen."""
        while not self._closed.wait(_KEEPALIVE):
            if self._ws is not ws or not self._still_open(ws):
                return

    def _still_open(self, ws: WebSocket) -> bool:
        """Whether `ws` is open (looking reads what waits on it); if not, it is lost."""
        if ws.open:
            return True
        self._lost(ws, ConnectionLostError("the connection to the server was lost"), by_server=True)
        return False

    def _handshake_step(self, ws: WebSocket, method: str, params: dict[str, Any]) -> dict[str, Any]:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 0, "method": method, "params": params}))
        answer = json.loads(ws.recv(timeout=self.timeout))
        if "error" in answer:
            error = _error(answer["error"])
            if method == "hello" and isinstance(error, UnauthenticatedError):
                # The server checks the key at hello (its hint names none of the kid's keys).
                raise UnauthenticatedError(f"the server refused this key: check {_KEY_FIELDS.get(self.kid, 'the key')}")
            raise error
        return answer["result"]

    def _listen(self) -> None:
        """While listeners exist, a thread reads the connection whenever no caller does (under
        the lock, so a listener added as that thread stops is never left unread)."""
        ws = self._ws
        if self._listeners and ws is not None and self._listening is not ws:
            self._listening = ws
            threading.Thread(target=self._listen_on, args=(ws, self._session), name="montybase-listen",
                             daemon=True).start()

    def _listen_on(self, ws: WebSocket, session: Records) -> None:
        while True:
            with self._lock:
                if self._ws is not ws or not self._listeners or self._closed.is_set():
                    if self._listening is ws:
                        self._listening = None
                    break
            with self._reading:
                self._receive(ws, session, 0.5)
        self._hand_over()

    def _receive(self, ws: WebSocket, session: Records, timeout: float) -> None:
        """Read one message (or wait `timeout` for one) and deliver what it holds. The caller
        holds `_reading`."""
        try:
            frame = ws.recv(timeout=timeout)
            if not isinstance(frame, bytes):
                raise ConnectionLostError("the server sent an unencrypted frame")
            message = json.loads(session.open(frame))
        except TimeoutError:
            return
        except ConnectionClosed as exc:
            code = ws.close_code
            if code in (None, 1000, 1001):
                self._lost(ws, ConnectionLostError(f"the connection to the server was lost: {exc}"), by_server=True)
            else:
                self._lost(ws, ConnectionLostError(
                    f"the server closed the connection (code {code} {ws.close_reason})".strip(), {"closeCode": code}
                ), by_server=True)
            return
        except (MontybaseError, ValueError) as exc:
            ws.close()
            self._lost(ws, ConnectionLostError(f"the connection was closed: {exc}"))
            return
        for answer in message if isinstance(message, list) else [message]:
            if answer.get("method") == "snapshot":
                listeners = [self._listeners.get(chosen) for chosen in answer["params"]["subs"]]
                self.dispatcher.put([listener for listener in listeners if listener is not None],
                                    answer["params"]["snapshot"])
                continue
            pending = self._pending.pop(answer.get("id"), None)
            if pending is not None:
                pending.answer = answer
                pending.wake()
            elif "error" in answer:  # a resumed session or a resubscription the server refused
                log.warning("after reconnecting: %s", answer["error"].get("message"))
                if answer.get("id") == self._resume_id:  # signed out: say so
                    self.token = self.user = None

    def _hand_over(self) -> None:
        """Reading stopped: wake a caller still waiting, to read for itself."""
        for pending in list(self._pending.values()):
            if pending.answer is None:
                pending.wake()
                return

    def _lost(self, ws: WebSocket, failure: ConnectionLostError, *, by_server: bool = False) -> None:
        """`ws` is gone: fail the calls sent on it (`by_server`: closed or crashed on the server's
        side, so their reads may be asked again; not when we refused a record); listeners make us
        connect again."""
        with self._lock:
            if self._ws is not ws:
                return  # seen already
            self._ws = self._session = None
            self._at = (self._at + 1) % len(self.urls)  # that server may be gone: the next one first
            stranded = list(self._pending.values())
            self._pending.clear()
        for pending in stranded:
            pending.answer = _Lost(failure) if by_server else failure
            pending.wake()
        if self._listeners and not self._closed.is_set():
            threading.Thread(target=self._reconnect, name="montybase-reconnect", daemon=True).start()

    def _reconnect(self) -> None:
        """Listeners must not go stale: connect again by ourselves, backing off up to 2 s."""
        delay = 0.05
        while not self._closed.is_set() and self._listeners:
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            with self._lock:
                if self._ws is not None or self._closed.is_set():
                    return
                try:
                    self._connect()
                    return
                except (ConnectionLostError, UnavailableError) as exc:
                    log.info("reconnecting to %s: %s", self.url, exc)

    # Calls

    def _send(self, request_id: int, method: str, params: dict[str, Any]) -> None:
        """Seal and send one request (under the lock: records go out in counter order)."""
        try:
            frame = _encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"params are not JSON: {exc}", {"path": ""}) from None
        try:
            self._ws.send(self._session.seal(frame))
        except ConnectionClosed as exc:
            raise ConnectionLostError(f"the connection to the server was lost: {exc}") from exc

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        _check_values(method, params)
        try:
            return self._call(method, params)
        except _Lost as lost:
            if method not in _READS:
                raise lost.error from None
        try:  # a read changes nothing: ask it again, on a new connection (the next endpoint)
            return self._call(method, params)
        except _Lost as lost:
            raise lost.error from None

    def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        request_id = next(self._ids)
        pending = _Pending()
        with self._lock:
            if self._ws is not None:  # closed while idle?
                self._still_open(self._ws)
            if self._ws is None:
                self._connect()
            ws, session = self._ws, self._session
            self._pending[request_id] = pending
            try:
                self._send(request_id, method, params)
            except ConnectionLostError as exc:
                self._pending.pop(request_id, None)
                self._lost(ws, exc, by_server=True)
                raise _Lost(exc) from None
            except BaseException:
                self._pending.pop(request_id, None)
                raise
        deadline = time.monotonic() + self.timeout
        while pending.answer is None and (remaining := deadline - time.monotonic()) > 0:
            if self._reading.acquire(blocking=False):
                try:
                    while pending.answer is None and deadline > time.monotonic():
                        self._receive(ws, session, self.timeout)  # the same wait each read: no change to set
                finally:
                    self._reading.release()
                    self._hand_over()
            else:  # another thread reads: it hands us our answer, or the reading
                pending.done.acquire(timeout=remaining)
        answer = pending.answer
        if answer is None:
            self._pending.pop(request_id, None)
            raise ConnectionLostError(f"no answer from {self.url} within {self.timeout}s")
        if isinstance(answer, _Lost) and self._closed.is_set():
            raise answer.error
        if isinstance(answer, BaseException):
            raise answer
        if "error" in answer:
            raise _error(answer["error"])
        return answer["result"]

    def subscribe(self, params: dict[str, Any], callback: Callable[[Any], None]) -> Callable[[], None]:
        listener = Listener(params, callback)
        chosen = next(self._listener_ids)
        with self._lock:
            if self._ws is None:  # connect first: connecting resubscribes every registered listener
                self._connect()
            self._listeners[chosen] = listener
            self._listen()
        try:
            self.call("subscribe", {"sub": chosen, **params})
        except BaseException:
            self._listeners.pop(chosen, None)
            raise

        def unsubscribe() -> None:
            listener.stop()
            if self._listeners.pop(chosen, None) is not None and self._ws is not None:
                try:
                    self.call("unsubscribe", {"sub": chosen})
                except (ConnectionLostError, UnavailableError):
                    pass  # gone with the connection anyway

        return unsubscribe

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            ws = self._ws
        if ws is not None:
            ws.close()
            self._lost(ws, ConnectionLostError("this Montybase handle was closed"))
        self.dispatcher.close()


class _Lost(Exception):
    """The server's side ended the connection with a call sent on it and not answered (it may
    have been run): `call` asks a read again, and raises `error` for anything else."""

    def __init__(self, error: ConnectionLostError):
        super().__init__(str(error))
        self.error = error


# Where each kid's key is written, for a refusal's message.
_KEY_FIELDS = {"client": "apiKey in client-config.json", "admin": "adminKey in montybase.json"}


def _error(error: dict[str, Any]) -> MontybaseError:
    data = dict(error.get("data") or {})
    reason = data.pop("reason", None)
    exc = error_class(reason)(error.get("message", ""), data)
    if type(exc) is MontybaseError:  # unknown to this client: keep what the server said
        exc.code, exc.reason = error.get("code", exc.code), reason or exc.reason
    return exc
