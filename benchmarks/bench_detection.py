"""Detection pruning quality at equal finetuning: SSDlite (MobileNetV3 at 0.25 width) on the generated shapes.

The base detector is ``acp demo --task detection``'s (acp/workflows/demo.py, DETECTION_*): torchvision's
``ssdlite320_mobilenet_v3_large`` at ``width_mult=0.25`` trained from scratch (nothing downloaded) on
``shapes:64`` with split ``random:0.2`` (512 generated images of 3 shape classes: 410 training images, 102
held-out validation images), with the demo's recipe but 20 epochs instead of 6 (``--base-epochs``: a base
closer to convergence, so that "within 1 point of the base" means something), trained once and cached
under ``--out/base``. At each MACs budget (default 50%, then 30%) these rows choose a pruned
detector, and every choice is finetuned with the *same* recipe (acp/train/detection_finetune.py, the demo's
finetune: SGD, lr 0.02 cosine, wd 4e-5, batch 8, flips, ``--epochs`` epochs on the training split):

- ``acp``          acp's search (``acp.search`` on the demo's detection config: clustering proposal seed, PSO
                   scored by the detection proxy's ``--score`` (default the detection loss, chosen by
                   bench_detection_fidelity.py on training images) on proxy-validation *training* images,
                   re-ranked finalists); search seed i's winner is finetuned with finetune seed i; its
                   folder is ``acp-<score>``;
- ``proposal``     the clustering proposal without the search: particle 0 of acp's seed-0 search (the
                   proposal repaired onto the budget) with that search's frozen channel rankings, as
                   bench_quality.py's ``proposal_l2`` row; acp - proposal is what PSO and re-ranking add;
- ``uniform_l2``   every group keeps the same ratio, repaired onto the budget, channels by l2 norm;
- ``uniform_l1`` / ``uniform_random`` / ``uniform_box_relevance``: the same widths, channels by l1 norm, at
                   random (seed 0), or by box relevance (acp/propose/criteria.py; box-masked statistics on
                   64 training images): the channel criteria compared at equal widths;
- ``tp_global``    Torch-Pruning's own recipe on the detector's network (backbone + head, the module acp
                   counts): ``MetaPruner(global_pruning=True)``, ``GroupMagnitudeImportance(p=2)``,
                   ``max_pruning_ratio=0.9``, stepped (1/1000 per step) until the MACs target is met, the
                   box/class predictors (the network's outputs) left alone, as bench_quality.py's row;

plus the unpruned base as trained (``base``, one model) and the unpruned base finetuned with the same recipe
(``base_ft``: extra training alone, the control for what finetuning adds). The deterministic rows finetune
their one architecture with seeds 0..S-1. Reported per row: mAP@0.5 and mAP@[.5:.95] on the base's 102
validation images (mean ± sample std (min-max) over seeds; no setting was chosen on them: the search scores
training images, and the finetune keeps its last epoch), the exact MACs and params ratios, and the measured
batch-1 latency ratio to the base (torch eager, 1 thread; base and pruned interleaved in rounds, median of
the per-round ratios, acp.latency.runtimes.time_rounds / paired_ratios) for the network alone (the MACs'
module, on a 320 x 320 tensor) and for the whole detector (resize, network, box decoding, NMS) on a
validation image. The headline is mAP@[.5:.95]: mAP@0.5 saturates near 100 on shapes for every row that
works. Goal: acp within 1 mAP@[.5:.95] point of the unpruned base at 50% MACs.

Everything is saved under ``--out`` as it finishes and reused: ``base/`` (weights, ``base.json``),
``flops<B>/acp/search<S>/`` (a search run directory and ``choice.json``), ``flops<B>/<row>/choice.json`` +
``arch.json``, and ``flops<B>/<row>/seed<S>/result.json`` (+ ``train/``: the finetuned detector,
``acp.load_pruned``). Rerunning the same command skips finished results and resumes a killed search or
finetune.

    python benchmarks/bench_detection.py                                       # full run: ~1.5 h on 1 core
    python benchmarks/bench_detection.py --quick --out /tmp/bench_det_quick --no-write    # ~3 min, 1 core
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import provenance_lines, update_section  # noqa: E402

from acp.proxy.detection_score import quiet_coco_eval, require_map_packages  # noqa: E402
from acp.workflows.demo import DETECTION_SCORE  # noqa: E402

SECTION = "Detection pruning quality (bench_detection.py)"
CRITERION_ROWS = ("uniform_l2", "uniform_l1", "uniform_random", "uniform_box_relevance")  # same widths
ROWS = ("base", "base_ft", *CRITERION_ROWS, "tp_global", "proposal", "acp")
PRUNED_ROWS = ("uniform_l2", "tp_global", "proposal", "acp")  # the alternatives acp must beat
STATISTICS_IMAGES = 64  # training images whose box masks box_relevance scores
LABELS = {
    "base": "unpruned base (as trained)",
    "base_ft": "unpruned base + the same finetune",
    "uniform_l2": "uniform widths + l2",
    "uniform_l1": "uniform widths + l1",
    "uniform_random": "uniform widths + random channels",
    "uniform_box_relevance": "uniform widths + box_relevance",
    "tp_global": "Torch-Pruning global magnitude (MetaPruner)",
    "proposal": "clustering proposal, no PSO (its cost is part of acp's search)",
    "acp": "**acp search** (proposal + PSO + re-ranking, {score} proxy)",
}
SCORE_LABELS = {"map50": "mAP@0.5", "map": "mAP@[.5:.95]", "loss": "detection-loss"}
HEADLINE = "map"  # mAP@[.5:.95]: mAP@0.5 saturates near 100 on shapes for every row that works
ARCH_FILE, RESULT_FILE, CHOICE_FILE, BASE_FILE = "arch.json", "result.json", "choice.json", "base.json"
TP_STEPS, TP_MAX_RATIO = 1000, 0.9  # bench_quality.py's Torch-Pruning recipe
GOAL_BUDGET, GOAL_POINTS = 0.5, 1.0  # within 1 mAP@[.5:.95] point of the unpruned base at 50% MACs
THREADS = 1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="0.5,0.3", help="MACs ratios, in the order they run")
    parser.add_argument("--seeds", type=int, default=2, help="search seeds = finetune seeds per row")
    parser.add_argument("--base-epochs", type=int, default=20, help="the base detector's training (demo: 6)")
    parser.add_argument("--epochs", type=int, default=6, help="finetune epochs, every row (demo: 3)")
    parser.add_argument("--particles", type=int, default=8, help="acp's search (demo: 8)")
    parser.add_argument("--iterations", type=int, default=6, help="acp's search (demo: 6)")
    parser.add_argument("--rounds", type=int, default=15, help="latency: interleaved rounds per model")
    parser.add_argument(
        "--score",
        default=DETECTION_SCORE,
        choices=tuple(SCORE_LABELS),
        help="acp's [proxy] and [rerank] score (default: bench_detection_fidelity.py's pick)",
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/acp17/detection"))
    parser.add_argument("--quick", action="store_true", help="smoke test: every row, tiny sizes")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    args.budgets = [float(b) for b in args.budgets.split(",")]
    if args.quick:
        from acp.workflows.demo import DETECTION_QUICK

        args.budgets, args.seeds, args.rounds = [0.5], 2, 3
        args.base_epochs, args.epochs = DETECTION_QUICK.base_epochs, DETECTION_QUICK.finetune_epochs
        args.particles, args.iterations = DETECTION_QUICK.particles, DETECTION_QUICK.iterations
    return args


def sizes(args):
    """The demo's proxy and re-ranking sizes (DETECTION_FULL, quick: DETECTION_QUICK); the search's
    particles and iterations from the arguments."""
    from acp.workflows.demo import DETECTION_FULL, DETECTION_QUICK

    return DETECTION_QUICK if args.quick else DETECTION_FULL


# --- the base detector and what every row shares -------------------------------------------------------


class Setup:
    """The base detector (trained once, cached), its channel space, the data and the search settings."""

    def __init__(self, args):
        from acp.detection_data import load_detection_data, make_detection_splits
        from acp.models import create_model
        from acp.models.detection import network_input_size
        from acp.workflows.demo import (
            DETECTION_BASE_LR,
            DETECTION_DATA,
            DETECTION_KWARGS,
            DETECTION_MODEL,
            DETECTION_RECIPE,
            DETECTION_SPLIT,
        )
        from acp.workflows.problem import load_problem

        self.args = args
        self.data = load_detection_data(DETECTION_DATA)
        self.splits = make_detection_splits(self.data, DETECTION_SPLIT, seed=0)
        base_dir = args.out / "base"
        with torch.random.fork_rng(devices=[]):  # the demo's initial weights
            torch.manual_seed(0)
            model = create_model(DETECTION_MODEL, num_classes=self.data.num_classes, **DETECTION_KWARGS)
        self.base_record = self.train_base(model, base_dir, DETECTION_BASE_LR, DETECTION_RECIPE)
        run = sizes(args)
        from acp.workflows.demo import DETECTION_BATCH, DETECTION_FINETUNE_LR

        document = {
            "model": {
                "name": DETECTION_MODEL,
                "num_classes": self.data.num_classes,
                "input_size": list(network_input_size(model)),
                "weights": str((base_dir / "weights.pt").resolve()),
                "kwargs": dict(DETECTION_KWARGS),
            },
            "task": {"kind": "detection"},
            "data": {"spec": DETECTION_DATA, "split": DETECTION_SPLIT, "seed": 0},
            "space": {"round_to": 1, "min_keep": 0.1},
            "budget": {"flops": args.budgets[0]},
            "search": {
                "particles": args.particles,
                "iterations": args.iterations,
                "random_particles": 1,
                "seed": 0,
            },
            "finetune": {"epochs": args.epochs, "lr": DETECTION_FINETUNE_LR, **DETECTION_RECIPE},
            "proxy": {
                "calibration_batches": run.calibration_batches,
                "calibration_batch_size": DETECTION_BATCH,
                "eval_batch_size": DETECTION_BATCH,
                "validation_images": run.validation_images,
                "score": args.score,
            },
            "rerank": {
                "finalists": run.finalists,
                "finetune_steps": run.finalist_steps,
                "calibration_batches": run.calibration_batches,
                "validation_images": run.validation_images,
                "score": args.score,
            },
        }
        from acp.settings import RunSettings

        self.settings = RunSettings.from_document(document, source="bench_detection.py")
        self.problem = load_problem(self.settings, require_weights=True)
        self.model, self.space, self.identity = self.problem.model, self.problem.space, self.problem.identity
        self.finetune_lr = DETECTION_FINETUNE_LR
        self.recipe = DETECTION_RECIPE

    def train_base(self, model, base_dir: Path, lr: float, recipe: dict) -> dict:
        from acp.fileio import atomic_write_json, load_weights_into
        from acp.proxy.detection_score import score_detector
        from acp.settings import Schedule
        from acp.train.detection_loop import train_detector

        record_path = base_dir / BASE_FILE
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            if record["epochs"] == self.args.base_epochs:
                load_weights_into(model, base_dir / "weights.pt")
                print(f"base: cached ({base_dir}), mAP@0.5 {100 * record['map50']:.1f}", flush=True)
                return record
            shutil.rmtree(base_dir)
        began = time.perf_counter()
        resume = (base_dir / "checkpoint.pt").is_file()
        train_detector(
            model,
            self.data,
            self.splits.train,
            self.splits.val,
            out_dir=base_dir,
            schedule=Schedule(epochs=self.args.base_epochs, lr=lr, **recipe),
            score_detector=score_detector,
            resume=resume,
            progress=False,
            threads=THREADS,
        )
        map50, map_ = detection_maps(model, self.data, self.splits.val)
        record = {
            "epochs": self.args.base_epochs,
            "map50": map50,
            "map": map_,
            "seconds": time.perf_counter() - began,
            "resumed": resume,
        }
        atomic_write_json(record_path, record)
        print(f"base: trained {record['seconds']:.0f} s, mAP@0.5 {100 * map50:.1f}", flush=True)
        return record

    def architecture(self, widths, flops, source: str, criterion, space=None):
        from acp.core.architecture import Architecture

        space = space or self.space
        widths = {group.id: int(w) for group, w in zip(space.groups, widths)}
        keep = {gid: tuple(int(i) for i in criterion.select(gid, w)) for gid, w in widths.items()}
        return Architecture.from_widths(
            space,
            self.identity,
            widths,
            keep,
            budget={"flops": flops},
            space_settings=dict(space.settings),
            provenance={"source": source, "seed": 0, "criterion": criterion.name},
        )


def detection_maps(model, data, indices) -> tuple[float, float]:
    """(mAP@0.5, mAP@[.5:.95]) from one pass of detections (the demo's ``_detection_maps``)."""
    from acp.detection_data import iterate_detection_batches
    from acp.proxy.detection_score import detect, mean_average_precision
    from acp.threads import torch_threads
    from acp.workflows.demo import DETECTION_BATCH

    batches = iterate_detection_batches(data, indices, DETECTION_BATCH, with_ignored=True)
    with torch_threads(THREADS), quiet_coco_eval():
        predictions, targets = detect(model, batches)
        return (
            mean_average_precision(predictions, targets, metric="map50"),
            mean_average_precision(predictions, targets, metric="map"),
        )


# --- the rows' choices ---------------------------------------------------------------------------------


def choose_uniform(setup: Setup, flops: float, name: str):
    """Every group at the same keep ratio (repaired onto the budget), channels chosen by ``name``."""
    from acp.core.budget import Budget
    from acp.propose.criteria import make_criterion
    from acp.search.encoding import KeepRatioEncoding

    widths = Budget(setup.space, flops=flops).repair(KeepRatioEncoding(setup.space).upper)
    statistics = box_statistics(setup) if name == "box_relevance" else None
    criterion = make_criterion(name, setup.space, model=setup.model, statistics=statistics, seed=0)
    return setup.architecture(widths, flops, "uniform", criterion), {"evaluations": 0}


_STATISTICS: dict = {}


def box_statistics(setup: Setup):
    """Feature statistics with box masks on STATISTICS_IMAGES training images (a seed-0 draw), as
    ``acp propose`` collects them for a detector."""
    if "statistics" not in _STATISTICS:
        from acp.propose.detection_features import detection_statistics

        chosen = np.random.default_rng(0).permutation(np.asarray(setup.splits.train))[:STATISTICS_IMAGES]
        images, targets = zip(*(setup.data.sample(int(index)) for index in chosen))
        _STATISTICS["statistics"] = detection_statistics(
            setup.model, setup.space, list(images), list(targets), num_images=len(chosen)
        )
    return _STATISTICS["statistics"]


def choose_full(setup: Setup, flops: float):
    from acp.propose.criteria import make_criterion

    criterion = make_criterion("l2", setup.space, model=setup.model, seed=0)
    arch = setup.architecture(setup.space.full_widths(), None, "manual", criterion)
    return arch, {"evaluations": 0}


def choose_proposal(setup: Setup, folder: Path, flops: float):
    """Particle 0 of acp's seed-0 search with that search's frozen channel rankings (bench_quality.py)."""
    from acp.workflows.rundir import read_proposal

    run_dir = choice_dirs(folder, "acp", 1, setup.args.score)[0] / "run"
    record = json.loads((run_dir.parent / CHOICE_FILE).read_text())
    _, criterion = read_proposal(run_dir, setup.space)
    arch = setup.architecture(record["proposal"]["widths"], flops, "cluster", criterion)
    return arch, {"evaluations": 1, "proxy_score": record["proposal"]["score"]}


def output_convs(network: torch.nn.Module, example: torch.Tensor) -> list[torch.nn.Module]:
    """The convolutions whose outputs are the network's outputs (the box and class predictors): a
    detector's counterpart of a classifier's ``fc``, never pruned (acp's space leaves them alone too)."""
    produced, hooks = {}, []
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            hooks.append(module.register_forward_hook(lambda mod, _, out: produced.__setitem__(id(out), mod)))
    try:
        with torch.no_grad():
            outputs = network.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    return [produced[id(out)] for out in outputs if id(out) in produced]


def torch_pruning_global(network: torch.nn.Module, example: torch.Tensor, flops: float):
    """bench_quality.py's Torch-Pruning recipe on a copy of the detector's ``network`` view, predictors
    ignored; BatchNorm running_means are overwritten with channel indices first (magnitude importance reads
    weights only), as are conv biases, so the survivors name the kept channels.

    Returns (pruned copy, MACs, steps)."""
    import torch_pruning as tp

    network = copy.deepcopy(network).eval()
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean = torch.arange(module.num_features, dtype=torch.float32)
        elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
            # GroupMagnitudeImportance reads biases only with bias=True (Torch-Pruning 1.6): the SE
            # blocks' groups have no BatchNorm, their producers' biases name the kept channels
            module.bias.data = torch.arange(module.bias.numel(), dtype=module.bias.dtype)
    ignored = output_convs(network, example)
    base_macs, _ = tp.utils.count_ops_and_params(network, example)
    pruner = tp.pruner.MetaPruner(
        network,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=True,
        pruning_ratio=1.0,
        max_pruning_ratio=TP_MAX_RATIO,
        iterative_steps=TP_STEPS,
        ignored_layers=ignored,
    )
    steps, macs = 0, base_macs
    while macs > flops * base_macs and steps < TP_STEPS:
        pruner.step()
        steps += 1
        macs, _ = tp.utils.count_ops_and_params(network, example)
    return network, macs, steps


def choose_torch_pruning(setup: Setup, flops: float):
    """What Torch-Pruning keeps, as an acp Architecture in a space with ``min_keep=0.01`` (Torch-Pruning
    may leave a group narrower than acp's ``min_keep``), checked against Torch-Pruning's own MACs count."""
    from acp.core.architecture import Architecture
    from acp.models.detection import traced_network

    example = torch.zeros(1, *setup.identity.input_size)
    tagged, macs, steps = torch_pruning_global(traced_network(setup.model), example, flops)
    modules = dict(tagged.named_modules())
    keep = {}
    for group in setup.space.groups:
        biased = [name for name in group.producers if getattr(modules[name], "bias", None) is not None]
        if group.norms:
            tags = modules[group.norms[0]].running_mean
        elif biased:
            tags = modules[biased[0]].bias.data
        else:
            raise RuntimeError(f"group {group.id} has no BatchNorm or bias to read the kept channels from")
        keep[group.id] = tuple(tags.round().long().tolist())
    loose = loose_space(setup)
    arch = Architecture.from_widths(
        loose,
        setup.identity,
        {group_id: len(kept) for group_id, kept in keep.items()},
        keep,
        budget={"flops": flops},
        space_settings=dict(loose.settings),
        provenance={"source": "manual", "seed": 0, "criterion": "torch_pruning_group_l2_global"},
    )
    if arch.macs != macs:
        raise RuntimeError(f"Torch-Pruning's network has {macs} MACs, its architecture {arch.macs}")
    return arch, {"evaluations": 0, "pruning_steps": steps}


_LOOSE: dict = {}


def loose_space(setup: Setup):
    if "space" not in _LOOSE:
        from acp.prune import space_for

        _LOOSE["space"] = space_for(setup.model, setup.identity, {**setup.space.settings, "min_keep": 0.01})
    return _LOOSE["space"]


def choose_search(setup: Setup, flops: float, directory: Path, seed: int):
    """acp's search into ``directory/run`` (resumed from its checkpoint when a previous run was killed)."""
    import acp
    from acp.core.architecture import Architecture
    from acp.search.store import CHECKPOINT_FILE

    run_dir = directory / "run"
    resumed = (run_dir / CHECKPOINT_FILE).is_file()
    with quiet_coco_eval():
        if resumed:
            result = acp.search(resume=run_dir)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)  # set-up files without a checkpoint: start again
            result = acp.search(setup.settings, out=run_dir, flops=flops, seed=seed, workers=1)
    arch = Architecture.load(run_dir / "best_arch.json")
    record = {
        "search_seed": seed,
        "resumed": resumed,
        "evaluations": result.evaluations,
        "iterations": result.iterations,
        "particles": setup.settings.search.particles,
        "finalists": len(result.finalists or []),
        "proxy_score": result.best["score"],
        "finalist_score": result.best.get("finalist_score"),
        "study_seconds": result.seconds,
        "proposal": result.proposal,
        "uniform": result.uniform,
    }
    return arch, record


