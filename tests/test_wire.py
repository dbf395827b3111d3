"""The client's WebSocket connection (python_client/wire.py) against a real websockets server
on 127.0.0.1: fragments, pings, timeouts, size limits and closes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from python_client import wire
from python_client.wire import WebSocket

WAIT = 10.0


class Peer:
    """A websockets server whose one handler the test gives; it keeps the last connection."""

    def __init__(self, loop_thread: Any, handler: Callable[[ServerConnection], Awaitable[None]]):
        self.loop_thread = loop_thread
        self.connected = threading.Event()
        self.connection: ServerConnection | None = None

        async def run(ws: ServerConnection) -> None:
            self.connection = ws
            self.connected.set()
            await handler(ws)

        async def start() -> Any:
            return await serve(run, "127.0.0.1", 0, compression=None)

        self.server = loop_thread.run(start())
        port = next(iter(self.server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"

    def run(self, coroutine: Any) -> Any:
        return self.loop_thread.run(coroutine)

    def stop(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        self.loop_thread.run(stop())


@pytest.fixture
def peer(loop_thread) -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def start(handler: Callable[[ServerConnection], Awaitable[None]]) -> Peer:
        started.append(Peer(loop_thread, handler))
        return started[-1]

    yield start
    for one in started:
        one.stop()


async def echo(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass  # the test is over


def connect(url: str, max_size: int = 1 << 20) -> WebSocket:
    return WebSocket(url, ssl_context=None, timeout=WAIT, max_size=max_size)


def test_messages_go_and_come_back_as_sent(peer):
    ws = connect(peer(echo).url)
    try:
        ws.send(b"\x00binary")
        ws.send("text é")
        assert ws.recv(WAIT) == b"\x00binary"
        assert ws.recv(WAIT) == "text é"
    finally:
        ws.close()


def test_a_fragmented_message_arrives_whole(peer):
    async def fragments(ws: ServerConnection) -> None:
        await ws.send([b"one ", b"two ", b"three"])  # one message in three frames
        await ws.send(["a", "b"])
        await ws.wait_closed()

    ws = connect(peer(fragments).url)
    try:
        assert ws.recv(WAIT) == b"one two three"
        assert ws.recv(WAIT) == "ab"
    finally:
        ws.close()


def test_a_ping_is_answered_while_reading(peer):
    async def ping_then_send(ws: ServerConnection) -> None:
        pong = await ws.ping()
        await asyncio.wait_for(pong, WAIT)  # raises unless the client answered
        await ws.send(b"after the pong")

    ws = connect(peer(ping_then_send).url)
    try:
        assert ws.recv(WAIT) == b"after the pong"
    finally:
        ws.close()


def test_recv_times_out_and_the_connection_stays_usable(peer):
    ws = connect(peer(echo).url)
    try:
        with pytest.raises(TimeoutError):
            ws.recv(0.05)
        ws.send(b"still here")
        assert ws.recv(WAIT) == b"still here"
    finally:
        ws.close()


def test_a_message_over_max_size_is_refused_with_1009(peer):
    async def big(ws: ServerConnection) -> None:
        await ws.send(b"x" * 2000)
        await ws.wait_closed()

    ws = connect(peer(big).url, max_size=1000)
    with pytest.raises(ConnectionClosed) as caught:
        ws.recv(WAIT)
    assert caught.value.sent is not None and caught.value.sent.code == 1009  # the client closed it
    ws.close()


def test_a_close_from_the_server_ends_reading_with_its_code(peer):
    async def close_at_once(ws: ServerConnection) -> None:
        await ws.send(b"last")
        await ws.close(4008, "bye")

    ws = connect(peer(close_at_once).url)
    assert ws.recv(WAIT) == b"last"  # what came before the close is still delivered
    with pytest.raises(ConnectionClosed):
        ws.recv(WAIT)
    assert (ws.close_code, ws.close_reason) == (4008, "bye")
    with pytest.raises(ConnectionClosed):
        ws.send(b"too late")
    ws.close()


def test_open_sees_a_close_that_came_while_idle(peer, monkeypatch):
    monkeypatch.setattr(wire, "_IDLE", 0.0)
    one = peer(echo)
    ws = connect(one.url)
    try:
        assert ws.open
        assert one.connected.wait(WAIT)
        # The server waits for the client's answer to its close: the client answers when it looks.
        closing = asyncio.run_coroutine_threadsafe(one.connection.close(1001, "going away"), one.loop_thread.loop)
        deadline = time.monotonic() + WAIT
        while ws.close_code is None and time.monotonic() < deadline:  # each look reads what came
            assert ws.open in (True, False)
            time.sleep(0.01)
        assert not ws.open and ws.close_code == 1001
        closing.result(WAIT)
    finally:
        ws.close()


def test_close_wakes_a_thread_waiting_to_read(peer):
    ws = connect(peer(echo).url)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            ws.recv()
        except BaseException as exc:  # collected and asserted below
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.1)
    ws.close()
    reader.join(WAIT)
    assert not reader.is_alive() and len(outcome) == 1 and isinstance(outcome[0], ConnectionClosed)


def test_threads_may_send_together(peer):
    ws = connect(peer(echo).url)
    try:
        def send(n: int) -> None:
            for i in range(100):
                ws.send(f"{n}:{i}")

        threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        got = [ws.recv(WAIT) for _ in range(400)]
        assert sorted(got) == sorted(f"{n}:{i}" for n in range(4) for i in range(100))
        for n in range(4):  # each thread's messages in its order
            assert [m for m in got if m.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(100)]
    finally:
        ws.close()


def test_a_refused_upgrade_is_an_error(peer, loop_thread):
    from websockets.exceptions import InvalidStatus

    async def start() -> Any:
        async def handler(ws: ServerConnection) -> None:
            await ws.close()

        def refuse(connection: ServerConnection, request: Any) -> Any:
            return connection.respond(403, "no\n")

        return await serve(handler, "127.0.0.1", 0, process_request=refuse)

    server = loop_thread.run(start())
    port = next(iter(server.sockets)).getsockname()[1]
    try:
        with pytest.raises(InvalidStatus):
            connect(f"ws://127.0.0.1:{port}")
    finally:
        async def stop() -> None:
            server.close()
            await server.wait_closed()

        loop_thread.run(stop())
