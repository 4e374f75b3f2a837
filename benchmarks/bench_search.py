"""PSO vs random search vs the clustering proposal alone, on the shared ResNet-20 at 50% MACs.

All three use the same proxy evaluator (adaptive-BN proxy score on a slice of the training split, the
default criterion's channel rankings from the PSO run's proposal.json) and the same budget repair:

- PSO: ``acp.search(search_spaces/resnet20_cifar10.toml, flops=0.5, particles=P, iterations=T)``;
- random search (EagleEye-style): P*T keep-ratio vectors drawn uniformly in the bounds, repaired onto the
  budget, evaluated; best-so-far reported per block of P evaluations;
- the clustering proposal alone: particle 0 of the PSO's first iteration (the proposal, repaired).

Also measures the parallel-evaluation overhead: a synthetic evaluator that sleeps S seconds, serial vs
2 loky workers. Appends/updates the "Search" section of RESULTS.md.

    /work/venv/bin/python benchmarks/bench_search.py [--particles 10] [--iterations 8] [--no-write]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "search_spaces" / "resnet20_cifar10.toml"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "Search (bench_search.py)"


from bench_common import update_section  # noqa: E402  (benchmarks/ is the script's directory)


def random_search(run_dir: Path, evaluations: int, particles: int, seed: int):
    from acp.core.budget import Budget
    from acp.proxy.evaluator import ProxyEvaluator, default_proxy_data, fit_to_training_split
    from acp.search.encoding import KeepRatioEncoding
    from acp.settings import load_settings
    from acp.workflows.problem import load_problem
    from acp.workflows.rundir import CONFIG_FILE, read_proposal

    settings = load_settings(run_dir / CONFIG_FILE)
    problem = load_problem(settings, require_weights=True)
    data, splits = problem.data()
    proxy_settings = fit_to_training_split(settings.proxy, len(splits.train))
    proxy_data = default_proxy_data(data, splits.train, proxy_settings, seed=settings.data.seed)
    _, criterion = read_proposal(run_dir, problem.space)
    evaluator = ProxyEvaluator(
        problem.model, problem.space, criterion, proxy_data, proxy_settings, identity=problem.identity
    )
    budget = Budget(problem.space, flops=0.5)
    encoding = KeepRatioEncoding(problem.space)
    rng = np.random.default_rng(seed)
    ratios = rng.uniform(encoding.lower, encoding.upper, size=(evaluations, encoding.dimensions))
    widths = budget.repair(ratios)
    scores = [evaluator.evaluate(row.tolist()).score for row in widths]
    best = np.maximum.accumulate(scores)
    return [float(best[min(len(best), (i + 1) * particles) - 1]) for i in range(evaluations // particles)]


def parallel_overhead(sleeps=(0.0, 0.05, 0.2), particles: int = 8, iterations: int = 3):
    """Wall time per evaluation through the serial and the 2-worker loky backend (workers warmed up by a
    first, untimed iteration), for a synthetic evaluator that sleeps ``sleep`` seconds."""
    from acp.core.architecture import ModelIdentity
    from acp.prune import build_space
    from acp.search.backends import make_backend
    from acp.search.synthetic import SyntheticEvaluator

    space = build_space(ModelIdentity("resnet20_cifar", 10, (3, 32, 32), {}), {})[1]
    widths = [space.uniform_widths(0.5).tolist()] * particles
    rows = []
    for sleep in sleeps:
        timings = {}
        for workers in (1, 2):
            backend = make_backend(SyntheticEvaluator(space, sleep=sleep), workers=workers)
            try:
                backend.map(widths)
                began = time.perf_counter()
                for _ in range(iterations):
                    backend.map(widths)
                timings[workers] = (time.perf_counter() - began) / (particles * iterations)
            finally:
                backend.close()
        rows.append((sleep, timings[1], timings[2]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not CONFIG.is_file() or not (ROOT.parent / "shared" / "models" / "resnet20_cifar10.pt").is_file():
        sys.exit("needs ../shared (ResNet-20 weights and CIFAR-10)")
    from acp.workflows.search import search

    overhead = parallel_overhead()
    for sleep, serial, parallel in overhead:
        print(
            f"synthetic evaluation {sleep * 1000:.0f} ms: serial {serial * 1000:.1f} ms/eval, "
            f"2 loky workers {parallel * 1000:.1f} ms/eval"
        )
    with tempfile.TemporaryDirectory() as directory:
        run_dir = Path(directory) / "pso"
        began = time.perf_counter()
        result = search(
            CONFIG,
            out=run_dir,
            flops=0.5,
            particles=args.particles,
            iterations=args.iterations,
            seed=args.seed,
        )
        pso_seconds = time.perf_counter() - began
        evaluations = result.evaluations
        began = time.perf_counter()
        random_curve = random_search(run_dir, evaluations, args.particles, args.seed)
        random_seconds = time.perf_counter() - began
    pso_curve = result.best_per_iteration
    proposal, uniform = result.proposal, result.uniform
    print("\n".join(result.summary_lines()))
    print("iteration  PSO best  random best")
    for i, (p, r) in enumerate(zip(pso_curve, random_curve)):
        print(f"{i:>9}  {p:.4f}    {r:.4f}")
    if args.no_write:
        return
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    import pyswarms

    lines = [
        f"Command: `python benchmarks/bench_search.py --particles {args.particles} "
        f"--iterations {args.iterations} --seed {args.seed}`  ",
        f"Date: {date}  ",
        f"Machine: 2 cores ({platform.machine()}), torch threads per evaluation 1, load average at the end "
        f"{' '.join(f'{x:.1f}' for x in __import__('os').getloadavg())}  ",
        f"Versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"pyswarms {pyswarms.__version__}",
        "",
        "Shared ResNet-20 (CIFAR-10), budget 50% of the base MACs, proxy = adaptive-BN score on a slice of "
        "the training split (default ProxySettings), "
        f"{result.architecture.provenance['criterion']} criterion (the default). Every candidate repaired "
        "onto the budget. "
        f"PSO: {args.particles} particles x {args.iterations} iterations = {evaluations} evaluations "
        f"({pso_seconds:.0f} s incl. setup); random search: the same number of uniformly random keep-ratio "
        f"vectors, repaired ({random_seconds:.0f} s incl. setup).",
        "",
        "| | proxy score | proxy accuracy | MACs | params |",
        "|---|---|---|---|---|",
    ]
    for name, record in (
        ("PSO best", result.best),
        ("clustering proposal alone", proposal),
        ("uniform ratio", uniform),
    ):
        lines.append(
            f"| {name} | {record['score']:.4f} | {record['accuracy']:.2%} | "
            f"{record['macs'] / result.base_macs:.1%} | {record['params'] / result.base_params:.1%} |"
        )
    lines.append(f"| random search best ({evaluations} evals) | {random_curve[-1]:.4f} | | | |")
    lines += [
        "",
        "Best proxy score so far, per iteration (random search: per block of the same size):",
        "",
        "| iteration | PSO | random search | proposal alone |",
        "|---|---|---|---|",
    ]
    for i, (p, r) in enumerate(zip(pso_curve, random_curve)):
        lines.append(f"| {i} | {p:.4f} | {r:.4f} | {proposal['score']:.4f} |")
    lines += [
        "",
        "Parallel evaluation overhead (synthetic evaluator that sleeps, 8 particles x 3 iterations, "
        "wall time per evaluation, workers warm):",
        "",
        "| evaluation takes | serial | 2 loky workers |",
        "|---|---|---|",
    ]
    for sleep, serial, parallel in overhead:
        lines.append(f"| {sleep * 1000:.0f} ms | {serial * 1000:.1f} ms | {parallel * 1000:.1f} ms |")
    update_section(SECTION, lines)


if __name__ == "__main__":
    main()
