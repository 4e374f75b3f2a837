"""Fidelity of the proxy among the candidates a search chooses between: the top of a PSO run.

    python benchmarks/bench_top_fidelity.py [--run /tmp/acp14/pso30] [--top 20]
        [--work /tmp/acp14/top_fidelity] [--stages recal,truth0,steps,timing,truth1] [--shard I/N]
        [--threads 1] [--repeats 3] [--quick] [--no-write]

Candidates: the ``--top`` distinct width vectors of a finished ``acp search`` run by recorded proxy score
(``history.sqlite``), plus the clustering proposal (iteration 0, particle 0) and the uniform candidate
(iteration 0, particle 1) as references; each is materialized with the run's channel rankings
(``proposal.json``).

Ground truth ("truth"): accuracy on the *selection* slice (``bench_common.selection_indices``: 5,000
class-balanced training images disjoint from the proxy's slices and the finetune subset; never the
validation split) after one fixed short finetune: 1 epoch on a fixed stratified 8,000-image subset of the
training split, SGD nesterov lr 0.05 cosine, wd 5e-4, batch 128, crop+flip, seed 0 (stage ``truth0``) and
seed 1 (``truth1``, the noise ceiling).

Proxy variants (stage ``variants``) on the same candidates, from two passes per candidate over the run's
own proxy slices (the same seed; proxy-validation slices of 500/1,000/2,000/5,000 images are nested, the
2,000 are the search's): (A) BatchNorm recalibration snapshots after K = 5, 10, 20 batches of 64, scored on
the validation slices; (B) 20/50/100 SGD steps (the evaluator's finetune recipe: lr 0.01, momentum 0.9,
wd 5e-4, cycling over the 20 calibration batches) snapshotted from one run, each recalibrated on 20
batches and scored; the training losses of the steps give trainability signals. Stage ``timing`` times a
real ``ProxyEvaluator`` per cost class (alternating, ``--repeats``, median CPU and wall seconds) and
checks that its scores equal the cached variant scores.

Everything is cached as JSON lines under ``--work`` (resumable); ``--shard I/N`` splits the candidates so
two processes can run side by side. Results go to benchmarks/RESULTS.md, section "Proxy fidelity among
top candidates (bench_top_fidelity.py)", unless ``--no-write`` (a sharded run never writes).
``--quick``: random candidates, tiny slices and finetunes, for a smoke test (needs no run directory).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    finetune_subset,
    provenance_lines,
    proxy_slice_indices,
    selection_indices,
    short_finetune_schedule,
    update_section,
)
from bench_proxy_fidelity import append_jsonl, per_image, read_jsonl  # noqa: E402

TITLE = "Proxy fidelity among top candidates (bench_top_fidelity.py)"
CALIBRATION_BATCH = 64
STAGES = ("recal", "truth0", "steps", "timing", "truth1")


@dataclass(frozen=True)
class Plan:
    """Sizes of one study (the full one or ``--quick``)."""

    top: int = 20
    calibration_batches: tuple[int, ...] = (5, 10, 20)  # the last is the default (and the steps' recal)
    search_validation: tuple[int, ...] = (500, 1000, 2000)  # the search's slices (nested); last = default
    fresh_validation: tuple[int, ...] = (1000, 2000, 5000)  # re-ranking slices, disjoint from the search's
    steps: tuple[int, ...] = (20, 50, 100)  # 200 left out: ~+50% of the variants' cost on 2 shared cores
    finetune_images: int = 8000
    selection_images: int = 5000
    repeats: int = 3
    step_repeats: int = 1  # timing repeats of the (slow, low-variance) classes with finetune steps
    timing_candidates: int = 1
    # timed cost classes: (calibration batches, validation images, finetune steps); () = derived
    timing: tuple[tuple[int, int, int], ...] = field(default=())

    @property
    def default_validation(self) -> int:
        return self.search_validation[-1]

    def slices(self) -> dict[str, int]:
        """Slice name -> size: "v<size>" the search's slices, "f<size>" the fresh (re-ranking) ones."""
        return {
            **{f"v{size}": size for size in self.search_validation},
            **{f"f{size}": size for size in self.fresh_validation},
        }

    def cost_classes(self) -> tuple[tuple[int, int, int], ...]:
        if self.timing:
            return self.timing
        full, largest = self.calibration_batches[-1], self.fresh_validation[-1]
        cheap = [(k, v, 0) for k in self.calibration_batches for v in self.search_validation]
        cheap.append((full, largest, 0))
        # with steps: the search's slice size (a search proxy; a fresh slice of that size costs the same),
        # and the largest fresh slice for the most steps (re-ranking)
        steps = [(full, self.default_validation, n) for n in self.steps]
        steps.append((full, largest, max(self.steps)))
        return tuple(dict.fromkeys(cheap + steps))


