"""Where the JSON Schemas of the contract live, in a checkout or an installed package."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["bundled_dir", "load_schema", "schema_dir"]


@cache
def bundled_dir(name: str, marker: str) -> Path:
    """A top-level folder of the project (`schemas`, `js_client`): beside the package in a
    checkout, inside it when installed (pyproject.toml maps it to `server.<name>`)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / name, here / name):
        if (candidate / marker).is_file():
            return candidate
    raise FileNotFoundError(f"Montybase {name}/ not found beside {here}")


def schema_dir() -> Path:
    """The `schemas/` folder."""
    return bundled_dir("schemas", "errors.json")


@cache
def load_schema(name: str) -> Any:
    """Parse `schemas/<name>.json` once."""
    with open(schema_dir() / f"{name}.json", encoding="utf-8") as file:
        return json.load(file)
