"""`python -m server` / `montybase`: serve a database over WebSocket until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import client_config, load_config, open_database, storage_path
from .database import Database
from .errors import InvalidArgumentError, MontybaseError
from .transport import Limits, MontybaseServer

__all__ = ["main", "serve"]

log = logging.getLogger("montybase")


def _tls(config: dict[str, Any], config_path: Path) -> ssl.SSLContext | None:
    tls = config.get("tls")
    if not tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    folder = config_path.parent
    context.load_cert_chain(folder / tls["certfile"], folder / tls["keyfile"])
    return context


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
    tls = _tls(config, config_path)
    server = MontybaseServer(
        database,
        keys={"client": config.get("apiKey", ""), "admin": config.get("adminKey", "")},
        server_key=config.get("serverKey"),
        limits=Limits.from_config(config.get("limits")),
        origins=config.get("origins"),
        tls=tls,
        client_config=client_config(config, ""),
        static=config_path.parent / config["static"] if config.get("static") else None,
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
    endpoint = f"{'wss' if tls else 'ws'}://{bound_host}:{bound_port}"
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


def announce(config: dict[str, Any], config_path: Path, created: bool) -> Callable[[str], None]:
    """What to print once serving; on a first run, also point client-config.json at the
    address really served (the file apps ship)."""

    def ready(endpoint: str) -> None:
        if created:
            path = config_path.with_name("client-config.json")
            path.write_text(json.dumps(client_config(config, endpoint), indent=2) + "\n", encoding="utf-8")
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # our own lines say the same, once
    config_path = Path(args.config).absolute()
    try:
        config, created = load_config(config_path)
        if args.static:  # relative to where the command runs, like --config
            config["static"] = str(Path(args.static).absolute())
        if created:
            print(f"created {config_path} (keep its adminKey secret)", flush=True)
        print(f"config: {config_path}", flush=True)
        print(f"client config: {config_path.with_name('client-config.json')}", flush=True)
        database = open_database(config, storage_path(config, config_path))
        host = args.host or config["host"]
        port = config["port"] if args.port is None else args.port
        asyncio.run(serve(database, config, config_path, host, port, ready=announce(config, config_path, created)))
    except MontybaseError as exc:
        print(f"montybase: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"montybase: {exc}", file=sys.stderr)
        return 1
    return 0
