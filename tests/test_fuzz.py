"""Fuzzing a served database (tests/fuzzing.py): no input from a stranger breaks a connection or the server.

A fresh seed each run, printed; `MONTYBASE_FUZZ_SEED=<seed>` replays one. benchmarks/fuzz.py runs
the same fuzzer for longer.
"""

from __future__ import annotations

import os

from conftest import server_bucket
from fuzzing import campaign, seed_from_environment

REQUESTS = 20_000
GARBAGE = 10_000
MIB = 1024 * 1024
HASHING_THREADS = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor


def test_fuzzed_requests_and_handshakes_break_no_connection_and_leave_the_server_whole(tmp_path):
    seed = seed_from_environment()
    print(f"fuzz seed {seed} (replay with MONTYBASE_FUZZ_SEED={seed})")
    report = campaign(tmp_path, seed, REQUESTS, GARBAGE, storage=server_bucket("db.json"))
    summary = report.summary()
    print(summary)
    assert report.requests >= REQUESTS and report.garbage_frames >= GARBAGE, summary
    assert not report.findings, summary  # every answer JSON and never INTERNAL, every close a documented one
    assert report.control_unchanged, summary
    assert not report.log_problems, summary
    # The collections are bounded by rules; what grows is scrypt's 16 MiB in each thread that hashed
    # a password (the event loop's default executor), which the allocator keeps, and some buffers.
    assert report.rss_after - report.rss_before < HASHING_THREADS * 16 * MIB + 48 * MIB, summary
    # The fuzzer reached past the edge: real work, refusals of every layer, refused handshakes.
    for reason in ("result", "PARSE_ERROR", "INVALID_REQUEST", "INVALID_ARGUMENT", "LIMIT_EXCEEDED", "PERMISSION_DENIED"):
        assert report.answers[reason] > 0, summary
    for close in ("unauthenticated closed 1008", "unauthenticated closed 1002", "unauthenticated closed 4001"):
        assert report.closes[close] > 0, summary
