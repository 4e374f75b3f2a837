"""``acp search``: flags -> :func:`acp.workflows.search.search` -> a printed summary.

Wire it into the main parser with ``register(subparsers)``; the handler returns the exit code.
"""

from __future__ import annotations

import argparse

from acp.cli.argtypes import non_negative_int as _non_negative_int
from acp.cli.argtypes import positive_floats, ratios
from acp.cli.argtypes import positive_int as _positive_int
from acp.errors import UserError


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``search`` to an ``argparse`` subparsers object; returns the new parser."""
    parser = subparsers.add_parser(
        "search",
        help="PSO search for the best architecture under a FLOPs/params/latency budget (or several)",
        description="Search channel widths under a MACs (FLOPs) and/or params budget with a particle swarm "
        "seeded by feature-map clustering. Writes OUT/best_arch.json, history.sqlite, a checkpoint "
        "(resume with --resume OUT), report.png and report.html (rewritten after every iteration). "
        "Several budgets (--flops 0.7,0.5,0.3) share one set-up and one history: each budget's files go to "
        "OUT/<label>/ (OUT/flops0.5/best_arch.json).",
    )
    parser.add_argument("config", nargs="?", help="search-space TOML (optional with --resume)")
    parser.add_argument("--out", help="new run directory")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR (with DIR/config.toml)")
    add_budget_flags(parser)
    add_stop_flags(parser)
    parser.add_argument("--particles", type=_positive_int, help="particles per iteration")
    parser.add_argument(
        "--engine", choices=["pso", "random"], help="pso (default) or random search (a baseline)"
    )
    parser.add_argument("--workers", type=int, help="parallel local worker processes (loky)")
    parser.add_argument(
        "--dask-scheduler", metavar="ADDR", help="evaluate on a Dask cluster, e.g. tcp://10.0.0.1:8786"
    )
    parser.add_argument("--backend", choices=["loky", "dask", "ray"], help="parallel backend")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)
    return parser


def add_budget_flags(parser: argparse.ArgumentParser) -> None:
    """--flops, --params, --latency, --latency-ms (acp search and acp run); each takes one value or a
    comma-separated list (several budgets searched in one run, sharing its set-up)."""
    several = " (a list like 0.7,0.5,0.3: one search per budget in one run)"
    parser.add_argument("--flops", type=ratios, help="keep at most this ratio of the base MACs" + several)
    parser.add_argument("--params", type=ratios, help="keep at most this ratio of the base params" + several)
    parser.add_argument(
        "--latency",
        type=ratios,
        help="keep at most this ratio of the base model's latency, measured on the config's [latency] "
        "runtime (the table is built once, cached; see `acp latency`)" + several,
    )
    parser.add_argument("--latency-ms", type=positive_floats, help="at most this many milliseconds" + several)


def add_stop_flags(parser: argparse.ArgumentParser) -> None:
    """--iterations, --time-limit, --patience and --seed of the search (acp search and acp run)."""
    parser.add_argument(
        "--iterations",
        type=_positive_int,
        help="PSO iterations (default 30; with --time-limit and no --iterations: until the time is up; "
        "a larger value on --resume extends a finished run)",
    )
    parser.add_argument(
        "--time-limit",
        help="stop the search after this long, e.g. 8h, 90m, 1h30m (total over resumes, shared equally "
        "by several budgets; checked after each iteration)",
    )
    parser.add_argument(
        "--patience", type=_non_negative_int, help="stop after N iterations without improvement (0: never)"
    )
    parser.add_argument("--seed", type=_non_negative_int, help="seed of the search")


def run(args: argparse.Namespace) -> int:
    from acp.settings import parse_duration
    from acp.workflows.search import search

    if args.out is None and args.resume is None:
        raise UserError("acp search: give --out DIR for a new run or --resume DIR")
    if args.out is not None and args.resume is not None:
        raise UserError("acp search: give either --out or --resume, not both")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"acp search: --workers must be >= 1, got {args.workers}")
    parse_duration(args.time_limit)  # a bad duration is reported before any work
    result = search(
        args.config,
        out=args.out,
        resume=args.resume,
        flops=args.flops,
        params=args.params,
        latency=args.latency,
        latency_ms=args.latency_ms,
        iterations=args.iterations,
        particles=args.particles,
        engine=args.engine,
        seed=args.seed,
        patience=args.patience,
        workers=args.workers,
        backend=args.backend,
        dask_scheduler=args.dask_scheduler,
        time_limit=args.time_limit,
        progress=not args.quiet,
    )
    for line in result.summary_lines():
        print(line)
    results = getattr(result, "results", None)  # a multi-budget run: one result per budget label
    if results is None:
        print(
            f"best architecture: {result.run_dir / 'best_arch.json'}; "
            f"report: {result.run_dir / 'report.html'} (and report.png)"
        )
        return 0
    for each in results.values():
        print(f"best architecture: {each.run_dir / 'best_arch.json'}")
    print(f"report: {result.run_dir / 'report.html'}; the front: acp front {result.run_dir}")
    return 0
