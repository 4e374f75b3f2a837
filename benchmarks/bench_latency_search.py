"""Latency budgets, measured: do latency-budgeted models run as fast as asked, and at what accuracy?

Part ``constraint`` (every model; random-init weights: time does not depend on them): for ResNet-20 at
32 px and torchvision ResNet-18 / MobileNetV2 at 224 px, on one runtime and batch size (default torch
eager, batch 1, 1 thread), with the table acp builds ([latency] defaults):

- ``--candidates`` keep-ratio vectors (the uniform shape and seeded random shapes, exactly what a search
  proposes) are repaired onto ``latency = B`` for each budget B, and onto ``flops = B`` for comparison;
- every repaired model and the base are measured whole, interleaved over ``--rounds`` rounds (a ratio is
  the median over rounds of model / base in the same round, each visit's fastest forward); reported per
  row: measured latency / base (median and worst over the candidates; the goal is worst <= B + 0.03),
  predicted ratio, MACs ratio, and efficiency = speed-up / MACs reduction (the bench_latency.py figure;
  goal >= 0.9 for latency-budgeted models).

Every candidate a search scores has gone through the same repair, so the worst candidate bounds what a
search can return.

Part ``accuracy`` (the shared ResNet-20, CIFAR-10): bench_quality.py's acp architectures at 50% MACs
(``--quality-dir``; when that run is not there, the same searches are made here first) are measured; their
mean measured latency ratio R is the latency budget of acp searches with the *same* search settings
(``--iterations``, seeds 0..S-1, re-ranked); both sets are then finetuned with bench_quality's recipe
(``--epochs``, ``--train-images``, finetune seed i for search seed i) and reported with measured latency,
MACs and params ratios, accuracy on the selection slice and, once, on the validation split.

    python benchmarks/bench_latency_search.py --part constraint       # ~20 min on 2 idle cores
    python benchmarks/bench_latency_search.py --part accuracy         # ~40 min (its 50% MACs searches too)
    python benchmarks/bench_latency_search.py --quick --no-write      # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SECTION = "Latency budgets (bench_latency_search.py)"
CONFIG = ROOT / "search_spaces" / "resnet20_cifar10.toml"
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import provenance_lines, update_section  # noqa: E402
from bench_latency_model import build_problem  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["constraint", "accuracy", "both", "noise"], default="both")
    parser.add_argument("--passes", type=int, default=3, help="--part noise: separate measuring passes")
    parser.add_argument("--models", default="resnet20_cifar,resnet18,mobilenet_v2")
    parser.add_argument("--budgets", default="0.5,0.3")
    parser.add_argument("--runtime", default="torch")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quality-dir", type=Path, default=Path("/tmp/acp14/quality"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/acp15/latency_search"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/acp15/latency-cache"), help="table cache")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    return parser.parse_args(argv)


def latency_settings(args, cache: Path):
    from acp.settings import LatencySettings

    settings = LatencySettings(
        runtime=args.runtime, batch_size=args.batch, threads=args.threads, cache_dir=str(cache)
    )
    if args.quick:
        settings = settings.replace(grid_points=3, calibration_models=4, rounds=1, min_seconds=0.0)
    return settings


def measure(model, space, widths: np.ndarray, args, rounds: int | None = None) -> np.ndarray:
    """(K, rounds) ms of each width vector's whole model in each interleaved round (the fastest forward of
    a visit); row 0 must be the base model for :func:`measured_ratios`."""
    import torch

    from acp.latency.runtimes import Timing, prepare, time_rounds
    from acp.latency.table import pruned_at

    example = torch.randn((args.batch, *space.input_shape[1:]), generator=torch.Generator().manual_seed(0))
    calls = [
        prepare(args.runtime, pruned_at(model, space, row).eval(), example, args.threads) for row in widths
    ]
    timing = Timing(rounds=rounds or args.rounds, min_seconds=0.0 if args.quick else 0.02)
    return time_rounds(calls, timing, threads=args.threads, seed=7)


def measured_ratios(rounds: np.ndarray) -> tuple[float, np.ndarray]:
    """(the base's median ms, every row's ratio to the base paired by round) from :func:`measure`."""
    from acp.latency.runtimes import paired_ratios

    return float(np.median(rounds[0])), paired_ratios(rounds)


def problem_and_table(name: str, args):
    """(model, space, latency table) of ``name`` with the [latency] defaults at ``args``' runtime."""
    from acp.latency import load_or_build

    model, space, identity = build_problem(name, 1, args.quick)
    meter = None
    if args.quick:  # a measured tiny table is noise; the smoke test needs a feasible, repeatable budget
        from acp.testing import SyntheticMeter

        meter = SyntheticMeter(space, overhead=0.01, layer_overhead=1e-4)
    cache = args.cache / "quick" if args.quick else args.cache
    latency, _, _ = load_or_build(model, space, identity, latency_settings(args, cache), meter=meter)
    return model, space, latency


