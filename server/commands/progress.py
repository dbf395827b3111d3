"""Progress of a long command on stderr: a tqdm bar (count, rate, time left) on a terminal, plain
lines every few seconds (and a last one) when stderr is a pipe or a file, as in a log."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["loading", "progress"]

LINE_SECONDS = float(os.environ.get("MONTYBASE_PROGRESS_SECONDS", "5"))  # between lines, off a terminal
LOAD_SECONDS = float(os.environ.get("MONTYBASE_LOAD_PROGRESS_AFTER", "1"))  # a quicker start shows nothing


class _Lines:
    """A file for tqdm that turns its redraws (`\\r` + the line) into whole lines."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(what: str, total: int | None, unit: str = "documents", *, scale: bool = False,
             done: int = 0, started: float | None = None) -> Any:
    """A tqdm counter of `total` `unit`s (None: unknown) described by `what`; call .update(n), .close().
    `done`: counted already; `started` (a time.time()): when the work began, if before now."""
    stream = sys.stderr
    # Shown once its clock is set (a first line saying 0 s though the work began long ago helps nobody).
    shown = {"initial": done, "delay": 0 if started is None else float("inf")}
    if stream.isatty():
        sized = os.get_terminal_size(stream.fileno()).columns > 0  # a terminal that gives no width: 80
        bar = tqdm(total=total, desc=what, unit=" " + unit if not scale else unit, unit_scale=scale,
                   file=stream, leave=True, dynamic_ncols=sized, ncols=None if sized else 80, **shown)
    else:
        bar = tqdm(total=total, desc=what, unit=" " + unit if not scale else unit, unit_scale=scale,
                   file=_Lines(stream), mininterval=LINE_SECONDS, ascii=True, **shown,
                   bar_format="{desc}: {n_fmt}/{total_fmt}{unit}, {rate_fmt}, {remaining} left, {elapsed} so far")
    if started is not None:  # and `done` was counted since then: its rate
        bar.start_t, bar.delay, bar.initial = started, 0, 0
        bar.refresh()
    return bar


def loading(what: str, after: float = LOAD_SECONDS) -> Callable[[int, int], None]:
    """Progress of opening a store, as Database(loading=…) reports it (done, total): nothing while
    it has taken less than `after` seconds; then progress()'s bar or lines, timed from the start,
    and a last line when done reaches total."""
    started = time.time()
    bar: Any = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            if time.time() - started < after:
                return
            bar = progress(what, total, done=done, started=started)
        else:
            bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return report
