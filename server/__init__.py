"""Montybase server: the tree engine, queries, storage and the network endpoint."""

__version__ = "0.1.0"  # the one place: pyproject.toml reads it; package.json must say the same (tested)

if __name__ == "server":  # the old name: the same modules as montybase.server (montybase/__init__.py)
    import montybase

    montybase.old_name(__name__)
