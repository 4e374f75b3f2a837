"""Does more search buy accuracy? The re-ranked winner after 50, 200, 1,000 and 2,000 evaluations.

    python benchmarks/bench_convergence.py [--flops 0.3] [--stages 50,200,1000,2000] [--engines pso,random]
        [--seed 0] [--workers 2] [--finetune-seeds 0,1] [--out /tmp/acp14/convergence] [--quick] [--no-write]

For each engine (acp's PSO and random search, both through ``acp.search`` with the same proxy, budget
repair and finalist re-ranking), ONE search on the shared ResNet-20 is extended stage by stage: a run
stopped after ``ceil(N / particles)`` iterations is resumed with a larger ``iterations`` and continues
exactly where it stopped (acp's anytime search), so the winner after 200 evaluations comes from the same
trajectory as the winner after 2,000. After every stage the re-ranked winner (``best_arch.json``) is
kept, then finetuned with one short recipe for every stage (1 epoch on the fixed 8,000-image training
subset of bench_common.finetune_subset, SGD nesterov lr 0.05 cosine, wd 5e-4, batch 128, crop+flip, seeds
``--finetune-seeds``), and scored on

- the selection slice (bench_common.selection_indices: 5,000 training images no search scores on and no
  finetune trains on) -- the split this study's conclusions (e.g. the default evaluation count) rest on;
- the shared 5,000-image validation split, reported alongside, not used to choose anything.

Resumable: searches resume from their run directories, every stage's winner and every finetune is a JSON
file under ``--out``; rerunning the same command continues. Writes the section "Search convergence
(bench_convergence.py)" of benchmarks/RESULTS.md (unless ``--no-write`` or ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "search_spaces" / "resnet20_cifar10.toml"
SECTION = "Search convergence (bench_convergence.py)"
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import (  # noqa: E402
    finetune_subset,
    provenance_lines,
    selection_indices,
    short_finetune_schedule,
    update_section,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flops", type=float, default=0.3)
    parser.add_argument("--stages", default="50,200,1000,2000", help="evaluation counts, ascending")
    parser.add_argument("--engines", default="pso,random")
    parser.add_argument("--seed", type=int, default=0, help="search seed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--finetune-seeds", default="0,1")
    parser.add_argument("--finetune-images", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per finetune")
    parser.add_argument("--out", type=Path, default=Path("/tmp/acp14/convergence"))
    parser.add_argument("--quick", action="store_true", help="tiny stages and finetunes: a smoke test")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    args.stages = sorted({int(part) for part in args.stages.split(",")})
    args.engines = [part.strip() for part in args.engines.split(",") if part.strip()]
    args.finetune_seeds = [int(part) for part in args.finetune_seeds.split(",")]
    if args.quick:
        args.stages, args.finetune_seeds, args.finetune_images = [6, 12], [0], 200
        args.no_write = True
    return args


def quick_settings(settings):
    """--quick: a 3-particle search with a tiny proxy and re-ranking (all code paths, seconds each)."""
    return settings.replace(
        search=settings.search.replace(particles=3, random_particles=1),
        proxy=settings.proxy.replace(calibration_batches=2, validation_images=200),
        rerank=settings.rerank.replace(finalists=2, finetune_steps=2, validation_images=200),
    )


def run_stages(args, settings, engine: str) -> list[dict]:
    """Search with ``engine``, extended stage by stage; one record per stage (cached in stage.json)."""
    import acp

    run_dir = args.out / f"{engine}_seed{args.seed}" / "search"
    records = []
    for evaluations in args.stages:
        stage_dir = run_dir.parent / f"stage{evaluations}"
        cached = stage_dir / "stage.json"
        if cached.is_file():
            records.append(json.loads(cached.read_text()))
            continue
        iterations = math.ceil(evaluations / settings.search.particles)
        began = time.perf_counter()
        if (run_dir / "checkpoint.json").is_file():
            result = acp.search(resume=run_dir, iterations=iterations, workers=args.workers)
        else:
            if run_dir.exists():  # a fresh run that died before its first checkpoint
                shutil.rmtree(run_dir)
            config = settings.replace(search=settings.search.replace(engine=engine, seed=args.seed))
            result = acp.search(
                config, out=run_dir, flops=args.flops, iterations=iterations, workers=args.workers
            )
        stage_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(run_dir / "best_arch.json", stage_dir / "arch.json")
        record = {
            "engine": engine,
            "evaluations": result.evaluations,
            "iterations": result.iterations,
            "search_seconds": result.seconds,  # total over the stages so far (the study's own clock)
            "stage_seconds": time.perf_counter() - began,
            "workers": args.workers,
            "proxy_best": result.proxy_best["score"],
            "winner_proxy": result.best["score"],
            "winner_finalist": result.best.get("finalist_score"),
            "winner_rank": next(
                (i + 1 for i, row in enumerate(result.finalists) if row["widths"] == result.best["widths"]), 1
            ),
            "macs": result.best["macs"] / result.base_macs,
            "params": result.best["params"] / result.base_params,
            "widths": result.best["widths"],
        }
        cached.write_text(json.dumps(record, indent=1))
        records.append(record)
        print(
            f"{engine:>6} {record['evaluations']:>5} evaluations: proxy best {record['proxy_best']:.4f}, "
            f"winner finalist score {record['winner_finalist']}, {record['search_seconds']:.0f} s",
            flush=True,
        )
    return records


def finetune_stage(args, problem, data, splits, subset, selection, stage_dir: Path, seed: int) -> dict:
    """Finetune the stage's winner with the short recipe (cached in finetune_seed<S>.json)."""
    cached = stage_dir / f"finetune_seed{seed}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    from acp.core.architecture import Architecture
    from acp.proxy.evaluator import score_model
    from acp.prune import materialize
    from acp.threads import torch_threads
    from acp.train.loop import train

    model = materialize(problem.model, Architecture.load(stage_dir / "arch.json"), problem.space)
    schedule = short_finetune_schedule(seed=seed)
    if args.quick:
        schedule = schedule.replace(batch_size=50)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        history = train(model, data, subset, selection, schedule, out, progress=False, threads=args.threads)
    images, labels = data.tensors(splits.val)
    with torch_threads(args.threads):
        correct, loss = score_model(model, images, labels, 500)
    record = {
        "seed": seed,
        "selection_accuracy": history[-1].val_accuracy,
        "val_accuracy": correct / len(labels),
        "seconds": time.perf_counter() - began,
    }
    cached.write_text(json.dumps(record, indent=1))
    return record


