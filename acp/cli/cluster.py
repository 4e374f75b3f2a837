"""``acp cluster``: stage 1 alone -- propose widths by feature-map clustering (acp.workflows.propose)."""

from __future__ import annotations

import argparse
from pathlib import Path

from acp.cli.argtypes import positive_int, ratio
from acp.settings import CRITERIA, ProposeSettings


def register(commands) -> None:
    cluster = commands.add_parser("cluster", help="propose widths by feature-map clustering under a budget")
    cluster.add_argument("config", help="a search-space TOML file")
    cluster.add_argument("--flops", type=ratio, help="keep this ratio of the base MACs, e.g. 0.5")
    cluster.add_argument("--params", type=ratio, help="keep this ratio of the base parameters")
    cluster.add_argument(
        "--mode",
        choices=["budget", "dbscan"],
        help="budget: hierarchical clustering cut onto the budget (default); dbscan: ACP paper (no budget)",
    )
    cluster.add_argument("--eps", type=float, help="DBSCAN eps (dbscan mode)")
    cluster.add_argument("--min-samples", type=positive_int, help="DBSCAN min_samples (default 5)")
    cluster.add_argument(
        "--images", type=positive_int, help="calibration images (training split; default 256)"
    )
    cluster.add_argument("--criterion", choices=CRITERIA, help="which channels survive (default l2)")
    cluster.add_argument("--out", help="architecture JSON to write (default: proposal_arch.json)")
    cluster.add_argument(
        "--random-weights",
        action="store_true",
        help="cluster a randomly initialized network instead of [model].weights (a smoke test of the "
        "config; the proposal says nothing about the trained model). Without it missing weights are an "
        "error",
    )
    cluster.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from acp.workflows.problem import resolve_settings
    from acp.workflows.propose import propose

    options = ProposeSettings(
        **{
            key: value
            for key, value in {
                "mode": args.mode,
                "eps": args.eps,
                "min_samples": args.min_samples,
                "images": args.images,
                "criterion": args.criterion,
            }.items()
            if value is not None
        }
    )
    settings = resolve_settings(args.config)
    if options.mode == "dbscan" and (args.flops is not None or args.params is not None):
        from acp.errors import UserError

        raise UserError("acp cluster --mode dbscan takes --eps, not --flops/--params (DBSCAN sets no budget)")
    if options.mode == "dbscan":  # the config's [budget] does not apply to DBSCAN
        from acp.settings import BudgetSettings

        settings = settings.replace(budget=BudgetSettings())
    result = propose(
        settings, options, flops=args.flops, params=args.params, random_weights=args.random_weights
    )
    for line in result.proposal.summary_lines():
        print(line)
    out = Path(args.out) if args.out else Path("proposal_arch.json")
    result.architecture.save(out)
    note = "; a randomly initialized network (--random-weights)" if args.random_weights else ""
    print(f"wrote {out} (channels chosen by the '{options.criterion}' criterion{note})")
    return 0