FULL = Plan()
QUICK = Plan(
    top=3,
    calibration_batches=(2, 4),
    search_validation=(100, 200),
    fresh_validation=(200, 400),
    steps=(2, 4),
    finetune_images=256,
    selection_images=300,
    repeats=1,
    timing=((4, 200, 0), (2, 100, 0), (4, 400, 4)),
)


def key_of(widths) -> str:
    return ",".join(str(int(w)) for w in widths)


# --- set-up ------------------------------------------------------------------------------------------


@dataclass
class Study:
    plan: Plan
    model: torch.nn.Module
    space: object
    evaluator: object  # ProxyEvaluator with the run's settings: builds Architectures, materializes
    data: object
    proxy: object  # ProxyData: the search's calibration batches + every validation slice (union)
    positions: dict[str, np.ndarray]  # slice name (Plan.slices) -> positions inside proxy.validation_*
    train_subset: np.ndarray
    selection: np.ndarray
    candidates: list[dict]  # {"key", "widths", "role", "search_score", "rank"}
    seed: int
    criterion: object  # the channel rankings (for extra evaluators)


def load_run(run_dir: Path, plan: Plan, threads: int) -> Study:
    from acp.proxy.evaluator import ProxyEvaluator, default_proxy_data
    from acp.settings import load_settings
    from acp.workflows.problem import load_problem
    from acp.workflows.rundir import CONFIG_FILE, read_proposal

    settings = load_settings(run_dir / CONFIG_FILE)
    problem = load_problem(settings, require_weights=True)
    data, splits = problem.data()
    _, criterion = read_proposal(run_dir, problem.space)
    seed = settings.data.seed
    proxy_settings = settings.proxy.replace(threads=threads)
    study = _study(plan, problem.model, problem.space, criterion, problem.identity, data, splits, seed)
    # the default's slices are exactly the search's: its recomputed scores must equal history.sqlite's
    search_data = default_proxy_data(data, splits.train, proxy_settings, seed=seed)
    positions = study.positions[f"v{proxy_settings.validation_images}"]
    assert torch.equal(search_data.validation_images, study.proxy.validation_images[positions])
    assert torch.equal(search_data.calibration_images, study.proxy.calibration_images)
    study.evaluator = ProxyEvaluator(
        problem.model, problem.space, criterion, search_data, proxy_settings, identity=problem.identity
    )
    study.candidates = top_candidates(run_dir / "history.sqlite", plan.top)
    return study


def load_quick(plan: Plan, threads: int) -> Study:
    from bench_proxy import CIFAR, candidates_at_budget, load_base

    from acp.data import load_data, make_splits
    from acp.propose.criteria import make_criterion

    data = load_data(str(CIFAR))
    splits = make_splits(data, "shared")
    model, identity, space = load_base("resnet20_cifar")
    criterion = make_criterion("l1", space, model=model)
    study = _study(plan, model, space, criterion, identity, data, splits, 0)
    widths = candidates_at_budget(space, plan.top + 1, 0.3, seed=1, tolerance=0.03)
    study.candidates = [
        {
            "key": key_of(w),
            "widths": [int(x) for x in w],
            "role": "top" if i else "proposal",
            "search_score": None,
            "rank": i or None,
        }
        for i, w in enumerate(widths)
    ]
    return study