def main(argv=None) -> int:
    args = parse_args(argv)
    from acp.settings import load_settings
    from acp.workflows.problem import load_problem

    settings = load_settings(CONFIG)
    if args.quick:
        settings = quick_settings(settings)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stages = {engine: run_stages(args, settings, engine) for engine in args.engines}

    problem = load_problem(settings.with_budget(flops=args.flops), require_weights=True)
    data, splits = problem.data()
    proxy = settings.proxy
    subset = finetune_subset(data.labels, splits.train, args.finetune_images)
    selection = selection_indices(
        data.labels,
        splits.train,
        proxy_seed=settings.data.seed,
        calibration_images=proxy.calibration_images,
        validation_images=proxy.validation_images,
        rerank_images=settings.rerank.validation_images,
        rerank_calibration_images=settings.rerank.proxy_settings(proxy).calibration_images,
        finetune_images=args.finetune_images,
        count=200 if args.quick else 5000,
    )
    rows = []
    for engine, records in stages.items():
        for record in records:
            stage_dir = args.out / f"{engine}_seed{args.seed}" / f"stage{args.stages[records.index(record)]}"
            finetunes = [
                finetune_stage(args, problem, data, splits, subset, selection, stage_dir, seed)
                for seed in args.finetune_seeds
            ]
            rows.append({**record, "finetunes": finetunes})
            print(
                f"{engine:>6} {record['evaluations']:>5}: selection "
                + ", ".join(f"{f['selection_accuracy']:.2%}" for f in finetunes)
                + "; val "
                + ", ".join(f"{f['val_accuracy']:.2%}" for f in finetunes),
                flush=True,
            )
    lines = report_lines(args, settings, rows, time.perf_counter() - started)
    print("\n".join(lines))
    if not args.no_write:
        update_section(SECTION, lines)
    return 0


def _mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2%}"
    return f"{statistics.mean(values):.2%} ± {statistics.stdev(values):.2%}"


def report_lines(args, settings, rows: list[dict], seconds: float) -> list[str]:
    particles = settings.search.particles
    lines = [
        *provenance_lines("bench_convergence.py", f"{args.workers} worker processes"),
        "",
        f"Shared ResNet-20 at {args.flops:.0%} of the base MACs, search seed {args.seed}, {particles} "
        "particles per iteration; stages are one search per engine extended with `acp search --resume "
        "--iterations N` (so every stage continues the previous one). Winner = the re-ranked best "
        f"({settings.rerank.finalists} finalists, {settings.rerank.finetune_steps} finetune steps, "
        f"{settings.rerank.validation_images} fresh images). Finetune: 1 epoch on {args.finetune_images} "
        f"training images, seeds {', '.join(map(str, args.finetune_seeds))} (mean ± std). Selection = "
        "5,000 training images no search or finetune touches (conclusions rest on it); validation = the "
        "shared 5,000-image split, reported only. Search CPU-hours = search wall time x worker processes.",
        "",
        "| engine | evaluations | search CPU-h | proxy best | winner: finalist score (proxy rank) "
        "| MACs | params | selection acc | val acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        finalist = row["winner_finalist"]
        lines.append(
            f"| {row['engine']} | {row['evaluations']} | {row['search_seconds'] * row['workers'] / 3600:.2f} "
            f"| {row['proxy_best']:.4f} | {'-' if finalist is None else f'{finalist:.4f}'} "
            f"(#{row['winner_rank']}) | {row['macs']:.1%} | {row['params']:.1%} "
            f"| {_mean_spread([f['selection_accuracy'] for f in row['finetunes']])} "
            f"| {_mean_spread([f['val_accuracy'] for f in row['finetunes']])} |"
        )
    lines += ["", f"Total wall time of this command: {seconds / 60:.0f} min (cached stages cost nothing)."]
    return lines


if __name__ == "__main__":
    sys.exit(main())
