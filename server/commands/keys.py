"""`montybase keys rotate`: new keys in montybase.json and client-config.json, the old client
key kept valid for a grace period if asked (so pages already shipped keep working during a deploy)."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import time
from pathlib import Path
from typing import Any

from ..config import DEFAULTS, client_endpoint, fresh_keys, save_config, write_client_config
from ..errors import InvalidArgumentError
from . import configured

__all__ = ["arguments", "duration", "rotate", "shipped_endpoint"]

_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """Seconds in "90", "30s", "10min", "1h" or "2d"."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|min|h|d)?", text.strip())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (like 30s, 10min, 1h, 2d)")
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client", action="store_true", help="a new client key (apiKey, shipped to apps)")
    parser.add_argument("--admin", action="store_true", help="a new admin key (adminKey)")
    parser.add_argument("--server", action="store_true",
                        help="a new server key pair (serverKey; clients pin its public half, so apps need the new "
                             "client-config.json at once)")
    parser.add_argument("--grace", type=duration, metavar="DURATION",
                        help="with --client: the old client key stays valid this long (30s, 10min, 1h, 2d)")


def shipped_endpoint(config: dict[str, Any], config_path: Path) -> str | list[str]:
    """The endpoint client-config.json names now (the server keeps it in step), else the configured one."""
    try:
        shipped = json.loads(config_path.with_name("client-config.json").read_text(encoding="utf-8"))
        if isinstance(shipped, dict) and isinstance(shipped.get("endpoint"), (str, list)):
            return shipped["endpoint"]
    except (OSError, ValueError):
        pass  # no usable client-config.json: the endpoint from the settings, below
    return client_endpoint(config, f"ws://{config['host']}:{config['port']}")


def rotate(args: argparse.Namespace) -> int:
    if not (args.client or args.admin or args.server):
        raise InvalidArgumentError("name the keys to make anew: --client, --admin, --server (one or more)")
    if args.grace is not None and not args.client:
        raise InvalidArgumentError("--grace keeps the old client key valid: use it with --client")
    _, config_path = configured(args)  # a bad file is named and left as it is
    config = json.loads(config_path.read_text(encoding="utf-8"))  # the file's own fields, written back as they are
    now = time.time()
    previous = [old for old in config.get("previousApiKeys") or () if old["until"] > now]  # expired ones go
    fresh = fresh_keys()
    said = []
    if args.client:
        if args.grace and config.get("apiKey"):
            until = math.ceil(now + args.grace)
            previous.append({"key": config["apiKey"], "until": until})
            moment = datetime.datetime.fromtimestamp(until).astimezone().isoformat(timespec="seconds")
            said.append(f"new client key; the old one is accepted until {moment}")
        else:
            said.append("new client key; the old one is refused from the server's reload on")
        config["apiKey"] = fresh["apiKey"]
    if args.admin:
        config["adminKey"] = fresh["adminKey"]
        said.append("new admin key (programs that use montybase.json need its new copy)")
    if args.server:
        config["serverKey"] = fresh["serverKey"]
        said.append("new server key pair (apps that pin the old public key refuse the server until they "
                    "have the new client-config.json)")
    if previous:
        config["previousApiKeys"] = previous
    else:
        config.pop("previousApiKeys", None)
    save_config(config_path, config)
    merged = {**DEFAULTS, **config}
    client_path, _ = write_client_config(merged, config_path, shipped_endpoint(merged, config_path))
    for line in said:
        print(line, flush=True)
    print(f"written: {config_path}, {client_path}", flush=True)
    print("a running server uses them after: montybase reload" +
          ("" if args.config == "montybase.json" else f" --config {args.config}"), flush=True)
    return 0
