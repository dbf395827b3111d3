"""Progress of a long command on stderr: a tqdm bar (count, rate, time left) on a terminal, plain
lines every few seconds (and a last one) when stderr is a pipe or a file, as in a log."""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["progress"]

LINE_SECONDS = float(os.environ.get("MONTYBASE_PROGRESS_SECONDS", "5"))  # between lines, off a terminal


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


def progress(what: str, total: int | None, unit: str = "documents", *, scale: bool = False) -> Any:
    """A tqdm counter of `total` `unit`s (None: unknown) described by `what`; call .update(n), .close()."""
    stream = sys.stderr
    if stream.isatty():
        sized = os.get_terminal_size(stream.fileno()).columns > 0  # a terminal that gives no width: 80
        return tqdm(total=total, desc=what, unit=" " + unit if not scale else unit, unit_scale=scale,
                    file=stream, leave=True, dynamic_ncols=sized, ncols=None if sized else 80)
    return tqdm(total=total, desc=what, unit=" " + unit if not scale else unit, unit_scale=scale,
                file=_Lines(stream), mininterval=LINE_SECONDS, ascii=True,
                bar_format="{desc}: {n_fmt}/{total_fmt}{unit}, {rate_fmt}, {remaining} left, {elapsed} so far")
