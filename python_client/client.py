"""`Montybase`, the handle a program opens, and `doc`, which makes references from it."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from ..server.config import DEFAULTS, Limits, load_config, open_database, public_key, storage_path
from ..server.errors import InvalidArgumentError
from ..server.paths import pointer
from ..server.schemas import load_schema
from ..server.storage import Storage

from .embedded import EmbeddedBackend
from .refs import MAX_ATTEMPTS, Backend, Reference, Transaction, WriteBatch, _segments, make_reference, run_transaction
from .remote import RemoteBackend

__all__ = ["Montybase", "doc"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"cannot read the client config {path}: {exc}", {"file": str(path)}) from None


def _serving_address(dev: bool | str, endpoint: bool) -> tuple[str | None, int | None] | None:
    """Where run() serves: (host, port), None meaning the config's (127.0.0.1 and 8765 by default)."""
    if endpoint:
        return "0.0.0.0", None
    if dev is True:
        return None, None
    if isinstance(dev, str) and dev:
        host, _, port = dev.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgumentError(f"dev must be True or 'host:port', got {dev!r}")
        return host, int(port)
    return None


def _client_config_endpoint(path: Path) -> Any:
    """The endpoint of a client config (client-config.json names one; montybase.json never does)."""
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except (OSError, ValueError):
        return None  # missing or broken: load_config creates it or says what is wrong
    return config.get("endpoint") if isinstance(config, dict) else None  # checked, with the rest, below


def _check_client_config(config: Any, source: str) -> None:
    """Refuse a client config that breaks schemas/client-config.json, naming the faulty value."""
    validator = Draft202012Validator(load_schema("client-config"))
    error = min(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)), default=None)
    if error is None:
        return
    where = pointer("", *error.absolute_path)
    # A pattern's regular expression says less than what it asks for.
    message = (f"{error.instance!r} is not a ws://, wss://, http:// or https:// address"
               if error.validator == "pattern" else error.message)
    raise InvalidArgumentError(f"{source}: {where}: {message}", {"path": where, "file": source})


class Montybase:
    """A database handle.

    - `Montybase()`: the database embedded in this process, configured by `montybase.json` in
      the current folder (created with fresh keys on first use, with `client-config.json`).
      `storageBucket=":memory:"` keeps nothing on disk (a `server.storage.MemoryStorage()`
      keeps it in that object, to open again); `hot=True` fsyncs every write before
      it returns; `updateTime` and `storeMin` set the snapshot policy (seconds, changes).
    - `Montybase(dev=True).run()` serves it on the config's host and port (127.0.0.1:8765 by
      default; `dev="host:port"` elsewhere, `endpoint=True` on 0.0.0.0 at the config's port).
    - `Montybase(api="ws://host:8765", config="client-config.json")`: a server's database.
      With a config that holds the adminKey (a server's own `montybase.json`), full access.
      `Montybase(config="client-config.json")` connects to the endpoint the file names.
    """

    def __init__(
        self,
        api: str | list[str] | None = None,
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
        serve_at = _serving_address(dev, endpoint)
        self._backend: Backend
        self._api = api
        if api is None and config is not None and serve_at is None:
            self._api = api = _client_config_endpoint(Path(config))
        if api is not None:
            self._config_path = Path(config if config is not None else "client-config.json")
            self.config = _read_json(self._config_path)
            if not self.config.get("adminKey"):  # a client config, not a server's montybase.json
                _check_client_config(self.config, str(self._config_path))
            if not isinstance(api, str) and not (
                isinstance(api, (list, tuple)) and api and all(isinstance(one, str) and one for one in api)
            ):
                raise InvalidArgumentError(f"api must be an endpoint or a non-empty list of endpoints, not {api!r}")
            self._backend = self._remote(api, self.config, ssl_context)
            return
        self._created = False
        if (storageBucket == ":memory:" or isinstance(storageBucket, Storage)) and serve_at is None:
            self._config_path = Path("montybase.json")
            self.config = dict(DEFAULTS)
            bucket = storageBucket
        else:
            self._config_path = Path(config if config is not None else "montybase.json")
            self.config, self._created = load_config(self._config_path)
            bucket = storageBucket if storageBucket is not None else storage_path(self.config, self._config_path)
        self._serve_at = None if serve_at is None else (serve_at[0] or self.config["host"],
                                                         self.config["port"] if serve_at[1] is None else serve_at[1])
        self._database = open_database(self.config, bucket, hot=hot, store_min=storeMin, update_time=updateTime)
        self._backend = EmbeddedBackend(self._database, Limits.from_config(self.config.get("limits")))

    @staticmethod
    def _remote(api: str | list[str], config: dict[str, Any], ssl_context: ssl.SSLContext | None) -> RemoteBackend:
        if config.get("adminKey"):  # a server's own settings: the admin key, the key pair's public half
            kid, key = "admin", config["adminKey"]
            server_key = public_key(config["serverKey"]) if config.get("serverKey") else None
        elif config.get("apiKey"):
            kid, key, server_key = "client", config["apiKey"], config.get("serverKey")
        else:
            raise InvalidArgumentError("the client config holds no apiKey")
        return RemoteBackend(api, kid=kid, key=key, server_key=server_key, ssl_context=ssl_context)

    def run(self) -> None:
        """Serve this database over WebSocket until SIGINT or SIGTERM (then snapshot and return)."""
        if self._api is not None:
            raise InvalidArgumentError(
                f"run() serves an embedded database, and this handle uses the server at {self._api}: open "
                "Montybase(dev=True) without api= (and with the server's montybase.json) to serve"
            )
        if self._serve_at is None:
            raise InvalidArgumentError(
                "run() serves the database: open it with dev=True, dev='host:port' or endpoint=True"
            )
        from ..server.cli import announce, configure_logging, serve

        configure_logging()
        host, port = self._serve_at
        config_path = self._config_path.absolute()
        ready = announce(self.config, config_path, self._created)
        asyncio.run(serve(self._database, self.config, config_path, host, port, ready=ready))

    # Accounts: give rules' `user` and `owner` grants a meaning (README "Securing a public app")

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

    def transaction(self, fn: Callable[[Transaction], Any], max_attempts: int = MAX_ATTEMPTS) -> Any:
        """Run `fn(transaction)`: its reads, then its writes, committed together. If what it read
        changed meanwhile, wait a random, growing time (10 ms × 2^n at most, capped at 0.5 s) and
        run it again, up to `max_attempts` times; then raise ConflictError."""
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
