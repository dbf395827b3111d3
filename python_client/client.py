"""`Montybase`, the handle a program opens, and `doc`, which makes references from it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.config import DEFAULTS, load_config, storage_path
from server.database import Database
from server.storage import FileStorage, Storage

from .embedded import EmbeddedBackend
from .refs import Backend, Reference, Transaction, WriteBatch, _segments, make_reference, run_transaction

__all__ = ["Montybase", "doc"]


class Montybase:
    """A database handle.

    `Montybase()` opens the database embedded in this process, configured by `montybase.json`
    in the current folder (created with fresh keys on first use, with `client-config.json`).
    `storageBucket=":memory:"` keeps nothing on disk; `hot=True` fsyncs every write before it
    returns; `updateTime` and `storeMin` set the snapshot policy (seconds, changes).
    """

    def __init__(
        self,
        *,
        config: str | Path | None = None,
        storageBucket: str | None = None,
        hot: bool | None = None,
        updateTime: float | None = None,
        storeMin: int | None = None,
    ):
        if storageBucket == ":memory:":
            settings: dict[str, Any] = dict(DEFAULTS)
            storage: Storage = Storage()
        else:
            config_path = Path(config if config is not None else "montybase.json")
            settings, _ = load_config(config_path)
            bucket = storageBucket if storageBucket is not None else storage_path(settings, config_path)
            storage = Storage() if bucket == ":memory:" else FileStorage(bucket)
        self.config = settings
        database = Database(
            storage,
            hot=settings["hot"] if hot is None else hot,
            snapshot_changes=settings["storageMinCount"] if storeMin is None else storeMin,
            snapshot_seconds=settings["storageUpdate"] if updateTime is None else updateTime,
        )
        self._backend: Backend = EmbeddedBackend(database)

    def batch(self) -> WriteBatch:
        """Collect writes; `commit()` applies them all or none."""
        return WriteBatch(self._backend)

    def transaction(self, fn: Callable[[Transaction], Any], max_attempts: int = 5) -> Any:
        """Run `fn(transaction)`: its reads, then its writes, committed together; retried on conflict."""
        return run_transaction(self._backend, fn, max_attempts)

    def close(self) -> None:
        """Flush, snapshot and release the storage."""
        self._backend.close()

    def __enter__(self) -> Montybase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def doc(db: Montybase, *segments: str) -> Reference:
    """A reference: `doc(db, "users")` a collection, `doc(db, "users", uid)` a document."""
    return make_reference(db._backend, _segments(segments))
