"""Does knowledge distillation help finetuning at equal epochs? (shared ResNet-20, CIFAR-10)

Prunes the shared ResNet-20 to the budget-aware clustering proposal at --flops of its MACs (channels by
--criterion), then finetunes two copies with the identical recipe and seed -- plain cross-entropy vs
distillation from the unpruned model (``(1 - alpha) * CE + alpha * T^2 * KL``) -- and reports validation
accuracy (5,000 held-out training images) before and after. Writes a section of benchmarks/RESULTS.md.

    python benchmarks/bench_distill.py --epochs 3 --train-images 45000
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=45000, help="training images per epoch (subset)")
    parser.add_argument("--flops", type=float, default=0.5)
    parser.add_argument("--criterion", default="l1")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from acp.core.architecture import Architecture, ModelIdentity
    from acp.core.space import ChannelSpace
    from acp.data import load_data, make_splits, take_stratified
    from acp.fileio import load_weights_into
    from acp.models import create_model
    from acp.propose.clustering import propose_widths
    from acp.propose.criteria import make_criterion
    from acp.propose.features import collect_statistics
    from acp.proxy.evaluator import recalibrate_batchnorm
    from acp.prune import materialize
    from acp.settings import Schedule
    from acp.train.loop import evaluate, train

    data = load_data(str(SHARED / "data" / "cifar10" / "train"))
    splits = make_splits(data, "shared")
    base = load_weights_into(create_model("resnet20_cifar"), SHARED / "models" / "resnet20_cifar10.pt")
    identity = ModelIdentity("resnet20_cifar", 10, (3, 32, 32), {})
    space = ChannelSpace.build(base, torch.zeros(1, 3, 32, 32), ignored_layers=["fc"])
    calibration = take_stratified(splits.train, data.labels, 256, seed=0)
    images, labels = data.tensors(calibration)
    statistics = collect_statistics(base, space, images, labels=labels)
    proposal = propose_widths(statistics, space, flops=args.flops)
    criterion = make_criterion(args.criterion, space, model=base, statistics=statistics)
    widths = proposal.width_map()
    arch = Architecture.from_widths(
        space,
        identity,
        widths,
        criterion.keep(widths),
        space_settings=space.settings,
        budget={"flops": args.flops},
        provenance={"source": "cluster"},
    )
    train_subset = take_stratified(splits.train, data.labels, args.train_images, seed=1)
    base_accuracy, _ = evaluate(base, data, splits.val)

    rows = []
    for distill in (False, True):
        pruned = materialize(base, arch, space)
        recal = [
            data.tensors(take_stratified(splits.train, data.labels, 2560, seed=2))[0][i : i + 128]
            for i in range(0, 2560, 128)
        ]
        recalibrate_batchnorm(pruned, recal)
        before, _ = evaluate(pruned, data, splits.val)
        schedule = Schedule(epochs=args.epochs, batch_size=128, lr=args.lr, seed=0)
        began = time.perf_counter()
        history = train(
            pruned,
            data,
            train_subset,
            splits.val,
            schedule,
            Path("/tmp") / f"bench_distill_{distill}",
            teacher=base if distill else None,
            progress=False,
        )
        rows.append((distill, before, history[-1].val_accuracy, time.perf_counter() - began))
        print(f"distill={distill}: before {before:.4f} after {history[-1].val_accuracy:.4f}", flush=True)

    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    command = "python benchmarks/bench_distill.py " + " ".join(sys.argv[1:])
    lines = [
        f"Command: `{command}`  ",
        f"Date: {date}; machine: {torch.get_num_threads()} torch threads, 2 CPU cores "
        f"({platform.machine()}); "
        f"torch {torch.__version__}; acp at {commit} (+ working tree).",
        "",
        f"Shared ResNet-20 (base validation accuracy {100 * base_accuracy:.2f}%), pruned to the clustering "
        f"proposal at {100 * arch.macs_ratio:.1f}% MACs / {100 * arch.params_ratio:.1f}% params, channels by "
        f"`{args.criterion}`, BN recalibrated on 2,560 training images; then {args.epochs} epochs on "
        f"{len(train_subset):,} training "
        f"images (SGD Nesterov, cosine from lr {args.lr}, wd 5e-4, batch 128, crop+flip, seed 0); "
        "distillation: T = 4, alpha = 0.9. Validation: the 5,000 held-out images.",
        "",
        "| finetuning | val acc before | val acc after | seconds |",
        "|---|---|---|---|",
    ]
    for distill, before, after, seconds in rows:
        name = "distilled from the unpruned model" if distill else "cross-entropy only"
        lines.append(f"| {name} | {100 * before:.2f}% | {100 * after:.2f}% | {seconds:.0f} |")
    gain = 100 * (rows[1][2] - rows[0][2])
    lines += [
        "",
        f"Distillation changes the accuracy after finetuning by {gain:+.2f} points at equal epochs "
        "(one seed; differences under ~0.5 point are within seed noise).",
    ]
    print("\n".join(lines))
    if not args.no_write:
        from bench_common import update_section

        update_section("Knowledge distillation at equal epochs (bench_distill.py)", lines)


if __name__ == "__main__":
    main()
