"""Log lines for operators: text or JSON lines, the level, and bounded lines about what clients cause."""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LEVELS", "Throttle", "clip", "configure_logging", "set_level"]

LEVELS = ("debug", "info", "warning", "error")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\]")  # what could split or forge a line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and the traceback of a server fault)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str = "info", form: str = "text") -> None:
    """Log lines as the server writes them, to stderr (a program that set up logging keeps its
    own handlers; the level of Montybase's lines is set either way)."""
    if not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(_TEXT))
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("websockets").setLevel(logging.WARNING)  # our own lines say the same, once
    set_level(level)


def set_level(level: str) -> None:
    """The level of Montybase's own lines ("debug", "info", "warning", "error")."""
    logging.getLogger("montybase").setLevel(level.upper())
    if level == "debug":  # the root's level must not hide what was asked for
        logging.getLogger().setLevel(logging.DEBUG)


def clip(text: Any, limit: int = 64) -> str:
    """Client-supplied text as a log line may hold it: at most `limit` characters, control
    characters escaped (a line is never split, nor flooded, by what a client sends)."""
    text = str(text)
    cut = len(text) > limit
    text = _CONTROL.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text[:limit])
    return text + "…" if cut else text


class Throttle:
    """Lines of one kind about one client address: at most `per_minute` of them a minute, then
    one line saying that more are suppressed; the next line after the minute says how many were.
    A client that misbehaves in a loop costs the log a few lines a minute, not one per attempt."""

    _MAX_KEYS = 10_000  # addresses remembered; beyond, the oldest minutes are forgotten

    def __init__(self, logger: logging.Logger, per_minute: int = 10, clock: Callable[[], float] = time.monotonic):
        self.logger, self.per_minute, self.clock = logger, per_minute, clock
        self._windows: dict[tuple[str, str], list[float | int]] = {}  # (kind, address) → [start, lines, suppressed]

    def log(self, level: int, kind: str, address: str, message: str, *args: Any) -> None:
        """Log `message % args` unless `address` had its share of `kind` lines this minute."""
        if not self.logger.isEnabledFor(level):
            return
        now = self.clock()
        key = (kind, address)
        window = self._windows.get(key)
        if window is None or now - window[0] >= 60:
            if len(self._windows) >= self._MAX_KEYS:
                self._windows = {k: w for k, w in self._windows.items() if now - w[0] < 60}
                if len(self._windows) >= self._MAX_KEYS:
                    self._windows.clear()
            suppressed = window[2] if window is not None else 0
            self._windows[key] = [now, 1, 0]
            if suppressed:
                message, args = message + " (%d more were suppressed in the minute before)", (*args, suppressed)
            self.logger.log(level, message, *args)
            return
        if window[1] < self.per_minute:
            window[1] += 1
            self.logger.log(level, message, *args)
        elif window[2] == 0:
            window[2] = 1
            self.logger.log(level, "%s from %s: more than %d lines a minute; the rest of this minute's are suppressed",
                            kind, clip(address), self.per_minute)
        else:
            window[2] += 1
