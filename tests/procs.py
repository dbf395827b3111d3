"""Server subprocesses for tests: start one, read its lines with a deadline, stop it for sure."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Proc", "free_port", "server_command"]

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


def server_command(*args: str) -> list[str]:
    """`python -m server ARGS`, with the interpreter running the tests."""
    return [sys.executable, "-m", "server", *args]


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Proc:
    """One subprocess with both pipes drained by reader threads (so it never blocks on a full
    pipe), lines kept for the test, and waits that always end."""

    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str] | None = None, *, commands: bool = False):
        """`commands`: the process reads lines on its stdin (`tell`); otherwise its stdin is empty."""
        self.args = list(args)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            self.args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if commands else subprocess.DEVNULL, text=True, env=full_env,
        )
        self.pid = self.popen.pid
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._drain, args=(self.popen.stdout, self.stdout_lines), daemon=True),
            threading.Thread(target=self._drain, args=(self.popen.stderr, self.stderr_lines), daemon=True),
        ]
        self._open_pipes = len(self._readers)
        for reader in self._readers:
            reader.start()

    def _drain(self, pipe, lines: list[str]) -> None:
        try:
            for line in pipe:
                with self._changed:
                    lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._open_pipes -= 1
                self._changed.notify_all()

    @property
    def stdout(self) -> str:
        with self._changed:
            return "\n".join(self.stdout_lines)

    @property
    def stderr(self) -> str:
        with self._changed:
            return "\n".join(self.stderr_lines)

    def describe(self) -> str:
        return (f"{self.args} (pid {self.pid}, exit {self.popen.poll()})\n"
                f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}")

    def wait_for_line(self, prefix: str, timeout: float = START_TIMEOUT, start: int = 0) -> str:
        """The first stdout line starting with `prefix` (from line number `start` on), without it;
        fails if the process ends first or the deadline passes."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.stdout_lines[start:]:
                    if line.startswith(prefix):
                        return line[len(prefix):]
                if self._open_pipes == 0 and self.popen.poll() is not None:
                    raise AssertionError(f"no line {prefix!r}: the process ended\n{self.describe()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line {prefix!r} within {timeout}s\n{self.describe()}")
                self._changed.wait(min(left, 0.2))

    def lines(self, prefix: str, start: int = 0) -> list[str]:
        """The stdout lines (from line number `start` on) that start with `prefix`, without it."""
        with self._changed:
            return [line[len(prefix):] for line in self.stdout_lines[start:] if line.startswith(prefix)]

    def tell(self, line: str) -> None:
        """Send one line to the process's stdin (made with `commands=True`)."""
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def endpoint(self, timeout: float = START_TIMEOUT) -> str:
        return self.wait_for_line("endpoint: ", timeout).strip()

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """The exit code, once the process and its pipes are done."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s\n{self.describe()}") from None
        for reader in self._readers:
            reader.join(5)
        return code

    def send(self, signum: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send `signum` and wait for the exit code."""
        self.send(signum)
        return self.wait(timeout)

    def kill9(self) -> None:
        """SIGKILL this process by its pid, and reap it."""
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.wait(10)

    def cleanup(self) -> None:
        """End the process if it still runs (terminate, then kill), and close the pipes."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        for reader in self._readers:
            reader.join(5)
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
