"""Search quality against the alternatives, at equal finetuning: shared ResNet-20 / CIFAR-10.

At each MACs budget (default 70%, 50%, 30%, 20% of the base; 50% and 30% are run first) these rows
choose a pruned ResNet-20, and every chosen architecture is then finetuned with the *same* recipe:

- ``uniform_l2``   every group keeps the same ratio (repaired onto the budget), channels by l2 norm;
- ``tp_global``    Torch-Pruning's own recipe: ``MetaPruner(global_pruning=True)`` with
                   ``GroupMagnitudeImportance(p=2)``, ``max_pruning_ratio=0.9``, stepped (1/1000 per step)
                   until the MACs target is met (tests/test_benchmarks.py checks the row is faithful);
- ``proposal_l2``  the budget-aware clustering proposal alone, repaired onto the budget, channels by l2:
                   exactly particle 0 of acp's search (its start), so acp - proposal_l2 is what PSO and
                   re-ranking add;
- ``random_l2``    random search: acp's own search machinery (``acp.search``: same proxy evaluator, budget
                   repair, evaluation count, finalist re-ranking, history and checkpoints) with
                   ``engine="random"``: uniformly random keep-ratio vectors in the same bounds;
- ``acp``          acp's default search, ``acp.search(config, flops=B, seed=S)``, re-ranked; every setting
                   is acp/settings.py's default at run time except ``--iterations`` (printed), which
                   shrinks acp's and random search's evaluation count identically.

Behind ``--extra-rows``: ``acp_paper`` (DBSCAN widths + random channels), ``acp_distill`` (acp's
architectures finetuned with distillation) and ``acp_cluster`` (acp's search with the cluster criterion).
Also available with ``--methods``: ``uniform_l1``, ``hrank_uniform``.

Seeds: the searched rows run search seeds 0..S-1 and finetune the architecture of search seed i with
finetune seed i (S models per row); the deterministic rows finetune their one architecture with seeds
0..S-1. Finetune images come from the training split minus the selection slice
(``bench_common.selection_indices``: 5,000 training images no search scores on); accuracies are reported
on the selection slice (where defaults may be chosen) and, once, on the shared 5,000-image validation split.

Everything is saved under ``--out`` as it finishes and reused: ``flops<B>/<method>/search<S>/`` (a search's
run directory, ``arch.json``, ``choice.json``), ``flops<B>/<method>/arch.json`` for the deterministic rows,
and ``flops<B>/<method>/seed<S>/{arch.json,weights.pt,result.json}`` per finetuned model
(``acp.load_pruned(dir)`` loads it). Restarting the same command continues a killed run (an interrupted
search resumes from its checkpoint). ``--report-only`` prints the tables of what is saved.

    python benchmarks/bench_quality.py                       # full run: ~15,000 CPU-s, ~2.1 h on 2 idle cores
    python benchmarks/bench_quality.py --quick --no-write    # smoke test: 1.5 CPU-min (3 min at load 6)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
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
OLD_READING = "Search quality: reading (hand-written, from the run above)"
OLD_READING_NOTE = (
    "**This reading describes the run of 2026-11-22 (acp 277bdaa, the previous version of bench_quality.py: "
    "L1 baselines, 1 search seed, 2 finetune seeds), not the current table above; the current verdicts are "
    "the computed lines in the section above.**"
)
DEFAULT_METHODS = ("uniform_l2", "tp_global", "proposal_l2", "random_l2", "acp")
EXTRA_ROWS = ("acp_paper", "acp_distill", "acp_cluster")
OPTIONAL = ("uniform_l1", "hrank_uniform")
METHODS = (*DEFAULT_METHODS[:3], *OPTIONAL, "acp_paper", "random_l2", "acp", "acp_cluster", "acp_distill")
SEARCHED = ("random_l2", "acp", "acp_cluster")  # one architecture per search seed
ACP_ROWS = ("acp", "acp_distill", "acp_cluster")  # acp's own rows (not alternatives to it)
LABELS = {
    "uniform_l2": "uniform widths + l2",
    "uniform_l1": "uniform widths + L1",
    "hrank_uniform": "uniform widths + HRank",
    "tp_global": "Torch-Pruning global magnitude (MetaPruner)",
    "proposal_l2": "clustering proposal + l2 (no PSO; its cost is part of acp's search)",
    "random_l2": "random search + l2 (same evaluations, re-ranked)",
    "acp_paper": "ACP paper: DBSCAN widths + random inheritance",
    "acp": "**acp default** (proposal + PSO + re-ranking, l2)",
    "acp_distill": "acp default + --distill",
    "acp_cluster": "acp search with the cluster criterion",
}
ARCH_FILE, RESULT_FILE, CHOICE_FILE = "arch.json", "result.json", "choice.json"
RECAL_BATCH = 128
TP_STEPS, TP_MAX_RATIO = 1000, 0.9
GOALS = {0.5: 0.5, 0.3: 1.0}  # the goal: acp's margin in points at these budgets


# --- what every row shares -----------------------------------------------------------------------------


class Setup:
    """The base model, its channel space and the data; feature statistics only when a row needs them."""

    def __init__(self, settings: RunSettings, quick: bool):
        from acp.workflows.problem import load_problem

        self.settings = settings
        self.quick = quick
        self.problem = load_problem(settings, require_weights=True)
        self.space = self.problem.space
        self.data, self.splits = self.problem.data()
        self._statistics = None
        self.statistics_seconds = 0.0

    @property
    def statistics(self):
        if self._statistics is None:
            from acp.propose.features import collect_statistics
            from acp.proxy.evaluator import default_proxy_data, fit_to_training_split

            began = time.perf_counter()
            proxy = fit_to_training_split(self.settings.proxy, len(self.splits.train))
            data = default_proxy_data(self.data, self.splits.train, proxy, seed=self.settings.data.seed)
            self._statistics = collect_statistics(
                self.problem.model,
                self.space,
                data.calibration_images,
                labels=data.calibration_labels,
                hrank_images=32 if self.quick else 128,
            )
            self.statistics_seconds = time.perf_counter() - began
        return self._statistics

    def criterion(self, name: str):
        from acp.propose.criteria import make_criterion

        statistics = self.statistics if name in ("hrank", "cluster") else None
        return make_criterion(name, self.space, model=self.problem.model, statistics=statistics, seed=0)

    def architecture(self, widths, flops: float, source: str, criterion_name: str, criterion=None):
        from acp.core.architecture import Architecture

        widths = {group.id: int(w) for group, w in zip(self.space.groups, widths)}
        criterion = criterion or self.criterion(criterion_name)
        keep = {
            group_id: tuple(int(i) for i in criterion.select(group_id, w)) for group_id, w in widths.items()
        }
        return Architecture.from_widths(
            self.space,
            self.problem.identity,
            widths,
            keep,
            budget={"flops": flops},
            space_settings=dict(self.space.settings),
            provenance={"source": source, "seed": 0, "criterion": criterion_name},
        )


# --- the deterministic rows ----------------------------------------------------------------------------


def choose_uniform(setup: Setup, flops: float, criterion_name: str):
    from acp.core.budget import Budget
    from acp.search.encoding import KeepRatioEncoding

    widths = Budget(setup.space, flops=flops).repair(KeepRatioEncoding(setup.space).upper)
    return setup.architecture(widths, flops, "uniform", criterion_name), {"evaluations": 0}


def choose_proposal(setup: Setup, flops: float, folder: Path):
    """Particle 0 of acp's search (seed 0): the budget-aware clustering proposal, repaired onto the
    budget, with the search's own frozen l2 channel rankings (``proposal.json``)."""
    from acp.workflows.rundir import read_proposal

    run_dir = folder / "acp" / "search0" / "run"
    record = json.loads((run_dir.parent / CHOICE_FILE).read_text())
    _, criterion = read_proposal(run_dir, setup.space)
    arch = setup.architecture(record["proposal"]["widths"], flops, "cluster", criterion.name, criterion)
    return arch, {"evaluations": 1, "proxy_score": record["proposal"]["score"]}


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
    arch = setup.architecture(list(best.width_map().values()), flops, "cluster", "random")
    return arch, {"evaluations": 0, "eps": best.threshold}


