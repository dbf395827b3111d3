"""`python -m server` / `montybase`: serve a database over WebSocket until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import client_config, client_endpoint, load_config, open_database, storage_path, write_client_config
from .database import Database
from .errors import InvalidArgumentError, MontybaseError
from .transport import Limits, MontybaseServer

__all__ = ["announce", "configure_logging", "main", "serve"]

log = logging.getLogger("montybase")


def _tls(config: dict[str, Any], config_path: Path) -> ssl.SSLContext | None:
    tls = config.get("tls")
    if not tls:
        return None
    folder = config_path.parent
    for field in ("certfile", "keyfile"):
        if not (folder / tls[field]).is_file():
            raise InvalidArgumentError(
                f"{config_path}: tls.{field}: no file {folder / tls[field]} (paths are relative to the config's folder)",
                {"path": f"/tls/{field}", "file": str(config_path)},
            )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(folder / tls["certfile"], folder / tls["keyfile"])
    except ssl.SSLError as exc:
        raise InvalidArgumentError(
            f"{config_path}: tls: cannot use the certificate {folder / tls['certfile']} with the key "
            f"{folder / tls['keyfile']}: {exc.reason or exc}", {"path": "/tls", "file": str(config_path)},
        ) from None
    return context


def _static(config: dict[str, Any], config_path: Path, database: Database) -> Path | None:
    """The static folder, checked: it must not hold what the server keeps secret, since
    everything in it is published."""
    if not config.get("static"):
        return None
    static = config_path.parent / config["static"]
    if not static.is_dir():
        log.warning("the static folder %s does not exist: every page but /montybase.js and "
                    "/client-config.json is 404 until it does", static)
        return static
    secrets = [("the config", config_path)]
    if getattr(database.storage, "path", None) is not None:
        secrets.append(("the storage", database.storage.path))
    if config.get("tls"):
        secrets.append(("the TLS key", config_path.parent / config["tls"]["keyfile"]))
    for what, path in secrets:
        if Path(path).resolve().is_relative_to(static.resolve()):
            raise InvalidArgumentError(
                f"{config_path}: static: the folder {static} holds {what} ({path}), which it would publish; "
                "serve a folder of its own (\"static\": \"site\")", {"path": "/static", "file": str(config_path)},
            )
    return static


async def serve(
    database: Database,
    config: dict[str, Any],
    config_path: Path,
    host: str,
    port: int,
    *,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting, finish in-flight writes, snapshot."""
    if not config.get("apiKey"):
        database.close()
        raise InvalidArgumentError(
            f"{config_path}: apiKey is missing; add one (\"mb-\" and 16+ random characters), or move the "
            "file away to have a fresh one made", {"path": "apiKey"},
        )
    try:
        tls = _tls(config, config_path)
        static = _static(config, config_path, database)
    except BaseException:
        database.close()
        raise
    server = MontybaseServer(
        database,
        keys={"client": config.get("apiKey", ""), "admin": config.get("adminKey", "")},
        server_key=config.get("serverKey"),
        limits=Limits.from_config(config.get("limits")),
        origins=config.get("origins"),
        tls=tls,
        client_config=client_config(config, config.get("publicEndpoint", "")),
        static=static,
        trusted_proxies=config.get("trustedProxies"),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        bound_host, bound_port = await server.start(host, port)
    except BaseException:
        await loop.run_in_executor(None, database.close)
        raise
    endpoint = f"{'wss' if tls else 'ws'}://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"
    log.info("serving %s", endpoint)
    if not database.rules.configured:
        log.warning("no rules in %s: client keys can do nothing; only the admin key has access", config_path.name)
    elif database.rules.open:
        log.warning('the rule "**" in %s opens every collection to every client key; '
                    'see "Securing a public app" in the README to close it', config_path.name)
    if ready is not None:
        ready(endpoint)
    try:
        await stop.wait()
    finally:
        log.info("stopping: finishing in-flight requests and writing a snapshot")
        await server.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def configure_logging() -> None:
    """Log lines as the server writes them (a program that set up logging keeps its own)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # our own lines say the same, once


def announce(config: dict[str, Any], config_path: Path, created: bool) -> Callable[[str], None]:
    """Print what is served from what; once serving, keep client-config.json (the file apps
    ship) pointing at the address really served."""
    if created:
        print(f"created {config_path} (keep its adminKey secret)", flush=True)
    print(f"config: {config_path}", flush=True)

    def ready(endpoint: str) -> None:
        apps = client_endpoint(config, endpoint)
        path, written = write_client_config(config, config_path, apps)
        updated = ", updated" if written and not created else ""  # on a first run the file is new anyway
        print(f"client config: {path} (endpoint {apps}{updated})", flush=True)
        if apps != endpoint and not config.get("publicEndpoint"):
            print(f"  the server listens on every address; other machines need this machine's name or address: "
                  f"set publicEndpoint in {config_path.name}", flush=True)
        print(f"endpoint: {endpoint}", flush=True)

    return ready


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="montybase", description="Serve a Montybase database over WebSocket.")
    parser.add_argument("--config", default="montybase.json", help="settings file, created with fresh keys if missing")
    parser.add_argument("--host", help="address to listen on (default: host in the config, 127.0.0.1)")
    parser.add_argument("--port", type=_port, help="port (default: port in the config, 8765; 0 picks a free one)")
    parser.add_argument("--static", help="a folder to serve over HTTP on the same port (default: static in the config)")
    parser.add_argument("--version", action="version", version=f"montybase {__version__}")
    args = parser.parse_args(argv)
    configure_logging()
    config_path = Path(args.config).absolute()
    try:
        config, created = load_config(config_path)
        if args.static:  # relative to where the command runs, like --config
            config["static"] = str(Path(args.static).absolute())
        ready = announce(config, config_path, created)
        database = open_database(config, storage_path(config, config_path))
        host = args.host or config["host"]
        port = config["port"] if args.port is None else args.port
        asyncio.run(serve(database, config, config_path, host, port, ready=ready))
    except MontybaseError as exc:
        print(f"montybase: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"montybase: {exc}", file=sys.stderr)
        return 1
    return 0
