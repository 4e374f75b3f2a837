"""Cost of feature statistics, clustering and channel selection vs. images (N) and channels.

Each configuration runs in a fresh subprocess so its peak memory (ru_maxrss) is its own. Inputs are
seeded random tensors (time and memory do not depend on image content). Measured per configuration:
statistics collection (forward passes + Gram/response/HRank accumulation), the budget proposal at 50%
MACs (dendrograms + bisection), ranking every group with ``cluster`` and ``redundancy``, and the cost
of ``select`` for every group of one search candidate. Appends/updates the "Feature statistics and
clustering" section of RESULTS.md.

    /work/venv/bin/python benchmarks/bench_cluster.py [--skip-resnet50] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

SECTION = "Feature statistics and clustering (bench_cluster.py)"

CONFIGS = [
    # (model, input size, width multiplier, images, batch size)
    ("resnet20_cifar", 32, 1, 64, 64),
    ("resnet20_cifar", 32, 1, 256, 64),
    ("resnet20_cifar", 32, 1, 1024, 64),
    ("resnet20_cifar", 32, 2, 256, 64),
    ("resnet20_cifar", 32, 4, 256, 64),
    ("resnet56_cifar", 32, 1, 256, 64),
    ("mobilenet_v2", 224, 1, 64, 32),
    ("resnet50", 224, 1, 64, 32),
    ("resnet50", 224, 1, 256, 32),
]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux reports KiB


def run_one(model_name: str, size: int, multiplier: int, images: int, batch_size: int) -> dict:
    from acp.core.architecture import ModelIdentity
    from acp.models import create_model
    from acp.propose.clustering import propose_widths
    from acp.propose.criteria import make_criterion
    from acp.propose.features import collect_statistics
    from acp.prune import space_for

    torch.set_num_threads(2)
    kwargs = {"widths": tuple(w * multiplier for w in (16, 32, 64))} if multiplier != 1 else {}
    identity = ModelIdentity.for_model(model_name, 10, input_size=(3, size, size), **kwargs)
    torch.manual_seed(0)
    model = create_model(model_name, 10, **kwargs).eval()
    space = space_for(model, identity, {})
    inputs = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(0))
    rss_before = peak_rss_gb()
    started = time.perf_counter()
    stats = collect_statistics(model, space, inputs, num_images=images, batch_size=batch_size)
    collect_seconds = time.perf_counter() - started
    rss_after = peak_rss_gb()
    stats_mb = sum(g.gram.nbytes + g.mean_response.nbytes for g in stats.groups.values()) / 1e6

    started = time.perf_counter()
    proposal = propose_widths(stats, space, flops=0.5)
    propose_seconds = time.perf_counter() - started
    timings = {}
    for name in ("cluster", "redundancy"):
        criterion = make_criterion(name, space, model=model, statistics=stats)
        started = time.perf_counter()
        for group in space.groups:
            criterion.ranking(group.id)
        timings[name] = time.perf_counter() - started
    criterion = make_criterion("cluster", space, model=model, statistics=stats)
    rng = np.random.default_rng(0)
    candidates = [[int(rng.choice(group.allowed_widths())) for group in space.groups] for _ in range(200)]
    started = time.perf_counter()
    for widths in candidates:
        for group, width in zip(space.groups, widths):
            criterion.select(group.id, width)
    select_us = (time.perf_counter() - started) / len(candidates) * 1e6
    started = time.perf_counter()
    for widths in candidates:
        criterion.keep(widths)
    keep_us = (time.perf_counter() - started) / len(candidates) * 1e6
    return {
        "model": model_name + (f" x{multiplier}" if multiplier != 1 else ""),
        "input": size,
        "images": images,
        "groups": len(space.groups),
        "channels": int(space.full_widths().sum()),
        "largest_group": int(space.full_widths().max()),
        "members": sum(len(g.members) for g in stats.groups.values()),
        "collect_s": collect_seconds,
        "ms_per_image": collect_seconds / images * 1e3,
        "rss_before_gb": rss_before,
        "peak_rss_gb": max(rss_after, peak_rss_gb()),
        "stats_mb": stats_mb,
        "propose_s": propose_seconds,
        "proposal_macs": proposal.macs_ratio,
        "cluster_rank_s": timings["cluster"],
        "redundancy_rank_s": timings["redundancy"],
        "select_us": select_us,
        "keep_us": keep_us,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--skip-resnet50", action="store_true", help="skip the 224x224 ImageNet models")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*json.loads(args.one))))
        return
    configs = [c for c in CONFIGS if not (args.skip_resnet50 and c[1] == 224)]
    results = []
    for config in configs:
        output = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(config)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result = json.loads(output.strip().splitlines()[-1])
        results.append(result)
        print(json.dumps(result), flush=True)
    header = (
        "| model | input | N | groups | channels (largest) | hooked layers | collect (s) | ms/image "
        "| RSS before -> peak (GB) | stats (MB) | proposal 50% (s) | rank all: cluster / redundancy (s) "
        "| select per candidate (us) | keep() per candidate (us) |"
    )
    lines = [
        "Command: `/work/venv/bin/python benchmarks/bench_cluster.py"
        + (" --skip-resnet50`" if args.skip_resnet50 else "`"),
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: 2 CPU cores "
        f"({platform.machine()}), shared with other jobs; torch {torch.__version__}, numpy {np.__version__}. "
        "Each row runs in a fresh process; inputs are seeded random tensors; default settings "
        "(pool 4x4, HRank on the first 32 images), batch 64 (32 at 224x224).",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['images']} | {r['groups']} "
            f"| {r['channels']} ({r['largest_group']}) | {r['members']} | {r['collect_s']:.1f} "
            f"| {r['ms_per_image']:.1f} | {r['rss_before_gb']:.2f} -> {r['peak_rss_gb']:.2f} "
            f"| {r['stats_mb']:.1f} | {r['propose_s']:.2f} "
            f"| {r['cluster_rank_s']:.2f} / {r['redundancy_rank_s']:.2f} "
            f"| {r['select_us']:.0f} | {r['keep_us']:.0f} |"
        )
    print("\n".join(lines))
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_criteria import update_section

        update_section(SECTION, lines)


if __name__ == "__main__":
    main()
