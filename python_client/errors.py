"""Montybase errors: one exception tree shared with the server (codes in `schemas/errors.json`)."""

from __future__ import annotations

from ..server.errors import *  # noqa: F403 - the same classes, so server and client agree
from ..server.errors import __all__  # noqa: F401