def row_dir(folder: Path, row: str, score: str) -> Path:
    """``folder/row``; acp's searches depend on the proxy score: ``folder/acp-<score>``."""
    return folder / (f"{row}-{score}" if row == "acp" else row)


def choice_dirs(folder: Path, row: str, seeds: int, score: str) -> list[Path]:
    if row == "acp":
        return [row_dir(folder, row, score) / f"search{seed}" for seed in range(seeds)]
    return [folder / row]


def choose_all(setup: Setup, flops: float, folder: Path, rows) -> None:
    from acp.fileio import atomic_write_json

    for row in sorted(rows, key=lambda r: r != "acp"):  # acp's search0 first: the proposal row reads it
        for seed, directory in enumerate(choice_dirs(folder, row, setup.args.seeds, setup.args.score)):
            if (directory / CHOICE_FILE).is_file():
                continue
            directory.mkdir(parents=True, exist_ok=True)
            began = time.perf_counter()
            if row == "acp":
                arch, record = choose_search(setup, flops, directory, seed)
            elif row == "proposal":
                arch, record = choose_proposal(setup, folder, flops)
            elif row in CRITERION_ROWS:
                arch, record = choose_uniform(setup, flops, row.removeprefix("uniform_"))
            elif row == "tp_global":
                arch, record = choose_torch_pruning(setup, flops)
            elif row == "base_ft":
                arch, record = choose_full(setup, flops)
            else:
                raise ValueError(row)
            seconds = time.perf_counter() - began
            arch.save(directory / ARCH_FILE)
            record = {"row": row, "seconds": seconds, "macs": arch.macs, "params": arch.params, **record}
            atomic_write_json(directory / CHOICE_FILE, record)
            print(
                f"[{flops:.0%}] {row} #{seed}: {arch.macs_ratio:.1%} MACs, {arch.params_ratio:.1%} params, "
                f"{seconds:.0f} s, {record['evaluations']} proxy evaluations",
                flush=True,
            )


