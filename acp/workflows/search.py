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

    Several budgets (a list, e.g. ``flops=[0.7, 0.5, 0.3]``, or lists in the config's ``[budget]``) make
    one multi-budget run: the model, proxy data, feature statistics, rankings and evaluator are set up
    once, the budgets are searched one after another on the same workers (each exactly as a single-budget
    run with the same settings would), into ``out/<label>/`` (``out/flops0.5/best_arch.json``) with one
    shared ``history.sqlite``; a time limit is shared equally between them. Returns a
    :class:`MultiBudgetResult`.
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


def _run(settings: RunSettings, run_dir: Path, *, resume: bool, progress: bool):
    from acp.proxy.evaluator import fit_to_training_split
    from acp.workflows.latency import search_latency_model, write_search_latency
    from acp.workflows.problem import load_problem

    settings.budget.require("acp search")
    problem = load_problem(settings, require_weights=True)
    space = problem.space
    latency_model = search_latency_model(problem, run_dir, resume=resume, progress=progress)
    folders = rundir.budget_dirs(run_dir, settings)  # {label (None: a single budget): folder}
    budgets = {
        label: Budget(space, **each.to_dict(), latency_model=latency_model)
        for label, each in zip(folders, settings.budget.each())
    }
    data, splits = problem.data()
    task = _task_parts(problem.task)
    proxy_settings = fit_to_training_split(settings.proxy, len(splits.train))
    proxy_data = task.proxy_data(data, splits.train, proxy_settings, seed=settings.data.seed)
    if resume:
        proposals = {label: rundir.read_proposal(run_dir, space, label)[0] for label in budgets}
        criterion = rundir.read_rankings(run_dir, space)
    else:
        proposals, criterion = _propose(problem, budgets, proxy_data)
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
    multiple = settings.budget.is_multiple
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = settings if multiple else settings.with_budget(**budgets[None].as_dict())
        rundir.write_run_settings(run_dir, resolved)
        rundir.write_proposal(run_dir, proposals if multiple else proposals[None], space, criterion)
        write_search_latency(run_dir, latency_model)
    from acp.workflows.report import LiveReport

    live_report = LiveReport(
        run_dir,
        space=space,
        budget=None if multiple else budgets[None],
        budgets=budgets if multiple else None,
        search_settings=settings.search,
    )
    architecture = evaluator.architecture
    if problem.task == "classification":  # a detector normalizes its own inputs (its transform)
        architecture = _with_preprocessing(architecture, Preprocessing.of_data(data))
    search_settings = settings.search
    if multiple and search_settings.time_limit_seconds is not None:  # the run's time, shared equally
        search_settings = search_settings.replace(
            time_limit=search_settings.time_limit_seconds / len(budgets)
        )
    backend = _SharedBackend(evaluator, search_settings) if multiple else None
    results, warm, latency_notes = {}, None, []
    try:
        for label, budget in budgets.items():
            folder = folders[label]
            study = Study(
                space,
                evaluator,
                budget,
                search_settings,
                folder,
                proposal_widths=proposals[label],
                architecture=architecture,
                progress=progress,
                fingerprint={"data": proxy_data.description, **_latency_fingerprint(latency_model)},
                finalist_evaluator=finalist_evaluator,
                finalists=settings.rerank.finalists,
                on_iteration=live_report if not multiple else _whole_run(live_report, latency_notes),
                history=run_dir / rundir.HISTORY_FILE,
                budget_label=label,
                resume_dir=run_dir,
                warm_widths=warm if search_settings.warm_start else None,
            )
            if multiple:
                log.info("budget %s (%s): %s", label, budget.describe(), folder)
            try:
                result = study.run(resume=_has_checkpoint(folder) if multiple else resume, backend=backend)
            except UserError:
                if not resume:
                    _remove_if_nothing_evaluated(run_dir)
                raise
            if (
                latency_model is not None
                and settings.latency.verify_winner
                and result.stopped != "interrupted"
            ):
                from acp.workflows.latency import measured_winner

                result = measured_winner(
                    problem,
                    budget,
                    result,
                    folder,
                    architecture=architecture,
                    evaluators=(evaluator, finalist_evaluator),
                )
                if result.latency_check is not None:  # best_arch.json was measured (maybe shrunk): show it
                    lines = result.latency_check.lines()
                    latency_notes += [f"{label}: {line}" for line in lines] if multiple else lines
                    status = "running" if multiple and label != list(budgets)[-1] else "finished"
                    live_report(None, status, notes=latency_notes)
            results[label] = result
            warm = None if result.best is None else result.best["widths"]
    finally:
        if backend is not None:
            backend.close()
    if not multiple:
        return results[None]
    live_report(None, "finished", notes=latency_notes)  # the page keeps every budget's latency check
    return MultiBudgetResult(run_dir, results)


def _has_checkpoint(folder: Path) -> bool:
    """Whether a budget's search of a multi-budget run has started (a resume continues it)."""
    names = (rundir.CHECKPOINT_FILE, rundir.PREVIOUS_CHECKPOINT_FILE)
    return any((folder / name).is_file() for name in names)


@dataclass
class MultiBudgetResult:
    """What a multi-budget search found: one :class:`SearchResult` per budget label, in the config's order
    (each budget's files in ``run_dir/<label>/``)."""

    run_dir: Path
    results: dict[str, SearchResult]

    @property
    def stopped(self) -> str:
        """``"interrupted"`` when any budget's search was, else the last one's stop reason."""
        reasons = [result.stopped for result in self.results.values()]
        return "interrupted" if "interrupted" in reasons else reasons[-1]

    @property
    def evaluations(self) -> int:
        return sum(result.evaluations for result in self.results.values())

    @property
    def seconds(self) -> float:
        return sum(result.seconds for result in self.results.values())

    def summary_lines(self) -> list[str]:
        lines = []
        for label, result in self.results.items():
            lines.append(f"== {label}: {rundir.budget_dir(self.run_dir, label)}")
            lines.extend(result.summary_lines())
        lines.append(
            f"{len(self.results)} budgets, {self.evaluations} evaluations in {self.seconds:.0f} s of search"
        )
        return lines


class _SharedBackend:
    """The workers of a multi-budget run: started on the first evaluation, used by every budget's search
    in turn, closed once at the end (a resumed run whose searches are all finished starts none)."""

    def __init__(self, evaluator, settings):
        self.evaluator, self.settings, self.backend = evaluator, settings, None

    def map(self, widths_list) -> list[dict]:
        if self.backend is None:
            from acp.search.backends import make_backend

            self.backend = make_backend(
                self.evaluator,
                workers=self.settings.workers,
                backend=self.settings.backend,
                dask_scheduler=self.settings.dask_scheduler,
                scheduler_timeout=self.settings.scheduler_timeout,
            )
        return self.backend.map(widths_list)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def _whole_run(live_report, notes: list[str]):
    """A budget's on_iteration hook in a multi-budget run: the page shows every budget, read from disk, and
    ``notes`` (the earlier budgets' latency checks, as they are added)."""

    def on_iteration(state, status):
        live_report(None, "running" if status == "finished" else status, notes=notes)

    return on_iteration


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


def _propose(problem, budgets: Mapping, proxy_data):
    """The clustering proposal of each budget (``{label: widths}``) from one set of feature statistics,
    and the channel criterion's frozen rankings."""
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
    proposals = {}
    for label, budget in budgets.items():
        proposal = propose_widths(
            statistics,
            problem.space,
            flops=budget.flops,
            params=budget.params,
            budget_check=budget if budget.max_ms is not None else None,
        )
        log.info(
            "clustering proposal%s: MACs %.1f%%, params %.1f%% of the base model",
            "" if label is None else f" ({label})",
            100 * proposal.macs_ratio,
            100 * proposal.params_ratio,
        )
        proposals[label] = np.asarray(proposal.widths, dtype=np.int64)
    criterion = make_criterion(
        search.criterion, problem.space, model=problem.model, statistics=statistics, seed=search.seed
    )
    return proposals, RankedCriterion.freeze(criterion)
