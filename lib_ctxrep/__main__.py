"""Command line: python -m lib_ctxrep demo (the main job), bench (every method side by side on the reference model)
and overhead (the cost of the hooks at realistic widths)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    """argparse with an argument error on one line (no usage block), pointing to --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    from .evaluation import bench, demo, overhead
    from .evaluation.cli import HelpFormatter

    parser = _Parser(prog="python -m lib_ctxrep", description=__doc__)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    kw = dict(formatter_class=HelpFormatter)
    demo.add_arguments(
        sub.add_parser("demo", help="one batch with and without repulsion on the reference model", **kw)
    )
    bench.add_arguments(sub.add_parser("bench", help="all methods side by side on the reference model", **kw))
    overhead.add_arguments(
        sub.add_parser("overhead", help="time and memory cost of the hooks at Flux width (minutes on a CPU)", **kw)
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        print("[lib_ctxrep] no command given: running 'demo' (the main job); 'python -m lib_ctxrep --help' lists all")
        argv = ["demo", *argv]
    args = parser.parse_args(argv)
    if args.command == "overhead":
        overhead.run(overhead.resolve_defaults(args))
    elif args.command == "bench":
        bench.run(args)
    else:
        demo.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
