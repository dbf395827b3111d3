"""One WebSocket client connection, driven by the threads that use it.

websockets' sans-I/O protocol does the WebSocket work (the upgrade, framing, pings, the close
handshake); this module moves its bytes over a socket from the thread that sends or reads, with
no thread of its own, so an answer reaches the caller that reads it without a hand-off between
threads. One thread reads at a time; any thread may send.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections import deque

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

__all__ = ["WebSocket"]

_READ_BYTES = 65536
_IDLE = 1.0  # seconds without reading after which `open` looks for a close that came meanwhile
_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)
_OPEN_OR_CLOSING = (State.OPEN, State.CLOSING)


def _timeval(timeout: float | None) -> bytes:
    """SO_RCVTIMEO's value for `timeout` seconds (None: wait without end)."""
    seconds = 0.0 if timeout is None else max(timeout, 0.001)
    if sys.platform == "win32":  # a DWORD of milliseconds
        return struct.pack("<L", int(seconds * 1000))
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))  # struct timeval


class WebSocket:
    """A client connection (no compression, no proxy): `send` a message, `recv` the next one."""

    def __init__(self, url: str, *, ssl_context: ssl.SSLContext | None, timeout: float, max_size: int):
        uri = parse_uri(url)
        sock = socket.create_connection((uri.host, uri.port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if uri.secure:
                sock = (ssl_context or ssl.create_default_context()).wrap_socket(sock, server_hostname=uri.host)
            # A blocking socket: one system call per send or read. Reads time out by the kernel's
            # SO_RCVTIMEO, set only when it changes (Python's own timeouts poll before each call).
            sock.settimeout(None)
            self._sock = sock
            self._read_timeout: float | None = None
            self._protocol = ClientProtocol(uri, max_size=max_size)
            self._write_lock = threading.Lock()  # whole frames go out together
            self._read_lock = threading.Lock()  # one reader
            self._messages: deque[bytes | str] = deque()  # arrived, not yet taken
            self._fragments: list[Frame] = []
            self._eof = False  # the socket has ended
            self._last_read = time.monotonic()
            self._protocol.send_request(self._protocol.connect())
            self._write()
            deadline = time.monotonic() + timeout
            while not self._upgraded():
                if self._eof:
                    raise InvalidHandshake("the server closed the connection during the upgrade")
                self._fill(deadline - time.monotonic())
        except BaseException:
            sock.close()
            raise

    def _upgraded(self) -> bool:
        events = self._protocol.events_received()
        for i, event in enumerate(events):
            if isinstance(event, Response):
                if self._protocol.handshake_exc is not None:
                    raise self._protocol.handshake_exc
                self._take(events[i + 1:])
                return True
        return False

    # Bytes in and out

    def _write(self) -> None:
        """Send what the protocol has to send (frames, pongs, the close handshake)."""
        with self._write_lock:
            for data in self._protocol.data_to_send():
                if data:
                    self._sock.sendall(data)
                else:  # the protocol is done with the connection: end our side
                    try:
                        self._sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass  # already closed

    def _fill(self, timeout: float | None) -> None:
        """Read what arrives within `timeout` seconds (None: wait) into the protocol; raises
        TimeoutError if nothing did."""
        if self._eof:
            return
        if timeout is not None and timeout <= 0:
            raise TimeoutError("no message within the timeout")
        try:
            if timeout != self._read_timeout:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
                self._read_timeout = timeout
            data = self._sock.recv(_READ_BYTES)
        except (BlockingIOError, ssl.SSLWantReadError):  # SO_RCVTIMEO passed
            raise TimeoutError("no message within the timeout") from None
        except OSError:  # reset, or closed by close(): the end of the connection
            data = b""
        self._last_read = time.monotonic()
        if data:
            self._protocol.receive_data(data)
        else:
            self._eof = True
            self._protocol.receive_eof()
        try:
            self._write()
        except OSError:
            pass  # the peer is gone; reading says so

    def _take(self, events: list) -> None:
        for event in events:
            if isinstance(event, Frame) and event.opcode in _DATA:
                self._fragments.append(event)
                if event.fin:
                    first, data = self._fragments[0], b"".join(frame.data for frame in self._fragments)
                    self._fragments = []
                    self._messages.append(data.decode() if first.opcode is Opcode.TEXT else data)

    def _ready(self) -> bool:
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):  # closed
            return True

    # The connection

    def send(self, message: bytes | str) -> None:
        """Send one message (bytes: a binary frame, str: a text frame)."""
        with self._write_lock:
            if self._protocol.state is not State.OPEN:
                raise self._protocol.close_exc
            if isinstance(message, str):
                self._protocol.send_text(message.encode())
            else:
                self._protocol.send_binary(message)
        try:
            self._write()  # frames leave in the order the protocol took them
        except OSError as exc:
            raise ConnectionClosed(None, None) from exc

    def recv(self, timeout: float | None = None) -> bytes | str:
        """The next message. TimeoutError when `timeout` seconds passed without one (each read
        of the socket waits at most that long, so a slow trickle of bytes may take up to twice
        it); ConnectionClosed once the connection is closed and what came before is taken."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._read_lock:
            while not self._messages:
                if self._eof:
                    raise self._protocol.close_exc
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError("no message within the timeout")
                self._fill(timeout)
                self._take(self._protocol.events_received())
            return self._messages.popleft()

    @property
    def open(self) -> bool:
        """Whether the connection is open, as far as what has arrived says. After a second
        without reading it reads what is waiting (unless another thread is reading), so a close
        that came while the connection was idle is seen."""
        if (
            self._protocol.state in _OPEN_OR_CLOSING and time.monotonic() - self._last_read > _IDLE
            and self._ready() and self._read_lock.acquire(blocking=False)
        ):
            try:
                if self._ready():  # still (another reader may have taken what select saw)
                    self._fill(None)
                    self._take(self._protocol.events_received())
            finally:
                self._read_lock.release()
        return self._protocol.state is State.OPEN

    @property
    def close_code(self) -> int | None:
        return self._protocol.close_code

    @property
    def close_reason(self) -> str | None:
        return self._protocol.close_reason

    def close(self, reason: str = "") -> None:
        """Send a close frame (code 1000, with `reason`) and end the connection (a thread reading it returns)."""
        with self._write_lock:
            if self._protocol.state is State.OPEN:
                self._protocol.send_close(1000, reason)
        try:
            self._write()
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already reset or shut: the socket is closed below either way
        self._sock.close()
