"""The embedded backend: the server's own session in this process, as the admin, with no socket."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..server.config import Limits
from ..server.database import Database
from ..server.session import Service
from ..server.values import clone, clone_all

from .listen import Dispatcher, Listener

__all__ = ["EmbeddedBackend"]


class EmbeddedBackend:
    """Runs every call through a Session of the database, as a remote admin's would be run: the
    same validation, limits and errors (httpx's ASGITransport: the real app in-process)."""

    def __init__(self, database: Database, limits: Limits | None = None):
        self.database = database
        self.dispatcher = Dispatcher()
        self.session = Service(database, limits=limits).admin(self.dispatcher.put)
        self.user: dict[str, str] | None = None  # {"uid", "email"} once signed in
        self.token: str | None = None

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The session's answer, copied: the database hands out the documents it stores (read-only,
        as the server encodes them), and this program may change what it gets (Firestore's
        to_dict() copies too). A query's documents are copied in C, a thousand per call."""
        result = self.session.call(method, params)
        docs = result.get("docs")
        if type(docs) is not list:
            return clone(result)
        values = clone_all([found["value"] for found in docs])
        return {**result, "docs": [{"id": found["id"], "value": value} for found, value in zip(docs, values)]}

    def subscribe(self, params: dict[str, Any], callback: Callable[[Any], None]) -> Callable[[], None]:
        listener = Listener(params, callback)
        self.session.subscribe(params, listener)

        def unsubscribe() -> None:
            listener.stop()
            self.session.unsubscribe(listener)

        return unsubscribe

    def close(self) -> None:
        self.session.close()
        self.database.close()
        self.dispatcher.close()