def candidate_shapes(space, count: int) -> np.ndarray:
    """The keep-ratio vectors both parts repair: the uniform shape and seeded random shapes."""
    rng = np.random.default_rng(3)
    return np.vstack([np.ones(len(space.groups)), rng.uniform(0.1, 1.0, (count - 1, len(space.groups)))])


def constraint_rows(name: str, args) -> list[dict]:
    from acp.core.budget import Budget
    from acp.errors import UserError

    model, space, latency = problem_and_table(name, args)
    shapes = candidate_shapes(space, args.candidates)
    budgets = [float(b) for b in args.budgets.split(",")]
    blocks, labels, infeasible = [space.full_widths()[None, :]], [("base", None)], []
    for budget in budgets:
        for kind in ("latency", "flops"):
            try:
                repaired = Budget(space, **{kind: budget}, latency_model=latency).repair(shapes)
            except UserError as error:  # e.g. a fixed per-call overhead the smallest widths cannot shed
                row = {"model": name, "budget_kind": kind, "budget": budget, "infeasible": str(error)}
                infeasible.append(row)
                continue
            blocks.append(repaired)
            labels.append((kind, budget))
    widths = np.vstack(blocks)
    base_ms, measured = measured_ratios(measure(model, space, widths, args))
    predicted = latency(widths)
    macs = space.cost(widths)[0]
    base_macs = macs[0]
    rows = []
    for index, (kind, budget) in enumerate(labels[1:]):
        part = slice(1 + index * len(shapes), 1 + (index + 1) * len(shapes))
        ratio = measured[part]
        macs_ratio = macs[part] / base_macs
        row = {
            "model": name,
            "budget_kind": kind,
            "budget": budget,
            "candidates": len(shapes),
            "base_ms": float(base_ms),
            "measured_median": float(np.median(ratio)),
            "measured_worst": float(ratio.max()),
            "predicted_median": float(np.median(predicted[part] / predicted[0])),
            "macs_median": float(np.median(macs_ratio)),
            "efficiency_median": float(np.median((1 / ratio) / (1 / macs_ratio))),
            "efficiency_worst": float(np.min((1 / ratio) / (1 / macs_ratio))),
        }
        if kind == "latency":
            row.update(checked_rows(model, space, latency, budget, widths[part], args))
        rows.append(row)
    return rows + infeasible


