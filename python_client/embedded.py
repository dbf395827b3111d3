"""The embedded backend: the database engine in this process, no server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.database import Database

from .listen import Dispatcher, Listener

__all__ = ["EmbeddedBackend"]


class EmbeddedBackend:
    """Calls the engine directly with the same method names and params as the network protocol."""

    def __init__(self, database: Database):
        self.database = database
        self.dispatcher = Dispatcher()
        self.user: dict[str, str] | None = None  # {"uid", "email"} once signed in
        self.token: str | None = None
        self.call: Callable[[str, dict[str, Any]], dict[str, Any]] = database.call  # no layer in between

    def subscribe(self, params: dict[str, Any], callback: Callable[[Any], None]) -> Callable[[], None]:
        listener = Listener(params, callback)
        subscription = self.database.watch(params, self._deliver, listener)

        def unsubscribe() -> None:
            listener.stop()
            self.database.unwatch(subscription)

        return unsubscribe

    def _deliver(self, listeners: tuple[Listener, ...], message: dict[str, Any]) -> None:
        self.dispatcher.put(listeners, message)

    def close(self) -> None:
        self.database.close()
        self.dispatcher.close()
