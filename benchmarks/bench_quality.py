"""Search quality against the alternatives, at equal finetuning: shared ResNet-20 / CIFAR-10.

At each MACs budget (default 50% and 30% of the base), seven ways to choose a pruned ResNet-20 are run,
then every chosen architecture is finetuned with the *same* recipe (epochs, lr, images, seeds) and scored
on the 5,000 held-out validation images (never used by any search; the searches score on a slice of the
training split):

1. ``uniform_l1``     every group keeps the same ratio (repaired onto the budget), channels by L1 norm;
2. ``tp_global``      Torch-Pruning's own recipe: ``MetaPruner(global_pruning=True)`` with
                      ``GroupMagnitudeImportance(p=2)``, ``max_pruning_ratio=0.9``, stepped (1/1000 per
                      step) until the MACs target is met;
3. ``hrank_uniform``  uniform widths, channels by HRank (average feature-map rank);
4. ``random_search``  EagleEye-style: as many random keep-ratio vectors (repaired onto the budget) as acp's
                      PSO evaluates, scored by the same adaptive-BN proxy, channels by L1 norm;
5. ``acp_paper``      ACP paper style: DBSCAN (cosine) cluster counts as widths, eps tuned so the MACs come
                      closest to the budget from below, channels inherited at random;
6. ``acp``            acp's default search: budget-aware clustering seed + PSO + ``l2`` criterion;
7. ``acp_distill``    the same architecture as 6, finetuned with distillation from the unpruned model;
8. ``acp_cluster``    acp's search with the ``cluster`` criterion (the default until this benchmark showed
                      ``l2`` choosing far better channels).

Every finetuned model is saved as ``OUT/flops<B>/<method>/seed<S>/{arch.json,weights.pt,result.json}``
(``acp.load_pruned(dir)`` loads it). The script resumes: finished architectures and finetunes are reused.
Writes the "Search quality" section of benchmarks/RESULTS.md (unless ``--no-write`` or ``--quick``).

    python benchmarks/bench_quality.py                       # the full run (hours on a CPU)
    python benchmarks/bench_quality.py --epochs 4 --train-images 15000 --seeds 2
    python benchmarks/bench_quality.py --quick               # smoke test, a few minutes
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from acp.settings import RunSettings

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CONFIG = ROOT / "search_spaces" / "resnet20_cifar10.toml"
sys.path.insert(0, str(ROOT / "benchmarks"))

SECTION = "Search quality against the alternatives (bench_quality.py)"
METHODS = (
    "uniform_l1",
    "tp_global",
    "hrank_uniform",
    "random_search",
    "acp_paper",
    "acp",
    "acp_distill",
    "acp_cluster",
)
LABELS = {
    "uniform_l1": "uniform widths + L1",
    "tp_global": "Torch-Pruning global magnitude (MetaPruner)",
    "hrank_uniform": "uniform widths + HRank",
    "random_search": "random search + L1 (EagleEye-style)",
    "acp_paper": "ACP paper: DBSCAN widths + random inheritance",
    "acp": "**acp default** (cluster seed + PSO + l2 criterion)",
    "acp_distill": "**acp default + --distill**",
    "acp_cluster": "acp search with the cluster criterion",
}
ARCH_FILE, RESULT_FILE, SEARCH_FILE = "arch.json", "result.json", "search.json"
RECAL_IMAGES, RECAL_BATCH = 2560, 128
TP_STEPS, TP_MAX_RATIO = 1000, 0.9


# --- choosing the architectures ------------------------------------------------------------------------


class Setup:
    """What every method shares: the base model, its channel space, the data, proxy data and statistics."""

    def __init__(self, settings: RunSettings, quick: bool):
        from acp.propose.features import collect_statistics
        from acp.proxy.evaluator import default_proxy_data, fit_to_training_split
        from acp.workflows.problem import load_problem

        self.settings = settings
        self.problem = load_problem(settings, require_weights=True)
        self.space = self.problem.space
        self.data, self.splits = self.problem.data()
        self.proxy_settings = fit_to_training_split(settings.proxy, len(self.splits.train))
        self.proxy_data = default_proxy_data(self.data, self.splits.train, self.proxy_settings, seed=0)
        began = time.perf_counter()
        self.statistics = collect_statistics(
            self.problem.model,
            self.space,
            self.proxy_data.calibration_images,
            labels=self.proxy_data.calibration_labels,
            hrank_images=32 if quick else 128,
        )
        self.statistics_seconds = time.perf_counter() - began

    def criterion(self, name: str):
        from acp.propose.criteria import make_criterion

        return make_criterion(name, self.space, model=self.problem.model, statistics=self.statistics, seed=0)

    def architecture(self, widths, keep, flops: float, source: str, criterion: str):
        from acp.core.architecture import Architecture

        widths = {group.id: int(w) for group, w in zip(self.space.groups, widths)}
        return Architecture.from_widths(
            self.space,
            self.problem.identity,
            widths,
            keep,
            budget={"flops": flops},
            space_settings=dict(self.space.settings),
            provenance={"source": source, "seed": 0, "criterion": criterion},
        )

    def evaluator(self, criterion_name: str):
        from acp.proxy.evaluator import ProxyEvaluator

        return ProxyEvaluator(
            self.problem.model,
            self.space,
            self.criterion(criterion_name),
            self.proxy_data,
            self.proxy_settings,
            identity=self.problem.identity,
        )


def uniform_widths(setup: Setup, flops: float) -> np.ndarray:
    from acp.core.budget import Budget

    return Budget(setup.space, flops=flops).repair(np.ones(len(setup.space.groups)))


def choose_uniform(setup: Setup, flops: float, criterion_name: str):
    criterion = setup.criterion(criterion_name)
    widths = uniform_widths(setup, flops)
    keep = criterion.keep({g.id: int(w) for g, w in zip(setup.space.groups, widths)})
    return setup.architecture(widths, keep, flops, "uniform", criterion_name), {"evaluations": 0}


def torch_pruning_global(model: torch.nn.Module, example: torch.Tensor, flops: float, tag: bool = True):
    """Torch-Pruning's recipe on a copy of ``model``: ``MetaPruner(global_pruning=True)`` with group-L2
    magnitude importance, stepped until the MACs are at most ``flops`` of the base. Returns the pruned
    copy, its MACs and the number of steps.

    With ``tag`` each BatchNorm's running_mean is first overwritten with its channel indices (magnitude
    importance reads weights, not running statistics), so the surviving values name the kept channels."""
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    if tag:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean = torch.arange(module.num_features, dtype=torch.float32)
    base_macs, _ = tp.utils.count_ops_and_params(model, example)
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=True,
        pruning_ratio=1.0,
        max_pruning_ratio=TP_MAX_RATIO,
        iterative_steps=TP_STEPS,
        ignored_layers=[model.fc],
    )
    steps, macs = 0, base_macs
    while macs > flops * base_macs and steps < TP_STEPS:
        pruner.step()
        steps += 1
        macs, _ = tp.utils.count_ops_and_params(model, example)
    return model, macs, steps


def torch_pruning_architecture(model, identity, space, flops: float):
    """What :func:`torch_pruning_global` keeps, as an acp Architecture (saved and finetuned like the other
    rows). Torch-Pruning may leave a group narrower than acp's ``min_keep`` allows, so the architecture is
    described in a space with ``min_keep=0.01``."""
    from acp.core.architecture import Architecture
    from acp.prune import space_for

    tagged, macs, steps = torch_pruning_global(model, torch.zeros(1, *identity.input_size), flops)
    modules = dict(tagged.named_modules())
    keep = {}
    for group in space.groups:
        if not group.norms:
            raise RuntimeError(f"group {group.id} has no BatchNorm to read the kept channels from")
        keep[group.id] = tuple(modules[group.norms[0]].running_mean.round().long().tolist())
    loose = space_for(model, identity, {**space.settings, "min_keep": 0.01})
    arch = Architecture.from_widths(
        loose,
        identity,
        {group_id: len(kept) for group_id, kept in keep.items()},
        keep,
        budget={"flops": flops},
        space_settings=dict(loose.settings),
        provenance={"source": "manual", "seed": 0, "criterion": "torch_pruning_group_l2_global"},
    )
    if arch.macs != macs:
        raise RuntimeError(f"Torch-Pruning's model has {macs} MACs, its architecture {arch.macs}")
    return arch, steps


def choose_torch_pruning_global(setup: Setup, flops: float):
    problem = setup.problem
    arch, steps = torch_pruning_architecture(problem.model, problem.identity, setup.space, flops)
    return arch, {"evaluations": 0, "pruning_steps": steps}


def choose_random_search(setup: Setup, flops: float, evaluations: int, workers: int, seed: int = 0):
    from acp.core.budget import Budget
    from acp.search.backends import make_backend
    from acp.search.encoding import KeepRatioEncoding

    evaluator = setup.evaluator("l1")
    encoding = KeepRatioEncoding(setup.space)
    rng = np.random.default_rng(seed)
    ratios = rng.uniform(encoding.lower, encoding.upper, size=(evaluations, encoding.dimensions))
    widths = Budget(setup.space, flops=flops).repair(ratios)
    backend = make_backend(evaluator, workers=workers)
    try:
        results = backend.map([row.tolist() for row in widths])
    finally:
        backend.close()
    scores = [result["score"] for result in results]
    best = int(np.argmax(scores))  # first maximum: deterministic
    arch = evaluator.architecture(
        widths[best].tolist(),
        budget={"flops": flops},
        provenance={
            "source": "search",
            "seed": seed,
            "evaluations": evaluations,
            "proxy_score": scores[best],
        },
    )
    return arch, {"evaluations": evaluations, "proxy_score": scores[best]}


def choose_acp_paper(setup: Setup, flops: float):
    """DBSCAN cluster counts as widths; eps from a log grid, the fitting one with the most MACs."""
    from acp.propose.clustering import propose_widths

    best = None
    for eps in np.geomspace(1e-3, 1.0, 160):
        proposal = propose_widths(setup.statistics, setup.space, mode="dbscan", eps=float(eps))
        fits = proposal.macs <= flops * setup.space.base_macs
        if fits and (best is None or proposal.macs > best.macs):
            best = proposal
    if best is None:
        raise RuntimeError(f"no DBSCAN eps in the grid meets {flops:.0%} MACs")
    criterion = setup.criterion("random")
    widths = best.width_map()
    arch = setup.architecture(list(widths.values()), criterion.keep(widths), flops, "cluster", "random")
    return arch, {"evaluations": 0, "eps": best.threshold}


def choose_acp(setup: Setup, flops: float, run_dir: Path, args, criterion: str | None = None):
    """acp's search as a user runs it (``criterion=None``: the default criterion)."""
    from acp.core.architecture import Architecture
    from acp.workflows.rundir import BEST_ARCH_FILE
    from acp.workflows.search import search

    settings = setup.settings
    if criterion is not None:
        settings = settings.replace(search=settings.search.replace(criterion=criterion))
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished search from an interrupted benchmark: start it again
    result = search(
        settings,
        out=run_dir,
        flops=flops,
        particles=args.particles,
        iterations=args.iterations,
        seed=0,
        workers=args.workers,
    )
    arch = Architecture.load(run_dir / BEST_ARCH_FILE, setup.space)
    return arch, {"evaluations": result.evaluations, "proxy_score": result.best_score}


