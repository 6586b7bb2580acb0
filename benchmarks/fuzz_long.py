"""The long fuzz run: every target of tests/test_fuzz_readers.py with N examples each.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fuzz_long.py 2000           # reproducible
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fuzz_long.py 2000 --random  # new inputs each run

Prints the number of inputs tried per target (hypothesis's generated cases, including any
shrinking) and exits non-zero if any input escaped with a foreign error, took too long, or
allocated past its bound. CI runs the same targets with a small budget (HEMGS_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("examples", type=int, help="examples per fuzz target")
    ap.add_argument("--random", action="store_true", help="fresh random inputs instead of the derandomized set")
    ap.add_argument("-k", default="fuzz", help="pytest -k selection of targets (default: all fuzz targets)")
    args = ap.parse_args()
    os.environ["HEMGS_FUZZ_EXAMPLES"] = str(args.examples)
    if args.random:
        os.environ["HEMGS_FUZZ_RANDOM"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import pytest

    t0 = time.perf_counter()
    rc = pytest.main(["-q", "-p", "no:cacheprovider", "-k", args.k, str(REPO / "tests" / "test_fuzz_readers.py")])
    counts = getattr(sys.modules.get("test_fuzz_readers"), "COUNTS", {})
    print(f"\nfuzz_long: {args.examples} examples per target, {time.perf_counter() - t0:.0f} s, "
          f"{'random' if args.random else 'derandomized'}, pytest exit {int(rc)}")
    for target, n in sorted(counts.items()):
        print(f"  {target:<16} {n:>7} inputs")
    print(f"  {'total':<16} {sum(counts.values()):>7} inputs")
    return int(rc)


if __name__ == "__main__":
    sys.exit(main())