# --- finetuning, scoring and latency -------------------------------------------------------------------


def recipe(setup: Setup) -> dict:
    return {"epochs": setup.args.epochs, "lr": setup.finetune_lr, **setup.recipe, "rounds": setup.args.rounds}


def finetune_one(setup: Setup, row: str, flops: float, seed: int, arch_path: Path, out: Path) -> dict:
    """Finetune one (architecture, seed) with the detection finetune, score it, measure its latency, save."""
    from acp.core.architecture import Architecture
    from acp.fileio import atomic_write_json
    from acp.proxy.detection_score import score_detector
    from acp.settings import Schedule
    from acp.train.detection_finetune import finetune_detector

    path = out / RESULT_FILE
    if path.is_file():
        done = json.loads(path.read_text())
        if done.get("recipe") == recipe(setup) and done.get("arch") == str(arch_path):
            return done
        shutil.rmtree(out)  # another recipe or architecture: redo
    arch = Architecture.load(arch_path)
    space = loose_space(setup) if row == "tp_global" else setup.space
    train_dir = out / "train"
    resume = (train_dir / "checkpoint.pt").is_file()
    if train_dir.exists() and not resume:
        shutil.rmtree(train_dir)
    schedule = Schedule(epochs=setup.args.epochs, lr=setup.finetune_lr, **{**setup.recipe, "seed": seed})
    began = time.perf_counter()
    with quiet_coco_eval():
        tuned = finetune_detector(
            arch,
            setup.model,
            space,
            setup.data,
            setup.splits,
            out_dir=train_dir,
            schedule=schedule,
            score_detector=score_detector,
            resume=resume,
            threads=THREADS,
            progress=False,
            measure_latency_of_models=False,  # measured below, paired with the base
        )
    seconds = time.perf_counter() - began
    map50, map_ = detection_maps(tuned.model, setup.data, setup.splits.val)
    latency = latency_ratios(setup, tuned.model)
    result = {
        "row": row,
        "flops": flops,
        "seed": seed,
        "arch": str(arch_path),
        "map50": map50,
        "map": map_,
        "map50_before": tuned.metrics.get("map50_before"),
        "map50_last_epoch": tuned.metrics.get("map50_after"),
        "macs": arch.macs,
        "params": arch.params,
        "finetune_seconds": seconds,
        **latency,
        "recipe": recipe(setup),
    }
    atomic_write_json(path, result)
    print(
        f"[{flops:.0%}] {row} seed {seed}: mAP@0.5 {100 * map50:.1f}, mAP {100 * map_:.1f} "
        f"(before finetune {100 * (result['map50_before'] or 0):.1f}), latency network "
        f"{latency['network_latency_ratio']:.2f}x / detector {latency['detector_latency_ratio']:.2f}x, "
        f"{seconds:.0f} s",
        flush=True,
    )
    return result