def _study(plan, model, space, criterion, identity, data, splits, seed) -> Study:
    from acp.proxy.data import ProxyData
    from acp.proxy.evaluator import ProxyEvaluator
    from acp.settings import ProxySettings

    calibration_images = plan.calibration_batches[-1] * CALIBRATION_BATCH
    search = ProxyData.from_image_data(
        data,
        splits.train,
        calibration_images=calibration_images,
        validation_images=plan.default_validation,
        seed=seed,
    )
    indices = {}
    for name, size in plan.slices().items():
        avoid = indices[f"v{plan.default_validation}"] if name.startswith("f") else None
        indices[name] = proxy_slice_indices(
            data.labels,
            splits.train,
            calibration_images=calibration_images,
            validation_images=size,
            seed=seed,
            avoid=avoid,
        )[1]
    union = np.unique(np.concatenate(list(indices.values())))
    positions = {name: np.searchsorted(union, index) for name, index in indices.items()}
    images, labels = data.tensors(union)
    proxy = ProxyData(search.calibration_images, search.calibration_labels, images, labels)
    default = positions[f"v{plan.default_validation}"]
    assert torch.equal(proxy.validation_images[default], search.validation_images)
    for family in ("v", "f"):  # nested: a smaller slice of a family is inside the larger one
        names = [name for name in indices if name.startswith(family)]
        assert all(np.isin(indices[a], indices[names[-1]]).all() for a in names)
    train_subset = finetune_subset(data.labels, splits.train, plan.finetune_images)
    selection = selection_indices(
        data.labels,
        splits.train,
        proxy_seed=seed,
        calibration_images=calibration_images,
        validation_images=plan.default_validation,
        rerank_images=plan.fresh_validation[-1],
        finetune_images=plan.finetune_images,
        count=plan.selection_images,
    )
    calibration = proxy_slice_indices(
        data.labels, splits.train, calibration_images=calibration_images, validation_images=1, seed=seed
    )[0]
    used = np.concatenate([train_subset, union, calibration, splits.val])
    assert not np.intersect1d(selection, used).size, "the selection slice overlaps"
    assert not np.intersect1d(
        indices[f"v{plan.default_validation}"], indices[f"f{plan.fresh_validation[-1]}"]
    ).size
    settings = ProxySettings(calibration_batches=plan.calibration_batches[-1])
    evaluator = ProxyEvaluator(model, space, criterion, search, settings, identity=identity)
    return Study(
        plan, model, space, evaluator, data, proxy, positions, train_subset, selection, [], seed, criterion
    )


def top_candidates(history: Path, top: int) -> list[dict]:
    """The ``top`` distinct width vectors by recorded score, then the proposal and the uniform candidate."""
    with sqlite3.connect(f"file:{history}?mode=ro", uri=True) as connection:
        rows = connection.execute(
            "SELECT iteration, particle, widths, score FROM evaluations WHERE status = 'ok' "
            "ORDER BY score DESC, id"
        ).fetchall()
        references = {
            particle: json.loads(widths)
            for particle, widths in connection.execute(
                "SELECT particle, widths FROM evaluations WHERE iteration = 0 AND particle IN (0, 1)"
            )
        }
    scores = {}
    for _, _, widths, score in rows:
        scores.setdefault(key_of(json.loads(widths)), score)
    candidates = []
    for rank, (key, score) in enumerate(list(scores.items())[:top], start=1):
        candidates.append(
            {
                "key": key,
                "widths": [int(w) for w in key.split(",")],
                "role": "top",
                "search_score": score,
                "rank": rank,
            }
        )
    for particle, role in ((0, "proposal"), (1, "uniform")):
        key = key_of(references[particle])
        if key not in {c["key"] for c in candidates}:
            candidates.append(
                {
                    "key": key,
                    "widths": references[particle],
                    "role": role,
                    "search_score": scores.get(key),
                    "rank": None,
                }
            )
        else:
            next(c for c in candidates if c["key"] == key)["role"] += f"+{role}"
    return candidates


# --- stages ------------------------------------------------------------------------------------------


def score_slices(study: Study, model, keep=lambda name: True) -> dict[str, list]:
    """Per slice name (those ``keep`` accepts): [correct, mean loss] of ``model``."""
    names = [name for name in study.positions if keep(name)]
    needed = np.unique(np.concatenate([study.positions[name] for name in names]))
    correct, losses = per_image(
        model, study.proxy.validation_images[needed], study.proxy.validation_labels[needed]
    )
    scores = {}
    for name in names:
        p = np.searchsorted(needed, study.positions[name])
        scores[name] = [int(correct[p].sum()), float(losses[p].mean())]
    return scores


def recalibration_pass(study: Study, widths) -> dict:
    """Pass A: BatchNorm recalibration snapshots after K batches, scored on the slices."""
    from acp.proxy.evaluator import batchnorm_layers
    from acp.prune import materialize

    plan, proxy = study.plan, study.proxy
    began = time.perf_counter()
    arch = study.evaluator.architecture(widths)
    model = materialize(study.model, arch, study.space).eval()
    batches = proxy.calibration_batches(CALIBRATION_BATCH, plan.calibration_batches[-1])
    record: dict = {}
    norms = batchnorm_layers(model)
    for norm in norms:  # the evaluator's recalibration, one cumulative pass, snapshots at each K
        norm.reset_running_stats()
        norm.momentum = None
    for index, batch in enumerate(batches, start=1):
        for norm in norms:
            norm.train()
        with torch.inference_mode():
            model(batch)
        if index in plan.calibration_batches:
            # small K is a candidate for the search's proxy: only the search's slices
            full = index == plan.calibration_batches[-1]
            record[f"K{index}"] = score_slices(study, model, lambda name, full=full: full or name[0] == "v")
    record["A/seconds"] = time.perf_counter() - began
    return record


