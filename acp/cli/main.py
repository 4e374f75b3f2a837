"""The ``acp`` command: a thin shell that parses flags, calls one workflow and maps errors to exit codes.

Exit codes (contract): 0 success; 2 user error (one line on stderr, no traceback); 1 internal error.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from acp.cli import cluster, demo, evaluate, finetune, info, latency, prune, run, search, train
from acp.cli.common import Parser
from acp.errors import UserError, one_line

COMMANDS = (demo, train, evaluate, info, latency, cluster, search, run, prune, finetune)


def build_parser() -> Parser:
    parser = Parser(prog="acp", description="Automatic channel pruning for PyTorch CNNs.")
    parser.add_argument("--version", action="version", version=f"acp {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.register(commands)
    return parser


def _version() -> str:
    from acp import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        if args.verbose:
            logging.getLogger().setLevel(logging.DEBUG)
        if not getattr(args, "handler", None):
            build_parser().print_help()
            return 2
        return int(args.handler(args) or 0)
    except UserError as error:
        print(f"acp: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("acp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
