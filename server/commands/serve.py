"""`montybase serve`: serve a database until SIGINT or SIGTERM; SIGHUP reloads montybase.json,
SIGUSR1 takes a snapshot."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import logging
import os
import resource
import signal
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import _validate as validate_config  # the config schema's check, as a start makes it
from ..config import (
    DEFAULTS, Limits, client_config, client_endpoint, load_config, open_database, save_config, storage_path, trusted_networks,
    write_client_config,
)
from ..database import Database
from ..errors import InvalidArgumentError, MontybaseError, UnavailableError
from ..logs import LEVELS, configure_logging, set_level
from ..monitor import document_count
from ..rules import Rules
from ..storage import take_lock
from ..query import pause_between_steps
from ..transport import Foreground, MontybaseServer
from .progress import loading

__all__ = ["Settings", "announce", "arguments", "run", "serve", "settings"]

log = logging.getLogger("montybase")

# What a reload does not change: the listening socket and the storage (and how it is written)
# stay as they started.
RESTART_ONLY = ("host", "port", "tls", "storageBucket", "hot", "storageMinCount", "storageUpdate")
DEFAULT_SLOW_MS = 1000
# How long a thread running Python code keeps the GIL while another waits for it (Python's
# default: 5 ms). Queries run on executor threads; at 5 ms the event loop waited that long,
# several times per request, whenever one ran (a second client's get: p50 4.6 ms beside a client
# scanning 100,000 documents; 0.4 ms at this interval). Since index builds wait while the loop
# has work in hand (transport.Foreground), the loop waits for the GIL once per wake-up, at most
# this long: its p99 went 1.0 -> 0.8-0.9 ms from 0.2 ms (0.05 ms did no better). A thread alone
# never switches.
SWITCH_INTERVAL = 0.0001


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


def _static(config: dict[str, Any], config_path: Path, storage: str) -> Path | None:
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
    if storage != ":memory:":
        secrets.append(("the storage", Path(storage)))
    if config.get("tls"):
        secrets.append(("the TLS key", config_path.parent / config["tls"]["keyfile"]))
    for what, path in secrets:
        if Path(path).resolve().is_relative_to(static.resolve()):
            raise InvalidArgumentError(
                f"{config_path}: static: the folder {static} holds {what} ({path}), which it would publish; "
                "serve a folder of its own (\"static\": \"site\")", {"path": "/static", "file": str(config_path)},
            )
    return static


@dataclass(frozen=True)
class Settings:
    """What montybase.json sets that a running server takes at once, read and checked: the keys
    (with old client keys still in their grace), limits, compiled rules, origins, the static
    folder, metrics, the log level and the slow-request threshold."""

    config: dict[str, Any]
    keys: dict[str, str]
    previous: tuple[tuple[str, str, float], ...]
    limits: Limits
    rules: Rules
    static: Path | None
    log_level: str
    slow_ms: float | None


def settings(config: dict[str, Any], config_path: Path, storage: str) -> Settings:
    """Check every reloadable field of `config` (InvalidArgumentError names the first bad one)."""
    if not config.get("apiKey"):
        raise InvalidArgumentError(
            f"{config_path}: apiKey is missing; add one (\"mb-\" and 16+ random characters), or move the "
            "file away to have a fresh one made", {"path": "/apiKey", "file": str(config_path)},
        )
    limits = Limits.from_config(config.get("limits"))
    try:
        rules = Rules(config.get("rules"), max_doc_bytes=limits.maxDocBytes, max_results=limits.maxResults)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{config_path}: {exc.message}", {**exc.data, "file": str(config_path)}) from None
    for index, entry in enumerate((config.get("metrics") or {}).get("allow") or ()):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise InvalidArgumentError(
                f"{config_path}: metrics.allow[{index}]: {entry!r} is not an address or a network (\"10.0.0.0/8\")",
                {"path": f"/metrics/allow/{index}", "file": str(config_path)},
            ) from None
    previous = tuple(("client", old["key"], float(old["until"])) for old in config.get("previousApiKeys") or ())
    return Settings(
        config=config,
        keys={"client": config["apiKey"], "admin": config.get("adminKey", "")},
        previous=previous,
        limits=limits,
        rules=rules,
        static=_static(config, config_path, storage),
        log_level=config.get("logLevel", "info"),
        slow_ms=config.get("logSlowMs", DEFAULT_SLOW_MS),
    )


def share_the_interpreter() -> None:
    """Let every thread have the GIL often (SWITCH_INTERVAL), and leave the loaded documents out
    of the cyclic garbage collector's full collections, which hold every thread while they walk
    every object (about 150 ms per 100,000 documents). Documents hold no cycles, and refcounting
    still frees them when they are replaced; only what is loaded now is frozen."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.collect()
    gc.freeze()


