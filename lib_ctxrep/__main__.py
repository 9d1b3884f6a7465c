"""Command line: ``python -m lib_ctxrep demo`` (the main job), ``bench`` (every method side by side on the reference
model) and ``overhead`` (the cost of the hooks at realistic widths)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    from . import bench, demo, overhead

    parser = argparse.ArgumentParser(prog="python -m lib_ctxrep", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    demo.add_arguments(sub.add_parser("demo", help="one batch with and without repulsion on the reference model"))
    bench.add_arguments(sub.add_parser("bench", help="all methods side by side on the reference model"))
    overhead.add_arguments(sub.add_parser("overhead", help="time and memory cost of the hooks at Flux width"))
    args = parser.parse_args(argv)
    if args.command == "overhead":
        overhead.run(overhead.resolve_defaults(args))
    elif args.command == "bench":
        bench.run(args)
    else:
        if args.command is None:
            args = parser.parse_args(["demo", *(argv or [])])
        demo.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