def choose_all(setup: Setup, flops: float, folder: Path, args) -> dict[str, Path]:
    """Architecture file per method under ``folder`` (computed once, reused on a rerun)."""
    from acp.core.architecture import Architecture
    from acp.fileio import atomic_write_json

    paths = {}
    for method in args.methods:
        directory = folder / method
        if method == "acp_distill":
            directory = folder / "acp"
        arch_path, record_path = directory / ARCH_FILE, directory / SEARCH_FILE
        paths[method] = arch_path
        if record_path.is_file():
            continue
        directory.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        if method == "uniform_l1":
            arch, record = choose_uniform(setup, flops, "l1")
        elif method == "hrank_uniform":
            arch, record = choose_uniform(setup, flops, "hrank")
        elif method == "tp_global":
            arch, record = choose_torch_pruning_global(setup, flops)
        elif method == "random_search":
            evaluations = acp_evaluations(folder, args)
            arch, record = choose_random_search(setup, flops, evaluations, args.workers)
        elif method == "acp_paper":
            arch, record = choose_acp_paper(setup, flops)
        elif method in ("acp", "acp_distill"):
            arch, record = choose_acp(setup, flops, directory / "search", args)
        elif method == "acp_cluster":
            arch, record = choose_acp(setup, flops, directory / "search", args, criterion="cluster")
        else:
            raise ValueError(method)
        seconds = time.perf_counter() - began
        if method in ("uniform_l1", "hrank_uniform", "acp_paper"):
            seconds += setup.statistics_seconds  # they need the feature statistics (HRank, clusters)
        arch.save(arch_path)
        record = {"method": method, "seconds": seconds, "macs": arch.macs, "params": arch.params, **record}
        atomic_write_json(record_path, record)
        print(f"[{flops:.0%}] {method}: {arch.macs_ratio:.1%} MACs, {seconds:.0f} s, {record}", flush=True)
        assert Architecture.load(arch_path).macs == arch.macs  # round-trips
    return paths