def latency_ratios(setup: Setup, pruned) -> dict:
    """Batch-1 latency of ``pruned`` / the base, torch eager, 1 thread, base and pruned interleaved in
    rounds (``time_rounds``; ratio = ``paired_ratios``, the median of per-round ratios): the network
    view on a 320 x 320 tensor (what the MACs count) and the whole detector on the first validation image."""
    from acp.latency.runtimes import Timing, paired_ratios, prepare, time_rounds
    from acp.models.detection import traced_network

    timing = Timing(rounds=setup.args.rounds, min_seconds=0.0 if setup.args.quick else 0.05)
    example = torch.randn((1, *setup.identity.input_size), generator=torch.Generator().manual_seed(0))
    models = [setup.model, pruned]
    network_calls = [prepare("torch", traced_network(model), example, THREADS) for model in models]
    image = torch.from_numpy(np.ascontiguousarray(setup.data.image(int(setup.splits.val[0]))))
    image = image.permute(2, 0, 1).float().div(255)

    def detector_call(model):
        model.eval()

        def forward():
            with torch.inference_mode():
                return model([image])

        return forward

    network = time_rounds(network_calls, timing, threads=THREADS, seed=7)
    detector = time_rounds([detector_call(model) for model in models], timing, threads=THREADS, seed=8)
    return {
        "network_base_ms": float(np.median(network[0])),
        "network_ms": float(np.median(network[1])),
        "network_latency_ratio": float(paired_ratios(network)[1]),
        "detector_base_ms": float(np.median(detector[0])),
        "detector_ms": float(np.median(detector[1])),
        "detector_latency_ratio": float(paired_ratios(detector)[1]),
    }


