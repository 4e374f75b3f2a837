"""Speed of the proxy evaluator: seconds per evaluation and the overhead ratio over bare forward passes.

    python benchmarks/bench_proxy.py [--models resnet20_cifar resnet56_cifar] [--candidates 2] [--repeats 3]
                                     [--threads 1] [--no-tuning] [--no-write]

For each model (the shared CIFAR-10 weights) and a few random candidates at 50% MACs, it times
``ProxyEvaluator.evaluate`` (fresh cache) and, on the very network that evaluation built, the bare forward
passes over the same images: the calibration batches with BatchNorm in train mode and the proxy-validation
batches in eval mode, under ``torch.inference_mode``. Overhead ratio = evaluation time / bare time.
Measurements alternate (evaluation, bare, evaluation, bare, ...) and the median is reported, because the
machine is shared. A tuning table (threads, channels-last, evaluation batch size, inference_mode vs no_grad)
times bare forward passes of one ResNet-20 candidate. Results go to benchmarks/RESULTS.md (section
"Proxy evaluator speed (bench_proxy.py)").
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
CIFAR = SHARED / "data" / "cifar10" / "train"
WEIGHTS = {"resnet20_cifar": "resnet20_cifar10.pt", "resnet56_cifar": "resnet56_cifar10.pt"}


# --- shared by the fidelity benchmark -------------------------------------------------------------


def load_base(name: str):
    """(model with the shared weights, identity, space) for a CIFAR-10 model."""
    from acp.core.architecture import ModelIdentity
    from acp.fileio import load_weights_into
    from acp.models import create_model
    from acp.prune import space_for

    model = load_weights_into(create_model(name, 10), SHARED / "models" / WEIGHTS[name]).eval()
    identity = ModelIdentity.for_model(name, 10)
    return model, identity, space_for(model, identity, None)


def candidates_at_budget(
    space, count: int, macs_ratio: float, seed: int, *, low: float = 0.2, tolerance: float = 0.01
) -> list[np.ndarray]:
    """Random width vectors with MACs <= ``macs_ratio`` of the base and within ``tolerance`` of it.

    Each draws per-group keep ratios uniformly in [low, 1], then scales them all by the largest factor
    (bisection) whose snapped widths fit the budget; draws that land outside the tolerance are redrawn.
    """
    rng = np.random.default_rng(seed)
    full = space.full_widths().astype(np.float64)
    target = macs_ratio * space.base_macs
    found: list[np.ndarray] = []
    while len(found) < count:
        ratios = rng.uniform(low, 1.0, len(full))

        def widths_at(scale: float, ratios=ratios) -> np.ndarray:
            return space.snap(np.clip(ratios * scale, 0.0, 1.0) * full)

        lo, hi = 0.0, 1.0 / ratios.min()
        for _ in range(40):
            middle = (lo + hi) / 2
            if space.cost(widths_at(middle))[0] <= target:
                lo = middle
            else:
                hi = middle
        widths = widths_at(lo)
        macs = space.cost(widths)[0]
        if macs <= target and macs >= (macs_ratio - tolerance) * space.base_macs:
            found.append(widths)
    return found


def environment() -> str:
    import torch_pruning

    return (
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), load average "
        f"{os.getloadavg()[0]:.1f} at start (other jobs share the machine), "
        f"Python {platform.python_version()}, "
        f"torch {torch.__version__}, torch-pruning {torch_pruning.__version__}, numpy {np.__version__}"
    )


def update_results_section(title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of benchmarks/RESULTS.md, leaving the others alone."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    temp = RESULTS.with_suffix(".md.tmp")
    temp.write_text(text.rstrip("\n") + "\n")
    os.replace(temp, RESULTS)


# --- timing ---------------------------------------------------------------------------------------


def bare_forward(
    model: nn.Module, calibration, validation: torch.Tensor, batch_size: int, *, no_grad=False, with_cpu=False
):
    """The forward passes one evaluation makes, and nothing else; returns seconds (and CPU seconds)."""
    from acp.proxy.evaluator import batchnorm_layers

    context = torch.no_grad if no_grad else torch.inference_mode
    norms = batchnorm_layers(model)
    momenta = [norm.momentum for norm in norms]
    began, cpu = time.perf_counter(), time.process_time()
    with context():
        model.eval()
        for norm in norms:
            norm.train()
        for batch in calibration:
            model(batch)
        model.eval()
        for start in range(0, len(validation), batch_size):
            model(validation[start : start + batch_size])
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return (seconds, cpu) if with_cpu else seconds


def time_model(name: str, proxy_data, settings, candidates: int, repeats: int, seed: int) -> dict:
    from acp.propose.criteria import make_criterion
    from acp.proxy.evaluator import ProxyEvaluator
    from acp.prune import materialize

    model, identity, space = load_base(name)
    criterion = make_criterion("l1", space, model=model)
    evaluator = ProxyEvaluator(model, space, criterion, proxy_data, settings, identity=identity)
    # the images an evaluation runs on (NCHW: channels_last is off in these settings)
    calibration = proxy_data.calibration_batches(
        settings.calibration_batch_size, settings.calibration_batches
    )
    validation = proxy_data.validation_images
    rows = []
    for widths in candidates_at_budget(space, candidates, 0.5, seed):
        evaluator.evaluate(widths)  # warm-up (allocator, oneDNN primitive cache)
        pruned = evaluator.pruned_model(widths)
        evaluation_times, bare_times, materialize_times, evaluation_cpu, bare_cpu = [], [], [], [], []
        for _ in range(repeats):
            evaluator.clear_cache()
            cpu = time.process_time()
            result = evaluator.evaluate(widths)
            evaluation_cpu.append(time.process_time() - cpu)
            assert result.ok and not result.cached, result.status
            evaluation_times.append(result.seconds)
            wall, cpu = bare_forward(pruned, calibration, validation, settings.eval_batch_size, with_cpu=True)
            bare_times.append(wall)
            bare_cpu.append(cpu)
            began = time.perf_counter()
            materialize(model, evaluator.architecture(widths), space)
            materialize_times.append(time.perf_counter() - began)
        evaluation = statistics.median(evaluation_times)
        bare = statistics.median(bare_times)
        rows.append(
            {
                "macs_ratio": result.macs / space.base_macs,
                "evaluation": evaluation,
                "bare": bare,
                "ratio": evaluation / bare,
                "evaluation_cpu": statistics.median(evaluation_cpu),
                "bare_cpu": statistics.median(bare_cpu),
                "materialize": statistics.median(materialize_times),
                "accuracy": result.accuracy,
            }
        )
        print(
            f"{name}: MACs {rows[-1]['macs_ratio']:.3f}  eval {evaluation:.2f}s  bare {bare:.2f}s  "
            f"ratio {evaluation / bare:.3f}  "
            f"CPU {rows[-1]['evaluation_cpu']:.2f}s / {rows[-1]['bare_cpu']:.2f}s "
            f"= {rows[-1]['evaluation_cpu'] / rows[-1]['bare_cpu']:.3f}  "
            f"arch+materialize {rows[-1]['materialize'] * 1e3:.0f} ms",
            flush=True,
        )
    return {"name": name, "rows": rows, "groups": len(space.groups)}


TUNING = (  # (threads, channels_last, eval batch size, no_grad instead of inference_mode)
    (1, False, 500, False),
    (1, True, 500, False),
    (1, False, 250, False),
    (1, False, 1000, False),
    (1, False, 500, True),
    (2, False, 500, False),
    (2, True, 500, False),
)


def tuning_table(proxy_data, settings, seed: int) -> list[tuple[str, float, float]]:
    """Bare forward passes of one ResNet-20 candidate per configuration (5 calibration batches + 1,000
    validation images, best of 2): images per wall second and per CPU second."""
    from acp.propose.criteria import make_criterion
    from acp.proxy.evaluator import ProxyEvaluator

    model, identity, space = load_base("resnet20_cifar")
    criterion = make_criterion("l1", space, model=model)
    widths = candidates_at_budget(space, 1, 0.5, seed)[0]
    pruned = ProxyEvaluator(model, space, criterion, proxy_data, settings).pruned_model(widths)
    calibration = proxy_data.calibration_batches(settings.calibration_batch_size, 5)
    validation = proxy_data.validation_images[:1000]
    images = sum(len(batch) for batch in calibration) + len(validation)
    previous = torch.get_num_threads()
    rows = []
    for threads, channels_last, batch_size, no_grad in TUNING:
        torch.set_num_threads(threads)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        net = pruned.to(memory_format=layout)
        cal = [batch.contiguous(memory_format=layout) for batch in calibration]
        val = validation.contiguous(memory_format=layout)
        bare_forward(net, cal[:1], val[:batch_size], batch_size, no_grad=no_grad)  # warm-up
        runs = [bare_forward(net, cal, val, batch_size, no_grad=no_grad, with_cpu=True) for _ in range(2)]
        seconds, cpu = min(run[0] for run in runs), min(run[1] for run in runs)
        label = (
            f"threads={threads} channels_last={channels_last} eval_batch={batch_size} "
            f"{'no_grad' if no_grad else 'inference_mode'}"
        )
        rows.append((label, images / seconds, images / cpu))
        print(
            f"tuning {label}: {images / seconds:.0f} images/s, {images / cpu:.0f} per CPU-second", flush=True
        )
    torch.set_num_threads(previous)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20_cifar", "resnet56_cifar"])
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--validation-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-tuning", action="store_true")
    parser.add_argument("--only-tuning", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not CIFAR.is_dir():
        sys.exit(f"needs {CIFAR} and the shared weights")

    from acp.data import load_data, make_splits
    from acp.proxy.evaluator import default_proxy_data
    from acp.settings import ProxySettings

    torch.set_num_threads(args.threads)
    started = datetime.datetime.now(datetime.UTC)
    env = environment()
    data = load_data(str(CIFAR))
    splits = make_splits(data, "shared")
    settings = ProxySettings(threads=args.threads, validation_images=args.validation_images)
    proxy_data = default_proxy_data(data, splits.train, settings, seed=0)
    del data
    models = [] if args.only_tuning else args.models
    results = [
        time_model(name, proxy_data, settings, args.candidates, args.repeats, args.seed) for name in models
    ]
    tuning = [] if args.no_tuning else tuning_table(proxy_data, settings, args.seed)

    command = "python benchmarks/bench_proxy.py " + " ".join(sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}` — {started:%Y-%m-%d %H:%M} UTC; {env}.",
        "",
        f"Settings: defaults ({settings.calibration_batches} calibration batches x "
        f"{settings.calibration_batch_size} images, {args.validation_images} proxy-validation images, "
        f"eval batch {settings.eval_batch_size}, channels_last={settings.channels_last}), "
        f"torch threads = {args.threads}; {args.candidates} random candidates at 50% MACs per model "
        f"(l1 selection), median of {args.repeats} alternating runs.",
        "",
        "| model | groups | MACs ratio | s / evaluation (wall) | bare forwards (wall s) "
        "| overhead ratio (wall) "
        "| CPU s / evaluation | bare forwards (CPU s) | **overhead ratio (CPU)** | arch + materialize (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in results:
        for row in model["rows"]:
            lines.append(
                f"| {model['name']} | {model['groups']} | {row['macs_ratio']:.3f} "
                f"| {row['evaluation']:.2f} | "
                f"{row['bare']:.2f} | {row['ratio']:.3f} | {row['evaluation_cpu']:.2f} "
                f"| {row['bare_cpu']:.2f} "
                f"| **{row['evaluation_cpu'] / row['bare_cpu']:.3f}** | {row['materialize'] * 1e3:.0f} |"
            )
    if tuning:
        lines += ["", "Tuning (bare forward passes of one ResNet-20 candidate, best of 2):", ""]
        lines += ["| configuration | images / wall s | images / CPU s |", "|---|---|---|"]
        lines += [f"| {label} | {rate:.0f} | {cpu_rate:.0f} |" for label, rate, cpu_rate in tuning]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_results_section("Proxy evaluator speed (bench_proxy.py)", body)


if __name__ == "__main__":
    main()
