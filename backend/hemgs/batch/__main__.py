"""`python -m hemgs.batch ...`: the batch subcommand on its own, with the CLI's exit codes
(2 and one line for bad input)."""

import argparse
import sys

from ..errors import HemgsError, one_line
from .command import add_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hemgs.batch")
    sub = parser.add_subparsers()
    add_parser(sub)
    args = parser.parse_args(["batch", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("hemgs: interrupted", file=sys.stderr)
        return 130
    except (HemgsError, OSError) as exc:
        if args.debug:
            raise
        print(f"hemgs: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
