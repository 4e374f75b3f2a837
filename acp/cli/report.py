"""``acp report RUN``: write ``RUN/report.html`` again from the run directory (acp.workflows.report)."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    parser = commands.add_parser(
        "report",
        help="regenerate RUN/report.html (status, progress, every evaluation, the winner's widths)",
        description="Write RUN/report.html again from the search run directory RUN: its status and time "
        "left, the best proxy score against evaluations and wall time, every evaluation on the cost/score "
        "plane with the Pareto front, the winner's widths per group, a sortable table of the top "
        "candidates, the failed evaluations, the configuration and versions. A running search rewrites "
        "it after every iteration; the page needs no network to view. A multi-budget run's page shows "
        "every budget (finished, running or waiting), each one's winner, and the front over all of them.",
    )
    parser.add_argument("run", metavar="RUN", help="a search run directory (acp search --out RUN)")
    parser.add_argument("--out", metavar="FILE", help="write the page to FILE instead of RUN/report.html")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from acp.workflows.report import regenerate_report

    print(f"report: {regenerate_report(args.run, out=args.out)}")
    return 0
