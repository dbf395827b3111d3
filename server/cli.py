"""`montybase` / `python -m server`: serve (the default), or run one of the operator commands.

Every subcommand is one row of COMMANDS: what it does, an example its --help shows, a function
that adds its options, and the function that runs it (returning the exit code). A MontybaseError
or an OSError from a command is one `montybase: …` line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from . import __version__
from .commands import admins, data, keys, migrate, reload, rules
from .commands import serve as serving
from .commands.serve import announce, serve
from .errors import MontybaseError
from .logs import configure_logging

__all__ = ["COMMANDS", "Command", "announce", "configure_logging", "main", "parser", "serve"]

@dataclass(frozen=True)
class Command:
    """One subcommand."""

    summary: str  # one line, in `montybase --help`
    example: str  # shown by `montybase COMMAND --help`
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# A two-word name ("keys rotate") is a command of a group ("keys").
COMMANDS: dict[str, Command] = {
    "serve": Command("serve the database over WebSocket and HTTP (what `montybase` alone does)",
                     "montybase serve --config app/montybase.json --port 9000 --static site",
                     partial(serving.arguments, default=argparse.SUPPRESS), serving.run),
    "reload": Command("make the running server read montybase.json again (SIGHUP)",
                      "montybase reload --config app/montybase.json", reload.arguments, reload.run),
    "keys rotate": Command("make new keys; --grace keeps the old client key valid a while",
                           "montybase keys rotate --client --grace 1h && montybase reload", keys.arguments, keys.rotate),
    "rules check": Command("check the rules, and that they cover every collection of the data",
                           "montybase rules check --config app/montybase.json", rules.check_arguments, rules.check),
    "rules test": Command("would the rules allow this? ALLOW or DENY, and the rule that decided",
                          "montybase rules test --as user:alice create profiles/alice --value '{\"name\": \"Alice\"}'",
                          rules.test_arguments, rules.test),
    "backup": Command("copy the data as it is now to one file, while the server serves or not",
                      "montybase backup backups/monday.mbak", data.backup_arguments, data.backup),
    "restore": Command("put a backup in place of the data (the server stopped; --force keeps the old files aside)",
                       "montybase restore backups/monday.mbak --force", data.restore_arguments, data.restore),
    "export": Command("write documents as JSON Lines, one {path, value} a line",
                      "montybase export users orders --out data.jsonl", data.export_arguments, data.export),
    "import": Command("write the documents of a JSON Lines file (or an original db.json), checked as writes are",
                      "montybase import data.jsonl --into archive/2024", data.import_arguments, data.import_),
    "check": Command("verify the snapshot and journals without a server; --repair cuts at the first bad record",
                     "montybase check --config app/montybase.json", data.check_arguments, data.check),
    "compact": Command("write a snapshot now and drop the journals it covers (asks a running server to)",
                       "montybase compact", data.compact_arguments, data.compact),
    "migrate": Command("move the data from a file into PostgreSQL (several nodes), or from PostgreSQL into a file",
                       "montybase migrate --from db.json --to postgresql://montybase:secret@db.internal:5432/game",
                       migrate.arguments, migrate.run),
    "admins add": Command("add an admin account, which signs in to the console at /admin/ (with the server stopped)",
                          "montybase admins add ops@example.com   # asks for its password; or --password-stdin",
                          admins.add_arguments, admins.add),
    "admins list": Command("list the admin accounts", "montybase admins list", lambda parser: None, admins.list_admins),
    "admins remove": Command("make an admin account a user's again (with the server stopped)",
                             "montybase admins remove ops@example.com", admins.email_argument, admins.remove),
}


def _config_option(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument("--config", default=default, help="the settings file (default montybase.json)")


def parser() -> argparse.ArgumentParser:
    """The whole command line: `montybase [serve options]`, or `montybase COMMAND …`."""
    top = argparse.ArgumentParser(
        prog="montybase", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a Montybase database over WebSocket (the default), or run an operator command.",
        epilog="examples:\n  montybase --port 9000\n  montybase rules check\n  montybase COMMAND --help",
    )
    _config_option(top, "montybase.json")
    serving.arguments(top)
    top.add_argument("--version", action="version", version=f"montybase {__version__}")
    top.set_defaults(command=None)
    commands = top.add_subparsers(title="commands", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, command in COMMANDS.items():
        group, _, leaf = name.rpartition(" ")
        if group and group not in groups:
            group_parser = commands.add_parser(group, help="commands: " + ", ".join(
                other.split(" ")[1] for other in COMMANDS if other.startswith(group + " ")))
            groups[group] = group_parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
        where = groups[group] if group else commands
        sub = where.add_parser(leaf, help=command.summary, description=command.summary,
                               epilog=f"example:\n  {command.example}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        _config_option(sub, argparse.SUPPRESS)  # given before or after the command name
        command.arguments(sub)
        sub.set_defaults(command=name)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command or "serve"].run(args)
    except (MontybaseError, OSError) as exc:
        print(f"montybase: {exc}", file=sys.stderr)
        return 1
