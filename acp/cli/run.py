"""``acp run``: search, then finetune the winner (acp.workflows.pipeline)."""

from __future__ import annotations

import argparse

from acp.cli.argtypes import positive_int
from acp.cli.search import add_budget_flags, add_stop_flags


def register(commands) -> None:
    run_parser = commands.add_parser(
        "run",
        help="search, then finetune the winner (each stage resumable)",
        description="Search CONFIG into DIR, then finetune the winner into DIR/finetune. With several "
        "budgets (--flops 0.7,0.5,0.3) every budget's winner is finetuned into DIR/<label>/finetune and "
        "DIR/curve.png plots their finetuned accuracy against MACs with the base model's point.",
    )
    run_parser.add_argument("config", nargs="?", help="search-space TOML (optional with --resume)")
    run_parser.add_argument(
        "--out", help="new run directory (search in DIR, finetuned model in DIR/finetune)"
    )
    run_parser.add_argument(
        "--resume", metavar="DIR", help="continue the run in DIR, whichever stage it stopped in"
    )
    add_budget_flags(run_parser)
    add_stop_flags(run_parser)
    run_parser.add_argument(
        "--epochs", type=positive_int, help="finetuning epochs (default: [finetune].epochs)"
    )
    run_parser.add_argument(
        "--distill", action="store_true", help="distill from the unpruned model while finetuning"
    )
    run_parser.add_argument(
        "--workers", type=positive_int, help="parallel evaluation processes for the search"
    )
    run_parser.add_argument("--quiet", action="store_true", help="no progress bars")
    run_parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from acp.cli.common import print_finetune_summary
    from acp.settings import parse_duration
    from acp.workflows.pipeline import run_pipeline

    parse_duration(args.time_limit)  # a bad duration is reported before any work

    result = run_pipeline(
        args.config,
        out=args.out,
        resume=args.resume,
        flops=args.flops,
        params=args.params,
        latency=args.latency,
        latency_ms=args.latency_ms,
        iterations=args.iterations,
        time_limit=args.time_limit,
        patience=args.patience,
        seed=args.seed,
        epochs=args.epochs,
        distill=True if args.distill else None,
        workers=args.workers,
        progress=not args.quiet,
    )
    for line in result.search.summary_lines():
        print(line)
    for label, tuned in result.finetunes.items():
        if label is not None:
            print(f"== {label}: the winner finetuned")
        print_finetune_summary(tuned.metrics, tuned.out_dir)
    if result.curve is not None:
        print(f"finetuned accuracy against MACs, every budget and the base model: {result.curve}")
    return 0