def raise_open_files_limit() -> None:
    """Every connection is a file descriptor: take all the kernel allows this process (the soft
    limit up to the hard one; often 1,024 → 524,288), and say so when it stays low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # the kernel caps it below the hard limit: keep what we have (warned below)
    if soft != resource.RLIM_INFINITY and soft < 4096:
        log.warning("open-files limit %d: fewer connections than that can be open at once; raise it (ulimit -n)", soft)


def _apply(server: MontybaseServer, new: Settings) -> None:
    """Make `new` the running settings: what the next request, handshake or page sees."""
    database, service, config = server.database, server.service, new.config
    service.keys = {kid: key for kid, key in new.keys.items() if key}
    service.previous = new.previous
    service.server_key = config.get("serverKey")
    service.limits = server.limits = new.limits
    service.rpc.max_batch = new.limits.maxBatch
    database.max_batch = new.limits.maxWrites
    database.rules = new.rules
    server.origins = config.get("origins")
    server.trusted_proxies = trusted_networks(config.get("trustedProxies"))
    server.static = new.static
    server.console = config.get("admin", True)
    server.client_config = client_config(config, config.get("publicEndpoint", ""))
    server.monitor.configure(config.get("metrics"), new.slow_ms)
    set_level(new.log_level)


def _changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The fields that differ: (those a reload applies, those that wait for a restart)."""
    fields = sorted(set(old) | set(new))
    changed = [field for field in fields if old.get(field) != new.get(field)]
    return [f for f in changed if f not in RESTART_ONLY], [f for f in changed if f in RESTART_ONLY]


class Reloader:
    """SIGHUP: read montybase.json again and apply it, or keep the running settings and log why.
    Also the console's rules editor (the session's `settings`): the running rules, and new rules
    written to the file and reloaded the same way."""

    def __init__(self, server: MontybaseServer, current: Settings, config_path: Path, storage: str,
                 overrides: dict[str, Any]):
        self.server, self.current, self.config_path, self.storage = server, current, config_path, storage
        self.overrides = overrides  # what the command line set: it wins over every reloaded file

    def __call__(self) -> None:
        try:
            self.reload()
        except (MontybaseError, OSError) as exc:
            log.error("reload of %s refused, the running settings stay: %s", self.config_path, exc)

    def reload(self) -> None:
        """Read the file and apply it; a file the server would refuse raises, and nothing changes."""
        config, _ = load_config(self.config_path, create=False)
        new = settings({**config, **self.overrides}, self.config_path, self.storage)
        applied, waiting = _changes(self.current.config, new.config)
        _apply(self.server, new)
        if "rules" in applied:  # listeners opened under the old rules show what the new ones allow
            self.server.service.recheck()
        self.current = new
        log.info("reloaded %s: %s", self.config_path.name, ", ".join(applied) if applied else "nothing changed")
        if waiting:
            log.warning("%s changed in %s: that takes a restart", ", ".join(waiting), self.config_path.name)

    @property
    def previous_path(self) -> Path:
        return self.config_path.with_name(self.config_path.name + ".previous")

    def rules(self) -> dict[str, Any]:
        """rulesGet: the running rules."""
        return {"rules": self.current.config.get("rules"), "file": self.config_path.name}

    def apply_rules(self, rules: dict[str, Any]) -> dict[str, Any]:
        """rulesApply: the file with these rules, checked as a start would check it (the config
        schema, then every rule), written (the file before kept as montybase.json.previous) and
        reloaded. Bad rules raise INVALID_ARGUMENT at their field; the file and the running rules stay."""
        name = self.config_path.name
        try:
            old = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UnavailableError(f"cannot read {name}: {exc}; fix the file first") from None
        new = {**old, "rules": rules}
        try:
            validate_config(new, name)
            settings({**DEFAULTS, **new, **self.overrides}, self.config_path, self.storage)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(exc.message, {"path": exc.data.get("path", "/rules")}) from None
        save_config(self.previous_path, old)
        save_config(self.config_path, new)
        try:
            self.reload()
        except (MontybaseError, OSError):
            save_config(self.config_path, old)  # what runs and what the file says stay the same
            raise
        return {"file": name, "previous": self.previous_path.name}


