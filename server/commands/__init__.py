"""The `montybase` subcommands, one module each (the table is COMMANDS in server/cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import load_config
from ..errors import UnavailableError


def configured(args: argparse.Namespace, hint: str = "name it with --config") -> tuple[dict[str, Any], Path]:
    """The settings of --config, checked as the server checks them, and their absolute path; a
    missing file is refused with `hint` (no default file is made by an operator command)."""
    config_path = Path(args.config).absolute()
    if not config_path.is_file():
        raise UnavailableError(f"no config at {config_path}: {hint}")
    config, _ = load_config(config_path, create=False)
    return config, config_path
