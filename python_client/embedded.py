"""The embedded backend: the database engine in this process, no server."""

from __future__ import annotations

from typing import Any

from server.database import Database

__all__ = ["EmbeddedBackend"]


class EmbeddedBackend:
    """Calls the engine directly with the same method names and params as the network protocol."""

    def __init__(self, database: Database):
        self.database = database

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return self.database.call(method, params)

    def close(self) -> None:
        self.database.close()
