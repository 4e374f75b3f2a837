"""How much faster is the analytic cost model than materialize + count, and how fast is materialize?

    python benchmarks/bench_cost_model.py [--models resnet20_cifar resnet56_cifar densenet121] [--no-write]

For each model: the time to cost a 64-candidate swarm with one ``space.cost`` call (per candidate), the
time to materialize a candidate and run ``tp.utils.count_ops_and_params`` on it (the alternative), and the
time to materialize with acp's index plan versus Torch-Pruning's DependencyGraph path. Prints a table
and replaces this script's section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp

from acp.core.architecture import ModelIdentity
from acp.fileio import atomic_write_text
from acp.prune import build_space, materialize, materialize_with_torch_pruning
from acp.testing import random_architecture

SIZES = {"densenet121": 224}
SECTION = "## Cost model and materialization (bench_cost_model.py)"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def timed(function, repeats: int) -> float:
    """Median seconds per call."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def bench_model(name: str, swarm_size: int, candidates: int, seed: int) -> dict:
    side = SIZES.get(name, 32)
    identity = ModelIdentity(name, None, (3, side, side), {})
    start = time.perf_counter()
    model, space = build_space(identity, {})
    build_seconds = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    swarm = space.snap(rng.uniform(space.min_widths(), space.full_widths(), size=(swarm_size, len(space))))
    space.cost(swarm)  # warm-up
    cost_per_candidate = timed(lambda: space.cost(swarm), 50) / swarm_size
    archs = [random_architecture(space, identity, rng) for _ in range(candidates)]
    example = torch.zeros(1, 3, side, side)
    counted = []
    for arch in archs:
        start = time.perf_counter()
        macs, params = tp.utils.count_ops_and_params(materialize(model, arch, space), example)
        counted.append(time.perf_counter() - start)
        assert (int(macs), params) == space.cost(arch.widths), name  # the figures compare equal work
    count_per_candidate = statistics.median(counted)
    fast = statistics.median(timed(lambda a=arch: materialize(model, a, space), 3) for arch in archs)
    reference = statistics.median(
        timed(lambda a=arch: materialize_with_torch_pruning(model, a), 1) for arch in archs
    )
    return {
        "model": name,
        "input": f"{side}x{side}",
        "groups": len(space.groups),
        "build_s": build_seconds,
        "cost_us": cost_per_candidate * 1e6,
        "count_ms": count_per_candidate * 1e3,
        "speedup": count_per_candidate / cost_per_candidate,
        "fast_ms": fast * 1e3,
        "tp_ms": reference * 1e3,
        "materialize_speedup": reference / fast,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| model | input | groups | space build (s) | cost per candidate, 64-swarm (µs) "
        "| materialize + count (ms) | cost-model speedup | materialize, index plan (ms) "
        "| materialize, Torch-Pruning (ms) | materialize speedup |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['groups']} | {r['build_s']:.1f} | {r['cost_us']:.2f} "
            f"| {r['count_ms']:.0f} | {r['speedup']:,.0f}x | {r['fast_ms']:.1f} | {r['tp_ms']:.0f} "
            f"| {r['materialize_speedup']:.1f}x |"
        )
    return "\n".join(lines)


def write_section(text: str) -> None:
    current = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    start = current.find(SECTION)
    if start < 0:
        updated = current.rstrip("\n") + "\n\n" + text
    else:
        end = current.find("\n## ", start + len(SECTION))
        updated = current[:start] + text + ("" if end < 0 else current[end:])
    atomic_write_text(RESULTS, updated.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20_cifar", "resnet56_cifar", "densenet121"])
    parser.add_argument("--swarm", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a busy box)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        rows.append(bench_model(name, args.swarm, args.candidates, args.seed))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    when = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    command = "python benchmarks/bench_cost_model.py " + " ".join(sys.argv[1:])
    text = "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command.strip()}`  ",
            f"Date: {when}  ",
            f"Machine: {torch.get_num_threads()} torch threads, {os.cpu_count()} cores, "
            f"{platform.processor() or platform.machine()}, load average at the end {load}  ",
            f"Versions: python {platform.python_version()}, torch {torch.__version__}, "
            f"torch-pruning {tp.__version__}, numpy {np.__version__}",
            "",
            "Cost model: `space.cost` on a (64, G) width matrix, time per candidate; the alternative is "
            "materialize + `tp.utils.count_ops_and_params` (their results are asserted equal). "
            "Materialize: acp's precomputed index plan vs a fresh Torch-Pruning DependencyGraph + "
            "`group.prune()` per group (bitwise-identical results, see tests/test_prune.py). Medians.",
            "",
            table(rows),
            "",
        ]
    )
    print(table(rows))
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
