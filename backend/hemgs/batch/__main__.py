"""`python -m hemgs.batch ...`: the same as `hemgs batch ...` (exit code 2 and one line for bad input)."""

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["batch", *sys.argv[1:]]))
