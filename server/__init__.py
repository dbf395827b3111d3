"""Montybase server: the tree engine, queries, storage and the network endpoint."""

__version__ = "0.1.0"  # the one place: pyproject.toml reads it; package.json must say the same (tested)
