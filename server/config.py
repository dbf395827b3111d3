"""Settings: `montybase.json` with its defaults, validation, and first-run creation."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
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
    "DEFAULTS", "OPEN_RULES", "Limits", "client_config", "client_endpoint", "create_config", "load_config",
    "fresh_keys", "is_postgres_url", "open_database", "public_key", "save_config", "storage_path", "trusted_networks",
    "write_client_config",
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
    maxUnauthenticatedPerAddress: int = 16
    handshakeTimeout: float = 5.0
    maxQueue: int = 8
    maxOutgoing: int = 256
    maxOutgoingBytes: int = 16 * 1024 * 1024
    maxOutgoingBytesTotal: int = 256 * 1024 * 1024
    maxListeners: int = 1000
    maxDocBytes: int = 64 * 1024
    maxResults: int = 1000
    signUps: str = "60/min"
    signUpsPerAddress: str = "20/hour"
    signInFailures: int = 5
    signInFailuresPerAddress: int = 50
    keptChanges: int = 100_000

    @classmethod
    def from_config(cls, limits: dict[str, Any] | None) -> Limits:
        return cls(**(limits or {}))


def trusted_networks(entries: list[str] | None) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The networks of `trustedProxies` (a bare address is a network of one)."""
    networks = []
    for index, entry in enumerate(entries or ()):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise InvalidArgumentError(
                f"trustedProxies: {entry!r} is not an address or a network like \"10.0.0.0/8\"",
                {"path": f"/trustedProxies/{index}"},
            ) from None
    return tuple(networks)


def _validate(config: Any, source: str) -> None:
    validator = Draft202012Validator(load_schema("config"))
    error = next(iter(sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        field = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        pointer = "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in error.absolute_path)
        raise InvalidArgumentError(f"{source}: {field}: {error.message}", {"path": pointer, "file": source})


def fresh_keys() -> dict[str, str]:
    """New keys: apiKey, adminKey and serverKey."""
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
    """The raw public point (base64url) of a serverKey, as clients pin it; ValueError if it is
    not a P-256 private key in PKCS#8 DER, base64url."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        der = base64.urlsafe_b64decode(server_key + "=" * (-len(server_key) % 4))
        private = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        private = None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
        raise ValueError("serverKey is not a P-256 private key (PKCS#8 DER, base64url)")
    point = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.urlsafe_b64encode(point).decode().rstrip("=")


def client_config(config: dict[str, Any], endpoint: str | list[str]) -> dict[str, Any]:
    """What apps ship: never the admin key or the server's private key."""
    out = {"projectName": config["projectName"], "apiKey": config["apiKey"], "endpoint": endpoint}
    if config.get("serverKey"):
        out["serverKey"] = public_key(config["serverKey"])
    return out


# A wildcard listen address is no address to connect to: apps get this machine's loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}
# What the server decides in client-config.json; any other field in it is the user's and stays.
_SERVER_FIELDS = ("projectName", "apiKey", "endpoint", "serverKey")


def client_endpoint(config: dict[str, Any], served: str) -> str | list[str]:
    """The endpoint apps are given: `publicEndpoint` when the config sets one (a reverse proxy's
    address, or a list of servers to fail over), else the address served, a wildcard host
    (0.0.0.0, ::) becoming the loopback."""
    if config.get("publicEndpoint"):
        return config["publicEndpoint"]
    scheme, _, address = served.partition("://")
    host, _, port = address.rpartition(":")
    return f"{scheme}://{_WILDCARDS.get(host, host)}:{port}"


def _write_json(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.open sets the mode as the file is made: a secret is never readable by others, not even briefly.
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)
        file.write("\n")


def save_config(path: str | Path, config: dict[str, Any]) -> None:
    """Replace `montybase.json` at once (readers see the old file or the new one, never half of
    it), readable by its owner only: it holds the admin key and the private key."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    _write_json(temporary, config, mode=0o600)
    os.replace(temporary, path)


def write_client_config(config: dict[str, Any], config_path: str | Path,
                        endpoint: str | list[str]) -> tuple[Path, bool]:
    """Keep `client-config.json` beside the config in step with the server: (re)written when it
    is missing, unreadable, or differs in what the server decides (endpoint, client key, public
    key, project name); fields of your own in it stay. Its path, and whether it was written."""
    path = Path(config_path).with_name("client-config.json")
    try:
        current = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        current = None
    wanted = client_config(config, endpoint)
    kept = {k: v for k, v in current.items() if k not in _SERVER_FIELDS} if isinstance(current, dict) else {}
    merged = {**kept, **wanted}
    if merged == current:
        return path, False
    # A name of this process's own: nodes of one database started together from one folder each
    # write the file, and one's temporary file must not be another's.
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    _write_json(temporary, merged)
    os.replace(temporary, path)  # apps and web servers never read half a file
    return path, True


def create_config(path: Path) -> dict[str, Any]:
    """Write a fresh `montybase.json` (new keys; readable by its owner only: it holds the admin
    key and the private key) and `client-config.json` beside it."""
    config = {**DEFAULTS, **fresh_keys(), "rules": OPEN_RULES}
    _write_json(path, config, mode=0o600)
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
    if config.get("serverKey"):
        try:
            public_key(config["serverKey"])
        except ValueError:
            raise InvalidArgumentError(
                f"{path}: serverKey: not a P-256 private key (PKCS#8 DER, base64url); restore it, or move the "
                "file away to have fresh keys made", {"path": "/serverKey", "file": str(path)},
            ) from None
    try:
        trusted_networks(config.get("trustedProxies"))
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{path}: {exc.message}", {**exc.data, "file": str(path)}) from None
    return {**DEFAULTS, **config}, created


def is_postgres_url(bucket: str) -> bool:
    """Whether `storageBucket` names a PostgreSQL database (server/postgres.py) rather than a file."""
    return bucket.startswith(("postgresql://", "postgres://"))


def storage_path(config: dict[str, Any], config_path: str | Path) -> str:
    """The storage bucket, relative to the config file's folder (":memory:" and a PostgreSQL URL stay as they are)."""
    bucket = config["storageBucket"]
    if bucket == ":memory:" or is_postgres_url(bucket):
        return bucket
    return str(Path(config_path).parent / bucket)


def open_database(
    config: dict[str, Any], bucket: str | Storage, *, hot: bool | None = None, store_min: int | None = None,
    update_time: float | None = None, loading: Any = None,
) -> Any:
    """The Database the settings describe (arguments given here win over the file). `bucket`
    is a path, ":memory:", a PostgreSQL URL (this server is one node of the database kept
    there), or a storage object (a MemoryStorage to reopen later); `loading`: see Database."""
    from .database import Database
    from .rules import Rules
    from .storage import FileStorage, Storage

    limits = Limits.from_config(config.get("limits"))
    if isinstance(bucket, Storage):
        storage = bucket
    elif bucket == ":memory:":
        storage = Storage()
    elif is_postgres_url(bucket):
        from .postgres import PostgresStorage  # the optional extra montybase[postgres]

        storage = PostgresStorage(bucket, keep_changes=limits.keptChanges)
    else:
        storage = FileStorage(bucket)
    return Database(
        storage,
        hot=config["hot"] if hot is None else hot,
        snapshot_changes=config["storageMinCount"] if store_min is None else store_min,
        snapshot_seconds=config["storageUpdate"] if update_time is None else update_time,
        max_batch=limits.maxWrites,
        rules=Rules(config.get("rules"), max_doc_bytes=limits.maxDocBytes, max_results=limits.maxResults),
        loading=loading,
    )
