"""The ``acp`` command: a thin shell that parses flags, calls one workflow and maps errors to exit codes.

Exit codes (contract): 0 success; 2 user error (one line on stderr, no traceback); 1 internal error.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from acp.cli import (
    cache,
    cluster,
    demo,
    evaluate,
    finetune,
    front,
    info,
    latency,
    prune,
    report,
    run,
    search,
    train,
)
from acp.cli.common import Parser
from acp.errors import UserError, one_line

COMMANDS = (demo, train, evaluate, info, latency, cluster, search, report, front, run, prune, finetune, cache)


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


def check_acp_is_this_package() -> None:
    """UserError unless the ``acp`` package Python loaded is the one this command belongs to.

    A folder named ``acp`` on the Python path shadows an editable install: with ``PYTHONPATH=~`` and the
    clone at ``~/acp``, ``import acp`` finds the clone's top folder as a namespace package (no
    ``__init__.py``), while ``acp.cli`` and the other submodules still come from the install. Nothing of
    ``acp/__init__.py`` exists then, and the first use of it would be a traceback.
    """
    package = Path(__file__).resolve().parents[1]
    loaded = sys.modules.get("acp")
    found = getattr(loaded, "__file__", None)
    if found and Path(found).resolve().parent == package:
        return
    folders = list(getattr(loaded, "__path__", None) or [found or "?"])
    folder = Path(folders[0])
    entries = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    if any(Path(entry).resolve() == folder.parent.resolve() for entry in entries):
        fix = f"remove {folder.parent} from PYTHONPATH, or run acp from another folder"
    else:
        fix = f"{folder.parent} is on the Python path (the current directory?); run acp from another folder"
    raise UserError(
        f"the 'acp' Python found is the folder {folder}, not the installed acp package ({package}): " + fix
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        check_acp_is_this_package()
        args = build_parser().parse_args(argv)
        if args.verbose:
            logging.getLogger().setLevel(logging.DEBUG)
        if not getattr(args, "handler", None):
            build_parser().print_help()
            return 2
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then the BrokenPipeError below
        return code
    except UserError as error:
        print(f"acp: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("acp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `acp front RUN | head`: the reader left; stop quietly, as a shell tool does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 141  # 128 + SIGPIPE, what the shell reports for a command killed by a closed pipe


if __name__ == "__main__":
    sys.exit(main())
