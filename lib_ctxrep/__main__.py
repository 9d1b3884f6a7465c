"""Command line: ``python -m lib_ctxrep demo`` (the main job) and ``python -m lib_ctxrep bench`` (overhead)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    from . import bench, demo

    parser = argparse.ArgumentParser(prog="python -m lib_ctxrep", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    demo.add_arguments(sub.add_parser("demo", help="diversity with and without repulsion on a small Flux model"))
    bench.add_arguments(sub.add_parser("bench", help="overhead of the hooks at realistic widths"))
    args = parser.parse_args(argv)
    if args.command == "bench":
        bench.run(bench.resolve_defaults(args))
    elif args.command == "demo" or args.command is None:
        if args.command is None:
            args = parser.parse_args(["demo", *(argv or [])])
        demo.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
