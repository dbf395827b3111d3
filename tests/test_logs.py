"""server/logs.py: bounded lines per client address, client text cut short, JSON lines."""

from __future__ import annotations

import json
import logging

from server.logs import JsonFormatter, Throttle, clip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_a_throttle_logs_n_lines_a_minute_per_address_then_says_the_rest_are_suppressed(caplog):
    clock = Clock()
    throttle = Throttle(logging.getLogger("montybase.test"), per_minute=3, clock=clock)
    caplog.set_level(logging.INFO, logger="montybase.test")
    for n in range(10):
        throttle.log(logging.WARNING, "refused origin", "192.0.2.1", "refused %s: attempt %d", "192.0.2.1", n)
    throttle.log(logging.WARNING, "refused origin", "192.0.2.2", "refused %s: attempt %d", "192.0.2.2", 0)
    throttle.log(logging.WARNING, "failed handshake", "192.0.2.1", "handshake %d", 0)
    assert messages(caplog) == [
        "refused 192.0.2.1: attempt 0", "refused 192.0.2.1: attempt 1", "refused 192.0.2.1: attempt 2",
        "refused origin from 192.0.2.1: more than 3 lines a minute; the rest of this minute's are suppressed",
        "refused 192.0.2.2: attempt 0", "handshake 0",
    ]
    caplog.clear()
    clock.now += 60
    throttle.log(logging.WARNING, "refused origin", "192.0.2.1", "refused %s: attempt %d", "192.0.2.1", 10)
    assert messages(caplog) == ["refused 192.0.2.1: attempt 10 (7 more were suppressed in the minute before)"]


def test_a_throttle_forgets_old_addresses_when_it_holds_too_many(caplog):
    clock = Clock()
    throttle = Throttle(logging.getLogger("montybase.test"), per_minute=1, clock=clock)
    throttle._MAX_KEYS = 100
    caplog.set_level(logging.INFO, logger="montybase.test")
    for n in range(1000):
        throttle.log(logging.INFO, "kind", f"10.0.{n // 256}.{n % 256}", "line %d", n)
        clock.now += 1
    assert len(throttle._windows) <= 100
    assert len(caplog.records) == 1000, "every new address gets its line"


def test_clip_cuts_client_text_and_escapes_what_would_split_a_line():
    assert clip("short") == "short"
    assert clip("x" * 100) == "x" * 64 + "…"
    assert clip("a\nb\rc\x1b\\") == "a\\nb\\rc\\x1b\\\\"
    assert clip("café ✓") == "café ✓"


def test_json_lines_hold_time_level_logger_message_and_a_server_fault():
    try:
        raise ValueError("boom")
    except ValueError as exc:
        record = logging.LogRecord("montybase.rpc", logging.ERROR, __file__, 1, "internal error %s", ("ab12",),
                                   (type(exc), exc, exc.__traceback__))
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "error" and line["logger"] == "montybase.rpc" and line["message"] == "internal error ab12"
    assert "ValueError: boom" in line["traceback"] and line["time"][:2] == "20"
