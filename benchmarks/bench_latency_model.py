"""Does the latency table predict? Measured vs predicted latency of random pruned models, per runtime.

For each model (ResNet-20 at 32 px, torchvision ResNet-18 and MobileNetV2 at 224 px; random-init weights:
latency does not depend on the values, nothing is downloaded), runtime (``torch`` eager, ``onnxruntime``)
and batch size (1, 64):

1. the latency table is built with acp's defaults (``acp.latency.load_or_build``, [latency] defaults,
   1 thread), timed (build seconds) into its own cache directory under ``--out``;
2. ``--candidates`` random width vectors of every size (``acp.latency.table.spread_widths``: the full
   widths scaled by evenly spaced factors in (0, 1] with a per-group jitter, seed ``--seed``; the table's
   own calibration models use seed 0) are materialized and
   measured whole, with the base model, in ``--rounds`` interleaved rounds
   (``acp.latency.runtimes.time_rounds``, threads pinned); the measured figure is the minimum over rounds;
3. reported: median and max absolute relative error of the prediction, Spearman between predicted and
   measured, and the *noise*: the median relative difference between the minimum of the odd rounds and
   of the even rounds (how well the measurement itself repeats).

Targets (issue 15): median error <= 10% and Spearman >= 0.9 for every row; build <= 3 min for ResNet-20
and <= 15 min for ResNet-50-sized models.

Results are saved per row under ``--out`` as they finish (a rerun skips finished rows) and written to the
section "Latency predictor (bench_latency_model.py)" of benchmarks/RESULTS.md, with every row an earlier
run saved under the same ``--out`` (so rows measured in several runs make one table).

    python benchmarks/bench_latency_model.py                      # all rows (~1 h on 2 idle cores)
    python benchmarks/bench_latency_model.py --models resnet20_cifar --batches 1 --runtimes torch
    python benchmarks/bench_latency_model.py --quick --no-write   # smoke test (ResNet-8, 16 px, tiny table)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SECTION = "Latency predictor (bench_latency_model.py)"
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import provenance_lines, update_section  # noqa: E402

MODELS = {"resnet20_cifar": 10, "resnet18": 1000, "mobilenet_v2": 1000, "resnet50": 1000}  # name -> classes
DEFAULT_MODELS = "resnet20_cifar,resnet18,mobilenet_v2"  # resnet50: the build-time target, --models resnet50


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--runtimes", default="torch,onnxruntime")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--round-to", type=int, default=1, help="[space].round_to of every model")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/acp15/latency_model"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/acp15/latency-cache"), help="table cache")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    return parser.parse_args(argv)


def build_problem(name: str, round_to: int, quick: bool):
    import torch

    from acp.core.architecture import ModelIdentity
    from acp.models import default_input_size
    from acp.prune import build_space

    torch.manual_seed(0)
    size = (3, 16, 16) if quick else default_input_size(name)
    identity = ModelIdentity(name, MODELS.get(name, 10), size, {})
    model, space = build_space(identity, {"round_to": round_to})
    document = {"name": name, "num_classes": identity.num_classes, "input_size": list(size), "kwargs": {}}
    return model.eval(), space, document


def candidates(space, count: int, seed: int) -> np.ndarray:
    """Widths of every size (acp.latency.table.spread_widths with another seed than the table's own)."""
    from acp.latency.table import spread_widths

    return spread_widths(space, count, seed)


def run_row(name: str, runtime: str, batch: int, args) -> dict:
    from scipy.stats import spearmanr

    from acp.latency import load_or_build
    from acp.latency.runtimes import Timing, prepare, time_rounds
    from acp.latency.table import pruned_at
    from acp.settings import LatencySettings

    model, space, identity = build_problem(name, args.round_to, args.quick)
    settings = LatencySettings(
        runtime=runtime, batch_size=batch, threads=args.threads, cache_dir=str(args.cache)
    )
    if args.quick:
        settings = settings.replace(grid_points=3, calibration_models=4, rounds=1, min_seconds=0.0)
    started = time.perf_counter()
    latency, _, from_cache = load_or_build(model, space, identity, settings)
    build_seconds = latency.build_seconds if from_cache else time.perf_counter() - started
    widths = np.vstack([space.full_widths()[None, :], candidates(space, args.candidates, args.seed)])
    import torch

    example = torch.randn((batch, *space.input_shape[1:]), generator=torch.Generator().manual_seed(0))
    calls = [prepare(runtime, pruned_at(model, space, row).eval(), example, args.threads) for row in widths]
    timing = Timing(rounds=args.rounds, min_seconds=0.0 if args.quick else 0.2)
    rounds = time_rounds(calls, timing, threads=args.threads, seed=args.seed)
    measured = rounds.min(axis=1)
    predicted = latency(widths)
    errors = np.abs(predicted - measured) / measured
    odd, even = rounds[:, 0::2].min(axis=1), rounds[:, 1::2].min(axis=1) if args.rounds > 1 else rounds[:, 0]
    noise = float(np.median(np.abs(odd - even) / np.minimum(odd, even)))
    return {
        "model": name,
        "runtime": runtime,
        "batch": batch,
        "groups": len(space.groups),
        "tables": len(latency.tables),
        "points": int(sum(table.measured_ms.size for table in latency.tables)),
        "build_seconds": float(build_seconds),
        "base_measured_ms": float(measured[0]),
        "base_predicted_ms": float(predicted[0]),
        "candidates": int(len(widths) - 1),
        "median_error": float(np.median(errors[1:])),
        "max_error": float(errors[1:].max()),
        "spearman": float(spearmanr(predicted[1:], measured[1:])[0]),
        "noise": noise,
        "measured_range": [float(measured[1:].min() / measured[0]), float(measured[1:].max() / measured[0])],
        "coefficients": list(latency.coefficients),
        "widths": widths.tolist(),
        "measured_ms": measured.tolist(),
        "predicted_ms": predicted.tolist(),
    }


def ratio_errors(row: dict) -> np.ndarray:
    """Relative error of the predicted latency *ratio* (candidate / base, what ``latency = R`` budgets)
    against the measured ratio (candidate and base measured in the same rounds)."""
    measured, predicted = np.asarray(row["measured_ms"]), np.asarray(row["predicted_ms"])
    measured_ratio, predicted_ratio = measured[1:] / measured[0], predicted[1:] / predicted[0]
    return np.abs(predicted_ratio - measured_ratio) / measured_ratio


def table_lines(rows: list[dict]) -> list[str]:
    lines = [
        "| model | runtime | batch | build | base measured / predicted | median error (ms) | max error "
        "| median error (ratio to base) | Spearman | noise | measured range (of base) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = row["measured_range"]
        ratio = ratio_errors(row)
        lines.append(
            f"| {row['model']} | {row['runtime']} | {row['batch']} | {row['build_seconds']:.0f} s "
            f"({row['tables']} tables, {row['points']} points) | {row['base_measured_ms']:.3g} / "
            f"{row['base_predicted_ms']:.3g} ms | {row['median_error']:.1%} | {row['max_error']:.1%} | "
            f"{np.median(ratio):.1%} (max {ratio.max():.1%}) | {row['spearman']:.3f} | {row['noise']:.1%} | "
            f"{low:.2f}-{high:.2f} |"
        )
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    models = ["resnet8_cifar"] if args.quick else args.models.split(",")
    runtimes = args.runtimes.split(",")
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    if args.quick:
        args.candidates, args.rounds = min(args.candidates, 6), 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in models:
        for runtime in runtimes:
            for batch in batches:
                path = args.out / f"{name}-{runtime}-b{batch}{'-quick' if args.quick else ''}.json"
                if path.is_file():
                    row = json.loads(path.read_text())
                else:
                    row = run_row(name, runtime, batch, args)
                    path.write_text(json.dumps(row))
                rows.append(row)
                print(table_lines([row])[-1], flush=True)
    done = {(row["model"], row["runtime"], row["batch"]) for row in rows}
    for path in sorted(args.out.glob("*.json")):  # rows of earlier runs into --out stay
        row = json.loads(path.read_text())
        if not path.stem.endswith("-quick") and (row["model"], row["runtime"], row["batch"]) not in done:
            rows.append(row)
    order = {name: index for index, name in enumerate(MODELS)}
    rows.sort(key=lambda row: (order.get(row["model"], len(order)), row["runtime"] != "torch", row["batch"]))
    lines = table_lines(rows)
    for line in lines:
        print(line)
    if not args.no_write and not args.quick:
        update_section(
            SECTION if args.round_to == 1 else SECTION.replace(" (", f", round_to = {args.round_to} (", 1),
            [
                *provenance_lines("bench_latency_model.py"),
                "",
                f"{args.candidates} random candidates per row (seed {args.seed}), measured whole in "
                f"{args.rounds} interleaved rounds (minimum kept), {args.threads} thread(s); table built "
                "with the [latency] defaults. Noise = median relative difference between the odd and even "
                "rounds' minima.",
                "",
                *lines,
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
