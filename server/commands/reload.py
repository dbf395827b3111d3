"""`montybase reload`: check montybase.json, then have the server that uses it read it again."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from ..config import is_postgres_url, storage_path
from ..errors import UnavailableError
from ..storage import lock_holder
from . import configured
from .serve import settings

__all__ = ["arguments", "running_server", "run"]


def arguments(parser: argparse.ArgumentParser) -> None:
    """No options beyond --config."""


def running_server(config_path: Path, storage: str) -> int | None:
    """The pid of the server serving `config_path`: the holder of its storage's lock (or, for a
    server without storage, of the config's own lock); None when none runs."""
    lock = Path(storage + ".lock") if storage != ":memory:" else config_path.with_name(config_path.name + ".lock")
    return lock_holder(lock)


def run(args: argparse.Namespace) -> int:
    config, config_path = configured(args, "name the running server's with --config")
    storage = storage_path(config, config_path)
    settings(config, config_path, storage)  # a file the server would refuse is refused here, and not sent
    if is_postgres_url(storage):  # nodes of one database may share this config: none holds a lock to find it by
        raise UnavailableError(f"{config_path} is checked and fine, but its storageBucket is PostgreSQL, whose nodes "
                               "cannot be found from it: send SIGHUP to each node's process (kill -HUP PID)")
    pid = running_server(config_path, storage)
    if pid is None:
        raise UnavailableError(f"no running server uses {config_path} (nothing holds the lock of its storage {storage})")
    os.kill(pid, signal.SIGHUP)
    print(f"asked the server (process {pid}) to reload {config_path}; its log says what changed", flush=True)
    return 0
