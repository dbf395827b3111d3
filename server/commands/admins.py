"""`montybase admins add|list|remove`: the admin accounts the console signs in with, kept in the
database's private accounts store. Offline: the command opens the storage itself, so a running
server (which holds the storage's lock) is named and nothing is changed; stop it first."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from ..accounts import Accounts
from ..config import open_database, storage_path
from ..errors import InvalidArgumentError
from . import configured

__all__ = ["add", "add_arguments", "email_argument", "list_admins", "remove"]


def email_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("email", help="the admin account's email address")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    email_argument(parser)
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of stdin (scripts), instead of asking for it")


def _with_accounts(args: argparse.Namespace, work: Callable[[Accounts], int]) -> int:
    config, config_path = configured(args)
    bucket = storage_path(config, config_path)
    if bucket == ":memory:":
        raise InvalidArgumentError("storageBucket is :memory:: there is no stored data to keep admin accounts in")
    database = open_database(config, bucket)  # refuses, naming the holder, while a server runs
    try:
        return work(Accounts(database))
    finally:
        database.close()


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise InvalidArgumentError("no terminal to ask for the password on: use --password-stdin")
    password = getpass.getpass(f"password for {args.email}: ")
    if password != getpass.getpass("the same password again: "):
        raise InvalidArgumentError("the two passwords differ; nothing changed")
    return password


def add(args: argparse.Namespace) -> int:
    password = _password(args)

    def work(accounts: Accounts) -> int:
        user, created = accounts.add_admin(args.email, password)
        said = "new admin account" if created else "the account is now an admin account, with the new password"
        print(f"{user['email']}: {said}; it signs in at /admin/ of the server")
        return 0

    return _with_accounts(args, work)


def list_admins(args: argparse.Namespace) -> int:
    def work(accounts: Accounts) -> int:
        admins: list[dict[str, Any]] = accounts.admins()
        for user in admins:
            print(user["email"])
        if not admins:
            print("no admin accounts (add one: montybase admins add EMAIL)", file=sys.stderr)
        return 0

    return _with_accounts(args, work)


def remove(args: argparse.Namespace) -> int:
    def work(accounts: Accounts) -> int:
        if not accounts.remove_admin(args.email):
            print(f"montybase: {args.email} is not an admin account", file=sys.stderr)
            return 1
        print(f"{args.email}: no longer an admin (the account stays, as a user's; its sessions lose the admin role)")
        return 0

    return _with_accounts(args, work)
