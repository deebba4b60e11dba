"""`qiedge`: one entry point. Thin: parses, calls the library, prints one line per failure.

Nothing heavy is imported at module level, so `qiedge --help` is instant and the torch-free
commands stay torch-free.
"""

from __future__ import annotations

import sys

from .parser import build_parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Exception as e:  # one clear line per failure; the traceback only on request
        if args.debug:
            raise
        print(f"qiedge {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
