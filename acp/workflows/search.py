"""The search as a whole, from settings: ``acp.search(...)`` (the API behind ``acp search``).

Setup happens before anything is written, so a user error (bad config, missing weights, infeasible
budget) leaves no half-made run directory: load the problem, check the budget, carve the proxy data from
the training split, collect feature statistics on the calibration images, propose widths by clustering,
rank channels with the criterion, build the proxy evaluator. Then the run directory gets
``config.toml`` (the resolved settings) and ``proposal.json`` (the clustering proposal and the channel
rankings), and the :class:`~acp.search.study.Study` runs, rewriting ``report.html`` as it goes
(:class:`acp.workflows.report.LiveReport`).

A resumed run reads ``config.toml`` and ``proposal.json`` back instead of recomputing them, so it scores
candidates exactly as the interrupted run did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acp.core.budget import Budget
from acp.core.preprocessing import Preprocessing
from acp.errors import UserError
from acp.search.study import SearchResult, Study
from acp.settings import RunSettings, load_settings
from acp.workflows import rundir

log = logging.getLogger(__name__)


def as_settings(config) -> RunSettings:
    """A TOML path, a :class:`RunSettings`, or a parsed document (``{section: {key: value}}``)."""
    if isinstance(config, RunSettings):
        return config
    if isinstance(config, str | os.PathLike):
        return load_settings(config)
    if isinstance(config, Mapping):
        return RunSettings.from_document(config)
    raise UserError(f"config: expected a TOML path or RunSettings, got {type(config).__name__}")


def search(
    config=None,
    *,
    out=None,
    resume=None,
    flops: float | None = None,
    params: float | None = None,
    latency: float | None = None,
    latency_ms: float | None = None,
    iterations: int | None = None,
    particles: int | None = None,
    engine: str | None = None,
    seed: int | None = None,
    patience: int | None = None,
    workers: int | None = None,
    backend: str | None = None,
    dask_scheduler: str | None = None,
    time_limit: str | float | None = None,
    progress: bool = False,
) -> SearchResult:
    """Search ``config`` (a TOML path or :class:`RunSettings`) under a MACs/params/latency budget, into
    ``out``; or continue the run in directory ``resume``. Keyword overrides win over the config's values; on
    resume only the execution settings (iterations, time_limit, workers, backend, dask_scheduler) may
    change: a run resumed with a larger ``iterations`` or ``time_limit`` continues exactly where it stopped.
    With a ``time_limit`` and no ``iterations`` the search runs until the time is up (anytime).

    Returns a :class:`~acp.search.study.SearchResult` (best widths and score, the clustering proposal's
    and the uniform baseline's records, ``architecture`` = the saved ``best_arch.json``).
    """
    choices = {"particles": particles, "engine": engine, "seed": seed, "patience": patience}
    budget_flags = {"flops": flops, "params": params, "latency": latency, "latency_ms": latency_ms}
    execution = {
        "iterations": iterations,
        "workers": workers,
        "backend": backend,
        "dask_scheduler": dask_scheduler,
        "time_limit": time_limit,
    }
    if resume is not None:
        run_dir = Path(resume)
        stored = rundir.read_run_settings(run_dir)
        given = stored if config is None else as_settings(config)
        given = _with_overrides(given, budget_flags, choices)
        difference = stored.first_difference(given)
        if difference is not None:
            field_name, before, now = difference
            raise UserError(
                f"--resume {run_dir}: {field_name} differs from the run's {rundir.CONFIG_FILE} "
                f"(run: {before!r}, now: {now!r}); a run resumes with its own configuration"
            )
        settings = stored
    else:
        if out is None:
            raise UserError("acp search: --out DIR is required (or --resume DIR)")
        if config is None:
            raise UserError("acp search: a CONFIG file is required")
        run_dir = Path(out)
        from acp.fileio import require_fresh_output

        require_fresh_output(run_dir, "pick a new directory or pass --resume")
        settings = _with_overrides(as_settings(config), budget_flags, choices)
    settings = settings.replace(search=settings.search.replace(**execution))
    return _run(settings, run_dir, resume=resume is not None, progress=progress)


def _with_overrides(settings: RunSettings, budget_flags: Mapping, choices: Mapping) -> RunSettings:
    settings = settings.with_budget(**budget_flags)
    return settings.replace(search=settings.search.replace(**choices))


def _run(settings: RunSettings, run_dir: Path, *, resume: bool, progress: bool) -> SearchResult:
    from acp.proxy.evaluator import fit_to_training_split
    from acp.workflows.latency import search_latency_model, write_search_latency
    from acp.workflows.problem import load_problem

    settings.budget.require("acp search")
    problem = load_problem(settings, require_weights=True)
    space = problem.space
    latency_model = search_latency_model(problem, run_dir, resume=resume, progress=progress)
    budget = Budget(space, **settings.budget.to_dict(), latency_model=latency_model)
    data, splits = problem.data()
    task = _task_parts(problem.task)
    proxy_settings = fit_to_training_split(settings.proxy, len(splits.train))
    proxy_data = task.proxy_data(data, splits.train, proxy_settings, seed=settings.data.seed)
    if resume:
        proposal_widths, criterion = rundir.read_proposal(run_dir, space)
    else:
        proposal_widths, criterion = _propose(problem, budget, proxy_data)
    evaluator = task.evaluator(
        problem.model, space, criterion, proxy_data, proxy_settings, identity=problem.identity
    )
    finalist_evaluator = None
    if settings.rerank.finalists:
        finalist_settings = fit_to_training_split(
            settings.rerank.proxy_settings(proxy_settings), len(splits.train)
        )
        finalist_data = task.finalist_data(
            data, splits.train, proxy_settings, finalist_settings, seed=settings.data.seed
        )
        finalist_settings = finalist_settings.replace(validation_images=task.validation_count(finalist_data))
        finalist_evaluator = task.evaluator(
            problem.model, space, criterion, finalist_data, finalist_settings, identity=problem.identity
        )
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_run_settings(run_dir, settings.with_budget(**budget.as_dict()))
        rundir.write_proposal(run_dir, proposal_widths, space, criterion)
        write_search_latency(run_dir, latency_model)
    from acp.workflows.report import LiveReport

    live_report = LiveReport(run_dir, space=space, budget=budget, search_settings=settings.search)
    architecture = evaluator.architecture
    if problem.task == "classification":  # a detector normalizes its own inputs (its transform)
        architecture = _with_preprocessing(architecture, Preprocessing.of_data(data))
    study = Study(
        space,
        evaluator,
        budget,
        settings.search,
        run_dir,
        proposal_widths=proposal_widths,
        architecture=architecture,
        progress=progress,
        fingerprint={"data": proxy_data.description, **_latency_fingerprint(latency_model)},
        finalist_evaluator=finalist_evaluator,
        finalists=settings.rerank.finalists,
        on_iteration=live_report,
    )
    try:
        result = study.run(resume=resume)
    except UserError:
        if not resume:
            _remove_if_nothing_evaluated(run_dir)
        raise
    if latency_model is not None and settings.latency.verify_winner and result.stopped != "interrupted":
        from acp.workflows.latency import measured_winner

        result = measured_winner(
            problem,
            budget,
            result,
            run_dir,
            architecture=architecture,
            evaluators=(evaluator, finalist_evaluator),
        )
        if result.latency_check is not None:  # best_arch.json was measured (and maybe shrunk): show it
            live_report(None, "finished", notes=result.latency_check.lines())
    return result


@dataclass(frozen=True)
class _TaskParts:
    """What differs between a classification and a detection search: the proxy's data and evaluator."""

    proxy_data: Callable
    finalist_data: Callable
    evaluator: type
    validation_count: Callable


def _task_parts(task: str) -> _TaskParts:
    if task == "detection":
        from acp.proxy.detection import (
            DetectionProxyEvaluator,
            default_detection_proxy_data,
            finalist_detection_proxy_data,
        )

        return _TaskParts(
            default_detection_proxy_data,
            finalist_detection_proxy_data,
            DetectionProxyEvaluator,
            lambda data: len(data.validation_images),
        )
    from acp.proxy.evaluator import ProxyEvaluator, default_proxy_data, finalist_proxy_data

    return _TaskParts(
        default_proxy_data, finalist_proxy_data, ProxyEvaluator, lambda data: len(data.validation_labels)
    )


def _with_preprocessing(architecture, preprocessing):
    """``architecture(widths, **options)`` whose results record how the search's images were prepared, so
    best_arch.json -- and every pruned model made from it -- carries its normalization."""

    def architecture_with_preprocessing(widths, **options):
        return architecture(widths, **options).with_preprocessing(preprocessing)

    return architecture_with_preprocessing


def _latency_fingerprint(latency_model) -> dict:
    """A resumed search must predict with the very table it started with (its run directory's copy)."""
    if latency_model is None:
        return {}
    document = json.dumps(latency_model.to_dict(), sort_keys=True)
    return {"latency_table": hashlib.sha256(document.encode()).hexdigest()[:16]}


def _remove_if_nothing_evaluated(run_dir: Path) -> None:
    """A fresh run that failed before its first evaluation (e.g. an unreachable Dask scheduler) leaves no
    directory behind, so the same command can simply be run again."""
    from acp.search.store import History

    evaluated = 0
    if (run_dir / rundir.HISTORY_FILE).is_file():
        try:
            history = History(run_dir / rundir.HISTORY_FILE)
            evaluated = len(history)
            history.close()
        except UserError:  # an unreadable history is not ours to delete
            return
    if evaluated == 0:
        shutil.rmtree(run_dir, ignore_errors=True)


def _propose(problem, budget: Budget, proxy_data):
    from acp.propose.clustering import propose_widths
    from acp.propose.criteria import RankedCriterion, make_criterion
    from acp.propose.features import collect_statistics

    search = problem.settings.search
    if problem.task == "detection":
        from acp.propose.detection_features import detection_statistics

        statistics = detection_statistics(
            problem.model,
            problem.space,
            proxy_data.calibration_images,
            proxy_data.calibration_targets,
            num_images=len(proxy_data.calibration_images),
            batch_size=problem.settings.proxy.calibration_batch_size,
        )
    else:
        statistics = collect_statistics(
            problem.model, problem.space, proxy_data.calibration_images, labels=proxy_data.calibration_labels
        )
    proposal = propose_widths(
        statistics,
        problem.space,
        flops=budget.flops,
        params=budget.params,
        budget_check=budget if budget.max_ms is not None else None,
    )
    log.info(
        "clustering proposal: MACs %.1f%%, params %.1f%% of the base model",
        100 * proposal.macs_ratio,
        100 * proposal.params_ratio,
    )
    criterion = make_criterion(
        search.criterion, problem.space, model=problem.model, statistics=statistics, seed=search.seed
    )
    return np.asarray(proposal.widths, dtype=np.int64), RankedCriterion.freeze(criterion)
