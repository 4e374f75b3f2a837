"""``acp cache info|clear``: what acp has cached where (decoded images, latency tables), and removing it."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser(
        "cache",
        help="show or clear acp's cache (decoded images, latency tables)",
        description="The cache directory is $ACP_CACHE_DIR, else $XDG_CACHE_HOME/acp, else ~/.cache/acp. "
        "An ImageFolder whose decoded size is within the cache limit ([data].cache_limit_gb, else "
        "$ACP_CACHE_LIMIT_GB, else the default) is cached there as one array; a larger one is streamed "
        "from its files and only its description is cached.",
    )
    dir_help = "the cache directory to show or clear (default: $ACP_CACHE_DIR or ~/.cache/acp)"
    parser.add_argument("--dir", type=Path, help=dir_help)
    actions = parser.add_subparsers(dest="cache_action", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="list the cached files, their sizes, and the cache limit")
    info.set_defaults(handler=run_info)
    clear = actions.add_parser("clear", help="remove acp's cached files (and say what was removed)")
    for action in (info, clear):  # --dir after the action too
        action.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help=dir_help)
    clear.add_argument(
        "--only",
        choices=["images", "latency"],
        help="remove only the decoded images and their descriptions, or only the latency tables "
        "(measured, so slow to rebuild); default: both",
    )
    clear.set_defaults(handler=run_clear)


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def run_info(args: argparse.Namespace) -> int:
    from acp.datacache import cache_entries, default_cache_dir
    from acp.settings import cache_limit_gb

    directory = args.dir or default_cache_dir()
    limit, source = cache_limit_gb()
    entries = cache_entries(directory)
    print(f"cache directory: {directory}{'' if directory.is_dir() else ' (does not exist)'}")
    print(
        f"cache limit: {limit:g} GB ({source}; a run's [data].cache_limit_gb overrides it): an ImageFolder "
        "larger than this decoded is streamed"
    )
    for entry in entries:
        print(f"  {_size(entry.bytes):>9}  {entry.kind:<8} {entry.path.name}  {entry.what}")
    total = sum(entry.bytes for entry in entries)
    print(f"{len(entries)} file(s), {_size(total)}")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    from acp.datacache import KINDS, clear_cache, default_cache_dir

    directory = args.dir or default_cache_dir()
    removed = clear_cache(directory, (args.only,) if args.only else KINDS)
    for entry in removed:
        print(f"removed {entry.path}  ({_size(entry.bytes)}, {entry.kind})")
    print(f"removed {len(removed)} file(s), {_size(sum(entry.bytes for entry in removed))} from {directory}")
    return 0
