"""``acp front RUN``: the Pareto-optimal architectures of a search run (acp.workflows.front)."""

from __future__ import annotations

import argparse

from acp.cli.argtypes import names, non_negative_int

cost_names = names("macs", "params", "latency")

DEFAULT_ROWS = 24  # a laptop screen's worth; a multi-budget run's front has hundreds of points


def register(commands) -> None:
    parser = commands.add_parser(
        "front",
        help="the Pareto front of a search run: print it, plot it, export its architectures",
        description="Print the Pareto-optimal architectures of the search run RUN (no other evaluated "
        "architecture is at most as costly in MACs, params and predicted latency and scores at least as "
        "well), plot proxy score against each cost into RUN/front.png (or --plot FILE), and with --export "
        "DIR write each of them as an architecture file for acp finetune. A multi-budget run's front is over "
        "all its budgets; where acp run finetuned a winner, its accuracy is printed and plotted too.",
    )
    parser.add_argument("run", metavar="RUN", help="a search run directory (acp search --out RUN)")
    parser.add_argument("--export", metavar="DIR", help="new directory for the front's architecture files")
    parser.add_argument("--plot", metavar="FILE", help="write the plot to FILE instead of RUN/front.png")
    parser.add_argument(
        "--costs",
        type=cost_names,
        help="what the front is Pareto-optimal over: some of macs,params,latency (default: every one the "
        "run has; --costs macs gives the curve over MACs alone)",
    )
    parser.add_argument(
        "--rows",
        type=non_negative_int,
        default=DEFAULT_ROWS,
        help=f"print at most N of the front's architectures, spread over it (default {DEFAULT_ROWS}; 0: all)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from acp.workflows.front import FRONT_PLOT_FILE, export_front, plot_front, read_front

    if args.export:  # a bad --export is reported before anything is printed or plotted
        from acp.fileio import require_fresh_output

        require_fresh_output(args.export, "pick a new directory", flag="--export")
    front = read_front(args.run, costs=args.costs)
    shown = len(front.shown(args.rows))
    print(
        f"{len(front.optimal)} Pareto-optimal (over {', '.join(front.costs)} against the proxy score) "
        f"of {len(front.points)} distinct architectures "
        f"({front.budget_label}; ratios of the base model)"
        + (":" if shown == len(front.optimal) else f"; {shown} of them, spread over it (--rows 0: all):")
    )
    for line in front.table_lines(args.rows) + front.winner_lines() + front.finetuned_lines():
        print(line)
    print(f"plot: {plot_front(front, args.plot or Path(args.run) / FRONT_PLOT_FILE)}")
    if args.export:
        paths = export_front(front, args.export)
        print(f"exported {len(paths)} architectures to {args.export}")
    return 0
