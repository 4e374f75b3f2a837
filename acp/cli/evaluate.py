"""``acp eval``: accuracy, loss, MACs and params of a model (acp.workflows.evaluate)."""

from __future__ import annotations

import argparse

from acp.cli.argtypes import non_negative_int, positive_int


def register(commands) -> None:
    evaluate = commands.add_parser("eval", help="accuracy, loss, MACs and params of a model")
    evaluate.add_argument("arch", nargs="?", help="architecture JSON of a pruned model (optional)")
    evaluate.add_argument("--model", help="model name (when no architecture is given)")
    evaluate.add_argument(
        "--weights",
        help="state_dict file (required with --model; an architecture defaults to weights.pt beside it)",
    )
    evaluate.add_argument(
        "--random-weights",
        action="store_true",
        help="with --model: evaluate a randomly initialized network (a chance-level baseline)",
    )
    evaluate.add_argument("--data", required=True, help="data SPEC")
    evaluate.add_argument("--split", choices=["train", "val", "all"], default="val")
    evaluate.add_argument(
        "--split-method", help="how val is held out (default: the run's [data].split, else 'auto')"
    )
    evaluate.add_argument(
        "--seed",
        type=non_negative_int,
        help="seed of a random:F split (default: the run's [data].seed, else 0)",
    )
    evaluate.add_argument(
        "--threads", type=positive_int, help="torch threads (default: every core, or OMP_NUM_THREADS)"
    )
    evaluate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from acp.cli.common import print_evaluation
    from acp.workflows.evaluate import evaluate

    evaluation = evaluate(
        args.arch,
        model=args.model,
        weights=args.weights,
        data=args.data,
        split=args.split,
        split_method=args.split_method,
        split_seed=args.seed,
        threads=args.threads,
        random_weights=args.random_weights,
    )
    print_evaluation(args.arch or args.model, args.data, args.split, evaluation)
    return 0