# --- the searched rows ---------------------------------------------------------------------------------


def choose_search(settings: RunSettings, flops: float, directory: Path, seed: int, args, engine: str):
    """One search into ``directory/run`` (resumed from its checkpoint when a previous run was killed)."""
    import acp
    from acp.core.architecture import Architecture
    from acp.search.store import CHECKPOINT_FILE

    run_dir = directory / "run"
    began = time.perf_counter()
    resumed = (run_dir / CHECKPOINT_FILE).is_file()
    if resumed:
        result = acp.search(resume=run_dir, iterations=args.iterations, workers=args.workers)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # set-up files without a checkpoint: start again
        result = acp.search(
            settings,
            out=run_dir,
            flops=flops,
            iterations=args.iterations,
            engine=engine,  # "random": acp's own random-search engine, same loop, proxy and re-ranking
            seed=seed,
            workers=args.workers,
        )
    seconds = time.perf_counter() - began
    arch = Architecture.load(run_dir / "best_arch.json")
    finalists = result.finalists or []
    record = {
        "engine": engine,
        "search_seed": seed,
        "resumed": resumed,
        "processes": args.workers,
        "evaluations": result.evaluations,
        "iterations": result.iterations,
        "particles": settings.search.particles,
        "finalists": len(finalists),
        "proxy_score": result.best["score"],
        "finalist_score": result.best.get("finalist_score"),
        "proxy_best_score": result.proxy_best["score"] if result.proxy_best else None,
        "proxy_rank": arch.provenance.get("proxy_rank"),
        "study_seconds": result.seconds,
        "rerank_seconds": sum(row.get("finalist_seconds") or 0.0 for row in finalists),
        "proposal": result.proposal,
        "uniform": result.uniform,
    }
    return arch, record, seconds


