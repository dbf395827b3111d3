"""A long fuzzing run of a served Montybase: tests/fuzzing.py (which tests/test_fuzz.py runs briefly) at length.

    python benchmarks/fuzz.py                       # 100,000 requests and 20,000 garbage frames, a fresh seed
    python benchmarks/fuzz.py --seed 1234           # replay a run
    python benchmarks/fuzz.py --requests 1000000

Prints the seed first, then requests/s, the server's RSS before, halfway, after, answers by
reason, how connections ended, whether the control collection and the log stayed clean, and
every finding. Exits 1 if anything went wrong.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for folder in (ROOT, ROOT / "tests"):  # runnable from a checkout without installing
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from fuzzing import campaign  # noqa: E402 - after the path is set


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, help="replay this seed (default: a fresh one, printed)")
    parser.add_argument("--requests", type=int, default=100_000, help="authenticated requests (default 100,000)")
    parser.add_argument("--garbage", type=int, default=20_000, help="unauthenticated frames (default 20,000)")
    parser.add_argument("--folder", type=Path, help="where the server keeps its files and log (default: a temporary folder)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"seed {seed} (replay with --seed {seed})", flush=True)
    with tempfile.TemporaryDirectory(prefix="montybase-fuzz-") as temporary:
        folder = args.folder or Path(temporary)
        report = campaign(folder, seed, args.requests, args.garbage, progress=lambda line: print(line, flush=True))
        print(report.summary())
    return 1 if report.findings or report.log_problems or not report.control_unchanged else 0


if __name__ == "__main__":
    sys.exit(main())
