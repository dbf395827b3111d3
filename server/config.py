"""Settings: `montybase.json` with its defaults, validation, and first-run creation."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator

from .errors import InvalidArgumentError
from .schemas import load_schema

if TYPE_CHECKING:
    from .storage import Storage

__all__ = [
    "DEFAULTS", "OPEN_RULES", "Limits", "client_config", "create_config", "load_config", "open_database",
    "public_key", "storage_path",
]

# A fresh config opens documents to the client key, so a first run works over the network;
# the server warns at every start while it stays (README: "Securing a public app").
OPEN_RULES: dict[str, Any] = {"**": {"read": "public", "write": "public"}}

DEFAULTS: dict[str, Any] = {
    "projectName": "montybase",
    "storageBucket": "db.json",
    "storageMinCount": 1,
    "storageUpdate": 300,
    "hot": False,
    "host": "127.0.0.1",
    "port": 8765,
}


@dataclass(frozen=True)
class Limits:
    """Every limit of the server, with its safe default (overridden by `limits` in montybase.json)."""

    maxMessageBytes: int = 256 * 1024
    maxBatch: int = 50
    maxWrites: int = 500
    maxConnections: int = 1000
    maxUnauthenticated: int = 100
    maxConnectionsPerAddress: int = 64
    handshakeTimeout: float = 5.0
    maxQueue: int = 8
    maxOutgoing: int = 256
    maxDocBytes: int = 64 * 1024
    maxResults: int = 1000

    @classmethod
    def from_config(cls, limits: dict[str, Any] | None) -> Limits:
        return cls(**(limits or {}))


def _validate(config: Any, source: str) -> None:
    validator = Draft202012Validator(load_schema("config"))
    error = next(iter(sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        field = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise InvalidArgumentError(f"{source}: {field}: {error.message}", {"path": field, "file": source})


def _fresh_keys() -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {
        "apiKey": "mb-" + secrets.token_urlsafe(24),
        "adminKey": "mba-" + secrets.token_urlsafe(32),
        "serverKey": base64.urlsafe_b64encode(der).decode().rstrip("="),
    }


def public_key(server_key: str) -> str:
    """The raw public point (base64url) of a serverKey, as clients pin it."""
    from cryptography.hazmat.primitives import serialization

    der = base64.urlsafe_b64decode(server_key + "=" * (-len(server_key) % 4))
    private = serialization.load_der_private_key(der, password=None)
    point = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.urlsafe_b64encode(point).decode().rstrip("=")


def client_config(config: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """What apps ship: never the admin key or the server's private key."""
    out = {"projectName": config["projectName"], "apiKey": config["apiKey"], "endpoint": endpoint}
    if config.get("serverKey"):
        out["serverKey"] = public_key(config["serverKey"])
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x", encoding="utf-8") as file:
        json.dump(data, file, indent=2)
        file.write("\n")


def create_config(path: Path) -> dict[str, Any]:
    """Write a fresh `montybase.json` (new keys) and `client-config.json` beside it."""
    config = {**DEFAULTS, **_fresh_keys(), "rules": OPEN_RULES}
    _write_json(path, config)
    client_path = path.with_name("client-config.json")
    if not client_path.exists():
        _write_json(client_path, client_config(config, f"ws://{config['host']}:{config['port']}"))
    return config


def load_config(path: str | Path, *, create: bool = True) -> tuple[dict[str, Any], bool]:
    """The settings in `path` over the defaults, and whether the file was just created."""
    path = Path(path)
    created = False
    if not path.exists() and create:
        create_config(path)
        created = True
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{path}: not valid JSON: {exc}", {"file": str(path)}) from None
    _validate(config, str(path))
    return {**DEFAULTS, **config}, created


def storage_path(config: dict[str, Any], config_path: str | Path) -> str:
    """The storage bucket, relative to the config file's folder (":memory:" stays as it is)."""
    bucket = config["storageBucket"]
    if bucket == ":memory:":
        return bucket
    return str(Path(config_path).parent / bucket)


def open_database(
    config: dict[str, Any], bucket: str | Storage, *, hot: bool | None = None, store_min: int | None = None,
    update_time: float | None = None,
) -> Any:
    """The Database the settings describe (arguments given here win over the file). `bucket`
    is a path, ":memory:", or a storage object (a MemoryStorage to reopen later)."""
    from .database import Database
    from .rules import Rules
    from .storage import FileStorage, Storage

    limits = Limits.from_config(config.get("limits"))
    return Database(
        bucket if isinstance(bucket, Storage) else Storage() if bucket == ":memory:" else FileStorage(bucket),
        hot=config["hot"] if hot is None else hot,
        snapshot_changes=config["storageMinCount"] if store_min is None else store_min,
        snapshot_seconds=config["storageUpdate"] if update_time is None else update_time,
        max_batch=limits.maxWrites,
        rules=Rules(config.get("rules"), max_doc_bytes=limits.maxDocBytes, max_results=limits.maxResults),
    )