def search_settings(settings: RunSettings, method: str) -> RunSettings:
    if method == "acp_cluster":
        return settings.replace(search=settings.search.replace(criterion="cluster"))
    return settings


# --- choosing every row's architectures ----------------------------------------------------------------


def choice_dirs(folder: Path, method: str, seeds: int) -> list[Path]:
    """Where ``method``'s architectures live: one per search seed for the searched rows, else one."""
    if method == "acp_distill":
        method = "acp"
    if method in SEARCHED:
        return [folder / method / f"search{seed}" for seed in range(seeds)]
    return [folder / method]


def choose_all(setup: Setup, flops: float, folder: Path, args) -> None:
    """Every row's architecture(s) under ``folder``, computed once (a rerun reuses them)."""
    from acp.core.architecture import Architecture
    from acp.fileio import atomic_write_json

    order = sorted(args.methods, key=lambda m: (m != "acp", m == "acp_distill"))  # acp's search0 first
    for method in order:
        if method == "acp_distill":
            continue  # acp's architectures
        for seed, directory in enumerate(choice_dirs(folder, method, args.seeds)):
            if (directory / CHOICE_FILE).is_file():
                continue
            directory.mkdir(parents=True, exist_ok=True)
            began = time.perf_counter()
            if method in SEARCHED:
                engine = "random" if method == "random_l2" else "pso"
                arch, record, seconds = choose_search(
                    search_settings(setup.settings, method), flops, directory, seed, args, engine
                )
            else:
                if method == "uniform_l2":
                    arch, record = choose_uniform(setup, flops, "l2")
                elif method == "uniform_l1":
                    arch, record = choose_uniform(setup, flops, "l1")
                elif method == "hrank_uniform":
                    arch, record = choose_uniform(setup, flops, "hrank")
                elif method == "tp_global":
                    arch, record = choose_torch_pruning_global(setup, flops)
                elif method == "proposal_l2":
                    arch, record = choose_proposal(setup, flops, folder)
                elif method == "acp_paper":
                    arch, record = choose_acp_paper(setup, flops)
                else:
                    raise ValueError(method)
                seconds = time.perf_counter() - began
                if method in ("hrank_uniform", "acp_paper"):
                    seconds += setup.statistics_seconds  # they need the feature statistics
                record["processes"] = 1
            arch.save(directory / ARCH_FILE)
            assert Architecture.load(directory / ARCH_FILE).macs == arch.macs  # round-trips
            record = {
                "method": method,
                "seconds": seconds,
                "macs": arch.macs,
                "params": arch.params,
                **record,
            }
            atomic_write_json(directory / CHOICE_FILE, record)
            print(
                f"[{flops:.0%}] {method} #{seed}: {arch.macs_ratio:.1%} MACs, "
                f"{arch.params_ratio:.1%} params, "
                f"{seconds:.0f} s, {record.get('evaluations')} evaluations",
                flush=True,
            )
    if "random_l2" in args.methods and "acp" in args.methods:
        check_random_rows(folder, args.seeds)


