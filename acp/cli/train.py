"""``acp train``: train a base model (flags -> Schedule + DataSettings -> acp.workflows.train)."""

from __future__ import annotations

import argparse
from pathlib import Path

from acp.cli.argtypes import non_negative_int, positive_int
from acp.settings import SCHEDULES, DataSettings, Schedule


def register(commands) -> None:
    train = commands.add_parser("train", help="train a base model")
    train.add_argument(
        "--model", required=True, help="registry/torchvision name, timm:NAME or package.module:factory"
    )
    train.add_argument("--data", required=True, help="data SPEC: ImageFolder path, CIFAR dir, or 'digits'")
    train.add_argument("--epochs", type=positive_int, required=True)
    train.add_argument("--out", required=True, help="output directory (new, or existing with --resume)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument("--weights", help="initialize from these weights (state_dict)")
    train.add_argument("--batch-size", type=positive_int, help="default 128")
    train.add_argument("--lr", type=float, help="peak learning rate (default 0.1)")
    train.add_argument("--momentum", type=float)
    train.add_argument("--weight-decay", type=float)
    train.add_argument("--schedule", choices=SCHEDULES)
    train.add_argument("--warmup", type=float, help="one-cycle warm-up fraction")
    train.add_argument("--label-smoothing", type=float)
    train.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    train.add_argument("--split", help="'auto' (default), 'shared', 'tail:K' or 'random:F'")
    train.add_argument("--split-seed", type=non_negative_int, help="seed of a random:F split (default 0)")
    train.add_argument("--seed", type=non_negative_int, help="seed of shuffling, augmentation and init")
    train.add_argument(
        "--threads", type=positive_int, help="torch threads (default: every core, or OMP_NUM_THREADS)"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from acp.cli.common import check_fresh_out_dir
    from acp.train.loop import CHECKPOINT_NAME
    from acp.workflows.train import train_base

    schedule = Schedule().replace(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        label_smoothing=args.label_smoothing,
        augment=False if args.no_augment else None,
        seed=args.seed,
        warmup_fraction=args.warmup,
    )
    data = DataSettings(spec=args.data).replace(split=args.split, seed=args.split_seed)
    out = Path(args.out)
    check_fresh_out_dir(out, args.resume, CHECKPOINT_NAME)
    history = train_base(
        args.model,
        data,
        schedule,
        out,
        weights=args.weights,
        resume=args.resume,
        progress=not args.quiet,
        threads=args.threads,
    )
    final = history[-1]
    if hasattr(final, "val_score"):  # a detector (acp.train.detection_loop.DetectionEpochRecord)
        print(
            f"trained {args.model} for {final.epoch} epochs: val mAP@0.5 {final.val_score:.4f}, "
            f"train loss {final.train_loss:.4f}"
        )
    else:
        print(
            f"trained {args.model} for {final.epoch} epochs: val accuracy {final.val_accuracy:.4f}, "
            f"val loss {final.val_loss:.4f}"
        )
    print(f"weights: {out / 'weights.pt'}  metrics: {out / 'metrics.json'}")
    return 0
