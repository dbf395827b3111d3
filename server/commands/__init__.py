"""The `montybase` subcommands, one module each (the table is COMMANDS in server/cli.py)."""
