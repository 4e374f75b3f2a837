"""Which channels to keep: every criterion on the shared ResNet-20 at 50% MACs, no finetuning.

For each criterion: uniform widths at <= 50% of the base MACs (the largest ``space.uniform_widths`` ratio
that fits, by bisection), channels chosen by the criterion, materialize, recalibrate BatchNorm on
training images (cumulative averages over ``--recal-batches`` batches of 128, no gradients), then top-1
accuracy on the 5,000 validation images (last 500 files per class). Feature statistics come from
``--calib`` class-balanced training images. Also: the budget-aware cluster proposal (non-uniform widths)
with the ``cluster`` and ``l1`` criteria. Appends/updates the "Channel criteria" section of RESULTS.md.

    /work/venv/bin/python benchmarks/bench_criteria.py [--calib 256] [--recal-batches 20] [--no-write]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from acp.core.architecture import Architecture, ModelIdentity
from acp.data import load_data, make_splits, take_stratified
from acp.fileio import load_state_dict_file
from acp.models import create_model
from acp.propose.clustering import proposal_to_architecture, propose_widths
from acp.propose.criteria import CRITERIA, make_criterion
from acp.propose.features import collect_statistics
from acp.prune import materialize, space_for

SHARED = Path(__file__).resolve().parents[2] / "shared"
SECTION = "Channel criteria (bench_criteria.py)"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


from bench_common import update_section  # noqa: E402  (benchmarks/ is the script's directory)


def uniform_widths_for(space, flops: float) -> tuple[np.ndarray, float]:
    """Largest keep ratio whose uniform widths cost <= flops * base MACs (bisection on the ratio)."""
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        macs, _ = space.cost(space.uniform_widths(middle))
        if macs <= flops * space.base_macs:
            low = middle
        else:
            high = middle
    return space.uniform_widths(low), low


def recalibrate(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the recalibration batches
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    return model.eval()


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(images[start : start + batch_size])
            correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--hrank-images", type=int, default=256)
    parser.add_argument("--recal-batches", type=int, default=20)
    parser.add_argument("--flops", type=float, default=0.5)
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    weights = SHARED / "models" / "resnet20_cifar10.pt"
    data_path = SHARED / "data" / "cifar10" / "train"
    if not weights.exists() or not data_path.exists():
        sys.exit(f"needs {weights} and {data_path}")

    started = time.perf_counter()
    data = load_data(str(data_path))
    splits = make_splits(data, "shared")
    val_images, val_labels = data.tensors(splits.val)
    calib_index = take_stratified(splits.train, data.labels, args.calib, seed=0)
    calib_images, calib_labels = data.tensors(calib_index)
    recal_index = np.random.default_rng(1).permutation(splits.train)[: args.recal_batches * 128]
    recal_images, _ = data.tensors(recal_index)
    recal_batches = list(torch.split(recal_images, 128))
    print(f"data ready in {time.perf_counter() - started:.1f}s", flush=True)

    identity = ModelIdentity.for_model("resnet20_cifar", 10)
    model = create_model("resnet20_cifar", 10)
    model.load_state_dict(load_state_dict_file(weights), strict=True)
    model.eval()
    space = space_for(model, identity, {})
    base_accuracy = accuracy(model, val_images, val_labels)
    print(f"base validation accuracy {base_accuracy:.2%}", flush=True)

    started = time.perf_counter()
    stats = collect_statistics(
        model, space, calib_images, labels=calib_labels, hrank_images=args.hrank_images
    )
    stats_seconds = time.perf_counter() - started
    widths, ratio = uniform_widths_for(space, args.flops)
    width_map = {group.id: int(width) for group, width in zip(space.groups, widths)}

    rows = []

    def evaluate(label: str, arch: Architecture, seconds: float) -> None:
        pruned = materialize(model, arch, space)
        before = accuracy(pruned, val_images, val_labels)
        after = accuracy(recalibrate(pruned, recal_batches), val_images, val_labels)
        rows.append((label, arch.macs / space.base_macs, before, after, seconds))
        print(
            f"{label:<28} MACs {arch.macs / space.base_macs:.1%}  no-recal {before:.2%}  recal {after:.2%}",
            flush=True,
        )

    for name in CRITERIA:
        seeds = range(args.random_seeds) if name == "random" else [0]
        for seed in seeds:
            started = time.perf_counter()
            criterion = make_criterion(name, space, model=model, statistics=stats, seed=seed)
            keep = criterion.keep(width_map)
            seconds = time.perf_counter() - started
            arch = Architecture.from_widths(
                space,
                identity,
                width_map,
                keep,
                budget={"flops": args.flops},
                space_settings={},
                provenance={"source": "uniform", "criterion": name, "seed": seed, "created": None},
            )
            evaluate(f"{name}" + (f" (seed {seed})" if name == "random" else ""), arch, seconds)

    proposal = propose_widths(stats, space, flops=args.flops)
    for name in ("cluster", "l1"):
        criterion = make_criterion(name, space, model=model, statistics=stats)
        arch = proposal_to_architecture(proposal, space, identity, criterion, space_settings={})
        evaluate(f"cluster proposal + {name}", arch, 0.0)

    lines = [
        f"Command: `/work/venv/bin/python benchmarks/bench_criteria.py --calib {args.calib} "
        f"--hrank-images {args.hrank_images} --recal-batches {args.recal_batches} --flops {args.flops}`",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: 2 CPU cores "
        f"({platform.processor() or platform.machine()}); torch {torch.__version__}, numpy {np.__version__}; "
        f"acp at {_git_head()}.",
        "",
        f"Shared ResNet-20 (`resnet20_cifar10.pt`), base validation accuracy {base_accuracy:.2%} "
        "(5,000 images). "
        f"Uniform widths: keep ratio {ratio:.4f} -> {widths.tolist()} per group, "
        f"{rows[0][1]:.1%} of {space.base_macs:,} MACs. Statistics: {args.calib} class-balanced training "
        f"images ({stats_seconds:.1f}s, HRank on {stats.hrank_images} images); BN recalibration: "
        f"{args.recal_batches} x 128 training images, cumulative averages; no finetuning.",
        "",
        "| criterion | MACs | val acc, no BN recal | val acc, BN recal | ranking time (s) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {label} | {macs:.1%} | {before:.2%} | {after:.2%} | {seconds:.3f} |"
        for label, macs, before, after, seconds in rows
    ]
    lines += [
        "",
        f"Cluster proposal widths at {args.flops:.0%} MACs: {proposal.widths.tolist()} "
        f"(threshold {proposal.threshold:.4f}).",
    ]
    print("\n".join(lines))
    if not args.no_write:
        update_section(SECTION, lines)


def _git_head() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                check=True,
            ).stdout.strip()
            + " (+ working tree)"
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