def steps_pass(study: Study, widths) -> dict:
    """Pass B: snapshots of one run of SGD steps, each recalibrated on all batches and scored (the
    largest step count on every slice, the smaller ones on the search's default and a same-sized fresh
    slice, to save forwards)."""
    from acp.proxy.evaluator import recalibrate_batchnorm
    from acp.prune import materialize

    plan, proxy = study.plan, study.proxy
    began = time.perf_counter()
    batches = proxy.calibration_batches(CALIBRATION_BATCH, plan.calibration_batches[-1])
    labels = [
        proxy.calibration_labels[i * CALIBRATION_BATCH : (i + 1) * CALIBRATION_BATCH]
        for i in range(len(batches))
    ]
    record: dict = {}
    small = {f"v{plan.default_validation}", f"f{plan.default_validation}"}
    model = materialize(study.model, study.evaluator.architecture(widths), study.space)
    settings = study.evaluator.settings
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=settings.finetune_lr,
        momentum=settings.finetune_momentum,
        weight_decay=settings.finetune_weight_decay,
    )
    train_losses = []
    model.train()
    # exactly ProxyEvaluator._finetune (checked by the timing stage): a constant lr, so the snapshot after
    # n steps of one long run is the model an n-step evaluation trains
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(settings.finetune_seed)
        for step in range(1, max(plan.steps) + 1):
            loss = torch.nn.functional.cross_entropy(
                model(batches[(step - 1) % len(batches)]), labels[(step - 1) % len(batches)]
            )
            train_losses.append(float(loss.detach()))
            if not torch.isfinite(loss):
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step in plan.steps:
                snapshot = copy.deepcopy(model)
                recalibrate_batchnorm(snapshot, batches)
                last = step == max(plan.steps)
                record[f"S{step}"] = score_slices(
                    study, snapshot, lambda name, last=last: last or name in small
                )
                model.train()
    record["train_losses"] = train_losses
    record["B/seconds"] = time.perf_counter() - began
    return record


def read_variants(work: Path) -> dict[str, dict]:
    """Both passes' cached records merged per candidate (a candidate without pass A is left out)."""
    steps = read_jsonl(work / "steps.jsonl")
    return {key: {**steps.get(key, {}), **record} for key, record in read_jsonl(work / "recal.jsonl").items()}


def finetune_truth(study: Study, widths, seed: int, threads: int) -> dict:
    from acp.prune import materialize
    from acp.train.loop import train

    model = materialize(study.model, study.evaluator.architecture(widths), study.space)
    schedule = short_finetune_schedule(seed=seed)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        history = train(
            model,
            study.data,
            study.train_subset,
            study.selection,
            schedule,
            out,
            progress=False,
            threads=threads,
        )
    return {
        "accuracy": history[-1].val_accuracy,
        "loss": history[-1].val_loss,
        "seconds": time.perf_counter() - began,
    }


def timing(study: Study, work: Path, threads: int) -> None:
    """CPU and wall seconds of real ProxyEvaluator evaluations per cost class, alternating classes."""
    from acp.proxy.data import ProxyData
    from acp.proxy.evaluator import ProxyEvaluator

    plan, proxy = study.plan, study.proxy
    cached = read_variants(work)
    evaluators = {}
    names = {}
    for k, v, n in plan.cost_classes():
        names[(k, v, n)] = f"v{v}" if f"v{v}" in study.positions else f"f{v}"
        positions = study.positions[names[(k, v, n)]]
        data = ProxyData(
            proxy.calibration_images,
            proxy.calibration_labels,
            proxy.validation_images[positions],
            proxy.validation_labels[positions],
        )
        settings = study.evaluator.settings.replace(
            calibration_batches=k, validation_images=v, finetune_steps=n, threads=threads, cache_size=0
        )
        evaluators[(k, v, n)] = ProxyEvaluator(study.model, study.space, study.criterion, data, settings)
    tops = [c for c in study.candidates if c["role"].startswith("top")][: plan.timing_candidates]
    path = work / "timing.jsonl"
    for repeat in range(plan.repeats):
        for candidate in tops:
            for (k, v, n), evaluator in evaluators.items():
                if n and repeat >= plan.step_repeats:
                    continue
                cpu = time.process_time()
                result = evaluator.evaluate(candidate["widths"])
                cpu = time.process_time() - cpu
                block = cached.get(candidate["key"], {}).get(f"S{n}" if n else f"K{k}", {})
                reference = block.get(names[(k, v, n)])
                record = {
                    "key": f"{k},{v},{n},{candidate['key']},{repeat}",
                    "class": [k, v, n],
                    "cpu": cpu,
                    "wall": result.seconds,
                    "loss": result.loss,
                    "loss_diff": None if reference is None else abs(result.loss - reference[1]),
                    "correct_diff": None if reference is None else round(result.accuracy * v) - reference[0],
                }
                append_jsonl(path, record)
                print(
                    f"timing K{k} V{v} S{n}: cpu {cpu:.2f}s wall {result.seconds:.2f}s "
                    f"loss diff {record['loss_diff']}",
                    flush=True,
                )