def acp_evaluations(folder: Path, args) -> int:
    record = folder / "acp" / SEARCH_FILE
    if record.is_file():
        return int(json.loads(record.read_text())["evaluations"])
    return args.particles * args.iterations


# --- finetuning ----------------------------------------------------------------------------------------


def job_recipe(job: dict) -> dict:
    return {key: job[key] for key in ("epochs", "train_images", "lr", "distill")}


def finished_result(job: dict) -> dict | None:
    """The saved result of ``job`` if it was finetuned with the same recipe, else None."""
    path = Path(job["out"]) / RESULT_FILE
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    return done if done.get("recipe") == job_recipe(job) else None


def finetune_job(job: dict) -> dict:
    """Materialize, recalibrate BN, finetune and save one (architecture, seed); runs in a worker process."""
    from acp.core.architecture import Architecture
    from acp.data import load_data, make_splits, take_stratified
    from acp.fileio import atomic_write_json, load_weights_into
    from acp.models import create_model
    from acp.proxy.evaluator import recalibrate_batchnorm
    from acp.prune import materialize, save_pruned
    from acp.settings import Schedule
    from acp.train.loop import evaluate, train

    out = Path(job["out"])
    done = finished_result(job)
    if done is not None:
        return done
    if out.exists():
        shutil.rmtree(out)  # finetuned with another recipe: redo
    recipe = job_recipe(job)
    torch.set_num_threads(job["threads"])
    data = load_data(job["data"])
    splits = make_splits(data, "shared")
    base = load_weights_into(create_model("resnet20_cifar"), job["weights"])
    arch = Architecture.load(job["arch"])
    pruned = materialize(base, arch)
    recal_images = data.tensors(take_stratified(splits.train, data.labels, RECAL_IMAGES, seed=2))[0]
    recalibrate_batchnorm(pruned, list(recal_images.split(RECAL_BATCH)))
    recalibrated, _ = evaluate(pruned, data, splits.val)
    subset = take_stratified(splits.train, data.labels, job["train_images"], seed=1)
    schedule = Schedule(epochs=job["epochs"], batch_size=128, lr=job["lr"], seed=job["seed"])
    checkpoints = out / "train"
    began = time.perf_counter()
    history = train(
        pruned,
        data,
        subset,
        splits.val,
        schedule,
        checkpoints,
        resume=(checkpoints / "checkpoint.pt").is_file(),
        teacher=base if job["distill"] else None,
        progress=False,
    )
    seconds = time.perf_counter() - began
    save_pruned(pruned, arch, out)
    result = {
        "method": job["method"],
        "flops": job["flops"],
        "seed": job["seed"],
        "recalibrated_accuracy": recalibrated,
        "finetuned_accuracy": history[-1].val_accuracy,
        "finetune_seconds": seconds,
        "macs": arch.macs,
        "params": arch.params,
        "recipe": recipe,
    }
    atomic_write_json(out / RESULT_FILE, result)
    shutil.rmtree(checkpoints, ignore_errors=True)
    print(
        f"[{job['flops']:.0%}] {job['method']} seed {job['seed']}: recal {recalibrated:.4f} -> "
        f"finetuned {result['finetuned_accuracy']:.4f} ({seconds:.0f} s)",
        flush=True,
    )
    return result


