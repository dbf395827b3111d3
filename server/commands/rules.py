"""`montybase rules check` and `montybase rules test`: the rules of montybase.json, answered by
server/rules.py offline (no server; the data files are read, never locked or changed, only when
an answer depends on what is stored)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..config import Limits, is_postgres_url, storage_path
from ..database import Database
from ..errors import MontybaseError, UnavailableError
from ..paths import check_path
from ..rules import OPERATIONS, Principal, Rule, Rules, dry_run
from ..storage import StorageReader
from . import configured

__all__ = ["check", "check_arguments", "test", "test_arguments"]

_SHOWN = 20  # collections listed by `rules check` before "… and N more"


def _stored(config: dict[str, Any], config_path: Path) -> Database | None:
    """The data as stored (None without a storage file): read as it is, even while a server runs."""
    bucket = storage_path(config, config_path)
    if bucket == ":memory:":
        return None
    if is_postgres_url(bucket):  # the nodes' database at one moment, as the files are read below
        from ..postgres import PostgresReader  # the optional extra montybase[postgres]

        return Database(PostgresReader(bucket))
    try:
        return Database(StorageReader(bucket))
    except (ValueError, OSError) as exc:
        raise UnavailableError(f"cannot read the data in {bucket}: {exc}") from None


# rules check


def check_arguments(parser: argparse.ArgumentParser) -> None:
    """No options beyond --config."""


def check(args: argparse.Namespace) -> int:
    """Every pattern's rule parses (grants, schema, fields, rates); every collection of the data
    has a rule, or is listed as one client keys cannot use. Exit 1 when a rule is bad."""
    config, config_path = configured(args)
    specs = config.get("rules")
    if specs is None:
        print(f"no rules in {config_path.name}: client keys may do nothing (only the admin key has access)")
        return 0
    bad = 0
    for pattern, spec in specs.items():
        try:
            Rule.parse(pattern, spec)
        except MontybaseError as exc:
            print(f"bad rule: {exc}")
            bad += 1
    if bad:
        print(f"{bad} of {len(specs)} rules are bad: the server refuses to start (or reload) with them")
        return 1
    limits = Limits.from_config(config.get("limits"))
    rules = Rules(specs, max_doc_bytes=limits.maxDocBytes, max_results=limits.maxResults)
    print(f"{len(specs)} rule, valid" if len(specs) == 1 else f"{len(specs)} rules, every one valid")
    if rules.open:
        print('the rule "**" opens every collection to every client key (see "Securing a public app" in the README)')
    database = _stored(config, config_path)
    if database is None:
        print("no stored data to compare (storageBucket is :memory:)")
        return 0
    collections = sorted(path for path, docs in database.tree.collections.items()
                         if docs and not path[0].startswith("__"))  # the accounts' own store is no rule's
    uncovered = [path for path in collections if rules.match(path) is None]
    for path in uncovered[:_SHOWN]:
        count = len(database.tree.collections[path])
        print(f"no rule matches collection {'/'.join(path)} ({count} documents): client keys may do nothing there")
    if len(uncovered) > _SHOWN:
        print(f"… and {len(uncovered) - _SHOWN} more collections that no rule matches")
    if not uncovered:
        print(f"every collection of the data ({len(collections)}) is matched by a rule")
    return 0


# rules test


def _principal(text: str) -> Principal:
    if text == "anonymous":
        return Principal("client")
    if text == "admin":
        return Principal("admin")
    if text.startswith("user:") and len(text) > len("user:"):
        return Principal("client", text[len("user:"):])
    raise argparse.ArgumentTypeError(f"{text!r}: --as takes anonymous, user:UID or admin")


def _value(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--value is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--value is a document: a JSON object")
    return value


def test_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--as", dest="principal", type=_principal, default=Principal("client"), metavar="WHO",
                        help="anonymous (the default: a client key, nobody signed in), user:UID or admin")
    parser.add_argument("op", choices=OPERATIONS, help="the operation")
    parser.add_argument("path", help="a document (scores/abc) for get, create, update, delete; a collection for list")
    parser.add_argument("--value", type=_value, metavar="JSON",
                        help="the document as the write would leave it: checks the data rules too")


def test(args: argparse.Namespace) -> int:
    """ALLOW or DENY, and the rule that decided: exit 0 or 1."""
    config, config_path = configured(args)
    path = check_path([segment for segment in args.path.split("/") if segment], "PATH")
    limits = Limits.from_config(config.get("limits"))
    rules = Rules(config.get("rules"), max_doc_bytes=limits.maxDocBytes, max_results=limits.maxResults)
    allowed, said = dry_run(rules, args.principal, args.op, path, args.value,
                            lambda *asked: _existing(config, config_path, *asked))
    print(said)
    return 0 if allowed else 1


def _existing(config: dict[str, Any], config_path: Path, rule: Rule, op: str, path: tuple[str, ...],
              value: Any) -> tuple[Any, int]:
    """The stored document at `path` and the size of its collection, read only when the answer
    depends on them: an owner field to look up, fields an update may not change, a maxDocs."""
    needs_document = op in ("get", "update", "delete") and (
        (rule.grants[op] == "owner" and rule.owner is not None) or (op == "update" and value is not None and rule.fixed))
    needs_size = op == "create" and value is not None and rule.max_docs is not None
    if not (needs_document or needs_size):
        return None, 0
    database = _stored(config, config_path)
    if database is None:
        return None, 0
    return database.document(path), len(database.documents(path[:-1]))
