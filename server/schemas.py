"""Where the JSON Schemas of the contract live, in a checkout or an installed package."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["load_schema", "schema_dir"]


@cache
def schema_dir() -> Path:
    """The `schemas/` folder: beside the package in a checkout, inside it when installed."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "schemas", here / "schemas"):
        if (candidate / "errors.json").is_file():
            return candidate
    raise FileNotFoundError(f"Montybase schemas not found beside {here}")


@cache
def load_schema(name: str) -> Any:
    """Parse `schemas/<name>.json` once."""
    with open(schema_dir() / f"{name}.json", encoding="utf-8") as file:
        return json.load(file)
