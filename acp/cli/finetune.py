"""``acp finetune``: retrain an architecture with its run's weights, data, split and [finetune] recipe."""

from __future__ import annotations

import argparse

from acp.cli.argtypes import non_negative_int, positive_int
from acp.settings import SCHEDULES


def register(commands) -> None:
    tune = commands.add_parser("finetune", help="retrain a pruned architecture from the base weights")
    tune.add_argument("arch", help="architecture JSON (e.g. runs/r20/best_arch.json)")
    tune.add_argument("--weights", help="unpruned base weights (default: from the run's config.toml)")
    tune.add_argument("--data", help="data SPEC (default: from the run's config.toml)")
    tune.add_argument("--split", help="validation split (default: the run's [data].split, else 'auto')")
    tune.add_argument(
        "--split-seed",
        type=non_negative_int,
        help="seed of a random:F split (default: the run's [data].seed)",
    )
    tune.add_argument("--epochs", type=positive_int, help="default: the run's [finetune].epochs")
    tune.add_argument("--out", required=True, help="new directory (or existing with --resume)")
    tune.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    tune.add_argument("--distill", action="store_true", help="knowledge distillation from the unpruned model")
    # Unset flags take the run's [finetune] values (acp.settings.FinetuneSettings without a run).
    tune.add_argument("--temperature", type=float, help="distillation temperature")
    tune.add_argument("--alpha", type=float, help="weight of the distillation term")
    tune.add_argument("--batch-size", type=positive_int)
    tune.add_argument("--lr", type=float, help="peak learning rate")
    tune.add_argument("--weight-decay", type=float)
    tune.add_argument("--schedule", choices=SCHEDULES)
    tune.add_argument("--label-smoothing", type=float)
    tune.add_argument("--seed", type=non_negative_int, help="seed of shuffling and augmentation")
    tune.add_argument(
        "--threads",
        type=positive_int,
        help="torch threads while training (default: [finetune].threads, else every core)",
    )
    tune.add_argument("--quiet", action="store_true", help="no progress bar")
    tune.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from acp.cli.common import print_finetune_summary
    from acp.workflows.finetune import finetune

    result = finetune(
        args.arch,
        out_dir=args.out,
        weights=args.weights,
        data=args.data,
        split=args.split,
        split_seed=args.split_seed,
        distill=True if args.distill else None,
        resume=args.resume,
        progress=not args.quiet,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        temperature=args.temperature,
        alpha=args.alpha,
        threads=args.threads,
    )
    print_finetune_summary(result.metrics, result.out_dir)
    return 0
