"""Does pruning MACs buy CPU latency? Pruned vs unpruned models, eager / TorchScript / ONNX Runtime.

Models:

- the finetuned ResNet-20s saved by ``bench_quality.py`` (seed 0 of every method and budget), if present;
- ResNet-20 (32 px), torchvision ResNet-18 and MobileNetV2 (224 px) pruned to 50% MACs with uniform
  widths (repaired onto the budget, channels by L1), once with ``round_to=1`` and once with ``round_to=8``
  (widths multiples of 8, which suits vectorized CPU kernels). Random-init weights for the torchvision
  models: latency does not depend on the values, and nothing is downloaded.

Timing: eval mode, ``torch.inference_mode``, a fixed thread count (``--threads``), warm-up passes, then
the median of repeated forwards (``acp.latency.measure.measure_latency``; ONNX Runtime timed the same way with
``intra_op_num_threads``). Base and pruned model are measured in alternating rounds and the median of the
round medians is kept, so drift of a shared machine hits both alike.

Reported per model, batch size and runtime: speed-up = base ms / pruned ms and
efficiency = speed-up / (base MACs / pruned MACs); 1.0 means latency falls exactly as MACs do (goal >= 0.85).

    python benchmarks/bench_latency.py [--threads 1] [--rounds 2] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
QUALITY = ROOT / "bench_results" / "quality"
sys.path.insert(0, str(ROOT / "benchmarks"))
SECTION = "CPU latency of pruned models (bench_latency.py)"


@dataclass(frozen=True)
class Timing:
    """Per measurement: ``warmup`` untimed passes, then at least ``repeats`` timed ones and at least
    ``min_seconds`` of them (fast models get many repeats, ImageNet-sized batches of 64 a few)."""

    repeats: int
    warmup: int
    min_seconds: float


FULL_TIMING = Timing(repeats=3, warmup=2, min_seconds=0.5)  # TorchScript optimizes after 2 runs
QUICK_TIMING = Timing(repeats=2, warmup=1, min_seconds=0.1)


@dataclass
class Pair:
    family: str  # which base model
    variant: str  # how it was pruned
    base: nn.Module
    pruned: nn.Module
    input_size: tuple[int, int, int]
    base_macs: int
    pruned_macs: int


def uniform_pair(name: str, family: str, round_to: int, flops: float = 0.5) -> Pair:
    from acp.core.architecture import Architecture, ModelIdentity
    from acp.core.budget import Budget
    from acp.models import default_input_size
    from acp.propose.criteria import make_criterion
    from acp.prune import build_space, materialize

    torch.manual_seed(0)
    identity = ModelIdentity(name, 10 if name.endswith("_cifar") else 1000, default_input_size(name), {})
    base, space = build_space(identity, {"round_to": round_to})
    base.eval()
    widths = Budget(space, flops=flops).repair(np.ones(len(space.groups)))
    width_map = {group.id: int(w) for group, w in zip(space.groups, widths)}
    keep = make_criterion("l1", space, model=base).keep(width_map)
    arch = Architecture.from_widths(space, identity, width_map, keep, space_settings=dict(space.settings))
    pruned = materialize(base, arch, space).eval()
    return Pair(
        family,
        f"uniform {flops:.0%} MACs, round_to={round_to}",
        base,
        pruned,
        identity.input_size,
        space.base_macs,
        arch.macs,
    )


def quality_pairs() -> list[Pair]:
    """Seed-0 finetuned models of bench_quality.py, against the shared ResNet-20."""
    from acp.core.architecture import Architecture
    from acp.prune import build_space, load_pruned

    pairs = []
    for directory in sorted(QUALITY.glob("flops*/*/seed0")):
        if not (directory / "weights.pt").is_file():
            continue
        arch = Architecture.load(directory / "arch.json")
        base, space = build_space(arch.model, arch.space)
        pairs.append(
            Pair(
                "ResNet-20 (bench_quality)",
                f"{directory.parent.name} @ {directory.parent.parent.name[5:]}",
                base.eval(),
                load_pruned(directory).eval(),
                arch.model.input_size,
                space.base_macs,
                arch.macs,
            )
        )
    return pairs


def eager_runner(model: nn.Module, batch: int, size, threads: int, timing: Timing):
    from acp.latency.measure import measure_latency

    def run() -> float:
        latency = measure_latency(
            model,
            size,
            batch_size=batch,
            repeats=timing.repeats,
            warmup=timing.warmup,
            threads=threads,
            min_seconds=timing.min_seconds,
        )
        return latency.median_ms

    return run


def torchscript_runner(model: nn.Module, batch: int, size, threads: int, timing: Timing):
    example = torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        scripted = torch.jit.freeze(torch.jit.trace(model.eval(), example))
    return _timed(lambda: scripted(example), threads, timing)


def onnx_runner(model: nn.Module, batch: int, size, threads: int, timing: Timing, directory: Path):
    import onnxruntime

    from acp.prune import export_onnx

    path = export_onnx(model, size, directory / f"model_{id(model)}.onnx")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    example = torch.randn(batch, *size, generator=torch.Generator().manual_seed(0)).numpy()
    return _timed(lambda: session.run(None, {"input": example}), threads, timing, torch_threads=False)


def _timed(call, threads: int, timing: Timing, torch_threads: bool = True):
    def run() -> float:
        previous = torch.get_num_threads()
        if torch_threads:
            torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                for _ in range(timing.warmup):
                    call()
                timings = []
                started = time.perf_counter()
                while len(timings) < timing.repeats or time.perf_counter() - started < timing.min_seconds:
                    began = time.perf_counter()
                    call()
                    timings.append(time.perf_counter() - began)
        finally:
            torch.set_num_threads(previous)
        return statistics.median(timings) * 1000

    return run


def runners(runtime: str, model, batch, size, threads, timing: Timing, directory):
    if runtime == "eager":
        return eager_runner(model, batch, size, threads, timing)
    if runtime == "torchscript":
        return torchscript_runner(model, batch, size, threads, timing)
    return onnx_runner(model, batch, size, threads, timing, directory)


def compare(pair: Pair, runtime: str, batch: int, threads: int, rounds: int, timing: Timing, directory: Path):
    """Median over ``rounds`` alternating rounds of (base, pruned) median latencies, in ms."""
    base_run = runners(runtime, pair.base, batch, pair.input_size, threads, timing, directory)
    pruned_run = runners(runtime, pair.pruned, batch, pair.input_size, threads, timing, directory)
    base_ms, pruned_ms = [], []
    for _ in range(rounds):
        base_ms.append(base_run())
        pruned_ms.append(pruned_run())
    return statistics.median(base_ms), statistics.median(pruned_ms)


def available_runtimes() -> list[str]:
    names = ["eager", "torchscript"]
    try:
        import onnxruntime  # noqa: F401

        names.append("onnxruntime")
    except ImportError:
        pass
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="alternating base/pruned rounds")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--quick", action="store_true", help="smoke test: few repeats, small batches")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    batches = [1, 8] if args.quick else [int(b) for b in args.batches.split(",")]
    rounds = 1 if args.quick else args.rounds
    timing = QUICK_TIMING if args.quick else FULL_TIMING
    began = time.perf_counter()
    pairs = quality_pairs()[: 2 if args.quick else None]
    for name, family in (
        ("resnet20_cifar", "ResNet-20 (32 px)"),
        ("resnet18", "torchvision ResNet-18 (224 px)"),
        ("mobilenet_v2", "torchvision MobileNetV2 (224 px)"),
    ):
        for round_to in (1, 8):
            pairs.append(uniform_pair(name, family, round_to))
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for pair in pairs:
            for runtime in available_runtimes():
                for batch in batches:
                    if args.quick and batch > 1 and pair.base_macs > 1e9:
                        continue  # --quick: ImageNet-sized models at batch 1 only
                    base_ms, pruned_ms = compare(
                        pair, runtime, batch, args.threads, rounds, timing, Path(directory)
                    )
                    speedup = base_ms / pruned_ms
                    efficiency = speedup / (pair.base_macs / pair.pruned_macs)
                    rows.append((pair, runtime, batch, base_ms, pruned_ms, speedup, efficiency))
                    print(
                        f"{pair.family} | {pair.variant} | {runtime} | batch {batch}: base {base_ms:.2f} ms, "
                        f"pruned {pruned_ms:.2f} ms, speed-up {speedup:.2f}x, efficiency {efficiency:.2f}",
                        flush=True,
                    )
    lines = report(args, rows, time.perf_counter() - began)
    print("\n".join(lines))
    if not (args.no_write or args.quick):
        from bench_common import update_section

        update_section(SECTION, lines)


def report(args, rows, seconds: float) -> list[str]:
    import onnxruntime
    from bench_common import provenance_lines

    machine = (
        f"{args.threads} thread(s) per measurement, load average at the end {os.getloadavg()[0]:.1f}; "
        f"{seconds / 60:.0f} min"
    )
    lines = [
        *provenance_lines("bench_latency.py", machine, {"onnxruntime": onnxruntime.__version__}),
        "",
        "Speed-up = base ms / pruned ms (median of the round medians); efficiency = speed-up / (base MACs / "
        "pruned MACs), goal >= 0.85.",
        "",
        "| base model | pruned | MACs kept | runtime | batch | base ms | pruned ms | speed-up | efficiency |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for pair, runtime, batch, base_ms, pruned_ms, speedup, efficiency in rows:
        lines.append(
            f"| {pair.family} | {pair.variant} | {pair.pruned_macs / pair.base_macs:.1%} | {runtime} "
            f"| {batch} "
            f"| {base_ms:.2f} | {pruned_ms:.2f} | {speedup:.2f}x | {efficiency:.2f} |"
        )
    return lines


if __name__ == "__main__":
    main()