def checked_rows(model, space, latency, budget: float, widths: np.ndarray, args) -> dict:
    """What a search's winner check (acp.latency.verify, the [latency] verify_* defaults) makes of each
    candidate, then every kept candidate measured again, together with the base, in one fresh pass (the
    check's own last measurement is what it stopped on, so it is not the figure reported)."""
    from acp.core.budget import Budget
    from acp.latency.verify import meet_measured_budget

    settings = latency_settings(args, args.cache)
    limit = Budget(space, latency=budget, latency_model=latency)
    checks = [
        meet_measured_budget(
            limit,
            lambda matrix: measure(model, space, matrix, args, rounds=settings.verify_rounds),
            row,
            tolerance=settings.verify_tolerance,
            steps=settings.verify_steps,
        )
        for row in widths
    ]
    kept = np.vstack([check.widths for check in checks])
    _, again = measured_ratios(measure(model, space, np.vstack([space.full_widths()[None, :], kept]), args))
    ratio = again[1:]
    macs_ratio = space.cost(kept)[0] / space.base_macs
    return {
        "checked_median": float(np.median(ratio)),
        "checked_worst": float(ratio.max()),
        "checked_macs_median": float(np.median(macs_ratio)),
        "checked_efficiency_median": float(np.median(macs_ratio / ratio)),
        "checked_shrunk": sum(check.shrunk for check in checks),
        "checked_measurements_max": max(len(check.measurements) for check in checks),
        "checked_unmet": sum(not check.met for check in checks),
    }


def noise_row(name: str, args) -> dict:
    """How much one candidate's measured latency ratio moves between separate passes (``--passes``), each
    pass the base and the candidates repaired onto the first budget measured as in the constraint part."""
    from acp.core.budget import Budget

    model, space, latency = problem_and_table(name, args)
    shapes = candidate_shapes(space, args.candidates)
    budget = float(args.budgets.split(",")[0])
    widths = np.vstack(
        [space.full_widths()[None, :], Budget(space, latency=budget, latency_model=latency).repair(shapes)]
    )
    ratios = []
    for _ in range(args.passes):
        ratios.append(measured_ratios(measure(model, space, widths, args))[1][1:])
    ratios = np.array(ratios)
    spread = ratios.max(axis=0) - ratios.min(axis=0)
    return {
        "model": name,
        "budget": budget,
        "passes": args.passes,
        "spread_median": float(np.median(spread)),
        "spread_max": float(spread.max()),
        "pass_medians": [float(np.median(row)) for row in ratios],
    }


def noise_lines(rows: list[dict], args) -> list[str]:
    lines = [
        f"The same {args.candidates} candidates repaired onto latency = B, measured with the base in "
        f"{rows[0]['passes']} separate passes (each as in \"Latency budgets\"); spread = a candidate's "
        "largest minus smallest measured ratio over the passes.",
        "",
        "| model | budget | spread of one candidate's ratio (median, max) | median ratio of each pass |",
        "|---|---|---|---|",
    ]
    for row in rows:
        medians = ", ".join(f"{value:.3f}" for value in row["pass_medians"])
        lines.append(
            f"| {row['model']} | latency = {row['budget']:g} | {row['spread_median']:.3f}, "
            f"{row['spread_max']:.3f} | {medians} |"
        )
    return lines


