"""Listeners on the client side: snapshots, rebuilding docs from changes, and the callback thread."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..server.values import clone

__all__ = ["DocumentSnapshot", "Dispatcher", "Listener", "QuerySnapshot"]

log = logging.getLogger("montybase.client")


@dataclass(frozen=True, slots=True)
class DocumentSnapshot:
    """A document as it is now: `value` is None and `exists` False when there is none."""

    id: str
    value: Any
    exists: bool


@dataclass(frozen=True, slots=True)
class QuerySnapshot:
    """A collection or query result: `docs` in order ([{"id", "value"}]) and the `changes` since
    the last snapshot ({"type", "id", "value", "old_index", "new_index"}; the first snapshot
    lists every document as added)."""

    docs: list[dict[str, Any]]
    changes: list[dict[str, Any]] = field(default_factory=list)


class Listener:
    """One listener: turns the server's messages into snapshots for its callback."""

    def __init__(self, params: dict[str, Any], callback: Callable[[Any], None]):
        self.params = params
        self.callback = callback
        self.docs: list[dict[str, Any]] = []
        self.active = True  # False once unsubscribed: queued messages are then dropped
        # Held while a callback runs: once stop() returns, no callback is running or will start
        # (reentrant, so a callback may unsubscribe itself).
        self.lock = threading.RLock()

    def stop(self) -> None:
        with self.lock:
            self.active = False

    def snapshot(self, message: dict[str, Any], copy: Callable[[Any], Any] = clone) -> DocumentSnapshot | QuerySnapshot:
        """The next snapshot. Values are this listener's own copies, made with `copy` (a message
        may be shared by several listeners); treat snapshots as read-only: the next one shares
        unchanged documents."""
        if "exists" in message:
            return DocumentSnapshot(message["id"], copy(message["value"]), message["exists"])
        full = "docs" in message  # the full state: on subscribing, and again after a reconnect
        docs = [{"id": d["id"], "value": copy(d["value"])} for d in message["docs"]] if full else self.docs.copy()
        changes = []
        for c in message["changes"]:
            value, old_index, new_index = copy(c["value"]), c["oldIndex"], c["newIndex"]
            changes.append({"type": c["type"], "id": c["id"], "value": value, "old_index": old_index,
                            "new_index": new_index})
            if not full:  # Firestore's sequential indexes: remove at old_index, then insert at new_index
                if old_index >= 0:
                    docs.pop(old_index)
                if new_index >= 0:
                    docs.insert(new_index, {"id": c["id"], "value": value})
        self.docs = docs
        return QuerySnapshot(docs.copy(), changes)


class Dispatcher:
    """Runs callbacks on one background thread, in the order messages arrived, never under a
    database lock or on a connection's reader thread; a callback's exception is logged."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Sequence[Listener], dict[str, Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, listeners: Sequence[Listener], message: dict[str, Any]) -> None:
        """Queue `message` for each of `listeners` (one item: a message often goes to many)."""
        if self._thread is None:  # started on first use (checked again under the lock)
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="montybase-listeners", daemon=True)
                    self._thread.start()
        self._queue.put((listeners, message))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            listeners, message = item
            copy = _copier(message)
            for listener in listeners:
                with listener.lock:
                    if not listener.active:
                        continue
                    try:
                        listener.callback(listener.snapshot(message, copy))
                    except Exception:
                        log.exception("a snapshot callback raised; the listener keeps listening")

    def close(self) -> None:
        """Stop after the messages already queued."""
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)
                if self._thread is not threading.current_thread():
                    self._thread.join(5)


def _copier(message: dict[str, Any]) -> Callable[[Any], Any]:
    """How to copy the values of `message` for each listener: `dict.copy` when every one is an
    object of plain values (a shallow copy is then a deep one: the common case, and much
    cheaper), else the deep `clone`."""
    if "exists" in message:
        values = [message["value"]]
    else:
        values = [c["value"] for c in message["changes"]] + [d["value"] for d in message.get("docs", ())]
    for value in values:
        if type(value) is not dict:
            return clone
        for item in value.values():
            if type(item) is dict or type(item) is list:
                return clone
    return dict.copy