def run_finetunes(jobs: list[dict], workers: int) -> list[dict]:
    if workers == 1:
        return [finetune_job(job) for job in jobs]
    from joblib import Parallel, delayed

    return Parallel(n_jobs=workers, backend="loky")(delayed(finetune_job)(job) for job in jobs)


# --- report --------------------------------------------------------------------------------------------


def table(budgets, methods, searches, results, base_macs, base_params) -> list[str]:
    lines = []
    for flops in budgets:
        lines += [
            f"**{flops:.0%} of the base MACs**",
            "",
            "| method | MACs | params | val acc, pruned + BN recal | val acc, finetuned (mean, min-max) "
            "| finetune seeds | choice wall time | proxy evaluations |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method in methods:
            record = searches[flops][method]
            rows = [r for r in results if r["flops"] == flops and r["method"] == method]
            if not rows:
                continue
            accs = [100 * r["finetuned_accuracy"] for r in rows]
            spread = f" ({min(accs):.2f}-{max(accs):.2f})" if len(accs) > 1 else ""
            lines.append(
                f"| {LABELS[method]} | {record['macs'] / base_macs:.1%} "
                f"| {record['params'] / base_params:.1%} "
                f"| {100 * rows[0]['recalibrated_accuracy']:.2f}% | **{statistics.mean(accs):.2f}%**{spread} "
                f"| {len(rows)} | {record['seconds']:.0f} s | {record['evaluations']} |"
            )
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="0.5,0.3", help="MACs ratios, comma-separated")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--train-images", type=int, default=45000, help="finetuning images (class-balanced)")
    parser.add_argument("--lr", type=float, default=0.02, help="finetuning lr (cosine, SGD Nesterov)")
    parser.add_argument("--seeds", type=int, default=2, help="finetuning seeds per architecture")
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="processes (proxy evaluations, finetunes)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--out", default=str(ROOT / "bench_results" / "quality"))
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny search and finetune")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--report-only", action="store_true", help="report the finetunes already saved, run no new ones"
    )
    args = parser.parse_args()
    if not CONFIG.is_file() or not (SHARED / "models" / "resnet20_cifar10.pt").is_file():
        sys.exit("needs ../shared (ResNet-20 weights and CIFAR-10)")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        sys.exit(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    if "random_search" in args.methods and "acp" not in args.methods:
        args.methods.insert(0, "acp")  # random search gets as many evaluations as acp's PSO used
    args.methods.sort(key=lambda m: (m != "acp", m))  # acp first (random search needs its count)
    budgets = [float(b) for b in args.budgets.split(",")]
    from acp.settings import load_settings

    settings = load_settings(CONFIG)
    if args.quick:
        args.epochs, args.train_images, args.seeds = 1, 1000, 1
        args.particles, args.iterations = 4, 2
        settings = settings.replace(
            proxy=settings.proxy.replace(calibration_batches=4, validation_images=500)
        )
        args.out = str(Path(args.out).with_name(Path(args.out).name + "_quick"))
    out = Path(args.out)
    torch.set_num_threads(1)
    began = time.perf_counter()
    setup = Setup(settings, args.quick)
    searches, jobs = {}, []
    for flops in budgets:
        folder = out / f"flops{flops:g}"
        paths = choose_all(setup, flops, folder, args)
        searches[flops] = {}
        for method, arch_path in paths.items():
            searches[flops][method] = json.loads((arch_path.parent / SEARCH_FILE).read_text())
            for seed in range(args.seeds):
                jobs.append(
                    {
                        "method": method,
                        "flops": flops,
                        "seed": seed,
                        "arch": str(arch_path),
                        "out": str(folder / method / f"seed{seed}"),
                        "distill": method == "acp_distill",
                        "data": settings.data.spec,
                        "weights": settings.model.weights,
                        "epochs": args.epochs,
                        "train_images": args.train_images,
                        "lr": args.lr,
                        "threads": 1 if args.workers > 1 else 2,
                    }
                )
    jobs.sort(key=lambda job: job["seed"])  # every architecture's seed 0 first
    if args.report_only:
        results = [done for done in map(finished_result, jobs) if done is not None]
    else:
        results = run_finetunes(jobs, args.workers)
    methods = [m for m in METHODS if m in args.methods]
    from acp.train.loop import evaluate

    base_accuracy, _ = evaluate(setup.problem.model, setup.data, setup.splits.val)
    seconds = time.perf_counter() - began
    lines = report(args, budgets, methods, searches, results, setup, base_accuracy, seconds)
    print("\n".join(lines))
    if not (args.no_write or args.quick):
        from bench_common import update_section

        update_section(SECTION, lines)


def report(args, budgets, methods, searches, results, setup, base_accuracy, seconds) -> list[str]:
    import pyswarms
    import torch_pruning
    from bench_common import provenance_lines

    machine = f"{args.workers} worker processes"
    if not args.report_only:
        machine += f"; total {seconds / 60:.0f} min"
    versions = {
        "torch-pruning": torch_pruning.__version__,
        "pyswarms": pyswarms.__version__,
        "numpy": np.__version__,
    }
    lines = [
        *provenance_lines("bench_quality.py", machine, versions),
        "",
        f"Shared ResNet-20 (base validation accuracy {100 * base_accuracy:.2f}%, "
        f"{setup.space.base_macs:,} MACs, {setup.space.base_params:,} params). Searches: proxy = adaptive-BN "
        "score on a slice of the training split; acp's PSO and the random search: "
        f"{args.particles} particles x {args.iterations} iterations worth of evaluations. Finetuning, "
        f"identical for every row: {args.epochs} epochs on {args.train_images:,} class-balanced training "
        f"images, SGD Nesterov, cosine from lr {args.lr}, wd 5e-4, batch 128, crop+flip; "
        f"seeds 0..{args.seeds - 1} (mean, min-max); distillation T = 4, alpha = 0.9. "
        "Validation: the 5,000 held-out images. "
        '"Choice wall time" is the time to pick the architecture (statistics, pruning or search) on '
        f"{args.workers} processes. Models: `{Path(args.out).name}/flops<B>/<method>/seed<S>/`.",
        "",
    ]
    return lines + table(budgets, methods, searches, results, setup.space.base_macs, setup.space.base_params)


if __name__ == "__main__":
    main()