async def serve(
    database: Database,
    config: dict[str, Any],
    config_path: Path,
    host: str,
    port: int,
    *,
    ready: Callable[[str], None] | None = None,
    overrides: dict[str, Any] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting, finish in-flight writes, snapshot.
    SIGHUP reloads the config file (`overrides`, from the command line, stay over it)."""
    overrides = overrides or {}
    raise_open_files_limit()
    storage = str(getattr(database.storage, "path", ":memory:"))
    lock = None
    try:
        current = settings({**config, **overrides}, config_path, storage)
        tls = _tls(config, config_path)
        if not database.storage.durable and not database.storage.shared and config_path.exists():
            # `montybase reload` finds the server by the storage's lock; without storage, by this one
            # (nodes of a shared storage may share their config: they take none).
            lock, _ = take_lock(config_path.with_name(config_path.name + ".lock"))
    except BaseException:
        database.close()
        raise
    log.info("loaded %d documents in %.2f s", document_count(database.tree.collections), database.load_seconds)
    server = MontybaseServer(database, keys=current.keys, limits=current.limits, tls=tls)
    _apply(server, current)  # the rest, as a reload sets it
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    reloader = Reloader(server, current, config_path, storage, overrides)
    loop.add_signal_handler(signal.SIGHUP, reloader)
    server.service.settings = reloader  # the console's rules editor
    logging.getLogger("montybase").addHandler(server.monitor.warnings)  # the console's recent warnings
    # SIGUSR1 (`montybase compact`): a snapshot now, off the event loop, as the ticker takes one.
    loop.add_signal_handler(signal.SIGUSR1, lambda: loop.run_in_executor(None, database.snapshot))
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
        # Nodes on PostgreSQL write no snapshot: PostgreSQL holds every acknowledged write.
        snapshot = " and writing a snapshot" if database.storage.durable else ""
        log.info("stopping: finishing in-flight requests%s", snapshot)
        await server.stop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
        logging.getLogger("montybase").removeHandler(server.monitor.warnings)
        if lock is not None:
            os.close(lock)


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
        shown = apps if isinstance(apps, str) else ", ".join(apps)
        print(f"client config: {path} (endpoint {shown}{updated})", flush=True)
        if apps != endpoint and not config.get("publicEndpoint"):
            print(f"  the server listens on every address; other machines need this machine's name or address: "
                  f"set publicEndpoint in {config_path.name}", flush=True)
        print(f"endpoint: {endpoint}", flush=True)

    return ready


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def arguments(parser: argparse.ArgumentParser, default: Any = None) -> None:
    """The options of serving (`default`: argparse.SUPPRESS where `montybase` itself has them too)."""
    parser.add_argument("--host", default=default, help="address to listen on (default: host in the config, 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=default,
                        help="port (default: port in the config, 8765; 0 picks a free one)")
    parser.add_argument("--static", default=default,
                        help="a folder to serve over HTTP on the same port (default: static in the config)")
    parser.add_argument("--log-level", choices=LEVELS, default=default,
                        help="least important log lines shown (default: logLevel in the config, info)")
    parser.add_argument("--log-format", choices=("text", "json"), default=default,
                        help="log lines as text (default) or one JSON object a line")


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level or "info", args.log_format or "text")
    config_path = Path(args.config).absolute()
    config, created = load_config(config_path)
    overrides: dict[str, Any] = {}
    if args.static:  # relative to where the command runs, like --config
        overrides["static"] = str(Path(args.static).absolute())
    if args.log_level:
        overrides["logLevel"] = args.log_level
    set_level(overrides.get("logLevel") or config.get("logLevel", "info"))
    ready = announce(config, config_path, created)
    bucket = storage_path(config, config_path)
    database = open_database(config, bucket, loading=loading(f"loading {Path(bucket).name}"))
    host = args.host or config["host"]
    port = config["port"] if args.port is None else args.port
    share_the_interpreter()  # this process is the server's alone (not so where serve() is called in-process)
    # Long work on executor threads waits between its steps while the loop has requests in hand.
    foreground = Foreground()
    pause_between_steps(foreground.pause)
    try:
        with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(foreground)) as runner:
            runner.run(serve(database, config, config_path, host, port, ready=ready, overrides=overrides))
    finally:
        pause_between_steps(None)
    return 0
