"""``acp latency``: measure (or read from the cache) a config's latency table and describe it."""

from __future__ import annotations

import argparse

from acp.cli.argtypes import positive_int


def register(commands) -> None:
    parser = commands.add_parser(
        "latency",
        help="measure the latency table a latency budget predicts with",
        description="Time every layer geometry of the model on a grid of widths on this machine and runtime, "
        "fit the predictor to a few whole models, and cache the table (reused by `acp search --latency`, "
        "`acp info`). Flags override the config's [latency] section.",
    )
    parser.add_argument("config", help="a search-space TOML file or a model name")
    parser.add_argument("--runtime", choices=["torch", "torchscript", "onnxruntime"], help="where to time it")
    parser.add_argument("--batch", type=positive_int, help="batch size (default 1)")
    parser.add_argument("--threads", type=positive_int, help="threads, pinned while timing (default 1)")
    parser.add_argument("--grid-points", type=positive_int, help="widths per axis of every layer table")
    parser.add_argument("--rebuild", action="store_true", help="measure again even if a cached table fits")
    parser.add_argument(
        "--suggest-round-to",
        action="store_true",
        help="also time the heaviest layers at every width and suggest [space].round_to (needs round_to = 1)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from acp.workflows.latency import measure_table
    from acp.workflows.problem import resolve_settings

    settings = resolve_settings(args.config)
    settings = settings.replace(
        latency=settings.latency.replace(
            runtime=args.runtime, batch_size=args.batch, threads=args.threads, grid_points=args.grid_points
        )
    )
    report = measure_table(
        settings, rebuild=args.rebuild, progress=not args.quiet, suggest_round_to=args.suggest_round_to
    )
    for line in report.lines():
        print(line)
    return 0