def check_random_rows(folder: Path, seeds: int) -> None:
    """Random search got acp's evaluation count and did not start from acp's proposal."""
    for seed in range(seeds):
        acp_record = json.loads((folder / "acp" / f"search{seed}" / CHOICE_FILE).read_text())
        random_record = json.loads((folder / "random_l2" / f"search{seed}" / CHOICE_FILE).read_text())
        if acp_record["evaluations"] != random_record["evaluations"]:
            raise RuntimeError(f"{folder}: acp and random search evaluated different counts (seed {seed})")
        if random_record["engine"] != "random" or random_record["proposal"] is not None:
            raise RuntimeError(f"{folder}: the random_l2 row did not run the random engine (seed {seed})")


# --- finetuning ----------------------------------------------------------------------------------------


def job_recipe(job: dict) -> dict:
    return {
        key: job[key] for key in ("epochs", "train_images", "lr", "distill", "eval_images", "recal_images")
    }


def finished_result(job: dict) -> dict | None:
    """The saved result of ``job`` if it was finetuned with the same recipe and architecture, else None."""
    path = Path(job["out"]) / RESULT_FILE
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    same = done.get("recipe") == job_recipe(job) and done.get("arch") == job["arch"]
    return done if same else None


def finetune_images(data, splits, settings_dict: dict, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(selection slice, ``count`` class-balanced finetune images from the rest of the training split)."""
    from bench_common import selection_indices

    from acp.data import take_stratified

    selection = selection_indices(data.labels, splits.train, **settings_dict)
    rest = np.setdiff1d(splits.train, selection)
    return selection, take_stratified(rest, data.labels, count, seed=1)


_DATA: dict = {}


def finetune_job(job: dict) -> dict:
    """Materialize, recalibrate BN, finetune, evaluate and save one (architecture, seed); in a worker."""
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
        shutil.rmtree(out)  # finetuned with another recipe or architecture: redo
    torch.set_num_threads(job["threads"])
    if job["data"] not in _DATA:  # a worker process finetunes many models: decode the images once
        _DATA[job["data"]] = load_data(job["data"])
    data = _DATA[job["data"]]
    splits = make_splits(data, job["split"], seed=job["split_seed"])
    selection, subset = finetune_images(data, splits, job["selection"], job["train_images"])
    val = splits.val
    if job["eval_images"]:
        val = take_stratified(val, data.labels, job["eval_images"], seed=0)
        selection = take_stratified(selection, data.labels, job["eval_images"], seed=0)
    base = load_weights_into(create_model(job["model"]), job["weights"])
    arch = Architecture.load(job["arch"])
    pruned = materialize(base, arch)
    recal_pool = np.setdiff1d(splits.train, selection)
    recal_images = data.tensors(take_stratified(recal_pool, data.labels, job["recal_images"], seed=2))[0]
    recalibrate_batchnorm(pruned, list(recal_images.split(RECAL_BATCH)))
    recalibrated, _ = evaluate(pruned, data, val)
    schedule = Schedule(epochs=job["epochs"], batch_size=128, lr=job["lr"], seed=job["seed"])
    checkpoints = out / "train"
    began = time.perf_counter()
    train(
        pruned,
        data,
        subset,
        val[:0],  # the validation split is scored once, below
        schedule,
        checkpoints,
        resume=(checkpoints / "checkpoint.pt").is_file(),
        teacher=base if job["distill"] else None,
        progress=False,
    )
    seconds = time.perf_counter() - began
    selection_accuracy, _ = evaluate(pruned, data, selection)
    val_accuracy, _ = evaluate(pruned, data, val)
    save_pruned(pruned, arch, out)
    result = {
        "method": job["method"],
        "flops": job["flops"],
        "seed": job["seed"],
        "arch": job["arch"],
        "recalibrated_accuracy": recalibrated,
        "finetuned_accuracy": val_accuracy,
        "selection_accuracy": selection_accuracy,
        "finetune_seconds": seconds,
        "threads": job["threads"],
        "macs": arch.macs,
        "params": arch.params,
        "recipe": job_recipe(job),
    }
    atomic_write_json(out / RESULT_FILE, result)
    shutil.rmtree(checkpoints, ignore_errors=True)
    print(
        f"[{job['flops']:.0%}] {job['method']} seed {job['seed']}: recal {recalibrated:.4f} -> finetuned "
        f"val {val_accuracy:.4f}, selection {selection_accuracy:.4f} ({seconds:.0f} s)",
        flush=True,
    )
    return result


def run_finetunes(jobs: list[dict], workers: int) -> list[dict]:
    todo = [job for job in jobs if finished_result(job) is None]
    if workers > 1 and len(todo) > 1:
        from joblib import Parallel, delayed

        Parallel(n_jobs=min(workers, len(todo)), backend="loky")(delayed(finetune_job)(job) for job in todo)
    else:
        for job in todo:
            finetune_job(job)
    return [done for done in map(finished_result, jobs) if done is not None]


def finetune_jobs(setup: Setup, flops: float, folder: Path, args) -> list[dict]:
    settings = setup.settings
    jobs = []
    for method in args.methods:
        directories = choice_dirs(folder, method, args.seeds)
        for seed in range(args.seeds):
            directory = directories[seed] if len(directories) > 1 else directories[0]
            jobs.append(
                {
                    "method": method,
                    "flops": flops,
                    "seed": seed,
                    "arch": str(directory / ARCH_FILE),
                    "out": str(folder / method / f"seed{seed}"),
                    "distill": method == "acp_distill",
                    "data": settings.data.spec,
                    "split": settings.data.split,
                    "split_seed": settings.data.seed,
                    "selection": selection_arguments(settings),
                    "model": settings.model.name,
                    "weights": settings.model.weights,
                    "epochs": args.epochs,
                    "train_images": args.train_images,
                    "lr": args.lr,
                    "eval_images": args.eval_images,
                    "recal_images": args.recal_images,
                    "threads": 1 if args.workers > 1 else 2,
                }
            )
    jobs.sort(key=lambda job: job["seed"])  # every row's seed 0 first
    return jobs


def selection_arguments(settings: RunSettings) -> dict:
    """selection_indices' arguments for the search's proxy slices (so the slice avoids all of them)."""
    return {
        "proxy_seed": settings.data.seed,
        "calibration_images": settings.proxy.calibration_images,
        "validation_images": settings.proxy.validation_images,
        "rerank_images": settings.rerank.validation_images,
        "rerank_calibration_images": settings.rerank.proxy_settings(settings.proxy).calibration_images,
    }


# --- report --------------------------------------------------------------------------------------------


def summary(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, sample std, min, max)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values), std, min(values), max(values)


def spread_text(values: list[float], digits: int = 2) -> str:
    mean, std, low, high = summary(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def ratio_text(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.1%}" if f"{low:.1%}" == f"{high:.1%}" else f"{low:.1%}-{high:.1%}"


def budget_rows(flops, methods, choices, results) -> dict[str, dict]:
    rows = {}
    for method in methods:
        done = sorted(
            (r for r in results if r["flops"] == flops and r["method"] == method), key=lambda r: r["seed"]
        )
        if done:
            rows[method] = {"results": done, "choices": choices[flops].get(method, [])}
    return rows


def table(flops, rows, base_macs, base_params) -> list[str]:
    lines = [
        f"**{flops:.0%} of the base MACs**",
        "",
        "| row | MACs | params | val acc, pruned + BN recal | **val acc, finetuned** (mean ± std, min-max) "
        "| selection acc, finetuned | models | choice cost (CPU-h) | proxy evaluations |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, row in rows.items():
        done, choices = row["results"], row["choices"]
        cost = sum(c["seconds"] * c.get("processes", 1) for c in choices) / 3600
        evaluations = sorted({c.get("evaluations", 0) for c in choices}) or [0]
        lines.append(
            f"| {LABELS[method]} | {ratio_text([r['macs'] / base_macs for r in done])} "
            f"| {ratio_text([r['params'] / base_params for r in done])} "
            f"| {spread_text([100 * r['recalibrated_accuracy'] for r in done])} "
            f"| **{spread_text([100 * r['finetuned_accuracy'] for r in done])}** "
            f"| {spread_text([100 * r['selection_accuracy'] for r in done])} "
            f"| {len(done)} | {cost:.3f} | {'/'.join(map(str, evaluations))}"
            f"{' x ' + str(len(choices)) if len(choices) > 1 else ''} |"
        )
    return lines + [""]


def verdict(flops: float, rows: dict[str, dict]) -> str:
    """acp's margin over the best other row (validation accuracy after finetuning) against the spread."""
    if "acp" not in rows:
        return f"Verdict at {flops:.0%}: no acp row."
    others = {m: r for m, r in rows.items() if m not in ACP_ROWS}
    if not others:
        return f"Verdict at {flops:.0%}: no other row to compare with."
    accuracy = {m: [100 * x["finetuned_accuracy"] for x in r["results"]] for m, r in rows.items()}
    best = max(others, key=lambda m: statistics.mean(accuracy[m]))
    acp_mean, acp_std, acp_low, _ = summary(accuracy["acp"])
    other_mean, other_std, _, other_high = summary(accuracy[best])
    margin, spread = acp_mean - other_mean, max(acp_std, other_std)
    wins = margin > spread
    text = (
        f"Verdict at {flops:.0%} MACs: acp {acp_mean:.2f}% vs the best other row, {LABELS[best]}, "
        f"{other_mean:.2f}% (means of {len(accuracy['acp'])} and {len(accuracy[best])} models): margin "
        f"**{margin:+.2f} points**, seed spread (larger std) {spread:.2f}: "
        + (
            "acp wins by more than the seed spread"
            if wins
            else "**acp does not beat the best alternative by more than the seed spread**"
        )
        + f"; acp's worst model {acp_low:.2f}% vs that row's best {other_high:.2f}%"
    )
    goal = GOALS.get(round(flops, 3))
    if goal is not None:
        met = wins and margin >= goal
        text += f"; goal >= +{goal:.1f} points: **{'met' if met else 'not met'}**"
    return text + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="0.5,0.3,0.7,0.2", help="MACs ratios, in the order they run")
    parser.add_argument("--epochs", type=int, default=1, help="finetuning epochs (every row)")
    parser.add_argument("--train-images", type=int, default=10000, help="finetuning images (class-balanced)")
    parser.add_argument("--lr", type=float, default=0.02, help="finetuning lr (cosine, SGD Nesterov)")
    parser.add_argument("--seeds", type=int, default=3, help="search seeds = finetune seeds per row")
    parser.add_argument(
        "--iterations",
        type=int,
        default=4,
        help="search iterations of acp and random search alike (0: acp's default); "
        "particles and everything else stay acp's defaults",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes (searches and finetunes)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"any of {', '.join(METHODS)}")
    parser.add_argument("--extra-rows", action="store_true", help=f"add {', '.join(EXTRA_ROWS)}")
    parser.add_argument("--eval-images", type=int, default=0, help=argparse.SUPPRESS)  # 0: all (quick: fewer)
    parser.add_argument(
        "--recal-images", type=int, default=2560, help="BN recalibration images before finetuning"
    )
    parser.add_argument("--out", default="/tmp/acp14/quality")
    parser.add_argument("--quick", action="store_true", help="smoke test: every row, tiny sizes")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/RESULTS.md")
    parser.add_argument("--report-only", action="store_true", help="tables of what is saved; run nothing")
    args = parser.parse_args()
    if not CONFIG.is_file() or not (SHARED / "models" / "resnet20_cifar10.pt").is_file():
        sys.exit("needs ../shared (ResNet-20 weights and CIFAR-10)")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.extra_rows:
        args.methods += [m for m in EXTRA_ROWS if m not in args.methods]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        sys.exit(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    needs_acp = {"random_l2", "proposal_l2", "acp_distill"} & set(args.methods)
    if needs_acp and "acp" not in args.methods:
        args.methods.append("acp")  # their evaluation count / start / architectures come from acp's search
    args.methods = [m for m in METHODS if m in args.methods]
    budgets = [float(b) for b in args.budgets.split(",")]
    args.iterations = args.iterations or None  # None: acp's default iteration count
    from acp.settings import load_settings

    settings = load_settings(CONFIG)
    if args.quick:
        budgets, args.seeds, args.iterations, args.workers = [0.7], 1, 2, 1
        args.epochs, args.train_images, args.eval_images, args.recal_images = 1, 128, 100, 128
        settings = settings.replace(
            search=settings.search.replace(particles=4),
            proxy=settings.proxy.replace(
                calibration_batches=2, calibration_batch_size=32, validation_images=100
            ),
            rerank=settings.rerank.replace(finalists=2, finetune_steps=2, validation_images=100),
        )
        args.out = str(Path(args.out).with_name(Path(args.out).name + "_quick"))
    out = Path(args.out)
    torch.set_num_threads(1)
    search = settings.search
    evaluations = search.particles * (args.iterations or search.iteration_limit)
    print(
        f"searches: {search.particles} particles x {args.iterations or search.iteration_limit} iterations = "
        f"{evaluations} evaluations (acp's default: {search.iteration_limit} iterations), re-ranking "
        f"{settings.rerank.finalists} finalists ({settings.rerank.finetune_steps} steps); {args.seeds} seeds",
        flush=True,
    )
    began = time.perf_counter()
    setup = Setup(settings, args.quick)
    choices, results = {}, []
    for flops in budgets:
        folder = out / f"flops{flops:g}"
        if not args.report_only:
            choose_all(setup, flops, folder, args)
        choices[flops] = {}
        for method in args.methods:
            paths = [d / CHOICE_FILE for d in choice_dirs(folder, method, args.seeds)]
            choices[flops][method] = [json.loads(p.read_text()) for p in paths if p.is_file()]
        jobs = [job for job in finetune_jobs(setup, flops, folder, args) if Path(job["arch"]).is_file()]
        if args.report_only:
            results += [done for done in map(finished_result, jobs) if done is not None]
        else:
            results += run_finetunes(jobs, args.workers)
    from bench_common import selection_indices

    from acp.data import take_stratified
    from acp.train.loop import evaluate

    selection = selection_indices(setup.data.labels, setup.splits.train, **selection_arguments(settings))
    val = setup.splits.val
    if args.eval_images:
        val = take_stratified(val, setup.data.labels, args.eval_images, seed=0)
        selection = take_stratified(selection, setup.data.labels, args.eval_images, seed=0)
    base = {
        "val": evaluate(setup.problem.model, setup.data, val)[0],
        "selection": evaluate(setup.problem.model, setup.data, selection)[0],
    }
    lines = report(args, settings, sorted(budgets, reverse=True), choices, results, setup, base)
    seconds = time.perf_counter() - began
    print("\n".join(lines))
    print(f"total {seconds / 60:.1f} min", flush=True)
    if not (args.no_write or args.quick):
        from bench_common import update_section

        update_section(SECTION, lines)
        mark_old_reading()


def mark_old_reading() -> None:
    """The hand-written reading below the table described the previous run: say so (once)."""
    from bench_common import RESULTS, update_section

    text = RESULTS.read_text(encoding="utf-8")
    header = f"\n## {OLD_READING}\n"
    start = text.find(header)
    if start == -1 or OLD_READING_NOTE in text:
        return
    end = text.find("\n## ", start + len(header))
    body = text[start + len(header) : None if end == -1 else end].strip("\n").splitlines()
    update_section(OLD_READING, [OLD_READING_NOTE, "", *body])


def report(args, settings, budgets, choices, results, setup, base) -> list[str]:
    import torch_pruning
    from bench_common import provenance_lines

    space = setup.space
    search, rerank = settings.search, settings.rerank
    iterations = args.iterations or search.iteration_limit
    machine = f"{args.workers} worker processes, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    search_cpu = sum(
        c["seconds"] * c.get("processes", 1)
        for rows in choices.values()
        for method, records in rows.items()
        if method != "acp_distill"  # acp's own searches, counted once
        for c in records
    )
    finetune_cpu = sum(r["finetune_seconds"] * r.get("threads", 1) for r in results)
    lines = [
        *provenance_lines("bench_quality.py", machine, {"torch-pruning": torch_pruning.__version__}),
        "",
        f"Shared ResNet-20: base accuracy **{100 * base['val']:.2f}%** on the validation split "
        "(5,000 held-out "
        f"images), {100 * base['selection']:.2f}% on the selection slice; {space.base_macs:,} MACs, "
        f"{space.base_params:,} params. Accuracy convention: budgets and ratios count MACs "
        '(multiply-accumulates, the pruning literature\'s "FLOPs"); params ratio beside every row.',
        "",
        f"Searches (acp and random search alike): acp's defaults from acp/settings.py except the evaluation "
        f"count, shrunk to fit the time: {search.particles} particles x {iterations} iterations = "
        f"{search.particles * iterations} proxy evaluations (acp's default: {search.iteration_limit} "
        f"iterations), then the {rerank.finalists} best distinct candidates re-ranked "
        f"({rerank.finetune_steps} finetune steps, {rerank.score} on {rerank.validation_images:,} fresh "
        f"training images), criterion {search.criterion}; search seeds 0..{args.seeds - 1}. Random search is "
        "acp's search loop with the swarm replaced by uniform random keep ratios (same proxy, repair, "
        "evaluations and re-ranking). The proposal row is particle 0 of acp's seed-0 search.",
        "",
        "Finetuning, identical for every row: BN recalibration on "
        f"{args.recal_images:,} training images, then "
        f"{args.epochs} epoch(s) on {args.train_images:,} class-balanced training images (the training "
        "split minus the selection slice), SGD Nesterov, cosine from lr "
        f"{args.lr}, wd 5e-4, batch 128, crop+flip. Seeds: the searched rows finetune search seed i's "
        f"architecture with finetune seed i; the others finetune their one architecture with seeds "
        f"0..{args.seeds - 1}. mean ± sample std (min-max) over those models. "
        "Selection slice: 5,000 class-balanced training images no search scores on and no finetune trains on "
        "(`bench_common.selection_indices`), the split where defaults may be chosen; the validation split is "
        "reported once, here, and chose nothing. The recipe (epochs, images, lr) was fixed before the run, "
        "from the time budget.",
        "",
        f"Cost: searches {search_cpu / 3600:.2f} CPU-hours (wall time x processes), finetuning "
        f"{finetune_cpu / 3600:.2f} CPU-hours ({len(results)} models). "
        f"Models: `{args.out}/flops<B>/<row>/seed<S>/`.",
        "",
    ]
    verdicts = []
    for flops in budgets:
        rows = budget_rows(flops, args.methods, choices, results)
        if not rows:
            continue
        lines += table(flops, rows, space.base_macs, space.base_params)
        verdicts.append(verdict(flops, rows))
        lines += [verdicts[-1], ""]
    return lines + ["Verdicts (computed from the tables above):", "", *(f"- {v}" for v in verdicts)]


if __name__ == "__main__":
    main()
