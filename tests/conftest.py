"""Fixtures: the behaviour suite runs against every backend and storage."""

from __future__ import annotations

import pytest

from python_client import Montybase

BACKENDS = ["memory", "file"]


@pytest.fixture(params=BACKENDS)
def db(request, tmp_path, monkeypatch):
    """A fresh database: embedded in memory, or embedded on files in a temporary folder."""
    monkeypatch.chdir(tmp_path)
    if request.param == "memory":
        handle = Montybase(storageBucket=":memory:")
    else:
        handle = Montybase(config=tmp_path / "montybase.json")
    yield handle
    handle.close()
