"""The behaviour suite (client, listeners, accounts, queries, bad input) against a real server
whose database is a node of a PostgreSQL database (server/postgres.py), a second node beside it
in the same database: every test of those modules that takes the `db` or `served` fixture, with
those fixtures replaced by ones on PostgreSQL."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import Served  # noqa: E402
from pg import pg_url, postgres  # noqa: E402,F401  (fixtures)
from server.database import Database  # noqa: E402

import test_accounts  # noqa: E402
import test_bad_input  # noqa: E402
import test_client  # noqa: E402
import test_listeners  # noqa: E402
import test_query_cases  # noqa: E402
from server.config import DEFAULTS, OPEN_RULES, open_database  # noqa: E402

for _module in (test_accounts, test_bad_input, test_client, test_listeners, test_query_cases):
    for _name, _test in vars(_module).items():
        if _name.startswith("test_") and callable(_test) and {"db", "served"} & set(inspect.signature(_test).parameters):
            globals()[_name] = _test


def _node(url: str) -> Database:
    return open_database({**DEFAULTS, "rules": OPEN_RULES}, url)  # the rules of a fresh config, as conftest's servers


@pytest.fixture
def served(loop_thread, tmp_path, pg_url):
    """A server whose database is a node of `pg_url`, with another node of it open beside."""
    other = _node(pg_url)
    server = Served(loop_thread, tmp_path / "server", database=_node(pg_url))
    yield server
    server.stop()
    other.close()


@pytest.fixture
def db(served):
    """The behaviour suite's database: the remote backend, as an admin, on a PostgreSQL node."""
    handle = served.client(admin=True)
    yield handle
    handle.close()