def constraint_lines(rows: list[dict], args) -> list[str]:
    lines = [
        f"Runtime {args.runtime}, batch {args.batch}, {args.threads} thread(s); {args.candidates} repaired "
        f"candidates per row (uniform shape + random shapes), measured whole in {args.rounds} interleaved "
        "rounds; a ratio is the median over rounds of the model's / the base's fastest forward in the same "
        "round (acp.latency.runtimes.paired_ratios), the estimator the winner check uses.",
        "",
        "| model | budget | base ms | measured latency / base (median, worst) | predicted | MACs / base "
        "| efficiency (median, worst) | after the winner check: measured again (median, worst) "
        "| its MACs / base, efficiency | shrunk, most measurements, unmet |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        what = (
            f"latency = {row['budget']:g}" if row["budget_kind"] == "latency" else f"MACs = {row['budget']:g}"
        )
        if "infeasible" in row:
            minimum = row["infeasible"].split("the minimum achievable is ")[-1]
            lines.append(f"| {row['model']} | {what} | | infeasible: the minimum is {minimum} | | | | | | |")
            continue
        checked = " | | |"
        if "checked_median" in row:
            checked = (
                f" {row['checked_median']:.3f}, {row['checked_worst']:.3f} | "
                f"{row['checked_macs_median']:.3f}, {row['checked_efficiency_median']:.2f} | "
                f"{row['checked_shrunk']}/{row['candidates']}, "
                f"{row['checked_measurements_max']}, {row['checked_unmet']} |"
            )
        lines.append(
            f"| {row['model']} | {what} | {row['base_ms']:.3g} | {row['measured_median']:.3f}, "
            f"{row['measured_worst']:.3f} | {row['predicted_median']:.3f} | {row['macs_median']:.3f} | "
            f"{row['efficiency_median']:.2f}, {row['efficiency_worst']:.2f} |{checked}"
        )
    lines += [
        "",
        "The winner check is what `acp search` now does with its winner under a latency budget "
        "([latency] verify_winner, on by default): measure it against the base model on the runtime and "
        "shrink it (same shape) until measured <= budget x (1 + verify_tolerance), at most verify_steps "
        "measurements. Here it is applied to every candidate; the kept ones are then measured again, all "
        "together with the base in one fresh pass -- those are the figures in the column.",
    ]
    return lines


def accuracy_part(args) -> list[str]:
    import bench_quality

    import acp
    from acp.core.architecture import Architecture
    from acp.prune import build_space
    from acp.settings import load_settings

    settings = load_settings(CONFIG)
    macs_dirs = [args.quality_dir / "flops0.5" / "acp" / f"search{seed}" for seed in range(args.seeds)]
    if not all((d / "arch.json").is_file() for d in macs_dirs):
        # bench_quality's run is not here: the same acp searches at 50% MACs (its choose_search), made here
        macs_dirs = [args.out / "macs0.5" / f"search{seed}" for seed in range(args.seeds)]
        for seed, directory in enumerate(macs_dirs):
            if not (directory / "arch.json").is_file():
                arch, _, _ = bench_quality.choose_search(settings, 0.5, directory, seed, args, "pso")
                arch.save(directory / "arch.json")
    macs_archs = [Architecture.load(d / "arch.json") for d in macs_dirs]
    model, space = build_space(macs_archs[0].model, macs_archs[0].space)
    model.eval()
    widths = np.array([list(a.widths.values()) for a in macs_archs])
    matrix = np.vstack([space.full_widths()[None, :], widths])
    target = float(np.mean(measured_ratios(measure(model, space, matrix, args))[1][1:]))
    latency_archs = []
    settings = settings.replace(latency=latency_settings(args, args.cache))
    for seed in range(args.seeds):
        out = args.out / f"latency{target:.3f}" / f"search{seed}"
        if not (out / "best_arch.json").is_file() or not (out / "done").is_file():
            result = acp.search(
                settings,
                out=out if not out.exists() else None,
                resume=out if out.exists() else None,
                latency=round(target, 4),
                seed=seed,
                iterations=args.iterations,
                workers=args.workers,
            )
            (out / "done").write_text(str(result.stopped))
        latency_archs.append(out / "best_arch.json")
    both = np.array([list(Architecture.load(p).widths.values()) for p in latency_archs])
    matrix = np.vstack([space.full_widths()[None, :], widths, both])
    ratios = measured_ratios(measure(model, space, matrix, args))[1][1:]
    jobs = []
    for label, paths in (("macs", [d / "arch.json" for d in macs_dirs]), ("latency", latency_archs)):
        for seed, path in enumerate(paths):
            jobs.append(
                {
                    "method": label,
                    "flops": 0.5,
                    "seed": seed,
                    "arch": str(path),
                    "out": str(args.out / f"finetune-{label}" / f"seed{seed}"),
                    "distill": False,
                    "data": settings.data.spec,
                    "split": settings.data.split,
                    "split_seed": settings.data.seed,
                    "selection": bench_quality.selection_arguments(settings),
                    "model": settings.model.name,
                    "weights": settings.model.weights,
                    "epochs": args.epochs,
                    "train_images": args.train_images,
                    "lr": 0.02,  # bench_quality's recipe (its defaults)
                    "threads": 1 if args.workers > 1 else 2,
                    "eval_images": 0,
                    "recal_images": 2560,
                }
            )
    results = bench_quality.run_finetunes(jobs, args.workers)
    lines = [
        f"Budget of the latency searches: latency = {target:.3f} (the mean measured latency ratio of "
        f"acp's architectures at 50% MACs ({macs_dirs[0].parents[1]}), measured before the latency "
        f"searches, {args.runtime} batch {args.batch}); the table below measures both sets again, together; "
        f"{args.iterations} iterations x 12 particles, re-ranked, seeds 0..{args.seeds - 1}; finetune "
        f"{args.epochs} epoch(s) on {args.train_images} images, finetune seed i for search seed i.",
        "",
        "| searched under | measured latency / base | MACs / base | params / base | selection top-1 "
        "| val top-1 |",
        "|---|---|---|---|---|---|",
    ]
    count = args.seeds
    for index, label in enumerate(("50% MACs", f"latency = {target:.3f}")):
        part = slice(index * count, (index + 1) * count)
        archs = [Architecture.load(job["arch"]) for job in jobs[part]]
        chosen = results[part]
        lines.append(
            f"| {label} | {_spread(ratios[part], 3)} | {_spread([a.macs_ratio for a in archs], 3)} | "
            f"{_spread([a.params_ratio for a in archs], 3)} | "
            f"{_spread([100 * r['selection_accuracy'] for r in chosen], 2)}% | "
            f"{_spread([100 * r['finetuned_accuracy'] for r in chosen], 2)}% |"
        )
    return lines