# --- report ------------------------------------------------------------------------------------------


def variant_table(plan: Plan) -> list[tuple[str, object, tuple[int, int, int]]]:
    """(label, record -> score (higher = better), timed cost class)."""
    full, default_v = plan.calibration_batches[-1], plan.default_validation
    fresh = plan.fresh_validation

    def acc(block, name):
        size = plan.slices()[name]
        return lambda r: (r[block][name][0] + 1 / (1 + r[block][name][1])) / size

    def neg_loss(block, name):
        return lambda r: -r[block][name][1]

    def size(name):
        return plan.slices()[name]

    v = f"v{default_v}"
    rows = [
        (
            f"today's default: K={full}x64, V={default_v}, accuracy score",
            acc(f"K{full}", v),
            (full, default_v, 0),
        ),
        (f"loss score (K={full}, V={default_v})", neg_loss(f"K{full}", v), (full, default_v, 0)),
    ]
    for k in plan.calibration_batches[:-1]:
        rows.append((f"K={k}, V={default_v}, accuracy", acc(f"K{k}", v), (k, default_v, 0)))
        rows.append((f"K={k}, V={default_v}, loss", neg_loss(f"K{k}", v), (k, default_v, 0)))
    for k in plan.calibration_batches:
        for small in plan.search_validation[:-1]:
            rows.append((f"K={k}, V={small}, loss", neg_loss(f"K{k}", f"v{small}"), (k, small, 0)))
    for n in plan.steps:
        rows.append(
            (f"{n} steps + recal, V={default_v} (search's), loss", neg_loss(f"S{n}", v), (full, default_v, n))
        )
    rows.append(("re-rank family (fresh validation images, disjoint from the search's):", None, None))
    for name in (f"f{size}" for size in fresh):
        rows.append(
            (f"no steps, fresh V={size(name)}, loss", neg_loss(f"K{full}", name), (full, size(name), 0))
        )
        if size(name) == fresh[-1]:  # accuracy is coarse on small slices: only the largest
            rows.append(
                (f"no steps, fresh V={size(name)}, accuracy", acc(f"K{full}", name), (full, size(name), 0))
            )
    for n in plan.steps:
        for name in (f"f{size}" for size in fresh):
            cost = (full, size(name), n)
            rows.append((f"{n} steps + recal, fresh V={size(name)}, loss", neg_loss(f"S{n}", name), cost))
            if size(name) == fresh[-1]:
                rows.append((f"{n} steps + recal, fresh V={size(name)}, accuracy", acc(f"S{n}", name), cost))
    rows.append(("trainability signals (training losses of the steps, no validation images):", None, None))
    for n in plan.steps:
        tail = max(1, min(10, n // 2))
        rows.append(
            (
                f"-train loss, mean of steps {n - tail + 1}-{n}",
                lambda r, n=n, t=tail: -float(np.mean(r["train_losses"][n - t : n])),
                (full, default_v, n),
            )
        )
        rows.append(
            (
                f"train-loss decrease over {n} steps (first {tail} - last {tail})",
                lambda r, n=n, t=tail: float(
                    np.mean(r["train_losses"][:t]) - np.mean(r["train_losses"][n - t : n])
                ),
                (full, default_v, n),
            )
        )
    rows.append(
        ("-train loss of step 1 (inherited weights, batch statistics)", lambda r: -r["train_losses"][0], None)
    )
    return rows


def agreement(proxy: list[float], truth: list[float]) -> dict:
    from scipy.stats import kendalltau, spearmanr

    proxy, truth = np.asarray(proxy), np.asarray(truth)
    pick = int(np.argmax(proxy))
    top5 = min(5, len(proxy))
    return {
        "spearman": float(spearmanr(proxy, truth).statistic),
        "kendall": float(kendalltau(proxy, truth).statistic),
        "top1": pick == int(np.argmax(truth)),
        "top5": len(set(np.argsort(-proxy)[:top5]) & set(np.argsort(-truth)[:top5])),
        "regret": float(truth.max() - truth[pick]),
    }


def report(study: Study, work: Path, started: datetime.datetime, write: bool) -> None:
    plan = study.plan
    proxies = read_variants(work)
    truths = read_jsonl(work / "truth.jsonl")
    cands = [c for c in study.candidates if c["key"] in proxies and f"{c['key']}|0" in truths]
    tops = [c for c in cands if c["role"].startswith("top")]
    if len(tops) < 3:
        print(f"only {len(tops)} top candidates have proxies and a seed-0 finetune; no report yet")
        return
    seeds = [s for s in (0, 1) if all(f"{c['key']}|{s}" in truths for c in cands)]
    truth0 = {c["key"]: truths[f"{c['key']}|0"]["accuracy"] for c in cands}
    truth_mean = {
        c["key"]: float(np.mean([truths[f"{c['key']}|{s}"]["accuracy"] for s in seeds])) for c in cands
    }
    timings: dict[tuple, list] = {}
    for record in read_jsonl(work / "timing.jsonl").values():
        timings.setdefault(tuple(record["class"]), []).append(record)
    default_class = (plan.calibration_batches[-1], plan.default_validation, 0)

    def cpu_of(cost):
        if cost is None:
            return None
        return statistics.median(r["cpu"] for r in timings[cost]) if cost in timings else None

    base_cpu = cpu_of(default_class)
    lines = provenance_lines(
        "bench_top_fidelity.py", f"torch threads = 1, load average {_load():.1f} at report"
    )
    lines += ["", "How the cached results were made (each invocation, from the work directory's log):", ""]
    for entry in (work / "commands.log").read_text().splitlines() if (work / "commands.log").exists() else []:
        lines.append(f"    {entry}")
    macs = [study.space.cost(np.asarray(c["widths"]))[0] / study.space.base_macs for c in cands]
    search_scores = [c["search_score"] for c in tops if c["search_score"] is not None]
    t0 = [truth0[c["key"]] for c in tops]
    references = ", ".join(c["role"] for c in cands if not c["role"].startswith("top"))
    finetune_seconds = float(np.median([truths[c["key"] + "|0"]["seconds"] for c in cands]))
    lines += [
        "",
        f"Candidates: the {len(tops)} distinct top width vectors of the run by recorded proxy score"
        + (f" ({min(search_scores):.4f}-{max(search_scores):.4f})" if search_scores else "")
        + f", plus references ({references or 'none'}); "
        f"MACs {min(macs):.4f}-{max(macs):.4f} of the base. Ground truth: selection-slice accuracy "
        f"({plan.selection_images} class-balanced training images, disjoint from the proxy slices and the "
        f"finetune subset; `bench_common.selection_indices`) after 1 epoch on a fixed "
        f"{plan.finetune_images}-image stratified training subset (SGD nesterov lr 0.05 cosine, wd 5e-4, "
        f"batch 128, crop+flip). The base model was trained on these images, so selection accuracy runs "
        f"higher than validation accuracy; only the ranking is used. Top-candidate truth (seed 0): "
        f"{min(t0):.4f}-{max(t0):.4f}, median {np.median(t0):.4f}; "
        f"finetune {finetune_seconds:.0f} s each (median).",
    ]
    for c in cands:
        if not c["role"].startswith("top"):
            lines.append(
                f"Reference {c['role']}: truth (seed 0) {truth0[c['key']]:.4f}"
                + (f", search score {c['search_score']:.4f}" if c["search_score"] is not None else "")
            )
    both = [c for c in tops if f"{c['key']}|1" in truths]
    if len(both) >= 3:
        ceiling = agreement(
            [truths[f"{c['key']}|1"]["accuracy"] for c in both], [truth0[c["key"]] for c in both]
        )
        lines.append(
            f"Noise ceiling (finetune seed 1 vs seed 0 over {len(both)} of the top {len(tops)}): Spearman "
            f"{ceiling['spearman']:.3f}, Kendall {ceiling['kendall']:.3f}, top-1 "
            f"{'yes' if ceiling['top1'] else 'no'}, top-5 overlap {ceiling['top5']}/5, regret "
            f"{100 * ceiling['regret']:.2f} pts."
            + (" Columns marked 'mean truth' use the mean of both seeds." if 1 in seeds else "")
        )
    header = (
        "| proxy variant | Spearman top | Kendall top | top-1 | top-5 | regret (pts) | Spearman all | n top "
        + ("| Spearman top (mean truth) | regret (mean truth) " if 1 in seeds else "")
        + "| CPU s / eval | evals / CPU-h vs default |"
    )
    lines += ["", header, "|" + "---|" * (header.count("|") - 1)]
    rows = variant_table(plan)
    if tops[0]["search_score"] is not None:
        rows.insert(0, ("search's recorded score (= today's default)", "search", default_class))
    family, summary = "search", []
    for label, score, cost in rows:
        if score is None:
            lines.append(f"| *{label}* |" + " |" * (header.count("|") - 2))
            family = "rerank" if label.startswith("re-rank") else "signal"
            continue

        def has(c, score=score):
            try:
                score(proxies[c["key"]])
                return True
            except (KeyError, IndexError):
                return False

        if score == "search":
            rows_top, top_scores, all_scores = tops, [c["search_score"] for c in tops], None
        else:
            rows_top, rows_all = [c for c in tops if has(c)], [c for c in cands if has(c)]
            if len(rows_top) < 3:
                continue
            top_scores = [score(proxies[c["key"]]) for c in rows_top]
            all_scores = [score(proxies[c["key"]]) for c in rows_all]
        a = agreement(top_scores, [truth0[c["key"]] for c in rows_top])
        spearman_all = (
            ""
            if all_scores is None or len(rows_all) == len(rows_top)
            else f"{agreement(all_scores, [truth0[c['key']] for c in rows_all])['spearman']:.3f}"
        )
        cells = [
            label,
            f"{a['spearman']:.3f}",
            f"{a['kendall']:.3f}",
            "yes" if a["top1"] else "no",
            f"{a['top5']}/5",
            f"{100 * a['regret']:.2f}",
            spearman_all,
            str(len(rows_top)),
        ]
        if 1 in seeds:
            m = agreement(top_scores, [truth_mean[c["key"]] for c in rows_top])
            cells += [f"{m['spearman']:.3f}", f"{100 * m['regret']:.2f}"]
        cpu = cpu_of(cost)
        speed = "" if cpu is None or base_cpu is None else f"{base_cpu / cpu:.2f}x"
        cells += ["" if cpu is None else f"{cpu:.2f}", speed]
        lines.append("| " + " | ".join(cells) + " |")
        fidelity = m if 1 in seeds else a
        summary.append((label, family, fidelity, cpu))
    lines += ["", *automatic_picks(summary, base_cpu, "mean of both seeds" if 1 in seeds else "seed 0")]
    if timings:
        lines += [
            "",
            "Timing (real `ProxyEvaluator.evaluate`, fresh cache, threads=1, classes alternated; "
            "median over repeats; CPU = process time):",
            "",
            "| K batches | validation images | finetune steps | CPU s | wall s | evals / CPU-hour "
            "| vs default | n | max loss diff vs cached |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for cost, records in sorted(timings.items()):
            cpu = statistics.median(r["cpu"] for r in records)
            wall = statistics.median(r["wall"] for r in records)
            diffs = [r["loss_diff"] for r in records if r["loss_diff"] is not None]
            lines.append(
                f"| {cost[0]} | {cost[1]} | {cost[2]} | {cpu:.2f} | {wall:.2f} | {3600 / cpu:.0f} | "
                f"{base_cpu / cpu:.2f}x | {len(records)} | {max(diffs) if diffs else float('nan'):.1e} |"
            )
    notes = work / "notes.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    text = "\n".join(lines)
    print(text)
    if write:
        update_section(TITLE, lines)


def automatic_picks(summary: list, base_cpu: float | None, truth: str) -> list[str]:
    """(a) the cheapest search-proxy variant at least as faithful as today's default (Spearman and
    regret over the top candidates); (b) the most faithful re-ranking variant (ties: the cheaper)."""
    lines = []
    default = next((row for row in summary if row[0].startswith("today's default")), None)
    if default is not None and base_cpu is not None:
        fits = [
            row
            for row in summary
            if row[1] == "search"
            and row[3] is not None
            and row[2]["spearman"] >= default[2]["spearman"]
            and row[2]["regret"] <= default[2]["regret"]
        ]
        if fits:
            label, _, fidelity, cpu = min(fits, key=lambda row: row[3])
            lines.append(
                f"Automatic pick (a), truth = {truth}: cheapest search proxy with top-candidate Spearman and "
                f"regret no worse than today's default ({default[2]['spearman']:.3f}, "
                f"{100 * default[2]['regret']:.2f} pts): **{label}** -- Spearman {fidelity['spearman']:.3f}, "
                f"regret {100 * fidelity['regret']:.2f} pts, {cpu:.2f} CPU s ({base_cpu / cpu:.2f}x the "
                f"evaluations per CPU-hour).  "
            )
    reranks = [row for row in summary if row[1] == "rerank" and row[3] is not None]
    if reranks:
        label, _, fidelity, cpu = max(reranks, key=lambda row: (round(row[2]["spearman"], 3), -row[3]))
        lines.append(
            f"Automatic pick (b), truth = {truth}: most faithful re-ranking variant: **{label}** -- "
            f"Spearman {fidelity['spearman']:.3f}, top-1 {'yes' if fidelity['top1'] else 'no'}, regret "
            f"{100 * fidelity['regret']:.2f} pts, {cpu:.1f} CPU s per finalist."
        )
    return lines


def _load() -> float:
    import os

    return os.getloadavg()[0]


def run_stage(study: Study, work: Path, stage: str, candidate: dict, threads: int) -> None:
    """One candidate's variants or seed-N finetune, unless cached."""
    plan, key, name = study.plan, candidate["key"], f"[{candidate['role']} {candidate['rank']}]"
    if stage in ("recal", "steps"):
        path = work / f"{stage}.jsonl"
        if key in read_jsonl(path):
            return
        run = recalibration_pass if stage == "recal" else steps_pass
        record = {"key": key, **run(study, candidate["widths"])}
        append_jsonl(path, record)
        if stage == "recal":
            correct, loss = record[f"K{plan.calibration_batches[-1]}"][f"v{plan.default_validation}"]
            score = (correct + 1 / (1 + loss)) / plan.default_validation
            print(
                f"{name} recal: default score {score:.6f} (search recorded {candidate['search_score']}), "
                f"{record['A/seconds']:.0f} s",
                flush=True,
            )
        else:
            print(f"{name} steps: {record['B/seconds']:.0f} s", flush=True)
        return
    seed = int(stage[-1])
    if f"{key}|{seed}" in read_jsonl(work / "truth.jsonl"):
        return
    record = {"key": f"{key}|{seed}", **finetune_truth(study, candidate["widths"], seed, threads)}
    append_jsonl(work / "truth.jsonl", record)
    print(
        f"{name} seed {seed}: selection acc {record['accuracy']:.4f} ({record['seconds']:.0f} s)", flush=True
    )


# --- main --------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="/tmp/acp14/pso30", help="a finished acp search run directory")
    parser.add_argument("--top", type=int, default=None)
    parser.add_argument("--work", default=None, help="cache directory (default /tmp/acp14/top_fidelity)")
    parser.add_argument("--stages", default="recal,truth0,steps,truth1", help=f"comma list of {STAGES}")
    parser.add_argument("--shard", default="0/1", help="I/N: this process handles candidates I, I+N, ...")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats")
    parser.add_argument("--quick", action="store_true", help="tiny smoke test (random candidates, no run)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    shard, shards = (int(part) for part in args.shard.split("/"))
    stages = [s for s in args.stages.split(",") if s]
    if unknown := set(stages) - set(STAGES):
        parser.error(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    plan = QUICK if args.quick else FULL
    if args.top is not None:
        plan = dataclasses.replace(plan, top=args.top)
    if args.repeats is not None:
        plan = dataclasses.replace(plan, repeats=args.repeats)
    work = Path(args.work or ("/tmp/acp14/top_fidelity" + ("_quick" if args.quick else "")))
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    started = datetime.datetime.now(datetime.UTC)
    study = load_quick(plan, args.threads) if args.quick else load_run(Path(args.run), plan, args.threads)
    mine = [c for i, c in enumerate(study.candidates) if i % shards == shard]
    print(
        f"{len(study.candidates)} candidates, {len(mine)} in shard {shard}/{shards}; stages {stages}",
        flush=True,
    )

    for stage in stages:
        began = time.perf_counter()
        if stage == "timing":
            if shard == 0:
                timing(study, work, args.threads)
        else:
            for candidate in mine:
                run_stage(study, work, stage, candidate, args.threads)
        with (work / "commands.log").open("a") as log:
            log.write(
                f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, stage {stage} done in "
                f"{time.perf_counter() - began:.0f} s wall: python benchmarks/bench_top_fidelity.py "
                f"{' '.join(sys.argv[1:] if argv is None else argv)}\n"
            )
    report(study, work, started, write=not args.no_write and shards == 1)


if __name__ == "__main__":
    main()