def finetune_all(setup: Setup, flops: float, folder: Path, rows) -> list[dict]:
    results = []
    for seed in range(setup.args.seeds):  # every row's seed 0 first
        for row in rows:
            directories = choice_dirs(folder, row, setup.args.seeds, setup.args.score)
            directory = directories[seed] if len(directories) > 1 else directories[0]
            out = row_dir(folder, row, setup.args.score) / f"seed{seed}"
            results.append(finetune_one(setup, row, flops, seed, directory / ARCH_FILE, out))
    return results


# --- report --------------------------------------------------------------------------------------------


def spread_text(values: list[float], digits: int = 1) -> str:
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    std = statistics.stdev(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def ratio_text(values: list[float]) -> str:
    low, high = f"{min(values):.1%}", f"{max(values):.1%}"
    return low if low == high else f"{low}-{high}"


def latency_text(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if len(values) else "-"


def label(row: str, score: str) -> str:
    return LABELS[row].format(score=SCORE_LABELS[score])


def table(setup: Setup, flops: float, results: list[dict], choices: dict) -> list[str]:
    space = setup.space
    lines = [
        f"**{flops:.0%} of the base MACs**",
        "",
        "| row | MACs | params | **mAP@[.5:.95]** (mean ± std, min-max) | mAP@0.5 | mAP@0.5 before finetune "
        "| latency network | latency detector | models | proxy evaluations | choice s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = setup.base_record
    lines.append(
        f"| {LABELS['base']} | 100.0% | 100.0% | **{100 * base['map']:.1f}** | {100 * base['map50']:.1f} | - "
        "| 1.00 | 1.00 | 1 | 0 | - |"
    )
    for row in ROWS[1:]:
        done = [r for r in results if r["row"] == row]
        if not done:
            continue
        records = choices.get(row, [])
        evaluations = "/".join(str(e) for e in sorted({c["evaluations"] for c in records})) or "0"
        if len(records) > 1:
            evaluations += f" x {len(records)}"
        before = [100 * r["map50_before"] for r in done if r.get("map50_before") is not None]
        lines.append(
            f"| {label(row, setup.args.score)} | {ratio_text([r['macs'] / space.base_macs for r in done])} "
            f"| {ratio_text([r['params'] / space.base_params for r in done])} "
            f"| **{spread_text([100 * r['map'] for r in done])}** "
            f"| {spread_text([100 * r['map50'] for r in done])} "
            f"| {spread_text(before) if before else '-'} "
            f"| {latency_text([r['network_latency_ratio'] for r in done])} "
            f"| {latency_text([r['detector_latency_ratio'] for r in done])} "
            f"| {len(done)} | {evaluations} | {sum(c['seconds'] for c in records):.0f} |"
        )
    return lines + [""]


def verdict(setup: Setup, flops: float, results: list[dict]) -> list[str]:
    metric, name = HEADLINE, SCORE_LABELS[HEADLINE]
    by_row = {row: [100 * r[metric] for r in results if r["row"] == row] for row in PRUNED_ROWS}
    if not by_row["acp"]:
        return []
    base = 100 * setup.base_record[metric]
    acp = by_row["acp"]
    others = {row: values for row, values in by_row.items() if row != "acp" and values}
    text = (
        f"At {flops:.0%} MACs: acp {statistics.mean(acp):.1f} {name} (worst seed {min(acp):.1f}), "
        f"base {base:.1f}"
    )
    if others:
        best = max(others, key=lambda row: statistics.mean(others[row]))
        spread = max(
            statistics.stdev(acp) if len(acp) > 1 else 0.0,
            statistics.stdev(others[best]) if len(others[best]) > 1 else 0.0,
        )
        margin = statistics.mean(acp) - statistics.mean(others[best])
        text += (
            f"; best other row {label(best, setup.args.score)} {statistics.mean(others[best]):.1f}: "
            f"margin {margin:+.1f} points "
            f"vs seed spread (larger std) {spread:.1f}"
        )
    tuned_base = [100 * r[metric] for r in results if r["row"] == "base_ft"]
    if tuned_base:
        text += f"; base + the same finetune {statistics.mean(tuned_base):.1f}"
    if round(flops, 3) == GOAL_BUDGET:
        met = base - statistics.mean(acp) <= GOAL_POINTS
        text += (
            f"; goal (within {GOAL_POINTS:.0f} point of the base at 50%): **{'met' if met else 'not met'}**"
        )
    lines = [f"- {text}."]
    criteria = {row: [100 * r[metric] for r in results if r["row"] == row] for row in CRITERION_ROWS}
    if all(criteria.values()):
        ranked = sorted(criteria, key=lambda row: -statistics.mean(criteria[row]))
        lines.append(
            f"- At {flops:.0%} MACs, same uniform widths, channel criteria by mean {name}: "
            + ", ".join(f"{r.removeprefix('uniform_')} {statistics.mean(criteria[r]):.1f}" for r in ranked)
            + "."
        )
    return lines


def report(setup: Setup, results: dict, choices: dict, seconds: float) -> list[str]:
    import torch_pruning

    args, search, run = setup.args, setup.settings.search, sizes(setup.args)
    base = setup.base_record
    lines = [
        *provenance_lines(
            "bench_detection.py", "1 process, 1 torch thread", {"torch-pruning": torch_pruning.__version__}
        ),
        "",
        f"Base: {setup.identity.name} at width_mult 0.25 trained from scratch {base['epochs']} epochs on "
        "shapes:64 (512 generated 64 x 64 images, 3 classes, 1-4 objects each; "
        f"410 training images; the demo's recipe), mAP@[.5:.95] **{100 * base['map']:.1f}**, mAP@0.5 "
        f"{100 * base['map50']:.1f} on the 102 held-out validation images; {setup.space.base_macs:,} MACs "
        f"(network at {'x'.join(map(str, setup.identity.input_size))}), {setup.space.base_params:,} params.",
        "",
        f"acp search: {search.particles} particles x {search.iteration_limit} iterations = "
        f"{search.particles * search.iteration_limit} proxy evaluations ({SCORE_LABELS[args.score]} on "
        f"{run.validation_images} "
        f"proxy-validation training images, BN recalibrated on {run.calibration_batches} x 8), then "
        f"{run.finalists} finalists re-ranked ({run.finalist_steps} finetune steps); search seeds "
        f"0..{args.seeds - 1}. The proposal row is particle 0 of the seed-0 search (1 evaluation). "
        "Uniform and Torch-Pruning use no proxy evaluation. The criterion rows share the uniform widths "
        f"(box_relevance: box-masked statistics on {STATISTICS_IMAGES} training images).",
        "",
        f"Finetune, identical for every row: acp/train/detection_finetune.py, {args.epochs} epochs on "
        f"the 410 training images, SGD lr {setup.finetune_lr} cosine, "
        f"wd {setup.recipe['weight_decay']}, batch {setup.recipe['batch_size']}, flips; the last epoch "
        f"is kept. Finetune seeds 0..{args.seeds - 1} (search seed i -> finetune seed i). mAPs on the "
        "102 validation images (which chose nothing), mean ± sample std (min-max) over seeds. "
        f"Latency: batch 1, torch eager, 1 thread, {args.rounds} interleaved rounds with the base "
        "(median of per-round ratios); network = backbone + head on the 320 x 320 tensor, detector = "
        "the whole forward (resize, network, decoding, NMS) on one validation image. The headline is "
        "mAP@[.5:.95]: mAP@0.5 saturates near 100 on these shapes for every row that works, so it cannot "
        "tell the rows apart.",
        "",
    ]
    verdicts = []
    for flops in args.budgets:
        lines += table(setup, flops, results[flops], choices[flops])
        verdicts += verdict(setup, flops, results[flops])
    lines += ["Verdicts (computed from the tables above):", "", *verdicts, ""]
    lines.append(
        f"Wall time of this invocation: {seconds / 60:.1f} min. Models: `{args.out}/flops<B>/<row>/seed<S>/`."
    )
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(THREADS)
    require_map_packages("bench_detection.py")
    began = time.perf_counter()
    setup = Setup(args)
    rows = ROWS[1:]
    choices, results = {}, {}
    for flops in args.budgets:
        folder = args.out / f"flops{flops:g}"
        choose_all(setup, flops, folder, rows)
        choices[flops] = {
            row: [
                json.loads((d / CHOICE_FILE).read_text())
                for d in choice_dirs(folder, row, args.seeds, args.score)
            ]
            for row in rows
        }
        results[flops] = finetune_all(setup, flops, folder, rows)
    seconds = time.perf_counter() - began
    lines = report(setup, results, choices, seconds)
    print("\n".join(lines), flush=True)
    if not (args.no_write or args.quick):
        update_section(SECTION, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
