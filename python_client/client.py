"""`Montybase`, the handle a program opens, and `doc`, which makes references from it."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.config import DEFAULTS, load_config, open_database, public_key, storage_path
from server.errors import InvalidArgumentError
from server.storage import Storage

from .embedded import EmbeddedBackend
from .refs import Backend, Reference, Transaction, WriteBatch, _segments, make_reference, run_transaction
from .remote import RemoteBackend

__all__ = ["Montybase", "doc"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"cannot read the client config {path}: {exc}", {"file": str(path)}) from None


def _serving_address(dev: bool | str, endpoint: bool) -> tuple[str, int] | None:
    if endpoint:
        return "0.0.0.0", 8765
    if dev is True:
        return "127.0.0.1", 8765
    if isinstance(dev, str) and dev:
        host, _, port = dev.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgumentError(f"dev must be True or 'host:port', got {dev!r}", {"path": "dev"})
        return host, int(port)
    return None


class Montybase:
    """A database handle.

    - `Montybase()`: the database embedded in this process, configured by `montybase.json` in
      the current folder (created with fresh keys on first use, with `client-config.json`).
      `storageBucket=":memory:"` keeps nothing on disk (a `server.storage.MemoryStorage()`
      keeps it in that object, to open again); `hot=True` fsyncs every write before
      it returns; `updateTime` and `storeMin` set the snapshot policy (seconds, changes).
    - `Montybase(dev=True).run()` serves it on 127.0.0.1:8765 (`dev="host:port"` elsewhere,
      `endpoint=True` on 0.0.0.0:8765).
    - `Montybase(api="ws://host:8765", config="client-config.json")`: a server's database.
      With a config that holds the adminKey (a server's own `montybase.json`), full access.
    """

    def __init__(
        self,
        api: str | None = None,
        *,
        config: str | Path | None = None,
        storageBucket: str | Storage | None = None,
        hot: bool | None = None,
        updateTime: float | None = None,
        storeMin: int | None = None,
        dev: bool | str = False,
        endpoint: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self._serve_at = _serving_address(dev, endpoint)
        self._backend: Backend
        if api is not None:
            self._config_path = Path(config if config is not None else "client-config.json")
            self.config = _read_json(self._config_path)
            self._backend = self._remote(api, self.config, ssl_context)
            return
        self._created = False
        if (storageBucket == ":memory:" or isinstance(storageBucket, Storage)) and self._serve_at is None:
            self._config_path = Path("montybase.json")
            self.config = dict(DEFAULTS)
            bucket = storageBucket
        else:
            self._config_path = Path(config if config is not None else "montybase.json")
            self.config, self._created = load_config(self._config_path)
            bucket = storageBucket if storageBucket is not None else storage_path(self.config, self._config_path)
        self._database = open_database(self.config, bucket, hot=hot, store_min=storeMin, update_time=updateTime)
        self._backend = EmbeddedBackend(self._database)

    @staticmethod
    def _remote(api: str, config: dict[str, Any], ssl_context: ssl.SSLContext | None) -> RemoteBackend:
        if config.get("adminKey"):  # a server's own settings: the admin key, the key pair's public half
            kid, key = "admin", config["adminKey"]
            server_key = public_key(config["serverKey"]) if config.get("serverKey") else None
        elif config.get("apiKey"):
            kid, key, server_key = "client", config["apiKey"], config.get("serverKey")
        else:
            raise InvalidArgumentError("the client config holds no apiKey", {"path": "apiKey"})
        return RemoteBackend(api, kid=kid, key=key, server_key=server_key, ssl_context=ssl_context)

    def run(self) -> None:
        """Serve this database over WebSocket until SIGINT or SIGTERM (then snapshot and return)."""
        if self._serve_at is None:
            raise InvalidArgumentError(
                "run() serves the database: open it with dev=True, dev='host:port' or endpoint=True", {"path": "run"}
            )
        from server.cli import announce, serve

        host, port = self._serve_at
        config_path = self._config_path.absolute()
        print(f"client config: {config_path.with_name('client-config.json')}", flush=True)
        asyncio.run(serve(self._database, self.config, config_path, host, port,
                          ready=announce(self.config, config_path, self._created)))

    # Accounts (DESIGN §8): give rules' `user` and `owner` grants a meaning

    def sign_up(self, email: str, password: str) -> dict[str, str]:
        """Create an account and sign in; returns {"uid", "email"}. ALREADY_EXISTS if taken."""
        return self._signed_in(self._backend.call("signUp", {"email": email, "password": password}))

    def sign_in(self, email: str, password: str) -> dict[str, str]:
        """Sign in; returns {"uid", "email"}. A wrong password or an unknown email is UNAUTHENTICATED."""
        return self._signed_in(self._backend.call("signIn", {"email": email, "password": password}))

    def sign_out(self) -> None:
        """Sign out and end the session."""
        token, self._backend.token, self._backend.user = self._backend.token, None, None
        self._backend.call("signOut", {"token": token} if token else {})

    @property
    def current_user(self) -> dict[str, str] | None:
        """{"uid", "email"} of the signed-in user, or None."""
        user = self._backend.user
        return dict(user) if user else None

    def _signed_in(self, result: dict[str, Any]) -> dict[str, str]:
        # The backend keeps the session: the remote one resumes it after a reconnect.
        self._backend.token = result["token"]
        self._backend.user = {"uid": result["uid"], "email": result["email"]}
        return dict(self._backend.user)

    def batch(self) -> WriteBatch:
        """Collect writes; `commit()` applies them all or none."""
        return WriteBatch(self._backend)

    def transaction(self, fn: Callable[[Transaction], Any], max_attempts: int = 5) -> Any:
        """Run `fn(transaction)`: its reads, then its writes, committed together; retried on conflict."""
        return run_transaction(self._backend, fn, max_attempts)

    def close(self) -> None:
        """Flush, snapshot and release the storage (embedded), or disconnect (remote)."""
        self._backend.close()

    def __enter__(self) -> Montybase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def doc(db: Montybase, *segments: str) -> Reference:
    """A reference: `doc(db, "users")` a collection, `doc(db, "users", uid)` a document."""
    return make_reference(db._backend, _segments(segments))