def _spread(values, digits: int) -> str:
    values = [float(v) for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.models, args.candidates, args.rounds = "resnet8_cifar", 3, 2
        args.budgets = "0.7,0.5"
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []
    if args.part in ("constraint", "both"):
        rows = []
        for name in args.models.split(","):
            path = (
                args.out
                / f"constraint-{name}-{args.runtime}-b{args.batch}{'-quick' if args.quick else ''}.json"
            )
            if path.is_file():
                found = json.loads(path.read_text())
            else:
                found = constraint_rows(name, args)
                path.write_text(json.dumps(found))
            rows += found
        lines += [
            "### Do latency-budgeted candidates run as fast as asked?",
            "",
            *constraint_lines(rows, args),
            "",
        ]
    if args.part == "noise":
        rows = [noise_row(name, args) for name in args.models.split(",")]
        lines += ["### Pass-to-pass noise of a measured latency ratio", "", *noise_lines(rows, args), ""]
        for line in lines:
            print(line)
        if not args.no_write and not args.quick:
            section = "Latency ratio noise (bench_latency_search.py --part noise)"
            update_section(section, [*provenance_lines("bench_latency_search.py"), "", *lines])
        return 0
    if args.part in ("accuracy", "both") and not args.quick:
        lines += ["### Accuracy at equal measured latency (ResNet-20, CIFAR-10)", "", *accuracy_part(args)]
    for line in lines:
        print(line)
    if not args.no_write and not args.quick:
        update_section(section_for(args), [*provenance_lines("bench_latency_search.py"), "", *lines])
    return 0


def section_for(args) -> str:
    """The RESULTS section: the default runtime and batch (torch, 1) have one; another runtime or batch
    gets its own, so its rows do not replace the default's (use another ``--out`` for it too)."""
    if (args.runtime, args.batch) == ("torch", 1):
        return SECTION
    return f"Latency budgets, {args.runtime} batch {args.batch} (bench_latency_search.py)"


if __name__ == "__main__":
    sys.exit(main())
